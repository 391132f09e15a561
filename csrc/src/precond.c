/* Preconditioned directions of one layer: FOOF, K-FAC (pi-factored damping), eigenbasis with exact
 * damping (K-FAC exact, EKFAC), and the apply step with cached inverses. */
#include "kf_internal.h"
#include "kf_mat.h"

#include <math.h>
#include <string.h>

void kf__kronecker_apply_ws(size_t out, size_t dim_a, const float *v, size_t ldv,
                            const float *g_inv, size_t ld_ginv, const float *a_inv,
                            size_t ld_ainv, float *d, size_t ldd, float *scratch)
{
    if (!g_inv) {
        kf__gemm(0, 0, out, dim_a, dim_a, 1.0f, v, ldv, a_inv, ld_ainv, 0.0f, d, ldd);
        return;
    }
    kf__gemm(0, 0, out, dim_a, dim_a, 1.0f, v, ldv, a_inv, ld_ainv, 0.0f, scratch, dim_a);
    kf__gemm(0, 0, out, dim_a, out, 1.0f, g_inv, ld_ginv, scratch, dim_a, 0.0f, d, ldd);
}

/* Triangular solves with the factor of kf__damped_cholesky_ws, all in GEMMs: U has unit diagonal
 * blocks, so a solve is recursive halving on block boundaries with one large GEMM per level and
 * nothing at the bottom; the block-diagonal P sits between the two solves. OpenBLAS's strsm runs
 * at about half sgemm's rate here, and a block-column loop about 60% (its many thin GEMMs repack
 * the solved panel every time). Blocks [b0, b1) of KF_CHOL_NB; d is the full dimension. */
static size_t blk_end(size_t blk, size_t d)
{
    size_t e = blk * KF_CHOL_NB;
    return e < d ? e : d;
}

/* D U = Y, right to left. */
static void solve_rn(size_t m, size_t d, const float *lb, size_t ldl, float *x, size_t ldx,
                     size_t b0, size_t b1)
{
    size_t j0 = blk_end(b0, d), j1 = blk_end(b1, d), bm, mid;
    if (b1 - b0 == 1) {
        return;
    }
    bm = b0 + (b1 - b0 + 1) / 2;
    mid = blk_end(bm, d);
    solve_rn(m, d, lb, ldl, x, ldx, bm, b1);
    kf__gemm(0, 0, m, mid - j0, j1 - mid, -1.0f, x + mid, ldx, lb + mid * ldl + j0, ldl, 1.0f,
             x + j0, ldx);
    solve_rn(m, d, lb, ldl, x, ldx, b0, bm);
}

/* X (d x m), rows of blocks [b0, b1): U Y = X, top to bottom. */
static void solve_ln(size_t d, size_t m, const float *lb, size_t ldl, float *x, size_t ldx,
                     size_t b0, size_t b1)
{
    size_t i0 = blk_end(b0, d), i1 = blk_end(b1, d), bm, mid;
    if (b1 - b0 == 1) {
        return;
    }
    bm = b0 + (b1 - b0 + 1) / 2;
    mid = blk_end(bm, d);
    solve_ln(d, m, lb, ldl, x, ldx, b0, bm);
    kf__gemm(0, 0, i1 - mid, m, mid - i0, -1.0f, lb + mid * ldl + i0, ldl, x + i0 * ldx, ldx,
             1.0f, x + mid * ldx, ldx);
    solve_ln(d, m, lb, ldl, x, ldx, bm, b1);
}

/* U^T D = Y, bottom to top. */
static void solve_lt(size_t d, size_t m, const float *lb, size_t ldl, float *x, size_t ldx,
                     size_t b0, size_t b1)
{
    size_t i0 = blk_end(b0, d), i1 = blk_end(b1, d), bm, mid;
    if (b1 - b0 == 1) {
        return;
    }
    bm = b0 + (b1 - b0 + 1) / 2;
    mid = blk_end(bm, d);
    solve_lt(d, m, lb, ldl, x, ldx, bm, b1);
    kf__gemm(1, 0, mid - i0, m, i1 - mid, -1.0f, lb + mid * ldl + i0, ldl, x + mid * ldx, ldx,
             1.0f, x + i0 * ldx, ldx);
    solve_lt(d, m, lb, ldl, x, ldx, b0, bm);
}

