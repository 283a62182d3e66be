"""The trainer: one loop for every Hugging Face causal LM (HAMT or the matched GPT-2), resumable bit for bit.

``train(params, resume=..., model=..., name=...)`` reads the memmapped tokens of the tokenize
stage, builds the model (``hamt.zoo.model_config_for``: HAMT, a parameter-matched baseline or an
ablation), and runs AdamW with linear warm-up and cosine
decay, gradient accumulation, autocast (fp32 | bf16 | fp16 + GradScaler), optional gradient
checkpointing and ``torch.compile`` (eager fallback with a warning), periodic validation, atomic
checkpoints (``hamt.checkpoint``) and a final ``save_pretrained`` export. Outputs:

    <train.out_dir>/<name>/step_<N>.pt (+ .sha256)    training checkpoints (newest keep_checkpoints)
    <train.out_dir>/<name>/final/                      the trained model (save_pretrained) + meta.json
    <train.results_dir>/<name>/metrics.json            summary, fallbacks taken, throughput, MFU
    <train.results_dir>/<name>/log.csv                 the series (columns: LOG_COLUMNS)
    <train.results_dir>/<name>/train.log               events: resumes, fallbacks, interruptions

Reproducibility: a run resumed from a checkpoint (``--resume``) ends with bitwise-identical weights to
an uninterrupted run with the same seed on the CPU (tested), because the checkpoint carries the RNG
states and the data loader's position, and nothing else in the loop draws random numbers (evaluation
uses its own fixed-seed windows). On CUDA the same holds only as far as the kernels are deterministic
(atomics in some backward kernels are not). SIGINT/SIGTERM save a checkpoint at the next step
boundary and exit cleanly (exit status 128 + signal number from the CLI) with a message saying how
to resume; a second Ctrl-C stops at once. Throughput counts only timed training steps (not
evaluation, checkpoints or the first, compiling, step).

Not covered: under DDP an out-of-memory error stops the run (the other ranks wait in a collective,
so the ladder runs single-process only), and an OOM during evaluation is not caught.

The fallback ladder (``params.fallback``): on out-of-memory, halve the micro-batch (the effective
batch stays, through accumulation) down to ``min_micro_batch_size``, then turn on gradient
checkpointing, then halve ``seq_len`` down to ``min_seq_len``, then give up with ``TrainingFailed``.
On a NaN/inf loss, roll back to the last good checkpoint and multiply the learning rate by
``lr_factor``, at most ``max_divergence_retries`` times. Every rung taken is recorded.

Faults are injectable for tests: ``fault_hook(step)`` (may raise an OOM, or return "nan") and the
environment variable ``HAMT_FAULTS`` (see ``EnvFaults``) for subprocess tests.

DDP: launched by ``torchrun`` (env RANK set) the loop runs data-parallel (gloo on CPU, nccl on CUDA);
each rank draws its own windows (RandomWindows rank/world_size), rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hamt.errors import CheckpointError, ConfigError, HAMTError
from hamt.metrics.memory import is_hamt
from hamt.metrics.systems import (
    PeakMemory,
    flops_per_token,
    matmul_params,
    max_context,
    peak_flops,
)
from hamt.runtime import DistInfo, autocast_context, init_distributed, is_oom
from hamt.zoo import build_model, model_config_for

LOG_COLUMNS = ["step", "tokens", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu",
               "peak_mem_mb", "fidelity", "slot_active_fraction"]
RESUME_HINT = "hamt train --resume"


class TrainingFailed(HAMTError):
    """Training could not continue (fallback ladder exhausted, divergence retries used up)."""


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def add_arguments_train(parser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in <train.out_dir>/<model> (fresh start if none)")
    parser.add_argument("--model", default="hamt", metavar="NAME",
                        help="which model of the comparison to train (hamt.zoo: hamt, gpt2-scratch, gpt2-scratch-2x, "
                             "ablation-<switch>); checkpoints in <train.out_dir>/<name>, results in "
                             "<train.results_dir>/<name>")
    parser.add_argument("--name", default=None,
                        help="run name: the folders' name (default: the model's name)")


def cli_train(params, args) -> int:
    summary = train(params, resume=args.resume, model=args.model, name=args.name)
    if summary.get("interrupted"):
        return 128 + int(summary.get("signal", signal.SIGINT))
    return 0


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


def make_optimizer(model, lr: float, betas, weight_decay: float, device):
    """AdamW; matrices (linear and embedding weights) decay, 1-d parameters (norms, biases, gates) do not."""
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **extra)


# ---------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------------


@dataclass
class WarmupCosine:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr`` at ``max_steps``; ``scale`` from roll-backs."""

    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    scale: float = 1.0

    def __call__(self, it: int) -> float:
        """Learning rate of update number ``it`` (0-based)."""
        if it < self.warmup_steps:
            lr = self.lr * (it + 1) / (self.warmup_steps + 1)
        elif it >= self.max_steps:
            lr = self.min_lr
        else:
            ratio = (it - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
            lr = self.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)
        return lr * self.scale

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d.get("scale", 1.0))  # the shape comes from params (max_steps may be extended)


