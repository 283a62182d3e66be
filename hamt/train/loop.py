"""The training loop: build the run, then step, log and checkpoint until ``max_steps``.

``Trainer`` reads top to bottom: ``__init__`` builds data, model, optimiser and ladder; ``run`` is
the loop (resume, steps, final checkpoint and export); ``_one_step`` / ``_forward_backward_update``
are one optimiser update over accumulated micro-batches; ``_evaluate_and_log`` writes a row of the
series. What a checkpoint holds and how a run resumes or rolls back is ``state``; the fallback
ladder's decisions are ``ladder``; the end of a run (export, summary, interruption) is ``export``.

Throughput counts only timed training steps (not evaluation, checkpoints or the first, compiling,
step). DDP: launched by ``torchrun`` (env RANK set) the loop runs data-parallel (gloo on CPU, nccl
on CUDA); each rank draws its own windows (RandomWindows rank/world_size), rank 0 logs and writes
files. Not covered: an OOM under DDP or during evaluation stops the run. (Past 400 lines: the loop, one
step and its logging read best in one file.)
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from hamt.checkpoint import model_identity, remove_stale_temps
from hamt.tokens import RandomWindows, load_split, read_meta
from hamt.errors import ConfigError
from hamt.metrics.systems import PeakMemory, flops_per_token, max_context, mfu, peak_flops
from hamt.runtime import DistInfo, autocast_context, init_distributed, is_oom
from hamt.train import export, inputs, state
from hamt.train.evaluate import evaluate
from hamt.train.faults import EnvFaults
from hamt.train.ladder import Ladder, TrainingFailed, take_oom_rung
from hamt.train.logs import LOG_COLUMNS, CSVLog, TextLog, make_logger, print_event, progress
from hamt.train.optimizer import make_optimizer
from hamt.train.schedule import WarmupCosine
from hamt.train.signals import StopSignals
from hamt.zoo import build_model, model_config_for, params_for


def train(params, *, resume: bool | str = False, model: str = "hamt", name: str | None = None,
          fault_hook: Callable[[int], Any] | None = None, force_new: bool = False) -> dict:
    """Train ``model`` (a name of ``hamt.zoo``) on the tokens of ``params.tokenizer.tokens_dir`` as run
    ``name`` (default: the model's name); return the summary (= metrics.json).

    ``resume``: True continues from the newest valid checkpoint in ``<out_dir>/<name>`` (a fresh start
    when there is none); a path resumes from that checkpoint file. Without it, a folder holding another
    run's checkpoints is refused unless ``force_new`` (the new run then replaces them once it has its
    first checkpoint). DVC removes a stage's outputs before retraining and the flow clears a fresh run's
    folders, so the pipeline's calls start in an empty folder. ``fault_hook(step)`` is called
    before each attempt at a step (tests): it may raise (e.g. ``torch.OutOfMemoryError``) or return
    ``"nan"`` to poison that step's loss.
    """
    if resume and force_new:
        raise ConfigError("--resume continues a run and --force-new starts a new one: pass one of them")
    params = params_for(params, model)  # a -seed<N> model trains with train.seed = N
    name = inputs.check_run_name(model if name is None else name)
    inputs.check_output_dirs(params, name)
    dist_info, device = init_distributed(params.train.device)
    try:
        return Trainer(params, name, model, dist_info, device, fault_hook).run(resume, force_new)
    finally:
        if dist_info.ddp and dist.is_initialized():
            dist.destroy_process_group()


class _Diverged(Exception):
    """A non-finite loss or gradient norm in this step (the update was not applied)."""


class Trainer:
    """State of one training run; ``run`` is the loop. Read top to bottom: build, run, step, log."""

    def __init__(self, params, name: str, model: str, dist_info: DistInfo, device, fault_hook=None):
        self.params, self.tp, self.fp = params, params.train, params.fallback
        self.name, self.dist, self.device = name, dist_info, device
        self.memory = PeakMemory(device).__enter__()  # peak memory of this run (read at each log)
        self.master = dist_info.master
        self.ckpt_dir = Path(self.tp.out_dir) / name
        self.results_dir = Path(self.tp.results_dir) / name
        self.tokens_dir = Path(params.tokenizer.tokens_dir)
        self.signals = StopSignals(announce=self.master)
        env = os.environ.get("HAMT_FAULTS", "")
        self.env_faults = EnvFaults(env, lambda: self.signals.signum is not None) if env else None
        self.fault_hook = fault_hook
        self.text_log = None
        if self.env_faults is not None:  # never silent: a forgotten variable would fail a real run on cue
            self.event_log(f"fault injection is on (HAMT_FAULTS={env!r}), a test setting: unset it for a real run")

        # Data (checked against meta.json before any work) ------------------------------------------
        self.meta = inputs.checked_meta(self.tokens_dir, read_meta)
        self.train_tokens = load_split(self.tokens_dir, "train", self.meta)
        self.valid_tokens = load_split(self.tokens_dir, "valid", self.meta)
        inputs.check_token_ids(self.tokens_dir, self.meta, {"train": self.train_tokens, "valid": self.valid_tokens})
        self._vocab_note = inputs.model_vocab_note(params, int(self.meta["vocab_size"]))  # for train.log

        # Batch geometry: batch_size = micro_batch_size x accumulation x world_size.
        per_rank, rem = divmod(self.tp.batch_size, dist_info.world_size)
        if rem or per_rank % self.tp.micro_batch_size:
            raise ConfigError(
                f"train.batch_size ({self.tp.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.tp.micro_batch_size}) x world size ({dist_info.world_size})"
            )
        self.per_rank_batch = per_rank

        # Model, optimiser, ladder -------------------------------------------------------------------
        self.config = model_config_for(params, model, int(self.meta["vocab_size"]))
        ctx = max_context(self.config)
        if ctx is not None and self.tp.seq_len > ctx:
            raise ConfigError(f"train.seq_len ({self.tp.seq_len}) exceeds the model's context ({ctx})")
        torch.manual_seed(self.tp.seed)  # identical initial weights on every rank
        self.raw_model = build_model(self.config).to(device)
        self.raw_model.train()
        self.n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.identity = model_identity(self.config)
        self.run_info = state.new_run(params, model, dist_info)  # in every checkpoint; a resume adopts its own
        self.supersedes = False  # --force-new: remove the other runs' checkpoints after this run's first
        self._gc_supported = bool(getattr(self.raw_model, "supports_gradient_checkpointing", False))
        self._gc_on = False

        self.ladder = Ladder(self.tp.micro_batch_size, self.tp.seq_len, self.tp.gradient_checkpointing, self.tp.seed)
        self.sched = WarmupCosine(self.tp.lr, self.tp.min_lr, self.tp.warmup_steps, self.tp.max_steps)
        self.optimizer = make_optimizer(self.raw_model, self.tp.lr, self.tp.betas, self.tp.weight_decay, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.tp.precision == "fp16")
        self._compile_pending = False
        self._wrap_model()
        if self.ladder.gradient_checkpointing:
            self.set_gradient_checkpointing(True)
        self.loader = self.make_loader()

        # Per-rank RNG for everything after init (dropout); the loader has its own generator.
        torch.manual_seed(self.tp.seed + dist_info.rank)
        random.seed(self.tp.seed + dist_info.rank)
        np.random.seed((self.tp.seed + dist_info.rank) % 2**32)

        # Bookkeeping (saved in checkpoints: hamt.train.state) ---------------------------------------
        self.step = 0
        self.tokens_seen = 0
        self.train_time = 0.0  # seconds in timed training steps (not eval, checkpoints, compilation)
        self.timed_tokens = 0
        self.best_val = None
        self.last_val = None
        self.val_step = -1  # the step of last_val
        self.resumed_from = None
        self.last_saved_step = None
        self.interval = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0, "fid": []}  # since the last log row
        self._last = {"lr": None, "grad_norm": None}
        self.csv = None
        self.peak, self.peak_source = peak_flops(device, self.tp.precision, self.tp.peak_flops)
        self.flops_tok = flops_per_token(self.raw_model, self.tp.seq_len)["total"]

    # --- construction helpers ------------------------------------------------------------------
    def _wrap_model(self, compile_ok: bool = True) -> None:
        """self.model: the module the loop calls (compiled and/or DDP-wrapped raw_model)."""
        model = self.raw_model
        if self.tp.compile and compile_ok:
            try:
                model = torch.compile(model)
                self._compile_pending = True
            except Exception as e:
                self._compile_failed(e)
                model = self.raw_model
        if self.dist.ddp:
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = model

    def _compile_failed(self, err: BaseException) -> None:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        msg = f"torch.compile failed ({type(err).__name__}: {first}); continuing in eager mode"
        warnings.warn(msg, stacklevel=2)
        self.event_log(f"warning: {msg}")
        self._compile_pending = False

    def set_gradient_checkpointing(self, on: bool) -> bool:
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

    def make_loader(self) -> RandomWindows:
        return RandomWindows(self.train_tokens, self.per_rank_batch, self.ladder.seq_len, self.ladder.loader_seed,
                             self.dist.rank, self.dist.world_size, name="the train split")

    # --- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool | str, force_new: bool = False) -> dict:
        """Hold the folder's lock (rank 0) for the whole run; a second run in the same folder exits at once."""
        with inputs.exclusive(self.ckpt_dir) if self.master else contextlib.nullcontext():
            return self._run(resume, force_new)

    def publish_logs(self) -> None:
        """The run has state to record (a checkpoint or a row): from now on log.csv and train.log are its own."""
        if self.text_log is not None:
            self.text_log.start()
        if self.csv is not None:
            self.csv.start()

    def _run(self, resume: bool | str, force_new: bool) -> dict:
        self.text_log = TextLog(self.results_dir / "train.log", enabled=self.master)
        if self._vocab_note:
            self.event_log(self._vocab_note, echo=False)
        if self.master:
            remove_stale_temps(self.ckpt_dir)
        if resume:
            state.resume(self, resume)
        else:
            state.claim(self, force_new)
        self.csv = CSVLog(self.results_dir / "log.csv", LOG_COLUMNS, resume_step=self.step) if self.master else None
        self.logger = make_logger(self.tp.wandb, self.params.to_dict(), enabled=self.master, run_name=self.name)
        self.event_log(
            f"{'resuming' if self.resumed_from else 'starting'} {self.name}: {type(self.raw_model).__name__}, "
            f"{self.n_params:,} params, device {self.device}, {self.tp.precision}, world {self.dist.world_size}, "
            f"step {self.step}/{self.tp.max_steps}", echo=self.master)
        self.signals.install()
        self.bar = progress(self.tp.max_steps, self.step, desc=self.name, enabled=self.master)
        t_start = time.time()
        try:
            if self.step == 0 and self.fp.enabled and self.fp.max_divergence_retries > 0:
                state.save(self)  # step 0: the state a divergence before the first checkpoint rolls back to
            while self.step < self.tp.max_steps:
                if self.signals.requested(self.dist, self.device):
                    return export.interrupted(self, t_start)
                self._one_step()
            if self.last_saved_step != self.step:
                state.save(self)
            if self.last_val is None or self.val_step != self.step:
                self._evaluate_and_log(force_eval=True)
            return export.finish(self, t_start)
        except TrainingFailed as e:
            # The flow reads this to decide on its fallback profile; the rungs taken are in "fallbacks".
            if self.master:
                self.event_log(f"failed: {e}", echo=False)
                self.publish_logs()
                export.write_metrics(self, {**export.summary(self, t_start), "failed": str(e)})
            raise
        finally:
            self.bar.close()
            self.signals.restore()
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
        iv = self.interval
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
            state.save(self)

    def _attempt_step(self, step: int, x: torch.Tensor):
        """Forward/backward over micro-batches and one optimiser update; walks the ladder on OOM."""
        while True:
            try:
                fault = self._fault(step)
                return self._forward_backward_update(step, x, poison=(fault == "nan"))
            except _Diverged as d:
                state.roll_back(self, step, str(d))
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

    def _forward_backward_update(self, step: int, x: torch.Tensor, poison: bool = False):
        """One update from batch ``x`` (B_rank, T): (loss, grad norm, lr, fidelity or None, tokens, all ranks)."""
        lr = self.sched(step - 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        chunks = x.split(self.ladder.micro_batch_size)  # accumulation: B_rank / micro chunks of (micro, T)
        n = len(chunks)
        loss_sum = torch.zeros((), device=self.device)
        fid_sum, fid_n = torch.zeros((), device=self.device), 0  # summed on the device: one sync per step
        for i, xm in enumerate(chunks):
            sync = self.dist.ddp and i < n - 1  # all-reduce gradients on the last micro-batch only
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

    def _on_oom(self, step: int, err: BaseException, x: torch.Tensor) -> torch.Tensor:
        """Take the next rung of the ladder (or give up). Returns the batch to retry the step with."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        kind, new, line = take_oom_rung(self.ladder, self.fp, step, err, per_rank_batch=self.per_rank_batch,
                                        gc_supported=self._gc_supported, ddp=self.dist.ddp, rank=self.dist.rank,
                                        seed=self.tp.seed)
        self.event_log(line)
        if kind == "gradient_checkpointing":
            self.set_gradient_checkpointing(True)
        if kind == "seq_len":
            self.loader = self.make_loader()  # windows of the new length, seeded by this step
            self.flops_tok = flops_per_token(self.raw_model, new)["total"]  # attention FLOPs follow T
            return x[:, :new].contiguous()  # (B_rank, new)
        return x

    # --- evaluation and logging --------------------------------------------------------------------
    def _evaluate_and_log(self, force_eval: bool = False) -> None:
        step = self.step
        do_eval = force_eval or step % self.tp.eval_every == 0 or step == self.tp.max_steps
        if not (do_eval or step % self.tp.log_every == 0):
            return
        row = {"step": step, "tokens": self.tokens_seen, "train_time_s": self.train_time, **self._last}
        iv = self.interval
        if iv["n"]:
            row["train_loss"] = iv["loss"] / iv["n"]
        if iv["time"] > 0:
            tps = iv["tokens"] / iv["time"]
            row.update(tokens_per_s=tps, mfu=mfu(tps, self.flops_tok, self.peak))
            if iv["fid"]:
                row["fidelity"] = sum(iv["fid"]) / len(iv["fid"])
        row["peak_mem_mb"] = self.memory.read() / 2**20
        if do_eval:
            ev = evaluate(self.raw_model, self.valid_tokens, batch_size=self.ladder.micro_batch_size,
                          seq_len=self.ladder.seq_len, seed=self.tp.seed + 1, n_batches=self.tp.eval_batches,
                          device=self.device, precision=self.tp.precision, dist_info=self.dist)
            row.update(ev)
            self.last_val = ev["val_loss"]
            self.val_step = step
            self.best_val = ev["val_loss"] if self.best_val is None else min(self.best_val, ev["val_loss"])
        self.interval = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0, "fid": []}
        if self.master:
            self.publish_logs()
            self.csv.append(row)
            self.logger.log({k: v for k, v in row.items() if k != "step"}, step=step)
            if do_eval:
                self.bar.set_postfix(loss=f"{row.get('train_loss') or float('nan'):.3f}",
                                     val=f"{row['val_loss']:.3f}", refresh=False)

    def event_log(self, msg: str, echo: bool = True) -> None:
        """A line in train.log (rank 0), also printed on stderr unless ``echo`` is false."""
        if self.text_log is not None:
            self.text_log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}", echo=False)
        if echo and self.master:
            print_event(f"hamt train: {msg}")
