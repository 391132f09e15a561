/* 2-D convolutions: im2col/col2im against direct index loops, their adjointness, the forward pass
 * against a direct 7-loop convolution, the backward pass against central differences of a double
 * reference, the rows layout of output gradients, and every error path. */
#include "kf_test.h"

typedef struct conv_case {
    size_t n, c, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw;
} conv_case;

/* Stride, padding, dilation, non-square inputs and kernels, C_in > 1, padding wider than the
 * kernel reach, a 1x1 kernel, and a kernel as large as the padded input. */
static const conv_case cases[] = {
    {1, 1, 5, 5, 1, 3, 3, 1, 1, 0, 0, 1, 1},
    {2, 3, 6, 7, 4, 3, 2, 1, 1, 1, 0, 1, 1},
    {3, 2, 7, 5, 3, 3, 3, 2, 1, 1, 2, 1, 1},
    {2, 2, 9, 8, 2, 3, 2, 2, 3, 2, 1, 2, 3},
    {1, 4, 4, 6, 5, 1, 1, 1, 2, 0, 1, 1, 1},
    {2, 1, 3, 4, 2, 5, 6, 1, 1, 1, 1, 1, 1},
    {2, 3, 8, 8, 3, 2, 2, 2, 2, 0, 0, 1, 1},
    {1, 2, 5, 4, 2, 2, 3, 3, 2, 3, 3, 2, 1},
};
#define NCASES (sizeof cases / sizeof cases[0])

static kf_conv2d_shape shape_of(const conv_case *k)
{
    kf_conv2d_shape s;
    kf_conv2d_shape_init(&s, k->n, k->c, k->h, k->w, k->co, k->kh, k->kw);
    s.stride_h = k->sh;
    s.stride_w = k->sw;
    s.pad_h = k->ph;
    s.pad_w = k->pw;
    s.dilation_h = k->dh;
    s.dilation_w = k->dw;
    return s;
}

static size_t out_len(size_t in, size_t kernel, size_t stride, size_t pad, size_t dil)
{
    return (in + 2 * pad - dil * (kernel - 1) - 1) / stride + 1;
}

/* The input element a patch entry reads, in signed arithmetic; -1 in the padding. */
static long tap(const conv_case *k, size_t oh, size_t ow, size_t c, size_t i, size_t j)
{
    long ih = (long)(oh * k->sh) - (long)k->ph + (long)(i * k->dh);
    long iw = (long)(ow * k->sw) - (long)k->pw + (long)(j * k->dw);
    if (ih < 0 || iw < 0 || ih >= (long)k->h || iw >= (long)k->w) {
        return -1;
    }
    return ((long)c * (long)k->h + ih) * (long)k->w + iw;
}

/* Direct convolution in double: 7 nested loops over n, o, oh, ow, c, kh, kw. */
static void conv_ref(const conv_case *k, const double *x, const double *w, const double *b,
                     double *y)
{
    size_t oh_n = out_len(k->h, k->kh, k->sh, k->ph, k->dh);
    size_t ow_n = out_len(k->w, k->kw, k->sw, k->pw, k->dw);
    size_t kk = k->c * k->kh * k->kw;
    for (size_t n = 0; n < k->n; n++) {
        for (size_t o = 0; o < k->co; o++) {
            for (size_t oh = 0; oh < oh_n; oh++) {
                for (size_t ow = 0; ow < ow_n; ow++) {
                    double acc = b ? b[o] : 0.0;
                    for (size_t c = 0; c < k->c; c++) {
                        for (size_t i = 0; i < k->kh; i++) {
                            for (size_t j = 0; j < k->kw; j++) {
                                long t = tap(k, oh, ow, c, i, j);
                                if (t >= 0) {
                                    acc += w[o * kk + (c * k->kh + i) * k->kw + j] *
                                           x[n * k->c * k->h * k->w + (size_t)t];
                                }
                            }
                        }
                    }
                    y[((n * k->co + o) * oh_n + oh) * ow_n + ow] = acc;
                }
            }
        }
    }
}

static double *to_double(const float *v, size_t len)
{
    double *d = (double *)kf_test_xmalloc(len * sizeof(double));
    for (size_t i = 0; i < len; i++) {
        d[i] = v[i];
    }
    return d;
}

static void test_output_size(kf_context *ctx)
{
    kf_conv2d_shape s;
    size_t oh = 0, ow = 0;
    CHECK_STATUS(kf_conv2d_shape_init(&s, 2, 3, 7, 10, 4, 3, 5), KF_OK);
    CHECK(s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0 &&
          s.dilation_h == 1 && s.dilation_w == 1);
    CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh, &ow), KF_OK);
    CHECK(oh == 5 && ow == 6);
    s.stride_h = 2;
    s.pad_h = 1;
    s.dilation_w = 2;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh, &ow), KF_OK);
    CHECK(oh == 4 && ow == 2); /* (7 + 2 - 3) / 2 + 1 = 4; 10 - 2*4 - 1 + 1 = 2 */
    for (size_t i = 0; i < NCASES; i++) {
        kf_conv2d_shape t = shape_of(&cases[i]);
        CHECK_STATUS(kf_conv2d_output_size(ctx, &t, &oh, &ow), KF_OK);
        CHECK(oh == out_len(t.height, t.kernel_h, t.stride_h, t.pad_h, t.dilation_h));
        CHECK(ow == out_len(t.width, t.kernel_w, t.stride_w, t.pad_w, t.dilation_w));
    }
}

