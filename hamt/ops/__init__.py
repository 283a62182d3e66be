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
from one real matmul with the lower-triangular decay matrix, and the chunk-boundary states from a
second, small one. Chunks are processed a cache-sized block at a time and only the block-start
states are kept: the hand-written backward recomputes each block from its start state, so per-token
states never exist for more than one block at a time.
``mode="triton"`` is the fused CUDA kernel (hamt.ops.triton), state on chip; chosen by ``auto`` on CUDA.
``mode="cpu"`` is a fused C kernel for the CPU (compiled on first use, state in cache, sequential in
time within a row, rows over threads); chosen by ``auto`` on CPU when it builds, else ``chunk``.
"""

from __future__ import annotations

import math

import torch

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
#
# Time is cut into blocks of ``n`` chunks of ``C`` steps. Inside a block everything is batched:
#   * intra-chunk states  A[c, t] = sum_{j <= t in chunk c} exp(cum_t - cum_j) X_j   (one bmm per block)
#   * chunk-start states  M0[c]   = sum_{c' < c} exp(Gprev_c - Gcum_c') A[c', -1] + exp(Gprev_c) M_block
#                                   (a small n x n bmm: the scan over chunks is itself a matmul)
#   * per-token states    M[c, t] = A[c, t] + exp(cum_t) M0[c]
# so Python loops over blocks, not chunks, and per-token states exist for one block at a time.
# The backward is written by hand (``_ChunkedScan``): it recomputes a block's states from the block's
# start state (the only thing saved besides the inputs) and applies the adjoint of each step above.
# Why by hand: autograd through complex ops saved and re-materialised every per-slot (B, H, C, S, F)
# intermediate, and the backward of the slot permutation (``x[..., perm]``) is a scatter into zeros;
# here the permutation's adjoint is a gather with the inverse permutation, and per-slot tensors are
# made a minimum number of times. Shapes inside: N = B*H rows, head-major (N, L, ...).

# Per-slot entries (N * L * S * F) in one block: keeps a block's ~8 live per-slot tensors in cache.
_BLOCK_ENTRIES = 1 << 18


def _block_len(N: int, S: int, F: int, chunk: int, T: int) -> int:
    """Tokens per block: a multiple of ``chunk`` sized to _BLOCK_ENTRIES, at most T rounded up."""
    n = max(1, _BLOCK_ENTRIES // (N * S * F * chunk))
    return min(n * chunk, -(-T // chunk) * chunk)


def _slot_index(perm: Tensor) -> tuple[Tensor, Tensor]:
    """Flat gather indices of the slot permutations (S*F,) and of their inverses (the adjoint)."""
    S, F = perm.shape
    inv = perm.argsort(-1)  # inv[s, perm[s, f]] = f
    offset = torch.arange(S, device=perm.device)[:, None] * F
    return perm.reshape(-1), (inv + offset).reshape(-1)


class _Workspace:
    """Reusable per-slot buffers for the blocks of one call: every block has the same shape (the last
    may be shorter), so each buffer is allocated once per call instead of once per block. Fresh
    allocations of this size cost page faults that were a third of the backward's time."""

    def __init__(self):
        self._flat: dict[str, Tensor] = {}

    def __call__(self, name: str, shape, like: Tensor) -> Tensor:
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype:
            flat = self._flat[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)


def _gather_slots(x: Tensor, idx: Tensor, out: Tensor) -> Tensor:
    """(N, L, F) -> out (N, L, S, F): out[..., s, f] = x[..., perm[s, f]]."""
    N, L, F = x.shape
    torch.gather(x.reshape(N * L, F), 1, idx.expand(N * L, idx.shape[0]), out=out.view(N * L, -1))
    return out


def _scatter_slots(g: Tensor, inv_idx: Tensor, tmp: Tensor) -> Tensor:
    """Adjoint of _gather_slots, (N, L, S, F) -> (N, L, F): sum_s g[..., s, inv_s(f)], all gathers."""
    N, L, S, F = g.shape
    torch.gather(g.view(N * L, S * F), 1, inv_idx.expand(N * L, S * F), out=tmp.view(N * L, S * F))
    return tmp.sum(2)


def _rdot(a: Tensor, b: Tensor, tmp: Tensor) -> Tensor:
    """Re(sum_f a * conj(b)) for complex (..., F) -> real (...); tmp: a complex buffer like a."""
    prod = torch.view_as_real(tmp)
    torch.mul(torch.view_as_real(a), torch.view_as_real(b), out=prod)
    return prod.sum((-1, -2))


def _rev_cumsum(x: Tensor, dim: int = -1) -> Tensor:
    return x.flip(dim).cumsum(dim).flip(dim)


