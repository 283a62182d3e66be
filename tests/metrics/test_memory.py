"""hamt.metrics.memory: retrieval fidelity and slot utilisation of HAMT, nothing for other models."""

from __future__ import annotations

import torch

from hamt.metrics import memory
from metrics.models import tiny_gpt2, tiny_hamt


def test_memory_diagnostics_of_hamt_and_none_for_gpt2():
    ids = torch.randint(0, 50, (100,), generator=torch.Generator().manual_seed(7))
    d = memory.memory_diagnostics(tiny_hamt(), ids, context=16)
    assert -1.0 <= d["fidelity"] <= 1.0
    assert 0.0 <= d["slot_active_fraction"] <= 1.0 and 0.0 <= d["slot_entropy"] <= 1.0 + 1e-6
    assert len(d["slot_usage"]) == 1 and len(d["slot_usage"][0]) == 2
    assert memory.memory_diagnostics(tiny_gpt2(), ids, context=16) == {}