static void test_im2col_col2im(kf_context *ctx, kf_rng *rng)
{
    for (size_t ci = 0; ci < NCASES; ci++) {
        const conv_case *k = &cases[ci];
        kf_conv2d_shape s = shape_of(k);
        size_t oh_n = 0, ow_n = 0;
        CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh_n, &ow_n), KF_OK);
        size_t r = oh_n * ow_n, kk = k->c * k->kh * k->kw, ld = kk + 3, rows = k->n * r;
        size_t xlen = k->n * k->c * k->h * k->w;
        float *x = (float *)kf_test_xmalloc(xlen * sizeof(float));
        float *col = (float *)kf_test_xmalloc(rows * ld * sizeof(float));
        float *c2 = (float *)kf_test_xmalloc(rows * ld * sizeof(float));
        float *dx = (float *)kf_test_xmalloc(xlen * sizeof(float));
        double *want = (double *)kf_test_xmalloc(xlen * sizeof(double));
        kf_rng_fill(rng, x, xlen);
        for (size_t i = 0; i < rows * ld; i++) {
            col[i] = -7.0f; /* the gaps between rows must stay untouched */
        }
        CHECK_STATUS(kf_im2col(ctx, &s, x, col, ld), KF_OK);
        {
            int exact = 1, gaps = 1;
            for (size_t n = 0; n < k->n; n++) {
                for (size_t oh = 0; oh < oh_n; oh++) {
                    for (size_t ow = 0; ow < ow_n; ow++) {
                        const float *row = col + (n * r + oh * ow_n + ow) * ld;
                        for (size_t c = 0; c < k->c; c++) {
                            for (size_t i = 0; i < k->kh; i++) {
                                for (size_t j = 0; j < k->kw; j++) {
                                    long t = tap(k, oh, ow, c, i, j);
                                    float v = t < 0 ? 0.0f : x[n * k->c * k->h * k->w + (size_t)t];
                                    exact &= row[(c * k->kh + i) * k->kw + j] == v;
                                }
                            }
                        }
                        for (size_t j = kk; j < ld; j++) {
                            gaps &= row[j] == -7.0f;
                        }
                    }
                }
            }
            CHECK(exact);
            CHECK(gaps);
        }
        /* col2im against a direct scatter, then the adjoint identity in double. */
        kf_rng_fill(rng, c2, rows * ld);
        for (size_t i = 0; i < xlen; i++) {
            dx[i] = NAN; /* overwritten, not read */
        }
        CHECK_STATUS(kf_col2im(ctx, &s, c2, ld, dx), KF_OK);
        memset(want, 0, xlen * sizeof(double));
        for (size_t n = 0; n < k->n; n++) {
            for (size_t oh = 0; oh < oh_n; oh++) {
                for (size_t ow = 0; ow < ow_n; ow++) {
                    const float *row = c2 + (n * r + oh * ow_n + ow) * ld;
                    for (size_t c = 0; c < k->c; c++) {
                        for (size_t i = 0; i < k->kh; i++) {
                            for (size_t j = 0; j < k->kw; j++) {
                                long t = tap(k, oh, ow, c, i, j);
                                if (t >= 0) {
                                    want[n * k->c * k->h * k->w + (size_t)t] +=
                                        row[(c * k->kh + i) * k->kw + j];
                                }
                            }
                        }
                    }
                }
            }
        }
        kf_test_close("col2im", 1, xlen, dx, xlen, want, xlen, 1e-5, 1e-6);
        {
            double lhs = 0.0, rhs = 0.0;
            for (size_t i = 0; i < rows; i++) {
                for (size_t j = 0; j < kk; j++) {
                    lhs += (double)col[i * ld + j] * (double)c2[i * ld + j];
                }
            }
            for (size_t i = 0; i < xlen; i++) {
                rhs += (double)x[i] * (double)dx[i];
            }
            CHECK(fabs(lhs - rhs) <= 1e-5 * (1.0 + fabs(lhs)));
        }
        free(x);
        free(col);
        free(c2);
        free(dx);
        free(want);
    }
}