def _decays(lf: Tensor, C: int):
    """Log-decay bookkeeping of a block, lf (N, L) with L = n*C.

    cum (N, n, C): log decay from the chunk start through t; D (N, n, C, C): decay j -> t (0 above the
    diagonal); Gprev (N, n): log decay from the block start to each chunk start; Dc (N, n, n): decay
    from the end of chunk c' to the start of chunk c (c' < c)."""
    N, L = lf.shape
    n = L // C
    cum = lf.view(N, n, C).cumsum(-1)
    tri = torch.ones(C, C, dtype=torch.bool, device=lf.device).tril()
    D = _exp(cum[..., :, None] - cum[..., None, :], tri)
    G = cum[..., -1]
    Gcum = G.cumsum(-1)
    Gprev = Gcum - G
    stri = torch.ones(n, n, dtype=torch.bool, device=lf.device).tril(-1)
    Dc = _exp(Gprev[..., :, None] - Gcum[..., None, :], stri)
    return cum, D, Gprev, Dc


# Decays below exp(-60) (~1e-26, far under float32 resolution relative to the writes) are set to 0:
# left alone they reach the denormal range, where every multiply-add of the bmm's is many times slower.
_LOG_TINY = -60.0


def _exp(x: Tensor, keep: Tensor | None = None) -> Tensor:
    """exp(x) with entries outside ``keep`` (a mask) or below _LOG_TINY set to exactly 0."""
    drop = x < _LOG_TINY
    if keep is not None:
        drop = drop | ~keep
    return x.masked_fill(drop, float("-inf")).exp()


def _block_states(K, V, lf, w, Mb, idx, C, ws: _Workspace, keep: bool = False):
    """Per-token states of one block: K, V (N, L, F); lf (N, L); w (N, L, S); Mb (N, S, F).

    Returns M (N, L, S, F) complex (in the workspace) and, with ``keep``, what the backward needs:
    Kp, KV (= Kp * V), X (real view (N*n, C, 2SF)), the chunk-end intra states Z (N, n, 2SF), the
    chunk-start states M0 and the decays."""
    N, L, F = K.shape
    S = w.shape[-1]
    n = L // C
    shape = (N, L, S, F)
    cum, D, Gprev, Dc = _decays(lf, C)
    Kp = _gather_slots(K, idx, ws("Kp", shape, K))
    KV = torch.mul(Kp, V[:, :, None], out=ws("KV", shape, K)) if keep else Kp.mul_(V[:, :, None])
    X = torch.mul(KV, w[..., None], out=ws("X", shape, K)) if keep else KV.mul_(w[..., None])
    Xr = torch.view_as_real(X).view(N * n, C, 2 * S * F)
    A = torch.view_as_real(ws("M", shape, K)).view(N * n, C, 2 * S * F)
    torch.bmm(D.view(N * n, C, C), Xr, out=A)  # intra-chunk states
    A = A.view(N, n, C, 2 * S * F)
    Z = A[:, :, -1].clone()  # (N, n, 2SF) chunk-end intra states
    Mbr = torch.view_as_real(Mb).reshape(N, 1, 2 * S * F)
    M0 = torch.baddbmm(_exp(Gprev)[..., None] * Mbr, Dc, Z)  # (N, n, 2SF) chunk-start states
    A.addcmul_(_exp(cum)[..., None], M0[:, :, None])  # + decayed chunk-start state: A is now M
    M = torch.view_as_complex(A.view(N, L, S, F, 2))
    return M, ((Kp, KV, Xr, Z, M0, cum, D, Gprev, Dc) if keep else None)


def _read(Mq, M, weights, idx, ws: _Workspace, out: Tensor) -> Tensor:
    """out = sum_s weights[..., s] * conj(pi_s(q)) . M with Mq = conj(q) (N, L, F)."""
    Y = _gather_slots(Mq, idx, ws("Y", M.shape, M))
    Y.mul_(weights[..., None]).mul_(M)
    return torch.sum(Y, 2, out=out)


def _pad_time(x: Tensor | None, T: int, Tp: int) -> Tensor | None:
    """Zero-pad dim 1 (time, head-major layout) from T to Tp. Padded steps have log f = 0 and zero
    weights, so they neither decay nor write: the final state is the state at T."""
    if x is None or Tp == T:
        return x
    pad = x.new_zeros(x.shape[0], Tp - T, *x.shape[2:])
    return torch.cat([x, pad], 1)


def _head_major(x: Tensor | None, Tp: int) -> Tensor | None:
    """(B, T, H, ...) -> (B*H, Tp, ...) contiguous, zero-padded in time."""
    if x is None:
        return None
    B, T, H = x.shape[:3]
    return _pad_time(x.transpose(1, 2).reshape(B * H, T, *x.shape[3:]), T, Tp)


def _batch_major(x: Tensor, B: int, T: int) -> Tensor:
    """Inverse of _head_major: (B*H, Tp, ...) -> (B, T, H, ...) (a view)."""
    return x[:, :T].unflatten(0, (B, -1)).transpose(1, 2)


