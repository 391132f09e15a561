/* Trace-norm pi, damped inverses with a jitter retry chain, symmetric eigendecompositions. */
#include "kf_internal.h"
#include "kf_linalg.h"
#include "kf_mat.h"

#include <math.h>
#include <string.h>

/* Jitter added after a failed factorisation, relative to the mean diagonal: 1e-6 .. 1e-1. */
#define KF_JITTER_FIRST 1e-6
#define KF_JITTER_LAST 1e-1

float kf__pi(size_t dim_a, const float *a, size_t lda, size_t dim_g, const float *g, size_t ldg)
{
    double ta = 0.0, tg = 0.0, pi;
    for (size_t i = 0; i < dim_a; i++) {
        ta += a[i * lda + i];
    }
    for (size_t i = 0; i < dim_g; i++) {
        tg += g[i * ldg + i];
    }
    /* M&G 2015 section 6.3; tf-kfac and kfac-jax fall back to pi = 1 for degenerate traces. */
    if (!(ta > 0.0) || !(tg > 0.0) || !isfinite(ta) || !isfinite(tg)) {
        return 1.0f;
    }
    pi = sqrt((ta / (double)dim_a) / (tg / (double)dim_g));
    if (!isfinite(pi) || pi <= 0.0 || pi > 3.0e38 || (float)pi == 0.0f) {
        return 1.0f;
    }
    return (float)pi;
}

kf_status kf_pi(kf_context *ctx, size_t dim_a, const float *a, size_t lda,
                size_t dim_g, const float *g, size_t ldg, float *pi)
{
    static const char fn[] = "kf_pi";
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = kf__check_mat(&ctx->err, a, dim_a, dim_a, lda, "a")) != KF_OK ||
        (s = kf__check_mat(&ctx->err, g, dim_g, dim_g, ldg, "g")) != KF_OK ||
        (s = kf__check_ptr(&ctx->err, pi, "pi")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    *pi = kf__pi(dim_a, a, lda, dim_g, g, ldg);
    kf__clear(&ctx->err);
    return KF_OK;
}

size_t kf__inverse_scratch(size_t n)
{
    return KF_ALIGN_UP(n * n * sizeof(double));
}

size_t kf__cholesky_scratch(size_t n)
{
    /* The working matrix, then the blocked Cholesky's panel and diagonal block. */
    return KF_ALIGN_UP(n * n * sizeof(double)) +
           KF_ALIGN_UP((n * KF_CHOL_NB + KF_CHOL_NB * KF_CHOL_NB) * sizeof(double));
}

/* Mean of the diagonal of F, or 1 when it is not positive: the unit the jitter is measured in. */
static double diag_unit(size_t n, const float *f, size_t ldf)
{
    double t = 0.0;
    for (size_t i = 0; i < n; i++) {
        t += f[i * ldf + i];
    }
    t /= (double)n;
    return (t > 0.0 && isfinite(t)) ? t : 1.0;
}

/* Tile edge of the symmetrising copies: the transposed read of a 32 x 32 tile stays in L1, where a
 * plain loop would miss the cache on every element of the strided side for large n. */
#define KF_SYM_TILE 32

/* The lower triangle of w (row stride ldw) = (f + f^T) / 2 + shift I, in T: all the
 * factorisations read. */