static void test_forward(kf_context *ctx, kf_rng *rng)
{
    for (size_t ci = 0; ci < NCASES; ci++) {
        const conv_case *k = &cases[ci];
        kf_conv2d_shape s = shape_of(k);
        size_t oh_n = 0, ow_n = 0;
        CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh_n, &ow_n), KF_OK);
        size_t r = oh_n * ow_n, kk = k->c * k->kh * k->kw, ld = kk + 1, ldw = kk + 2;
        size_t xlen = k->n * k->c * k->h * k->w, ylen = k->n * k->co * r;
        float *x = (float *)kf_test_xmalloc(xlen * sizeof(float));
        float *w = (float *)kf_test_xmalloc(k->co * ldw * sizeof(float));
        float *b = (float *)kf_test_xmalloc(k->co * sizeof(float));
        float *y = (float *)kf_test_xmalloc(ylen * sizeof(float));
        float *col = (float *)kf_test_xmalloc(k->n * r * ld * sizeof(float));
        float *col2 = (float *)kf_test_xmalloc(k->n * r * ld * sizeof(float));
        double *wd = (double *)kf_test_xmalloc(k->co * kk * sizeof(double));
        double *yd = (double *)kf_test_xmalloc(ylen * sizeof(double));
        double *xd, *bd;
        kf_rng_fill(rng, x, xlen);
        kf_rng_fill(rng, w, k->co * ldw);
        kf_rng_fill(rng, b, k->co);
        xd = to_double(x, xlen);
        bd = to_double(b, k->co);
        for (size_t o = 0; o < k->co; o++) {
            for (size_t j = 0; j < kk; j++) {
                wd[o * kk + j] = w[o * ldw + j];
            }
        }
        for (int with_bias = 0; with_bias <= 1; with_bias++) {
            for (int with_col = 0; with_col <= 1; with_col++) {
                for (size_t i = 0; i < ylen; i++) {
                    y[i] = NAN; /* overwritten, not read */
                }
                CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, ldw, with_bias ? b : NULL,
                                               with_col ? col : NULL, ld, y),
                             KF_OK);
                conv_ref(k, xd, wd, with_bias ? bd : NULL, yd);
                kf_test_close("conv2d forward", 1, ylen, y, ylen, yd, ylen, 1e-5, 1e-5);
            }
        }
        /* The patches the forward pass leaves in col are those of kf_im2col. */
        CHECK_STATUS(kf_im2col(ctx, &s, x, col2, ld), KF_OK);
        {
            int same = 1;
            for (size_t i = 0; i < k->n * r; i++) {
                same &= memcmp(col + i * ld, col2 + i * ld, kk * sizeof(float)) == 0;
            }
            CHECK(same);
        }
        free(x);
        free(w);
        free(b);
        free(y);
        free(col);
        free(col2);
        free(wd);
        free(yd);
        free(xd);
        free(bd);
    }
}

/* L(x, w, b) = <dy, conv(x, w, b)> in double; its gradients are what backward computes. */
static double loss_ref(const conv_case *k, const double *x, const double *w, const double *b,
                       const double *dy, double *scratch, size_t ylen)
{
    double l = 0.0;
    conv_ref(k, x, w, b, scratch);
    for (size_t i = 0; i < ylen; i++) {
        l += dy[i] * scratch[i];
    }
    return l;
}

