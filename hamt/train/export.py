"""The end of a run: the trained model as a ``save_pretrained`` folder, and the summary (metrics.json).

``finish`` ends a completed run, ``interrupted`` one stopped by SIGINT/SIGTERM (checkpoint, summary,
the resume hint); both return the summary that ``train()`` returns.

    <train.out_dir>/<name>/final/              the model (Auto classes load it) + the tokens' meta.json
                                               and tokenizer.json, so generate/compare need nothing else
    <train.results_dir>/<name>/metrics.json    the summary below; also written on interruption/failure

The export is atomic (``hamt.io.atomic_dir``): a crash leaves the previous ``final/`` or a hidden
temp folder that ``hamt.checkpoint.remove_stale_temps`` deletes on the next start.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from hamt.io import atomic_dir, write_json_atomic
from hamt.metrics.systems import matmul_params, mfu
from hamt.train import state
from hamt.train.signals import RESUME_HINT

if TYPE_CHECKING:
    from hamt.train.loop import Trainer


def finish(t: Trainer, t_start: float) -> dict:
    """A completed run: export the model, write metrics.json, log the summary (rank 0); all ranks meet."""
    result = summary(t, t_start)
    if t.master:
        final = export_final(t.raw_model, t.ckpt_dir, t.tokens_dir)
        result["final_dir"] = str(final)
        write_metrics(t, result)
        t.logger.summary({k: v for k, v in result.items() if not isinstance(v, (dict, list))})
        t.event_log(f"done: step {t.step}, val_loss {result['val_loss']:.4f}, "
                    f"{result['tokens_per_s']:.0f} tok/s; model in {final}")
    if t.dist.ddp:
        dist.barrier()
    return result


def interrupted(t: Trainer, t_start: float) -> dict:
    """A run stopped by a signal: checkpoint this step (unless just saved), say how to resume, summary."""
    path = state.save(t) if t.last_saved_step != t.step else None
    sig = signal.Signals(t.signals.signum).name
    where = path or (t.ckpt_dir / f"step_{t.step:08d}.pt")
    t.event_log(f"interrupted by {sig} at step {t.step}/{t.tp.max_steps}; checkpoint {where}; "
                f"continue with `{RESUME_HINT}" + (f" --name {t.name}`" if t.name != "hamt" else "`"))
    result = {**summary(t, t_start, interrupted=True), "signal": int(t.signals.signum)}
    if t.master:
        write_metrics(t, result)
    return result


def export_final(model, ckpt_dir: Path, tokens_dir: Path) -> Path:
    """``save_pretrained`` into ``<ckpt_dir>/final`` atomically, with the tokens' meta and tokenizer."""
    final = ckpt_dir / "final"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        for fname in ("meta.json", "tokenizer.json"):
            src = tokens_dir / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
    return final


def write_metrics(t: Trainer, summary: dict) -> None:
    write_json_atomic(t.results_dir / "metrics.json", summary)


def summary(t: Trainer, t_start: float, interrupted: bool = False) -> dict:
    """The run's summary: losses, throughput over timed steps only, MFU, memory, fallbacks, identity."""
    rows = t.csv.rows() if t.csv is not None else []
    last_train = next((float(r["train_loss"]) for r in reversed(rows) if r.get("train_loss")), None)
    tps = t.timed_tokens / t.train_time if t.train_time else None
    return {
        "name": t.name,
        "model_class": type(t.raw_model).__name__,
        "n_params": t.n_params,
        "n_matmul_params": matmul_params(t.raw_model),
        "steps": t.step,
        "max_steps": t.tp.max_steps,
        "tokens": t.tokens_seen,
        "train_loss": last_train,
        "val_loss": t.last_val,
        "best_val_loss": t.best_val,
        "val_perplexity": math.exp(t.last_val) if t.last_val is not None and t.last_val < 50 else None,
        "tokens_per_s": tps,
        "flops_per_token": t.flops_tok,
        "peak_flops": t.peak,
        "peak_flops_source": t.peak_source,
        "mfu": mfu(tps, t.flops_tok, t.peak),
        "peak_mem_mb": t.memory.read() / 2**20,
        "train_time_s": t.train_time,
        "wall_time_s": time.time() - t_start,
        "device": str(t.device),
        "precision": t.tp.precision,
        "world_size": t.dist.world_size,
        "batch_size": t.tp.batch_size,
        "micro_batch_size": t.ladder.micro_batch_size,
        "seq_len": t.ladder.seq_len,
        "gradient_checkpointing": t.ladder.gradient_checkpointing,
        "lr_scale": t.sched.scale,
        "fallbacks": list(t.ladder.events),
        "resumed_from": t.resumed_from,
        "weights_sha256": weights_sha256(t.raw_model),
        "interrupted": interrupted,
        "failed": None,
        "wandb_run_dir": getattr(t.logger, "run_dir", None),
        "model_config": t.identity,
    }


def weights_sha256(model) -> str:
    """A fingerprint of the weights (name, dtype, shape and bytes of every tensor in the state dict)."""
    h = hashlib.sha256()
    for k, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{k}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
