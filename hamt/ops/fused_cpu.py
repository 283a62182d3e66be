"""The fused CPU kernel of the memory scan (mode="cpu"): the C source in csrc/memory_scan.c, its build
cache and its ctypes loader, and its forward and backward as two torch.library ops joined by
register_autograd (so torch.compile traces through the dispatch to them: no graph break).

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
from typing import Optional

import torch

from hamt.ops.autograd import register_scan_autograd
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


def _require_kernel() -> None:
    """Build (or load) the kernel; a RuntimeError saying why when it is unavailable."""
    ok, why = cpu_kernel_status()
    if not ok:
        raise RuntimeError(f"the fused CPU memory kernel is unavailable ({why}); use mode='chunk'")


def _kernel(name: str, x: Tensor):
    """The kernel's function ``name`` for ``x``'s precision (built on first use); RuntimeError if unavailable."""
    _require_kernel()
    return getattr(_cpu_kernel_lib, name + _sfx(x))


def _lanes(x: Tensor) -> int:
    """Rows the kernel runs side by side (one per SIMD lane) for ``x``'s precision."""
    return _kernel("hamt_scan_lanes", x)()


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


def _ckpt_shape(B: int, T: int, H: int, S: int, F: int, chunk: int, lanes: int) -> tuple[int, ...]:
    """The saved chunk-start states, in the kernel's block layout: (blocks, chunks, S, F, 2, lanes)."""
    return (-(-(B * H) // lanes), -(-T // chunk), S, F, 2, lanes)


# The kernel as two torch.library ops (forward, and the chunk-recomputing backward) joined by register_autograd,
# as the Triton path is: torch.compile sees two opaque ops with fake implementations, not a ctypes call.
# Inputs are real pairs; the state is (B, H, S, F, 2) pairs; absent tensors are None in and empty out.
# The namespace is this module's name ("hamt_ops_fused_cpu"): a flat copy in a saved model folder (hamt.hub),
# which has no C source and so no kernel, registers its own ops instead of replacing these in the same process.
_OPS = __name__.replace(".", "_")


@torch.library.custom_op(f"{_OPS}::memory_scan_cpu_fwd", mutates_args=())
def _scan_fwd(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, w: Tensor, b: Tensor, c: Optional[Tensor],
              perm: Tensor, state: Optional[Tensor], chunk: int, eps: float, unit: bool,
              save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """r, u (empty without c), final state (B, H, S, F, 2) and, when ``save``, the chunk-start states."""
    B, T, H, F, _ = q.shape
    S = perm.shape[0]
    q, k, v, ts = _qkv_layout(q, k, v)
    gates = [None if x is None else _flat(x) for x in (log_f, w, b, c)]
    r = q.new_empty(B, T, H, F, 2)
    u = q.new_empty(B, T, H, F, 2) if c is not None else q.new_empty(0)
    sf = q.new_empty(B, H, S, F, 2)
    lanes = _lanes(q)
    ck = q.new_empty(_ckpt_shape(B, T, H, S, F, chunk, lanes)) if save else q.new_empty(0)
    # every buffer the kernel reads or writes, held here until it returns (a temporary's memory would be freed first)
    bufs = [q, k, v, *gates, perm, _flat(state), r, u if c is not None else None, sf, ck if save else None]
    _run_blocks(_kernel("hamt_scan_fwd", q), B * H, lanes, T, S, F, chunk, H, ts, unit, *map(_ptr, bufs), eps)
    return r, u, sf, ck


@_scan_fwd.register_fake
def _(q, k, v, log_f, w, b, c, perm, state, chunk, eps, unit, save):
    B, T, H, F, _ = q.shape
    S = perm.shape[0]
    ck = _ckpt_shape(B, T, H, S, F, chunk, _lanes(q)) if save else (0,)
    return (q.new_empty(B, T, H, F, 2), q.new_empty((B, T, H, F, 2) if c is not None else (0,)),
            q.new_empty(B, H, S, F, 2), q.new_empty(ck))


@torch.library.custom_op(f"{_OPS}::memory_scan_cpu_bwd", mutates_args=())
def _scan_bwd(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, w: Tensor, b: Tensor, c: Optional[Tensor],
              perm: Tensor, ck: Tensor, g_r: Tensor, g_u: Optional[Tensor], g_final: Tensor, chunk: int,
              eps: float, unit: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v (contiguous pairs), log_f, w, b, c (empty without c) and the initial state (pairs)."""
    B, T, H, F, _ = q.shape
    S = perm.shape[0]
    q, k, v, ts = _qkv_layout(q, k, v)
    ins = [q, k, v] + [None if x is None else _flat(x) for x in (log_f, w, b, c)]
    grads = [q.new_empty(B, T, H, F, 2) for _ in range(3)] + [None if x is None else torch.empty_like(x)
                                                              for x in ins[3:]]
    gs0 = q.new_empty(B, H, S, F, 2)
    bufs = [*ins, perm, ck, _flat(g_r), _flat(g_u), _flat(g_final), *grads, gs0]  # held until the kernel returns
    _run_blocks(_kernel("hamt_scan_bwd", q), B * H, _lanes(q), T, S, F, chunk, H, ts, H * 2 * F, unit,
                *map(_ptr, bufs), eps)
    return (*grads[:6], grads[6] if c is not None else q.new_empty(0), gs0)


@_scan_bwd.register_fake
def _(q, k, v, log_f, w, b, c, perm, ck, g_r, g_u, g_final, chunk, eps, unit):
    B, T, H, F, _ = q.shape
    S = perm.shape[0]
    return (*(q.new_empty(B, T, H, F, 2) for _ in range(3)), torch.empty_like(log_f), torch.empty_like(w),
            torch.empty_like(b), torch.empty_like(c) if c is not None else q.new_empty(0), q.new_empty(B, H, S, F, 2))


register_scan_autograd(_scan_fwd, _scan_bwd)


def memory_fused_cpu(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     normalize: float | None = None):
    """The fused CPU kernel (same contract as memory_reference); needs cpu_kernel_available(q).

    q, k, v: complex (B, T, H, F), or real pairs (B, T, H, F, 2) (then r and u come back as pairs too;
    the state is complex either way). ``normalize``: None when q and k are already unitary, else the eps
    of ``unitary`` that the kernel applies to them first. ``chunk_size``: time steps between the states
    saved for the backward, which recomputes a chunk's states from its saved start (a (chunk_size + 1, S, F)
    buffer of vectors, one lane per row of a block, per thread)."""
    chunk = check_chunk_size(chunk_size)
    _require_kernel()
    if not cpu_kernel_available(q):
        raise ValueError(f"the fused CPU memory kernel needs complex64/complex128 CPU tensors (or float32/float64 "
                         f"(B, T, H, F, 2) pairs), got {q.dtype} {tuple(q.shape)} on {q.device}; use mode='chunk'")
    complex_in = q.is_complex()
    if complex_in:  # the kernel reads (re, im) pairs: views, no copies
        cd = q.dtype
        q, k, v = (torch.view_as_real(x.resolve_conj().to(cd)) for x in (q, k, v))
    real = q.dtype  # the kernel's REAL; casts happen here, where autograd sees them
    cplx = torch.complex64 if real == torch.float32 else torch.complex128
    k, v, log_f, w, b = (x.to(real) for x in (k, v, log_f, w, b))
    c = None if c is None else c.to(real)
    st = None if state is None else torch.view_as_real(state.to(cplx).resolve_conj())
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, log_f, w, b, c, st))
    perm32 = perm.to(torch.int32).contiguous()
    r, u, final, _ = _scan_fwd(q, k, v, log_f, w, b, c, perm32, st, chunk, float(normalize or 0.0),
                               normalize is not None, save)
    u = None if c is None else u
    final = torch.view_as_complex(final)
    if complex_in:
        r, u = torch.view_as_complex(r), None if u is None else torch.view_as_complex(u)
    return r, u, final
