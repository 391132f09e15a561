/* Factor statistics and moving averages against brute-force double references. */
#include "kf_test.h"

/* Brute-force activation factor: builds every a~ (after the shared-axis treatment) explicitly. */
static void ref_activation(size_t n, size_t r, size_t in, const float *x, size_t ldx, int bias,
                           kf_shared_mode mode, double *a)
{
    size_t dim = in + (size_t)bias;
    double *at = (double *)kf_test_xmalloc(dim * sizeof(double));
    size_t terms = mode == KF_SHARED_EXPAND ? n * r : n;
    memset(a, 0, dim * dim * sizeof(double));
    for (size_t t = 0; t < terms; t++) {
        if (mode == KF_SHARED_EXPAND) {
            for (size_t j = 0; j < in; j++) {
                at[j] = x[t * ldx + j];
            }
        } else {
            for (size_t j = 0; j < in; j++) {
                double s = 0.0;
                for (size_t k = 0; k < r; k++) {
                    s += x[(t * r + k) * ldx + j];
                }
                at[j] = s / (double)r;
            }
        }
        if (bias) {
            at[in] = 1.0;
        }
        for (size_t i = 0; i < dim; i++) {
            for (size_t j = 0; j < dim; j++) {
                a[i * dim + j] += at[i] * at[j] / (double)terms;
            }
        }
    }
    free(at);
}

static void ref_gradient(size_t n, size_t r, size_t out, const float *g, size_t ldg,
                         kf_shared_mode mode, size_t rp, double scale, double *gf)
{
    double *gt = (double *)kf_test_xmalloc(out * sizeof(double));
    size_t terms = mode == KF_SHARED_EXPAND ? n * r : n;
    memset(gf, 0, out * out * sizeof(double));
    for (size_t t = 0; t < terms; t++) {
        for (size_t j = 0; j < out; j++) {
            double s = 0.0;
            if (mode == KF_SHARED_EXPAND) {
                s = g[t * ldg + j];
            } else {
                for (size_t k = 0; k < r; k++) {
                    s += g[(t * r + k) * ldg + j];
                }
            }
            gt[j] = scale * s;
        }
        for (size_t i = 0; i < out; i++) {
            for (size_t j = 0; j < out; j++) {
                gf[i * out + j] += gt[i] * gt[j] / ((double)n * (double)rp);
            }
        }
    }
    free(gt);
}

static void test_activation_factor(kf_context *ctx, kf_rng *rng)
{
    static const size_t ns[] = {1, 3, 17};
    static const size_t rs[] = {1, 2, 5};
    static const size_t ins[] = {1, 4, 33};
    for (size_t a = 0; a < 3; a++) {
        for (size_t b = 0; b < 3; b++) {
            for (size_t c = 0; c < 3; c++) {
                for (int bias = 0; bias <= 1; bias++) {
                    for (int mode = 0; mode <= 1; mode++) {
                        size_t n = ns[a], r = rs[b], in = ins[c], ldx = in + 3;
                        size_t dim = in + (size_t)bias, lda = dim + 2;
                        float *x = (float *)kf_test_xmalloc(n * r * ldx * sizeof(float));
                        float *f = (float *)kf_test_xmalloc(dim * lda * sizeof(float));
                        double *want = (double *)kf_test_xmalloc(dim * dim * sizeof(double));
                        kf_rng_fill(rng, x, n * r * ldx);
                        CHECK_STATUS(kf_activation_factor(ctx, n, r, in, x, ldx, bias,
                                                          (kf_shared_mode)mode, f, lda),
                                     KF_OK);
                        ref_activation(n, r, in, x, ldx, bias, (kf_shared_mode)mode, want);
                        kf_test_close("activation factor", dim, dim, f, lda, want, dim, 1e-5, 1e-6);
                        /* Both triangles are written and equal. */
                        int sym = 1;
                        for (size_t i = 0; i < dim; i++) {
                            for (size_t j = 0; j < dim; j++) {
                                sym &= f[i * lda + j] == f[j * lda + i];
                            }
                        }
                        CHECK(sym);
                        if (bias) {
                            CHECK(f[in * lda + in] == 1.0f);
                        }
                        free(x);
                        free(f);
                        free(want);
                    }
                }
            }
        }
    }
}

static void test_expand_equals_reduce_when_r_is_1(kf_context *ctx, kf_rng *rng)
{
    size_t n = 9, in = 7, out = 5;
    float x[63], g[45], a1[64], a2[64], g1[25], g2[25];
    kf_rng_fill(rng, x, 63);
    kf_rng_fill(rng, g, 45);
    CHECK_STATUS(kf_activation_factor(ctx, n, 1, in, x, in, 1, KF_SHARED_EXPAND, a1, 8), KF_OK);
    CHECK_STATUS(kf_activation_factor(ctx, n, 1, in, x, in, 1, KF_SHARED_REDUCE, a2, 8), KF_OK);
    CHECK(memcmp(a1, a2, sizeof a1) == 0);
    CHECK_STATUS(kf_gradient_factor(ctx, n, 1, out, g, out, KF_SHARED_EXPAND, 1, 2.0f, g1, 5), KF_OK);
    CHECK_STATUS(kf_gradient_factor(ctx, n, 1, out, g, out, KF_SHARED_REDUCE, 1, 2.0f, g2, 5), KF_OK);
    CHECK(memcmp(g1, g2, sizeof g1) == 0);
}

