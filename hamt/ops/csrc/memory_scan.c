/* Fused CPU kernel of the memory scan: sequential in time, a block of LANES (batch, head) rows at a
   time, one row per SIMD lane. Compiled twice into one library by hamt/ops/fused_cpu.py, which
   prepends the macros REAL, SFX, EXP, SQRT: float, _f32, expf, sqrtf and double, _f64, exp, sqrt. The
   loader's build cache is keyed by this file's content, the compiler, its flags and the CPU.

   Why rows in the lanes: the slot permutation pi_s is the same for every row, so with the rows of a
   block side by side in a vector, pi_s(K)[f] of all of them is one contiguous vector load at index
   perm[s][f]: no gathers (the kernel vectorised over F before, and its scalar gathers of the permuted
   q and k were most of its time). Inside a block every complex array is [index][re, im] of vectors
   (lanes innermost); the state is M[s * F + f][re, im], its S x F x 2 vectors stay in L1/L2. Rows of a
   block past the last row are lanes of zeros that are never stored: a zero state with zero inputs and
   zero gates stays zero.

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

#ifndef LANES
#define LANES 8 /* rows per block: 8 floats (or doubles) per vector; fused_cpu.py asks hamt_scan_lanes */
#endif
typedef REAL FN(vec) __attribute__((vector_size(LANES * sizeof(REAL))));
#define V FN(vec)

int64_t FN(hamt_scan_lanes)(void) { return LANES; }

/* Zeroed vectors, 64-byte aligned (NULL when out of memory). */
static V *FN(valloc)(int64_t n) {
    size_t bytes = ((sizeof(V) * (size_t)n + 63) / 64) * 64;
    V *p = (V *)aligned_alloc(64, bytes ? bytes : 64);
    if (p) memset(p, 0, bytes);
    return p;
}

/* Where each lane's row starts in a batch-major (B, T, H, ...) tensor: rows n = b * H + h of the block
   starting at n0. tok[l]: index of (b, 0, h) in units of tokens-and-heads (gates: (tok + t * H) * S);
   qkv[l]: offset in reals of (b, 0, h) in q, k, v with token stride ts (add t * ts); st[l] (unless NULL):
   offset in reals of row n's S x F state pairs in a (B, H, S, F) state. */
static void FN(row_offsets)(int64_t n0, int64_t nv, int64_t T, int64_t H, int64_t S, int64_t F, int64_t ts,
                            int64_t *tok, int64_t *qkv, int64_t *st) {
    for (int64_t l = 0; l < nv; l++) {
        int64_t n = n0 + l;
        tok[l] = (n / H) * T * H + n % H;
        qkv[l] = (n / H) * T * ts + (n % H) * 2 * F;
        if (st) st[l] = 2 * n * S * F;
    }
}

/* Moving rows in and out of the lanes is a transpose: with __builtin_shufflevector (Clang, GCC >= 12)
   an 8 x 8 tile is 8 vector loads, 24 shuffles and 8 vector stores instead of 64 scalar loads and
   stores (the scalar loops were a third of the kernel's time). Elsewhere (or built with
   -DHAMT_NO_SHUFFLE, as a test does), and for a row's last n % 8 reals, plain loops do it. */
#if LANES == 8 && !defined(HAMT_NO_SHUFFLE) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define TILE 8
/* Transpose the 8 x 8 tile r (r[i][j] -> r[j][i]): three rounds of interleaving rows i and i + 4. */
static inline __attribute__((always_inline)) void FN(transpose8)(V *r) {
    for (int round = 0; round < 3; round++) {
        V t[8];
        for (int i = 0; i < 4; i++) {
            t[2 * i] = __builtin_shufflevector(r[i], r[i + 4], 0, 8, 1, 9, 2, 10, 3, 11);
            t[2 * i + 1] = __builtin_shufflevector(r[i], r[i + 4], 4, 12, 5, 13, 6, 14, 7, 15);
        }
        for (int i = 0; i < 8; i++) r[i] = t[i];
    }
}
#else
#define TILE 0
#endif

/* X[i] (lane l) <- x_l[i] for i < n: n reals of each lane's row, x_l = x + off[l] (+ add); lanes past nv
   are left as they are (zeros). */
