"""Fused Triton kernel of the holographic memory scan: forward and backward, state on chip.

Same signature and semantics as ``hamt.ops.memory_reference`` (the specification; see
``hamt/ops/__init__.py`` for the math and shapes)::

    r, u, final_state = memory_triton(q, k, v, log_f, w, b, perm, state=None, c=None)

Design
------
* One program per (batch, head, block of BLOCK_F frequencies). It holds the S slot states of its
  frequencies as a (BLOCK_S, BLOCK_F) tile of real and imaginary parts in registers and loops over
  time; the S slots are the tile's first axis (a vectorised loop), so the read ``sum_s`` is a
  reduction over that axis. The slot permutations are loaded once; each step gathers the permuted
  keys and queries ``k[t, perm[s, f]]`` straight from global memory (the whole row of F frequencies
  is a few hundred bytes, so the gathers hit cache), nothing permuted is ever materialised.
* Complex numbers are read and written as interleaved (re, im) pairs through ``view_as_real``: no
  copies, no complex arithmetic in the kernel. The kernel computes in the inputs' real dtype
  (float32 for complex64, float64 for complex128).
* Backward: per-token states are never stored. The forward pass saves the state at the start of
  every CHUNK steps ((B, H, ceil(T/CHUNK), S, F), 1/CHUNK of a per-token state history). The
  backward program walks the chunks last to first; for each it reloads the boundary state,
  recomputes the chunk's states into a small per-program scratch buffer (CHUNK+1 tiles, which stays in
  L1/L2 on a GPU), then runs the adjoint recurrence backwards over the chunk:

      dM_t  = f_t+1 dM_t+1 + b_t,s pi_s(Q_t) gR_t + c_t,s pi_s(K_t) gU_t   (dM_T = grad of final state)

  carrying dM across chunks in registers. Running the recurrence backwards from the final state
  (M_t-1 = (M_t - x_t) / f_t) was rejected: it divides by the forget factor, and f_t near 0 (short
  horizons, which the multi-scale initialisation creates on purpose) amplifies rounding errors
  without bound. Recomputation costs one extra pass over k, v, log f and w, which is cheap next to
  the reads the backward needs anyway.
* Gradients follow PyTorch's convention for complex autograd (the gradient of a real loss with
  respect to z = x + iy is dL/dx + i dL/dy, the conjugate Wirtinger derivative times 2), so they
  match autograd through ``memory_reference``. The gradients of the permuted keys and queries are
  scattered back to their frequencies with atomic adds (different slots map to the same frequency);
  the per-slot weights' and the forget gate's gradients are reduced over frequencies per block into
  a small partial buffer and summed over blocks in PyTorch (deterministic).

Importing this module needs Triton; on CPU run it under ``TRITON_INTERPRET=1`` (set before Triton is
first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hamt.ops.naive import DEFAULT_CHUNK_SIZE, check_chunk_size

Tensor = torch.Tensor

# The chunk (time steps between saved states in the forward pass; the backward recomputes within) defaults
# to DEFAULT_CHUNK_SIZE, shared by every path. Tuned with scripts/gpu_tune.py on an H200 at the 100m shape
# (B 16, T 1024, H 16, S 16, F 65, fwd+bwd): chunk 16 vs 64 is 2-4% faster at every block_f (a smaller
# scratch stays in cache); see BENCHMARKS.md.
DEFAULT_BLOCK_F = 8  # frequencies per program; same sweep: 8 -> 14.3 ms, 16 -> 16.5, 32 -> 19.2, 64 -> 21.6


# --------------------------------------------------------------------------------------------------
# Kernels. Layouts (all contiguous): complex (B, T, H, F) tensors as real (B, T, H, F, 2);
# gates (B, T, H, S); log_f (B, T, H); states (B, H, S, F, 2); checkpoints (B, H, NC, S, F, 2).
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_c(ptr, base, offs, mask):
    """Load a complex tile at float offset ``base + 2 * offs`` as (re, im)."""
    re = tl.load(ptr + base + offs * 2, mask=mask, other=0.0)
    im = tl.load(ptr + base + offs * 2 + 1, mask=mask, other=0.0)
    return re, im


@triton.jit
def _store_c(ptr, base, offs, re, im, mask):
    tl.store(ptr + base + offs * 2, re, mask=mask)
    tl.store(ptr + base + offs * 2 + 1, im, mask=mask)


@triton.jit
def _memory_fwd_kernel(
    Q, K, V, LF, W, RB, C, PERM, S0,  # inputs
    R, U, SF, CK,  # outputs: r, u, final state, chunk-start states
    T, H, S, F, NC,
    HAS_C: tl.constexpr, SAVE_CK: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_f = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_s = tl.arange(0, BLOCK_S)  # (BS,)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)  # (BF,)
    mask_s = offs_s < S
    mask_f = offs_f < F
    mask = mask_s[:, None] & mask_f[None, :]  # (BS, BF)
    perm = tl.load(PERM + offs_s[:, None] * F + offs_f[None, :], mask=mask, other=0)  # (BS, BF) key freq per slot
    sf = offs_s[:, None] * F + offs_f[None, :]  # (BS, BF) offsets of a (S, F) state, in complex units

    st_base = pid_bh * S * F * 2
    mr, mi = _load_c(S0, st_base, sf, mask)  # (BS, BF) state, real and imaginary parts

    for c in range(0, NC):
        t0 = c * CHUNK
        if SAVE_CK:
            _store_c(CK, (pid_bh * NC + c) * S * F * 2, sf, mr, mi, mask)
        t_end = tl.minimum(t0 + CHUNK, T)
        for t in range(t0, t_end):
            row = (b * T + t) * H + h  # flat (b, t, h)
            base = row * F * 2
            kr, ki = _load_c(K, base, perm, mask)  # (BS, BF) pi_s(K_t)
            qr, qi = _load_c(Q, base, perm, mask)  # (BS, BF) pi_s(Q_t)
            vr, vi = _load_c(V, base, offs_f, mask_f)  # (BF,)
            decay = tl.exp(tl.load(LF + row))
            w = tl.load(W + row * S + offs_s, mask=mask_s, other=0.0)[:, None]  # (BS, 1)
            rb = tl.load(RB + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
            # M = f M + w pi(K) V
            mr = decay * mr + w * (kr * vr[None, :] - ki * vi[None, :])
            mi = decay * mi + w * (kr * vi[None, :] + ki * vr[None, :])
            # R = sum_s b conj(pi(Q)) M
            rr = tl.sum(rb * (qr * mr + qi * mi), axis=0)  # (BF,)
            ri = tl.sum(rb * (qr * mi - qi * mr), axis=0)
            _store_c(R, base, offs_f, rr, ri, mask_f)
            if HAS_C:
                cw = tl.load(C + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
                ur = tl.sum(cw * (kr * mr + ki * mi), axis=0)
                ui = tl.sum(cw * (kr * mi - ki * mr), axis=0)
                _store_c(U, base, offs_f, ur, ui, mask_f)
    _store_c(SF, st_base, sf, mr, mi, mask)


@triton.jit
def _memory_bwd_kernel(
    Q, K, V, LF, W, RB, C, PERM, CK, GR, GU, GSF,  # inputs (GR, GU, GSF: output gradients)
    GQ, GK, GV, GLF, GW, GB, GC, GS0, SCR,  # outputs (GQ, GK zero-initialised, atomics) + scratch
    T, H, S, F, NC, NFB,
    HAS_C: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_f = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_s = offs_s < S
    mask_f = offs_f < F
    mask = mask_s[:, None] & mask_f[None, :]
    perm = tl.load(PERM + offs_s[:, None] * F + offs_f[None, :], mask=mask, other=0)
    sf = offs_s[:, None] * F + offs_f[None, :]
    st_base = pid_bh * S * F * 2
    pid_f64 = pid_f.to(tl.int64)
    BTH = (tl.num_programs(0) // H).to(tl.int64) * T * H  # B * T * H: rows of one partial-gradient block
    # scratch of this program: (CHUNK + 1, 2, BS, BF) states M_t0-1 .. M_t_end-1 of the current chunk
    scr_base = (pid_bh * NFB + pid_f) * (CHUNK + 1) * 2 * BLOCK_S * BLOCK_F
    tile = offs_s[:, None] * BLOCK_F + tl.arange(0, BLOCK_F)[None, :]  # (BS, BF) offsets inside one tile

    dmr, dmi = _load_c(GSF, st_base, sf, mask)  # (BS, BF) dL/dM_t, carried backwards in time

    for cc in range(0, NC):
        c = NC - 1 - cc
        t0 = c * CHUNK
        t_end = tl.minimum(t0 + CHUNK, T)
        # 1) recompute the chunk's states from its saved start state
        mr, mi = _load_c(CK, (pid_bh * NC + c) * S * F * 2, sf, mask)
        tl.store(SCR + scr_base + tile, mr)
        tl.store(SCR + scr_base + BLOCK_S * BLOCK_F + tile, mi)
        for t in range(t0, t_end):
            row = (b * T + t) * H + h
            base = row * F * 2
            kr, ki = _load_c(K, base, perm, mask)
            vr, vi = _load_c(V, base, offs_f, mask_f)
            decay = tl.exp(tl.load(LF + row))
            w = tl.load(W + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
            mr = decay * mr + w * (kr * vr[None, :] - ki * vi[None, :])
            mi = decay * mi + w * (kr * vi[None, :] + ki * vr[None, :])
            j = (t - t0 + 1) * 2 * BLOCK_S * BLOCK_F
            tl.store(SCR + scr_base + j + tile, mr)
            tl.store(SCR + scr_base + j + BLOCK_S * BLOCK_F + tile, mi)
        tl.debug_barrier()
        # 2) adjoint recurrence backwards over the chunk
        for tt in range(0, t_end - t0):
            t = t_end - 1 - tt
            row = (b * T + t) * H + h
            base = row * F * 2
            j = (t - t0 + 1) * 2 * BLOCK_S * BLOCK_F
            mr = tl.load(SCR + scr_base + j + tile)  # M_t
            mi = tl.load(SCR + scr_base + j + BLOCK_S * BLOCK_F + tile)
            pr = tl.load(SCR + scr_base + j - 2 * BLOCK_S * BLOCK_F + tile)  # M_t-1
            pi = tl.load(SCR + scr_base + j - BLOCK_S * BLOCK_F + tile)
            kr, ki = _load_c(K, base, perm, mask)
            qr, qi = _load_c(Q, base, perm, mask)
            vr, vi = _load_c(V, base, offs_f, mask_f)
            grr, gri = _load_c(GR, base, offs_f, mask_f)
            grr = grr[None, :]
            gri = gri[None, :]
            vr = vr[None, :]
            vi = vi[None, :]
            decay = tl.exp(tl.load(LF + row))
            w = tl.load(W + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
            rb = tl.load(RB + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
            # Step t's reads add to dM_t before any write gradient uses it.
            # read R = sum_s b conj(pi Q) M:  dM += b pi(Q) gR;  d pi(Q) = b conj(gR) M;  db = Re(gR pi(Q) conj(M))
            ar = qr * grr - qi * gri  # (BS, BF) pi(Q) gR
            ai = qr * gri + qi * grr
            dmr += rb * ar
            dmi += rb * ai
            gb = tl.sum(ar * mr + ai * mi, axis=1)  # (BS,)
            tl.store(GB + (pid_f64 * BTH + row) * S + offs_s, gb, mask=mask_s)
            tl.atomic_add(GQ + base + perm * 2, rb * (grr * mr + gri * mi), mask=mask, sem="relaxed")
            tl.atomic_add(GQ + base + perm * 2 + 1, rb * (grr * mi - gri * mr), mask=mask, sem="relaxed")
            gkr = tl.zeros((BLOCK_S, BLOCK_F), dtype=mr.dtype)
            gki = tl.zeros((BLOCK_S, BLOCK_F), dtype=mr.dtype)
            if HAS_C:
                # read-back U = sum_s c conj(pi K) M:  dM += c pi(K) gU;  d pi(K) = c conj(gU) M
                gur, gui = _load_c(GU, base, offs_f, mask_f)
                gur = gur[None, :]
                gui = gui[None, :]
                cw = tl.load(C + row * S + offs_s, mask=mask_s, other=0.0)[:, None]
                er = kr * gur - ki * gui  # (BS, BF) pi(K) gU
                ei = kr * gui + ki * gur
                dmr += cw * er
                dmi += cw * ei
                gc = tl.sum(er * mr + ei * mi, axis=1)
                tl.store(GC + (pid_f64 * BTH + row) * S + offs_s, gc, mask=mask_s)
                gkr = cw * (gur * mr + gui * mi)
                gki = cw * (gur * mi - gui * mr)
            # write x = w pi(K) V with dx = dM_t:  d pi(K) += w dM conj(V)
            gkr += w * (dmr * vr + dmi * vi)
            gki += w * (dmi * vr - dmr * vi)
            tl.atomic_add(GK + base + perm * 2, gkr, mask=mask, sem="relaxed")
            tl.atomic_add(GK + base + perm * 2 + 1, gki, mask=mask, sem="relaxed")
            # write x = w pi(K) V: dw = sum_f Re(dM conj(pi(K) V)), dV = sum_s w dM conj(pi K)
            yr = kr * vr - ki * vi  # (BS, BF) pi(K) V
            yi = kr * vi + ki * vr
            gw = tl.sum(dmr * yr + dmi * yi, axis=1)  # (BS,)
            gvr = tl.sum(w * (dmr * kr + dmi * ki), axis=0)  # (BF,) sum_s w dM conj(pi K)
            gvi = tl.sum(w * (dmi * kr - dmr * ki), axis=0)
            _store_c(GV, base, offs_f, gvr, gvi, mask_f)
            # decay M_t = f M_t-1 + x: df = sum Re(dM conj(M_t-1)), dlog f = f df; dM_t-1 = f dM_t
            gd = tl.sum(tl.sum(dmr * pr + dmi * pi, axis=1), axis=0)
            tl.store(GLF + pid_f64 * BTH + row, gd * decay)
            tl.store(GW + (pid_f64 * BTH + row) * S + offs_s, gw, mask=mask_s)
            dmr = dmr * decay
            dmi = dmi * decay
        tl.debug_barrier()
    _store_c(GS0, st_base, sf, dmr, dmi, mask)


# --------------------------------------------------------------------------------------------------
# Launch helpers and the autograd Function
# --------------------------------------------------------------------------------------------------


def _blocks(S: int, F: int, block_f: int | None) -> tuple[int, int, int]:
    block_s = triton.next_power_of_2(S)
    if block_f is None:
        # Small tiles keep register use low and give B*H*ceil(F/BF) programs to hide each time step's
        # latency: the scan is latency-bound, not bandwidth-bound (DEFAULT_BLOCK_F).
        block_f = min(triton.next_power_of_2(F), DEFAULT_BLOCK_F)
    block_f = triton.next_power_of_2(block_f)
    return block_s, block_f, triton.cdiv(F, block_f)


def _num_warps(block_s: int, block_f: int) -> int:
    return max(1, min(4, block_s * block_f // 256))


class _MemoryScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_f, w, b, c, perm, state, save_ck: bool, chunk: int, block_f):
        B, T, H, F = q.shape
        S = perm.shape[0]
        rdt = q.real.dtype
        block_s, block_f, nfb = _blocks(S, F, block_f)
        nc = triton.cdiv(T, chunk)
        qr, kr, vr = (torch.view_as_real(x.resolve_conj().contiguous()) for x in (q, k, v))  # (B, T, H, F, 2)
        lf = log_f.to(rdt).contiguous()
        wc, bc = w.to(rdt).contiguous(), b.to(rdt).contiguous()
        cc = c.to(rdt).contiguous() if c is not None else wc  # dummy pointer when HAS_C is off
        perm32 = perm.to(device=q.device, dtype=torch.int32).contiguous()
        s0 = torch.view_as_real(state.to(q.dtype).resolve_conj().contiguous())  # (B, H, S, F, 2)
        r = torch.empty_like(qr)
        u = torch.empty_like(qr) if c is not None else r.new_empty(0)
        sf = torch.empty_like(s0)
        ck = s0.new_empty(B, H, nc, S, F, 2) if save_ck else s0.new_empty(1)
        grid = (B * H, nfb)
        _memory_fwd_kernel[grid](
            qr, kr, vr, lf, wc, bc, cc, perm32, s0, r, u, sf, ck, T, H, S, F, nc,
            HAS_C=c is not None, SAVE_CK=save_ck, CHUNK=chunk, BLOCK_S=block_s, BLOCK_F=block_f,
            num_warps=_num_warps(block_s, block_f), enable_fp_fusion=True,  # FMAs in the complex products
        )
        if save_ck:
            ctx.save_for_backward(qr, kr, vr, lf, wc, bc, cc, perm32, ck)
        ctx.meta = (c is not None, chunk, block_s, block_f, nfb, q.dtype, log_f.dtype, w.dtype, b.dtype,
                    None if c is None else c.dtype, state.dtype)
        u_out = torch.view_as_complex(u) if c is not None else None
        if u_out is None:
            return torch.view_as_complex(r), torch.view_as_complex(sf)
        return torch.view_as_complex(r), u_out, torch.view_as_complex(sf)

    @staticmethod
    def backward(ctx, *grads):
        has_c, chunk, block_s, block_f, nfb, qdt, lfdt, wdt, bdt, cdt, sdt = ctx.meta
        if has_c:
            g_r, g_u, g_sf = grads
        else:
            (g_r, g_sf), g_u = grads, None
        qr, kr, vr, lf, wc, bc, cc, perm32, ck = ctx.saved_tensors
        B, T, H, F, _ = qr.shape
        S = perm32.shape[0]
        nc = ck.shape[2]

        def real_grad(g):  # output gradient as contiguous (…, 2) real, zeros if unused
            if g is None:
                return None
            return torch.view_as_real(g.to(qdt).resolve_conj().contiguous())

        grr = real_grad(g_r) if g_r is not None else torch.zeros_like(qr)
        gur = (real_grad(g_u) if g_u is not None else torch.zeros_like(qr)) if has_c else grr
        gsf = real_grad(g_sf) if g_sf is not None else qr.new_zeros(B, H, S, F, 2)
        gq = torch.zeros_like(qr)
        gk = torch.zeros_like(qr)
        gv = torch.empty_like(qr)
        glf = lf.new_empty(nfb, B, T, H)
        gw = wc.new_zeros(nfb, B, T, H, S)
        gb = wc.new_zeros(nfb, B, T, H, S)
        gc = wc.new_zeros(nfb, B, T, H, S) if has_c else gw
        gs0 = qr.new_empty(B, H, S, F, 2)
        scratch = qr.new_empty(B * H * nfb * (chunk + 1) * 2 * block_s * block_f)
        _memory_bwd_kernel[(B * H, nfb)](
            qr, kr, vr, lf, wc, bc, cc, perm32, ck, grr, gur, gsf,
            gq, gk, gv, glf, gw, gb, gc, gs0, scratch,
            T, H, S, F, nc, nfb,
            HAS_C=has_c, CHUNK=chunk, BLOCK_S=block_s, BLOCK_F=block_f,
            num_warps=_num_warps(block_s, block_f), enable_fp_fusion=True,  # FMAs in the complex products
        )
        as_c = torch.view_as_complex
        return (
            as_c(gq), as_c(gk), as_c(gv), glf.sum(0).to(lfdt), gw.sum(0).to(wdt), gb.sum(0).to(bdt),
            gc.sum(0).to(cdt) if has_c else None, None, as_c(gs0).to(sdt), None, None, None,
        )


def memory_triton(q, k, v, log_f, w, b, perm, state=None, c=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  block_f: int | None = None):
    """Fused memory scan; same arguments and return value ``(r, u, final_state)`` as ``memory_reference``.

    ``chunk_size``: time steps between the states saved for the backward pass (any int >= 1: the kernel
    loops over the steps of a chunk, no tile has its size; each value compiles a kernel variant, a
    constexpr; the backward's scratch holds chunk_size + 1 tiles per program); ``block_f``: frequencies
    per program (a power of two; default min(next_pow2(F), DEFAULT_BLOCK_F)).
    """
    chunk_size = check_chunk_size(chunk_size)
    B, T, H, F = q.shape
    S = perm.shape[0]
    if not q.is_complex() or q.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"memory_triton: q, k, v must be complex64 or complex128, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    if state is None:
        state = torch.zeros(B, H, S, F, dtype=q.dtype, device=q.device)
    tensors = (q, k, v, log_f, w, b, state) + ((c,) if c is not None else ())
    save_ck = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    out = _MemoryScanFn.apply(q, k, v, log_f, w, b, c, perm, state, save_ck, chunk_size, block_f)
    if c is None:
        r, final = out
        return r, None, final
    return out
