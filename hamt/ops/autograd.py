"""The autograd formula of the fused kernels' torch.library ops (fused_cpu.py and triton.py share it).

Each kernel is a pair of ops with one signature:

    fwd(q, k, v, log_f, w, b, c, perm, state, chunk, eps, unit, save) -> (r, u, final, ckpt)
    bwd(q, k, v, log_f, w, b, c, perm, ckpt, g_r, g_u, g_final, chunk, eps, unit)
        -> (dq, dk, dv, dlog_f, dw, db, dc, dstate)

on real (re, im) pairs: q, k, v, r, u (B, T, H, F, 2), state and final (B, H, S, F, 2); ``u`` and ``dc`` are
empty without ``c``; ``ckpt`` holds the chunk-start states that the backward recomputes from (saved, not
differentiated). ``register_scan_autograd(fwd, bwd)`` makes ``fwd`` differentiable through ``bwd``.
"""

from __future__ import annotations


def register_scan_autograd(fwd, bwd) -> None:
    """Join a kernel's forward and backward ops (signatures in the module docstring) with register_autograd."""

    def setup_context(ctx, inputs, output):
        q, k, v, log_f, w, b, c, perm, state, chunk, eps, unit, _save = inputs
        ctx.save_for_backward(q, k, v, log_f, w, b, c, perm, output[3])
        ctx.meta = (chunk, eps, unit, state is not None)

    def backward(ctx, g_r, g_u, g_final, _g_ckpt):
        q, k, v, log_f, w, b, c, perm, ckpt = ctx.saved_tensors
        chunk, eps, unit, has_state = ctx.meta
        B, T, H, F, _ = q.shape
        S = perm.shape[0]
        # an output that the loss does not use has no gradient: zeros, contiguous as the kernels read them
        g_r = q.new_zeros(B, T, H, F, 2) if g_r is None else g_r.contiguous()
        g_u = None if c is None else (q.new_zeros(B, T, H, F, 2) if g_u is None else g_u.contiguous())
        g_final = q.new_zeros(B, H, S, F, 2) if g_final is None else g_final.contiguous()
        gq, gk, gv, glf, gw, gb, gc, gs0 = bwd(q, k, v, log_f, w, b, c, perm, ckpt, g_r, g_u, g_final, chunk, eps,
                                               unit)
        return (gq, gk, gv, glf, gw, gb, gc if c is not None else None, None, gs0 if has_state else None,
                None, None, None, None)

    fwd.register_autograd(backward, setup_context=setup_context)
