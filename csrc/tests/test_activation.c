/* kf_activation_forward / kf_activation_backward against double-precision references, their
 * limits, symmetries and special values, and their argument checks; the accuracy sweeps run on
 * every instruction-set path this CPU has (kf__activation_forward_on), and the public functions
 * must give bit for bit the results of the path they pick. */
#include "kf_internal.h"
#include "kf_test.h"

#include <float.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

static double ref_sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

/* The inputs of the accuracy sweeps: a fine grid, then magnitudes from 1e-38 to 1. */
static size_t fill_inputs(float *x, size_t cap, float lo, float hi)
{
    size_t n = 0;
    for (float v = lo; v <= hi && n < cap; v += 0.001f) {
        x[n++] = v;
    }
    for (double m = 1e-38; m < 1 && n + 1 < cap; m *= 1.07) {
        x[n++] = (float)m;
        x[n++] = (float)-m;
    }
    return n;
}

static void test_accuracy(int path)
{
    enum { CAP = 300000 };
    static float x[CAP], y[CAP], back[CAP];
    double worst_tanh = 0, worst_sig = 0, worst_sym = 0;
    size_t n = fill_inputs(x, CAP, -20.0f, 20.0f);
    kf__activation_forward_on(path, KF_ACTIVATION_TANH, n, x, y);
    for (size_t i = 0; i < n; i++) {
        double r = tanh((double)x[i]), err = fabs((double)y[i] - r) / fabs(r);
        worst_tanh = err > worst_tanh ? err : worst_tanh;
    }
    CHECK(worst_tanh <= 3e-7);
    /* Odd exactly. */
    for (size_t i = 0; i < n; i++) {
        back[i] = -x[i];
    }
    kf__activation_forward_on(path, KF_ACTIVATION_TANH, n, back, back);
    for (size_t i = 0; i < n; i++) {
        if (back[i] != -y[i]) {
            CHECK(back[i] == -y[i]);
            break;
        }
    }

    n = fill_inputs(x, CAP, -110.0f, 110.0f);
    kf__activation_forward_on(path, KF_ACTIVATION_SIGMOID, n, x, y);
    for (size_t i = 0; i < n; i++) {
        double r = ref_sigmoid((double)x[i]);
        if (x[i] >= -87.0f) {
            double err = fabs((double)y[i] - r) / r;
            worst_sig = err > worst_sig ? err : worst_sig;
        } else {
            CHECK(fabs((double)y[i] - r) <= 1e-38); /* subnormal or zero results */
        }
    }
    CHECK(worst_sig <= 3e-7);
    for (size_t i = 0; i < n; i++) {
        back[i] = -x[i];
    }
    kf__activation_forward_on(path, KF_ACTIVATION_SIGMOID, n, back, back);
    for (size_t i = 0; i < n; i++) {
        double sum = (double)y[i] + (double)back[i];
        worst_sym = fabs(sum - 1) > worst_sym ? fabs(sum - 1) : worst_sym;
    }
    CHECK(worst_sym <= 1.2e-7);
}

/* Every path: the special values and the backward pass agree with the generic path (the sweeps
 * above bound the forward error), at lengths that leave every kind of vector remainder. */