/* X (L L^T)^{-1} = ((X U^{-T}) P) U^{-1}. */
void kf__chol_solve_right(size_t m, size_t d, const float *lb, size_t ldl, float *x, size_t ldx,
                          float *tmp)
{
    size_t nb = (d + KF_CHOL_NB - 1) / KF_CHOL_NB;
    kf__unit_solve_rt(m, d, lb, ldl, x, ldx, 0, nb);
    for (size_t j0 = 0; j0 < d; j0 += KF_CHOL_NB) {
        size_t b = d - j0 < KF_CHOL_NB ? d - j0 : KF_CHOL_NB;
        for (size_t i = 0; i < m; i++) {
            memcpy(tmp + i * b, x + i * ldx + j0, b * sizeof(float));
        }
        kf__gemm(0, 0, m, b, b, 1.0f, tmp, b, lb + j0 * ldl + j0, ldl, 0.0f, x + j0, ldx);
    }
    solve_rn(m, d, lb, ldl, x, ldx, 0, nb);
}

/* (L L^T)^{-1} X = U^{-T} (P (U^{-1} X)). */
void kf__chol_solve_left(size_t d, size_t m, const float *lb, size_t ldl, float *x, size_t ldx,
                         float *tmp)
{
    size_t nb = (d + KF_CHOL_NB - 1) / KF_CHOL_NB;
    solve_ln(d, m, lb, ldl, x, ldx, 0, nb);
    for (size_t i0 = 0; i0 < d; i0 += KF_CHOL_NB) {
        size_t b = d - i0 < KF_CHOL_NB ? d - i0 : KF_CHOL_NB;
        for (size_t r = 0; r < b; r++) {
            memcpy(tmp + r * m, x + (i0 + r) * ldx, m * sizeof(float));
        }
        kf__gemm(0, 0, b, m, b, 1.0f, lb + i0 * ldl + i0, ldl, tmp, m, 0.0f, x + i0 * ldx, ldx);
    }
    solve_lt(d, m, lb, ldl, x, ldx, 0, nb);
}

size_t kf__eigenbasis_scratch(size_t out, size_t dim_a)
{
    return 2 * KF_ALIGN_UP(out * dim_a * sizeof(float));
}

kf_status kf__eigenbasis_apply_ws(kf_errbuf *e, size_t out, size_t dim_a, const float *v,
                                  size_t ldv, const float *q_g, size_t ldqg, const float *eig_g,
                                  const float *q_a, size_t ldqa, const float *eig_a,
                                  const float *s, size_t lds, float damping, float *d, size_t ldd,
                                  void *scratch)
{
    unsigned char *cur = (unsigned char *)scratch;
    float *t1 = (float *)kf__carve(&cur, out * dim_a * sizeof(float));
    float *t2 = (float *)kf__carve(&cur, out * dim_a * sizeof(float));
    /* Rotate into the eigenbasis: T2 = Q_G^T V Q_A. */
    kf__gemm(1, 0, out, dim_a, out, 1.0f, q_g, ldqg, v, ldv, 0.0f, t1, dim_a);
    kf__gemm(0, 0, out, dim_a, dim_a, 1.0f, t1, dim_a, q_a, ldqa, 0.0f, t2, dim_a);
    for (size_t i = 0; i < out; i++) {
        /* kfac-jax safe_psd_eigh: round-off can make PSD eigenvalues slightly negative. */
        const double bi = eig_g ? (eig_g[i] > 0.0f ? (double)eig_g[i] : 0.0) : 0.0;
        for (size_t j = 0; j < dim_a; j++) {
            double sij;
            if (s) {
                sij = s[i * lds + j] > 0.0f ? (double)s[i * lds + j] : 0.0;
            } else {
                sij = bi * (eig_a[j] > 0.0f ? (double)eig_a[j] : 0.0);
            }
            sij += (double)damping;
            if (!(sij > 0.0) || !isfinite(sij)) {
                return kf__fail(e, KF_ERR_INVALID_ARGUMENT,
                                "curvature + damping is %g at (%zu, %zu); it must be > 0", sij, i,
                                j);
            }
            t2[i * dim_a + j] = (float)((double)t2[i * dim_a + j] / sij);
        }
    }
    if (!kf__all_finite(out, dim_a, t2, dim_a)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "the preconditioned direction is not finite");
    }
    /* Rotate back: D = Q_G T2 Q_A^T, into scratch first: the rotation of finite values can
     * still overflow, and d must stay untouched then. */
    kf__gemm(0, 0, out, dim_a, out, 1.0f, q_g, ldqg, t2, dim_a, 0.0f, t1, dim_a);
    kf__gemm(0, 1, out, dim_a, dim_a, 1.0f, t1, dim_a, q_a, ldqa, 0.0f, t2, dim_a);
    if (!kf__all_finite(out, dim_a, t2, dim_a)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "the preconditioned direction is not finite");
    }
    for (size_t i = 0; i < out; i++) {
        memcpy(d + i * ldd, t2 + i * dim_a, dim_a * sizeof(float));
    }
    return KF_OK;
}