def _chunked_forward(q, k, v, log_f, w, b, c, state, perm, chunk):
    """Forward over all blocks. Returns r, u, final state (caller layouts) and the block-start states."""
    B, T, H, F = q.shape
    S = perm.shape[0]
    N = B * H
    C = min(chunk, T)
    Tp = -(-T // C) * C
    L = _block_len(N, S, F, C, T)
    idx, _ = _slot_index(perm)
    Qc, K, V = (_head_major(x, Tp) for x in (q.conj(), k, v))
    Kc = None if c is None else _head_major(k.conj(), Tp)
    lf, wh, bh, ch = (_head_major(x, Tp) for x in (log_f, w, b, c))
    Mb = (state.reshape(N, S, F) if state is not None else empty_state(N, 1, S, F, q.device, q.dtype)[:, 0])
    r = q.new_empty(N, Tp, F)
    u = q.new_empty(N, Tp, F) if c is not None else None
    starts = []
    ws = _Workspace()
    for t0 in range(0, Tp, L):
        sl = slice(t0, t0 + L)
        starts.append(Mb)
        M, _ = _block_states(K[:, sl], V[:, sl], lf[:, sl], wh[:, sl], Mb, idx, C, ws)
        _read(Qc[:, sl], M, bh[:, sl], idx, ws, r[:, sl])
        if c is not None:
            _read(Kc[:, sl], M, ch[:, sl], idx, ws, u[:, sl])
        Mb = M[:, -1].clone()
    r = _batch_major(r, B, T)
    u = _batch_major(u, B, T) if c is not None else None
    return r, u, Mb.view(B, H, S, F), torch.stack(starts)


def _block_backward(Q, K, Kc, Vc, lf, w, bb, cc, Mb, gr, gu, gMb, idx, inv_idx, C, ws: _Workspace):
    """Gradients of one block (recomputing its states from Mb). gMb: dL/d(state at the block end).

    Returns dQ, dK, dV (N, L, F), dlf (N, L), dw, db, dc (N, L, S), dL/d(state at the block start)."""
    N, L, F = K.shape
    S = w.shape[-1]
    n = L // C
    shape = (N, L, S, F)
    M, (Kp, KV, Xr, Z, M0, cum, D, Gprev, Dc) = _block_states(K, torch.conj_physical(Vc), lf, w, Mb, idx, C,
                                                               ws, keep=True)
    tmp = ws("tmp", shape, K)
    # read: r = sum_s b conj(Qp) M. With T1 = M conj(dr): db = Re sum_f T1 conj(Qp), dQ = scatter(b T1),
    # dM = b Qp dr.
    T1 = torch.mul(M, gr.conj()[:, :, None], out=ws("T1", shape, K))
    Qp = _gather_slots(Q, idx, ws("Y", shape, K))
    g_b = _rdot(T1, Qp, tmp)
    gQ = _scatter_slots(T1.mul_(bb[..., None]), inv_idx, tmp)
    gM = Qp.mul_(gr[:, :, None]).mul_(bb[..., None])  # reuses Qp's buffer
    g_c = gK_u = None
    if cc is not None:  # the key read-back u, same algebra with (Kp, c, du)
        torch.mul(M, gu.conj()[:, :, None], out=T1)
        g_c = _rdot(T1, Kp, tmp)
        gK_u = _scatter_slots(T1.mul_(cc[..., None]), inv_idx, tmp)
        gM.add_(torch.mul(Kp, gu[:, :, None], out=tmp).mul_(cc[..., None]))
    gM[:, -1].add_(gMb)
    # M = A + exp(cum) M0
    gMr = torch.view_as_real(gM).view(N, n, C, 2 * S * F)
    e = _exp(cum)
    gM0 = torch.bmm(e.view(N * n, 1, C), gMr.view(N * n, C, -1)).view(N, n, -1)
    g_e = torch.linalg.vecdot(gMr, M0[:, :, None], dim=-1)  # (N, n, C); a bmm mat-vec is ~7x slower
    # M0 = Dc @ Z + exp(Gprev) Mb
    eg = _exp(Gprev)
    Mbr = torch.view_as_real(Mb).reshape(N, 1, 2 * S * F)
    gZ = torch.bmm(Dc.mT, gM0)
    g_Dc = torch.bmm(gM0, Z.mT)
    g_eg = torch.linalg.vecdot(gM0, Mbr, dim=-1)
    gMb_prev = torch.bmm(eg[:, None, :], gM0)[:, 0]  # (N, 2SF)
    gMr[:, :, -1].add_(gZ)  # Z = A[:, :, -1]; gMr is now dL/dA
    # A = D @ X
    gA = gMr.view(N * n, C, -1)
    gX = torch.view_as_real(ws("gX", shape, K)).view(N * n, C, -1)
    torch.bmm(D.view(N * n, C, C).mT, gA, out=gX)
    g_D = torch.bmm(gA, Xr.mT).view(N, n, C, C)
    # log-decay gradients: D = exp(cum_t - cum_j), e = exp(cum), Dc = exp(Gprev_c - Gcum_c'), eg = exp(Gprev)
    HD = g_D.mul_(D)
    g_cum = HD.sum(-1) - HD.sum(-2) + g_e * e
    HC = g_Dc.mul_(Dc)
    g_Gprev = HC.sum(-1) + g_eg * eg
    g_Gcum = g_Gprev - HC.sum(-2)
    g_G = _rev_cumsum(g_Gcum) - g_Gprev
    g_cum[..., -1] += g_G
    g_lf = _rev_cumsum(g_cum).view(N, L)
    # X = KV w, KV = Kp V
    gXc = torch.view_as_complex(gX.view(N, L, S, F, 2))
    g_w = _rdot(gXc, KV, tmp)
    gKV = gXc.mul_(w[..., None])
    Kcp = _gather_slots(Kc, idx, ws("T1", shape, K))  # T1 is free again
    gV = Kcp.mul_(gKV).sum(2)
    gK = _scatter_slots(gKV.mul_(Vc[:, :, None]), inv_idx, tmp)
    if gK_u is not None:
        gK = gK + gK_u
    gMb_prev = torch.view_as_complex(gMb_prev.view(N, S, F, 2))
    return gQ, gK, gV, g_lf, g_w, g_b, g_c, gMb_prev


class _ChunkedScan(torch.autograd.Function):
    """The chunked scan with a hand-written, block-recomputing backward (see the section comment)."""

    @staticmethod
    def forward(ctx, q, k, v, log_f, w, b, c, state, perm, chunk):
        r, u, final, starts = _chunked_forward(q, k, v, log_f, w, b, c, state, perm, chunk)
        ctx.save_for_backward(q, k, v, log_f, w, b, c, perm, starts)
        ctx.chunk = chunk
        ctx.has_state = state is not None
        return r, u, final

    @staticmethod
    def backward(ctx, gr, gu, gstate):
        q, k, v, log_f, w, b, c, perm, starts = ctx.saved_tensors
        B, T, H, F = q.shape
        S = perm.shape[0]
        N = B * H
        C = min(ctx.chunk, T)
        Tp = -(-T // C) * C
        L = _block_len(N, S, F, C, T)
        idx, inv_idx = _slot_index(perm)
        Q, K, Vc = (_head_major(x, Tp) for x in (q, k, v.conj()))
        Kc = _head_major(k.conj(), Tp)
        lf, wh, bh, ch = (_head_major(x, Tp) for x in (log_f, w, b, c))
        gr = _head_major(gr, Tp) if gr is not None else torch.zeros_like(Q)
        if c is not None:
            gu = _head_major(gu, Tp) if gu is not None else torch.zeros_like(Q)
        gMb = gstate.reshape(N, S, F) if gstate is not None else Q.new_zeros(N, S, F)
        grads = [torch.empty_like(x) for x in (Q, K, Q, lf, wh, bh)] + ([torch.empty_like(ch)] if c is not None else [])
        ws = _Workspace()
        for i in reversed(range(len(starts))):
            sl = slice(i * L, (i + 1) * L)
            out = _block_backward(Q[:, sl], K[:, sl], Kc[:, sl], Vc[:, sl], lf[:, sl], wh[:, sl], bh[:, sl],
                                  None if c is None else ch[:, sl], starts[i], gr[:, sl],
                                  None if c is None else gu[:, sl], gMb, idx, inv_idx, C, ws)
            for g, blk in zip(grads, out[:7]):
                g[:, sl] = blk
            gMb = out[7]
        gq, gk, gv, glf, gw, gb = (_batch_major(g, B, T) for g in grads[:6])
        gc = _batch_major(grads[6], B, T) if c is not None else None
        gstate_in = gMb.view(B, H, S, F) if ctx.has_state else None
        return gq, gk, gv, glf, gw, gb, gc, gstate_in, None, None


def memory_chunked(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = 16):
    """The chunked parallel scan (same contract as memory_reference); differentiable, see _ChunkedScan."""
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_f, w, b, c, state)
    ):
        return _ChunkedScan.apply(q, k, v, log_f, w, b, c, state, perm, chunk_size)
    r, u, final, _ = _chunked_forward(q, k, v, log_f, w, b, c, state, perm, chunk_size)
    return r, u, final


