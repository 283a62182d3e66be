"""The fused CPU kernel (hamt/ops/fused_cpu.py + csrc/memory_scan.c) against the reference loop, its
build cache, and the chunked fallback where it cannot be built."""

import functools
import shutil
from pathlib import Path

import pytest
import torch
from scan_helpers import GRAD_TOL, TOL, assert_grads_match_reference, make_inputs, rel_err

import hamt.ops
import hamt.ops.fused_cpu as fused_cpu
from hamt.ops import cpu_kernel_status, memory_fused_cpu, memory_reference, memory_scan


def _fused(*args, chunk_size, **kw):
    ok, why = cpu_kernel_status()
    if not ok:
        pytest.skip(f"fused CPU kernel unavailable: {why}")
    return memory_fused_cpu(*args, chunk_size=chunk_size, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 8), (37, 4), (50, 16)])
@pytest.mark.parametrize("with_state", [True, False])
def test_fused_cpu_matches_reference_forward(dtype, T, chunk, with_state):
    x = make_inputs(2, T, 3, 4, 9, dtype, with_state=with_state)
    r1, u1, s1 = memory_reference(**x)
    r2, u2, s2 = _fused(**x, chunk_size=chunk)
    for a, b in ((r2, r1), (u2, u1), (s2, s1)):
        torch.testing.assert_close(a, b, **TOL[dtype])
    r3, u3, s3 = _fused(**{**x, "c": None}, chunk_size=chunk)
    assert u3 is None
    torch.testing.assert_close(r3, r1, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,chunk,S,with_c", [(13, 4, 3, True), (24, 8, 1, False), (41, 16, 2, True)])
def test_fused_cpu_matches_reference_gradients(dtype, T, chunk, S, with_c):
    assert_grads_match_reference(functools.partial(_fused, chunk_size=chunk), dtype, T, S, with_c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_cpu_blocks_of_rows_in_the_models_layout(dtype):
    """The kernel runs its rows (batch x head) a block of SIMD lanes at a time. 18 rows (two full blocks and a
    partial one at 8 lanes), raw pairs read in place from one (B, T, 3, H, F, 2) projection with normalize=eps,
    on 1 and 2 threads, match the float64 reference: outputs, final state and every gradient."""
    _check_blocks_of_rows(dtype)


def _check_blocks_of_rows(dtype):
    B, T, H, S, F = 3, 21, 6, 3, 7
    x = make_inputs(B, T, H, S, F, torch.float64, seed=3)
    proj = torch.randn(B, T, 3, H, F, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = [torch.randn(B, T, H, F, 2, dtype=torch.float64) for _ in range(2)] + [torch.randn(B, H, S, F, 2,
                                                                                                   dtype=torch.float64)]

    def run(mode, cast):
        leaves = {n: cast(t).detach().clone().requires_grad_() for n, t in
                  (("proj", proj), *((n, x[n]) for n in ("log_f", "w", "b", "c", "state")))}
        q, k, v = leaves["proj"].unbind(2)
        if mode == "cpu":
            ok, why = cpu_kernel_status()
            if not ok:
                pytest.skip(f"fused CPU kernel unavailable: {why}")
        r, u, st = memory_scan(q, k, v, leaves["log_f"], leaves["w"], leaves["b"], x["perm"], leaves["state"],
                               leaves["c"], mode=mode, chunk_size=8, normalize=1e-6)
        outs = [r, u, torch.view_as_real(st)]
        sum((o.double() * wt).sum() for o, wt in zip(outs, weights)).backward()
        grads = {n: torch.view_as_real(t.grad) if t.grad.is_complex() else t.grad for n, t in leaves.items()}
        return [o.detach().double() for o in outs], {n: g.double() for n, g in grads.items()}

    ref_out, ref_grad = run("reference", lambda t: t)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, grad = run("cpu", lambda t: t.to(dtype) if t.is_floating_point() else t.to(
                torch.complex64 if dtype == torch.float32 else torch.complex128))
            for a, b in zip(out, ref_out):
                torch.testing.assert_close(a, b, **TOL[dtype])
            assert set(grad) == set(ref_grad)
            errors = {k: rel_err(grad[k], ref_grad[k]) for k in grad}
            assert all(e < GRAD_TOL[dtype] for e in errors.values()), errors
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("terms", [("r",), ("r", "u", "state")])
def test_fused_cpu_gradients_from_broadcast_output_gradients(terms):
    """Gradients of plain sums: autograd hands the kernel broadcast (stride 0) output gradients, which it copies
    to contiguous ones. Those copies must live until the kernel has read them: a copy freed first (the kernel's
    own buffers then reused its memory) gave wrong gradients (AddressSanitizer: heap-use-after-free)."""
    x = make_inputs(2, 9, 3, 4, 5, torch.float64)

    def grads(mode):
        q, k, v = (torch.view_as_real(x[n]).detach().clone().requires_grad_() for n in ("q", "k", "v"))
        st = x["state"].detach().clone().requires_grad_()
        r, u, s = memory_scan(q, k, v, x["log_f"], x["w"], x["b"], x["perm"], st, x["c"], mode=mode, chunk_size=4,
                              normalize=1e-6)
        outs = {"r": r, "u": u, "state": torch.view_as_real(s)}
        loss = sum(outs[t].sum() for t in terms)
        return torch.autograd.grad(loss, (q, k, v, st), allow_unused=True)

    if not cpu_kernel_status()[0]:
        pytest.skip(f"fused CPU kernel unavailable: {cpu_kernel_status()[1]}")
    ref = grads("reference")
    for _ in range(3):  # the allocator's reuse of freed memory depends on what ran before
        for a, b in zip(grads("cpu"), ref):
            assert (a is None) == (b is None)
            assert a is None or rel_err(a, b) < GRAD_TOL[torch.float64]


def test_fused_cpu_threads_and_auto_mode():
    """Rows split over two threads give the same result as one; mode='auto' picks the kernel on CPU."""
    x = make_inputs(3, 20, 3, 4, 9, torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _fused(**x, chunk_size=8)
        torch.set_num_threads(2)
        two = _fused(**x, chunk_size=8)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    # non-contiguous (head-major strided) and conjugate-view inputs are read correctly
    strided = {n: x[n].transpose(1, 2).contiguous().transpose(1, 2) for n in ("k", "v", "log_f", "w", "b")}
    q_conj = x["q"].conj().resolve_conj().conj()  # same values as q, a lazy conjugate view
    three = _fused(**{**x, **strided, "q": q_conj}, chunk_size=8)
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    calls = []
    orig = hamt.ops.memory_fused_cpu
    try:
        hamt.ops.memory_fused_cpu = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
        memory_scan(**x, mode="auto", chunk_size=8)
    finally:
        hamt.ops.memory_fused_cpu = orig
    assert calls == [1]


def test_fused_cpu_casts_gates_and_rejects_other_dtypes():
    """float32 gates with complex128 inputs are cast to the kernel's precision; non-complex inputs are refused."""
    x = make_inputs(2, 9, 2, 3, 5, torch.float64)
    ref = memory_reference(**x)
    out = _fused(**{**x, **{n: x[n].float() for n in ("w", "b", "c")}, "log_f": x["log_f"].float().double()},
                 chunk_size=4)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="complex64/complex128"):
        memory_fused_cpu(x["q"].real, x["k"].real, x["v"].real, x["log_f"], x["w"], x["b"], x["perm"])


def test_float64_gradcheck_of_fused_cpu_kernel():
    x = make_inputs(1, 6, 1, 2, 3, torch.float64, with_c=False)
    _fused(**x, chunk_size=4)  # skips without the kernel
    names = ("q", "v", "log_f", "w", "state")

    def f(*args):
        r, _, s = memory_fused_cpu(**{**x, **dict(zip(names, args))}, chunk_size=4)
        return torch.view_as_real(r), torch.view_as_real(s)
    assert torch.autograd.gradcheck(f, [x[n].clone().requires_grad_() for n in names])


def test_fused_cpu_without_shuffles_matches_reference(fresh_kernel, monkeypatch):
    """The kernel built with -DHAMT_NO_SHUFFLE moves rows in and out of the lanes with plain loops (what a
    compiler without __builtin_shufflevector builds): the same results as the reference."""
    monkeypatch.setattr(fused_cpu, "_CPU_KERNEL_FLAGS", fused_cpu._CPU_KERNEL_FLAGS + ["-DHAMT_NO_SHUFFLE"])
    fused_cpu._flags.cache_clear()
    try:
        for dtype in (torch.float64, torch.float32):
            _check_blocks_of_rows(dtype)
        assert "-DHAMT_NO_SHUFFLE" in fused_cpu._flags(shutil.which("cc") or shutil.which("gcc") or "cc")
    finally:
        fused_cpu._flags.cache_clear()


def test_fused_cpu_ops_pass_opcheck_and_compile_whole():
    """The kernel is two torch.library ops: torch.library.opcheck passes (schema, fake tensors, autograd
    registration, AOT dispatch), and a HAMT block compiles with fullgraph=True (aot_eager: the fake
    implementations and the autograd formula, no code generation) to the eager outputs and gradients."""
    from hamt.config import HAMTConfig
    from hamt.layers import HAMTBlock

    if not cpu_kernel_status()[0]:
        pytest.skip(f"fused CPU kernel unavailable: {cpu_kernel_status()[1]}")
    x = make_inputs(2, 9, 3, 4, 5, torch.float64)
    q, k, v = (torch.view_as_real(x[n]).requires_grad_() for n in ("q", "k", "v"))
    args = (q, k, v, x["log_f"], x["w"], x["b"], x["c"], x["perm"].to(torch.int32),
            torch.view_as_real(x["state"]), 4, 1e-6, True, True)
    torch.library.opcheck(fused_cpu._scan_fwd, args)

    torch.manual_seed(0)
    block = HAMTBlock(HAMTConfig.from_preset("tiny"), 0).double()
    inp = torch.randn(2, 12, block.norm1.weight.shape[0], dtype=torch.float64)
    runs = []
    for fn in (block, torch.compile(block, fullgraph=True, backend="aot_eager")):
        block.zero_grad()
        xi = inp.clone().requires_grad_()
        out = fn(xi)[0]
        out.square().sum().backward()
        runs.append([out.detach(), xi.grad] + [p.grad for p in block.parameters() if p.grad is not None])
    torch._dynamo.reset()
    assert len(runs[0]) == len(runs[1]) > 5
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


# --- build: the packaged source, the cache, the fallback -------------------------------------------

@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A fused_cpu module state as before its first use, building into an empty cache folder."""
    monkeypatch.setattr(fused_cpu, "_cpu_kernel_lib", None)
    monkeypatch.setattr(fused_cpu, "_cpu_kernel_error", None)
    monkeypatch.setenv("HAMT_CPU_KERNEL_DIR", str(tmp_path))
    monkeypatch.delenv("HAMT_CPU_KERNEL", raising=False)
    return tmp_path


def test_source_is_the_packaged_c_file():
    c_file = Path(fused_cpu.__file__).parent / "csrc" / "memory_scan.c"
    text = c_file.read_text(encoding="utf-8")
    src = fused_cpu._source()
    assert "hamt_scan_fwd" in text and src.count(text) == 2  # once per precision
    assert "#define REAL float" in src and "#define REAL double" in src


def test_build_is_cached_by_source_content(fresh_kernel, monkeypatch):
    if not cpu_kernel_status()[0]:  # builds into the empty folder
        pytest.skip(f"fused CPU kernel unavailable: {cpu_kernel_status()[1]}")
    assert len(list(fresh_kernel.glob("memory_*.so"))) == 1

    class Compiled(Exception):
        pass

    def compile_(*args, **kwargs):
        raise Compiled
    monkeypatch.setattr(fused_cpu.subprocess, "run", compile_)
    fused_cpu._compile_cpu_kernel()  # the same source again: loaded from the cache, never compiled
    src = fused_cpu._source()
    monkeypatch.setattr(fused_cpu, "_source", lambda: src + "/* an edit of memory_scan.c */\n")
    with pytest.raises(Compiled):  # other content is another key: compiled anew
        fused_cpu._compile_cpu_kernel()


@pytest.mark.parametrize("why", ["no compiler", "disabled"])
def test_falls_back_to_chunk_without_the_kernel(fresh_kernel, monkeypatch, why):
    """Without a working compiler (or with HAMT_CPU_KERNEL=0) the status says why, mode='auto' runs the
    chunked path with the same results, and asking for the kernel explicitly is a clear error."""
    if why == "no compiler":
        monkeypatch.setenv("CC", str(fresh_kernel / "no-such-cc"))
    else:
        monkeypatch.setenv("HAMT_CPU_KERNEL", "0")
    ok, reason = cpu_kernel_status()
    assert not ok and reason != "ok"
    assert ("HAMT_CPU_KERNEL=0" in reason) == (why == "disabled")
    x = make_inputs(2, 11, 2, 3, 5, torch.float64)
    calls = []
    orig = hamt.ops.memory_chunked
    monkeypatch.setattr(hamt.ops, "memory_chunked", lambda *a, **kw: calls.append(kw["chunk_size"]) or orig(*a, **kw))
    out = memory_scan(**x, mode="auto", chunk_size=4)
    assert calls == [4]
    for a, b in zip(out, memory_reference(**x)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    with pytest.raises(RuntimeError, match="unavailable"):
        memory_fused_cpu(**x)
