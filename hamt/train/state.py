"""Trainer state <-> checkpoint: what a checkpoint holds, resuming from one, rolling back to one.

A checkpoint (file format: ``hamt.checkpoint``) holds everything the loop needs to continue bit for
bit: model, optimizer, scheduler and grad-scaler state, the step, the RNG states and the data
loader's position (one of each per rank), the fallback ladder, the resolved params, the model's
identity and the loop's counters (tokens, timed training time, best/last validation loss, the
partial logging interval). Nothing else in the loop draws random numbers, so restoring these is
enough for an identical continuation on the CPU.

Runs own their checkpoints: each carries the run's identity (``run``: a run id and the resolved config's
hash; ``hamt.checkpoint`` puts the id in the sidecar), and pruning, roll-back and resume consider only the
checkpoints of the run at hand. A new run in a folder holding another run's checkpoints is refused
(``claim``) unless started with ``--force-new``; its first checkpoint then supersedes the old run's,
which are deleted only once it exists, so a new run that fails early leaves the old one intact.

The functions take the ``Trainer`` (hamt/train/loop.py) and read or set its fields: they are the
part of it that talks to checkpoints, kept apart so the loop reads as build / step / log.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from hamt.checkpoint import (
    capture_rng_state,
    check_model,
    load_checkpoint,
    load_latest,
    remove_other_runs,
    restore_rng_state,
    runs_in,
    save_checkpoint,
)
from hamt.errors import CheckpointError, ConfigError
from hamt.io import json_sha256
from hamt.metrics.systems import flops_per_token
from hamt.runtime import DistInfo
from hamt.tokens import check_same_tokenizer
from hamt.train.ladder import Ladder, TrainingFailed, check_divergence
from hamt.train.logs import LOG_COLUMNS, CSVLog

if TYPE_CHECKING:
    from hamt.train.loop import Trainer

# Changing these breaks the bitwise continuation (a warning on resume); max_steps, logging and
# paths may change freely.
CONTINUATION_KEYS = ("batch_size", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay", "betas",
                     "grad_clip", "seed", "precision")


def new_run(params, model: str, dist_info: DistInfo) -> dict:
    """A new run's identity: a fresh id (the same on every rank) and the hash of the resolved config."""
    run = {"run_id": uuid.uuid4().hex[:12], "config_hash": json_sha256({"model": model, **params.to_dict()})[:16]}
    if dist_info.ddp:
        ids = [run["run_id"]]
        dist.broadcast_object_list(ids, src=0)  # every rank keeps to the same run's checkpoints
        run["run_id"] = ids[0]
    return run


def capture(t: Trainer) -> dict:
    """The state of the run at this step boundary (every rank takes part: RNG and loader are gathered)."""
    rng = _gather(capture_rng_state(), t.dist)
    loader = _gather(_to_plain_state(t.loader.state_dict()), t.dist)
    return {
        "model": t.raw_model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.sched.state_dict(),
        "scaler": t.scaler.state_dict(),
        "rng": rng,
        "loader": loader,
        "ladder": dataclasses.asdict(t.ladder),
        "params": t.params.to_dict(),
        "model_identity": t.identity,
        "tokenizer_sha256": t.meta.get("tokenizer_sha256"),  # the ids it learned: resume refuses other tokens
        "model_class": type(t.raw_model).__name__,
        "name": t.name,
        "world_size": t.dist.world_size,
        "progress": {"tokens_seen": t.tokens_seen, "train_time": t.train_time, "timed_tokens": t.timed_tokens,
                     "best_val": t.best_val, "last_val": t.last_val, "val_step": t.val_step,
                     # the partial logging interval, so the resumed series averages the same steps
                     "interval": {k: v for k, v in t.interval.items() if k in ("loss", "n", "fid")}},
    }