static void FN(load)(V *restrict X, const REAL *restrict x, const int64_t *off, int64_t add, int64_t nv,
                     int64_t n) {
    int64_t i0 = 0;
#if TILE
    for (; i0 + TILE <= n; i0 += TILE) {
        V r[8] = {{0}};
        for (int64_t l = 0; l < nv; l++) memcpy(&r[l], x + off[l] + add + i0, sizeof(V));
        FN(transpose8)(r);
        for (int j = 0; j < 8; j++) X[i0 + j] = r[j];
    }
#endif
    for (int64_t l = 0; l < nv; l++) {
        const REAL *restrict xl = x + off[l] + add;
        for (int64_t i = i0; i < n; i++) X[i][l] = xl[i];
    }
}

/* Ask for the n reals of each lane's row at x + off[l] + add to be brought into cache: the rows of the
   next token (the stride between tokens is kilobytes, so the hardware prefetchers do not follow). */
static void FN(prefetch)(const REAL *x, const int64_t *off, int64_t add, int64_t nv, int64_t n) {
    for (int64_t l = 0; l < nv; l++)
        for (int64_t i = 0; i < n; i += 64 / (int64_t)sizeof(REAL)) __builtin_prefetch(x + off[l] + add + i, 0, 1);
}

/* x_l[i] <- X[i] (lane l) for i < n: the inverse of load, for the nv real lanes. */
static void FN(store)(REAL *restrict x, const V *restrict X, const int64_t *off, int64_t add, int64_t nv,
                      int64_t n) {
    int64_t i0 = 0;
#if TILE
    for (; i0 + TILE <= n; i0 += TILE) {
        V r[8];
        for (int j = 0; j < 8; j++) r[j] = X[i0 + j];
        FN(transpose8)(r);
        for (int64_t l = 0; l < nv; l++) memcpy(x + off[l] + add + i0, &r[l], sizeof(V));
    }
#endif
    for (int64_t l = 0; l < nv; l++) {
        REAL *restrict xl = x + off[l] + add;
        for (int64_t i = i0; i < n; i++) xl[i] = X[i][l];
    }
}

/* X (F pairs) <- X / sqrt(|X|^2 + eps), keeping nrm[f] = 1 / sqrt(|X_f|^2 + eps) for the adjoint. */
static void FN(unit)(V *restrict X, V *restrict nrm, int64_t F, REAL eps) {
    for (int64_t f = 0; f < F; f++) {
        V a = X[2 * f] * X[2 * f] + X[2 * f + 1] * X[2 * f + 1] + eps, n;
        for (int l = 0; l < LANES; l++) n[l] = (REAL)1 / SQRT(a[l]);
        nrm[f] = n;
        X[2 * f] *= n;
        X[2 * f + 1] *= n;
    }
}

/* Adjoint of unit at the unit output Y with norms nrm: G <- nrm (G - Y Re(conj(Y) G)). */
static void FN(unit_adjoint)(V *restrict G, const V *restrict Y, const V *restrict nrm, int64_t F) {
    for (int64_t f = 0; f < F; f++) {
        V dot = Y[2 * f] * G[2 * f] + Y[2 * f + 1] * G[2 * f + 1];
        G[2 * f] = nrm[f] * (G[2 * f] - Y[2 * f] * dot);
        G[2 * f + 1] = nrm[f] * (G[2 * f + 1] - Y[2 * f + 1] * dot);
    }
}

/* One token's inputs for a block: q, k, v (F pairs each; q, k unitary when unit, with their norms),
   the forget factor fd = exp(log f) and the S write, read and read-back weights. The rows of token
   ``next`` are prefetched (none when it is outside [0, T)). */
typedef struct {
    V *q, *k, *v, *qn, *kn, *fd, *w, *b, *c;
} FN(token);

