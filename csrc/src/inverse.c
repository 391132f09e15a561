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
    /* The working matrix (double; the float path works in its output), then the blocked
     * Cholesky's tmp: the copy of Y (m k <= ((m + k) / 2)^2 = n^2 / 4) or a leaf's block. */
    size_t tmp = (n * n + 3) / 4 > KF_CHOL_NB * KF_CHOL_NB ? (n * n + 3) / 4 : KF_CHOL_NB * KF_CHOL_NB;
    return KF_ALIGN_UP(n * n * sizeof(double)) + KF_ALIGN_UP(tmp * sizeof(double));
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
 * factorisations read. Returns 0 when f holds a NaN or Inf (every element of f is read once, so
 * this is the factor's finiteness check too); halves are added so that finite floats cannot
 * overflow. */
#define KF_DEFINE_SYM_COPY(NAME, T)                                                               \
    static int NAME(size_t n, const float *f, size_t ldf, T shift, T *w, size_t ldw)              \
    {                                                                                             \
        int ok = 1;                                                                               \
        for (size_t ib = 0; ib < n; ib += KF_SYM_TILE) {                                          \
            size_t ie = ib + KF_SYM_TILE < n ? ib + KF_SYM_TILE : n;                              \
            for (size_t jb = 0; jb <= ib; jb += KF_SYM_TILE) {                                    \
                size_t je = jb + KF_SYM_TILE < n ? jb + KF_SYM_TILE : n;                          \
                for (size_t i = ib; i < ie; i++) {                                                \
                    size_t jend = je < i + 1 ? je : i + 1;                                        \
                    for (size_t j = jb; j < jend; j++) {                                          \
                        T v = (T)0.5 * (T)f[i * ldf + j] + (T)0.5 * (T)f[j * ldf + i];            \
                        ok &= v - v == 0;                                                         \
                        w[i * ldw + j] = v;                                                       \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (size_t i = 0; i < n; i++) {                                                          \
            w[i * ldw + i] += shift;                                                              \
        }                                                                                         \
        return ok;                                                                                \
    }

KF_DEFINE_SYM_COPY(sym_copy_f, float)
KF_DEFINE_SYM_COPY(sym_copy_d, double)

/* The lower triangle of w = f + shift I as it is. The optimizer's factors are exactly symmetric
 * (every producer mirrors the one triangle it computes, and the moving averages act elementwise),
 * so the factor + solve path it uses reads one contiguous triangle; symmetrising reads the other
 * one column-wise, which cost as much as a tenth of the factorisation. 0 when the triangle holds a
 * NaN or Inf. */
#define KF_DEFINE_LOWER_COPY(NAME, T)                                                             \
    static int NAME(size_t n, const float *f, size_t ldf, T shift, T *w, size_t ldw)              \
    {                                                                                             \
        int ok = 1;                                                                               \
        for (size_t i = 0; i < n; i++) {                                                          \
            const float *fi = f + i * ldf;                                                        \
            T *wi = w + i * ldw;                                                                  \
            for (size_t j = 0; j <= i; j++) {                                                     \
                T v = (T)fi[j];                                                                   \
                ok &= v - v == 0;                                                                 \
                wi[j] = v;                                                                        \
            }                                                                                     \
            wi[i] += shift;                                                                       \
        }                                                                                         \
        return ok;                                                                                \
    }

KF_DEFINE_LOWER_COPY(lower_copy_f, float)
KF_DEFINE_LOWER_COPY(lower_copy_d, double)

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

/* ---- the blocked Cholesky factor (factor + solve instead of an explicit inverse) --------------- */

/* Where block `blk` (KF_CHOL_NB wide) starts in a dimension of d; d for the blocks past the end. */
static size_t blk_end(size_t blk, size_t d)
{
    size_t e = blk * KF_CHOL_NB;
    return e < d ? e : d;
}

/* X (m x d), columns of blocks [b0, b1): X <- X U^{-T}, U the unit block-lower factor stored below
 * the diagonal blocks of lb. Recursive halving on block boundaries: one GEMM per level and nothing
 * at the bottom (U's diagonal blocks are identities). x may lie in the same matrix as lb, in rows
 * the solve does not read. */
#define KF_DEFINE_UNIT_SOLVE_RT(NAME, T, GEMM)                                                    \
    void NAME(size_t m, size_t d, const T *lb, size_t ldl, T *x, size_t ldx, size_t b0, size_t b1) \
    {                                                                                             \
        size_t j0 = blk_end(b0, d), j1 = blk_end(b1, d), bm, mid;                                 \
        if (b1 - b0 < 2) {                                                                        \
            return;                                                                               \
        }                                                                                         \
        bm = b0 + (b1 - b0 + 1) / 2;                                                              \
        mid = blk_end(bm, d);                                                                     \
        NAME(m, d, lb, ldl, x, ldx, b0, bm);                                                      \
        GEMM(0, 1, m, j1 - mid, mid - j0, -1, x + j0, ldx, lb + mid * ldl + j0, ldl, 1, x + mid,  \
             ldx);                                                                                \
        NAME(m, d, lb, ldl, x, ldx, bm, b1);                                                      \
    }

static void unit_solve_rt_d(size_t m, size_t d, const double *lb, size_t ldl, double *x, size_t ldx,
                            size_t b0, size_t b1);
KF_DEFINE_UNIT_SOLVE_RT(kf__unit_solve_rt, float, kf__gemm)
KF_DEFINE_UNIT_SOLVE_RT(unit_solve_rt_d, double, kf__dgemm)

/* The Schur complement's update W22 -= U21 Y^T on the lower block triangle of blocks [c0, c1) of w
 * (both triangles of the diagonal blocks): U21 is w's columns [j0, j0 + k), Y (row stride ldy) has
 * the row of w's row i at i - base. Recursive halving again, so the GEMMs are few and large. */
#define KF_DEFINE_SCHUR_LOWER(NAME, T, GEMM)                                                      \
    static void NAME(size_t d, T *w, size_t ldw, size_t j0, size_t k, const T *y, size_t ldy,     \
                     size_t base, size_t c0, size_t c1)                                           \
    {                                                                                             \
        size_t r0 = blk_end(c0, d), r1 = blk_end(c1, d), cm, rm;                                  \
        if (c1 - c0 == 1) {                                                                       \
            GEMM(0, 1, r1 - r0, r1 - r0, k, -1, w + r0 * ldw + j0, ldw, y + (r0 - base) * ldy,    \
                 ldy, 1, w + r0 * ldw + r0, ldw);                                                 \
            return;                                                                               \
        }                                                                                         \
        cm = c0 + (c1 - c0 + 1) / 2;                                                              \
        rm = blk_end(cm, d);                                                                      \
        NAME(d, w, ldw, j0, k, y, ldy, base, c0, cm);                                             \
        GEMM(0, 1, r1 - rm, rm - r0, k, -1, w + rm * ldw + j0, ldw, y + (r0 - base) * ldy, ldy,   \
             1, w + rm * ldw + r0, ldw);                                                          \
        NAME(d, w, ldw, j0, k, y, ldy, base, cm, c1);                                             \
    }

KF_DEFINE_SCHUR_LOWER(schur_lower_f, float, kf__gemm)
KF_DEFINE_SCHUR_LOWER(schur_lower_d, double, kf__dgemm)

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

KF_DEFINE_TRINV_LOWER_BLOCK(trinv_lower_small_d, double)
KF_DEFINE_TRINV_LOWER_BLOCK(trinv_lower_small_f, float)

/* The same for any b <= KF_CHOL_NB, halving down to 32: with B = [B11 0; B21 B22], the inverse's
 * lower-left block is -B22^{-1} B21 B11^{-1}, two GEMMs; the loops above alone ran at a few
 * GFLOP/s and took a fifth of a 500-wide factorisation. tmp holds (b / 2)^2 elements. */
#define KF_DEFINE_TRINV_LOWER(NAME, T, SMALL, GEMM)                                               \
    static void NAME(size_t b, T *a, size_t lda, T *tmp)                                          \
    {                                                                                             \
        size_t h = b / 2;                                                                         \
        if (b <= 32) {                                                                            \
            SMALL(b, a, lda);                                                                     \
            return;                                                                               \
        }                                                                                         \
        NAME(h, a, lda, tmp);                                                                     \
        NAME(b - h, a + h * lda + h, lda, tmp);                                                   \
        GEMM(0, 0, b - h, h, b - h, 1, a + h * lda + h, lda, a + h * lda, lda, 0, tmp, h);        \
        GEMM(0, 0, b - h, h, h, -1, tmp, h, a, lda, 0, a + h * lda, lda);                         \
    }

KF_DEFINE_TRINV_LOWER(trinv_lower_block_d, double, trinv_lower_small_d, kf__dgemm)
KF_DEFINE_TRINV_LOWER(trinv_lower_block_f, float, trinv_lower_small_f, kf__gemm)

/* A leaf of the blocked Cholesky: the b x b block at a (its lower triangle) becomes its inverse,
 * both triangles, by potrf, the triangular inverse above and a Gram product (P = B^{-T} B^{-1}); tmp
 * holds b * b elements. LAPACK's potri gets there through level-2 kernels at these sizes. 0 when
 * the block is not positive definite. */
#define KF_DEFINE_LEAF_INVERSE(NAME, T, POTRF, TRINV, GRAM)                                       \
    static int NAME(size_t b, T *a, size_t lda, T *tmp)                                           \
    {                                                                                             \
        if (POTRF(b, a, lda) != 0) {                                                              \
            return 0;                                                                             \
        }                                                                                         \
        for (size_t i = 0; i < b; i++) {                                                          \
            memset(a + i * lda + i + 1, 0, (b - i - 1) * sizeof *a);                              \
        }                                                                                         \
        TRINV(b, a, lda, tmp);                                                                    \
        GRAM(b, a, lda, tmp);                                                                     \
        for (size_t i = 0; i < b; i++) {                                                          \
            memcpy(a + i * lda, tmp + i * b, b * sizeof *a);                                      \
        }                                                                                         \
        return 1;                                                                                 \
    }

/* tmp (b x b) = W^T W for the b x b matrix W at a: float through ssyrk (half the products of a
 * GEMM), double through the GEMM (the fallback path; kf_mat.h has no dsyrk). */
static void gram_f(size_t b, const float *a, size_t lda, float *tmp)
{
    kf__syrk(b, b, 1.0f, a, lda, 0.0f, tmp, b);
}

static void gram_d(size_t b, const double *a, size_t lda, double *tmp)
{
    kf__dgemm(1, 0, b, b, b, 1.0, a, lda, a, lda, 0.0, tmp, b);
}

KF_DEFINE_LEAF_INVERSE(leaf_inverse_f, float, kf__spd_cholesky_f, trinv_lower_block_f, gram_f)
KF_DEFINE_LEAF_INVERSE(leaf_inverse_d, double, kf__spd_cholesky_d, trinv_lower_block_d, gram_d)

/* In place in w (n x n, row stride ldw, the damped factor's lower triangle already copied in),
 * blocks [b0, b1), straight into the stored form of kf__damped_cholesky_ws (kf_internal.h): the
 * block LDL^T factorisation A = U D U^T, D = blockdiag(S_J), of which the diagonal blocks keep
 * P_J = S_J^{-1}. Recursive: factor the leading half A11 = U1 D1 U1^T; then Y = A21 U1^{-T} (a unit
 * solve, GEMMs), U21 = Y D1^{-1} (block by block with the P_J), and the Schur complement
 * A22 - U21 D1 U21^T = A22 - U21 Y^T; then factor that. The bulk runs in a few large GEMMs, where
 * a right-looking loop over 128-wide panels ran at about half of sgemm's rate. tmp holds the copy
 * of Y (at most n^2 / 4 elements: m k with m + k = n) or a leaf's block, never both at once. 0 when
 * a diagonal block is not positive definite. */
#define KF_DEFINE_BLOCKED_CHOLESKY(NAME, T, LEAF, SOLVE_RT, SCHUR, GEMM)                          \
    static int NAME(size_t n, T *w, size_t ldw, T *tmp, size_t b0, size_t b1)                     \
    {                                                                                             \
        size_t j0 = blk_end(b0, n), j1 = blk_end(b1, n), bm, mid, m, k;                           \
        if (b1 - b0 == 1) {                                                                       \
            return LEAF(j1 - j0, w + j0 * ldw + j0, ldw, tmp);                                    \
        }                                                                                         \
        bm = b0 + (b1 - b0 + 1) / 2;                                                              \
        mid = blk_end(bm, n);                                                                     \
        m = j1 - mid;                                                                             \
        k = mid - j0;                                                                             \
        if (!NAME(n, w, ldw, tmp, b0, bm)) {                                                      \
            return 0;                                                                             \
        }                                                                                         \
        SOLVE_RT(m, n, w, ldw, w + mid * ldw, ldw, b0, bm);                                       \
        for (size_t i = 0; i < m; i++) {                                                          \
            memcpy(tmp + i * k, w + (mid + i) * ldw + j0, k * sizeof *w);                         \
        }                                                                                         \
        for (size_t c0 = j0; c0 < mid; c0 += KF_CHOL_NB) {                                        \
            size_t b = mid - c0 < KF_CHOL_NB ? mid - c0 : KF_CHOL_NB;                             \
            GEMM(0, 0, m, b, b, 1, tmp + (c0 - j0), k, w + c0 * ldw + c0, ldw, 0,                 \
                 w + mid * ldw + c0, ldw);                                                        \
        }                                                                                         \
        SCHUR(n, w, ldw, j0, k, tmp, k, mid, bm, b1);                                             \
        return NAME(n, w, ldw, tmp, bm, b1);                                                      \
    }

KF_DEFINE_BLOCKED_CHOLESKY(blocked_cholesky_f, float, leaf_inverse_f, kf__unit_solve_rt,
                           schur_lower_f, kf__gemm)
KF_DEFINE_BLOCKED_CHOLESKY(blocked_cholesky_d, double, leaf_inverse_d, unit_solve_rt_d,
                           schur_lower_d, kf__dgemm)

/* What a damped factorisation produces: the explicit inverse (both triangles) of the symmetrised
 * factor or of its lower triangle, or the blocked Cholesky factor of kf__damped_cholesky_ws (from
 * the lower triangle). */
typedef enum { KF_FACT_INVERSE, KF_FACT_INVERSE_LOWER, KF_FACT_CHOLESKY } kf_fact_kind;

/* The float attempt at f + shift I, in w (row stride ldw; unspecified after a failure), tmp as
 * blocked_cholesky_f's: 1 done, 0 not positive definite or not finite, -1 f holds NaN or Inf. */
static int attempt_float(kf_fact_kind kind, size_t n, const float *f, size_t ldf, float shift,
                         float *w, size_t ldw, float *tmp)
{
    if (!(kind == KF_FACT_INVERSE ? sym_copy_f : lower_copy_f)(n, f, ldf, shift, w, ldw)) {
        return -1;
    }
    if (kind != KF_FACT_CHOLESKY) {
        return kf__spd_inverse_f(n, w, ldw) == 0 && kf__all_finite(n, n, w, ldw);
    }
    if (!blocked_cholesky_f(n, w, ldw, tmp, 0, (n + KF_CHOL_NB - 1) / KF_CHOL_NB)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t end = blk_end(i / KF_CHOL_NB + 1, n);
        if (!kf__all_finite(1, end, w + i * ldw, ldw)) {
            return 0;
        }
        memset(w + i * ldw + end, 0, (n - end) * sizeof *w);
    }
    return 1;
}

/* attempt_float in double, in w (n x n): the result must also fit in float. */
static int attempt_double(kf_fact_kind kind, size_t n, const float *f, size_t ldf, double shift,
                          double *w, double *tmp)
{
    if (!(kind == KF_FACT_INVERSE ? sym_copy_d : lower_copy_d)(n, f, ldf, shift, w, n)) {
        return -1;
    }
    if (kind != KF_FACT_CHOLESKY) {
        return kf__spd_inverse_d(n, w, n) == 0 && fits_float_d(n, n, w);
    }
    if (!blocked_cholesky_d(n, w, n, tmp, 0, (n + KF_CHOL_NB - 1) / KF_CHOL_NB)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!fits_float_d(1, blk_end(i / KF_CHOL_NB + 1, n), w + i * n)) {
            return 0;
        }
    }
    return 1;
}

/* The jitter chain both factorisations share: float first when asked (curvlinops #101: a float
 * Cholesky of a damped factor can fail where double succeeds), then double with jitter growing
 * from 0 to KF_JITTER_LAST of the mean diagonal. The inverse works in scratch and leaves `out`
 * untouched on failure; the Cholesky factor works in place in `out`. */
static kf_status damped_factorise(kf_errbuf *e, kf_fact_kind kind, size_t n, const float *f,
                                  size_t ldf, float damping, kf_precision precision, float *out,
                                  size_t ldo, float *jitter_used, void *scratch)
{
    double unit, jitter = 0.0;
    double *wd = (double *)scratch, *tmp_d = wd + KF_ALIGN_UP(n * n * sizeof(double)) / sizeof(double);
    int r = 0;
    if (precision == KF_PRECISION_FLOAT) {
        float *wf = kind != KF_FACT_CHOLESKY ? (float *)scratch : out;
        size_t ldw = kind != KF_FACT_CHOLESKY ? n : ldo;
        r = attempt_float(kind, n, f, ldf, damping, wf, ldw, (float *)scratch);
        if (r > 0) {
            for (size_t i = 0; wf != out && i < n; i++) {
                memcpy(out + i * ldo, wf + i * n, n * sizeof *out);
            }
            if (jitter_used) {
                *jitter_used = 0.0f;
            }
            return KF_OK;
        }
    }
    unit = diag_unit(n, f, ldf);
    for (double rel = 0.0; r >= 0 && rel <= KF_JITTER_LAST * 1.0001;
         rel = rel == 0.0 ? KF_JITTER_FIRST : rel * 10.0) {
        jitter = rel * unit;
        r = attempt_double(kind, n, f, ldf, (double)damping + jitter, wd, tmp_d);
        if (r > 0) {
            for (size_t i = 0; i < n; i++) {
                size_t end = kind != KF_FACT_CHOLESKY ? n : blk_end(i / KF_CHOL_NB + 1, n);
                for (size_t j = 0; j < end; j++) {
                    out[i * ldo + j] = (float)wd[i * n + j];
                }
                memset(out + i * ldo + end, 0, (n - end) * sizeof *out);
            }
            if (jitter_used) {
                *jitter_used = (float)jitter;
            }
            return KF_OK;
        }
    }
    if (r < 0) {
        return kf__fail(e, KF_ERR_NON_FINITE, "factor (%zu x %zu) contains NaN or Inf", n, n);
    }
    return kf__fail(e, KF_ERR_NOT_POSITIVE_DEFINITE,
                    "factor (%zu x %zu) + damping %g is not positive definite, even with jitter "
                    "up to %g",
                    n, n, (double)damping, jitter);
}

kf_status kf__damped_inverse_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float damping,
                                kf_precision precision, float *inv, size_t ldinv,
                                float *jitter_used, void *scratch)
{
    return damped_factorise(e, KF_FACT_INVERSE, n, f, ldf, damping, precision, inv, ldinv,
                            jitter_used, scratch);
}

kf_status kf__damped_inverse_lower_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf,
                                      float damping, kf_precision precision, float *inv,
                                      size_t ldinv, float *jitter_used, void *scratch)
{
    return damped_factorise(e, KF_FACT_INVERSE_LOWER, n, f, ldf, damping, precision, inv, ldinv,
                            jitter_used, scratch);
}

kf_status kf__damped_cholesky_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float damping,
                                 kf_precision precision, float *lb, size_t ldl, float *jitter_used,
                                 void *scratch)
{
    return damped_factorise(e, KF_FACT_CHOLESKY, n, f, ldf, damping, precision, lb, ldl,
                            jitter_used, scratch);
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
