"""The specification of the memory scan: a plain loop over time of one step, plus the helpers every path uses.

Every fast path (``chunk``, ``fused_cpu``, ``triton``) is tested against ``memory_reference``; it runs
in float64 and is obviously correct, and slow. The math and shapes are in ``hamt/ops/__init__.py``.
This file also holds the one chunk-size default that every fast path's signature uses.
"""

from __future__ import annotations

import operator

import torch

Tensor = torch.Tensor

# Time steps per chunk, the default of every fast path (what a chunk is for each: hamt/ops/__init__.py).
# 16, measured fwd+bwd on one CPU thread: the chunked path's best at the tiny training shape (B16 T128
# H4 S4 F33: 75 ms vs 126 ms at 64) and at the 33m head shape (T1024: 172 vs 202 ms), the Triton
# kernel's best at the 100m shape on an H200 (2-4% ahead of 64, BENCHMARKS.md); the fused CPU kernel is
# within 3% from 16 to 128, so one value serves all paths.
DEFAULT_CHUNK_SIZE = 16


def check_chunk_size(chunk_size) -> int:
    """``chunk_size`` as an int >= 1, or a ValueError naming the bad value (every path accepts any such int)."""
    try:
        if isinstance(chunk_size, bool):
            raise TypeError
        n = operator.index(chunk_size)
    except TypeError:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}") from None
    if n < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {n}")
    return n


def slot_permutations(num_slots: int, num_freqs: int, seed: int = 0) -> Tensor:
    """Fixed random permutations of the frequencies, one per slot; slot 0 is the identity."""
    g = torch.Generator().manual_seed(seed)
    perms = [torch.arange(num_freqs)]
    perms += [torch.randperm(num_freqs, generator=g) for _ in range(num_slots - 1)]
    return torch.stack(perms)  # (S, F)


def unitary(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Project each complex entry onto the unit circle: x / |x|, guarded near zero. ``x`` is complex, or
    real (..., 2) holding (re, im) pairs (the model's layout: no complex dtype), returned in the same form."""
    if x.is_complex():
        return x * torch.rsqrt(x.real.square() + x.imag.square() + eps)
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def _permute(x: Tensor, perm: Tensor) -> Tensor:
    """(..., F) -> (..., S, F) with out[..., s, f] = x[..., perm[s, f]]."""
    return x[..., perm]


def empty_state(batch: int, heads: int, slots: int, freqs: int, device=None, dtype=torch.complex64) -> Tensor:
    """The memory before the first token: zeros (B, H, S, F)."""
    return torch.zeros(batch, heads, slots, freqs, device=device, dtype=dtype)


def memory_step(q, k, v, log_f, w, b, perm, state, c=None):
    """One time step. q, k, v: (B, H, F); log_f: (B, H); w, b, c: (B, H, S); state: (B, H, S, F)."""
    kp = _permute(k, perm)  # (B, H, S, F)
    f = log_f.exp()[..., None, None]  # (B, H, 1, 1)
    state = f * state + w[..., None] * kp * v[:, :, None, :]
    r = (b[..., None] * _permute(q, perm).conj() * state).sum(-2)  # (B, H, F)
    u = None if c is None else (c[..., None] * kp.conj() * state).sum(-2)
    return r, u, state


def memory_reference(q, k, v, log_f, w, b, perm, state=None, c=None):
    """memory_step over t = 0..T-1. Inputs (B, T, ...) as in hamt.ops; returns r, u (B, T, H, F), state."""
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
