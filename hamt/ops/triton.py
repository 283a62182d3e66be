"""Fused Triton kernel of the holographic memory scan: forward and backward, one (batch, head) row per program.

Same signature and semantics as ``hamt.ops.memory_reference`` (the specification; see
``hamt/ops/__init__.py`` for the math and shapes), plus the pair layout and ``normalize`` of ``memory_scan``::

    r, u, final_state = memory_triton(q, k, v, log_f, w, b, perm, state=None, c=None, normalize=None)

Design
------
* One program per (batch, head) row. It holds the whole S x F state of the row, real and imaginary
  parts, as two (BLOCK_S, BLOCK_F) register tiles (BLOCK_S = next_pow2(S), BLOCK_F = next_pow2(F);
  at the 100m shape 16 x 128 of which 16 x 65 are live) and loops over time. The read ``sum_s`` is a
  reduction over the tile's first axis. Each step gathers the permuted keys and queries
  ``k[t, perm[s, f]]`` straight from global memory (one row of F frequencies is a few hundred bytes,
  so the gathers hit L1); nothing permuted is materialised.
* Inputs and outputs are real (re, im) pairs (B, T, H, F, 2): the model's layout, no complex dtype in
  the kernel or in the graph torch.compile sees. q, k, v may be strided views of one projection
  (a common token stride, (H, F, 2) contiguous inside a token): read in place, nothing copied.
  ``normalize=eps`` fuses ``unitary``: q and k arrive raw and are normalised as they are loaded (an
  elementwise map, so normalising the gathered tile equals gathering the normalised row); the
  backward applies the map's adjoint, dx = n (dy - y Re(conj(y) dy)), n = 1 / sqrt(|x|^2 + eps).
* Backward: per-token states are never stored. The forward saves the state at the start of every
  CHUNK steps ((B, H, ceil(T/CHUNK), S, F, 2)); the backward walks the chunks last to first, reloads
  the boundary state, recomputes the chunk's states into a per-program scratch buffer (CHUNK + 1
  tiles: L1/L2 on a GPU), then runs the adjoint recurrence backwards over the chunk,

      dM_t = f_t+1 dM_t+1 + b_t,s pi_s(Q_t) gR_t + c_t,s pi_s(K_t) gU_t     (dM_T = grad of final state)

  carrying dM across chunks in registers. Running the recurrence backwards from the final state
  (M_t-1 = (M_t - x_t) / f_t) was rejected: it divides by the forget factor, and f_t near 0 (short
  horizons, which the multi-scale initialisation creates on purpose) amplifies rounding without bound.
* No atomics. The old kernel split a row's frequencies over programs and scattered the gradients of
  the permuted keys and queries with tile-wide ``tl.atomic_add`` (slot s sends frequency f to
  perm[s, f], so different slots hit the same frequency): latency-bound, and nondeterministic in
  float32. Here the program owns the whole row, so the gradient w.r.t. the permuted tile dKp (S, F)
  is un-permuted in registers: dk[g] = sum_s dKp[s, inv[s, g]] with inv the inverse permutation,
  i.e. ``tl.gather(dKp, inv, axis=1)`` (a gather within the tile: warp shuffles or shared memory,
  chosen by the compiler) followed by ``tl.sum`` over slots -- the adjoint of a gather is a gather by
  the inverse, as in the CPU kernel (csrc/memory_scan.c, ``unscatter``). Rejected: a one-hot
  (S*F, F) matmul (2048 x 128 at 100m: far too many registers for a per-step product) and a
  per-program scratch store + barrier + gathered reload (the same gather, through memory). Every
  output element is written once by one program, and the per-slot weights' and the forget gate's
  gradients are complete per program (sums over the row's frequencies), so the backward is
  deterministic and needs no partial buffers.
* Gradients follow PyTorch's convention for complex autograd (the gradient of a real loss with
  respect to z = x + iy is dL/dx + i dL/dy), which on pairs is the plain real gradient.
* torch.compile: forward and backward are ``torch.library.triton_op``s (hamt::memory_scan_fwd,
  hamt::memory_scan_bwd; their Python bodies are traceable, so they double as the fake/meta
  implementations that give shapes) with ``register_autograd``: dynamo sees two ops, no
  autograd.Function and no raw kernel launch, and Inductor sees the kernels themselves.

Importing this module needs Triton; on CPU run it under ``TRITON_INTERPRET=1`` (set before Triton is
first imported). scripts/triton_sm90_compile.py compiles both kernels for sm_90 without a GPU.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from hamt.ops.autograd import register_scan_autograd
from hamt.ops.naive import DEFAULT_CHUNK_SIZE, check_chunk_size

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# Kernels. Layouts, reals: q, k, v (B, T, H, F, 2) with token stride TS (reals), r, u and the gradients
# of q, k, v contiguous (B, T, H, F, 2); gates (B, T, H, S); log_f (B, T, H); perm, inv (S, F) int32;
# states (B, H, S, F, 2); chunk-start states (B, H, NC, S, F, 2).
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_c(ptr, base, offs, mask):
    """Load complex numbers at complex offsets ``offs`` (real offset ``base + 2 * offs``) as (re, im)."""
    re = tl.load(ptr + base + offs * 2, mask=mask, other=0.0)
    im = tl.load(ptr + base + offs * 2 + 1, mask=mask, other=0.0)
    return re, im


@triton.jit
def _store_c(ptr, base, offs, re, im, mask):
    tl.store(ptr + base + offs * 2, re, mask=mask)
    tl.store(ptr + base + offs * 2 + 1, im, mask=mask)


@triton.jit
def _inv_norm(re, im, eps):
    """1 / sqrt(|x|^2 + eps), correctly rounded: sqrt_rn for float32 (tl.sqrt is the approximate one there),
    tl.sqrt for float64 (IEEE already; sqrt_rn takes float32 only)."""
    x = re * re + im * im + eps
    if re.dtype == tl.float64:
        return 1.0 / tl.sqrt(x)
    return 1.0 / tl.sqrt_rn(x)


@triton.jit
def _unit(re, im, eps, UNIT: tl.constexpr):
    """hamt.ops.unitary when UNIT: x / sqrt(|x|^2 + eps), elementwise."""
    if UNIT:
        n = _inv_norm(re, im, eps)
        re = re * n
        im = im * n
    return re, im


@triton.jit
def _unit_adjoint(dr, di, xr, xi, eps, UNIT: tl.constexpr):
    """The adjoint of _unit at the raw input x applied to the gradient dy: n (dy - y Re(conj(y) dy))."""
    if UNIT:
        n = _inv_norm(xr, xi, eps)
        yr = xr * n
        yi = xi * n
        dot = yr * dr + yi * di
        dr = n * (dr - yr * dot)
        di = n * (di - yi * dot)
    return dr, di


@triton.jit
def _unpermute(dr, di, inv):
    """(BS, BF) gradient w.r.t. the permuted tile x[perm[s, f]] -> (BF,) gradient w.r.t. x:
    out[g] = sum_s d[s, inv[s, g]], a gather inside the tile (no scatter, no atomics)."""
    return tl.sum(tl.gather(dr, inv, axis=1), axis=0), tl.sum(tl.gather(di, inv, axis=1), axis=0)


@triton.jit
def _scan_fwd_kernel(
    Q, K, V, LF, W, RB, C, PERM, S0,  # inputs
    R, U, SF, CK,  # outputs: r, u, final state, chunk-start states
    T, H, S, F, NC, TS, eps,
    HAS_C: tl.constexpr, HAS_S0: tl.constexpr, SAVE_CK: tl.constexpr, UNIT: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # the (batch, head) row
    bi = pid // H
    h = pid % H
    offs_s = tl.arange(0, BLOCK_S)  # (BS,)
    offs_f = tl.arange(0, BLOCK_F)  # (BF,)
    mask_s = offs_s < S
    mask_f = offs_f < F
    mask = mask_s[:, None] & mask_f[None, :]  # (BS, BF)
    sf = offs_s[:, None] * F + offs_f[None, :]  # (BS, BF) offsets of an (S, F) state, complex units
    perm = tl.load(PERM + offs_s[:, None] * BLOCK_F + offs_f[None, :])  # (BS, BF) key freq per slot, padded
    st = pid * S * F * 2
    if HAS_S0:
        mr, mi = _load_c(S0, st, sf, mask)  # (BS, BF) the row's state
    else:
        mr = tl.zeros((BLOCK_S, BLOCK_F), dtype=V.dtype.element_ty)
        mi = tl.zeros((BLOCK_S, BLOCK_F), dtype=V.dtype.element_ty)

    for ci in range(0, NC):
        t0 = ci * CHUNK
        if SAVE_CK:
            _store_c(CK, (pid * NC + ci) * S * F * 2, sf, mr, mi, mask)
        t_end = tl.minimum(t0 + CHUNK, T)
        for t in range(t0, t_end):
            row = (bi * T + t) * H + h  # flat (b, t, h)
            qkv = (bi * T + t) * TS + h * F * 2  # this token's head in q, k, v (reals)
            kr, ki = _load_c(K, qkv, perm, True)  # (BS, BF) pi_s(K_t)
            kr, ki = _unit(kr, ki, eps, UNIT)
            qr, qi = _load_c(Q, qkv, perm, True)  # (BS, BF) pi_s(Q_t)
            qr, qi = _unit(qr, qi, eps, UNIT)
            vr, vi = _load_c(V, qkv, offs_f, mask_f)  # (BF,)
            decay = tl.exp(tl.load(LF + row))
            w = tl.load(W + row * S + offs_s, mask=mask_s, other=0.0)[:, None]  # (BS, 1)
            rb = tl.load(RB + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
            # M = f M + w pi(K) V
            mr = decay * mr + w * (kr * vr[None, :] - ki * vi[None, :])
            mi = decay * mi + w * (kr * vi[None, :] + ki * vr[None, :])
            # R = sum_s b conj(pi(Q)) M
            rr = tl.sum(rb * (qr * mr + qi * mi), axis=0)  # (BF,)
            ri = tl.sum(rb * (qr * mi - qi * mr), axis=0)
            _store_c(R, row * F * 2, offs_f, rr, ri, mask_f)
            if HAS_C:
                cw = tl.load(C + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
                ur = tl.sum(cw * (kr * mr + ki * mi), axis=0)
                ui = tl.sum(cw * (kr * mi - ki * mr), axis=0)
                _store_c(U, row * F * 2, offs_f, ur, ui, mask_f)
    _store_c(SF, st, sf, mr, mi, mask)


@triton.jit
def _scan_bwd_kernel(
    Q, K, V, LF, W, RB, C, PERM, CK, GR, GU, GSF,  # inputs (GR, GU, GSF: output gradients)
    GQ, GK, GV, GLF, GW, GB, GC, GS0, SCR,  # outputs, each element written once; SCR: per-program scratch
    T, H, S, F, NC, TS, eps,
    HAS_C: tl.constexpr, UNIT: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // H
    h = pid % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_f = tl.arange(0, BLOCK_F)
    mask_s = offs_s < S
    mask_f = offs_f < F
    mask = mask_s[:, None] & mask_f[None, :]
    sf = offs_s[:, None] * F + offs_f[None, :]
    TILE: tl.constexpr = BLOCK_S * BLOCK_F
    tile = offs_s[:, None] * BLOCK_F + offs_f[None, :]  # (BS, BF) offsets inside one tile
    perm = tl.load(PERM + tile)  # (BS, BF) padded permutations (_padded_perms)
    inv = tl.load(PERM + TILE + tile)  # (BS, BF) their inverses
    st = pid * S * F * 2
    scr = pid * (CHUNK + 1) * 2 * TILE  # this program's scratch: (CHUNK + 1, 2, BS, BF) states of a chunk

    dmr, dmi = _load_c(GSF, st, sf, mask)  # (BS, BF) dL/dM_t, carried backwards in time

    for cc in range(0, NC):
        ci = NC - 1 - cc
        t0 = ci * CHUNK
        t_end = tl.minimum(t0 + CHUNK, T)
        # 1) recompute the chunk's states from its saved start state
        mr, mi = _load_c(CK, (pid * NC + ci) * S * F * 2, sf, mask)
        tl.store(SCR + scr + tile, mr)
        tl.store(SCR + scr + TILE + tile, mi)
        for t in range(t0, t_end):
            row = (bi * T + t) * H + h
            qkv = (bi * T + t) * TS + h * F * 2
            kr, ki = _load_c(K, qkv, perm, True)
            kr, ki = _unit(kr, ki, eps, UNIT)
            vr, vi = _load_c(V, qkv, offs_f, mask_f)
            decay = tl.exp(tl.load(LF + row))
            w = tl.load(W + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
            mr = decay * mr + w * (kr * vr[None, :] - ki * vi[None, :])
            mi = decay * mi + w * (kr * vi[None, :] + ki * vr[None, :])
            j = (t - t0 + 1) * 2 * TILE
            tl.store(SCR + scr + j + tile, mr)
            tl.store(SCR + scr + j + TILE + tile, mi)
        tl.debug_barrier()
        # 2) adjoint recurrence backwards over the chunk. Ordered so that few tiles are live at once (the
        # whole row is in registers): the query part first, then the keys', then the decay's.
        for tt in range(0, t_end - t0):
            t = t_end - 1 - tt
            row = (bi * T + t) * H + h
            qkv = (bi * T + t) * TS + h * F * 2
            out = row * F * 2  # this token's head in r, u and the gradients of q, k, v
            j = (t - t0 + 1) * 2 * TILE
            mr = tl.load(SCR + scr + j + tile)  # (BS, BF) M_t
            mi = tl.load(SCR + scr + j + TILE + tile)
            # read R = sum_s b conj(pi Q) M:  dM += b pi(Q) gR;  d pi(Q) = b M conj(gR);  db = Re(gR pi(Q) conj(M))
            # (step t's reads add to dM_t before any write gradient uses it)
            qr, qi = _load_c(Q, qkv, perm, True)  # (BS, BF) pi_s(Q_t)
            qr, qi = _unit(qr, qi, eps, UNIT)
            grr, gri = _load_c(GR, out, offs_f, mask_f)
            grr = grr[None, :]
            gri = gri[None, :]
            rb = tl.load(RB + row * S + offs_s, mask=mask_s, other=0.0)[:, None]  # (BS, 1)
            ar = qr * grr - qi * gri  # (BS, BF) pi(Q) gR
            ai = qr * gri + qi * grr
            dmr += rb * ar
            dmi += rb * ai
            tl.store(GB + row * S + offs_s, tl.sum(ar * mr + ai * mi, axis=1), mask=mask_s)
            # un-permute d pi(Q) in registers, then the adjoint of the normalisation
            dqr, dqi = _unpermute(rb * (grr * mr + gri * mi), rb * (grr * mi - gri * mr), inv)  # (BF,)
            if UNIT:
                q0r, q0i = _load_c(Q, qkv, offs_f, mask_f)  # (BF,) the raw row
                dqr, dqi = _unit_adjoint(dqr, dqi, q0r, q0i, eps, UNIT)
            _store_c(GQ, out, offs_f, dqr, dqi, mask_f)
            kr, ki = _load_c(K, qkv, perm, True)  # (BS, BF) pi_s(K_t)
            kr, ki = _unit(kr, ki, eps, UNIT)
            if HAS_C:
                # read-back U = sum_s c conj(pi K) M:  dM += c pi(K) gU;  d pi(K) = c M conj(gU)
                gur, gui = _load_c(GU, out, offs_f, mask_f)
                gur = gur[None, :]
                gui = gui[None, :]
                cw = tl.load(C + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
                er = kr * gur - ki * gui  # (BS, BF) pi(K) gU
                ei = kr * gui + ki * gur
                dmr += cw * er
                dmi += cw * ei
                tl.store(GC + row * S + offs_s, tl.sum(er * mr + ei * mi, axis=1), mask=mask_s)
                gkr = cw * (gur * mr + gui * mi)  # (BS, BF) d pi(K)
                gki = cw * (gur * mi - gui * mr)
            else:
                gkr = tl.zeros((BLOCK_S, BLOCK_F), dtype=mr.dtype)
                gki = tl.zeros((BLOCK_S, BLOCK_F), dtype=mr.dtype)
            # write x = w pi(K) V with dx = dM_t:  d pi(K) += w dM conj(V);  dw = sum_f Re(dM conj(pi(K) V));
            # dV = sum_s w dM conj(pi K)
            vr, vi = _load_c(V, qkv, offs_f, mask_f)
            vr = vr[None, :]
            vi = vi[None, :]
            w = tl.load(W + row * S + offs_s, mask=mask_s, other=0.0)[:, None]  # (BS, 1)
            gkr += w * (dmr * vr + dmi * vi)
            gki += w * (dmi * vr - dmr * vi)
            gw = tl.sum(dmr * (kr * vr - ki * vi) + dmi * (kr * vi + ki * vr), axis=1)  # (BS,)
            tl.store(GW + row * S + offs_s, gw, mask=mask_s)
            gvr = tl.sum(w * (dmr * kr + dmi * ki), axis=0)  # (BF,)
            gvi = tl.sum(w * (dmi * kr - dmr * ki), axis=0)
            _store_c(GV, out, offs_f, gvr, gvi, mask_f)
            dkr, dki = _unpermute(gkr, gki, inv)  # (BF,)
            if UNIT:
                k0r, k0i = _load_c(K, qkv, offs_f, mask_f)
                dkr, dki = _unit_adjoint(dkr, dki, k0r, k0i, eps, UNIT)
            _store_c(GK, out, offs_f, dkr, dki, mask_f)
            # decay M_t = f M_t-1 + x: df = sum Re(dM conj(M_t-1)), dlog f = f df; dM_t-1 = f dM_t
            pr = tl.load(SCR + scr + j - 2 * TILE + tile)  # (BS, BF) M_t-1
            pi = tl.load(SCR + scr + j - TILE + tile)
            decay = tl.exp(tl.load(LF + row))
            tl.store(GLF + row, tl.sum(tl.sum(dmr * pr + dmi * pi, axis=1), axis=0) * decay)
            dmr = dmr * decay
            dmi = dmi * decay
        tl.debug_barrier()
    _store_c(GS0, st, sf, dmr, dmi, mask)


# --------------------------------------------------------------------------------------------------
# Launch shape, and the two ops (torch.library.triton_op: traceable by torch.compile)
# --------------------------------------------------------------------------------------------------


def launch_shape(S: int, F: int) -> tuple[int, int, int]:
    """(BLOCK_S, BLOCK_F, num_warps) of a row: the whole S x F state in one program. 4 warps up to 512 tile
    elements, 8 beyond: at 16 x 128 (the 100m shape) 4 warps spill in the forward (255 registers) and 16
    spill more in the backward (capped at 128 registers); scripts/triton_sm90_compile.py prints them."""
    block_s, block_f = triton.next_power_of_2(S), triton.next_power_of_2(F)
    return block_s, block_f, 4 if block_s * block_f <= 512 else 8


def _padded_perms(perm: Tensor, block_s: int, block_f: int) -> Tensor:
    """(2, BS, BF) int32: the permutations and their inverses (inv[s, perm[s, f]] = f), padded to the tile
    so that the kernels load them unmasked. Padding lanes of the permutation read frequency 0 (harmless: the
    value there is zero, so the state stays zero in padding lanes), padding lanes of the inverse point at
    themselves (the gradient tile is zero there); fewer masks held in registers across the time loop."""
    S, F = perm.shape
    eye = torch.arange(block_f, dtype=torch.int32, device=perm.device).expand(block_s, block_f)
    out = torch.stack([torch.zeros_like(eye), eye.clone()])  # (2, BS, BF)
    out[0, :S, :F] = perm.to(torch.int32)
    out[1, :S, :F] = perm.argsort(-1).to(torch.int32)
    return out


def _token_stride(q: Tensor, k: Tensor, v: Tensor) -> int:
    """The common token stride (reals) of q, k, v pairs (B, T, H, F, 2), each (H, F, 2)-contiguous inside a
    token and batch-major (stride(0) = T * stride(1)); 0 when they are not all laid out so."""
    _, T, H, F, _ = q.shape
    ts = q.stride(1)
    ok = all(x.stride()[2:] == (2 * F, 2, 1) and x.stride(1) == ts and (T == 1 or x.stride(0) == T * ts)
             for x in (q, k, v))
    return ts if ok and ts >= H * 2 * F else 0


def _rows_in_place(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """q, k, v as the kernels read them, with their token stride: in place when ``_token_stride`` allows it,
    else contiguous copies (stride H * F * 2)."""
    ts = _token_stride(q, k, v)
    if ts == 0:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        ts = q.shape[2] * q.shape[3] * 2
    return q, k, v, ts


@triton_op("hamt::memory_scan_fwd", mutates_args=())
def _scan_fwd(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, w: Tensor, b: Tensor, c: Optional[Tensor],
              perm: Tensor, state: Optional[Tensor], chunk: int, eps: float, unit: bool,
              save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """r, u (empty without c), final state (B, H, S, F, 2) and, when ``save``, the chunk-start states."""
    B, T, H, F, _ = q.shape
    S = perm.shape[0]
    q, k, v, ts = _rows_in_place(q, k, v)
    nc = triton.cdiv(T, chunk)
    block_s, block_f, warps = launch_shape(S, F)
    r = q.new_empty(B, T, H, F, 2)
    u = q.new_empty(B, T, H, F, 2) if c is not None else q.new_empty(0)
    sf = q.new_empty(B, H, S, F, 2)
    ck = q.new_empty(B, H, nc, S, F, 2) if save else q.new_empty(0)
    wrap_triton(_scan_fwd_kernel)[(B * H,)](
        q, k, v, log_f, w, b, w if c is None else c, _padded_perms(perm, block_s, block_f),
        sf if state is None else state,  # dummies when absent
        r, u, sf, ck, T, H, S, F, nc, ts, eps,
        HAS_C=c is not None, HAS_S0=state is not None, SAVE_CK=save, UNIT=unit, CHUNK=chunk,
        BLOCK_S=block_s, BLOCK_F=block_f, num_warps=warps,
    )
    return r, u, sf, ck


@triton_op("hamt::memory_scan_bwd", mutates_args=())
def _scan_bwd(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, w: Tensor, b: Tensor, c: Optional[Tensor],
              perm: Tensor, ck: Tensor, g_r: Tensor, g_u: Optional[Tensor], g_final: Tensor, chunk: int,
              eps: float, unit: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v (contiguous pairs), log_f, w, b, c (empty without c) and the initial state."""
    B, T, H, F, _ = q.shape
    S = perm.shape[0]
    q, k, v, ts = _rows_in_place(q, k, v)
    nc = ck.shape[2]
    block_s, block_f, warps = launch_shape(S, F)
    perms = _padded_perms(perm, block_s, block_f)
    gq, gk, gv = (q.new_empty(B, T, H, F, 2) for _ in range(3))
    glf = log_f.new_empty(B, T, H)
    gw, gb = w.new_empty(B, T, H, S), w.new_empty(B, T, H, S)
    gc = w.new_empty(B, T, H, S) if c is not None else w.new_empty(0)
    gs0 = q.new_empty(B, H, S, F, 2)
    scratch = q.new_empty(B * H * (chunk + 1) * 2 * block_s * block_f)
    wrap_triton(_scan_bwd_kernel)[(B * H,)](
        q, k, v, log_f, w, b, w if c is None else c, perms, ck, g_r, g_r if g_u is None else g_u, g_final,
        gq, gk, gv, glf, gw, gb, gw if c is None else gc, gs0, scratch,
        T, H, S, F, nc, ts, eps,
        HAS_C=c is not None, UNIT=unit, CHUNK=chunk, BLOCK_S=block_s, BLOCK_F=block_f, num_warps=warps,
    )
    return gq, gk, gv, glf, gw, gb, gc, gs0


