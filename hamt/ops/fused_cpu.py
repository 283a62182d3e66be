"""The fused CPU kernel of the memory scan (mode="cpu"): the C source in csrc/memory_scan.c, its build
cache and its ctypes loader, and the autograd Function around its forward and backward.

Same contract as ``memory_reference`` (hamt/ops/naive.py); chosen by ``memory_scan(mode="auto")`` on
CPU when it builds. Besides complex tensors it takes q, k, v as real (re, im) pairs (B, T, H, F, 2),
also strided views of one projection (the model's layout: read in place, no copies), and with
``normalize=eps`` makes q and k unitary itself (hamt.ops.unitary, fused into its loads).

The chunked path (chunk.py) is bound by memory traffic: every per-slot (S x F per token) tensor is
written and read again by separate PyTorch ops, ~30 times per token over forward and backward.
This kernel is the CPU counterpart of the Triton kernel: sequential in time within a (batch, head)
row, with the S x F state in a small local buffer that stays in cache. It runs a block of rows at
once, one per SIMD lane, so the slot permutation is an index into contiguous vectors rather than a
gather (csrc/memory_scan.c's header); blocks are split over torch.get_num_threads() threads (ctypes
releases the GIL). Forward stores the state every ``chunk_size`` steps; backward recomputes a chunk's
states from its checkpoint and walks it backwards, so memory is O(T / chunk_size) states, as in the
chunked path. It is plain C compiled on first use with the system C compiler, cached by the .c file's
content, the compiler, its flags and the CPU (_library_path); without a compiler,
``memory_scan(mode="auto")`` falls back to the chunked path (see cpu_kernel_status()).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources

import torch

from hamt.ops.naive import DEFAULT_CHUNK_SIZE, check_chunk_size

Tensor = torch.Tensor

_CPU_KERNEL_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math",
                     "-fno-signed-zeros", "-fassociative-math"]
# GCC only: no AVX gathers for the slot-permutation loops. Vectorised with gathers the kernel was 15-25%
# slower (fwd 122 -> 93 ms, bwd 406 -> 350 ms without them; B 8, T 512, H 8, S 8, F 65, one thread,
# interleaved, on this project's AMD EPYC). Clang does not know the flag.
_GCC_FLAGS = ["-mtune-ctrl=^use_gather,^use_gather_2parts,^use_gather_4parts"]
# One library holds both precisions: the source is included once per (REAL, suffix, exp, sqrt) below.
_VARIANTS = [("float", "_f32", "expf", "sqrtf"), ("double", "_f64", "exp", "sqrt")]
_cpu_kernel_lib = None
_cpu_kernel_error: str | None = None


def _source() -> str:
    """The translation unit compiled: csrc/memory_scan.c (packaged with hamt) once per precision."""
    c_src = resources.files(__package__).joinpath("csrc").joinpath("memory_scan.c").read_text(encoding="utf-8")
    return "".join(f"#define REAL {r}\n#define SFX {x}\n#define EXP {e}\n#define SQRT {q}\n{c_src}\n"
                   "#undef REAL\n#undef SFX\n#undef EXP\n#undef SQRT\n" for r, x, e, q in _VARIANTS)


@functools.cache
def _flags(cc: str) -> list[str]:
    """The compiler flags for ``cc``: _CPU_KERNEL_FLAGS, plus _GCC_FLAGS when ``cc`` is GCC (asked once per process)."""
    try:
        proc = subprocess.run([cc, "-v"], capture_output=True, text=True, timeout=30, check=False)
        gcc = "gcc version" in proc.stderr
    except (OSError, subprocess.SubprocessError):
        gcc = False
    return _CPU_KERNEL_FLAGS + (_GCC_FLAGS if gcc else [])


def _library_path(src: str, cc: str, flags: list[str]) -> str:
    """Where the library built from ``src`` by ``cc`` lives: the cache key hashes the source (the .c
    file's content), the compiler and its flags, and the CPU's feature flags (-march=native: a library
    built for one CPU must not be loaded on another)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        pass
    key = hashlib.sha256((src + " ".join([cc, *flags]) + cpu).encode()).hexdigest()[:16]
    folder = os.environ.get("HAMT_CPU_KERNEL_DIR") or os.path.join(tempfile.gettempdir(),
                                                                   f"hamt-cpu-kernel-{os.getuid()}")
    return os.path.join(folder, f"memory_{key}.so")


def _compile_cpu_kernel():
    """Build (or reuse) the shared library; returns the ctypes handle or raises with the reason."""
    if os.environ.get("HAMT_CPU_KERNEL", "1") == "0":
        raise RuntimeError("disabled by HAMT_CPU_KERNEL=0")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    src = _source()
    flags = _flags(cc)
    lib_path = _library_path(src, cc, flags)
    folder = os.path.dirname(lib_path)
    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(lib_path):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            c_path, out = os.path.join(tmp, "memory.c"), os.path.join(tmp, "memory.so")
            with open(c_path, "w", encoding="utf-8") as f:
                f.write(src)
            proc = subprocess.run([cc, *flags, "-o", out, c_path, "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
            os.replace(out, lib_path)  # atomic: concurrent processes see the old or the new file
    lib = ctypes.CDLL(lib_path)
    p, i, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for sfx in ("_f32", "_f64"):
        fwd, bwd = getattr(lib, "hamt_scan_fwd" + sfx), getattr(lib, "hamt_scan_bwd" + sfx)
        fwd.argtypes, fwd.restype = [i] * 10 + [p] * 13 + [d], i
        bwd.argtypes, bwd.restype = [i] * 11 + [p] * 20 + [d], i
        getattr(lib, "hamt_scan_lanes" + sfx).restype = i
    return lib


def cpu_kernel_status() -> tuple[bool, str]:
    """(available, reason): whether the fused CPU kernel could be built and loaded here."""
    global _cpu_kernel_lib, _cpu_kernel_error
    if _cpu_kernel_lib is None and _cpu_kernel_error is None:
        try:
            _cpu_kernel_lib = _compile_cpu_kernel()
        except Exception as e:  # any failure means: use the chunked path
            _cpu_kernel_error = f"{type(e).__name__}: {e}"
    return _cpu_kernel_lib is not None, _cpu_kernel_error or "ok"


def _is_pairs(x: Tensor) -> bool:
    """``x`` holds complex numbers as real (re, im) pairs: a float32/float64 (B, T, H, F, 2) tensor."""
    return x.dtype in (torch.float32, torch.float64) and x.dim() == 5 and x.shape[-1] == 2


def cpu_kernel_available(x: Tensor) -> bool:
    """The fused CPU kernel can run on tensors like ``x``: a CPU complex64/complex128 tensor, or real pairs."""
    return (x.device.type == "cpu" and (x.dtype in (torch.complex64, torch.complex128) or _is_pairs(x))
            and cpu_kernel_status()[0])


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _lanes(x: Tensor) -> int:
    """Rows the kernel runs side by side (one per SIMD lane) for ``x``'s precision."""
    return getattr(_cpu_kernel_lib, "hamt_scan_lanes" + _sfx(x))()


def _run_blocks(fn, N: int, lanes: int, *args) -> None:
    """fn(k0, k1, N, *args) over the ceil(N / lanes) blocks of rows, on torch.get_num_threads() threads;
    a MemoryError if the kernel could not allocate its buffers."""
    nblk = -(-N // lanes)
    nt = max(1, min(torch.get_num_threads(), nblk))
    bounds = [nblk * i // nt for i in range(nt + 1)]
    if nt == 1:
        codes = [fn(0, nblk, N, *args)]
    else:
        with concurrent.futures.ThreadPoolExecutor(nt) as pool:
            codes = list(pool.map(lambda i: fn(bounds[i], bounds[i + 1], N, *args), range(nt)))
    if any(codes):
        raise MemoryError("the fused CPU memory kernel could not allocate its buffers")


def _sfx(x: Tensor) -> str:
    return "_f32" if x.dtype == torch.float32 else "_f64"


def _flat(x: Tensor | None) -> Tensor | None:
    """Contiguous with the conjugation resolved (the kernel reads raw memory); a no-op for the model's
    inputs, which are already contiguous batch-major (B, T, H, ...) tensors."""
    return None if x is None else x.resolve_conj().contiguous()


def _qkv_layout(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """q, k, v pairs (B, T, H, F, 2) as the kernel reads them, and their common token stride (reals):
    in place when each is (H, F, 2)-contiguous inside a token with the same token stride (views of the
    model's projection), else contiguous copies."""
    _, T, H, F, _ = q.shape
    inner = (2 * F, 2, 1)

    def ok(x):
        return x.stride()[2:] == inner and x.stride(0) == T * x.stride(1)
    ts = q.stride(1)
    if all(ok(x) and x.stride(1) == ts for x in (q, k, v)) and ts >= H * 2 * F:
        return q, k, v, ts
    q, k, v = (x.contiguous() for x in (q, k, v))
    return q, k, v, H * 2 * F


def _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, eps, keep: bool):
    """q, k, v real pairs (B, T, H, F, 2); state complex or None. Returns (r, u pairs, final state), saved."""
    B, T, H, F, _ = q.shape
    S, N = perm.shape[0], B * H
    real = q.dtype  # the kernel's REAL
    cplx = torch.complex64 if real == torch.float32 else torch.complex128
    q, k, v, ts = _qkv_layout(q, k.to(real), v.to(real))
    gates = [None if x is None else _flat(x.to(real)) for x in (log_f, w, b, c)]
    perm32 = perm.to(torch.int32).contiguous()
    st0 = None if state is None else _flat(state.to(cplx))
    r = q.new_empty(B, T, H, F, 2)
    u = q.new_empty(B, T, H, F, 2) if c is not None else None
    st1 = q.new_empty(B, H, S, F, dtype=cplx)
    lanes = _lanes(q)
    ckpt = q.new_empty(-(-N // lanes), -(-T // chunk), S, F, 2, lanes) if keep else None  # block layout
    fn = getattr(_cpu_kernel_lib, "hamt_scan_fwd" + _sfx(q))
    _run_blocks(fn, N, lanes, T, S, F, chunk, H, ts, eps is not None,
                *map(_ptr, [q, k, v, *gates, perm32, st0, r, u, st1, ckpt]), eps or 0.0)
    return (r, u, st1), ([q, k, v, *gates], ts, perm32, ckpt)


class _FusedCPUScan(torch.autograd.Function):
    """The fused CPU kernel with its chunk-recomputing backward kernel, on real pairs."""

    @staticmethod
    def forward(ctx, q, k, v, log_f, w, b, c, state, perm, chunk, eps):
        (r, u, final), (ins, ts, perm32, ckpt) = _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, eps,
                                                                keep=True)
        ctx.save_for_backward(*[x for x in ins if x is not None], perm32, ckpt)
        ctx.has_c, ctx.has_state, ctx.chunk, ctx.ts, ctx.eps = c is not None, state is not None, chunk, ts, eps
        return r, u, final

    @staticmethod
    def backward(ctx, gr, gu, gstate):
        saved = list(ctx.saved_tensors)
        ins = saved[:6] + [saved[6] if ctx.has_c else None]
        perm32, ckpt = saved[-2], saved[-1]
        q = ins[0]
        B, T, H, F, _ = q.shape
        S, N = perm32.shape[0], B * H
        gr = _flat(gr) if gr is not None else q.new_zeros(B, T, H, F, 2)
        gu = (_flat(gu) if gu is not None else q.new_zeros(B, T, H, F, 2)) if ctx.has_c else None
        grads = [q.new_empty(B, T, H, F, 2) for _ in range(3)] + [None if x is None else torch.empty_like(x)
                                                                  for x in ins[3:]]
        gs0 = ckpt.new_empty(B, H, S, F, 2)
        fn = getattr(_cpu_kernel_lib, "hamt_scan_bwd" + _sfx(q))
        _run_blocks(fn, N, _lanes(q), T, S, F, ctx.chunk, H, ctx.ts, H * 2 * F, ctx.eps is not None,
                    *map(_ptr, [*ins, perm32, ckpt, gr, gu, _flat(gstate), *grads, gs0]), ctx.eps or 0.0)
        gs0 = torch.view_as_complex(gs0) if ctx.has_state else None
        return (*grads, gs0, None, None, None)


def memory_fused_cpu(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     normalize: float | None = None):
    """The fused CPU kernel (same contract as memory_reference); needs cpu_kernel_available(q).

    q, k, v: complex (B, T, H, F), or real pairs (B, T, H, F, 2) (then r and u come back as pairs too;
    the state is complex either way). ``normalize``: None when q and k are already unitary, else the eps
    of ``unitary`` that the kernel applies to them first. ``chunk_size``: time steps between the states
    saved for the backward, which recomputes a chunk's states from its saved start (a (chunk_size + 1, S, F)
    buffer of vectors, one lane per row of a block, per thread)."""
    chunk = check_chunk_size(chunk_size)
    ok, why = cpu_kernel_status()
    if not ok:
        raise RuntimeError(f"the fused CPU memory kernel is unavailable ({why}); use mode='chunk'")
    if not cpu_kernel_available(q):
        raise ValueError(f"the fused CPU memory kernel needs complex64/complex128 CPU tensors (or float32/float64 "
                         f"(B, T, H, F, 2) pairs), got {q.dtype} {tuple(q.shape)} on {q.device}; use mode='chunk'")
    complex_in = q.is_complex()
    if complex_in:  # the kernel reads (re, im) pairs: views, no copies
        cd = q.dtype
        q, k, v = (torch.view_as_real(x.resolve_conj().to(cd)) for x in (q, k, v))
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_f, w, b, c, state)
    ):
        r, u, final = _FusedCPUScan.apply(q, k, v, log_f, w, b, c, state, perm, chunk, normalize)
    else:
        (r, u, final), _ = _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, normalize, keep=False)
    if complex_in:
        r, u = torch.view_as_complex(r), None if u is None else torch.view_as_complex(u)
    return r, u, final
