"""The holographic memory scan: the dispatcher ``memory_scan`` and the public names of its paths.

All paths compute, for every head h and slot s, the gated decaying write and the slot-addressed read

    M_s,t = f_t * M_s,t-1 + w_t,s * (pi_s(K_t) . V_t)          (state, complex, per frequency)
    R_t   = sum_s b_t,s * conj(pi_s(Q_t)) . M_s,t               (read: unbind with the query)
    U_t   = sum_s c_t,s * conj(pi_s(K_t)) . M_s,t               (optional: unbind with the key)

where ``.`` is the elementwise product over the F Fourier frequencies (binding = circular
convolution in the time domain), pi_s a fixed permutation of the frequencies per slot, f_t = exp(log_f)
a per-head forget factor, w the write weights (already including 1 - f_t), b the read weights and c
the weights of the key read-back used for the fidelity metric (the write address a_t).

Shapes (inputs are batch-first, time-second):
    q, k, v        (B, T, H, F) complex   q and k already unitary (|q| = |k| = 1 per frequency)
    log_f          (B, T, H)    real      log forget factor, <= 0
    w, b, c        (B, T, H, S) real
    perm           (S, F)       int64     perm[s] is a permutation of range(F); perm[0] is the identity
    state          (B, H, S, F) complex   M at the end of the previous segment (zeros if None)
Returns ``(r, u, final_state)`` with r, u of shape (B, T, H, F) (u is None unless c is given).

``memory_scan`` also takes q, k, v as real (re, im) pairs (B, T, H, F, 2) and then returns r, u as pairs
(the state stays complex): the model's layout, with no complex dtype in its hot path. With
``normalize=eps`` the q and k given are raw and the scan is that of ``unitary(q, eps), unitary(k, eps)``
(the fused CPU and Triton kernels take pairs and normalise as they load them; the reference and chunked
paths get ``unitary`` applied first and complex views of the pairs).

One file per path, each with the signature of the reference (``state`` in, ``final_state`` out):

    naive.py      ``mode="reference"``  memory_step, memory_reference: the specification
    chunk.py      ``mode="chunk"``      memory_chunked: pure PyTorch, parallel over time
    fused_cpu.py  ``mode="cpu"``        memory_fused_cpu: a C kernel (csrc/memory_scan.c) via ctypes
    triton.py     ``mode="triton"``     memory_triton: a Triton kernel (imported only when used)

``mode="reference"`` is a plain loop over time: obviously correct, runs in float64, slow.
``mode="chunk"`` splits time into chunks of ``chunk_size``; inside a chunk the per-token states come
from one real matmul with the lower-triangular decay matrix, and the chunk-boundary states from a
second, small one. Chunks are processed a cache-sized block at a time and only the block-start
states are kept: the hand-written backward recomputes each block from its start state, so per-token
states never exist for more than one block at a time.
``mode="triton"`` is the fused CUDA kernel (hamt.ops.triton): one program per (batch, head) row with the
whole S x F state on chip, no atomics, registered as torch.library ops (torch.compile sees through it);
chosen by ``auto`` on CUDA.
``mode="cpu"`` is a fused C kernel for the CPU (compiled on first use, state in cache, sequential in
time, a block of rows in the SIMD lanes, blocks over threads; torch.library ops, so torch.compile sees
through it); chosen by ``auto`` on CPU when it builds, else ``chunk``.

``chunk_size`` (one parameter, default DEFAULT_CHUNK_SIZE, passed to every path; the model passes
``HAMTConfig.chunk_size``) is the number of time steps per chunk: the unit in which a path walks time and
keeps states. It changes speed and memory only, never the result (beyond rounding):
    chunk   the side C of each chunk's (C, C) decay matmul; the per-token states of a block of chunks
            are computed in parallel and only block-start states are saved for the backward
    cpu     the state is saved every chunk_size steps; the backward recomputes one chunk at a time
    triton  the same as cpu, per (batch, head) program on chip (each value compiles a kernel variant)
    reference  ignored (a loop over single steps), but checked like the others
Any int >= 1 is valid for every path; anything else raises ValueError.
"""

from __future__ import annotations

import torch

from hamt.ops.chunk import memory_chunked
from hamt.ops.fused_cpu import cpu_kernel_available, cpu_kernel_status, memory_fused_cpu
from hamt.ops.naive import (DEFAULT_CHUNK_SIZE, check_chunk_size, empty_state, memory_reference, memory_step,
                            slot_permutations, unitary)

__all__ = [
    "DEFAULT_CHUNK_SIZE", "check_chunk_size", "cpu_kernel_available", "cpu_kernel_status", "empty_state",
    "memory_chunked", "memory_fused_cpu", "memory_reference", "memory_scan", "memory_step", "slot_permutations",
    "triton_available", "unitary",
]


def triton_available(device: torch.device) -> bool:
    """The Triton kernel can run on ``device``: CUDA, and Triton imports (hamt.ops.triton is the guard)."""
    if device.type != "cuda":
        return False
    try:
        from hamt.ops.triton import memory_triton  # noqa: F401  (a `from` import: hamt.hub makes it relative)
    except Exception:  # ImportError without Triton; anything else Triton raises at import also means no
        return False
    return True


def memory_scan(q, k, v, log_f, w, b, perm, state=None, c=None, mode: str = "auto",
                chunk_size: int = DEFAULT_CHUNK_SIZE, normalize: float | None = None):
    """Run the memory over a segment; see the module docstring for shapes, pairs, ``normalize`` and
    ``chunk_size``.

    Returns (r, u, final_state). ``chunk_size`` reaches every path unchanged."""
    chunk_size = check_chunk_size(chunk_size)  # a bad value fails the same way whichever path runs
    if mode == "auto":
        if triton_available(q.device):
            mode = "triton"
        else:
            mode = "cpu" if cpu_kernel_available(q) else "chunk"
    if mode == "cpu":  # takes pairs and normalises itself
        return memory_fused_cpu(q, k, v, log_f, w, b, perm, state, c, chunk_size=chunk_size, normalize=normalize)
    if mode == "triton":  # takes pairs and normalises itself, too
        from hamt.ops.triton import memory_triton  # here, not at the top: importing hamt.ops imports no Triton

        return memory_triton(q, k, v, log_f, w, b, perm, state, c, chunk_size=chunk_size, normalize=normalize)
    if normalize is not None:
        q, k = unitary(q, normalize), unitary(k, normalize)
    if not q.is_complex():  # pairs: complex views for the paths below, pairs back out
        q, k, v = (torch.view_as_complex(x) for x in (q, k, v))
        r, u, final = memory_scan(q, k, v, log_f, w, b, perm, state, c, mode=mode, chunk_size=chunk_size)
        return torch.view_as_real(r), None if u is None else torch.view_as_real(u), final
    if mode == "reference":
        return memory_reference(q, k, v, log_f, w, b, perm, state, c)
    if mode == "chunk":
        return memory_chunked(q, k, v, log_f, w, b, perm, state, c, chunk_size=chunk_size)
    raise ValueError(f"unknown memory mode {mode!r}; use auto, chunk, cpu, reference or triton")