# ---------------------------------------------------------------------------------------------------
# Fallback ladder state and fault injection
# ---------------------------------------------------------------------------------------------------


@dataclass
class Ladder:
    """Where the fallback ladder stands (saved in checkpoints, so a resumed run keeps its rungs)."""

    micro_batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    loader_seed: int
    divergence_retries: int = 0
    events: list = field(default_factory=list)


class EnvFaults:
    """Faults for subprocess tests, from ``HAMT_FAULTS``: comma-separated ``kind@step[:arg]``, each fires once.

    kinds: ``oom`` (raise torch.OutOfMemoryError before the step), ``nan`` (NaN loss), ``sleep@S:SEC``
    (stall the step), ``sigterm``/``sigint``/``sigkill`` (signal this process at the step),
    ``ckpt_sleep@S:SEC`` (stall inside the write of checkpoint S, after its first bytes),
    ``ckpt_enospc@S`` (the write of checkpoint S fails with ENOSPC).
    """

    def __init__(self, spec: str, should_stop: Callable[[], bool] | None = None):
        self.should_stop = should_stop or (lambda: False)  # a stalled step ends early on SIGTERM/SIGINT
        self.entries: list[list] = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            kind, _, rest = item.partition("@")
            step, _, arg = rest.partition(":")
            if not step.isdigit():
                raise ConfigError(f"HAMT_FAULTS: bad entry {item!r}; expected kind@step[:arg], e.g. oom@3")
            self.entries.append([kind, int(step), float(arg) if arg else 0.0])

    def _take(self, kinds: tuple, step: int):
        for e in self.entries:
            if e[0] in kinds and e[1] == step:
                self.entries.remove(e)
                return e
        return None

    def __call__(self, step: int):
        import torch

        e = self._take(("oom", "nan", "sleep", "sigterm", "sigint", "sigkill"), step)
        if e is None:
            return None
        kind, _, arg = e
        if kind == "oom":
            raise torch.OutOfMemoryError(f"injected out of memory at step {step} (HAMT_FAULTS)")
        if kind == "sleep":
            end = time.monotonic() + arg
            while time.monotonic() < end and not self.should_stop():
                time.sleep(0.02)
        if kind.startswith("sig"):
            os.kill(os.getpid(), {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[kind])
        return "nan" if kind == "nan" else None

    def checkpoint_hook(self, step: int) -> Callable[[int], None] | None:
        e = self._take(("ckpt_sleep", "ckpt_enospc"), step)
        if e is None:
            return None
        kind, _, arg = e
        fired = []

        def hook(nbytes: int) -> None:
            if fired:
                return
            fired.append(nbytes)
            if kind == "ckpt_enospc":
                import errno

                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            time.sleep(arg)

        return hook


# ---------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------


def train(params, *, resume: bool | str = False, model: str = "hamt", name: str | None = None,
          fault_hook: Callable[[int], Any] | None = None) -> dict:
    """Train ``model`` (a name of ``hamt.zoo``) on the tokens of ``params.tokenizer.tokens_dir`` as run
    ``name`` (default: the model's name); return the summary (= metrics.json).

    ``resume``: True continues from the newest valid checkpoint in ``<out_dir>/<name>`` (a fresh start
    when there is none); a path resumes from that checkpoint file. ``fault_hook(step)`` is called
    before each attempt at a step (tests): it may raise (e.g. ``torch.OutOfMemoryError``) or return
    ``"nan"`` to poison that step's loss.
    """
    dist_info, device = init_distributed(params.train.device)
    try:
        trainer = Trainer(params, name or model, model, dist_info, device, fault_hook)
        return trainer.run(resume)
    finally:
        if dist_info.ddp:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class Trainer:
    """State of one training run; ``run`` is the loop. Read top to bottom: build, resume, step, log, save."""

    def __init__(self, params, name: str, model: str, dist_info: DistInfo, device, fault_hook=None):
        import torch

        from hamt.data import load_split, read_meta

        self.params, self.tp, self.fp = params, params.train, params.fallback
        self.name, self.dist, self.device = name, dist_info, device
        self.memory = PeakMemory(device).__enter__()  # peak memory of this run (read at each log)
        self.master = dist_info.master
        self.ckpt_dir = Path(self.tp.out_dir) / name
        self.results_dir = Path(self.tp.results_dir) / name
        self.tokens_dir = Path(params.tokenizer.tokens_dir)
        env = os.environ.get("HAMT_FAULTS", "")
        self.env_faults = EnvFaults(env, lambda: self._stop_signal is not None) if env else None
        self.fault_hook = fault_hook

        # Data -------------------------------------------------------------------------------------
        self.meta = read_meta(self.tokens_dir)
        self.train_tokens = load_split(self.tokens_dir, "train")
        self.valid_tokens = load_split(self.tokens_dir, "valid")
        vocab = int(self.meta["vocab_size"])

        # Batch geometry: batch_size = micro_batch_size x accumulation x world_size.
        per_rank, rem = divmod(self.tp.batch_size, dist_info.world_size)
        if rem or per_rank % self.tp.micro_batch_size:
            raise ConfigError(
                f"train.batch_size ({self.tp.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.tp.micro_batch_size}) x world size ({dist_info.world_size})"
            )
        self.per_rank_batch = per_rank

        # Model ------------------------------------------------------------------------------------
        self.config = model_config_for(params, model, vocab)
        ctx = max_context(self.config)
        if ctx is not None and self.tp.seq_len > ctx:
            raise ConfigError(f"train.seq_len ({self.tp.seq_len}) exceeds the model's context ({ctx})")
        torch.manual_seed(self.tp.seed)  # identical initial weights on every rank
        self.raw_model = build_model(self.config).to(device)
        self.raw_model.train()
        self.n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.identity = _identity(self.config)
        self._gc_supported = bool(getattr(self.raw_model, "supports_gradient_checkpointing", False))
        self._gc_on = False

        self.ladder = Ladder(self.tp.micro_batch_size, self.tp.seq_len, self.tp.gradient_checkpointing, self.tp.seed)
        self.sched = WarmupCosine(self.tp.lr, self.tp.min_lr, self.tp.warmup_steps, self.tp.max_steps)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.tp.precision == "fp16")
        self._compile_pending = False
        self._wrap_model()
        if self.ladder.gradient_checkpointing:
            self._set_gradient_checkpointing(True)
        self.loader = self._make_loader()

        # Per-rank RNG for everything after init (dropout); the loader has its own generator.
        import random

        import numpy as np

        torch.manual_seed(self.tp.seed + dist_info.rank)
        random.seed(self.tp.seed + dist_info.rank)
        np.random.seed((self.tp.seed + dist_info.rank) % 2**32)

        # Bookkeeping -----------------------------------------------------------------------------
        self.step = 0
        self.tokens_seen = 0
        self.train_time = 0.0  # seconds in timed training steps (not eval, checkpoints, compilation)
        self.timed_tokens = 0
        self.best_val = None
        self.last_val = None
        self.resumed_from = None
        self._stop_signal = None
        self._last_saved_step = None
        self._interval = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0, "fid": []}
        self._last = {"lr": None, "grad_norm": None}
        self.csv = None
        self.peak, self.peak_source = peak_flops(device, self.tp.precision, self.tp.peak_flops)
        self.flops_tok = flops_per_token(self.raw_model, self.tp.seq_len)["total"]

    # --- construction helpers ------------------------------------------------------------------
    def _make_optimizer(self):
        return make_optimizer(self.raw_model, self.tp.lr, self.tp.betas, self.tp.weight_decay, self.device)

    def _wrap_model(self, compile_ok: bool = True) -> None:
        """self.model: the module the loop calls (compiled and/or DDP-wrapped raw_model)."""
        import torch

        model = self.raw_model
        if self.tp.compile and compile_ok:
            try:
                model = torch.compile(model)
                self._compile_pending = True
            except Exception as e:
                self._compile_failed(e)
                model = self.raw_model
        if self.dist.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = model

    def _compile_failed(self, err: BaseException) -> None:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        msg = f"torch.compile failed ({type(err).__name__}: {first}); continuing in eager mode"
        warnings.warn(msg, stacklevel=2)
        self._event_log(f"warning: {msg}")
        self._compile_pending = False

    def _set_gradient_checkpointing(self, on: bool) -> bool:
        """Recompute activations in the backward pass (HF's activation checkpointing, non-reentrant)."""
        if not self._gc_supported:
            return False
        if on == self._gc_on:
            return True
        m = self.raw_model
        if on:
            kwargs = {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5 name
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            (getattr(m, "activation_checkpointing_disable", None) or m.gradient_checkpointing_disable)()
        self._gc_on = on
        return True

    def _make_loader(self):
        from hamt.data import RandomWindows

        return RandomWindows(self.train_tokens, self.per_rank_batch, self.ladder.seq_len, self.ladder.loader_seed,
                             self.dist.rank, self.dist.world_size, name="the train split")

    # --- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool | str) -> dict:
        from hamt.checkpoint import remove_stale_temps
        from hamt.train.logs import CSVLog, TextLog, make_logger, progress

        self.text_log = TextLog(self.results_dir / "train.log", enabled=self.master)
        if self.master:
            remove_stale_temps(self.ckpt_dir)
        if resume:
            self._resume(resume)
        self.csv = CSVLog(self.results_dir / "log.csv", LOG_COLUMNS, resume_step=self.step) if self.master else None
        self.logger = make_logger(self.tp.wandb, self.params.to_dict(), enabled=self.master, run_name=self.name)
        self._event_log(
            f"{'resuming' if self.resumed_from else 'starting'} {self.name}: {type(self.raw_model).__name__}, "
            f"{self.n_params:,} params, device {self.device}, {self.tp.precision}, world {self.dist.world_size}, "
            f"step {self.step}/{self.tp.max_steps}", echo=self.master)
        old_handlers = self._install_signal_handlers()
        self.bar = progress(self.tp.max_steps, self.step, desc=self.name, enabled=self.master)
        t_start = time.time()
        try:
            if self.step == 0 and self.fp.enabled and self.fp.max_divergence_retries > 0:
                self._save()  # step 0: the state a divergence before the first checkpoint rolls back to
            while self.step < self.tp.max_steps:
                if self._stop_requested():
                    return self._interrupted(t_start)
                self._one_step()
            if self._last_saved_step != self.step:
                self._save()
            if self.last_val is None or self._val_step != self.step:
                self._evaluate_and_log(force_eval=True)
            return self._finish(t_start)
        except TrainingFailed as e:
            # The flow reads this to decide on its fallback profile; the rungs taken are in "fallbacks".
            if self.master:
                from hamt.train.logs import write_json_atomic

                self._event_log(f"failed: {e}", echo=False)
                write_json_atomic(self.results_dir / "metrics.json", {**self._summary(t_start), "failed": str(e)})
            raise
        finally:
            self.bar.close()
            self._restore_signal_handlers(old_handlers)
            self.logger.finish()

    def _one_step(self) -> None:
        step = self.step + 1  # the update being computed (1-based)
        x = self.loader.next_batch(self.device)
        x = x[0] if isinstance(x, (tuple, list)) else x  # (B_rank, T) token ids; labels = inputs (HF shifts)
        compiling = self._compile_pending  # the first compiled step includes compilation: not timed
        t0 = time.perf_counter()
        result = self._attempt_step(step, x)
        if result is None:  # diverged and rolled back
            return
        loss, gnorm, lr, fid, ntok = result
        dt = time.perf_counter() - t0
        self.step = step
        self.tokens_seen += ntok
        iv = self._interval
        iv["loss"] += loss
        iv["n"] += 1
        if not compiling:
            self.train_time += dt
            self.timed_tokens += ntok
            iv["tokens"] += ntok
            iv["time"] += dt
        if fid is not None:
            iv["fid"].append(fid)
        self._last = {"lr": lr, "grad_norm": gnorm}
        self.bar.update(1)
        if self.master and (step % self.tp.log_every == 0 or step == self.tp.max_steps):
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{ntok / max(dt, 1e-9):.0f}", refresh=False)
        self._evaluate_and_log()
        if step % self.tp.ckpt_every == 0 and step != self.tp.max_steps:
            self._save()

    def _attempt_step(self, step: int, x):
        """Forward/backward over micro-batches and one optimiser update; walks the ladder on OOM."""
        while True:
            try:
                fault = self._fault(step)
                return self._forward_backward_update(step, x, poison=(fault == "nan"))
            except _Diverged as d:
                self._rollback(step, d.reason)
                return None
            except Exception as e:
                self.optimizer.zero_grad(set_to_none=True)
                if is_oom(e):
                    x = self._on_oom(step, e, x)
                elif self._compile_pending:
                    self._compile_failed(e)
                    self._wrap_model(compile_ok=False)
                else:
                    raise

    def _fault(self, step: int):
        out = None
        if self.env_faults is not None:
            out = self.env_faults(step) or out
        if self.fault_hook is not None:
            out = self.fault_hook(step) or out
        return out

    def _forward_backward_update(self, step: int, x, poison: bool = False):
        import torch

        lr = self.sched(step - 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        micro = self.ladder.micro_batch_size
        chunks = x.split(micro)  # accumulation: per_rank_batch / micro chunks of (micro, T)
        n = len(chunks)
        loss_sum = torch.zeros((), device=self.device)
        fid_sum, fid_n = torch.zeros((), device=self.device), 0  # summed on the device: one sync per step
        for i, xm in enumerate(chunks):
            sync = self.dist.ddp and i < n - 1
            ctx = self.model.no_sync() if sync else contextlib.nullcontext()
            with ctx, autocast_context(self.device, self.tp.precision):
                out = self.model(input_ids=xm, labels=xm, use_cache=False)
                loss = out.loss
                lm = out.lm_loss if getattr(out, "lm_loss", None) is not None else out.loss
                if poison and i == 0:  # injected divergence (tests)
                    loss = lm = loss * float("nan")
            self.scaler.scale(loss / n).backward()
            loss_sum += lm.detach().float() / n
            if getattr(out, "fidelity", None) is not None:
                fid_sum += out.fidelity.detach().float()
                fid_n += 1
        self._compile_pending = False
        if self.dist.ddp:
            import torch.distributed as dist

            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        loss_val = float(loss_sum)
        self.scaler.unscale_(self.optimizer)
        clip = self.tp.grad_clip if self.tp.grad_clip > 0 else float("inf")
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip))
        # fp16: the scaler skips steps with inf/NaN gradients by itself; a non-finite *loss* is divergence.
        if not math.isfinite(loss_val) or (not math.isfinite(gnorm) and self.tp.precision != "fp16"):
            self.optimizer.zero_grad(set_to_none=True)
            raise _Diverged(f"loss {loss_val}" if not math.isfinite(loss_val) else f"grad norm {gnorm}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        ntok = x.shape[0] * x.shape[1] * self.dist.world_size
        return loss_val, gnorm, lr, (float(fid_sum) / fid_n if fid_n else None), ntok

    # --- fallback ladder -------------------------------------------------------------------------
    def _record(self, step: int, kind: str, old, new, reason: str) -> None:
        event = {"step": step, "kind": kind, "from": old, "to": new, "reason": reason}
        self.ladder.events.append(event)
        self._event_log(f"fallback at step {step}: {kind} {old} -> {new} ({reason})")

    def _on_oom(self, step: int, err: BaseException, x):
        """Take the next rung of the ladder (or give up). Returns the batch to retry the step with."""
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        L, fp = self.ladder, self.fp
        reason = f"out of memory: {str(err).strip().splitlines()[0][:120]}"
        if not fp.enabled:
            raise TrainingFailed(f"out of memory at step {step} and fallback.enabled is false; "
                                 "lower train.micro_batch_size or train.seq_len") from err
        if self.dist.ddp:
            # Other ranks are blocked in a collective; a coordinated ladder would need a second channel.
            raise TrainingFailed(f"out of memory at step {step} on rank {self.dist.rank} under DDP (the ladder runs "
                                 "single-process only); lower train.micro_batch_size") from err
        new_micro = self._smaller_micro_batch()
        if new_micro is not None:
            self._record(step, "micro_batch_size", L.micro_batch_size, new_micro, reason)
            L.micro_batch_size = new_micro
            return x
        if not L.gradient_checkpointing and self._gc_supported:
            self._set_gradient_checkpointing(True)
            self._record(step, "gradient_checkpointing", False, True, reason)
            L.gradient_checkpointing = True
            return x
        if L.seq_len > fp.min_seq_len:
            new_seq = max(fp.min_seq_len, L.seq_len // 2)
            self._record(step, "seq_len", L.seq_len, new_seq, reason)
            L.seq_len = new_seq
            # The remaining steps draw windows of the new length from a loader seeded by this step.
            L.loader_seed = self.tp.seed + step
            self.loader = self._make_loader()
            self.flops_tok = flops_per_token(self.raw_model, new_seq)["total"]  # attention FLOPs follow T
            return x[:, :new_seq].contiguous()
        raise TrainingFailed(
            f"out of memory at step {step} even with micro_batch_size={L.micro_batch_size}, gradient checkpointing "
            f"{'on' if L.gradient_checkpointing else 'unsupported'} and seq_len={L.seq_len}; use a smaller model "
            "profile or a larger device"
        ) from err

    def _smaller_micro_batch(self) -> int | None:
        cur, lo = self.ladder.micro_batch_size, self.fp.min_micro_batch_size
        if cur <= lo:
            return None
        for m in range(max(lo, cur // 2), lo - 1, -1):  # largest divisor of the per-rank batch <= cur / 2
            if self.per_rank_batch % m == 0:
                return m
        return None

    def _rollback(self, step: int, reason: str) -> None:
        from hamt.checkpoint import load_latest

        L, fp = self.ladder, self.fp
        if not fp.enabled:
            raise TrainingFailed(f"{reason} at step {step} and fallback.enabled is false; lower train.lr")
        if L.divergence_retries >= fp.max_divergence_retries:
            raise TrainingFailed(f"{reason} at step {step} after {L.divergence_retries} roll-backs "
                                 f"(fallback.max_divergence_retries); lower train.lr or check the data")
        state, path = load_latest(self.ckpt_dir, "cpu", self.identity)
        if state is None:
            raise TrainingFailed(f"{reason} at step {step} and no checkpoint to roll back to; lower train.lr")
        old_scale = self.sched.scale
        ladder = self.ladder
        self._load_state(state, rollback=True)  # keeps self.ladder: the rungs taken since that checkpoint
        ladder.divergence_retries += 1
        self.sched.scale = old_scale * fp.lr_factor
        self._record(step, "divergence", self.tp.lr * old_scale, self.tp.lr * self.sched.scale,
                     f"{reason}; rolled back to step {self.step} ({path.name})")
        if self.csv is not None:
            from hamt.train.logs import CSVLog

            self.csv = CSVLog(self.csv.path, LOG_COLUMNS, resume_step=self.step)
        self.bar.n = self.step
        self.bar.refresh()

    # --- evaluation and logging --------------------------------------------------------------------
    _val_step = -1

    def _evaluate_and_log(self, force_eval: bool = False) -> None:
        step = self.step
        do_eval = force_eval or step % self.tp.eval_every == 0 or step == self.tp.max_steps
        do_log = do_eval or step % self.tp.log_every == 0
        if not do_log:
            return
        row = {"step": step, "tokens": self.tokens_seen, **self._last}
        iv = self._interval
        if iv["n"]:
            row["train_loss"] = iv["loss"] / iv["n"]
        if iv["time"] > 0:
            tps = iv["tokens"] / iv["time"]
            row.update(tokens_per_s=tps, mfu=(self.flops_tok * tps / self.peak) if self.peak else None)
            if iv["fid"]:
                row["fidelity"] = sum(iv["fid"]) / len(iv["fid"])
        row["peak_mem_mb"] = self.memory.read() / 2**20
        if do_eval:
            ev = self.evaluate()
            row.update(ev)
            self.last_val = ev["val_loss"]
            self._val_step = step
            self.best_val = ev["val_loss"] if self.best_val is None else min(self.best_val, ev["val_loss"])
        self._interval = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0, "fid": []}
        if self.master:
            self.csv.append(row)
            self.logger.log({k: v for k, v in row.items() if k != "step"}, step=step)
            if do_eval:
                self.bar.set_postfix(loss=f"{row.get('train_loss') or float('nan'):.3f}",
                                     val=f"{row['val_loss']:.3f}", refresh=False)

    def evaluate(self) -> dict:
        """Mean LM loss over ``eval_batches`` fixed validation batches (+ fidelity, slot use for HAMT).

        The batches are those of a fixed-seed RandomWindows (the same every time, and no draw from the
        training RNG, which would break bitwise resume). Under DDP the ranks share them out (batch i
        on rank i mod world) and sum, so val_loss does not depend on the number of processes.
        """
        import torch

        from hamt.data import RandomWindows

        loader = RandomWindows(self.valid_tokens, self.ladder.micro_batch_size, self.ladder.seq_len,
                               self.tp.seed + 1, 0, 1, name="the valid split")
        was_training = self.raw_model.training
        self.raw_model.eval()
        hamt = is_hamt(self.config)
        sums = torch.zeros(5, dtype=torch.float64)  # loss, n, fidelity, slot_active_fraction, n_stats
        with torch.no_grad():
            for i in range(self.dist.rank, self.tp.eval_batches, self.dist.world_size):
                loader.step = i  # RandomWindows is a pure function of (seed, step)
                x = loader.next_batch(self.device)  # (micro, T)
                kw = {"return_memory_stats": True} if hamt else {}
                with autocast_context(self.device, self.tp.precision):
                    out = self.raw_model(input_ids=x, labels=x, use_cache=False, **kw)
                lm = out.lm_loss if getattr(out, "lm_loss", None) is not None else out.loss
                sums[0] += float(lm)
                sums[1] += 1
                if hamt and out.fidelity is not None:
                    from hamt.metrics.memory import slot_utilisation

                    sums[2] += float(out.fidelity)
                    sums[3] += slot_utilisation(out.slot_usage)["slot_active_fraction"]
                    sums[4] += 1
        self.raw_model.train(was_training)
        if self.dist.ddp:
            import torch.distributed as dist

            sums = sums.to(self.device)  # nccl needs device tensors
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            sums = sums.cpu()
        result = {"val_loss": float(sums[0] / sums[1])}
        if sums[4] > 0:
            result.update(fidelity=float(sums[2] / sums[4]), slot_active_fraction=float(sums[3] / sums[4]))
        return result

    def _event_log(self, msg: str, echo: bool = True) -> None:
        tl = getattr(self, "text_log", None)
        if tl is not None:
            tl.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}", echo=False)
        if echo and self.master:
            from hamt.train.logs import _echo

            _echo(f"hamt train: {msg}")

    # --- checkpoints -----------------------------------------------------------------------------
    def _gather(self, obj):
        if not self.dist.ddp:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.dist.world_size
        dist.all_gather_object(out, obj)
        return out

    def _state(self) -> dict:
        from hamt.checkpoint import capture_rng_state

        rng = self._gather(capture_rng_state())
        loader = self._gather(_to_plain_state(self.loader.state_dict()))
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "loader": loader,
            "ladder": dataclasses.asdict(self.ladder),
            "params": self.params.to_dict(),
            "model_identity": self.identity,
            "model_class": type(self.raw_model).__name__,
            "name": self.name,
            "world_size": self.dist.world_size,
            "progress": {"tokens_seen": self.tokens_seen, "train_time": self.train_time,
                         "timed_tokens": self.timed_tokens,
                         "best_val": self.best_val, "last_val": self.last_val, "val_step": self._val_step,
                         # the partial logging interval, so the resumed series averages the same steps
                         "interval": {k: v for k, v in self._interval.items() if k in ("loss", "n", "fid")}},
        }

    def _save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); every rank learns whether it worked."""
        import torch

        from hamt.checkpoint import save_checkpoint

        state = self._state()
        path, err = None, None
        if self.master:
            hook = self.env_faults.checkpoint_hook(self.step) if self.env_faults else None
            try:
                path = save_checkpoint(state, self.ckpt_dir, self.step, keep=self.tp.keep_checkpoints, write_hook=hook)
            except CheckpointError as e:
                err = e
        if self.dist.ddp:
            import torch.distributed as dist

            ok = torch.tensor([0.0 if err else 1.0], device=self.device)  # nccl needs device tensors
            dist.broadcast(ok, src=0)
            if ok.item() == 0 and err is None:
                raise CheckpointError(f"rank 0 failed to write the checkpoint of step {self.step}")
        if err is not None:
            raise err
        self._last_saved_step = self.step
        return path

    def _resume(self, resume: bool | str) -> None:
        from hamt.checkpoint import check_model, load_checkpoint, load_latest

        if isinstance(resume, (str, os.PathLike)) and not isinstance(resume, bool):
            state, path = load_checkpoint(resume), Path(resume)
            check_model(state, self.identity, path)
        else:
            state, path = load_latest(self.ckpt_dir, "cpu", self.identity)
        if state is None:
            self._event_log(f"no checkpoint in {self.ckpt_dir}; starting from step 0")
            return
        self._warn_changed_params(state.get("params", {}), path)
        self._load_state(state)
        self.resumed_from = str(path)
        self._event_log(f"resumed from {path} (step {self.step})", echo=False)

    def _load_state(self, state: dict, rollback: bool = False) -> None:
        from hamt.checkpoint import restore_rng_state

        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise CheckpointError(f"checkpoint was written by {state.get('world_size')} processes, this run has "
                                  f"{self.dist.world_size}; resume with the same number of processes")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        saved = Ladder(**state["ladder"])
        loader_matches = (saved.seq_len, saved.loader_seed) == (self.ladder.seq_len, self.ladder.loader_seed)
        if not rollback:
            self.ladder = saved
            self._set_gradient_checkpointing(saved.gradient_checkpointing)
            self.loader = self._make_loader()
            self.flops_tok = flops_per_token(self.raw_model, saved.seq_len)["total"]
            loader_matches = True
        if loader_matches:
            self.loader.load_state_dict(_from_plain_state(state["loader"][self.dist.rank]))
        self.step = int(state["step"])
        prog = state.get("progress", {})
        self.tokens_seen = int(prog.get("tokens_seen", 0))
        self.train_time = float(prog.get("train_time", 0.0))
        self.timed_tokens = int(prog.get("timed_tokens", 0))
        self.best_val, self.last_val = prog.get("best_val"), prog.get("last_val")
        self._val_step = int(prog.get("val_step", -1))
        self._last_saved_step = self.step
        saved_iv = prog.get("interval", {})
        self._interval = {"loss": float(saved_iv.get("loss", 0.0)), "n": int(saved_iv.get("n", 0)), "tokens": 0,
                          "time": 0.0, "fid": list(saved_iv.get("fid", []))}
        restore_rng_state(state["rng"][self.dist.rank])

    def _warn_changed_params(self, saved: dict, path) -> None:
        # Changing these breaks the bitwise continuation; max_steps, logging and paths may change freely.
        keys = ("batch_size", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "grad_clip",
                "seed", "precision")
        old = saved.get("train", {})
        changed = [k for k in keys if k in old and old[k] != getattr(self.tp, k)]
        if changed:
            msg = f"resuming {path} with changed train parameters: " + ", ".join(
                f"{k} {old[k]!r} -> {getattr(self.tp, k)!r}" for k in changed)
            warnings.warn(msg, stacklevel=2)
            self._event_log(f"warning: {msg}")

    # --- signals ---------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self._stop_signal = signum
            if self.master:
                from hamt.train.logs import _echo

                _echo(f"hamt train: {signal.Signals(signum).name} received; saving a checkpoint after this step")

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old) -> None:
        if old:
            for s, h in old.items():
                signal.signal(s, h)

    def _stop_requested(self) -> bool:
        flag = self._stop_signal is not None
        if self.dist.ddp:
            import torch
            import torch.distributed as dist

            t = torch.tensor([int(self._stop_signal or 0)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if t.item():
                self._stop_signal = self._stop_signal or int(t.item())
            flag = bool(t.item())
        return flag

    def _interrupted(self, t_start: float) -> dict:
        path = self._save() if self._last_saved_step != self.step else None
        sig = signal.Signals(self._stop_signal).name
        where = path or (self.ckpt_dir / f"step_{self.step:08d}.pt")
        self._event_log(f"interrupted by {sig} at step {self.step}/{self.tp.max_steps}; checkpoint {where}; "
                        f"continue with `{RESUME_HINT}" + (f" --name {self.name}`" if self.name != "hamt" else "`"))
        summary = self._summary(t_start, interrupted=True)
        summary["signal"] = int(self._stop_signal)
        if self.master:
            from hamt.train.logs import write_json_atomic

            write_json_atomic(self.results_dir / "metrics.json", summary)
        return summary

    # --- the end ---------------------------------------------------------------------------------
    def _finish(self, t_start: float) -> dict:
        summary = self._summary(t_start)
        if self.master:
            from hamt.train.logs import write_json_atomic

            final = self._export_final()
            summary["final_dir"] = str(final)
            write_json_atomic(self.results_dir / "metrics.json", summary)
            self.logger.summary({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
            self._event_log(f"done: step {self.step}, val_loss {summary['val_loss']:.4f}, "
                            f"{summary['tokens_per_s']:.0f} tok/s; model in {final}")
        if self.dist.ddp:
            import torch.distributed as dist

            dist.barrier()
        return summary

    def _export_final(self) -> Path:
        """save_pretrained into <out_dir>/<name>/final atomically (temp folder + rename), with the tokens' meta."""
        final = self.ckpt_dir / "final"
        tmp = self.ckpt_dir / f".final.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.raw_model.save_pretrained(tmp)
        for fname in ("meta.json", "tokenizer.json"):
            src = self.tokens_dir / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
        old = self.ckpt_dir / f".final.old.{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _summary(self, t_start: float, interrupted: bool = False) -> dict:
        rows = self.csv.rows() if self.csv is not None else []
        last_train = next((float(r["train_loss"]) for r in reversed(rows) if r.get("train_loss")), None)
        tps = self.timed_tokens / self.train_time if self.train_time else None
        return {
            "name": self.name,
            "model_class": type(self.raw_model).__name__,
            "n_params": self.n_params,
            "n_matmul_params": matmul_params(self.raw_model),
            "steps": self.step,
            "max_steps": self.tp.max_steps,
            "tokens": self.tokens_seen,
            "train_loss": last_train,
            "val_loss": self.last_val,
            "best_val_loss": self.best_val,
            "val_perplexity": math.exp(self.last_val) if self.last_val is not None and self.last_val < 50 else None,
            "tokens_per_s": tps,
            "flops_per_token": self.flops_tok,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_source,
            "mfu": (self.flops_tok * tps / self.peak) if (tps and self.peak) else None,
            "peak_mem_mb": self.memory.read() / 2**20,
            "train_time_s": self.train_time,
            "wall_time_s": time.time() - t_start,
            "device": str(self.device),
            "precision": self.tp.precision,
            "world_size": self.dist.world_size,
            "batch_size": self.tp.batch_size,
            "micro_batch_size": self.ladder.micro_batch_size,
            "seq_len": self.ladder.seq_len,
            "gradient_checkpointing": self.ladder.gradient_checkpointing,
            "lr_scale": self.sched.scale,
            "fallbacks": list(self.ladder.events),
            "resumed_from": self.resumed_from,
            "weights_sha256": weights_sha256(self.raw_model),
            "interrupted": interrupted,
            "failed": None,
            "wandb_run_dir": getattr(self.logger, "run_dir", None),
            "model_config": self.identity,
        }


def weights_sha256(model) -> str:
    """A fingerprint of the weights (name, dtype, shape and bytes of every tensor in the state dict)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Diverged(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _identity(config) -> dict:
    from hamt.checkpoint import model_identity

    return model_identity(config)


def _to_plain_state(x: Any) -> Any:
    """Loader state -> values torch.load(weights_only=True) accepts (numpy arrays become tensors)."""
    import numpy as np
    import torch

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
    import numpy as np

    if isinstance(x, dict):
        if "__ndarray__" in x:
            return x["__ndarray__"].numpy().astype(np.dtype(x["dtype"]))
        return {k: _from_plain_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_from_plain_state(v) for v in x)
    return x