static void FN(load_token)(FN(token) *x, const REAL *q, const REAL *k, const REAL *v, const REAL *lf,
                           const REAL *w, const REAL *b, const REAL *c, const int64_t *tok,
                           const int64_t *qkv, int64_t t, int64_t next, int64_t T, int64_t nv, int64_t H,
                           int64_t S, int64_t F, int64_t ts, int64_t unit, REAL eps) {
    FN(load)(x->q, q, qkv, t * ts, nv, 2 * F);
    FN(load)(x->k, k, qkv, t * ts, nv, 2 * F);
    FN(load)(x->v, v, qkv, t * ts, nv, 2 * F);
    if (next >= 0 && next < T) {
        FN(prefetch)(q, qkv, next * ts, nv, 2 * F);
        FN(prefetch)(k, qkv, next * ts, nv, 2 * F);
        FN(prefetch)(v, qkv, next * ts, nv, 2 * F);
    }
    if (unit) {
        FN(unit)(x->q, x->qn, F, eps);
        FN(unit)(x->k, x->kn, F, eps);
    }
    for (int64_t l = 0; l < nv; l++) {
        int64_t nt = tok[l] + t * H;
        x->fd[0][l] = EXP(lf[nt]);
        for (int64_t s = 0; s < S; s++) {
            x->w[s][l] = w[nt * S + s];
            x->b[s][l] = b[nt * S + s];
            if (c) x->c[s][l] = c[nt * S + s];
        }
    }
}

/* Forward of one token: M <- fd M + w_s (pi_s(K) . V) for every slot, then R = sum_s b_s conj(pi_s(Q)) . M
   and (hc) U = sum_s c_s conj(pi_s(K)) . M; one pass over (s, f). */
static inline __attribute__((always_inline)) void FN(step_fwd)(V *restrict M, const FN(token) *x,
                                                               const int32_t *restrict perm, int64_t S, int64_t F,
                                                               V *restrict R, V *restrict U, const int hc) {
    const V fd = x->fd[0];
    for (int64_t i = 0; i < 2 * F; i++) { R[i] = (V){0}; if (hc) U[i] = (V){0}; }
    for (int64_t s = 0; s < S; s++) {
        const V ws = x->w[s], bs = x->b[s], cs = hc ? x->c[s] : (V){0};
        V *restrict m = M + 2 * s * F;
        const int32_t *restrict p = perm + s * F;
        for (int64_t f = 0; f < F; f++) {
            int64_t g = p[f];
            V kr = x->k[2 * g], ki = x->k[2 * g + 1], vr = x->v[2 * f], vi = x->v[2 * f + 1];
            V mr = fd * m[2 * f] + ws * (kr * vr - ki * vi);
            V mi = fd * m[2 * f + 1] + ws * (kr * vi + ki * vr);
            m[2 * f] = mr;
            m[2 * f + 1] = mi;
            V qr = x->q[2 * g], qi = x->q[2 * g + 1];
            R[2 * f] += bs * (qr * mr + qi * mi);
            R[2 * f + 1] += bs * (qr * mi - qi * mr);
            if (hc) {
                U[2 * f] += cs * (kr * mr + ki * mi);
                U[2 * f + 1] += cs * (kr * mi - ki * mr);
            }
        }
    }
}

/* Vectors one token's inputs take: q, k, v (2 F each), the norms of q and k (F each), fd, w, b, c (S each). */
static int64_t FN(token_size)(int64_t S, int64_t F) { return 8 * F + 1 + 3 * S; }

/* The j-th token's inputs in a buffer of token_size vectors per token (the forward keeps one; the backward
   keeps a chunk's, recomputed with its states). */
static FN(token) FN(token_at)(V *base, int64_t j, int64_t S, int64_t F) {
    V *p = base + j * FN(token_size)(S, F);
    FN(token) x = {p, p + 2 * F, p + 4 * F, p + 6 * F, p + 7 * F, p + 8 * F, p + 8 * F + 1, p + 8 * F + 1 + S,
                   p + 8 * F + 1 + 2 * S};
    return x;
}

/* Forward over blocks [k0, k1) of LANES rows (row = one batch element and head; N rows in all).
   Batch-major layouts, complex interleaved: q, k, v (B, T, H, F) with token stride ts, r, u
   (B, T, H, F); lf (B, T, H); w, b, c (B, T, H, S); perm (S, F); state0, state1 (B, H, S, F);
   ckpt (blocks, ceil(T/C), S, F, 2, LANES): the block's state before each chunk of C steps, for the
   backward. c, u, state0, ckpt may be NULL. unit, eps: see the top of the file. Returns 0, or 1 when
   out of memory (nothing written). */