static void test_backward(kf_context *ctx, kf_rng *rng)
{
    const double step = 1e-3;
    for (size_t ci = 0; ci < NCASES; ci++) {
        const conv_case *k = &cases[ci];
        kf_conv2d_shape s = shape_of(k);
        size_t oh_n = 0, ow_n = 0;
        CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh_n, &ow_n), KF_OK);
        size_t r = oh_n * ow_n, kk = k->c * k->kh * k->kw, ld = kk + 2, ldw = kk + 1, lddw = kk + 3;
        size_t xlen = k->n * k->c * k->h * k->w, ylen = k->n * k->co * r, wlen = k->co * kk;
        float *x = (float *)kf_test_xmalloc(xlen * sizeof(float));
        float *w = (float *)kf_test_xmalloc(k->co * ldw * sizeof(float));
        float *dy = (float *)kf_test_xmalloc(ylen * sizeof(float));
        float *col = (float *)kf_test_xmalloc(k->n * r * ld * sizeof(float));
        float *dw = (float *)kf_test_xmalloc(k->co * lddw * sizeof(float));
        float *db = (float *)kf_test_xmalloc(k->co * sizeof(float));
        float *dx = (float *)kf_test_xmalloc(xlen * sizeof(float));
        double *wd = (double *)kf_test_xmalloc(wlen * sizeof(double));
        double *bd = (double *)kf_test_xmalloc(k->co * sizeof(double));
        double *scratch = (double *)kf_test_xmalloc(ylen * sizeof(double));
        double *gw = (double *)kf_test_xmalloc(wlen * sizeof(double));
        double *gb = (double *)kf_test_xmalloc(k->co * sizeof(double));
        double *gx = (double *)kf_test_xmalloc(xlen * sizeof(double));
        double *xd, *dyd;
        kf_rng_fill(rng, x, xlen);
        kf_rng_fill(rng, w, k->co * ldw);
        kf_rng_fill(rng, dy, ylen);
        xd = to_double(x, xlen);
        dyd = to_double(dy, ylen);
        for (size_t o = 0; o < k->co; o++) {
            bd[o] = 0.1 * (double)o;
            for (size_t j = 0; j < kk; j++) {
                wd[o * kk + j] = w[o * ldw + j];
            }
        }
        /* Central differences: L is linear in each argument, so they are exact up to rounding. */
        for (size_t i = 0; i < wlen; i++) {
            double keep = wd[i], lp, lm;
            wd[i] = keep + step;
            lp = loss_ref(k, xd, wd, bd, dyd, scratch, ylen);
            wd[i] = keep - step;
            lm = loss_ref(k, xd, wd, bd, dyd, scratch, ylen);
            wd[i] = keep;
            gw[i] = (lp - lm) / (2.0 * step);
        }
        for (size_t i = 0; i < k->co; i++) {
            double keep = bd[i], lp, lm;
            bd[i] = keep + step;
            lp = loss_ref(k, xd, wd, bd, dyd, scratch, ylen);
            bd[i] = keep - step;
            lm = loss_ref(k, xd, wd, bd, dyd, scratch, ylen);
            bd[i] = keep;
            gb[i] = (lp - lm) / (2.0 * step);
        }
        for (size_t i = 0; i < xlen; i++) {
            double keep = xd[i], lp, lm;
            xd[i] = keep + step;
            lp = loss_ref(k, xd, wd, bd, dyd, scratch, ylen);
            xd[i] = keep - step;
            lm = loss_ref(k, xd, wd, bd, dyd, scratch, ylen);
            xd[i] = keep;
            gx[i] = (lp - lm) / (2.0 * step);
        }
        CHECK_STATUS(kf_im2col(ctx, &s, x, col, ld), KF_OK);
        for (int variant = 0; variant < 3; variant++) {
            /* 0: patches rebuilt from x, every output; 1: patches from col (x NULL); 2: dw only. */
            for (size_t i = 0; i < k->co * lddw; i++) {
                dw[i] = NAN;
            }
            for (size_t i = 0; i < xlen; i++) {
                dx[i] = NAN;
            }
            for (size_t i = 0; i < k->co; i++) {
                db[i] = NAN;
            }
            CHECK_STATUS(kf_conv2d_backward(ctx, &s, variant == 1 ? NULL : x,
                                            variant == 1 ? col : NULL, ld, dy, w, ldw, dw, lddw,
                                            variant == 2 ? NULL : db, variant == 2 ? NULL : dx),
                         KF_OK);
            kf_test_close("conv2d backward dw", k->co, kk, dw, lddw, gw, kk, 1e-4, 1e-5);
            if (variant == 2) {
                int untouched = 1;
                for (size_t i = 0; i < xlen; i++) {
                    untouched &= isnan(dx[i]);
                }
                CHECK(untouched);
            } else {
                kf_test_close("conv2d backward db", 1, k->co, db, k->co, gb, k->co, 1e-4, 1e-5);
                kf_test_close("conv2d backward dx", 1, xlen, dx, xlen, gx, xlen, 1e-4, 1e-5);
            }
        }
        free(x);
        free(w);
        free(dy);
        free(col);
        free(dw);
        free(db);
        free(dx);
        free(wd);
        free(bd);
        free(scratch);
        free(gw);
        free(gb);
        free(gx);
        free(xd);
        free(dyd);
    }
}

static void test_output_rows(kf_context *ctx, kf_rng *rng)
{
    for (size_t ci = 0; ci < NCASES; ci++) {
        const conv_case *k = &cases[ci];
        kf_conv2d_shape s = shape_of(k);
        size_t oh_n = 0, ow_n = 0;
        CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh_n, &ow_n), KF_OK);
        size_t r = oh_n * ow_n, ylen = k->n * k->co * r, ldg = k->co + 2;
        float *dy = (float *)kf_test_xmalloc(ylen * sizeof(float));
        float *g = (float *)kf_test_xmalloc(k->n * r * ldg * sizeof(float));
        int exact = 1;
        kf_rng_fill(rng, dy, ylen);
        CHECK_STATUS(kf_conv2d_output_rows(ctx, &s, dy, g, ldg), KF_OK);
        for (size_t n = 0; n < k->n; n++) {
            for (size_t o = 0; o < k->co; o++) {
                for (size_t t = 0; t < r; t++) {
                    exact &= g[(n * r + t) * ldg + o] == dy[(n * k->co + o) * r + t];
                }
            }
        }
        CHECK(exact);
        free(dy);
        free(g);
    }
}

/* The factor functions see a conv layer through its patch rows: the expand activation factor of
 * the patch matrix is (1/(N R)) sum of the patch outer products, computed here directly. */
