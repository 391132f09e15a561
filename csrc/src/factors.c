/* Kronecker factor statistics and their normalised moving averages (DESIGN.md section 2). */
#include "kf_internal.h"
#include "kf_mat.h"

#include <math.h>
#include <string.h>

/* Shared validation of an N*R-row batch; *rows receives N*R. */
static kf_status check_batch(kf_errbuf *e, const char *fn, size_t n, size_t r, size_t width,
                             const float *x, size_t ldx, const char *xname, size_t *rows)
{
    if (n == 0 || r == 0) {
        return kf__fail(e, KF_ERR_SHAPE, "%s: n (%zu) and r (%zu) must be >= 1", fn, n, r);
    }
    if (!kf__mul_size(n, r, rows)) {
        return kf__fail(e, KF_ERR_SHAPE, "%s: n * r overflows", fn);
    }
    kf_status s = kf__check_mat(e, x, *rows, width, ldx, xname);
    if (s != KF_OK) {
        return kf__prefix(e, s, fn);
    }
    if (!kf__all_finite(*rows, width, x, ldx)) {
        return kf__fail(e, KF_ERR_NON_FINITE, "%s: %s contains NaN or Inf", fn, xname);
    }
    return KF_OK;
}

/* Writes out[n][j] = scale * sum_r x[n*R + r][j] (the shared axis collapsed), rows `width` apart. */
void kf__collapse_shared(size_t n, size_t r, size_t width, const float *x, size_t ldx,
                            float scale, float *out)
{
    for (size_t i = 0; i < n; i++) {
        float *o = out + i * width;
        memcpy(o, x + i * r * ldx, width * sizeof *o);
        for (size_t k = 1; k < r; k++) {
            const float *row = x + (i * r + k) * ldx;
            for (size_t j = 0; j < width; j++) {
                o[j] += row[j];
            }
        }
        for (size_t j = 0; j < width; j++) {
            o[j] *= scale;
        }
    }
}

kf_status kf_activation_factor(kf_context *ctx, size_t n, size_t r, size_t in,
                               const float *x, size_t ldx, int bias, kf_shared_mode mode,
                               float *a, size_t lda)
{
    static const char fn[] = "kf_activation_factor";
    size_t rows = 0, dim, ws_bytes = 0;
    float *work = NULL;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if (bias != 0 && bias != 1) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: bias must be 0 or 1, got %d", fn,
                        bias);
    }
    if (mode != KF_SHARED_EXPAND && mode != KF_SHARED_REDUCE) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: mode %d is not a kf_shared_mode",
                        fn, (int)mode);
    }
    if (in == 0) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "%s: in must be >= 1", fn);
    }
    dim = in + (size_t)bias;
    if ((s = kf__check_mat(&ctx->err, a, dim, dim, lda, "a")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if ((s = check_batch(&ctx->err, fn, n, r, in, x, ldx, "x", &rows)) != KF_OK) {
        return s;
    }
    if (kf__overlap(a, dim, lda, dim, x, rows, ldx, in)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: a overlaps x", fn);
    }
    if (mode == KF_SHARED_REDUCE && r > 1) {
        if (!kf__mul_size(n, in * sizeof(float), &ws_bytes)) {
            return kf__fail(&ctx->err, KF_ERR_OUT_OF_MEMORY, "%s: workspace size overflows", fn);
        }
        if (!(work = (float *)kf__ctx_work(ctx, ws_bytes))) {
            return KF_ERR_OUT_OF_MEMORY;
        }
    }
    kf__activation_factor_ws(n, r, in, x, ldx, bias, mode, NULL, 0.0f, 1.0f, a, lda, work);
    kf__clear(&ctx->err);
    return KF_OK;
}

/* The lower triangle of a (row stride lda) <- keep * prev (dim x dim, contiguous): the part of a
 * moving average that a symmetric rank-k update with beta = 1 then adds the batch to, so that the
 * fold costs no pass of its own. */
static void scale_lower(size_t dim, float keep, const float *prev, float *a, size_t lda)
{
    for (size_t i = 0; i < dim; i++) {
        const float *pr = prev + i * dim;
        float *ar = a + i * lda;
        for (size_t j = 0; j <= i; j++) {
            ar[j] = keep * pr[j];
        }
    }
}

void kf__activation_factor_ws(size_t n, size_t r, size_t in, const float *x, size_t ldx, int bias,
                              kf_shared_mode mode, const float *prev, float keep, float c, float *a,
                              size_t lda, float *work)
{
    const float *xs = x;
    size_t ldxs = ldx, m = n * r;
    float scale;
    if (mode == KF_SHARED_REDUCE && r > 1) {
        /* Reduce averages the inputs over the shared axis before the outer product. */
        kf__collapse_shared(n, r, in, x, ldx, 1.0f / (float)r, work);
        xs = work;
        ldxs = in;
        m = n;
    }
    scale = (float)((double)c / (double)m);
    if (prev) {
        scale_lower(in + (size_t)bias, keep, prev, a, lda);
        kf__syrk_lower(m, in, scale, xs, ldxs, 1.0f, a, lda);
    } else {
        kf__syrk(m, in, scale, xs, ldxs, 0.0f, a, lda);
    }
    if (bias) {
        /* The homogeneous coordinate: A[in][j] = A[j][in] = mean of x_j, A[in][in] = 1 (each
         * folded like the rest), the means formed in A's last row; folded, only that row. */
        float *last = a + in * lda;
        kf__colsum(m, in, scale, xs, ldxs, last);
        if (prev) {
            const float *prev_last = prev + in * (in + 1);
            for (size_t j = 0; j < in; j++) {
                last[j] += keep * prev_last[j];
            }
            last[in] = keep * prev_last[in] + c;
        } else {
            for (size_t j = 0; j < in; j++) {
                a[j * lda + in] = last[j];
            }
            last[in] = 1.0f;
        }
    }
}

kf_status kf_gradient_factor(kf_context *ctx, size_t n, size_t r, size_t out,
                             const float *g, size_t ldg, kf_shared_mode mode,
                             size_t loss_terms_per_example, float scale,
                             float *gf, size_t ldgf)
{
    static const char fn[] = "kf_gradient_factor";
    size_t rows = 0, ws_bytes = 0;
    float *work = NULL;
    double alpha;
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if (mode != KF_SHARED_EXPAND && mode != KF_SHARED_REDUCE) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: mode %d is not a kf_shared_mode",
                        fn, (int)mode);
    }
    if (loss_terms_per_example == 0) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: loss_terms_per_example must be >= 1", fn);
    }
    if (!isfinite(scale) || scale == 0.0f) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: scale must be finite and non-zero",
                        fn);
    }
    if (out == 0) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "%s: out must be >= 1", fn);
    }
    if ((s = kf__check_mat(&ctx->err, gf, out, out, ldgf, "gf")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if ((s = check_batch(&ctx->err, fn, n, r, out, g, ldg, "g", &rows)) != KF_OK) {
        return s;
    }
    if (kf__overlap(gf, out, ldgf, out, g, rows, ldg, out)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: gf overlaps g", fn);
    }
    alpha = (double)scale * (double)scale / ((double)n * (double)loss_terms_per_example);
    if (!(alpha > 0.0) || alpha > 3.0e38) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: scale^2 / (n * loss_terms_per_example) = %g is not representable", fn,
                        alpha);
    }
    if (mode == KF_SHARED_REDUCE && r > 1) {
        if (!kf__mul_size(n, out * sizeof(float), &ws_bytes)) {
            return kf__fail(&ctx->err, KF_ERR_OUT_OF_MEMORY, "%s: workspace size overflows", fn);
        }
        if (!(work = (float *)kf__ctx_work(ctx, ws_bytes))) {
            return KF_ERR_OUT_OF_MEMORY;
        }
    }
    kf__gradient_factor_ws(n, r, out, g, ldg, mode, (float)alpha, NULL, 0.0f, gf, ldgf, work);
    kf__clear(&ctx->err);
    return KF_OK;
}

