"""The chunked parallel scan (mode="chunk"), pure PyTorch, with its hand-written backward.

Same contract as ``memory_reference`` (hamt/ops/naive.py). The CPU fallback when the fused C kernel
cannot be built, and the path for any device without a fused kernel.

Time is cut into blocks of ``n`` chunks of ``C`` = min(chunk_size, T) steps. Inside a block everything is
batched:
  * intra-chunk states  A[c, t] = sum_{j <= t in chunk c} exp(cum_t - cum_j) X_j   (one bmm per block)
  * chunk-start states  M0[c]   = sum_{c' < c} exp(Gprev_c - Gcum_c') A[c', -1] + exp(Gprev_c) M_block
                                  (a small n x n bmm: the scan over chunks is itself a matmul)
  * per-token states    M[c, t] = A[c, t] + exp(cum_t) M0[c]
so Python loops over blocks, not chunks, and per-token states exist for one block at a time.
The backward is written by hand (``_ChunkedScan``): it recomputes a block's states from the block's
start state (the only thing saved besides the inputs) and applies the adjoint of each step above.
Why by hand: autograd through complex ops saved and re-materialised every per-slot (B, H, C, S, F)
intermediate, and the backward of the slot permutation (``x[..., perm]``) is a scatter into zeros;
here the permutation's adjoint is a gather with the inverse permutation, and per-slot tensors are
made a minimum number of times. Shapes inside: N = B*H rows, head-major (N, L, ...).
"""

from __future__ import annotations

import math

import torch

from hamt.ops.naive import DEFAULT_CHUNK_SIZE, check_chunk_size, empty_state

Tensor = torch.Tensor

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


def memory_chunked(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """The chunked parallel scan (same contract as memory_reference); differentiable, see _ChunkedScan.

    ``chunk_size``: time steps per chunk, the side of each chunk's (C, C) decay matmul."""
    chunk_size = check_chunk_size(chunk_size)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_f, w, b, c, state)
    ):
        return _ChunkedScan.apply(q, k, v, log_f, w, b, c, state, perm, chunk_size)
    r, u, final, _ = _chunked_forward(q, k, v, log_f, w, b, c, state, perm, chunk_size)
    return r, u, final

