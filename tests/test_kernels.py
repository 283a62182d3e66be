"""The fused Triton memory kernel against the reference loop: outputs, final state, every gradient.

Without a GPU the kernel runs under Triton's interpreter. ``TRITON_INTERPRET`` is read when a kernel
is decorated (at import of ``hamt.ops.triton``), so the interpreter checks run in one
subprocess (this file executed as a script) that sets it before importing Triton; the rest of the
pytest process never sees it. The subprocess prints one JSON line of relative errors per case and
the tests below read them. GPU tests (``-m gpu``) compare on realistic shapes on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# name: (B, T, H, S, F, initial state, c given, dtype, chunk_size, block_f, which outputs enter the loss)
CASES = {
    # T=13 is no multiple of the chunk (4): boundary states, partial last chunk; all outputs in the loss
    "b2h2_s3_chunked_full": (2, 13, 2, 3, 9, True, True, "complex64", 4, None, "r,u,state"),
    # one slot, no c, no initial state, only r in the loss (no final-state gradient), default chunk > T
    "s1_plain": (1, 21, 1, 1, 9, False, False, "complex64", 64, None, "r"),
    # three blocks of frequencies (F=9, block 4, last block partial): atomics and partial sums across blocks
    "freq_blocks": (1, 10, 2, 3, 9, True, False, "complex64", 3, 4, "r,state"),
    # a single time step
    "t1": (2, 1, 1, 3, 9, True, True, "complex64", 64, None, "r,u,state"),
    # float64: agreement to rounding, so any formula slip shows
    "float64": (1, 11, 2, 3, 9, True, True, "complex128", 4, 8, "r,u,state"),
}
TOL = {"complex64": 2e-5, "complex128": 1e-12}
OUTPUTS = ("r", "u", "state_out")
GRADS = ("q", "k", "v", "log_f", "w", "b", "c", "state")


# --------------------------------------------------------------------------------------------------
# The check, run in a subprocess under TRITON_INTERPRET=1 (and directly on CUDA by the GPU tests)
# --------------------------------------------------------------------------------------------------


def make_inputs(B, T, H, S, F, init, with_c, dtype, device="cpu", seed=0):
    """Random memory-scan inputs with the model's constraints (unitary q, k; log f <= 0)."""
    import torch

    from hamt.ops import slot_permutations, unitary

    cdt = getattr(torch, dtype)
    rdt = torch.float32 if cdt == torch.complex64 else torch.float64
    g = torch.Generator().manual_seed(seed)

    def cplx(*shape):
        return torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=rdt))

    q, k = unitary(cplx(B, T, H, F)), unitary(cplx(B, T, H, F))
    v = cplx(B, T, H, F)
    log_f = -2.0 * torch.rand(B, T, H, generator=g, dtype=rdt)  # forget factors down to e^-2
    w, b = torch.rand(B, T, H, S, generator=g, dtype=rdt), torch.rand(B, T, H, S, generator=g, dtype=rdt)
    c = torch.rand(B, T, H, S, generator=g, dtype=rdt) if with_c else None
    state = cplx(B, H, S, F) if init else None
    perm = slot_permutations(S, F, seed=1)
    to = (lambda x: None if x is None else x.to(device))
    return dict(q=to(q), k=to(k), v=to(v), log_f=to(log_f), w=to(w), b=to(b), perm=to(perm), state=to(state), c=to(c))


def run_with_grads(fn, inputs, loss_terms, seed=1):
    """Outputs of ``fn`` and the gradients of a random linear loss of the chosen outputs."""
    import torch

    leaves = {k: (x.detach().clone().requires_grad_(k != "perm") if x is not None else None) for k, x in inputs.items()}
    r, u, state_out = fn(**leaves)
    outs = {"r": r, "u": u, "state_out": state_out}
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for name, key in (("r", "r"), ("u", "u"), ("state", "state_out")):
        x = outs[key]
        if name in loss_terms and x is not None:
            weight = torch.view_as_complex(torch.randn(*x.shape, 2, generator=g, dtype=x.real.dtype)).to(x.device)
            loss = loss + (x * weight.conj()).real.sum()
    loss.backward()
    grads = {k: leaves[k].grad for k in GRADS if leaves.get(k) is not None}
    return {k: v.detach() for k, v in outs.items() if v is not None}, grads


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def compare(case, device="cpu", fast=None, slow=None) -> dict:
    """Relative max errors of the kernel against the reference, per output and gradient."""
    from functools import partial

    from hamt.ops.triton import memory_triton
    from hamt.ops import memory_reference

    B, T, H, S, F, init, with_c, dtype, chunk, block_f, loss = case
    inputs = make_inputs(B, T, H, S, F, init, with_c, dtype, device)
    fast = fast or partial(memory_triton, chunk_size=chunk, block_f=block_f)
    ref_out, ref_grad = run_with_grads(slow or memory_reference, inputs, loss.split(","))
    out, grad = run_with_grads(fast, inputs, loss.split(","))
    errors = {}
    for key in set(ref_out) | set(out):
        errors[key] = rel_err(ref_out[key], out[key]) if key in ref_out and key in out else "missing"
    for key in set(ref_grad) | set(grad):
        errors["d" + key] = rel_err(ref_grad[key], grad[key]) if key in ref_grad and key in grad else "missing"
    return errors


