"""The holographic memory: chunked path vs the reference loop (outputs, states, gradients), and the
holographic property itself (exact unbinding, crosstalk that grows with pairs and shrinks with slots)."""

import pytest
import torch

import hamt.ops
import hamt.ops.chunk
from hamt.ops import (cpu_kernel_status, memory_chunked, memory_fused_cpu, memory_reference, memory_scan, memory_step,
                         slot_permutations, unitary)

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def make_inputs(B, T, H, S, F, dtype, gated=True, seed=0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64

    def c(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=dtype), torch.randn(*shape, generator=g, dtype=dtype)).to(cd)

    q, k, v = unitary(c(B, T, H, F)), unitary(c(B, T, H, F)), c(B, T, H, F)
    if gated:
        log_f = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g, dtype=dtype) + 2)
        a = torch.randn(B, T, H, S, generator=g, dtype=dtype).softmax(-1)
        b = torch.randn(B, T, H, S, generator=g, dtype=dtype).softmax(-1)
    else:  # fixed per-head decay, uniform slots
        log_f = torch.nn.functional.logsigmoid(torch.linspace(0, 4, H, dtype=dtype)).expand(B, T, H).clone()
        a = torch.full((B, T, H, S), 1.0 / S, dtype=dtype)
        b = a.clone()
    w = (1 - log_f.exp())[..., None] * a
    state = c(B, H, S, F) if with_state else None
    return q, k, v, log_f, w, b, slot_permutations(S, F, seed), state, a


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
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, T, 3, 4, 9, dtype, gated)
    r1, u1, s1 = memory_reference(q, k, v, log_f, w, b, perm, state, a)
    r2, u2, s2 = memory_chunked(q, k, v, log_f, w, b, perm, state, a, chunk_size=chunk)
    for x, y in ((r2, r1), (u2, u1), (s2, s1)):
        torch.testing.assert_close(x, y, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk,S", [(13, 4, 3), (24, 8, 1), (41, 4, 2)])
def test_chunked_matches_reference_gradients(dtype, T, chunk, S, blocks):
    assert_grads_match_reference(lambda *x: memory_chunked(*x, chunk_size=chunk), dtype, T, S, with_c=True)


def assert_grads_match_reference(fast, dtype, T: int, S: int, with_c: bool) -> None:
    """Gradients of a random real loss over every output, through ``fast`` and through the reference,
    agree for every input (an input without a reference gradient has none through ``fast`` either)."""
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, T, 2, S, 5, dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, log_f, w, b, state, a)]
    grads = []
    for fn in (memory_reference, fast):
        for t in leaves:
            t.grad = None
        q_, k_, v_, lf_, w_, b_, st_, c_ = leaves
        r, u, s = fn(q_, k_, v_, lf_, w_, b_, perm, st_, c_ if with_c else None)
        g = torch.Generator().manual_seed(1)
        # a real scalar loss touching every output (complex outputs: use real and imaginary parts)
        outs = (r, u, s) if with_c else (r, s)
        loss = sum((torch.view_as_real(x) * torch.randn(torch.view_as_real(x).shape, generator=g, dtype=dtype)).sum()
                   for x in outs)
        loss.backward()
        grads.append([None if t.grad is None else t.grad.clone() for t in leaves])
    for name, g_ref, g_new in zip(["q", "k", "v", "log_f", "w", "b", "state", "c"], *grads):
        if g_ref is None:
            assert g_new is None, name
            continue
        assert rel_err(g_new, g_ref) < (1e-9 if dtype == torch.float64 else 1e-4), name


@pytest.mark.parametrize("with_c", [True, False])
def test_strong_decay_and_partial_inputs(with_c, blocks):
    """Forget factors near 0 (decays far below float32's range, flushed to 0 inside the chunk path)
    and gradients requested for only some inputs still match the reference."""
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, 19, 2, 3, 5, torch.float64)
    log_f = log_f.clone()
    log_f[:, 5] = -80.0  # a full reset: exp(-80) underflows the chunk's decay products
    log_f[:, 11:14] = -30.0
    c = a if with_c else None
    outs = []
    for fn in (memory_reference, lambda *x: memory_chunked(*x, chunk_size=4)):
        v_, lf_ = v.clone().requires_grad_(True), log_f.clone().requires_grad_(True)
        r, u, s = fn(q, k, v_, lf_, w, b, perm, state, c)
        loss = torch.view_as_real(r).square().sum() + torch.view_as_real(s).sum()
        if with_c:
            loss = loss + torch.view_as_real(u).sum()
        loss.backward()
        outs.append((r, s, v_.grad, lf_.grad))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y, **TOL[torch.float64])


def _fused(*args, chunk_size):
    ok, why = cpu_kernel_status()
    if not ok:
        pytest.skip(f"fused CPU kernel unavailable: {why}")
    return memory_fused_cpu(*args, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 8), (37, 4), (50, 16)])