def save(t: Trainer) -> Path | None:
    """Write a checkpoint of the current step (rank 0); every rank learns whether it worked."""
    state = capture(t)
    path, err = None, None
    if t.master:
        hook = t.env_faults.checkpoint_hook(t.step) if t.env_faults else None
        try:
            path = save_checkpoint(state, t.ckpt_dir, t.step, keep=t.tp.keep_checkpoints, write_hook=hook, run=t.run_info)
            if t.supersedes:  # --force-new: the old run's checkpoints go once this run has one of its own
                remove_other_runs(t.ckpt_dir, t.run_info["run_id"])
                t.supersedes = False
            t.publish_logs()
        except CheckpointError as e:
            err = e
    if t.dist.ddp:
        ok = torch.tensor([0.0 if err else 1.0], device=t.device)  # nccl needs device tensors
        dist.broadcast(ok, src=0)
        if ok.item() == 0 and err is None:
            raise CheckpointError(f"rank 0 failed to write the checkpoint of step {t.step}")
    if err is not None:
        raise err
    t.last_saved_step = t.step
    return path


def resume(t: Trainer, resume: bool | str) -> None:
    """Continue from ``resume`` (a checkpoint path) or the newest valid checkpoint; a fresh start if none."""
    if isinstance(resume, (str, os.PathLike)) and not isinstance(resume, bool):
        state, path = load_checkpoint(resume), Path(resume)
        check_model(state, t.identity, path)
    else:
        state, path = load_latest(t.ckpt_dir, "cpu", t.identity)  # the run that wrote last
    if state is None:
        t.event_log(f"no checkpoint in {t.ckpt_dir}; starting from step 0")
        claim(t, force_new=False)
        return
    warn_changed_params(t, state.get("params", {}), path)
    restore(t, state, path=path)
    saved_run = state.get("run")
    if isinstance(saved_run, dict) and saved_run.get("run_id"):
        t.run_info = {**t.run_info, "run_id": str(saved_run["run_id"])}  # this run continues that one
    else:  # written before runs had ids: continue as a new run that supersedes those files
        t.supersedes = True
    t.resumed_from = str(path)
    t.event_log(f"resumed from {path} (step {t.step})", echo=False)


def claim(t: Trainer, force_new: bool) -> None:
    """A fresh start: refuse a folder holding another run's checkpoints unless ``force_new`` (then supersede them)."""
    others = {run: step for run, step in runs_in(t.ckpt_dir).items() if run != t.run_info["run_id"]}
    if not others:
        return
    if not force_new:
        run, step = max(others.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"{t.ckpt_dir} holds the checkpoints of another run ({f'run {run}' if run else 'a run'}, up to step {step}); "
            "pass --resume to continue it, or --force-new (or another --name) to start over")
    t.supersedes = True
    t.event_log(f"--force-new: the checkpoints of {len(others)} earlier run(s) in {t.ckpt_dir} are replaced by this "
                "run's once it has written its first", echo=False)


def check_shapes(t: Trainer, state: dict, path) -> None:
    """Every tensor of the checkpoint's model has the shape this config gives it (before any load)."""
    saved = state.get("model")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no model weights; start over with hamt train --force-new")
    mine = t.raw_model.state_dict()
    missing, extra = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
    if missing or extra:
        raise CheckpointError(f"{path} does not fit this model (missing {missing[:2]}, unexpected {extra[:2]}); "
                              "use another train.out_dir or --name")
    for k, v in mine.items():
        shape = tuple(getattr(saved[k], "shape", ()))
        if shape != tuple(v.shape):
            raise CheckpointError(f"{path} does not fit this model ({k}: checkpoint {list(shape)}, model "
                                  f"{list(v.shape)}); use another train.out_dir or --name")


