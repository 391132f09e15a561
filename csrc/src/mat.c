/* The public dense kernels: validate every argument, then call the raw kernels of kf_mat.h.
 * Every check runs before the first write, so that on error the caller's buffers are untouched. */
#include "kf_internal.h"
#include "kf_mat.h"

#include <math.h>
#include <stdint.h>

/* Checks a non-NULL pointer; the message reads "fn: name is NULL". */
static kf_status kf__mat_ptr(kf_errbuf *e, const char *fn, const void *p, const char *name)
{
    kf_status s = kf__check_ptr(e, p, name);
    return s == KF_OK ? s : kf__prefix(e, s, fn);
}

/* A stored matrix of `rows` rows of `width` floats, rows `ld` apart (rows may be 0 for an empty
 * operand of a k = 0 product). ld must be >= max(1, width), as BLAS requires, and the offset of
 * the last element must be representable in bytes. */
static kf_status kf__mat_ld(kf_errbuf *e, const char *fn, size_t rows, size_t width, size_t ld,
                            const char *ldname, const char *what)
{
    size_t span;
    size_t need = width > 0 ? width : 1;
    if (ld < need) {
        return kf__fail(e, KF_ERR_SHAPE, "%s: %s (%zu) < %zu, the width of %s as stored", fn,
                        ldname, ld, need, what);
    }
    if (rows > 0 &&
        (!kf__mul_size(rows - 1, ld, &span) || span > SIZE_MAX / sizeof(double) - width)) {
        return kf__fail(e, KF_ERR_SHAPE, "%s: %s is too large to address (%zu rows, %s %zu)", fn,
                        what, rows, ldname, ld);
    }
    return KF_OK;
}

static kf_status kf__mat_dim(kf_errbuf *e, const char *fn, size_t v, const char *name)
{
    if (v == 0) {
        return kf__fail(e, KF_ERR_SHAPE, "%s: %s is 0; it must be >= 1", fn, name);
    }
    return KF_OK;
}

static kf_status kf__mat_finite(kf_errbuf *e, const char *fn, float v, const char *name)
{
    if (!isfinite(v)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "%s: %s (%g) is not finite", fn, name,
                        (double)v);
    }
    return KF_OK;
}

static kf_status kf__mat_trans(kf_errbuf *e, const char *fn, kf_transpose t, const char *name)
{
    if (t != KF_NO_TRANS && t != KF_TRANS) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "%s: %s (%d) is neither KF_NO_TRANS nor KF_TRANS",
                        fn, name, (int)t);
    }
    return KF_OK;
}

/* out (rows_o x cols_o, ld_o) must not share memory with in (rows_i x cols_i, ld_i); an input
 * with no rows is never read and cannot overlap. */
static kf_status kf__mat_disjoint(kf_errbuf *e, const char *fn, const float *out, size_t rows_o,
                                  size_t cols_o, size_t ld_o, const char *out_name,
                                  const float *in, size_t rows_i, size_t cols_i, size_t ld_i,
                                  const char *in_name)
{
    if (rows_i == 0 || cols_i == 0) {
        return KF_OK;
    }
    if (kf__overlap(out, rows_o, ld_o, cols_o, in, rows_i, ld_i, cols_i)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "%s: %s overlaps %s in memory", fn, out_name,
                        in_name);
    }
    return KF_OK;
}

#define KF_TRY(expr)                 \
    do {                             \
        kf_status kf_s_ = (expr);    \
        if (kf_s_ != KF_OK) {        \
            return kf_s_;            \
        }                            \
    } while (0)