int64_t FN(hamt_scan_fwd)(int64_t k0, int64_t k1, int64_t N, int64_t T, int64_t S, int64_t F, int64_t C,
                          int64_t H, int64_t ts, int64_t unit,
                          const REAL *q, const REAL *k, const REAL *v, const REAL *lf, const REAL *w,
                          const REAL *b, const REAL *c, const int32_t *perm, const REAL *state0,
                          REAL *r, REAL *u, REAL *state1, REAL *ckpt, double eps_) {
    REAL eps = (REAL)eps_;
    int64_t SF = S * F, nck = (T + C - 1) / C, total = 2 * SF + 4 * F + FN(token_size)(S, F);
    V *buf = FN(valloc)(total);
    if (!buf) return 1;
    V *M = buf, *R = M + 2 * SF, *U = R + 2 * F;
    FN(token) x = FN(token_at)(U + 2 * F, 0, S, F);
    int64_t tok[LANES], qkv[LANES], st[LANES];
    for (int64_t blk = k0; blk < k1; blk++) {
        int64_t n0 = blk * LANES, nv = N - n0 < LANES ? N - n0 : LANES;
        memset(buf, 0, sizeof(V) * total);
        FN(row_offsets)(n0, nv, T, H, S, F, ts, tok, qkv, st);
        if (state0) FN(load)(M, state0, st, 0, nv, 2 * SF);
        for (int64_t t = 0; t < T; t++) {
            if (ckpt && t % C == 0) memcpy(ckpt + (blk * nck + t / C) * 2 * SF * LANES, M, sizeof(V) * 2 * SF);
            FN(load_token)(&x, q, k, v, lf, w, b, c, tok, qkv, t, t + 1, T, nv, H, S, F, ts, unit, eps);
            int64_t ro[LANES];
            for (int64_t l = 0; l < nv; l++) ro[l] = 2 * (tok[l] + t * H) * F;
            if (c) {
                FN(step_fwd)(M, &x, perm, S, F, R, U, 1);
                FN(store)(u, U, ro, 0, nv, 2 * F);
            } else {
                FN(step_fwd)(M, &x, perm, S, F, R, U, 0);
            }
            FN(store)(r, R, ro, 0, nv, 2 * F);
        }
        FN(store)(state1, M, st, 0, nv, 2 * SF);
    }
    free(buf);
    return 0;
}

/* The adjoint of one time step for every slot in one pass over (s, f): the read with the query (weights
   b, output gradient E = dR_t), the key read-back (c, Hu = dU_t; hc = 0 drops it), then the write
   M_t = fd M_{t-1} + w_s (pi_s(K) . V). Mc = M_t, Mp = M_{t-1}; dM holds dM_t on entry and
   dM_{t-1} = fd dM_t on exit. Accumulates dQ, dK at the unpermuted index (pi_s's adjoint: a vector add
   at perm[s][f], no scatter across lanes), dV; writes gb, gc, gw (S each) and returns
   sum Re(conj(M_{t-1}) dM_t), which times fd is d(log f). */