static void test_patches_feed_the_factors(kf_context *ctx, kf_rng *rng)
{
    const conv_case *k = &cases[1];
    kf_conv2d_shape s = shape_of(k);
    size_t oh_n = 0, ow_n = 0;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh_n, &ow_n), KF_OK);
    size_t r = oh_n * ow_n, kk = k->c * k->kh * k->kw, xlen = k->n * k->c * k->h * k->w;
    float *x = (float *)kf_test_xmalloc(xlen * sizeof(float));
    float *col = (float *)kf_test_xmalloc(k->n * r * kk * sizeof(float));
    float *a = (float *)kf_test_xmalloc(kk * kk * sizeof(float));
    double *want = (double *)kf_test_xmalloc(kk * kk * sizeof(double));
    kf_rng_fill(rng, x, xlen);
    CHECK_STATUS(kf_im2col(ctx, &s, x, col, kk), KF_OK);
    CHECK_STATUS(kf_activation_factor(ctx, k->n, r, kk, col, kk, 0, KF_SHARED_EXPAND, a, kk),
                 KF_OK);
    for (size_t p = 0; p < kk; p++) {
        for (size_t q = 0; q < kk; q++) {
            double acc = 0.0;
            for (size_t n = 0; n < k->n; n++) {
                for (size_t oh = 0; oh < oh_n; oh++) {
                    for (size_t ow = 0; ow < ow_n; ow++) {
                        /* Patch entries p = (c, i, j) straight from x. */
                        size_t cp = p / (k->kh * k->kw), ip = p / k->kw % k->kh, jp = p % k->kw;
                        size_t cq = q / (k->kh * k->kw), iq = q / k->kw % k->kh, jq = q % k->kw;
                        long tp = tap(k, oh, ow, cp, ip, jp), tq = tap(k, oh, ow, cq, iq, jq);
                        const float *xn = x + n * k->c * k->h * k->w;
                        if (tp >= 0 && tq >= 0) {
                            acc += (double)xn[tp] * (double)xn[tq];
                        }
                    }
                }
            }
            want[p * kk + q] = acc / (double)(k->n * r);
        }
    }
    kf_test_close("activation factor of patches", kk, kk, a, kk, want, kk, 1e-5, 1e-6);
    free(x);
    free(col);
    free(a);
    free(want);
}

/* As in kf_gemm, values are not inspected: a NaN in x reaches exactly the outputs that read it
 * (the factor functions, not the conv kernels, report non-finite statistics). */
static void test_values_not_inspected(kf_context *ctx)
{
    kf_conv2d_shape s;
    float x[16] = {0}, w[4] = {1, 1, 1, 1}, y[9], col[9 * 4];
    kf_conv2d_shape_init(&s, 1, 1, 4, 4, 1, 2, 2); /* 3 x 3 output, stride 1 */
    x[0] = NAN;                                     /* read only by the patch at (0, 0) */
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, 4, NULL, col, 4, y), KF_OK);
    CHECK(isnan(y[0]) && isnan(col[0]));
    {
        int rest = 1;
        for (int i = 1; i < 9; i++) {
            rest &= y[i] == 0.0f;
        }
        CHECK(rest);
    }
    {
        float a[25];
        CHECK_STATUS(kf_activation_factor(ctx, 1, 9, 4, col, 4, 1, KF_SHARED_EXPAND, a, 5),
                     KF_ERR_NON_FINITE);
    }
}

/* An allocator that fails every allocation after the first `budget` ones. */
typedef struct stingy {
    int budget;
} stingy;

static void *stingy_alloc(size_t size, void *ctx)
{
    stingy *st = (stingy *)ctx;
    if (st->budget <= 0) {
        return NULL;
    }
    st->budget--;
    return malloc(size);
}

static void stingy_free(void *p, size_t size, void *ctx)
{
    (void)size;
    (void)ctx;
    free(p);
}