# --------------------------------------------------------------------------------------------------
# Fused CPU kernel
# --------------------------------------------------------------------------------------------------
#
# The chunked path above is bound by memory traffic: every per-slot (S x F per token) tensor is
# written and read again by separate PyTorch ops, ~30 times per token over forward and backward.
# This kernel is the CPU counterpart of the Triton kernel: sequential in time within a (batch, head)
# row, with the S x F state in a small local buffer that stays in cache, rows split over
# torch.get_num_threads() threads (ctypes releases the GIL). Forward stores the state every
# ``chunk_size`` steps; backward recomputes a chunk's states from its checkpoint and walks it
# backwards, so memory is O(T / chunk_size) states, as in the chunked path. It is plain C compiled
# on first use with the system C compiler (cached by source hash); without a compiler,
# ``memory_scan(mode="auto")`` falls back to the chunked path (see cpu_kernel_status()).

_CPU_KERNEL_SRC = r"""
/* Fused CPU kernel of the memory scan: sequential in time, one (batch, head) row at a time, the
   S x F state in a local buffer that stays in L1/L2. Complex arrays are interleaved (re, im) as
   torch stores them; inside, slot-permuted copies are split into re/im planes so the loops over F
   vectorise. Compiled twice, REAL = float (suffix _f32) and double (_f64). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* xp[s][f] = x[perm[s][f]] (x one interleaved row of F, xp split planes); tr, ti: F scratch. */
static void FN(gather)(const REAL *restrict x, const int32_t *restrict perm, int64_t S, int64_t F,
                       REAL *restrict xr, REAL *restrict xi, REAL *restrict tr, REAL *restrict ti) {
    for (int64_t f = 0; f < F; f++) { tr[f] = x[2 * f]; ti[f] = x[2 * f + 1]; }
    for (int64_t s = 0; s < S; s++)
        for (int64_t f = 0; f < F; f++) {
            xr[s * F + f] = tr[perm[s * F + f]];
            xi[s * F + f] = ti[perm[s * F + f]];
        }
}

/* Adjoint of gather, written to x: x[g] = sum_s dp[s][inv[s][g]] (a gather too, no scatter). */
static void FN(unscatter)(const REAL *restrict dr, const REAL *restrict di, const int32_t *restrict inv,
                            int64_t S, int64_t F, REAL *restrict x, REAL *restrict tr, REAL *restrict ti) {
    for (int64_t g = 0; g < F; g++) { tr[g] = 0; ti[g] = 0; }
    for (int64_t s = 0; s < S; s++)
        for (int64_t g = 0; g < F; g++) {
            tr[g] += dr[s * F + inv[s * F + g]];
            ti[g] += di[s * F + inv[s * F + g]];
        }
    for (int64_t g = 0; g < F; g++) { x[2 * g] = tr[g]; x[2 * g + 1] = ti[g]; }
}

/* M <- fd * M + w_s (Kp . V) for every slot; V one interleaved row. */
static void FN(update)(REAL *restrict Mr, REAL *restrict Mi, const REAL *restrict Kr, const REAL *restrict Ki,
                       const REAL *restrict v, const REAL *restrict w, REAL fd, int64_t S, int64_t F,
                       REAL *restrict vr, REAL *restrict vi) {
    for (int64_t f = 0; f < F; f++) { vr[f] = v[2 * f]; vi[f] = v[2 * f + 1]; }
    for (int64_t s = 0; s < S; s++) {
        REAL ws = w[s];
        REAL *restrict mr = Mr + s * F, *restrict mi = Mi + s * F;
        const REAL *restrict kr = Kr + s * F, *restrict ki = Ki + s * F;
        for (int64_t f = 0; f < F; f++) {
            REAL xr = kr[f] * vr[f] - ki[f] * vi[f];
            REAL xi = kr[f] * vi[f] + ki[f] * vr[f];
            mr[f] = fd * mr[f] + ws * xr;
            mi[f] = fd * mi[f] + ws * xi;
        }
    }
}

/* out = sum_s wt[s] conj(Xp[s]) . M, written interleaved. */
static void FN(read)(const REAL *restrict Mr, const REAL *restrict Mi, const REAL *restrict Xr,
                     const REAL *restrict Xi, const REAL *restrict wt, int64_t S, int64_t F,
                     REAL *restrict accr, REAL *restrict acci, REAL *restrict out) {
    for (int64_t f = 0; f < F; f++) { accr[f] = 0; acci[f] = 0; }
    for (int64_t s = 0; s < S; s++) {
        REAL bs = wt[s];
        const REAL *restrict mr = Mr + s * F, *restrict mi = Mi + s * F;
        const REAL *restrict xr = Xr + s * F, *restrict xi = Xi + s * F;
        for (int64_t f = 0; f < F; f++) {
            accr[f] += bs * (xr[f] * mr[f] + xi[f] * mi[f]);
            acci[f] += bs * (xr[f] * mi[f] - xi[f] * mr[f]);
        }
    }
    for (int64_t f = 0; f < F; f++) { out[2 * f] = accr[f]; out[2 * f + 1] = acci[f]; }
}

/* Adjoint of out = sum_s wt[s] conj(Xp[s]) . M given dout: dM += wt Xp dout;
   dwt[s] = Re sum_f (Xp dout) conj(M); dXp[s] (written) = wt M conj(dout). */
static void FN(read_bwd)(const REAL *restrict Mr, const REAL *restrict Mi, const REAL *restrict Xr,
                         const REAL *restrict Xi, const REAL *restrict wt, const REAL *restrict dout,
                         int64_t S, int64_t F, REAL *restrict dMr, REAL *restrict dMi, REAL *restrict dwt,
                         REAL *restrict dXr, REAL *restrict dXi, REAL *restrict dr, REAL *restrict di) {
    for (int64_t f = 0; f < F; f++) { dr[f] = dout[2 * f]; di[f] = dout[2 * f + 1]; }
    for (int64_t s = 0; s < S; s++) {
        REAL bs = wt[s], acc = 0;
        const REAL *restrict mr = Mr + s * F, *restrict mi = Mi + s * F;
        const REAL *restrict xr = Xr + s * F, *restrict xi = Xi + s * F;
        REAL *restrict gmr = dMr + s * F, *restrict gmi = dMi + s * F;
        REAL *restrict gxr = dXr + s * F, *restrict gxi = dXi + s * F;
        for (int64_t f = 0; f < F; f++) {
            REAL pr = xr[f] * dr[f] - xi[f] * di[f];
            REAL pi = xr[f] * di[f] + xi[f] * dr[f];
            gmr[f] += bs * pr;
            gmi[f] += bs * pi;
            acc += mr[f] * pr + mi[f] * pi;
            gxr[f] = bs * (mr[f] * dr[f] + mi[f] * di[f]);
            gxi[f] = bs * (mi[f] * dr[f] - mr[f] * di[f]);
        }
        dwt[s] = acc;
    }
}

/* Row n = b * H + h of a batch-major (B, T, H, ...) tensor, at time t. */
#define IDX(n, t) ((((n) / H) * T + (t)) * H + (n) % H)

/* Forward over rows [n0, n1) (row = one batch element and head). Contiguous batch-major layouts,
   complex interleaved: q, k, v, r, u (B, T, H, F); lf (B, T, H); w, b, c (B, T, H, S); perm (S, F);
   state0, state1 (B, H, S, F); ckpt (B*H, ceil(T/C), S, F): the state before each chunk of C steps,
   for the backward. c, u, state0, ckpt may be NULL. */
void FN(hamt_scan_fwd)(int64_t n0, int64_t n1, int64_t T, int64_t S, int64_t F, int64_t C, int64_t H,
                       const REAL *q, const REAL *k, const REAL *v, const REAL *lf, const REAL *w,
                       const REAL *b, const REAL *c, const int32_t *perm, const REAL *state0,
                       REAL *r, REAL *u, REAL *state1, REAL *ckpt) {
    int64_t SF = S * F, nck = (T + C - 1) / C;
    REAL *buf = (REAL *)malloc(sizeof(REAL) * (6 * SF + 4 * F));
    REAL *Mr = buf, *Mi = Mr + SF, *Kr = Mi + SF, *Ki = Kr + SF, *Qr = Ki + SF, *Qi = Qr + SF;
    REAL *t0 = Qi + SF, *t1 = t0 + F, *t2 = t1 + F, *t3 = t2 + F;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t i = 0; i < SF; i++) {
            Mr[i] = state0 ? state0[2 * (n * SF + i)] : 0;
            Mi[i] = state0 ? state0[2 * (n * SF + i) + 1] : 0;
        }
        for (int64_t t = 0; t < T; t++) {
            int64_t nt = IDX(n, t);
            if (ckpt && t % C == 0) {
                REAL *ck = ckpt + 2 * (n * nck + t / C) * SF;
                for (int64_t i = 0; i < SF; i++) { ck[2 * i] = Mr[i]; ck[2 * i + 1] = Mi[i]; }
            }
            FN(gather)(k + 2 * nt * F, perm, S, F, Kr, Ki, t0, t1);
            FN(update)(Mr, Mi, Kr, Ki, v + 2 * nt * F, w + nt * S, (REAL)EXP(lf[nt]), S, F, t0, t1);
            FN(gather)(q + 2 * nt * F, perm, S, F, Qr, Qi, t0, t1);
            FN(read)(Mr, Mi, Qr, Qi, b + nt * S, S, F, t2, t3, r + 2 * nt * F);
            if (c) FN(read)(Mr, Mi, Kr, Ki, c + nt * S, S, F, t2, t3, u + 2 * nt * F);
        }
        for (int64_t i = 0; i < SF; i++) {
            state1[2 * (n * SF + i)] = Mr[i];
            state1[2 * (n * SF + i) + 1] = Mi[i];
        }
    }
    free(buf);
}

/* Backward over rows [n0, n1): recompute each chunk's states (and permuted keys) from its
   checkpoint, then walk the chunk backwards. Outputs (layouts as their inputs) are overwritten:
   gq, gk, gv, glf, gw, gb, gc, gstate0. gu, gc NULL without the key read-back; gstate1 NULL means
   zero. inv (S, F) is the inverse permutation. */
void FN(hamt_scan_bwd)(int64_t n0, int64_t n1, int64_t T, int64_t S, int64_t F, int64_t C, int64_t H,
                       const REAL *q, const REAL *k, const REAL *v, const REAL *lf, const REAL *w,
                       const REAL *b, const REAL *c, const int32_t *perm, const int32_t *inv,
                       const REAL *ckpt, const REAL *gr, const REAL *gu, const REAL *gstate1,
                       REAL *gq, REAL *gk, REAL *gv, REAL *glf, REAL *gw, REAL *gb, REAL *gc, REAL *gstate0) {
    int64_t SF = S * F, nck = (T + C - 1) / C;
    REAL *buf = (REAL *)malloc(sizeof(REAL) * (4 * (C + 1) * SF + 8 * SF + 8 * F));
    REAL *Ms = buf;                    /* C+1 states, each [re plane, im plane] */
    REAL *Ks = Ms + 2 * (C + 1) * SF;  /* the permuted keys of the chunk's C steps, same layout */
    REAL *dMr = Ks + 2 * (C + 1) * SF, *dMi = dMr + SF, *Qr = dMi + SF, *Qi = Qr + SF;
    REAL *dQr = Qi + SF, *dQi = dQr + SF, *dKr = dQi + SF, *dKi = dKr + SF;
    REAL *vr = dKi + SF, *vi = vr + F, *t0 = vi + F, *t1 = t0 + F, *t2 = t1 + F, *t3 = t2 + F;
    REAL *av = t3 + F, *bv = av + F;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t i = 0; i < SF; i++) {
            dMr[i] = gstate1 ? gstate1[2 * (n * SF + i)] : 0;
            dMi[i] = gstate1 ? gstate1[2 * (n * SF + i) + 1] : 0;
        }
        for (int64_t ci = nck - 1; ci >= 0; ci--) {
            int64_t ta = ci * C, tb = ta + C < T ? ta + C : T;
            const REAL *ck = ckpt + 2 * (n * nck + ci) * SF;
            for (int64_t i = 0; i < SF; i++) { Ms[i] = ck[2 * i]; Ms[SF + i] = ck[2 * i + 1]; }
            for (int64_t t = ta; t < tb; t++) {
                int64_t nt = IDX(n, t), j = t - ta;
                REAL *cur = Ms + 2 * (j + 1) * SF, *kp = Ks + 2 * j * SF;
                memcpy(cur, Ms + 2 * j * SF, sizeof(REAL) * 2 * SF);
                FN(gather)(k + 2 * nt * F, perm, S, F, kp, kp + SF, t0, t1);
                FN(update)(cur, cur + SF, kp, kp + SF, v + 2 * nt * F, w + nt * S, (REAL)EXP(lf[nt]), S, F, vr, vi);
            }
            for (int64_t t = tb - 1; t >= ta; t--) {
                int64_t nt = IDX(n, t), j = t - ta;
                const REAL *Mcr = Ms + 2 * (j + 1) * SF, *Mci = Mcr + SF;  /* M_t */
                const REAL *Mpr = Ms + 2 * j * SF, *Mpi = Mpr + SF;        /* M_{t-1} */
                const REAL *Kr = Ks + 2 * j * SF, *Ki = Kr + SF;
                FN(gather)(q + 2 * nt * F, perm, S, F, Qr, Qi, t0, t1);
                FN(read_bwd)(Mcr, Mci, Qr, Qi, b + nt * S, gr + 2 * nt * F, S, F, dMr, dMi, gb + nt * S,
                             dQr, dQi, t0, t1);
                FN(unscatter)(dQr, dQi, inv, S, F, gq + 2 * nt * F, t0, t1);
                if (c) {
                    FN(read_bwd)(Mcr, Mci, Kr, Ki, c + nt * S, gu + 2 * nt * F, S, F, dMr, dMi, gc + nt * S,
                                 dKr, dKi, t0, t1);
                } else {
                    memset(dKr, 0, sizeof(REAL) * 2 * SF);
                }
                /* M_t = fd M_{t-1} + w_s (Kp . V): dlf, dw, dKp (+=), dV, and dM_{t-1} = fd dM_t */
                REAL fd = (REAL)EXP(lf[nt]), accf = 0;
                const REAL *vt = v + 2 * nt * F;
                for (int64_t f = 0; f < F; f++) { vr[f] = vt[2 * f]; vi[f] = vt[2 * f + 1]; av[f] = 0; bv[f] = 0; }
                for (int64_t s = 0; s < S; s++) {
                    REAL ws = w[nt * S + s], accw = 0;
                    REAL *restrict gmr = dMr + s * F, *restrict gmi = dMi + s * F;
                    REAL *restrict gkr = dKr + s * F, *restrict gki = dKi + s * F;
                    const REAL *restrict kr = Kr + s * F, *restrict ki = Ki + s * F;
                    const REAL *restrict mpr = Mpr + s * F, *restrict mpi = Mpi + s * F;
                    for (int64_t f = 0; f < F; f++) {
                        REAL dmr = gmr[f], dmi = gmi[f];
                        accf += dmr * mpr[f] + dmi * mpi[f];
                        REAL kvr = kr[f] * vr[f] - ki[f] * vi[f], kvi = kr[f] * vi[f] + ki[f] * vr[f];
                        accw += dmr * kvr + dmi * kvi;
                        REAL dkr = ws * dmr, dki = ws * dmi;
                        av[f] += dkr * kr[f] + dki * ki[f];
                        bv[f] += dki * kr[f] - dkr * ki[f];
                        gkr[f] += dkr * vr[f] + dki * vi[f];
                        gki[f] += dki * vr[f] - dkr * vi[f];
                        gmr[f] = fd * dmr;
                        gmi[f] = fd * dmi;
                    }
                    gw[nt * S + s] = accw;
                }
                REAL *gvt = gv + 2 * nt * F;
                for (int64_t f = 0; f < F; f++) { gvt[2 * f] = av[f]; gvt[2 * f + 1] = bv[f]; }
                FN(unscatter)(dKr, dKi, inv, S, F, gk + 2 * nt * F, t0, t1);
                glf[nt] = fd * accf;
            }
        }
        for (int64_t i = 0; i < SF; i++) {
            gstate0[2 * (n * SF + i)] = dMr[i];
            gstate0[2 * (n * SF + i) + 1] = dMi[i];
        }
    }
    free(buf);
}
#undef IDX
"""