void kf__gradient_factor_ws(size_t n, size_t r, size_t out, const float *g, size_t ldg,
                            kf_shared_mode mode, float alpha, const float *prev, float keep,
                            float *gf, size_t ldgf, float *work)
{
    const float *gs = g;
    size_t ldgs = ldg, m = n * r;
    if (mode == KF_SHARED_REDUCE && r > 1) {
        /* Reduce sums the gradients over the shared axis (their sum is the gradient of the pooled
         * output's loss). */
        kf__collapse_shared(n, r, out, g, ldg, 1.0f, work);
        gs = work;
        ldgs = out;
        m = n;
    }
    if (prev) {
        scale_lower(out, keep, prev, gf, ldgf);
        kf__syrk_lower(m, out, alpha, gs, ldgs, 1.0f, gf, ldgf);
    } else {
        kf__syrk(m, out, alpha, gs, ldgs, 0.0f, gf, ldgf);
    }
}

kf_status kf_factor_ema_update(kf_context *ctx, size_t dim, float decay,
                               const float *batch, size_t ldb,
                               float *avg, size_t ld_avg, double *weight)
{
    static const char fn[] = "kf_factor_ema_update";
    kf_status s;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = kf__check_mat(&ctx->err, batch, dim, dim, ldb, "batch")) != KF_OK ||
        (s = kf__check_mat(&ctx->err, avg, dim, dim, ld_avg, "avg")) != KF_OK ||
        (s = kf__check_ptr(&ctx->err, weight, "weight")) != KF_OK) {
        return kf__prefix(&ctx->err, s, fn);
    }
    if (!(decay >= 0.0f && decay < 1.0f)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: decay (%g) must be in [0, 1)", fn,
                        (double)decay);
    }
    if (!(*weight >= 0.0) || !isfinite(*weight)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "%s: *weight (%g) must be finite and >= 0 (0 before the first update)", fn,
                        *weight);
    }
    if (kf__overlap(batch, dim, ldb, dim, avg, dim, ld_avg, dim) && batch != avg) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: avg partially overlaps batch", fn);
    }
    if (!kf__all_finite(dim, dim, batch, ldb)) {
        return kf__fail(&ctx->err, KF_ERR_NON_FINITE, "%s: batch contains NaN or Inf", fn);
    }
    kf__ema_fold(dim, decay, batch, ldb, avg, ld_avg, weight);
    kf__clear(&ctx->err);
    return KF_OK;
}

void kf__ema_fold(size_t dim, float decay, const float *batch, size_t ldb, float *avg,
                  size_t ld_avg, double *weight)
{
    double w = (double)decay * *weight + 1.0;
    if (*weight == 0.0) {
        /* First update: the average is the batch; avg is not read (it may hold garbage). */
        for (size_t i = 0; i < dim; i++) {
            memmove(avg + i * ld_avg, batch + i * ldb, dim * sizeof *avg);
        }
    } else {
        const float c = (float)(1.0 / w), keep = (float)(1.0 - 1.0 / w);
        for (size_t i = 0; i < dim; i++) {
            float *ar = avg + i * ld_avg;
            const float *br = batch + i * ldb;
            for (size_t j = 0; j < dim; j++) {
                ar[j] = keep * ar[j] + c * br[j];
            }
        }
    }
    *weight = w;
}
