"""``hamt bench memory``: one row per scan mode, and the exact byte count of the bandwidth floor."""

from __future__ import annotations

import pytest

from .conftest import rows_of


def test_memory_rows(bench_all):
    rows = rows_of(bench_all, "memory")
    assert [r["mode"] for r in rows][:2] == ["reference", "chunk"]
    ref = rows[0]
    assert ref["speedup_vs_reference"] == pytest.approx(1.0)
    for r in rows:
        assert r["fwd_bwd_ms"] > 0 and r["floor_fwd_bwd_ms"] > 0 and r["times_floor"] > 0


def test_memory_io_bytes_formula():
    from hamt.bench.memory import memory_io_bytes

    io = memory_io_bytes(B=1, T=2, H=1, S=1, F=1)
    # forward: q,k,v,r (4 x 2 x 8) + log f (2 x 4) + w,b (2 x 2 x 4) + state (8) = 64 + 8 + 16 + 8
    assert io["forward"] == 96
    # backward: the forward's reads and writes again (dL/dr, dL/dstate), then dq, dk, dv, dlog f, dw, db
    assert io["backward"] == 96 + 3 * 16 + 8 + 2 * 8 and io["total"] == io["forward"] + io["backward"]


def test_step_fns_accept_another_scan():
    import torch

    from hamt.bench.memory import memory_inputs, memory_step_fns
    from hamt.ops import memory_scan

    calls = []

    def scan(**kw):
        calls.append(1)
        return memory_scan(**kw, mode="reference")

    inputs = memory_inputs(1, 4, 1, 2, 3, torch.device("cpu"))
    fwd, fwd_bwd = memory_step_fns(inputs, "reference", torch.device("cpu"), scan=scan)
    fwd()
    fwd_bwd()
    assert len(calls) == 2