kf_status kf_gemm(kf_context *ctx, kf_transpose ta, kf_transpose tb, size_t m, size_t n, size_t k,
                  float alpha, const float *a, size_t lda, const float *b, size_t ldb, float beta,
                  float *c, size_t ldc)
{
    static const char fn[] = "kf_gemm";
    kf_errbuf *e;
    /* Stored shapes: A is m x k or k x m, B is k x n or n x k. */
    size_t a_rows, a_cols, b_rows, b_cols;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    KF_TRY(kf__mat_trans(e, fn, ta, "ta"));
    KF_TRY(kf__mat_trans(e, fn, tb, "tb"));
    KF_TRY(kf__mat_ptr(e, fn, a, "a"));
    KF_TRY(kf__mat_ptr(e, fn, b, "b"));
    KF_TRY(kf__mat_ptr(e, fn, c, "c"));
    KF_TRY(kf__mat_dim(e, fn, m, "m"));
    KF_TRY(kf__mat_dim(e, fn, n, "n"));
    a_rows = ta == KF_TRANS ? k : m;
    a_cols = ta == KF_TRANS ? m : k;
    b_rows = tb == KF_TRANS ? n : k;
    b_cols = tb == KF_TRANS ? k : n;
    KF_TRY(kf__mat_ld(e, fn, a_rows, a_cols, lda, "lda", "A"));
    KF_TRY(kf__mat_ld(e, fn, b_rows, b_cols, ldb, "ldb", "B"));
    KF_TRY(kf__mat_ld(e, fn, m, n, ldc, "ldc", "C"));
    KF_TRY(kf__mat_finite(e, fn, alpha, "alpha"));
    KF_TRY(kf__mat_finite(e, fn, beta, "beta"));
    KF_TRY(kf__mat_disjoint(e, fn, c, m, n, ldc, "c", a, a_rows, a_cols, lda, "a"));
    KF_TRY(kf__mat_disjoint(e, fn, c, m, n, ldc, "c", b, b_rows, b_cols, ldb, "b"));
    kf__gemm(ta == KF_TRANS, tb == KF_TRANS, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    kf__clear(e);
    return KF_OK;
}

kf_status kf_syrk(kf_context *ctx, size_t k, size_t n, float alpha, const float *x, size_t ldx,
                  float beta, float *c, size_t ldc)
{
    static const char fn[] = "kf_syrk";
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    KF_TRY(kf__mat_ptr(e, fn, x, "x"));
    KF_TRY(kf__mat_ptr(e, fn, c, "c"));
    KF_TRY(kf__mat_dim(e, fn, n, "n"));
    KF_TRY(kf__mat_ld(e, fn, k, n, ldx, "ldx", "X"));
    KF_TRY(kf__mat_ld(e, fn, n, n, ldc, "ldc", "C"));
    KF_TRY(kf__mat_finite(e, fn, alpha, "alpha"));
    KF_TRY(kf__mat_finite(e, fn, beta, "beta"));
    KF_TRY(kf__mat_disjoint(e, fn, c, n, n, ldc, "c", x, k, n, ldx, "x"));
    kf__syrk(k, n, alpha, x, ldx, beta, c, ldc);
    kf__clear(e);
    return KF_OK;
}

kf_status kf_scale(kf_context *ctx, size_t rows, size_t cols, float alpha, float *x, size_t ldx)
{
    static const char fn[] = "kf_scale";
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    KF_TRY(kf__mat_ptr(e, fn, x, "x"));
    KF_TRY(kf__mat_dim(e, fn, rows, "rows"));
    KF_TRY(kf__mat_dim(e, fn, cols, "cols"));
    KF_TRY(kf__mat_ld(e, fn, rows, cols, ldx, "ldx", "X"));
    KF_TRY(kf__mat_finite(e, fn, alpha, "alpha"));
    for (size_t i = 0; i < rows; i++) {
        float *row = x + i * ldx;
        for (size_t j = 0; j < cols; j++) {
            row[j] *= alpha;
        }
    }
    kf__clear(e);
    return KF_OK;
}

kf_status kf_axpby(kf_context *ctx, size_t rows, size_t cols, float alpha, const float *x,
                   size_t ldx, float beta, float *y, size_t ldy)
{
    static const char fn[] = "kf_axpby";
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    KF_TRY(kf__mat_ptr(e, fn, x, "x"));
    KF_TRY(kf__mat_ptr(e, fn, y, "y"));
    KF_TRY(kf__mat_dim(e, fn, rows, "rows"));
    KF_TRY(kf__mat_dim(e, fn, cols, "cols"));
    KF_TRY(kf__mat_ld(e, fn, rows, cols, ldx, "ldx", "X"));
    KF_TRY(kf__mat_ld(e, fn, rows, cols, ldy, "ldy", "Y"));
    KF_TRY(kf__mat_finite(e, fn, alpha, "alpha"));
    KF_TRY(kf__mat_finite(e, fn, beta, "beta"));
    KF_TRY(kf__mat_disjoint(e, fn, y, rows, cols, ldy, "y", x, rows, cols, ldx, "x"));
    for (size_t i = 0; i < rows; i++) {
        const float *xr = x + i * ldx;
        float *yr = y + i * ldy;
        if (beta == 0.0f) {
            /* Y is not read, so NaN already in Y does not propagate. */
            for (size_t j = 0; j < cols; j++) {
                yr[j] = alpha * xr[j];
            }
        } else {
            for (size_t j = 0; j < cols; j++) {
                yr[j] = alpha * xr[j] + beta * yr[j];
            }
        }
    }
    kf__clear(e);
    return KF_OK;
}

kf_status kf_trace(kf_context *ctx, size_t n, const float *a, size_t lda, double *trace)
{
    static const char fn[] = "kf_trace";
    kf_errbuf *e;
    double s = 0.0;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    KF_TRY(kf__mat_ptr(e, fn, a, "a"));
    KF_TRY(kf__mat_ptr(e, fn, trace, "trace"));
    KF_TRY(kf__mat_dim(e, fn, n, "n"));
    KF_TRY(kf__mat_ld(e, fn, n, n, lda, "lda", "A"));
    for (size_t i = 0; i < n; i++) {
        s += (double)a[i * lda + i];
    }
    *trace = s;
    kf__clear(e);
    return KF_OK;
}
