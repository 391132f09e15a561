/* Dense kernels of kf_mat.h through OpenBLAS's CBLAS (row-major). The public wrappers in mat.c
 * validate the arguments, so that CBLAS never reports an error (its xerbla would print). */
#if defined(KRONFAC_HAVE_BLAS)

#include "kf_mat.h"

#include <cblas.h>
#include <limits.h>
#include <stddef.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#define KF__MIRROR_SSE 1
#endif

/* CBLAS takes int sizes (blasint); anything larger goes through the plain loops below instead of
 * being truncated. */
static int kf__fits_int(size_t x)
{
    return x <= (size_t)INT_MAX;
}

static enum CBLAS_TRANSPOSE kf__tr(int t)
{
    return t ? CblasTrans : CblasNoTrans;
}

/* Reference loops for sizes CBLAS cannot express; same semantics (beta == 0: C not read,
 * alpha == 0 or k == 0: A and B not read). */
static void kf__gemm_loops(int ta, int tb, size_t m, size_t n, size_t k, float alpha,
                           const float *a, size_t lda, const float *b, size_t ldb, float beta,
                           float *c, size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            float s = 0.0f;
            if (alpha != 0.0f) {
                for (size_t p = 0; p < k; p++) {
                    float x = ta ? a[p * lda + i] : a[i * lda + p];
                    float y = tb ? b[j * ldb + p] : b[p * ldb + j];
                    s += x * y;
                }
            }
            float *cij = c + i * ldc + j;
            *cij = alpha * s + (beta == 0.0f ? 0.0f : beta * *cij);
        }
    }
}

static void kf__dgemm_loops(int ta, int tb, size_t m, size_t n, size_t k, double alpha,
                            const double *a, size_t lda, const double *b, size_t ldb, double beta,
                            double *c, size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0;
            if (alpha != 0.0) {
                for (size_t p = 0; p < k; p++) {
                    double x = ta ? a[p * lda + i] : a[i * lda + p];
                    double y = tb ? b[j * ldb + p] : b[p * ldb + j];
                    s += x * y;
                }
            }
            double *cij = c + i * ldc + j;
            *cij = alpha * s + (beta == 0.0 ? 0.0 : beta * *cij);
        }
    }
}