#define KF_DEFINE_SYM_COPY(NAME, T)                                                               \
    static void NAME(size_t n, const float *f, size_t ldf, T shift, T *w, size_t ldw)             \
    {                                                                                             \
        for (size_t ib = 0; ib < n; ib += KF_SYM_TILE) {                                          \
            size_t ie = ib + KF_SYM_TILE < n ? ib + KF_SYM_TILE : n;                              \
            for (size_t jb = 0; jb <= ib; jb += KF_SYM_TILE) {                                    \
                size_t je = jb + KF_SYM_TILE < n ? jb + KF_SYM_TILE : n;                          \
                for (size_t i = ib; i < ie; i++) {                                                \
                    size_t jend = je < i + 1 ? je : i + 1;                                        \
                    for (size_t j = jb; j < jend; j++) {                                          \
                        w[i * ldw + j] = (T)0.5 * ((T)f[i * ldf + j] + (T)f[j * ldf + i]);        \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (size_t i = 0; i < n; i++) {                                                          \
            w[i * ldw + i] += shift;                                                              \
        }                                                                                         \
    }

KF_DEFINE_SYM_COPY(sym_copy_f, float)
KF_DEFINE_SYM_COPY(sym_copy_d, double)

/* 1 if every entry is finite and within the float range (a near-singular inverse can exceed
 * FLT_MAX in double). One pass: NaN fails the comparison too. */
static int fits_float_d(size_t rows, size_t n, const double *w)
{
    int ok = 1;
    for (size_t i = 0; i < rows * n; i++) {
        ok &= fabs(w[i]) <= 3.0e38;
    }
    return ok;
}

static int try_float(size_t n, const float *f, size_t ldf, float shift, float *w)
{
    sym_copy_f(n, f, ldf, shift, w, n);
    return kf__spd_inverse_f(n, w, n) == 0 && kf__all_finite(n, n, w, n);
}

static int try_double(size_t n, const float *f, size_t ldf, double shift, double *w)
{
    sym_copy_d(n, f, ldf, shift, w, n);
    return kf__spd_inverse_d(n, w, n) == 0 && fits_float_d(n, n, w);
}

kf_status kf__damped_inverse_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float damping,
                                kf_precision precision, float *inv, size_t ldinv,
                                float *jitter_used, void *scratch)
{
    double unit, jitter = 0.0;
    double *wd = (double *)scratch;
    if (!kf__all_finite(n, n, f, ldf)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "factor (%zu x %zu) contains NaN or Inf", n, n);
    }
    if (precision == KF_PRECISION_FLOAT) {
        float *wf = (float *)scratch;
        if (try_float(n, f, ldf, damping, wf)) {
            for (size_t i = 0; i < n; i++) {
                memcpy(inv + i * ldinv, wf + i * n, n * sizeof *inv);
            }
            if (jitter_used) {
                *jitter_used = 0.0f;
            }
            return KF_OK;
        }
        /* curvlinops #101: float Cholesky of damped factors can fail; double usually succeeds. */
    }
    unit = diag_unit(n, f, ldf);
    for (double rel = 0.0; rel <= KF_JITTER_LAST * 1.0001; rel = rel == 0.0 ? KF_JITTER_FIRST : rel * 10.0) {
        jitter = rel * unit;
        if (try_double(n, f, ldf, (double)damping + jitter, wd)) {
            for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < n; j++) {
                    inv[i * ldinv + j] = (float)wd[i * n + j];
                }
            }
            if (jitter_used) {
                *jitter_used = (float)jitter;
            }
            return KF_OK;
        }
    }
    return kf__fail(e, KF_ERR_NOT_POSITIVE_DEFINITE,
                    "factor (%zu x %zu) + damping %g is not positive definite, even with jitter "
                    "up to %g",
                    n, n, (double)damping, jitter);
}

/* ---- the blocked Cholesky factor (factor + solve instead of an explicit inverse) --------------- */

/* In place: the lower triangular b x b block at a (row stride lda) becomes its inverse. Row i of
 * W = B^{-1} needs only the rows above it: W[i][j] = -(sum_{j<=k<i} B[i][k] W[k][j]) / B[i][i],
 * accumulated aside so that row i of B is read whole before it is overwritten. */
#define KF_DEFINE_TRINV_LOWER_BLOCK(NAME, T)                                                      \
    static void NAME(size_t b, T *a, size_t lda)                                                 \
    {                                                                                             \
        T acc[KF_CHOL_NB];                                                                        \
        for (size_t i = 0; i < b; i++) {                                                          \
            T *ri = a + i * lda, inv = (T)1 / ri[i];                                              \
            for (size_t j = 0; j < i; j++) {                                                      \
                acc[j] = 0;                                                                       \
            }                                                                                     \
            for (size_t k = 0; k < i; k++) {                                                      \
                const T c = ri[k], *wk = a + k * lda;                                             \
                for (size_t j = 0; j <= k; j++) {                                                 \
                    acc[j] += c * wk[j];                                                          \
                }                                                                                 \
            }                                                                                     \
            for (size_t j = 0; j < i; j++) {                                                      \
                ri[j] = -acc[j] * inv;                                                            \
            }                                                                                     \
            ri[i] = inv;                                                                          \
        }                                                                                         \
    }