static void test_gradient_factor(kf_context *ctx, kf_rng *rng)
{
    static const size_t ns[] = {1, 4, 13};
    static const size_t rs[] = {1, 3};
    static const size_t outs[] = {1, 6, 20};
    static const float scales[] = {1.0f, 13.0f, 0.5f};
    for (size_t a = 0; a < 3; a++) {
        for (size_t b = 0; b < 2; b++) {
            for (size_t c = 0; c < 3; c++) {
                for (int mode = 0; mode <= 1; mode++) {
                    size_t n = ns[a], r = rs[b], out = outs[c], ldg = out + 1, ldf = out + 4;
                    size_t rp = mode == KF_SHARED_EXPAND ? r : 1;
                    float scale = scales[(a + c) % 3];
                    float *g = (float *)kf_test_xmalloc(n * r * ldg * sizeof(float));
                    float *f = (float *)kf_test_xmalloc(out * ldf * sizeof(float));
                    double *want = (double *)kf_test_xmalloc(out * out * sizeof(double));
                    kf_rng_fill(rng, g, n * r * ldg);
                    CHECK_STATUS(kf_gradient_factor(ctx, n, r, out, g, ldg, (kf_shared_mode)mode,
                                                    rp, scale, f, ldf),
                                 KF_OK);
                    ref_gradient(n, r, out, g, ldg, (kf_shared_mode)mode, rp, scale, want);
                    kf_test_close("gradient factor", out, out, f, ldf, want, out, 1e-5, 1e-6);
                    free(g);
                    free(f);
                    free(want);
                }
            }
        }
    }
}

static void test_ema(kf_context *ctx)
{
    /* A constant sequence is its own average from the first update (normalised EMA). */
    float c[9] = {2, -1, 0.5f, -1, 3, 0, 0.5f, 0, 1}, avg[9], b[9];
    double w = 0.0, want[9];
    for (int i = 0; i < 9; i++) {
        avg[i] = NAN; /* not read on the first update */
    }
    for (int t = 0; t < 5; t++) {
        CHECK_STATUS(kf_factor_ema_update(ctx, 3, 0.95f, c, 3, avg, 3, &w), KF_OK);
        for (int i = 0; i < 9; i++) {
            want[i] = c[i];
        }
        kf_test_close("ema of a constant", 3, 3, avg, 3, want, 3, 1e-6, 1e-7);
    }
    /* Closed form on a varying sequence: F_t = sum_k beta^(t-k) B_k / sum_k beta^(t-k). */
    {
        double beta = 0.9, num[9] = {0}, den = 0.0;
        w = 0.0;
        for (int t = 1; t <= 6; t++) {
            for (int i = 0; i < 9; i++) {
                b[i] = (float)(t * (i + 1)) * 0.25f - (float)i;
            }
            CHECK_STATUS(kf_factor_ema_update(ctx, 3, (float)beta, b, 3, avg, 3, &w), KF_OK);
            den = beta * den + 1.0;
            for (int i = 0; i < 9; i++) {
                num[i] = beta * num[i] + b[i];
                want[i] = num[i] / den;
            }
            kf_test_close("ema closed form", 3, 3, avg, 3, want, 3, 1e-5, 1e-5);
        }
        CHECK(fabs(w - den) < 1e-6);
    }
    /* decay 0 keeps only the last batch ("subsampled K-FAC"). */
    {
        float s1[4] = {1, 2, 3, 4}, s2[4] = {5, 6, 7, 8}, a[4];
        double w0 = 0.0, want2[4] = {5, 6, 7, 8};
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.0f, s1, 2, a, 2, &w0), KF_OK);
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.0f, s2, 2, a, 2, &w0), KF_OK);
        kf_test_close("ema decay 0", 2, 2, a, 2, want2, 2, 0, 0);
    }
}