/* Validates V and D (out x dim_a), their overlap and finiteness of V. */
static kf_status check_vd(kf_errbuf *e, const char *fn, size_t out, size_t dim_a, const float *v,
                          size_t ldv, const float *d, size_t ldd)
{
    kf_status s;
    if ((s = kf__check_mat(e, v, out, dim_a, ldv, "v")) != KF_OK ||
        (s = kf__check_mat(e, d, out, dim_a, ldd, "d")) != KF_OK) {
        return kf__prefix(e, s, fn);
    }
    if (kf__overlap(v, out, ldv, dim_a, d, out, ldd, dim_a)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "%s: d overlaps v", fn);
    }
    if (!kf__all_finite(out, dim_a, v, ldv)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "%s: v contains NaN or Inf", fn);
    }
    return KF_OK;
}

/* Copies a direction computed into scratch to d when it is finite; otherwise d stays untouched. */
static kf_status finish_direction(kf_errbuf *e, const char *fn, size_t out, size_t dim_a,
                                  const float *scratch, float *d, size_t ldd)
{
    if (!kf__all_finite(out, dim_a, scratch, dim_a)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "%s: the direction overflows (increase the "
                        "damping?)", fn);
    }
    for (size_t i = 0; i < out; i++) {
        memcpy(d + i * ldd, scratch + i * dim_a, dim_a * sizeof(float));
    }
    return KF_OK;
}

/* d must not overlap any of the square inputs. */
static int overlaps_square(const float *d, size_t out, size_t ldd, size_t dim_a, const float *m,
                           size_t dim, size_t ldm)
{
    return m && kf__overlap(d, out, ldd, dim_a, m, dim, ldm, dim);
}

kf_status kf_kronecker_apply(kf_context *ctx, size_t out, size_t dim_a,
                             const float *v, size_t ldv,
                             const float *g_inv, size_t ld_ginv,
                             const float *a_inv, size_t ld_ainv,
                             float *d, size_t ldd)
{
    static const char fn[] = "kf_kronecker_apply";
    float *ws = NULL;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = check_vd(&ctx->err, fn, out, dim_a, v, ldv, d, ldd)) != KF_OK) {
        return s;
    }
    if ((s = kf__check_mat(&ctx->err, a_inv, dim_a, dim_a, ld_ainv, "a_inv")) != KF_OK ||
        (g_inv && (s = kf__check_mat(&ctx->err, g_inv, out, out, ld_ginv, "g_inv")) != KF_OK)) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if (overlaps_square(d, out, ldd, dim_a, a_inv, dim_a, ld_ainv) ||
        overlaps_square(d, out, ldd, dim_a, g_inv, out, ld_ginv)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: d overlaps an inverse", fn);
    }
    if (!kf__all_finite(dim_a, dim_a, a_inv, ld_ainv) ||
        (g_inv && !kf__all_finite(out, out, g_inv, ld_ginv))) {
        return kf__fail(&ctx->err, KF_ERR_NON_FINITE, "%s: an inverse contains NaN or Inf", fn);
    }
    /* Computed aside and copied only when finite: finite inputs can still overflow. */
    if (!(ws = (float *)kf__ctx_work(ctx, 2 * KF_ALIGN_UP(out * dim_a * sizeof(float))))) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    kf__kronecker_apply_ws(out, dim_a, v, ldv, g_inv, ld_ginv, a_inv, ld_ainv, ws, dim_a,
                           ws + KF_ALIGN_UP(out * dim_a * sizeof(float)) / sizeof(float));
    if ((s = finish_direction(&ctx->err, fn, out, dim_a, ws, d, ldd)) != KF_OK) {
        return s;
    }
    kf__clear(&ctx->err);
    return KF_OK;
}