KF_DEFINE_TRINV_LOWER_BLOCK(trinv_lower_block_d, double)
KF_DEFINE_TRINV_LOWER_BLOCK(trinv_lower_block_f, float)

/* In place in w (n x n, row stride ldw, the damped factor's lower triangle already copied in),
 * straight into the stored form of kf__damped_cholesky_ws (kf_internal.h): a right-looking
 * blocked Cholesky whose panel step multiplies by the diagonal block's inverse P_J = A_JJ^{-1}
 * instead of a triangular solve, so that everything but the 128-wide diagonal blocks runs in
 * GEMMs. With A_JJ = B B^T (a small potrf): C = A_{>J,J} P_J are U's blocks, and the Schur
 * complement A_{>J,>J} - A_{>J,J} P_J A_{J,>J} is A_{>J,>J} - C A_{>J,J}^T, of which only the
 * lower block triangle is formed. tmp: n * KF_CHOL_NB + KF_CHOL_NB^2 elements. 0 when a
 * diagonal block is not positive definite. */
#define KF_DEFINE_BLOCKED_CHOLESKY(NAME, T, POTRF, TRINV, GEMM)                                   \
    static int NAME(size_t n, T *w, size_t ldw, T *tmp)                                           \
    {                                                                                             \
        T *pj = tmp, *panel = tmp + KF_CHOL_NB * KF_CHOL_NB;                                      \
        for (size_t j0 = 0; j0 < n; j0 += KF_CHOL_NB) {                                           \
            size_t b = n - j0 < KF_CHOL_NB ? n - j0 : KF_CHOL_NB, j1 = j0 + b;                    \
            T *ajj = w + j0 * ldw + j0;                                                           \
            if (POTRF(b, ajj, ldw) != 0) {                                                        \
                return 0;                                                                         \
            }                                                                                     \
            for (size_t i = 0; i < b; i++) {                                                      \
                memset(ajj + i * ldw + i + 1, 0, (b - i - 1) * sizeof *w);                        \
            }                                                                                     \
            TRINV(b, ajj, ldw);                                                                   \
            GEMM(1, 0, b, b, b, 1, ajj, ldw, ajj, ldw, 0, pj, b);                                 \
            for (size_t i = 0; i < b; i++) {                                                      \
                memcpy(ajj + i * ldw, pj + i * b, b * sizeof *w);                                 \
            }                                                                                     \
            if (j1 < n) {                                                                         \
                size_t r = n - j1;                                                                \
                T *c = w + j1 * ldw + j0;                                                         \
                for (size_t i = 0; i < r; i++) {                                                  \
                    memcpy(panel + i * b, c + i * ldw, b * sizeof *w);                            \
                }                                                                                 \
                GEMM(0, 0, r, b, b, 1, panel, b, pj, b, 0, c, ldw);                               \
                for (size_t i0 = j1; i0 < n; i0 += KF_CHOL_NB) {                                  \
                    size_t i1 = n - i0 < KF_CHOL_NB ? n : i0 + KF_CHOL_NB;                        \
                    GEMM(0, 1, i1 - i0, i1 - j1, b, -1, w + i0 * ldw + j0, ldw, panel, b, 1,      \
                         w + i0 * ldw + j1, ldw);                                                 \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        return 1;                                                                                 \
    }

KF_DEFINE_BLOCKED_CHOLESKY(blocked_cholesky_f, float, kf__spd_cholesky_f, trinv_lower_block_f,
                           kf__gemm)
KF_DEFINE_BLOCKED_CHOLESKY(blocked_cholesky_d, double, kf__spd_cholesky_d, trinv_lower_block_d,
                           kf__dgemm)

/* The factor of f + shift I in float, in place in the output w (optimizer scratch; unspecified
 * after a failure); 0 when it fails or is not finite. */
static int chol_float(size_t n, const float *f, size_t ldf, float shift, float *w, size_t ldw,
                      float *tmp)
{
    sym_copy_f(n, f, ldf, shift, w, ldw);
    if (!blocked_cholesky_f(n, w, ldw, tmp)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t end = (i / KF_CHOL_NB + 1) * KF_CHOL_NB;
        end = end < n ? end : n;
        if (!kf__all_finite(1, end, w + i * ldw, ldw)) {
            return 0;
        }
        memset(w + i * ldw + end, 0, (n - end) * sizeof *w);
    }
    return 1;
}

/* chol_float in double, in w (n x n) with tmp as in chol_float (doubles). */
static int chol_double(size_t n, const float *f, size_t ldf, double shift, double *w, double *tmp)
{
    sym_copy_d(n, f, ldf, shift, w, n);
    if (!blocked_cholesky_d(n, w, n, tmp)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t end = (i / KF_CHOL_NB + 1) * KF_CHOL_NB;
        if (!fits_float_d(1, end < n ? end : n, w + i * n)) {
            return 0;
        }
    }
    return 1;
}

kf_status kf__damped_cholesky_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float damping,
                                 kf_precision precision, float *lb, size_t ldl, float *jitter_used,
                                 void *scratch)
{
    double unit, jitter = 0.0;
    double *wd = (double *)scratch;
    if (!kf__all_finite(n, n, f, ldf)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "factor (%zu x %zu) contains NaN or Inf", n, n);
    }
    if (precision == KF_PRECISION_FLOAT) {
        if (chol_float(n, f, ldf, damping, lb, ldl, (float *)scratch)) {
            if (jitter_used) {
                *jitter_used = 0.0f;
            }
            return KF_OK;
        }
    }
    /* The same chain as kf__damped_inverse_ws, so both paths accept the same factors. */
    unit = diag_unit(n, f, ldf);
    for (double rel = 0.0; rel <= KF_JITTER_LAST * 1.0001; rel = rel == 0.0 ? KF_JITTER_FIRST : rel * 10.0) {
        jitter = rel * unit;
        if (chol_double(n, f, ldf, (double)damping + jitter, wd,
                        wd + KF_ALIGN_UP(n * n * sizeof(double)) / sizeof(double))) {
            for (size_t i = 0; i < n; i++) {
                size_t end = (i / KF_CHOL_NB + 1) * KF_CHOL_NB;
                end = end < n ? end : n;
                for (size_t j = 0; j < end; j++) {
                    lb[i * ldl + j] = (float)wd[i * n + j];
                }
                memset(lb + i * ldl + end, 0, (n - end) * sizeof *lb);
            }
            if (jitter_used) {
                *jitter_used = (float)jitter;
            }
            return KF_OK;
        }
    }
    return kf__fail(e, KF_ERR_NOT_POSITIVE_DEFINITE,
                    "factor (%zu x %zu) + damping %g is not positive definite, even with jitter "
                    "up to %g",
                    n, n, (double)damping, jitter);
}

kf_status kf_damped_inverse(kf_context *ctx, size_t n, const float *f, size_t ldf,
                            float damping, kf_precision precision,
                            float *inv, size_t ldinv, float *jitter_used)
{
    static const char fn[] = "kf_damped_inverse";
    void *ws;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = kf__check_mat(&ctx->err, f, n, n, ldf, "f")) != KF_OK ||
        (s = kf__check_mat(&ctx->err, inv, n, n, ldinv, "inv")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if (!(damping >= 0.0f) || !isfinite(damping)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: damping (%g) must be finite and >= 0", fn, (double)damping);
    }
    if (precision != KF_PRECISION_DOUBLE && precision != KF_PRECISION_FLOAT) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: precision %d is not a kf_precision",
                        fn, (int)precision);
    }
    if (kf__overlap(f, n, ldf, n, inv, n, ldinv, n)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: inv overlaps f", fn);
    }
    if (n > 46000) { /* n * n doubles would not be addressable on 32-bit sizes; far beyond use */
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "%s: n (%zu) is too large", fn, n);
    }
    if (!(ws = kf__ctx_work(ctx, kf__inverse_scratch(n)))) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    if ((s = kf__damped_inverse_ws(&ctx->err, n, f, ldf, damping, precision, inv, ldinv,
                                   jitter_used, ws)) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    kf__clear(&ctx->err);
    return KF_OK;
}