_CPU_KERNEL_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math",
                     "-fno-signed-zeros", "-fassociative-math"]
_cpu_kernel_lib = None
_cpu_kernel_error: str | None = None


def _compile_cpu_kernel():
    """Build (or reuse) the shared library; returns the ctypes handle or raises with the reason."""
    import ctypes
    import hashlib
    import os
    import shutil
    import subprocess
    import tempfile

    if os.environ.get("HAMT_CPU_KERNEL", "1") == "0":
        raise RuntimeError("disabled by HAMT_CPU_KERNEL=0")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    variants = [("float", "_f32", "expf"), ("double", "_f64", "exp")]
    src = "".join(f"#define REAL {r}\n#define SFX {x}\n#define EXP {e}\n{_CPU_KERNEL_SRC}\n"
                  "#undef REAL\n#undef SFX\n#undef EXP\n" for r, x, e in variants)
    cpu = ""  # -march=native: a library built for one CPU must not be loaded on another
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        pass
    key = hashlib.sha256((src + " ".join([cc, *_CPU_KERNEL_FLAGS]) + cpu).encode()).hexdigest()[:16]
    folder = os.environ.get("HAMT_CPU_KERNEL_DIR") or os.path.join(tempfile.gettempdir(),
                                                                   f"hamt-cpu-kernel-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    lib_path = os.path.join(folder, f"memory_{key}.so")
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
    import concurrent.futures

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


def memory_fused_cpu(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = 64):
    """The fused CPU kernel (same contract as memory_reference); needs cpu_kernel_available(q)."""
    ok, why = cpu_kernel_status()
    if not ok:
        raise RuntimeError(f"the fused CPU memory kernel is unavailable ({why}); use mode='chunk'")
    if not cpu_kernel_available(q):
        raise ValueError(f"the fused CPU memory kernel needs complex64/complex128 CPU tensors, got {q.dtype} on "
                         f"{q.device}; use mode='chunk'")
    chunk = max(1, int(chunk_size))
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_f, w, b, c, state)
    ):
        return _FusedCPUScan.apply(q, k, v, log_f, w, b, c, state, perm, chunk)
    out, _ = _fused_forward(q, k, v, log_f, w, b, c, state, perm, chunk, keep=False)
    return out


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from hamt.ops import triton  # noqa: F401
    except Exception:
        return False
    return True


def memory_scan(q, k, v, log_f, w, b, perm, state=None, c=None, mode: str = "auto", chunk_size: int = 64):
    """Run the memory over a segment; see the module docstring for shapes. Returns (r, u, final_state)."""
    if mode == "auto":
        if triton_available(q.device):
            mode = "triton"
        else:
            mode = "cpu" if cpu_kernel_available(q) else "chunk"
    if mode == "reference":
        return memory_reference(q, k, v, log_f, w, b, perm, state, c)
    if mode == "chunk":
        return memory_chunked(q, k, v, log_f, w, b, perm, state, c, chunk_size)
    if mode == "cpu":
        return memory_fused_cpu(q, k, v, log_f, w, b, perm, state, c, chunk_size)
    if mode == "triton":
        from hamt.ops.triton import memory_triton

        return memory_triton(q, k, v, log_f, w, b, perm, state, c)
    raise ValueError(f"unknown memory mode {mode!r}; use auto, chunk, cpu, reference or triton")