kf_status kf_foof_direction(kf_context *ctx, size_t out, size_t dim_a,
                            const float *v, size_t ldv,
                            const float *a, size_t lda, float damping,
                            float *d, size_t ldd)
{
    static const char fn[] = "kf_foof_direction";
    unsigned char *cur;
    float *a_inv, *dd;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = check_vd(&ctx->err, fn, out, dim_a, v, ldv, d, ldd)) != KF_OK) {
        return s;
    }
    if ((s = kf__check_mat(&ctx->err, a, dim_a, dim_a, lda, "a")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if (!(damping >= 0.0f) || !isfinite(damping)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: damping (%g) must be finite and >= 0", fn, (double)damping);
    }
    if (overlaps_square(d, out, ldd, dim_a, a, dim_a, lda)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: d overlaps a", fn);
    }
    if (dim_a > 46000) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "%s: dim_a (%zu) is too large", fn, dim_a);
    }
    cur = (unsigned char *)kf__ctx_work(
        ctx, KF_ALIGN_UP(dim_a * dim_a * sizeof(float)) + KF_ALIGN_UP(out * dim_a * sizeof(float)) +
                 kf__inverse_scratch(dim_a));
    if (!cur) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    a_inv = (float *)kf__carve(&cur, dim_a * dim_a * sizeof(float));
    dd = (float *)kf__carve(&cur, out * dim_a * sizeof(float));
    if ((s = kf__damped_inverse_ws(&ctx->err, dim_a, a, lda, damping, KF_PRECISION_DOUBLE, a_inv,
                                   dim_a, NULL, cur)) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    kf__kronecker_apply_ws(out, dim_a, v, ldv, NULL, 0, a_inv, dim_a, dd, dim_a, NULL);
    if ((s = finish_direction(&ctx->err, fn, out, dim_a, dd, d, ldd)) != KF_OK) {
        return s;
    }
    kf__clear(&ctx->err);
    return KF_OK;
}

/* Shared checks of the K-FAC directions: V, D, A, G and a positive damping. */
static kf_status check_kfac(kf_context *ctx, const char *fn, size_t out, size_t dim_a,
                            const float *v, size_t ldv, const float *a, size_t lda,
                            const float *g, size_t ldg, float damping, const float *d, size_t ldd)
{
    kf_status s;
    if ((s = check_vd(&ctx->err, fn, out, dim_a, v, ldv, d, ldd)) != KF_OK) {
        return s;
    }
    if ((s = kf__check_mat(&ctx->err, a, dim_a, dim_a, lda, "a")) != KF_OK ||
        (s = kf__check_mat(&ctx->err, g, out, out, ldg, "g")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if (!(damping > 0.0f) || !isfinite(damping)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: damping (%g) must be finite and > 0", fn, (double)damping);
    }
    if (overlaps_square(d, out, ldd, dim_a, a, dim_a, lda) ||
        overlaps_square(d, out, ldd, dim_a, g, out, ldg)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: d overlaps a or g", fn);
    }
    if (dim_a > 32000 || out > 32000) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "%s: factors larger than 32000 are not supported",
                        fn);
    }
    return KF_OK;
}