size_t kf__eig_scratch(size_t n)
{
    return KF_ALIGN_UP(n * n * sizeof(double)) + KF_ALIGN_UP(n * sizeof(double)) +
           KF_ALIGN_UP(kf__sym_eig_work(n) * sizeof(double)) +
           KF_ALIGN_UP(kf__sym_eig_iwork(n) * sizeof(int));
}

kf_status kf__sym_eig_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float *w, float *q,
                         size_t ldq, void *scratch)
{
    unsigned char *cur = (unsigned char *)scratch;
    double *a = (double *)kf__carve(&cur, n * n * sizeof(double));
    double *wd = (double *)kf__carve(&cur, n * sizeof(double));
    double *work = (double *)kf__carve(&cur, kf__sym_eig_work(n) * sizeof(double));
    int *iwork = (int *)kf__carve(&cur, kf__sym_eig_iwork(n) * sizeof(int));
    if (!kf__all_finite(n, n, f, ldf)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "factor (%zu x %zu) contains NaN or Inf", n, n);
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            a[i * n + j] = 0.5 * ((double)f[i * ldf + j] + (double)f[j * ldf + i]);
        }
    }
    if (kf__sym_eig_d(n, a, n, wd, work, iwork) != 0 || !kf__all_finite_d(n, n, a, n) ||
        !kf__all_finite_d(1, n, wd, n)) {
        return kf__fail(e, KF_ERR_NO_CONVERGENCE,
                        "symmetric eigendecomposition of a %zu x %zu factor did not converge", n, n);
    }
    for (size_t i = 0; i < n; i++) {
        /* Eigenvalues of a float matrix can exceed the float range (e.g. FLT_MAX entries). */
        if (!(fabs(wd[i]) <= 3.4028234663852886e38)) {
            return kf__fail(e, KF_ERR_NON_FINITE, "an eigenvalue (%g) of the %zu x %zu factor "
                            "exceeds the float range", wd[i], n, n);
        }
    }
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)wd[i];
        for (size_t j = 0; j < n; j++) {
            q[i * ldq + j] = (float)a[i * n + j];
        }
    }
    return KF_OK;
}

