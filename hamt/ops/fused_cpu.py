"""The fused CPU kernel of the memory scan (mode="cpu"): the C source in csrc/memory_scan.c, its build
cache and its ctypes loader, and the autograd Function around its forward and backward.

Same contract as ``memory_reference`` (hamt/ops/naive.py); chosen by ``memory_scan(mode="auto")`` on
CPU when it builds.

The chunked path (chunk.py) is bound by memory traffic: every per-slot (S x F per token) tensor is
written and read again by separate PyTorch ops, ~30 times per token over forward and backward.
This kernel is the CPU counterpart of the Triton kernel: sequential in time within a (batch, head)
row, with the S x F state in a small local buffer that stays in cache, rows split over
torch.get_num_threads() threads (ctypes releases the GIL). Forward stores the state every
``chunk_size`` steps; backward recomputes a chunk's states from its checkpoint and walks it
backwards, so memory is O(T / chunk_size) states, as in the chunked path. It is plain C compiled
on first use with the system C compiler, cached by the .c file's content, the compiler, its flags and
the CPU (_library_path); without a compiler, ``memory_scan(mode="auto")`` falls back to the chunked
path (see cpu_kernel_status()).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
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
# One library holds both precisions: the source is included once per (REAL, suffix, exp) below.
_VARIANTS = [("float", "_f32", "expf"), ("double", "_f64", "exp")]
_cpu_kernel_lib = None
_cpu_kernel_error: str | None = None


def _source() -> str:
    """The translation unit compiled: csrc/memory_scan.c (packaged with hamt) once per precision."""
    c_src = resources.files(__package__).joinpath("csrc").joinpath("memory_scan.c").read_text(encoding="utf-8")
    return "".join(f"#define REAL {r}\n#define SFX {x}\n#define EXP {e}\n{c_src}\n"
                   "#undef REAL\n#undef SFX\n#undef EXP\n" for r, x, e in _VARIANTS)


def _library_path(src: str, cc: str) -> str:
    """Where the library built from ``src`` by ``cc`` lives: the cache key hashes the source (the .c
    file's content), the compiler and its flags, and the CPU's feature flags (-march=native: a library
    built for one CPU must not be loaded on another)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        pass
    key = hashlib.sha256((src + " ".join([cc, *_CPU_KERNEL_FLAGS]) + cpu).encode()).hexdigest()[:16]
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
    lib_path = _library_path(src, cc)
    folder = os.path.dirname(lib_path)
    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(lib_path):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            c_path, out = os.path.join(tmp, "memory.c"), os.path.join(tmp, "memory.so")
            with open(c_path, "w", encoding="utf-8") as f:
                f.write(src)
            proc = subprocess.run([cc, *_CPU_KERNEL_FLAGS, "-o", out, c_path, "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
            os.replace(out, lib_path)  # atomic: concurrent processes see the old or the new file
    lib = ctypes.CDLL(lib_path)
    p, i = ctypes.c_void_p, ctypes.c_int64
    for sfx in ("_f32", "_f64"):
        fwd, bwd = getattr(lib, "hamt_scan_fwd" + sfx), getattr(lib, "hamt_scan_bwd" + sfx)
        fwd.argtypes, fwd.restype = [i] * 7 + [p] * 13, None
        bwd.argtypes, bwd.restype = [i] * 7 + [p] * 21, None
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


def cpu_kernel_available(x: Tensor) -> bool:
    """The fused CPU kernel can run on tensors like ``x`` (a CPU complex64/complex128 tensor)."""
    return x.device.type == "cpu" and x.dtype in (torch.complex64, torch.complex128) and cpu_kernel_status()[0]


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _run_rows(fn, N: int, *args) -> None:
    """fn(n0, n1, *args) over row ranges, on torch.get_num_threads() threads."""
    nt = max(1, min(torch.get_num_threads(), N))
    if nt == 1:
        fn(0, N, *args)
        return
    bounds = [N * i // nt for i in range(nt + 1)]
    with concurrent.futures.ThreadPoolExecutor(nt) as pool:
        list(pool.map(lambda i: fn(bounds[i], bounds[i + 1], *args), range(nt)))


def _sfx(x: Tensor) -> str:
    return "_f32" if x.dtype == torch.complex64 else "_f64"


def _flat(x: Tensor | None) -> Tensor | None:
    """Contiguous with the conjugation resolved (the kernel reads raw memory); a no-op for the model's
    inputs, which are already contiguous batch-major (B, T, H, ...) tensors."""
    return None if x is None else x.resolve_conj().contiguous()


def _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, keep: bool):
    B, T, H, F = q.shape
    S, N = perm.shape[0], B * H
    real = torch.float32 if q.dtype == torch.complex64 else torch.float64  # the kernel's REAL
    ins = [_flat(x.to(q.dtype)) for x in (q, k, v)]
    ins += [None if x is None else _flat(x.to(real)) for x in (log_f, w, b, c)]
    state = None if state is None else state.to(q.dtype)
    perm32 = perm.to(torch.int32).contiguous()
    st0 = _flat(state)
    r = torch.empty_like(ins[0])
    u = torch.empty_like(ins[0]) if c is not None else None
    st1 = q.new_empty(B, H, S, F)
    ckpt = q.new_empty(N, -(-T // chunk), S, F) if keep else None
    fn = getattr(_cpu_kernel_lib, "hamt_scan_fwd" + _sfx(q))
    _run_rows(fn, N, T, S, F, chunk, H, *map(_ptr, [*ins, perm32, st0, r, u, st1, ckpt]))
    return (r, u, st1), (ins, perm32, ckpt)


class _FusedCPUScan(torch.autograd.Function):
    """The fused CPU kernel with its chunk-recomputing backward kernel."""

    @staticmethod
    def forward(ctx, q, k, v, log_f, w, b, c, state, perm, chunk):
        (r, u, final), (ins, perm32, ckpt) = _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, keep=True)
        ctx.save_for_backward(*[x for x in ins if x is not None], perm32, ckpt)
        ctx.has_c, ctx.has_state, ctx.chunk = c is not None, state is not None, chunk
        return r, u, final

    @staticmethod
    def backward(ctx, gr, gu, gstate):
        saved = list(ctx.saved_tensors)
        ins = saved[:6] + [saved[6] if ctx.has_c else None]
        perm32, ckpt = saved[-2], saved[-1]
        B, T, H, F = ins[0].shape
        S, N = perm32.shape[0], B * H
        inv32 = perm32.long().argsort(-1).to(torch.int32).contiguous()
        gr = _flat(gr) if gr is not None else torch.zeros_like(ins[0])
        gu = (_flat(gu) if gu is not None else torch.zeros_like(ins[0])) if ctx.has_c else None
        grads = [None if x is None else torch.empty_like(x) for x in ins]
        gs0 = ins[0].new_empty(B, H, S, F)
        fn = getattr(_cpu_kernel_lib, "hamt_scan_bwd" + _sfx(ins[0]))
        _run_rows(fn, N, T, S, F, ctx.chunk, H,
                  *map(_ptr, [*ins, perm32, inv32, ckpt, gr, gu, _flat(gstate), *grads, gs0]))
        return (*grads, gs0 if ctx.has_state else None, None, None)


def memory_fused_cpu(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """The fused CPU kernel (same contract as memory_reference); needs cpu_kernel_available(q).

    ``chunk_size``: time steps between the states saved for the backward, which recomputes a chunk's
    states from its saved start (a (chunk_size + 1, S, F) buffer per thread)."""
    chunk = check_chunk_size(chunk_size)
    ok, why = cpu_kernel_status()
    if not ok:
        raise RuntimeError(f"the fused CPU memory kernel is unavailable ({why}); use mode='chunk'")
    if not cpu_kernel_available(q):
        raise ValueError(f"the fused CPU memory kernel needs complex64/complex128 CPU tensors, got {q.dtype} on "
                         f"{q.device}; use mode='chunk'")
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_f, w, b, c, state)
    ):
        return _FusedCPUScan.apply(q, k, v, log_f, w, b, c, state, perm, chunk)
    out, _ = _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, keep=False)
    return out
