"""The holographic memory scan: a reference loop (the specification), a chunked parallel path, one step.

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

``mode="reference"`` is a plain loop over time: obviously correct, runs in float64, slow.
``mode="chunk"`` splits time into chunks of ``chunk_size``; inside a chunk the per-token states come
from one real matmul with the lower-triangular decay matrix, and only the chunk-boundary state is
carried. With gradients on, each chunk is recomputed in the backward pass (activation checkpointing),
so per-token states never exist for more than one chunk at a time.
``mode="triton"`` is the fused CUDA kernel (hamt.kernels), state on chip; chosen by ``auto`` on CUDA.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor


def slot_permutations(num_slots: int, num_freqs: int, seed: int = 0) -> Tensor:
    """Fixed random permutations of the frequencies, one per slot; slot 0 is the identity."""
    g = torch.Generator().manual_seed(seed)
    perms = [torch.arange(num_freqs)]
    perms += [torch.randperm(num_freqs, generator=g) for _ in range(num_slots - 1)]
    return torch.stack(perms)  # (S, F)


def unitary(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Project each complex entry onto the unit circle: x / |x|, guarded near zero."""
    return x * torch.rsqrt(x.real.square() + x.imag.square() + eps)


def _permute(x: Tensor, perm: Tensor) -> Tensor:
    """(..., F) -> (..., S, F) with out[..., s, f] = x[..., perm[s, f]]."""
    return x[..., perm]


def empty_state(batch: int, heads: int, slots: int, freqs: int, device=None, dtype=torch.complex64) -> Tensor:
    return torch.zeros(batch, heads, slots, freqs, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Reference: the specification
# --------------------------------------------------------------------------------------------------


def memory_step(q, k, v, log_f, w, b, perm, state, c=None):
    """One time step. q, k, v: (B, H, F); log_f: (B, H); w, b, c: (B, H, S); state: (B, H, S, F)."""
    kp = _permute(k, perm)  # (B, H, S, F)
    f = log_f.exp()[..., None, None]  # (B, H, 1, 1)
    state = f * state + w[..., None] * kp * v[:, :, None, :]
    r = (b[..., None] * _permute(q, perm).conj() * state).sum(-2)  # (B, H, F)
    u = None if c is None else (c[..., None] * kp.conj() * state).sum(-2)
    return r, u, state


def memory_reference(q, k, v, log_f, w, b, perm, state=None, c=None):
    B, T, H, F = q.shape
    S = perm.shape[0]
    if state is None:
        state = empty_state(B, H, S, F, q.device, q.dtype)
    rs, us = [], []
    for t in range(T):
        r, u, state = memory_step(
            q[:, t], k[:, t], v[:, t], log_f[:, t], w[:, t], b[:, t], perm, state, None if c is None else c[:, t]
        )
        rs.append(r)
        us.append(u)
    r = torch.stack(rs, 1)
    u = torch.stack(us, 1) if c is not None else None
    return r, u, state


# --------------------------------------------------------------------------------------------------
# Chunked parallel path
# --------------------------------------------------------------------------------------------------


def _chunk(q, k, v, log_f, w, b, c, perm, state):
    """One chunk, time-major inside: q, k, v (B, H, C, F); log_f (B, H, C); w, b, c (B, H, C, S)."""
    B, H, C, F = q.shape
    S = perm.shape[0]
    kp = _permute(k, perm)  # (B, H, C, S, F)
    x = w[..., None] * kp * v[:, :, :, None, :]  # (B, H, C, S, F) what each token writes
    cum = log_f.cumsum(-1)  # (B, H, C) log of the decay from the chunk start to t (inclusive)
    diff = cum[..., :, None] - cum[..., None, :]  # (B, H, C, C): log decay from j to t
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()  # (B, H, C, C)
    xr = torch.view_as_real(x).reshape(B, H, C, S * F * 2)
    m = torch.matmul(decay, xr)  # (B, H, C, S*F*2) intra-chunk states
    m = torch.view_as_complex(m.reshape(B, H, C, S, F, 2))
    m = m + cum.exp()[..., None, None] * state[:, :, None]  # + decayed carry-in state
    r = (b[..., None] * _permute(q, perm).conj() * m).sum(-2)  # (B, H, C, F)
    u = (c[..., None] * kp.conj() * m).sum(-2) if c is not None else None
    return r, u, m[:, :, -1]


def memory_chunked(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = 64):
    B, T, H, F = q.shape
    S = perm.shape[0]
    if state is None:
        state = empty_state(B, H, S, F, q.device, q.dtype)
    # time-major per head: (B, H, T, ...)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    log_f = log_f.transpose(1, 2)
    w, b = w.transpose(1, 2), b.transpose(1, 2)
    c = c.transpose(1, 2) if c is not None else None
    recompute = torch.is_grad_enabled() and T > chunk_size
    rs, us = [], []
    for t0 in range(0, T, chunk_size):
        sl = slice(t0, t0 + chunk_size)
        args = (q[:, :, sl], k[:, :, sl], v[:, :, sl], log_f[:, :, sl], w[:, :, sl], b[:, :, sl],
                None if c is None else c[:, :, sl], perm, state)
        if recompute:
            r, u, state = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            r, u, state = _chunk(*args)
        rs.append(r)
        us.append(u)
    r = torch.cat(rs, 2).transpose(1, 2)
    u = torch.cat(us, 2).transpose(1, 2) if c is not None else None
    return r, u, state


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from hamt.kernels import triton_memory  # noqa: F401
    except Exception:
        return False
    return True


def memory_scan(q, k, v, log_f, w, b, perm, state=None, c=None, mode: str = "auto", chunk_size: int = 64):
    """Run the memory over a segment; see the module docstring for shapes. Returns (r, u, final_state)."""
    if mode == "auto":
        mode = "triton" if triton_available(q.device) else "chunk"
    if mode == "reference":
        return memory_reference(q, k, v, log_f, w, b, perm, state, c)
    if mode == "chunk":
        return memory_chunked(q, k, v, log_f, w, b, perm, state, c, chunk_size)
    if mode == "triton":
        from hamt.kernels.triton_memory import memory_triton

        return memory_triton(q, k, v, log_f, w, b, perm, state, c)
    raise ValueError(f"unknown memory mode {mode!r}; use auto, chunk, reference or triton")