static void test_paths_agree(kf_rng *rng)
{
    enum { N = 1100 };
    static const float special[8] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, FLT_MAX, -FLT_MAX,
                                     1e-45f};
    static const size_t lengths[] = {0, 1, 7, 8, 15, 16, 17, 31, 33, 511, 512, 513, N};
    float x[N], dy[N], y0[N], y1[N], dx0[N], dx1[N];
    const kf_activation kinds[4] = {KF_ACTIVATION_IDENTITY, KF_ACTIVATION_RELU, KF_ACTIVATION_TANH,
                                    KF_ACTIVATION_SIGMOID};
    kf_rng_fill(rng, dy, N);
    for (size_t i = 0; i < N; i++) {
        x[i] = i < 8 ? special[i] : 12.0f * dy[(i * 7) % N];
    }
    kf_rng_fill(rng, dy, N);
    for (int path = 0; path < KF__ACT_PATHS; path++) {
        if (!kf__activation_path_available(path)) {
            continue;
        }
        for (int k = 0; k < 4; k++) {
            for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
                size_t n = lengths[l];
                int same = 1;
                memset(y1, 0x7f, sizeof y1);
                kf__activation_forward_on(KF__ACT_PATH_GENERIC, kinds[k], n, x, y0);
                kf__activation_forward_on(path, kinds[k], n, x, y1);
                for (size_t i = 0; i < n; i++) {
                    double d = fabs((double)y1[i] - (double)y0[i]);
                    same &= (isnan(y0[i]) && isnan(y1[i])) || y0[i] == y1[i] ||
                            d <= 4e-7 * fabs((double)y0[i]);
                }
                if (n < N) { /* nothing written past n */
                    uint32_t after;
                    memcpy(&after, &y1[n], sizeof after);
                    same &= after == 0x7f7f7f7fu;
                }
                memcpy(dx0, x, n * sizeof(float)); /* in place: the same results */
                kf__activation_forward_on(path, kinds[k], n, dx0, dx0);
                same &= n == 0 || memcmp(dx0, y1, n * sizeof(float)) == 0;
                kf__activation_backward_on(KF__ACT_PATH_GENERIC, kinds[k], n, y0, dy, dx0);
                kf__activation_backward_on(path, kinds[k], n, y0, dy, dx1);
                memcpy(y1, dy, n * sizeof(float));
                kf__activation_backward_on(path, kinds[k], n, y0, y1, y1);
                same &= n == 0 || memcmp(dx1, y1, n * sizeof(float)) == 0;
                for (size_t i = 0; i < n; i++) {
                    double d = fabs((double)dx1[i] - (double)dx0[i]);
                    /* 1 - y^2 and y (1 - y) may be contracted to a fused multiply-add, which
                     * rounds once instead of twice: apart by an ulp of y^2 times dy. */
                    same &= (isnan(dx0[i]) && isnan(dx1[i])) ||
                            d <= 1e-6 * fabs((double)dx0[i]) + 1.2e-7 * fabs((double)dy[i]);
                }
                if (!same) {
                    fprintf(stderr, "path %d, activation %d, n %zu:\n", path, (int)kinds[k], n);
                    CHECK(same);
                }
            }
        }
    }
}

/* The public functions use the best path: results bit for bit those of its hook. */
static void test_dispatch(kf_context *ctx, kf_rng *rng)
{
    enum { N = 777 };
    float x[N], dy[N], y0[N], y1[N], dx0[N], dx1[N];
    int best = kf__activation_path_available(KF__ACT_PATH_AVX512) ? KF__ACT_PATH_AVX512
               : kf__activation_path_available(KF__ACT_PATH_AVX2) ? KF__ACT_PATH_AVX2
                                                                   : KF__ACT_PATH_GENERIC;
    kf_rng_fill(rng, x, N);
    kf_rng_fill(rng, dy, N);
    for (size_t i = 0; i < N; i++) {
        x[i] *= 6.0f;
    }
    for (int k = 0; k < 4; k++) {
        kf_activation f = (kf_activation)k;
        CHECK_STATUS(kf_activation_forward(ctx, f, N, x, y0), KF_OK);
        kf__activation_forward_on(best, f, N, x, y1);
        CHECK(memcmp(y0, y1, sizeof y0) == 0);
        CHECK_STATUS(kf_activation_backward(ctx, f, N, y0, dy, dx0), KF_OK);
        kf__activation_backward_on(best, f, N, y0, dy, dx1);
        CHECK(memcmp(dx0, dx1, sizeof dx0) == 0);
    }
}

static void test_special_values(kf_context *ctx)
{
    const float inf = INFINITY;
    float x[8] = {0.0f, -0.0f, inf, -inf, NAN, FLT_MAX, -FLT_MAX, 1e-45f};
    float y[8];
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, 8, x, y), KF_OK);
    CHECK(y[0] == 0 && !signbit(y[0]) && y[1] == 0 && signbit(y[1]));
    CHECK(y[2] == 1 && y[3] == -1 && isnan(y[4]) && y[5] == 1 && y[6] == -1 && y[7] == 1e-45f);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_SIGMOID, 8, x, y), KF_OK);
    CHECK(y[0] == 0.5f && y[1] == 0.5f && y[2] == 1 && y[3] == 0 && isnan(y[4]));
    CHECK(y[5] == 1 && y[6] == 0 && y[7] == 0.5f);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_RELU, 8, x, y), KF_OK);
    CHECK(y[0] == 0 && y[1] == 0 && y[2] == inf && y[3] == 0 && isnan(y[4]) && y[5] == FLT_MAX);
    CHECK(y[6] == 0 && y[7] == 1e-45f);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_IDENTITY, 8, x, y), KF_OK);
    CHECK(memcmp(x, y, sizeof x) == 0);
}

