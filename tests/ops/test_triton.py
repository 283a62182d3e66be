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

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as the interpreter subprocess: make hamt and scan_helpers importable
    sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from scan_helpers import ROOT, errors_vs_reference, make_inputs, rel_err  # noqa: E402

# name: (B, T, H, S, F, initial state, c given, dtype, chunk_size, block_f, which outputs enter the loss)
CASES = {
    # T=13 is no multiple of the chunk (4): boundary states, partial last chunk; all outputs in the loss
    "b2h2_s3_chunked_full": (2, 13, 2, 3, 9, True, True, "complex64", 4, None, "r,u,state"),
    # one slot, no c, no initial state, only r in the loss (no final-state gradient), chunk > T
    "s1_plain": (1, 21, 1, 1, 9, False, False, "complex64", 64, None, "r"),
    # three blocks of frequencies (F=9, block 4, last block partial): atomics and partial sums across blocks
    "freq_blocks": (1, 10, 2, 3, 9, True, False, "complex64", 3, 4, "r,state"),
    # a single time step
    "t1": (2, 1, 1, 3, 9, True, True, "complex64", 64, None, "r,u,state"),
    # float64: agreement to rounding, so any formula slip shows
    "float64": (1, 11, 2, 3, 9, True, True, "complex128", 4, 8, "r,u,state"),
}
TOL = {"complex64": 2e-5, "complex128": 1e-12}
OUTPUTS = ("r", "u", "state")


# --------------------------------------------------------------------------------------------------
# The check, run in a subprocess under TRITON_INTERPRET=1 (and directly on CUDA by the GPU tests)
# --------------------------------------------------------------------------------------------------


def case_inputs(case, device="cpu") -> dict:
    """The inputs of a CASES entry: uniform gates (a harsher test than the model's softmax ones)."""
    import torch

    B, T, H, S, F, init, with_c, dtype, *_ = case
    real = torch.float32 if dtype == "complex64" else torch.float64
    return make_inputs(B, T, H, S, F, real, with_state=init, with_c=with_c, raw_gates=True, device=device)


def compare(case, device="cpu", slow=None) -> dict:
    """Relative max errors of the kernel against the reference (or ``slow``), per output and gradient."""
    from functools import partial

    from hamt.ops import memory_reference
    from hamt.ops.triton import memory_triton

    *_, chunk, block_f, loss = case
    fast = partial(memory_triton, chunk_size=chunk, block_f=block_f)
    return errors_vs_reference(fast, case_inputs(case, device), loss.split(","), ref=slow or memory_reference)


def _script_main() -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported anywhere in this process
    import torch

    torch.set_num_threads(1)
    results = {name: compare(case) for name, case in CASES.items()}

    # no-grad forward (no saved states) gives the same outputs; memory_scan dispatches mode="triton"
    # and hands it its chunk_size
    import hamt.ops.triton as tm
    from hamt.ops import memory_reference, memory_scan

    inputs = case_inputs((1, 6, 1, 2, 9, True, True, "complex64"))
    seen, orig = [], tm.memory_triton
    tm.memory_triton = lambda *a, **kw: seen.append(kw.get("chunk_size")) or orig(*a, **kw)
    try:
        with torch.no_grad():
            ref = memory_reference(**inputs)
            got = memory_scan(**inputs, mode="triton", chunk_size=5)
    finally:
        tm.memory_triton = orig
    results["dispatch_no_grad"] = {k: rel_err(b, a) for k, a, b in zip(OUTPUTS, ref, got)}
    results["dispatch_chunk_sizes"] = seen
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
    outs = {"r", "state"} | ({"u"} if with_c else set())
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


def test_dispatch_passes_chunk_size_under_interpreter(interpreter_results):
    assert interpreter_results["dispatch_chunk_sizes"] == [5]


def test_invalid_chunk_size_is_a_value_error():
    pytest.importorskip("triton")
    from hamt.ops.triton import memory_triton

    inputs = case_inputs((1, 4, 1, 2, 9, True, False, "complex64"))
    for bad in (0, -3, 2.5, "16", True):
        with pytest.raises(ValueError, match="chunk_size"):
            memory_triton(**inputs, chunk_size=bad)


def test_ops_imports_without_triton():
    # importing hamt.ops imports no Triton; hidden Triton: hamt.ops imports, the kernel module raises
    # ImportError, and triton_available is False (so mode="auto" does not pick it)
    code = (
        "import sys, hamt.ops\n"
        "print('LOADED', 'triton' in sys.modules)\n"
        "sys.modules['triton'] = None\n"
        "import torch\n"
        "from hamt.ops import triton_available\n"
        "try:\n    import hamt.ops.triton\nexcept ImportError:\n    print('IMPORT_ERROR')\n"
        "print('AVAILABLE', triton_available(torch.device('cuda')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED False" in out.stdout, out.stdout
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
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set in this process: the kernels are interpreted functions, not compilable")
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
    from hamt.ops import DEFAULT_CHUNK_SIZE, memory_chunked

    B, T, H, S, F = shape  # the kernel's default launch shape (DEFAULT_CHUNK_SIZE, DEFAULT_BLOCK_F)
    errors = compare((B, T, H, S, F, True, True, "complex64", DEFAULT_CHUNK_SIZE, None, "r,u,state"), device="cuda",
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
    _script_main()