kf_status kf_kfac_direction(kf_context *ctx, size_t out, size_t dim_a,
                            const float *v, size_t ldv,
                            const float *a, size_t lda,
                            const float *g, size_t ldg, float damping,
                            float *d, size_t ldd, float *pi_used)
{
    static const char fn[] = "kf_kfac_direction";
    unsigned char *cur;
    float *a_inv, *g_inv, *t, *dd, pi;
    double gamma;
    size_t big = dim_a > out ? dim_a : out;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = check_kfac(ctx, fn, out, dim_a, v, ldv, a, lda, g, ldg, damping, d, ldd)) != KF_OK) {
        return s;
    }
    cur = (unsigned char *)kf__ctx_work(ctx, KF_ALIGN_UP(dim_a * dim_a * sizeof(float)) +
                                                 KF_ALIGN_UP(out * out * sizeof(float)) +
                                                 2 * KF_ALIGN_UP(out * dim_a * sizeof(float)) +
                                                 kf__inverse_scratch(big));
    if (!cur) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    a_inv = (float *)kf__carve(&cur, dim_a * dim_a * sizeof(float));
    g_inv = (float *)kf__carve(&cur, out * out * sizeof(float));
    t = (float *)kf__carve(&cur, out * dim_a * sizeof(float));
    dd = (float *)kf__carve(&cur, out * dim_a * sizeof(float));
    if (!kf__all_finite(dim_a, dim_a, a, lda) || !kf__all_finite(out, out, g, ldg)) {
        return kf__fail(&ctx->err, KF_ERR_NON_FINITE, "%s: a or g contains NaN or Inf", fn);
    }
    pi = kf__pi(dim_a, a, lda, out, g, ldg);
    gamma = sqrt((double)damping);
    if ((s = kf__damped_inverse_ws(&ctx->err, dim_a, a, lda, (float)(pi * gamma),
                                   KF_PRECISION_DOUBLE, a_inv, dim_a, NULL, cur)) != KF_OK ||
        (s = kf__damped_inverse_ws(&ctx->err, out, g, ldg, (float)(gamma / pi),
                                   KF_PRECISION_DOUBLE, g_inv, out, NULL, cur)) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    kf__kronecker_apply_ws(out, dim_a, v, ldv, g_inv, out, a_inv, dim_a, dd, dim_a, t);
    if ((s = finish_direction(&ctx->err, fn, out, dim_a, dd, d, ldd)) != KF_OK) {
        return s;
    }
    if (pi_used) {
        *pi_used = pi;
    }
    kf__clear(&ctx->err);
    return KF_OK;
}

kf_status kf_eigenbasis_apply(kf_context *ctx, size_t out, size_t dim_a,
                              const float *v, size_t ldv,
                              const float *q_g, size_t ldqg, const float *eig_g,
                              const float *q_a, size_t ldqa, const float *eig_a,
                              const float *s, size_t lds, float damping,
                              float *d, size_t ldd)
{
    static const char fn[] = "kf_eigenbasis_apply";
    void *ws;
    kf_status st;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((st = check_vd(&ctx->err, fn, out, dim_a, v, ldv, d, ldd)) != KF_OK) {
        return st;
    }
    if ((st = kf__check_mat(&ctx->err, q_g, out, out, ldqg, "q_g")) != KF_OK ||
        (st = kf__check_mat(&ctx->err, q_a, dim_a, dim_a, ldqa, "q_a")) != KF_OK ||
        (!s && (st = kf__check_mat(&ctx->err, eig_g, 1, out, out, "eig_g")) != KF_OK) ||
        (!s && (st = kf__check_mat(&ctx->err, eig_a, 1, dim_a, dim_a, "eig_a")) != KF_OK) ||
        (s && (st = kf__check_mat(&ctx->err, s, out, dim_a, lds, "s")) != KF_OK)) {
        return kf__prefix(&ctx->err, st, fn);
    }
    if (!(damping >= 0.0f) || !isfinite(damping)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: damping (%g) must be finite and >= 0", fn, (double)damping);
    }
    if (overlaps_square(d, out, ldd, dim_a, q_g, out, ldqg) ||
        overlaps_square(d, out, ldd, dim_a, q_a, dim_a, ldqa) ||
        (s && kf__overlap(d, out, ldd, dim_a, s, out, lds, dim_a)) ||
        (!s && (kf__overlap(d, out, ldd, dim_a, eig_g, 1, out, out) ||
                kf__overlap(d, out, ldd, dim_a, eig_a, 1, dim_a, dim_a)))) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: d overlaps an input", fn);
    }
    if (!kf__all_finite(out, out, q_g, ldqg) || !kf__all_finite(dim_a, dim_a, q_a, ldqa) ||
        (s && !kf__all_finite(out, dim_a, s, lds)) ||
        (!s && (!kf__all_finite(1, out, eig_g, out) || !kf__all_finite(1, dim_a, eig_a, dim_a)))) {
        return kf__fail(&ctx->err, KF_ERR_NON_FINITE, "%s: an input contains NaN or Inf", fn);
    }
    if (!(ws = kf__ctx_work(ctx, kf__eigenbasis_scratch(out, dim_a)))) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    if ((st = kf__eigenbasis_apply_ws(&ctx->err, out, dim_a, v, ldv, q_g, ldqg, s ? NULL : eig_g,
                                      q_a, ldqa, s ? NULL : eig_a, s, lds, damping, d, ldd,
                                      ws)) != KF_OK) {
        return kf__prefix(&ctx->err, st, fn);
    }
    kf__clear(&ctx->err);
    return KF_OK;
}