static void test_backward(kf_context *ctx, kf_rng *rng)
{
    enum { N = 257 };
    float x[N], y[N], dy[N], dx[N], inplace[N];
    kf_rng_fill(rng, x, N);
    kf_rng_fill(rng, dy, N);
    x[3] = 0.0f;
    const kf_activation kinds[4] = {KF_ACTIVATION_IDENTITY, KF_ACTIVATION_RELU, KF_ACTIVATION_TANH,
                                    KF_ACTIVATION_SIGMOID};
    for (int k = 0; k < 4; k++) {
        CHECK_STATUS(kf_activation_forward(ctx, kinds[k], N, x, y), KF_OK);
        CHECK_STATUS(kf_activation_backward(ctx, kinds[k], N, y, dy, dx), KF_OK);
        memcpy(inplace, dy, sizeof dy);
        CHECK_STATUS(kf_activation_backward(ctx, kinds[k], N, y, inplace, inplace), KF_OK);
        CHECK(memcmp(inplace, dx, sizeof dx) == 0);
        for (int i = 0; i < N; i++) {
            /* Central differences of the forward pass in double around x. */
            double h = 1e-3, xp = (double)x[i] + h, xm = (double)x[i] - h, d;
            switch (kinds[k]) {
            case KF_ACTIVATION_IDENTITY: d = 1; break;
            case KF_ACTIVATION_RELU: d = x[i] > 0 ? 1 : 0; break;
            case KF_ACTIVATION_TANH: d = (tanh(xp) - tanh(xm)) / (2 * h); break;
            default: d = (ref_sigmoid(xp) - ref_sigmoid(xm)) / (2 * h); break;
            }
            if (fabs((double)dx[i] - d * (double)dy[i]) > 1e-5 * (1 + fabs((double)dy[i]))) {
                CHECK(fabs((double)dx[i] - d * (double)dy[i]) <= 1e-5 * (1 + fabs((double)dy[i])));
                break;
            }
        }
    }
}

static void test_errors(kf_context *ctx)
{
    float a[4] = {1, 2, 3, 4}, b[4] = {0}, c[4] = {0};
    CHECK_STATUS(kf_activation_forward(NULL, KF_ACTIVATION_TANH, 4, a, b), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_forward(ctx, (kf_activation)7, 4, a, b), KF_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kf_context_last_error(ctx), "unknown activation") != NULL);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, 4, NULL, b), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, 4, a, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, 3, a, a + 1), KF_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kf_context_last_error(ctx), "overlaps") != NULL);
    CHECK(b[0] == 0 && a[1] == 2);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, 0, NULL, NULL), KF_OK);
    CHECK(kf_context_last_error(ctx)[0] == '\0');
    CHECK_STATUS(kf_activation_backward(NULL, KF_ACTIVATION_TANH, 4, a, b, c), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_backward(ctx, (kf_activation)-1, 4, a, b, c), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_activation_backward(ctx, KF_ACTIVATION_TANH, 4, NULL, b, c), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_backward(ctx, KF_ACTIVATION_TANH, 4, a, NULL, c), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_backward(ctx, KF_ACTIVATION_TANH, 4, a, b, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_activation_backward(ctx, KF_ACTIVATION_TANH, 4, a, b, a), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_activation_backward(ctx, KF_ACTIVATION_TANH, 3, a, b, b + 1), KF_ERR_INVALID_ARGUMENT);
    CHECK(c[0] == 0 && b[1] == 0);
    CHECK_STATUS(kf_activation_backward(ctx, KF_ACTIVATION_SIGMOID, 0, NULL, NULL, NULL), KF_OK);
}

int main(void)
{
    kf_context *ctx = NULL;
    kf_rng rng = {0xA5A5A5A5ULL};
    if (kf_context_create(NULL, &ctx) != KF_OK) {
        return 2;
    }
    int paths = 0;
    for (int path = 0; path < KF__ACT_PATHS; path++) {
        if (kf__activation_path_available(path)) {
            test_accuracy(path);
            paths++;
        }
    }
    fprintf(stderr, "test_activation: %d instruction-set path(s) tested\n", paths);
    CHECK(paths >= 1 && kf__activation_path_available(KF__ACT_PATH_GENERIC));
    test_paths_agree(&rng);
    test_dispatch(ctx, &rng);
    test_special_values(ctx);
    test_backward(ctx, &rng);
    test_errors(ctx);
    kf_context_destroy(ctx);
    return kf_test_finish("test_activation");
}