static void test_errors(kf_context *ctx)
{
    /* Shape: N=2, C_in=2, 4x5 input, C_out=3, 3x2 kernel, padding 1 x 0: OH = 4, OW = 4, R = 16,
     * in = 12, rows = 32. */
    kf_conv2d_shape s, bad;
    enum { XL = 2 * 2 * 4 * 5, K = 12, ROWS = 32, YL = 2 * 3 * 16 };
    static float x[XL], w[3 * K], b[3], dy[YL];
    static float col[ROWS * K], col_s[ROWS * K], y[YL], y_s[YL], dw[3 * K], dw_s[3 * K];
    static float db[3], db_s[3], dx[XL], dx_s[XL], g[ROWS * 3], g_s[ROWS * 3];
    size_t oh = 77, ow = 77;
    kf_rng rng = {0xC0FFEEULL};
    kf_rng_fill(&rng, x, XL);
    kf_rng_fill(&rng, w, 3 * K);
    kf_rng_fill(&rng, b, 3);
    kf_rng_fill(&rng, dy, YL);
    kf_rng_fill(&rng, col_s, ROWS * K);
    kf_rng_fill(&rng, y_s, YL);
    kf_rng_fill(&rng, dw_s, 3 * K);
    kf_rng_fill(&rng, db_s, 3);
    kf_rng_fill(&rng, dx_s, XL);
    kf_rng_fill(&rng, g_s, ROWS * 3);
#define RESET()                                  \
    do {                                         \
        memcpy(col, col_s, sizeof col);          \
        memcpy(y, y_s, sizeof y);                \
        memcpy(dw, dw_s, sizeof dw);             \
        memcpy(db, db_s, sizeof db);             \
        memcpy(dx, dx_s, sizeof dx);             \
        memcpy(g, g_s, sizeof g);                \
    } while (0)
#define UNCHANGED()                                                                    \
    CHECK(memcmp(col, col_s, sizeof col) == 0 && memcmp(y, y_s, sizeof y) == 0 &&      \
          memcmp(dw, dw_s, sizeof dw) == 0 && memcmp(db, db_s, sizeof db) == 0 &&      \
          memcmp(dx, dx_s, sizeof dx) == 0 && memcmp(g, g_s, sizeof g) == 0)
#define HAS_MSG(word) CHECK(strstr(kf_context_last_error(ctx), word) != NULL)
    RESET();
    CHECK_STATUS(kf_conv2d_shape_init(NULL, 1, 1, 1, 1, 1, 1, 1), KF_ERR_NULL_POINTER);
    kf_conv2d_shape_init(&s, 2, 2, 4, 5, 3, 3, 2);
    s.pad_h = 1;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh, &ow), KF_OK);
    CHECK(oh == 4 && ow == 4);

    /* The shape, through every function. */
    oh = ow = 77;
    CHECK_STATUS(kf_conv2d_output_size(NULL, &s, &oh, &ow), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_output_size(ctx, NULL, &oh, &ow), KF_ERR_NULL_POINTER);
    HAS_MSG("shape is NULL");
    CHECK_STATUS(kf_conv2d_output_size(ctx, &s, NULL, &ow), KF_ERR_NULL_POINTER);
    HAS_MSG("out_h");
    CHECK_STATUS(kf_conv2d_output_size(ctx, &s, &oh, NULL), KF_ERR_NULL_POINTER);
    HAS_MSG("out_w");
    {
        /* Each size field zeroed in turn. */
        size_t *fields[7];
        const char *names[7] = {"batch", "in_channels", "height", "width", "out_channels",
                                "kernel_h", "kernel_w"};
        for (int f = 0; f < 7; f++) {
            bad = s;
            fields[0] = &bad.batch;
            fields[1] = &bad.in_channels;
            fields[2] = &bad.height;
            fields[3] = &bad.width;
            fields[4] = &bad.out_channels;
            fields[5] = &bad.kernel_h;
            fields[6] = &bad.kernel_w;
            *fields[f] = 0;
            CHECK_STATUS(kf_conv2d_output_size(ctx, &bad, &oh, &ow), KF_ERR_SHAPE);
            HAS_MSG(names[f]);
            CHECK_STATUS(kf_im2col(ctx, &bad, x, col, K), KF_ERR_SHAPE);
            CHECK_STATUS(kf_col2im(ctx, &bad, col_s, K, dx), KF_ERR_SHAPE);
            CHECK_STATUS(kf_conv2d_forward(ctx, &bad, x, w, K, b, col, K, y), KF_ERR_SHAPE);
            CHECK_STATUS(kf_conv2d_backward(ctx, &bad, x, NULL, K, dy, w, K, dw, K, db, dx),
                         KF_ERR_SHAPE);
            CHECK_STATUS(kf_conv2d_output_rows(ctx, &bad, dy, g, 3), KF_ERR_SHAPE);
        }
    }
    bad = s;
    bad.stride_w = 0;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &bad, &oh, &ow), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("stride");
    bad = s;
    bad.dilation_h = 0;
    CHECK_STATUS(kf_im2col(ctx, &bad, x, col, K), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("dilation");
    /* The output would be empty: a 3-row kernel on 2 unpadded rows, or dilated past the input. */
    bad = s;
    bad.pad_h = 0;
    bad.height = 2;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &bad, &oh, &ow), KF_ERR_SHAPE);
    HAS_MSG("output height");
    bad = s;
    bad.dilation_w = 5; /* 5 * (2 - 1) + 1 = 6 > 5 */
    CHECK_STATUS(kf_conv2d_forward(ctx, &bad, x, w, K, b, NULL, 0, y), KF_ERR_SHAPE);
    HAS_MSG("output width");
    /* Sizes whose tensors cannot be addressed. */
    bad = s;
    bad.batch = SIZE_MAX / 4;
    CHECK_STATUS(kf_im2col(ctx, &bad, x, col, K), KF_ERR_SHAPE);
    HAS_MSG("too large");
    bad = s;
    bad.pad_w = SIZE_MAX / 2;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &bad, &oh, &ow), KF_ERR_SHAPE);
    bad = s;
    bad.dilation_h = SIZE_MAX / 2;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &bad, &oh, &ow), KF_ERR_SHAPE);
    bad = s;
    bad.height = SIZE_MAX - 1;
    CHECK_STATUS(kf_conv2d_output_size(ctx, &bad, &oh, &ow), KF_ERR_SHAPE);
    CHECK(oh == 77 && ow == 77);

    /* kf_im2col */
    CHECK_STATUS(kf_im2col(NULL, &s, x, col, K), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_im2col(ctx, NULL, x, col, K), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_im2col(ctx, &s, NULL, col, K), KF_ERR_NULL_POINTER);
    HAS_MSG("x is NULL");
    CHECK_STATUS(kf_im2col(ctx, &s, x, NULL, K), KF_ERR_NULL_POINTER);
    HAS_MSG("col");
    CHECK_STATUS(kf_im2col(ctx, &s, x, col, K - 1), KF_ERR_SHAPE);
    HAS_MSG("col");
    CHECK_STATUS(kf_im2col(ctx, &s, x, x + 1, K), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("overlaps");
    UNCHANGED();

    /* kf_col2im */
    CHECK_STATUS(kf_col2im(NULL, &s, col_s, K, dx), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_col2im(ctx, NULL, col_s, K, dx), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_col2im(ctx, &s, NULL, K, dx), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_col2im(ctx, &s, col_s, K, NULL), KF_ERR_NULL_POINTER);
    HAS_MSG("dx");
    CHECK_STATUS(kf_col2im(ctx, &s, col_s, 5, dx), KF_ERR_SHAPE);
    CHECK_STATUS(kf_col2im(ctx, &s, col, K, col + 7), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("overlaps");
    UNCHANGED();

    /* kf_conv2d_forward */
    CHECK_STATUS(kf_conv2d_forward(NULL, &s, x, w, K, b, col, K, y), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_forward(ctx, NULL, x, w, K, b, col, K, y), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, NULL, w, K, b, col, K, y), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, NULL, K, b, col, K, y), KF_ERR_NULL_POINTER);
    HAS_MSG("w is NULL");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, K, b, col, K, NULL), KF_ERR_NULL_POINTER);
    HAS_MSG("y");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, K - 1, b, col, K, y), KF_ERR_SHAPE);
    HAS_MSG("w");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, K, b, col, K - 2, y), KF_ERR_SHAPE);
    HAS_MSG("col");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, K, b, col, K, col + 3), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("y overlaps col");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, y, w, K, b, col, K, y), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("y overlaps x");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, w, K, y + 5, NULL, 0, y), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("bias");
    CHECK_STATUS(kf_conv2d_forward(ctx, &s, x, col + 4, K, b, col, K, y), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("col overlaps w");
    UNCHANGED();

    /* kf_conv2d_backward */
    CHECK_STATUS(kf_conv2d_backward(NULL, &s, x, NULL, 0, dy, w, K, dw, K, db, dx),
                 KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_backward(ctx, NULL, x, NULL, 0, dy, w, K, dw, K, db, dx),
                 KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, NULL, NULL, 0, dy, w, K, dw, K, db, dx),
                 KF_ERR_NULL_POINTER);
    HAS_MSG("x and col");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, NULL, w, K, dw, K, db, dx),
                 KF_ERR_NULL_POINTER);
    HAS_MSG("dy");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, NULL, K, dw, K, db, dx),
                 KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, w, K, NULL, K, db, dx),
                 KF_ERR_NULL_POINTER);
    HAS_MSG("dw");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, w, K, dw, K - 1, db, dx),
                 KF_ERR_SHAPE);
    HAS_MSG("dw");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, w, 3, dw, K, db, dx), KF_ERR_SHAPE);
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, NULL, col_s, 11, dy, w, K, dw, K, db, dx),
                 KF_ERR_SHAPE);
    HAS_MSG("col");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, w, K, dw, K, db, x + 2),
                 KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("dx overlaps x");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, w, K, dw, K, dw + 1, dx),
                 KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("db overlaps dw");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, x, NULL, 0, dy, w, K, dy, K, db, dx),
                 KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("dw overlaps dy");
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, NULL, col, K, dy, w, K, dw, K, db, col + 1),
                 KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("dx overlaps col");
    UNCHANGED();
    /* With col given, x is not read: dx may then share memory with the (unused) x. */
    memcpy(col, col_s, sizeof col);
    CHECK_STATUS(kf_im2col(ctx, &s, x, col, K), KF_OK);
    CHECK_STATUS(kf_conv2d_backward(ctx, &s, dx, col, K, dy, w, K, dw, K, db, dx), KF_OK);
    RESET();

    /* kf_conv2d_output_rows */
    CHECK_STATUS(kf_conv2d_output_rows(NULL, &s, dy, g, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_output_rows(ctx, NULL, dy, g, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_output_rows(ctx, &s, NULL, g, 3), KF_ERR_NULL_POINTER);
    HAS_MSG("dy");
    CHECK_STATUS(kf_conv2d_output_rows(ctx, &s, dy, NULL, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_conv2d_output_rows(ctx, &s, dy, g, 2), KF_ERR_SHAPE);
    HAS_MSG("g");
    CHECK_STATUS(kf_conv2d_output_rows(ctx, &s, g, g, 3), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("overlaps");
    UNCHANGED();

    /* Workspace allocation failure: reported, nothing written, the context stays usable. */
    {
        stingy st = {1}; /* the context itself, then nothing */
        kf_allocator al = {stingy_alloc, stingy_free, &st};
        kf_context *poor = NULL;
        CHECK_STATUS(kf_context_create(&al, &poor), KF_OK);
        if (poor) {
            CHECK_STATUS(kf_conv2d_forward(poor, &s, x, w, K, b, NULL, 0, y), KF_ERR_OUT_OF_MEMORY);
            CHECK(strstr(kf_context_last_error(poor), "kf_conv2d_forward") != NULL);
            CHECK_STATUS(kf_conv2d_backward(poor, &s, x, NULL, 0, dy, w, K, dw, K, db, dx),
                         KF_ERR_OUT_OF_MEMORY);
            CHECK_STATUS(kf_conv2d_backward(poor, &s, NULL, col_s, K, dy, w, K, dw, K, db, dx),
                         KF_ERR_OUT_OF_MEMORY);
            UNCHANGED();
            /* What needs no workspace still works. */
            CHECK_STATUS(kf_conv2d_forward(poor, &s, x, w, K, b, col, K, y), KF_OK);
            CHECK_STATUS(kf_conv2d_backward(poor, &s, NULL, col, K, dy, w, K, dw, K, db, NULL),
                         KF_OK);
            CHECK(kf_context_last_error(poor)[0] == '\0');
            kf_context_destroy(poor);
        }
        RESET();
    }

#undef RESET
#undef UNCHANGED
#undef HAS_MSG
}

/* kf_context_reserve(in, 2 R) plans the workspace of the col = NULL paths (kronfac.h): after it, a
 * context that can allocate nothing more runs them. The shape makes R * in larger than every
 * factor-sized scratch, so a smaller reservation would not do. */
static void test_reserve_plans_workspace(kf_rng *rng)
{
    enum { H = 40, R = 1600, IN = 9, OUT = 2 };
    static float x[H * H], w[OUT * IN], b[OUT], y[OUT * R], dy[OUT * R], dw[OUT * IN], db[OUT], dx[H * H];
    kf_conv2d_shape s;
    kf_conv2d_shape_init(&s, 1, 1, H, H, OUT, 3, 3);
    s.pad_h = s.pad_w = 1;
    kf_rng_fill(rng, x, H * H);
    kf_rng_fill(rng, w, OUT * IN);
    kf_rng_fill(rng, b, OUT);
    kf_rng_fill(rng, dy, OUT * R);
    for (int rows = R; rows <= 2 * R; rows += R) {
        stingy st = {2}; /* the context, then the reserved workspace */
        kf_allocator al = {stingy_alloc, stingy_free, &st};
        kf_context *planned = NULL;
        CHECK_STATUS(kf_context_create(&al, &planned), KF_OK);
        if (!planned) {
            continue;
        }
        CHECK_STATUS(kf_context_reserve(planned, IN, (size_t)rows), KF_OK);
        CHECK(st.budget == 0);
        CHECK_STATUS(kf_conv2d_forward(planned, &s, x, w, IN, b, NULL, 0, y), KF_OK);
        /* With dx the backward pass needs 2 R * in floats: only the full reservation has them. */
        CHECK_STATUS(kf_conv2d_backward(planned, &s, x, NULL, 0, dy, w, IN, dw, IN, db, dx),
                     rows == 2 * R ? KF_OK : KF_ERR_OUT_OF_MEMORY);
        kf_context_destroy(planned);
    }
}

int main(void)
{
    kf_context *ctx = NULL;
    kf_rng rng = {0x5DEECE66DULL};
    if (kf_context_create(NULL, &ctx) != KF_OK) {
        return 2;
    }
    test_output_size(ctx);
    test_im2col_col2im(ctx, &rng);
    test_forward(ctx, &rng);
    test_backward(ctx, &rng);
    test_output_rows(ctx, &rng);
    test_patches_feed_the_factors(ctx, &rng);
    test_values_not_inspected(ctx);
    test_errors(ctx);
    test_reserve_plans_workspace(&rng);
    kf_context_destroy(ctx);
    return kf_test_finish("test_conv");
}