def _script_main() -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported anywhere in this process
    import torch

    torch.set_num_threads(1)
    results = {name: compare(case) for name, case in CASES.items()}

    # no-grad forward (no saved states) gives the same outputs; memory_scan dispatches mode="triton"
    from hamt.ops import memory_reference, memory_scan

    inputs = make_inputs(1, 6, 1, 2, 9, True, True, "complex64")
    with torch.no_grad():
        ref = memory_reference(**inputs)
        got = memory_scan(**inputs, mode="triton")
    results["dispatch_no_grad"] = {k: rel_err(a, b) for k, a, b in zip(OUTPUTS, ref, got)}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def interpreter_results():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def _expected_keys(case) -> set[str]:
    *_, init, with_c, _dtype, _chunk, _bf, loss = case
    outs = {"r", "state_out"} | ({"u"} if with_c else set())
    grads = {"dq", "dk", "dv", "dlog_f", "dw", "db"} | ({"dc"} if with_c else set()) | ({"dstate"} if init else set())
    return outs | grads


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference_under_interpreter(interpreter_results, name):
    case = CASES[name]
    errors = interpreter_results[name]
    assert set(errors) == _expected_keys(case), f"outputs/gradients differ from the reference's: {errors}"
    tol = TOL[case[7]]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{name}: relative errors above {tol}: {bad}"


def test_dispatch_and_no_grad_under_interpreter(interpreter_results):
    errors = interpreter_results["dispatch_no_grad"]
    assert set(errors) == set(OUTPUTS)
    assert all(v <= TOL["complex64"] for v in errors.values()), errors


def test_kernels_package_imports_without_triton():
    # Hide triton: the package must import, the kernel module must raise ImportError, auto picks chunk.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import hamt.ops, torch\n"
        "from hamt.ops import triton_available\n"
        "try:\n    import hamt.ops.triton\nexcept ImportError:\n    print('IMPORT_ERROR')\n"
        "print('AVAILABLE', triton_available(torch.device('cuda')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "IMPORT_ERROR" in out.stdout and "AVAILABLE False" in out.stdout, out.stdout


def test_rejects_real_inputs():
    pytest.importorskip("triton")
    torch = pytest.importorskip("torch")
    from hamt.ops.triton import memory_triton

    x = torch.zeros(1, 2, 1, 3)
    with pytest.raises(TypeError, match="complex"):
        memory_triton(x, x, x, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1),
                      torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_kernels_compile_for_hopper_without_a_gpu(kernel):
    # The interpreter runs the kernels as numpy and misses what only the compiler checks (types of
    # loop-carried values, constexpr branches, atomics). Triton compiles to a cubin without a GPU.
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hamt.ops import triton as tm

    fn = tm._memory_fwd_kernel if kernel == "fwd" else tm._memory_bwd_kernel
    consts = dict(HAS_C=True, CHUNK=64, BLOCK_S=8, BLOCK_F=32) | ({"SAVE_CK": True} if kernel == "fwd" else {})
    ints = {"T", "H", "S", "F", "NC", "NFB"}
    sig = {n: "constexpr" if n in consts else "i32" if n in ints else "*i32" if n == "PERM" else "*fp32"
           for n in fn.arg_names}
    try:
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 1, "enable_fp_fusion": True})
    except (RuntimeError, FileNotFoundError) as e:  # no CUDA backend/ptxas in this Triton build
        if "ptxas" in str(e) or "backend" in str(e).lower():
            pytest.skip(f"Triton cannot compile for CUDA here: {e}")
        raise
    ptx = compiled.asm["ptx"]
    assert ".entry" in ptx and ".local" not in ptx  # a kernel, with no register spills to local memory
    scatters = "red.global" in ptx or "atom.global" in ptx  # relaxed atomic adds compile to red.global
    assert scatters == (kernel == "bwd")  # only the backward scatters (the permuted-key gradients)


# --------------------------------------------------------------------------------------------------
# GPU: realistic shapes (33m / 100m memory heads), against the chunked path and the float64 reference
# --------------------------------------------------------------------------------------------------


def _cuda():
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 1024, 8, 8, 65), (2, 2048, 16, 16, 65), (2, 777, 16, 16, 97)])
def test_gpu_kernel_matches_chunked(shape):
    _cuda()
    from hamt.ops import memory_chunked

    from hamt.ops import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK

    B, T, H, S, F = shape  # the kernel's default launch shape (DEFAULT_CHUNK, DEFAULT_BLOCK_F)
    errors = compare((B, T, H, S, F, True, True, "complex64", DEFAULT_CHUNK, None, "r,u,state"), device="cuda",
                     slow=memory_chunked)
    bad = {k: v for k, v in errors.items() if not v <= 1e-4}
    assert not bad, bad


@pytest.mark.gpu
def test_gpu_kernel_matches_reference_float64():
    _cuda()
    errors = compare((2, 300, 4, 8, 65, True, True, "complex128", 64, 32, "r,u,state"), device="cuda")  # another shape
    bad = {k: v for k, v in errors.items() if not v <= 1e-10}
    assert not bad, bad


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _script_main()
