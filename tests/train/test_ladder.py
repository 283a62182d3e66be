"""hamt.train.ladder: the decisions alone (pure functions), then OOM and NaN in real runs.

A run walks the ladder micro-batch -> gradient checkpointing -> seq_len on out-of-memory and gives
up when it is exhausted; a NaN loss rolls back to the last checkpoint with a lower learning rate, a
bounded number of times.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from hamt.train.ladder import (
    Ladder,
    TrainingFailed,
    check_divergence,
    next_oom_rung,
    smaller_micro_batch,
    take_oom_rung,
)

from .helpers import micro, series


def fallback(**kw):
    d = {"enabled": True, "min_micro_batch_size": 1, "min_seq_len": 16, "max_divergence_retries": 2, "lr_factor": 0.5}
    return SimpleNamespace(**{**d, **kw})


def test_smaller_micro_batch_is_the_largest_divisor_at_most_half_or_the_minimum():
    assert smaller_micro_batch(8, 1, 8) == 4
    assert smaller_micro_batch(12, 1, 12) == 6
    assert smaller_micro_batch(6, 1, 12) == 3
    assert smaller_micro_batch(10, 1, 10) == 5 and smaller_micro_batch(5, 1, 10) == 2  # 2 divides 10, 2.5 is no size
    assert smaller_micro_batch(7, 1, 7) == 1  # a prime batch: straight to 1
    assert smaller_micro_batch(6, 4, 12) == 4  # half would be below the minimum: the minimum itself
    assert smaller_micro_batch(4, 4, 8) is None and smaller_micro_batch(6, 4, 18) is None  # at the minimum / no divisor


def test_oom_rungs_in_order_then_exhausted():
    L, fp = Ladder(micro_batch_size=4, seq_len=64, gradient_checkpointing=False, loader_seed=0), fallback(min_micro_batch_size=2)
    taken = []
    for step in range(1, 10):
        try:
            kind, new, line = take_oom_rung(L, fp, step, RuntimeError("CUDA out of memory\nmore"), per_rank_batch=8,
                                            gc_supported=True, ddp=False, rank=0, seed=100)
        except TrainingFailed as e:
            assert "even with micro_batch_size=2, gradient checkpointing on and seq_len=16" in str(e)
            break
        taken.append((kind, new))
        assert line.startswith(f"fallback at step {step}: {kind}") and line.endswith("(out of memory: CUDA out of memory)")
    assert taken == [("micro_batch_size", 2), ("gradient_checkpointing", True), ("seq_len", 32), ("seq_len", 16)]
    assert L.loader_seed == 100 + 4  # the last seq_len rung (step 4) reseeded the loader
    assert [e["kind"] for e in L.events] == [k for k, _ in taken]


def test_oom_rung_skips_checkpointing_when_the_model_has_none():
    L = Ladder(micro_batch_size=1, seq_len=32, gradient_checkpointing=False, loader_seed=0)
    assert next_oom_rung(L, fallback(), per_rank_batch=8, gc_supported=False) == ("seq_len", 32, 16)
    assert next_oom_rung(L, fallback(min_seq_len=32), per_rank_batch=8, gc_supported=False) is None


def test_oom_ladder_off_or_under_ddp_fails_at_once():
    L = Ladder(micro_batch_size=8, seq_len=32, gradient_checkpointing=False, loader_seed=0)
    kw = dict(per_rank_batch=8, gc_supported=True, rank=1, seed=0)
    with pytest.raises(TrainingFailed, match="fallback.enabled is false"):
        take_oom_rung(L, fallback(enabled=False), 3, RuntimeError("oom"), ddp=False, **kw)
    with pytest.raises(TrainingFailed, match="on rank 1 under DDP"):
        take_oom_rung(L, fallback(), 3, RuntimeError("oom"), ddp=True, **kw)
    assert L.events == [] and L.micro_batch_size == 8


def test_divergence_roll_backs_are_bounded():
    L = Ladder(micro_batch_size=8, seq_len=32, gradient_checkpointing=False, loader_seed=0)
    check_divergence(L, fallback(), 5, "loss nan")  # allowed
    L.divergence_retries = 2
    with pytest.raises(TrainingFailed, match="loss nan at step 5 after 2 roll-backs"):
        check_divergence(L, fallback(), 5, "loss nan")
    with pytest.raises(TrainingFailed, match="fallback.enabled is false"):
        check_divergence(Ladder(8, 32, False, 0), fallback(enabled=False), 5, "loss nan")


# ---------------------------------------------------------------------------------------------------
# In real runs


def test_oom_walks_the_ladder(tokens_dir, tmp_path):
    from hamt.train import train

    p = micro(tokens_dir, tmp_path, "fallback.min_micro_batch_size=2", "fallback.min_seq_len=16")
    calls = []

    def oom_four_times_at_step_3(step):
        if step == 3 and len(calls) < 4:
            calls.append(step)
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2 GiB")

    s = train(p, fault_hook=oom_four_times_at_step_3)
    kinds = [(e["kind"], e["from"], e["to"]) for e in s["fallbacks"]]
    assert kinds == [("micro_batch_size", 8, 4), ("micro_batch_size", 4, 2),
                     ("gradient_checkpointing", False, True), ("seq_len", 32, 16)]
    assert all(e["step"] == 3 and "out of memory" in e["reason"] for e in s["fallbacks"])
    assert s["steps"] == 20 and s["micro_batch_size"] == 2 and s["seq_len"] == 16
    # The effective batch is kept (8 sequences per step); only the sequence got shorter.
    assert s["tokens"] == 2 * 8 * 32 + 18 * 8 * 16
    metrics = json.loads((tmp_path / "results" / "hamt" / "metrics.json").read_text())
    assert metrics["fallbacks"] == s["fallbacks"]
    log = (tmp_path / "results" / "hamt" / "train.log").read_text()
    assert log.count("fallback at step 3") == 4


def test_oom_gives_up_when_the_ladder_is_exhausted(tokens_dir, tmp_path):
    from hamt.train import TrainingFailed, train

    p = micro(tokens_dir, tmp_path, "fallback.min_micro_batch_size=4", "fallback.min_seq_len=32")

    def always_oom(step):
        raise RuntimeError("CUDA out of memory (injected)")

    with pytest.raises(TrainingFailed, match="out of memory at step 1 even with micro_batch_size=4") as e:
        train(p, fault_hook=always_oom)
    assert "\n" not in str(e.value)
    metrics = json.loads((tmp_path / "results" / "hamt" / "metrics.json").read_text())
    assert metrics["failed"] == str(e.value)
    assert [f["kind"] for f in metrics["fallbacks"]] == ["micro_batch_size", "gradient_checkpointing"]


def test_nan_rolls_back_with_lower_lr(tokens_dir, tmp_path):
    from hamt.train import train

    p = micro(tokens_dir, tmp_path, "train.ckpt_every=5")
    fired = []

    def nan_once_at_13(step):
        if step == 13 and not fired:
            fired.append(step)
            return "nan"

    s = train(p, fault_hook=nan_once_at_13)
    (ev,) = s["fallbacks"]
    assert ev["kind"] == "divergence" and ev["step"] == 13 and "rolled back to step 10" in ev["reason"]
    assert ev["to"] == pytest.approx(ev["from"] * 0.5) and s["lr_scale"] == 0.5
    assert s["steps"] == 20
    steps = [int(r["step"]) for r in series(tmp_path)]
    assert steps == sorted(set(steps))  # the rolled-back rows were replaced, not duplicated
    # After the roll-back every step runs at half the scheduled learning rate.
    from hamt.train import WarmupCosine

    tp = p.train
    sched = WarmupCosine(tp.lr, tp.min_lr, tp.warmup_steps, tp.max_steps)
    lrs = {int(r["step"]): float(r["lr"]) for r in series(tmp_path)}
    assert lrs[10] == pytest.approx(sched(9), rel=1e-4) and lrs[15] == pytest.approx(0.5 * sched(14), rel=1e-4)


def test_nan_retries_are_bounded(tokens_dir, tmp_path):
    from hamt.train import TrainingFailed, train

    p = micro(tokens_dir, tmp_path, "train.ckpt_every=2", "fallback.max_divergence_retries=2")
    with pytest.raises(TrainingFailed, match="after 2 roll-backs"):
        train(p, fault_hook=lambda step: "nan" if step >= 3 else None)