static inline __attribute__((always_inline)) V FN(step_bwd)(
    const V *restrict Mc, const V *restrict Mp, const FN(token) *x, const V *restrict E, const V *restrict Hu,
    const int32_t *restrict perm, int64_t S, int64_t F, V *restrict dM, V *restrict dQ, V *restrict dK,
    V *restrict dV, V *restrict gb, V *restrict gc, V *restrict gw, const int hc) {
    const V fd = x->fd[0];
    V accf = {0};
    for (int64_t i = 0; i < 2 * F; i++) { dQ[i] = (V){0}; dK[i] = (V){0}; dV[i] = (V){0}; }
    for (int64_t s = 0; s < S; s++) {
        const V bs = x->b[s], ws = x->w[s], cs = hc ? x->c[s] : (V){0};
        V accb = {0}, accc = {0}, accw = {0};
        const V *restrict mc = Mc + 2 * s * F, *restrict mp = Mp + 2 * s * F;
        V *restrict dm = dM + 2 * s * F;
        const int32_t *restrict p = perm + s * F;
        for (int64_t f = 0; f < F; f++) {
            int64_t g = p[f];
            V mr = mc[2 * f], mi = mc[2 * f + 1], er = E[2 * f], ei = E[2 * f + 1];
            V qr = x->q[2 * g], qi = x->q[2 * g + 1], kr = x->k[2 * g], ki = x->k[2 * g + 1];
            V vr = x->v[2 * f], vi = x->v[2 * f + 1];
            /* read: R = sum_s b_s conj(pi_s(Q)) M */
            V pr = qr * er - qi * ei, pi = qr * ei + qi * er;
            V dmr = dm[2 * f] + bs * pr, dmi = dm[2 * f + 1] + bs * pi;
            accb += mr * pr + mi * pi;
            dQ[2 * g] += bs * (mr * er + mi * ei);
            dQ[2 * g + 1] += bs * (mi * er - mr * ei);
            V gkr = {0}, gki = {0};
            if (hc) { /* key read-back: U = sum_s c_s conj(pi_s(K)) M */
                V hr = Hu[2 * f], hi = Hu[2 * f + 1];
                V xr = kr * hr - ki * hi, xi = kr * hi + ki * hr;
                dmr += cs * xr;
                dmi += cs * xi;
                accc += mr * xr + mi * xi;
                gkr = cs * (mr * hr + mi * hi);
                gki = cs * (mi * hr - mr * hi);
            }
            /* write: M_t = fd M_{t-1} + w_s (pi_s(K) . V) */
            accf += dmr * mp[2 * f] + dmi * mp[2 * f + 1];
            accw += dmr * (kr * vr - ki * vi) + dmi * (kr * vi + ki * vr);
            V wr = ws * dmr, wi = ws * dmi;
            dV[2 * f] += wr * kr + wi * ki;
            dV[2 * f + 1] += wi * kr - wr * ki;
            dK[2 * g] += gkr + wr * vr + wi * vi;
            dK[2 * g + 1] += gki + wi * vr - wr * vi;
            dm[2 * f] = fd * dmr;
            dm[2 * f + 1] = fd * dmi;
        }
        gb[s] = accb;
        if (hc) gc[s] = accc;
        gw[s] = accw;
    }
    return accf;
}

/* Backward over blocks [k0, k1): recompute each chunk's states (and its tokens' inputs) from its
   checkpoint, then walk the chunk backwards. Outputs (layouts as their inputs) are overwritten: gq, gk,
   gv, glf, gw, gb, gc, gstate0. gu, gc NULL without the key read-back; gstate1 NULL means zero. q, k,
   v are read with token stride ts_in, gq, gk, gv written with ts_out; unit, eps as in the forward.
   Returns 0, or 1 when out of memory (nothing written). */
