/* kf_activation_forward / kf_activation_backward against double-precision references, their
 * limits, symmetries and special values, and their argument checks. */
#include "kf_test.h"

#include <float.h>
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

static void test_accuracy(kf_context *ctx)
{
    enum { CAP = 300000 };
    static float x[CAP], y[CAP], back[CAP];
    double worst_tanh = 0, worst_sig = 0, worst_sym = 0;
    size_t n = fill_inputs(x, CAP, -20.0f, 20.0f);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, n, x, y), KF_OK);
    for (size_t i = 0; i < n; i++) {
        double r = tanh((double)x[i]), err = fabs((double)y[i] - r) / fabs(r);
        worst_tanh = err > worst_tanh ? err : worst_tanh;
    }
    CHECK(worst_tanh <= 3e-7);
    /* Odd exactly. */
    for (size_t i = 0; i < n; i++) {
        back[i] = -x[i];
    }
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_TANH, n, back, back), KF_OK);
    for (size_t i = 0; i < n; i++) {
        if (back[i] != -y[i]) {
            CHECK(back[i] == -y[i]);
            break;
        }
    }

    n = fill_inputs(x, CAP, -110.0f, 110.0f);
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_SIGMOID, n, x, y), KF_OK);
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
    CHECK_STATUS(kf_activation_forward(ctx, KF_ACTIVATION_SIGMOID, n, back, back), KF_OK);
    for (size_t i = 0; i < n; i++) {
        double sum = (double)y[i] + (double)back[i];
        worst_sym = fabs(sum - 1) > worst_sym ? fabs(sum - 1) : worst_sym;
    }
    CHECK(worst_sym <= 1.2e-7);
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
    test_accuracy(ctx);
    test_special_values(ctx);
    test_backward(ctx, &rng);
    test_errors(ctx);
    kf_context_destroy(ctx);
    return kf_test_finish("test_activation");
}