register_scan_autograd(_scan_fwd, _scan_bwd)


def memory_triton(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  normalize: float | None = None):
    """Fused memory scan; same arguments and return value ``(r, u, final_state)`` as ``memory_reference``.

    q, k, v: complex (B, T, H, F), or real pairs (B, T, H, F, 2) (then r and u come back as pairs; the
    state is complex either way). ``normalize``: None when q and k are already unitary, else the eps of
    ``unitary`` that the kernel applies to them as it loads them. ``chunk_size``: time steps between the
    states saved for the backward (any int >= 1; each value compiles a kernel variant, a constexpr; the
    backward's scratch holds chunk_size + 1 tiles per program).
    """
    chunk_size = check_chunk_size(chunk_size)
    complex_in = q.is_complex()
    if complex_in:
        if q.dtype not in (torch.complex64, torch.complex128):
            raise TypeError(f"memory_triton: complex q, k, v must be complex64 or complex128, got {q.dtype}")
        q, k, v = (torch.view_as_real(x.to(q.dtype).resolve_conj()) for x in (q, k, v))  # views, no copies
    elif q.dtype not in (torch.float32, torch.float64) or q.dim() != 5 or q.shape[-1] != 2:
        raise TypeError(f"memory_triton: q, k, v must be complex64/complex128 (B, T, H, F) or float32/float64 "
                        f"(B, T, H, F, 2) pairs, got {q.dtype} {tuple(q.shape)}")
    real = q.dtype
    cplx = torch.complex64 if real == torch.float32 else torch.complex128
    k, v = k.to(real), v.to(real)
    log_f, w, b = (x.to(real).contiguous() for x in (log_f, w, b))
    c = None if c is None else c.to(real).contiguous()
    perm32 = perm.to(device=q.device, dtype=torch.int32).contiguous()
    st = None if state is None else torch.view_as_real(state.to(cplx).resolve_conj()).contiguous()
    differentiable = (q, k, v, log_f, w, b, st, c)
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in differentiable)
    unit = normalize is not None
    r, u, final, _ = _scan_fwd(q, k, v, log_f, w, b, c, perm32, st, chunk_size, float(normalize or 0.0), unit, save)
    u = None if c is None else u
    final = torch.view_as_complex(final)
    if complex_in:
        r, u = torch.view_as_complex(r), None if u is None else torch.view_as_complex(u)
    return r, u, final
