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
                int64_t nt = IDX(n, t), ot = QKV(n, t, ts_in), j = t - ta;
                REAL *cur = Ms + 2 * (j + 1) * SF, *kp = Ks + 2 * j * SF;
                memcpy(cur, Ms + 2 * j * SF, sizeof(REAL) * 2 * SF);
                FN(gather)(k + ot, perm, S, F, kp, kp + SF, t0, t1, unit, eps);
                FN(update)(cur, cur + SF, kp, kp + SF, v + ot, w + nt * S, (REAL)EXP(lf[nt]), S, F, vr, vi);
            }
            for (int64_t t = tb - 1; t >= ta; t--) {
                int64_t nt = IDX(n, t), ot = QKV(n, t, ts_in), og = QKV(n, t, ts_out), j = t - ta;
                const REAL *Mcr = Ms + 2 * (j + 1) * SF, *Mci = Mcr + SF;  /* M_t */
                const REAL *Mpr = Ms + 2 * j * SF, *Mpi = Mpr + SF;        /* M_{t-1} */
                const REAL *Kr = Ks + 2 * j * SF, *Ki = Kr + SF;
                FN(gather)(q + ot, perm, S, F, Qr, Qi, t0, t1, unit, eps);
                FN(read_bwd)(Mcr, Mci, Qr, Qi, b + nt * S, gr + 2 * nt * F, S, F, dMr, dMi, gb + nt * S,
                             dQr, dQi, t0, t1);
                FN(unscatter)(dQr, dQi, inv, S, F, gq + og, t0, t1, q + ot, unit, eps);
                if (c) {
                    FN(read_bwd)(Mcr, Mci, Kr, Ki, c + nt * S, gu + 2 * nt * F, S, F, dMr, dMi, gc + nt * S,
                                 dKr, dKi, t0, t1);
                } else {
                    memset(dKr, 0, sizeof(REAL) * 2 * SF);
                }
                /* M_t = fd M_{t-1} + w_s (Kp . V): dlf, dw, dKp (+=), dV, and dM_{t-1} = fd dM_t */
                REAL fd = (REAL)EXP(lf[nt]), accf = 0;
                const REAL *vt = v + ot;
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
                REAL *gvt = gv + og;
                for (int64_t f = 0; f < F; f++) { gvt[2 * f] = av[f]; gvt[2 * f + 1] = bv[f]; }
                FN(unscatter)(dKr, dKi, inv, S, F, gk + og, t0, t1, k + ot, unit, eps);
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
#undef QKV