int64_t FN(hamt_scan_bwd)(int64_t k0, int64_t k1, int64_t N, int64_t T, int64_t S, int64_t F, int64_t C,
                          int64_t H, int64_t ts_in, int64_t ts_out, int64_t unit,
                          const REAL *q, const REAL *k, const REAL *v, const REAL *lf, const REAL *w,
                          const REAL *b, const REAL *c, const int32_t *perm, const REAL *ckpt,
                          const REAL *gr, const REAL *gu, const REAL *gstate1,
                          REAL *gq, REAL *gk, REAL *gv, REAL *glf, REAL *gw, REAL *gb, REAL *gc, REAL *gstate0,
                          double eps_) {
    REAL eps = (REAL)eps_;
    int64_t SF = S * F, nck = (T + C - 1) / C;
    int64_t total = 2 * (C + 1) * SF + C * FN(token_size)(S, F) + 2 * SF + 10 * F + 3 * S;
    V *buf = FN(valloc)(total);
    if (!buf) return 1;
    V *Ms = buf;                        /* the chunk's C + 1 states */
    V *toks = Ms + 2 * (C + 1) * SF;    /* its C tokens' inputs (token_at) */
    V *dM = toks + C * FN(token_size)(S, F), *dQ = dM + 2 * SF, *dK = dQ + 2 * F, *dV = dK + 2 * F;
    V *E = dV + 2 * F, *Hu = E + 2 * F, *gbv = Hu + 2 * F, *gcv = gbv + S, *gwv = gcv + S;
    int64_t tok[LANES], qin[LANES], qout[LANES], st[LANES];
    for (int64_t blk = k0; blk < k1; blk++) {
        int64_t n0 = blk * LANES, nv = N - n0 < LANES ? N - n0 : LANES;
        memset(buf, 0, sizeof(V) * total);
        FN(row_offsets)(n0, nv, T, H, S, F, ts_in, tok, qin, st);
        FN(row_offsets)(n0, nv, T, H, S, F, ts_out, tok, qout, NULL);
        if (gstate1) FN(load)(dM, gstate1, st, 0, nv, 2 * SF);
        for (int64_t ci = nck - 1; ci >= 0; ci--) {
            int64_t ta = ci * C, tb = ta + C < T ? ta + C : T;
            memcpy(Ms, ckpt + (blk * nck + ci) * 2 * SF * LANES, sizeof(V) * 2 * SF);
            for (int64_t t = ta; t < tb; t++) { /* recompute M_t (the reads are not needed) */
                FN(token) x = FN(token_at)(toks, t - ta, S, F);
                FN(load_token)(&x, q, k, v, lf, w, b, c, tok, qin, t, t + 1 < tb ? t + 1 : ta - C, T, nv, H, S, F, ts_in,
                               unit, eps);
                V *m = Ms + 2 * (t - ta + 1) * SF;
                const V fd = x.fd[0];
                for (int64_t s = 0; s < S; s++) {
                    const V ws = x.w[s];
                    V *restrict ms = m + 2 * s * F;
                    const V *restrict mp = ms - 2 * SF;
                    const int32_t *restrict p = perm + s * F;
                    for (int64_t f = 0; f < F; f++) {
                        int64_t g = p[f];
                        V kr = x.k[2 * g], ki = x.k[2 * g + 1], vr = x.v[2 * f], vi = x.v[2 * f + 1];
                        ms[2 * f] = fd * mp[2 * f] + ws * (kr * vr - ki * vi);
                        ms[2 * f + 1] = fd * mp[2 * f + 1] + ws * (kr * vi + ki * vr);
                    }
                }
            }
            for (int64_t t = tb - 1; t >= ta; t--) {
                int64_t j = t - ta, ro[LANES];
                FN(token) x = FN(token_at)(toks, j, S, F);
                for (int64_t l = 0; l < nv; l++) ro[l] = 2 * (tok[l] + t * H) * F;
                FN(load)(E, gr, ro, 0, nv, 2 * F);
                if (t > 0) FN(prefetch)(gr, ro, -2 * H * F, nv, 2 * F);
                const V *Mc = Ms + 2 * (j + 1) * SF, *Mp = Ms + 2 * j * SF;
                V accf;
                if (c) {
                    FN(load)(Hu, gu, ro, 0, nv, 2 * F);
                    accf = FN(step_bwd)(Mc, Mp, &x, E, Hu, perm, S, F, dM, dQ, dK, dV, gbv, gcv, gwv, 1);
                } else {
                    accf = FN(step_bwd)(Mc, Mp, &x, E, Hu, perm, S, F, dM, dQ, dK, dV, gbv, gcv, gwv, 0);
                }
                if (unit) {
                    FN(unit_adjoint)(dQ, x.q, x.qn, F);
                    FN(unit_adjoint)(dK, x.k, x.kn, F);
                }
                FN(store)(gq, dQ, qout, t * ts_out, nv, 2 * F);
                FN(store)(gk, dK, qout, t * ts_out, nv, 2 * F);
                FN(store)(gv, dV, qout, t * ts_out, nv, 2 * F);
                V gl = x.fd[0] * accf;
                for (int64_t l = 0; l < nv; l++) {
                    int64_t nt = tok[l] + t * H;
                    glf[nt] = gl[l];
                    for (int64_t s = 0; s < S; s++) {
                        gb[nt * S + s] = gbv[s][l];
                        gw[nt * S + s] = gwv[s][l];
                        if (c) gc[nt * S + s] = gcv[s][l];
                    }
                }
            }
        }
        FN(store)(gstate0, dM, st, 0, nv, 2 * SF);
    }
    free(buf);
    return 0;
}
#undef V
#undef TILE