@pytest.mark.parametrize("with_state", [True, False])
def test_fused_cpu_matches_reference_forward(dtype, T, chunk, with_state):
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, T, 3, 4, 9, dtype, with_state=with_state)
    r1, u1, s1 = memory_reference(q, k, v, log_f, w, b, perm, state, a)
    r2, u2, s2 = _fused(q, k, v, log_f, w, b, perm, state, a, chunk_size=chunk)
    for x, y in ((r2, r1), (u2, u1), (s2, s1)):
        torch.testing.assert_close(x, y, **TOL[dtype])
    r3, u3, s3 = _fused(q, k, v, log_f, w, b, perm, state, None, chunk_size=chunk)
    assert u3 is None
    torch.testing.assert_close(r3, r1, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk,S,with_c", [(13, 4, 3, True), (24, 8, 1, False), (41, 16, 2, True)])
def test_fused_cpu_matches_reference_gradients(dtype, T, chunk, S, with_c):
    assert_grads_match_reference(lambda *x: _fused(*x, chunk_size=chunk), dtype, T, S, with_c)


def test_fused_cpu_threads_and_auto_mode():
    """Rows split over two threads give the same result as one; mode='auto' picks the kernel on CPU."""
    q, k, v, log_f, w, b, perm, state, a = make_inputs(3, 20, 3, 4, 9, torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _fused(q, k, v, log_f, w, b, perm, state, a, chunk_size=8)
        torch.set_num_threads(2)
        two = _fused(q, k, v, log_f, w, b, perm, state, a, chunk_size=8)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(one, two):
        assert torch.equal(x, y)
    # non-contiguous (head-major strided) and conjugate-view inputs are read correctly
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, log_f, w, b)]
    q_conj = q.conj().resolve_conj().conj()  # same values as q, a lazy conjugate view
    three = _fused(q_conj, *strided[1:], perm, state, a, chunk_size=8)
    for x, y in zip(one, three):
        torch.testing.assert_close(x, y, **TOL[torch.float64])
    calls = []
    orig = hamt.ops.memory_fused_cpu
    try:
        hamt.ops.memory_fused_cpu = lambda *x, **kw: calls.append(1) or orig(*x, **kw)
        memory_scan(q, k, v, log_f, w, b, perm, state, a, mode="auto", chunk_size=8)
    finally:
        hamt.ops.memory_fused_cpu = orig
    assert calls == [1]


def test_fused_cpu_casts_gates_and_rejects_other_dtypes():
    """float32 gates with complex128 inputs are cast to the kernel's precision; non-complex inputs are refused."""
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, 9, 2, 3, 5, torch.float64)
    ref = memory_reference(q, k, v, log_f, w, b, perm, state, a)
    out = _fused(q, k, v, log_f.float().double(), w.float(), b.float(), perm, state, a.float(), chunk_size=4)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="complex64/complex128"):
        memory_fused_cpu(q.real, k.real, v.real, log_f, w, b, perm)


def test_float64_gradcheck_of_fused_cpu_kernel():
    q, k, v, log_f, w, b, perm, state, a = make_inputs(1, 6, 1, 2, 3, torch.float64)
    _fused(q, k, v, log_f, w, b, perm, state, None, chunk_size=4)  # skips without the kernel

    def f(q_, v_, log_f_, w_, st_):
        r, _, s = memory_fused_cpu(q_, k, v_, log_f_, w_, b, perm, st_, None, chunk_size=4)
        return torch.view_as_real(r), torch.view_as_real(s)
    args = [x.clone().requires_grad_() for x in (q, v, log_f, w, state)]
    assert torch.autograd.gradcheck(f, args)


def test_float64_gradcheck_of_chunked_path():
    q, k, v, log_f, w, b, perm, state, a = make_inputs(1, 6, 1, 2, 3, torch.float64)
    def f(v_, log_f_, w_):
        r, _, s = memory_chunked(q, k, v_, log_f_, w_, b, perm, state, None, chunk_size=4)
        return torch.view_as_real(r), torch.view_as_real(s)
    assert torch.autograd.gradcheck(f, (v.requires_grad_(), log_f.requires_grad_(), w.requires_grad_()))


def test_state_carries_across_segments():
    """Running [0, T) in two segments with the state handed over equals one pass."""
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, 30, 2, 3, 7, torch.float64)
    r, _, s = memory_scan(q, k, v, log_f, w, b, perm, state, mode="chunk", chunk_size=8)
    r1, _, s1 = memory_scan(q[:, :11], k[:, :11], v[:, :11], log_f[:, :11], w[:, :11], b[:, :11], perm, state,
                            mode="chunk", chunk_size=8)
    r2, _, s2 = memory_scan(q[:, 11:], k[:, 11:], v[:, 11:], log_f[:, 11:], w[:, 11:], b[:, 11:], perm, s1,
                            mode="reference")
    torch.testing.assert_close(torch.cat([r1, r2], 1), r)
    torch.testing.assert_close(s2, s)


def test_step_is_the_reference_body():
    q, k, v, log_f, w, b, perm, state, a = make_inputs(2, 1, 2, 3, 7, torch.float64)
    r, u, s = memory_step(q[:, 0], k[:, 0], v[:, 0], log_f[:, 0], w[:, 0], b[:, 0], perm, state, a[:, 0])
    r2, u2, s2 = memory_reference(q, k, v, log_f, w, b, perm, state, a)
    torch.testing.assert_close(r, r2[:, 0])
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