kf_status kf_kfac_exact_direction(kf_context *ctx, size_t out, size_t dim_a,
                                  const float *v, size_t ldv,
                                  const float *a, size_t lda,
                                  const float *g, size_t ldg, float damping,
                                  float *d, size_t ldd)
{
    static const char fn[] = "kf_kfac_exact_direction";
    unsigned char *cur;
    float *q_a, *q_g, *w_a, *w_g;
    size_t big = dim_a > out ? dim_a : out, eig_ws, app_ws;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = check_kfac(ctx, fn, out, dim_a, v, ldv, a, lda, g, ldg, damping, d, ldd)) != KF_OK) {
        return s;
    }
    eig_ws = kf__eig_scratch(big);
    app_ws = kf__eigenbasis_scratch(out, dim_a);
    cur = (unsigned char *)kf__ctx_work(
        ctx, KF_ALIGN_UP(dim_a * dim_a * sizeof(float)) + KF_ALIGN_UP(out * out * sizeof(float)) +
                 KF_ALIGN_UP(dim_a * sizeof(float)) + KF_ALIGN_UP(out * sizeof(float)) +
                 (eig_ws > app_ws ? eig_ws : app_ws));
    if (!cur) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    q_a = (float *)kf__carve(&cur, dim_a * dim_a * sizeof(float));
    q_g = (float *)kf__carve(&cur, out * out * sizeof(float));
    w_a = (float *)kf__carve(&cur, dim_a * sizeof(float));
    w_g = (float *)kf__carve(&cur, out * sizeof(float));
    if ((s = kf__sym_eig_ws(&ctx->err, dim_a, a, lda, w_a, q_a, dim_a, cur)) != KF_OK ||
        (s = kf__sym_eig_ws(&ctx->err, out, g, ldg, w_g, q_g, out, cur)) != KF_OK ||
        (s = kf__eigenbasis_apply_ws(&ctx->err, out, dim_a, v, ldv, q_g, out, w_g, q_a, dim_a, w_a,
                                     NULL, 0, damping, d, ldd, cur)) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    kf__clear(&ctx->err);
    return KF_OK;
}

size_t kf__context_reserve_bytes(size_t d, size_t rows)
{
    /* The largest of the primitives above for factors up to d and batches up to rows. */
    size_t sq = KF_ALIGN_UP(d * d * sizeof(float));
    size_t eig = kf__eig_scratch(d), app = kf__eigenbasis_scratch(d, d);
    size_t exact = 2 * sq + 2 * KF_ALIGN_UP(d * sizeof(float)) + (eig > app ? eig : app);
    size_t kfac = 4 * sq + kf__inverse_scratch(d);
    size_t batch = KF_ALIGN_UP(rows * d * sizeof(float));
    size_t m = exact > kfac ? exact : kfac;
    return m > batch ? m : batch;
}

kf_status kf_context_reserve(kf_context *ctx, size_t max_dim, size_t max_rows)
{
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if (max_dim == 0 || max_dim > 32000 || max_rows > ((size_t)1 << 40) / (max_dim + 1)) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE,
                        "kf_context_reserve: max_dim must be in 1..32000 and max_rows * max_dim "
                        "below 2^40");
    }
    if (!kf__ctx_work(ctx, kf__context_reserve_bytes(max_dim, max_rows))) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, "kf_context_reserve");
    }
    kf__clear(&ctx->err);
    return KF_OK;
}