def restore(t: Trainer, state: dict, rollback: bool = False, path="checkpoint") -> None:
    """Load ``state`` into the trainer. A roll-back keeps the ladder's current rungs (taken since then)."""
    if int(state.get("world_size", 1)) != t.dist.world_size:
        raise CheckpointError(f"checkpoint was written by {state.get('world_size')} processes, this run has "
                              f"{t.dist.world_size}; resume with the same number of processes")
    check_same_tokenizer(state.get("tokenizer_sha256"), t.meta.get("tokenizer_sha256"),
                         f"{path} was trained on the ids of another tokenizer than the tokens in {t.tokens_dir}",
                         "tokenize with the tokenizer it was trained with, or start a new run (--name or --force-new)")
    check_shapes(t, state, path)
    t.raw_model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.sched.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])
    saved = Ladder(**state["ladder"])
    # A roll-back past a seq_len rung keeps the new loader (its position belongs to other windows).
    loader_matches = (saved.seq_len, saved.loader_seed) == (t.ladder.seq_len, t.ladder.loader_seed)
    if not rollback:
        t.ladder = saved
        t.set_gradient_checkpointing(saved.gradient_checkpointing)
        t.loader = t.make_loader()
        t.flops_tok = flops_per_token(t.raw_model, saved.seq_len)["total"]
        loader_matches = True
    if loader_matches:
        t.loader.load_state_dict(_from_plain_state(state["loader"][t.dist.rank]))
    t.step = int(state["step"])
    prog = state.get("progress", {})
    t.tokens_seen = int(prog.get("tokens_seen", 0))
    t.train_time = float(prog.get("train_time", 0.0))
    t.timed_tokens = int(prog.get("timed_tokens", 0))
    t.best_val, t.last_val = prog.get("best_val"), prog.get("last_val")
    t.val_step = int(prog.get("val_step", -1))
    t.last_saved_step = t.step
    saved_iv = prog.get("interval", {})
    t.interval = {"loss": float(saved_iv.get("loss", 0.0)), "n": int(saved_iv.get("n", 0)), "tokens": 0,
                  "time": 0.0, "fid": list(saved_iv.get("fid", []))}
    restore_rng_state(state["rng"][t.dist.rank])


def roll_back(t: Trainer, step: int, reason: str) -> None:
    """After a divergence at ``step``: back to the newest good checkpoint, learning rate x fallback.lr_factor."""
    check_divergence(t.ladder, t.fp, step, reason)
    state, path = load_latest(t.ckpt_dir, "cpu", t.identity, run_id=t.run_info["run_id"])  # this run's only
    if state is None:
        raise TrainingFailed(f"{reason} at step {step} and no checkpoint to roll back to; lower train.lr")
    old_scale = t.sched.scale
    restore(t, state, rollback=True, path=path)
    t.ladder.divergence_retries += 1
    t.sched.scale = old_scale * t.fp.lr_factor
    t.event_log(t.ladder.record(step, "divergence", t.tp.lr * old_scale, t.tp.lr * t.sched.scale,
                                f"{reason}; rolled back to step {t.step} ({path.name})"))
    if t.csv is not None:
        started = t.csv.started
        t.csv = CSVLog(t.csv.path, LOG_COLUMNS, resume_step=t.step)  # drop the rows after the checkpoint
        if started:
            t.csv.start()
    t.bar.n = t.step
    t.bar.refresh()


def warn_changed_params(t: Trainer, saved: dict, path) -> None:
    old = saved.get("train", {})
    changed = [k for k in CONTINUATION_KEYS if k in old and old[k] != getattr(t.tp, k)]
    if changed:
        msg = f"resuming {path} with changed train parameters: " + ", ".join(
            f"{k} {old[k]!r} -> {getattr(t.tp, k)!r}" for k in changed)
        warnings.warn(msg, stacklevel=3)
        t.event_log(f"warning: {msg}")


def _gather(obj: Any, dist_info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (one element without DDP)."""
    if not dist_info.ddp:
        return [obj]
    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def _to_plain_state(x: Any) -> Any:
    """Loader state -> values torch.load(weights_only=True) accepts (numpy arrays become tensors)."""
    if isinstance(x, dict):
        return {k: _to_plain_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_plain_state(v) for v in x)
    if isinstance(x, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(x)).clone(), "dtype": str(x.dtype)}
    if isinstance(x, np.generic):
        return x.item()
    return x


def _from_plain_state(x: Any) -> Any:
    """The inverse of ``_to_plain_state``."""
    if isinstance(x, dict):
        if "__ndarray__" in x:
            return x["__ndarray__"].numpy().astype(np.dtype(x["dtype"]))
        return {k: _from_plain_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_from_plain_state(v) for v in x)
    return x