kf_status kf_sym_eig(kf_context *ctx, size_t n, const float *f, size_t ldf,
                     float *w, float *q, size_t ldq)
{
    static const char fn[] = "kf_sym_eig";
    void *ws;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = kf__check_mat(&ctx->err, f, n, n, ldf, "f")) != KF_OK ||
        (s = kf__check_mat(&ctx->err, w, 1, n, n, "w")) != KF_OK ||
        (s = kf__check_mat(&ctx->err, q, n, n, ldq, "q")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if (kf__overlap(f, n, ldf, n, q, n, ldq, n) || kf__overlap(f, n, ldf, n, w, 1, n, n) ||
        kf__overlap(q, n, ldq, n, w, 1, n, n)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: f, w and q must not overlap", fn);
    }
    if (n > 32000) { /* LAPACK workspaces of 2 n^2 must fit an int */
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "%s: n (%zu) is too large", fn, n);
    }
    if (!(ws = kf__ctx_work(ctx, kf__eig_scratch(n)))) {
        return kf__prefix(&ctx->err, KF_ERR_OUT_OF_MEMORY, fn);
    }
    if ((s = kf__sym_eig_ws(&ctx->err, n, f, ldf, w, q, ldq, ws)) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    kf__clear(&ctx->err);
    return KF_OK;
}
