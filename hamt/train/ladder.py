"""The fallback ladder (``params.fallback``): what a run gives up, in order, instead of failing.

Out of memory: halve the micro-batch (the largest divisor of the per-rank batch at most half the
current one; the effective batch stays, through accumulation) down to ``min_micro_batch_size``, then
turn on gradient checkpointing, then halve ``seq_len`` down to ``min_seq_len``, then give up with
``TrainingFailed``. A NaN/inf loss: roll back to the last good checkpoint and multiply the learning
rate by ``lr_factor``, at most ``max_divergence_retries`` times (``hamt.train.state.roll_back``).

The decisions here are pure functions of the ``Ladder`` and ``params.fallback``; the loop applies a
rung to the model and loader. ``Ladder`` is saved in checkpoints, so a resumed run keeps its rungs,
and every rung taken is recorded in ``events`` (metrics.json's "fallbacks").

Under DDP an out-of-memory error stops the run: the other ranks wait in a collective, and a
coordinated ladder would need a second channel, so the ladder runs single-process only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hamt.errors import HAMTError


class TrainingFailed(HAMTError):
    """Training could not continue (fallback ladder exhausted, divergence retries used up)."""


@dataclass
class Ladder:
    """Where the fallback ladder stands (saved in checkpoints, so a resumed run keeps its rungs)."""

    micro_batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    loader_seed: int
    divergence_retries: int = 0
    events: list = field(default_factory=list)

    def record(self, step: int, kind: str, old: Any, new: Any, reason: str) -> str:
        """Append one rung to ``events``; returns the line for the event log."""
        self.events.append({"step": step, "kind": kind, "from": old, "to": new, "reason": reason})
        return f"fallback at step {step}: {kind} {old} -> {new} ({reason})"


def smaller_micro_batch(current: int, minimum: int, per_rank_batch: int) -> int | None:
    """The largest divisor of ``per_rank_batch`` in [minimum, max(minimum, current // 2)]; None if none or at the minimum."""
    if current <= minimum:
        return None
    for m in range(max(minimum, current // 2), minimum - 1, -1):
        if per_rank_batch % m == 0:
            return m
    return None


def next_oom_rung(ladder: Ladder, fp, per_rank_batch: int, gc_supported: bool) -> tuple[str, Any, Any] | None:
    """The next rung after an out-of-memory error as (field of Ladder, old, new); None when exhausted."""
    micro = smaller_micro_batch(ladder.micro_batch_size, fp.min_micro_batch_size, per_rank_batch)
    if micro is not None:
        return "micro_batch_size", ladder.micro_batch_size, micro
    if not ladder.gradient_checkpointing and gc_supported:
        return "gradient_checkpointing", False, True
    if ladder.seq_len > fp.min_seq_len:
        return "seq_len", ladder.seq_len, max(fp.min_seq_len, ladder.seq_len // 2)
    return None


def take_oom_rung(ladder: Ladder, fp, step: int, err: BaseException, *, per_rank_batch: int, gc_supported: bool,
                  ddp: bool, rank: int, seed: int) -> tuple[str, Any, str]:
    """Move ``ladder`` one rung down after ``err`` (recorded): (field, new value, log line); else TrainingFailed."""
    if not fp.enabled:
        raise TrainingFailed(f"out of memory at step {step} and fallback.enabled is false; "
                             "lower train.micro_batch_size or train.seq_len") from err
    if ddp:
        raise TrainingFailed(f"out of memory at step {step} on rank {rank} under DDP (the ladder runs "
                             "single-process only); lower train.micro_batch_size") from err
    rung = next_oom_rung(ladder, fp, per_rank_batch, gc_supported)
    if rung is None:
        raise TrainingFailed(
            f"out of memory at step {step} even with micro_batch_size={ladder.micro_batch_size}, gradient "
            f"checkpointing {'on' if ladder.gradient_checkpointing else 'unsupported'} and seq_len={ladder.seq_len}; "
            "use a smaller model profile or a larger device"
        ) from err
    kind, old, new = rung
    reason = f"out of memory: {str(err).strip().splitlines()[0][:120]}"
    line = ladder.record(step, kind, old, new, reason)
    setattr(ladder, kind, new)
    if kind == "seq_len":
        # The remaining steps draw windows of the new length from a loader seeded by this step.
        ladder.loader_seed = seed + step
    return kind, new, line


def check_divergence(ladder: Ladder, fp, step: int, reason: str) -> None:
    """Raise ``TrainingFailed`` unless a divergence at ``step`` may roll back (ladder on, retries left)."""
    if not fp.enabled:
        raise TrainingFailed(f"{reason} at step {step} and fallback.enabled is false; lower train.lr")
    if ladder.divergence_retries >= fp.max_divergence_retries:
        raise TrainingFailed(f"{reason} at step {step} after {ladder.divergence_retries} roll-backs "
                             f"(fallback.max_divergence_retries); lower train.lr or check the data")
