/* Fused CPU kernel of the memory scan: sequential in time, one (batch, head) row at a time, the
   S x F state in a local buffer that stays in L1/L2. Complex arrays are interleaved (re, im) as
   torch stores them; inside, slot-permuted copies are split into re/im planes so the loops over F
   vectorise. Compiled twice into one library by hamt/ops/fused_cpu.py, which prepends the macros
   REAL, SFX, EXP, SQRT: float, _f32, expf, sqrtf and double, _f64, exp, sqrt. The loader's build cache
   is keyed by this file's content, the compiler, its flags and the CPU.

   q, k, v (and their gradients) are read (written) with a token stride ts_in (ts_out), in reals: the
   model passes strided views of its one (B, T, 3, H, F, 2) projection, so nothing is copied. With
   unit != 0 the kernel normalises q and k itself (x / sqrt(|x|^2 + eps), hamt.ops.unitary) as it reads
   them, and applies that map's adjoint to their gradients: the normalisation costs no pass of its own. */
#if !defined(REAL) || !defined(SFX) || !defined(EXP) || !defined(SQRT)
#error "define REAL, SFX, EXP and SQRT (hamt/ops/fused_cpu.py does, once per precision)"
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* xp[s][f] = x[perm[s][f]] (x one interleaved row of F, xp split planes; x made unitary first when
   unit != 0); tr, ti: F scratch. */
static void FN(gather)(const REAL *restrict x, const int32_t *restrict perm, int64_t S, int64_t F,
                       REAL *restrict xr, REAL *restrict xi, REAL *restrict tr, REAL *restrict ti,
                       int64_t unit, REAL eps) {
    for (int64_t f = 0; f < F; f++) { tr[f] = x[2 * f]; ti[f] = x[2 * f + 1]; }
    if (unit)
        for (int64_t f = 0; f < F; f++) {
            REAL n = (REAL)1 / SQRT(tr[f] * tr[f] + ti[f] * ti[f] + eps);
            tr[f] *= n;
            ti[f] *= n;
        }
    for (int64_t s = 0; s < S; s++)
        for (int64_t f = 0; f < F; f++) {
            xr[s * F + f] = tr[perm[s * F + f]];
            xi[s * F + f] = ti[perm[s * F + f]];
        }
}

/* Adjoint of gather, written to x: x[g] = sum_s dp[s][inv[s][g]] (a gather too, no scatter); with
   unit != 0 then the adjoint of y = x0 / sqrt(|x0|^2 + eps) at the raw input row x0 (interleaved):
   dx0 = n (dy - y Re(conj(y) dy)), n = 1 / sqrt(|x0|^2 + eps). */