void kf__gemm(int ta, int tb, size_t m, size_t n, size_t k, float alpha, const float *a,
              size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    if (!kf__fits_int(m) || !kf__fits_int(n) || !kf__fits_int(k) || !kf__fits_int(lda) ||
        !kf__fits_int(ldb) || !kf__fits_int(ldc)) {
        kf__gemm_loops(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, kf__tr(ta), kf__tr(tb), (int)m, (int)n, (int)k, alpha, a,
                (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

void kf__dgemm(int ta, int tb, size_t m, size_t n, size_t k, double alpha, const double *a,
               size_t lda, const double *b, size_t ldb, double beta, double *c, size_t ldc)
{
    if (!kf__fits_int(m) || !kf__fits_int(n) || !kf__fits_int(k) || !kf__fits_int(lda) ||
        !kf__fits_int(ldb) || !kf__fits_int(ldc)) {
        kf__dgemm_loops(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    cblas_dgemm(CblasRowMajor, kf__tr(ta), kf__tr(tb), (int)m, (int)n, (int)k, alpha, a,
                (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* Callers of kf__syrk get the full matrix: the strictly lower triangle <- the upper one, in square
 * tiles so that the strided side stays in cache. With SSE the tiles off the diagonal go 4 x 4
 * through registers, where the scalar loop makes one strided load per element (the mirror cost a
 * tenth of ssyrk at n = 1001). */
static void mirror_upper(size_t n, float *c, size_t ldc)
{
    const size_t bs = 64;
    for (size_t ib = 0; ib < n; ib += bs) {
        size_t iend = n - ib < bs ? n : ib + bs;
        for (size_t jb = 0; jb <= ib; jb += bs) {
            size_t i = ib;
#if defined(KF__MIRROR_SSE)
            /* Off the diagonal, the tile's columns jb .. jb + bs - 1 all lie left of row ib. */
            for (; jb < ib && i + 4 <= iend; i += 4) {
                for (size_t j = jb; j < jb + bs; j += 4) {
                    __m128 r0 = _mm_loadu_ps(c + j * ldc + i);
                    __m128 r1 = _mm_loadu_ps(c + (j + 1) * ldc + i);
                    __m128 r2 = _mm_loadu_ps(c + (j + 2) * ldc + i);
                    __m128 r3 = _mm_loadu_ps(c + (j + 3) * ldc + i);
                    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                    _mm_storeu_ps(c + i * ldc + j, r0);
                    _mm_storeu_ps(c + (i + 1) * ldc + j, r1);
                    _mm_storeu_ps(c + (i + 2) * ldc + j, r2);
                    _mm_storeu_ps(c + (i + 3) * ldc + j, r3);
                }
            }
#endif
            for (; i < iend; i++) {
                size_t jend = jb + bs < i ? jb + bs : i;
                for (size_t j = jb; j < jend; j++) {
                    c[i * ldc + j] = c[j * ldc + i];
                }
            }
        }
    }
}

void kf__syrk(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta, float *c,
              size_t ldc)
{
    if (!kf__fits_int(n) || !kf__fits_int(k) || !kf__fits_int(ldx) || !kf__fits_int(ldc)) {
        /* Upper triangle only, as ssyrk would, then the mirror below. */
        for (size_t i = 0; i < n; i++) {
            kf__gemm_loops(1, 0, 1, n - i, k, alpha, x + i, ldx, x + i, ldx, beta,
                           c + i * ldc + i, ldc);
        }
    } else {
        /* Row-major upper with Trans: C = alpha X^T X + beta C, X is k x n; only j >= i written. */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)n, (int)k, alpha, x, (int)ldx,
                    beta, c, (int)ldc);
    }
    mirror_upper(n, c, ldc);
}

void kf__syrk_lower(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta,
                    float *c, size_t ldc)
{
    if (!kf__fits_int(n) || !kf__fits_int(k) || !kf__fits_int(ldx) || !kf__fits_int(ldc)) {
        for (size_t i = 0; i < n; i++) {
            kf__gemm_loops(1, 0, 1, i + 1, k, alpha, x + i, ldx, x, ldx, beta, c + i * ldc, ldc);
        }
        return;
    }
    /* Row-major lower with Trans: only j <= i written. */
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)n, (int)k, alpha, x, (int)ldx, beta, c,
                (int)ldc);
}

void kf__colsum(size_t m, size_t n, float alpha, const float *x, size_t ldx, float *y)
{
    /* As y = alpha X^T 1 through sgemv, which spreads the rows over the BLAS threads (a plain loop
     * over the rows runs on one core at memory speed): 1024 rows per call against a vector of
     * ones on the stack. */
    enum { CHUNK = 1024 };
    float ones[CHUNK];
    if (m == 0 || !kf__fits_int(n) || !kf__fits_int(ldx)) {
        for (size_t j = 0; j < n; j++) {
            y[j] = 0.0f;
        }
        for (size_t i = 0; i < m; i++) {
            for (size_t j = 0; j < n; j++) {
                y[j] += x[i * ldx + j];
            }
        }
        for (size_t j = 0; j < n; j++) {
            y[j] *= alpha;
        }
        return;
    }
    for (size_t i = 0; i < CHUNK; i++) {
        ones[i] = 1.0f;
    }
    for (size_t i0 = 0; i0 < m; i0 += CHUNK) {
        size_t rows = m - i0 < CHUNK ? m - i0 : CHUNK;
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)rows, (int)n, alpha, x + i0 * ldx, (int)ldx, ones,
                    1, i0 ? 1.0f : 0.0f, y, 1);
    }
}

const char *kf__mat_backend(void)
{
    return "openblas";
}

const char *kf__mat_simd(void)
{
    return "openblas";
}

#else
/* The portable build uses mat_portable.c; keep this translation unit non-empty for -Wpedantic. */
typedef int kf__mat_blas_unused;
#endif
