"""The specification (hamt/ops/naive.py): the step is the loop's body, the slot permutations are fixed,
and the holographic property itself (exact unbinding, crosstalk that grows with pairs and shrinks with slots)."""

import pytest
import torch
from scan_helpers import make_inputs

from hamt.ops import memory_reference, memory_step, slot_permutations, unitary


def test_step_is_the_reference_body():
    x = make_inputs(2, 1, 2, 3, 7, torch.float64)
    r, u, s = memory_step(*(x[n][:, 0] for n in ("q", "k", "v", "log_f", "w", "b")), x["perm"], x["state"],
                          x["c"][:, 0])
    r2, u2, s2 = memory_reference(**x)
    torch.testing.assert_close(r, r2[:, 0])
    torch.testing.assert_close(u, u2[:, 0])
    torch.testing.assert_close(s, s2)


def test_permutations_are_fixed_and_valid():
    p = slot_permutations(5, 11, seed=3)
    assert torch.equal(p, slot_permutations(5, 11, seed=3))
    assert torch.equal(p[0], torch.arange(11))
    assert all(torch.equal(row.sort().values, torch.arange(11)) for row in p)
    assert not torch.equal(p[1], p[2])


# --- the holographic property ------------------------------------------------------------------

def _bind_recall(n_pairs, slots, F=65, trials=64, seed=0):
    """Write n_pairs unitary-key/value pairs (no decay, uniform slots), read every key back: mean cosine."""
    g = torch.Generator().manual_seed(seed)
    P = 2 * (F - 1)
    keys = unitary(torch.fft.rfft(torch.randn(trials, n_pairs, 1, P, generator=g, dtype=torch.float64)), eps=1e-300)
    vals = torch.randn(trials, n_pairs, 1, P, generator=g, dtype=torch.float64)
    V = torch.fft.rfft(vals)
    log_f = torch.zeros(trials, n_pairs, 1, dtype=torch.float64)  # f = 1: no forgetting
    w = torch.full((trials, n_pairs, 1, slots), 1.0 / slots, dtype=torch.float64)  # uniform write
    perm = slot_permutations(slots, F, seed=seed)
    _, _, M = memory_reference(keys, keys, V, log_f, w, w, perm)
    # unbind each key from the final memory with uniform read weights (times S to undo the 1/S write)
    kp = keys[..., perm]  # (trials, n, 1, S, F)
    R = (kp.conj() * M[:, None]).sum(-2) * (1.0 / slots) * slots
    rec = torch.fft.irfft(R, n=P)
    return torch.nn.functional.cosine_similarity(rec, vals, dim=-1).mean().item()


def test_one_pair_unbinds_exactly():
    assert _bind_recall(1, 1) == pytest.approx(1.0, abs=1e-12)
    assert _bind_recall(1, 4) == pytest.approx(1.0, abs=1e-12)


def test_recall_falls_with_pairs_and_rises_with_slots():
    by_pairs = [_bind_recall(n, 1) for n in (2, 8, 32)]
    assert by_pairs[0] > by_pairs[1] > by_pairs[2]
    by_slots = [_bind_recall(16, s) for s in (1, 4, 16)]
    assert by_slots[0] < by_slots[1] < by_slots[2]