static void FN(unscatter)(const REAL *restrict dr, const REAL *restrict di, const int32_t *restrict inv,
                            int64_t S, int64_t F, REAL *restrict x, REAL *restrict tr, REAL *restrict ti,
                            const REAL *restrict x0, int64_t unit, REAL eps) {
    for (int64_t g = 0; g < F; g++) { tr[g] = 0; ti[g] = 0; }
    for (int64_t s = 0; s < S; s++)
        for (int64_t g = 0; g < F; g++) {
            tr[g] += dr[s * F + inv[s * F + g]];
            ti[g] += di[s * F + inv[s * F + g]];
        }
    if (unit)
        for (int64_t g = 0; g < F; g++) {
            REAL n = (REAL)1 / SQRT(x0[2 * g] * x0[2 * g] + x0[2 * g + 1] * x0[2 * g + 1] + eps);
            REAL yr = x0[2 * g] * n, yi = x0[2 * g + 1] * n, dot = yr * tr[g] + yi * ti[g];
            tr[g] = n * (tr[g] - yr * dot);
            ti[g] = n * (ti[g] - yi * dot);
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

/* The adjoint of one time step for every slot in one pass over (s, f) (three passes before; reading
   dM, M and the keys once made the backward kernel 1.16-1.30x faster: 343 -> 295 and 365 -> 281 ms at
   B 8, T 512, H 8, S 8, F 65, one thread, interleaved; ivdep: GCC did not vectorise it without): the read with the
   query (weights b, output gradient gR), the key read-back (c, gU; skipped when c is NULL), then the
   write M_t = fd M_{t-1} + w_s (Kp . V). dM holds dM_t on entry and dM_{t-1} = fd dM_t on exit.
   Writes dQp, dKp (per slot, planes), dV (interleaved), gb, gc, gw; returns sum Re(conj(M_{t-1}) dM_t),
   which times fd is d(log f). rows: 8 F scratch. */
static REAL FN(step_bwd)(const REAL *restrict Mcr, const REAL *restrict Mci, const REAL *restrict Mpr,
                         const REAL *restrict Mpi, const REAL *restrict Qr, const REAL *restrict Qi,
                         const REAL *restrict Kr, const REAL *restrict Ki, const REAL *restrict vt,
                         const REAL *restrict grt, const REAL *restrict gut, const REAL *restrict bt,
                         const REAL *restrict ct, const REAL *restrict wt, REAL fd, int64_t S, int64_t F,
                         REAL *restrict dMr, REAL *restrict dMi, REAL *restrict dQr, REAL *restrict dQi,
                         REAL *restrict dKr, REAL *restrict dKi, REAL *restrict gbt, REAL *restrict gct,
                         REAL *restrict gwt, REAL *restrict gvt, REAL *restrict rows) {
    REAL *restrict vr = rows, *restrict vi = vr + F, *restrict er = vi + F, *restrict ei = er + F;
    REAL *restrict hr = ei + F, *restrict hi = hr + F, *restrict av = hi + F, *restrict bv = av + F;
    const int hc = ct != NULL;
    for (int64_t f = 0; f < F; f++) {
        vr[f] = vt[2 * f]; vi[f] = vt[2 * f + 1];
        er[f] = grt[2 * f]; ei[f] = grt[2 * f + 1];
        hr[f] = hc ? gut[2 * f] : 0; hi[f] = hc ? gut[2 * f + 1] : 0;
        av[f] = 0; bv[f] = 0;
    }
    REAL accf = 0;
    for (int64_t s = 0; s < S; s++) {
        /* without c: cs = 0 and gU = 0, so the key read-back terms vanish (branch-free: the loop vectorises) */
        REAL bs = bt[s], cs = hc ? ct[s] : 0, ws = wt[s], accb = 0, accc = 0, accw = 0;
        const REAL *restrict mcr = Mcr + s * F, *restrict mci = Mci + s * F;
        const REAL *restrict mpr = Mpr + s * F, *restrict mpi = Mpi + s * F;
        const REAL *restrict qpr = Qr + s * F, *restrict qpi = Qi + s * F;
        const REAL *restrict kpr = Kr + s * F, *restrict kpi = Ki + s * F;
        REAL *restrict gmr = dMr + s * F, *restrict gmi = dMi + s * F;
        REAL *restrict gqr = dQr + s * F, *restrict gqi = dQi + s * F;
        REAL *restrict gkr = dKr + s * F, *restrict gki = dKi + s * F;
#pragma GCC ivdep
        for (int64_t f = 0; f < F; f++) {
            REAL mr = mcr[f], mi = mci[f], qr = qpr[f], qi = qpi[f], kr = kpr[f], ki = kpi[f];
            /* read: R = sum_s b_s conj(Qp) M */
            REAL pr = qr * er[f] - qi * ei[f], pi = qr * ei[f] + qi * er[f];
            /* key read-back: U = sum_s c_s conj(Kp) M */
            REAL xr = kr * hr[f] - ki * hi[f], xi = kr * hi[f] + ki * hr[f];
            REAL dmr = gmr[f] + bs * pr + cs * xr, dmi = gmi[f] + bs * pi + cs * xi;
            accb += mr * pr + mi * pi;
            accc += mr * xr + mi * xi;
            gqr[f] = bs * (mr * er[f] + mi * ei[f]);
            gqi[f] = bs * (mi * er[f] - mr * ei[f]);
            /* write: M_t = fd M_{t-1} + w_s (Kp . V) */
            accf += dmr * mpr[f] + dmi * mpi[f];
            REAL kvr = kr * vr[f] - ki * vi[f], kvi = kr * vi[f] + ki * vr[f];
            accw += dmr * kvr + dmi * kvi;
            REAL wr = ws * dmr, wi = ws * dmi;
            av[f] += wr * kr + wi * ki;
            bv[f] += wi * kr - wr * ki;
            gkr[f] = cs * (mr * hr[f] + mi * hi[f]) + wr * vr[f] + wi * vi[f];
            gki[f] = cs * (mi * hr[f] - mr * hi[f]) + wi * vr[f] - wr * vi[f];
            gmr[f] = fd * dmr;
            gmi[f] = fd * dmi;
        }
        gbt[s] = accb;
        if (hc) gct[s] = accc;
        gwt[s] = accw;
    }
    for (int64_t f = 0; f < F; f++) { gvt[2 * f] = av[f]; gvt[2 * f + 1] = bv[f]; }
    return accf;
}

/* Row n = b * H + h of a batch-major (B, T, H, ...) tensor, at time t. */
#define IDX(n, t) ((((n) / H) * T + (t)) * H + (n) % H)
/* Offset in reals of row n at time t in q, k, v (or their gradients) with token stride ts. */
#define QKV(n, t, ts) ((((n) / H) * T + (t)) * (ts) + ((n) % H) * 2 * F)

/* Forward over rows [n0, n1) (row = one batch element and head). Contiguous batch-major layouts,
   complex interleaved: q, k, v, r, u (B, T, H, F); lf (B, T, H); w, b, c (B, T, H, S); perm (S, F);
   state0, state1 (B, H, S, F); ckpt (B*H, ceil(T/C), S, F): the state before each chunk of C steps,
   for the backward. c, u, state0, ckpt may be NULL. q, k, v: token stride ts (reals; H * F * 2 when
   contiguous); unit, eps: see the top of the file. */
void FN(hamt_scan_fwd)(int64_t n0, int64_t n1, int64_t T, int64_t S, int64_t F, int64_t C, int64_t H,
                       int64_t ts, int64_t unit,
                       const REAL *q, const REAL *k, const REAL *v, const REAL *lf, const REAL *w,
                       const REAL *b, const REAL *c, const int32_t *perm, const REAL *state0,
                       REAL *r, REAL *u, REAL *state1, REAL *ckpt, double eps_) {
    REAL eps = (REAL)eps_;
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
            int64_t nt = IDX(n, t), ot = QKV(n, t, ts);
            if (ckpt && t % C == 0) {
                REAL *ck = ckpt + 2 * (n * nck + t / C) * SF;
                for (int64_t i = 0; i < SF; i++) { ck[2 * i] = Mr[i]; ck[2 * i + 1] = Mi[i]; }
            }
            FN(gather)(k + ot, perm, S, F, Kr, Ki, t0, t1, unit, eps);
            FN(update)(Mr, Mi, Kr, Ki, v + ot, w + nt * S, (REAL)EXP(lf[nt]), S, F, t0, t1);
            FN(gather)(q + ot, perm, S, F, Qr, Qi, t0, t1, unit, eps);
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
   zero. inv (S, F) is the inverse permutation. q, k, v are read with token stride ts_in, gq, gk, gv
   written with ts_out; unit, eps as in the forward. */
void FN(hamt_scan_bwd)(int64_t n0, int64_t n1, int64_t T, int64_t S, int64_t F, int64_t C, int64_t H,
                       int64_t ts_in, int64_t ts_out, int64_t unit,
                       const REAL *q, const REAL *k, const REAL *v, const REAL *lf, const REAL *w,
                       const REAL *b, const REAL *c, const int32_t *perm, const int32_t *inv,
                       const REAL *ckpt, const REAL *gr, const REAL *gu, const REAL *gstate1,
                       REAL *gq, REAL *gk, REAL *gv, REAL *glf, REAL *gw, REAL *gb, REAL *gc, REAL *gstate0,
                       double eps_) {
    REAL eps = (REAL)eps_;
    int64_t SF = S * F, nck = (T + C - 1) / C;
    REAL *buf = (REAL *)malloc(sizeof(REAL) * (4 * (C + 1) * SF + 8 * SF + 10 * F));
    REAL *Ms = buf;                    /* C+1 states, each [re plane, im plane] */
    REAL *Ks = Ms + 2 * (C + 1) * SF;  /* the permuted keys of the chunk's C steps, same layout */
    REAL *dMr = Ks + 2 * (C + 1) * SF, *dMi = dMr + SF, *Qr = dMi + SF, *Qi = Qr + SF;
    REAL *dQr = Qi + SF, *dQi = dQr + SF, *dKr = dQi + SF, *dKi = dKr + SF;
    REAL *t0 = dKi + SF, *t1 = t0 + F, *rows = t1 + F;  /* rows: step_bwd's 8 F */
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
                int64_t nt = IDX(n, t), ot = QKV(n, t, ts_in), j = t - ta;
                REAL *cur = Ms + 2 * (j + 1) * SF, *kp = Ks + 2 * j * SF;
                memcpy(cur, Ms + 2 * j * SF, sizeof(REAL) * 2 * SF);
                FN(gather)(k + ot, perm, S, F, kp, kp + SF, t0, t1, unit, eps);
                FN(update)(cur, cur + SF, kp, kp + SF, v + ot, w + nt * S, (REAL)EXP(lf[nt]), S, F, t0, t1);
            }
            for (int64_t t = tb - 1; t >= ta; t--) {
                int64_t nt = IDX(n, t), ot = QKV(n, t, ts_in), og = QKV(n, t, ts_out), j = t - ta;
                const REAL *Mcr = Ms + 2 * (j + 1) * SF, *Mci = Mcr + SF;  /* M_t */
                const REAL *Mpr = Ms + 2 * j * SF, *Mpi = Mpr + SF;        /* M_{t-1} */
                const REAL *Kr = Ks + 2 * j * SF, *Ki = Kr + SF;
                FN(gather)(q + ot, perm, S, F, Qr, Qi, t0, t1, unit, eps);
                REAL fd = (REAL)EXP(lf[nt]);
                glf[nt] = fd * FN(step_bwd)(Mcr, Mci, Mpr, Mpi, Qr, Qi, Kr, Ki, v + ot, gr + 2 * nt * F,
                                            c ? gu + 2 * nt * F : NULL, b + nt * S, c ? c + nt * S : NULL,
                                            w + nt * S, fd, S, F, dMr, dMi, dQr, dQi, dKr, dKi, gb + nt * S,
                                            c ? gc + nt * S : NULL, gw + nt * S, gv + og, rows);
                FN(unscatter)(dQr, dQi, inv, S, F, gq + og, t0, t1, q + ot, unit, eps);
                FN(unscatter)(dKr, dKi, inv, S, F, gk + og, t0, t1, k + ot, unit, eps);
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
#undef QKV
