"""The chunked path (hamt/ops/chunk.py) against the reference loop: outputs, final states, gradients."""

import functools

import pytest
import torch
from scan_helpers import TOL, assert_grads_match_reference, make_inputs

import hamt.ops.chunk
from hamt.ops import memory_chunked, memory_reference, memory_scan


@pytest.fixture(params=["one", "many"])
def blocks(request, monkeypatch):
    """'one': the default block size (these small inputs fit one block); 'many': blocks of two
    chunks, so that both the chunk-level matmul inside a block and the carry across blocks run."""
    if request.param == "many":
        monkeypatch.setattr(hamt.ops.chunk, "_block_len", lambda N, S, F, chunk, T: 2 * chunk)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk", [(1, 8), (7, 8), (16, 8), (37, 4), (50, 16)])
@pytest.mark.parametrize("gated", [True, False])
def test_chunked_matches_reference_forward(dtype, T, chunk, gated, blocks):
    x = make_inputs(2, T, 3, 4, 9, dtype, gated)
    r1, u1, s1 = memory_reference(**x)
    r2, u2, s2 = memory_chunked(**x, chunk_size=chunk)
    for a, b in ((r2, r1), (u2, u1), (s2, s1)):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk,S", [(13, 4, 3), (24, 8, 1), (41, 4, 2)])
def test_chunked_matches_reference_gradients(dtype, T, chunk, S, blocks):
    assert_grads_match_reference(functools.partial(memory_chunked, chunk_size=chunk), dtype, T, S, with_c=True)


@pytest.mark.parametrize("with_c", [True, False])
def test_strong_decay_and_partial_inputs(with_c, blocks):
    """Forget factors near 0 (decays far below float32's range, flushed to 0 inside the chunk path)
    and gradients requested for only some inputs still match the reference."""
    x = make_inputs(2, 19, 2, 3, 5, torch.float64, with_c=with_c)
    log_f = x.pop("log_f").clone()
    log_f[:, 5] = -80.0  # a full reset: exp(-80) underflows the chunk's decay products
    log_f[:, 11:14] = -30.0
    v = x.pop("v")
    outs = []
    for fn in (memory_reference, functools.partial(memory_chunked, chunk_size=4)):
        v_, lf_ = v.clone().requires_grad_(True), log_f.clone().requires_grad_(True)
        r, u, s = fn(v=v_, log_f=lf_, **x)
        loss = torch.view_as_real(r).square().sum() + torch.view_as_real(s).sum()
        if with_c:
            loss = loss + torch.view_as_real(u).sum()
        loss.backward()
        outs.append((r, s, v_.grad, lf_.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_float64_gradcheck_of_chunked_path():
    x = make_inputs(1, 6, 1, 2, 3, torch.float64, with_c=False)

    def f(v_, log_f_, w_):
        r, _, s = memory_chunked(**{**x, "v": v_, "log_f": log_f_, "w": w_}, chunk_size=4)
        return torch.view_as_real(r), torch.view_as_real(s)
    assert torch.autograd.gradcheck(f, tuple(x[n].clone().requires_grad_() for n in ("v", "log_f", "w")))


def test_state_carries_across_segments():
    """Running [0, T) in two segments with the state handed over equals one pass."""
    x = make_inputs(2, 30, 2, 3, 7, torch.float64, with_c=False)
    seq = ("q", "k", "v", "log_f", "w", "b")
    r, _, s = memory_scan(**x, mode="chunk", chunk_size=8)
    first = {n: x[n][:, :11] for n in seq}
    second = {n: x[n][:, 11:] for n in seq}
    r1, _, s1 = memory_scan(**first, perm=x["perm"], state=x["state"], mode="chunk", chunk_size=8)
    r2, _, s2 = memory_scan(**second, perm=x["perm"], state=s1, mode="reference")
    torch.testing.assert_close(torch.cat([r1, r2], 1), r)
    torch.testing.assert_close(s2, s)