static void test_errors(kf_context *ctx)
{
    float x[12] = {0}, a[25], g[12] = {0}, sentinel[25];
    double w = 0.0;
    for (int i = 0; i < 25; i++) {
        a[i] = sentinel[i] = (float)i + 0.25f;
    }
#define UNCHANGED() CHECK(memcmp(a, sentinel, sizeof a) == 0)
#define HAS_MSG(word) CHECK(strstr(kf_context_last_error(ctx), word) != NULL)
    CHECK_STATUS(kf_activation_factor(NULL, 3, 1, 4, x, 4, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, NULL, 4, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_NULL_POINTER);
    HAS_MSG("x");
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 4, 1, KF_SHARED_EXPAND, NULL, 5), KF_ERR_NULL_POINTER);
    HAS_MSG("a is NULL");
    CHECK_STATUS(kf_activation_factor(ctx, 0, 1, 4, x, 4, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_SHAPE);
    CHECK_STATUS(kf_activation_factor(ctx, 3, 0, 4, x, 4, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_SHAPE);
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 0, x, 4, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_SHAPE);
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 3, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_SHAPE);
    HAS_MSG("x");
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 4, 1, KF_SHARED_EXPAND, a, 4), KF_ERR_SHAPE);
    HAS_MSG("a");
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 4, 2, KF_SHARED_EXPAND, a, 5), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("bias");
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 4, 1, (kf_shared_mode)7, a, 5), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("mode");
    x[5] = NAN;
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 4, 1, KF_SHARED_EXPAND, a, 5), KF_ERR_NON_FINITE);
    x[5] = INFINITY;
    CHECK_STATUS(kf_activation_factor(ctx, 3, 1, 4, x, 4, 1, KF_SHARED_REDUCE, a, 5), KF_ERR_NON_FINITE);
    x[5] = 0.0f;
    CHECK_STATUS(kf_activation_factor(ctx, 2, 1, 4, a, 4, 0, KF_SHARED_EXPAND, a + 4, 4), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("overlap");
    UNCHANGED();

    CHECK_STATUS(kf_gradient_factor(NULL, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, 1.0f, a, 5), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, NULL, 4, KF_SHARED_EXPAND, 1, 1.0f, a, 5), KF_ERR_NULL_POINTER);
    HAS_MSG("g is NULL");
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, 1.0f, NULL, 5), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 0, 1.0f, a, 5), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("loss_terms_per_example");
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, NAN, a, 5), KF_ERR_INVALID_ARGUMENT);
    HAS_MSG("scale");
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, 0.0f, a, 5), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, 1e30f, a, 5), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 0, g, 4, KF_SHARED_EXPAND, 1, 1.0f, a, 5), KF_ERR_SHAPE);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 2, KF_SHARED_EXPAND, 1, 1.0f, a, 5), KF_ERR_SHAPE);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, 1.0f, a, 3), KF_ERR_SHAPE);
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, (kf_shared_mode)-1, 1, 1.0f, a, 5), KF_ERR_INVALID_ARGUMENT);
    g[11] = -INFINITY;
    CHECK_STATUS(kf_gradient_factor(ctx, 3, 1, 4, g, 4, KF_SHARED_EXPAND, 1, 1.0f, a, 5), KF_ERR_NON_FINITE);
    HAS_MSG("NaN or Inf");
    g[11] = 0.0f;
    UNCHANGED();

    {
        float b[4] = {1, 0, 0, 1};
        CHECK_STATUS(kf_factor_ema_update(NULL, 2, 0.9f, b, 2, a, 2, &w), KF_ERR_NULL_POINTER);
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.9f, NULL, 2, a, 2, &w), KF_ERR_NULL_POINTER);
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.9f, b, 2, NULL, 2, &w), KF_ERR_NULL_POINTER);
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.9f, b, 2, a, 2, NULL), KF_ERR_NULL_POINTER);
        HAS_MSG("weight");
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 1.0f, b, 2, a, 2, &w), KF_ERR_INVALID_ARGUMENT);
        HAS_MSG("decay");
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, -0.1f, b, 2, a, 2, &w), KF_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(kf_factor_ema_update(ctx, 0, 0.9f, b, 2, a, 2, &w), KF_ERR_SHAPE);
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.9f, b, 1, a, 2, &w), KF_ERR_SHAPE);
        w = -1.0;
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.9f, b, 2, a, 2, &w), KF_ERR_INVALID_ARGUMENT);
        w = 3.0;
        b[1] = NAN;
        CHECK_STATUS(kf_factor_ema_update(ctx, 2, 0.9f, b, 2, a, 2, &w), KF_ERR_NON_FINITE);
        CHECK(w == 3.0);
        UNCHANGED();
    }
#undef UNCHANGED
#undef HAS_MSG
}

int main(void)
{
    kf_context *ctx = NULL;
    kf_rng rng = {0x9E3779B97F4A7C15ULL};
    if (kf_context_create(NULL, &ctx) != KF_OK) {
        return 2;
    }
    test_activation_factor(ctx, &rng);
    test_expand_equals_reduce_when_r_is_1(ctx, &rng);
    test_gradient_factor(ctx, &rng);
    test_ema(ctx);
    test_errors(ctx);
    kf_context_destroy(ctx);
    return kf_test_finish("test_factors");
}
