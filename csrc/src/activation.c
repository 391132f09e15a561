/* Element-wise activations in loops without calls or branches, so that compilers vectorise them
 * at -O2 for any target (libm's tanhf and expf are scalar calls); on x86-64 the same loops are
 * also compiled for AVX2/FMA and AVX-512 and the best one is chosen per call. */
#include "kf_internal.h"

#include <stdint.h>
#include <string.h>

/* x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite: ln2 split so that k * LN2_HI is exact for the
 * |k| < 2^8 used here). */
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.42860682030941723212e-6f
/* Adding and subtracting 1.5 * 2^23 rounds a float of magnitude < 2^22 to the nearest integer in
 * the default rounding mode, without a call to rintf. */
#define ROUND_MAGIC 12582912.0f

/* 2^k for integer-valued k in [-126, 127], built from its exponent bits. */
static inline float pow2i(float k)
{
    int32_t bits = ((int32_t)k + 127) * (1 << 23);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* expm1(z) for z in [-20, 0]: z = k ln2 + r, expm1(z) = 2^k expm1(r) + (2^k - 1), with expm1(r)
 * by its Taylor polynomial of degree 7 (truncation below 2e-8 relative for |r| <= ln2/2). For
 * k = 0 this is expm1(r) itself, so the result keeps its relative accuracy near 0. */
static inline float expm1_neg(float z)
{
    float k = (z * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    float r = (z - k * LN2_HI) - k * LN2_LO;
    float p = r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
              r * (1.0f / 720 + r * (1.0f / 5040)))))));
    float s = pow2i(k);
    return s * p + (s - 1.0f);
}

/* e^z for z in [-110, 0], the scale split in two normal factors so that results down to the
 * subnormal range come out right (gradual underflow). */
static inline float exp_neg(float z)
{
    float k = (z * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    float r = (z - k * LN2_HI) - k * LN2_LO;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
              r * (1.0f / 720 + r * (1.0f / 5040)))))));
    float half = (float)(int32_t)(k * 0.5f); /* truncation: both halves stay in [-80, 0] */
    return p * pow2i(half) * pow2i(k - half);
}

static inline uint32_t bits_of(float v)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

static inline float float_of(uint32_t b)
{
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* The selections below compare bit patterns, not floats: for non-negative floats (NaN's patterns
 * lie above infinity's) the orders agree, and integer selections vectorise where float
 * comparisons, which may trap on NaN, keep GCC from if-converting the loop. */
#define SIGN_BIT 0x80000000u
#define INF_BITS 0x7f800000u

/* The activations of one element. Inlined into the loops below, whatever their target. */
static inline float tanh1(float x)
{
    const uint32_t limit = bits_of(9.0f); /* tanh(9) rounds to 1 in float */
    uint32_t v = bits_of(x), a = v & ~SIGN_BIT;
    /* NaN is clamped too (the reduction converts to an integer) and restored below. */
    float c = float_of(a < limit ? a : limit);
    float e = expm1_neg(-2.0f * c); /* tanh(a) = -expm1(-2a) / (2 + expm1(-2a)) */
    /* Odd, and tanh(-0) = -0, through a product with +-1 (exact). Setting the sign bit with an
     * OR instead is miscompiled by Clang 21 for AVX-512 (wrong exponent bits). */
    float t = (0.0f - e) / (2.0f + e) * float_of((v & SIGN_BIT) | bits_of(1.0f)); /* 0 - e: +0 at 0 */
    return float_of(a > INF_BITS ? v : bits_of(t));
}

static inline float sigmoid1(float x)
{
    const uint32_t limit = bits_of(110.0f); /* e^-110 underflows to 0 */
    uint32_t v = bits_of(x), a = v & ~SIGN_BIT;
    float c = float_of(a < limit ? a : limit);
    float e = exp_neg(-c); /* e^-|x|: sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) else */
    float s = float_of((v & SIGN_BIT) ? bits_of(e) : bits_of(1.0f)) / (1.0f + e);
    return float_of(a > INF_BITS ? v : bits_of(s));
}

/* The loops, once per instruction set, each in two forms: out of place with restrict pointers
 * (the public functions reject partial overlaps), and in place through one pointer, where the
 * compiler sees that each element is read before it is written; both vectorise without run-time
 * overlap checks. X and DY name the inputs inside the expressions. */
#define KF_ACT_SWITCH(f, n, out, RELU, TANH, SIGMOID)                                              \
    switch (f) {                                                                                   \
    case KF_ACTIVATION_RELU: for (size_t i = 0; i < (n); i++) { (out)[i] = (RELU); } break;        \
    case KF_ACTIVATION_TANH: for (size_t i = 0; i < (n); i++) { (out)[i] = (TANH); } break;        \
    case KF_ACTIVATION_SIGMOID: for (size_t i = 0; i < (n); i++) { (out)[i] = (SIGMOID); } break;  \
    default: break;                                                                                \
    }

/* forward: f is ReLU, tanh or sigmoid (NaN < 0 is false: ReLU keeps NaN). backward: dx = f'(y) dy
 * for the same three; ReLU's gradient is read unconditionally, so that the loop vectorises. */
#define KF_ACT_FORWARD(f, n, x, out)                                                               \
    KF_ACT_SWITCH(f, n, out, x[i] < 0 ? 0.0f : x[i], tanh1(x[i]), sigmoid1(x[i]))
#define KF_ACT_BACKWARD(f, n, y, dy, out)                                                          \
    KF_ACT_SWITCH(f, n, out, y[i] > 0 ? dy[i] : 0.0f, dy[i] * (1.0f - y[i] * y[i]),              \
                  dy[i] * (y[i] * (1.0f - y[i])))

#define KF_DEFINE_ACTIVATION_LOOPS(S, TARGET)                                                      \
    TARGET static void act_forward_##S(kf_activation f, size_t n, const float *restrict x,        \
                                       float *restrict y)                                          \
    {                                                                                              \
        KF_ACT_FORWARD(f, n, x, y)                                                                 \
    }                                                                                              \
    TARGET static void act_forward_in_place_##S(kf_activation f, size_t n, float *y)              \
    {                                                                                              \
        KF_ACT_FORWARD(f, n, y, y)                                                                 \
    }                                                                                              \
    TARGET static void act_backward_##S(kf_activation f, size_t n, const float *restrict y,       \
                                        const float *restrict dy, float *restrict dx)              \
    {                                                                                              \
        KF_ACT_BACKWARD(f, n, y, dy, dx)                                                           \
    }                                                                                              \
    TARGET static void act_backward_in_place_##S(kf_activation f, size_t n,                       \
                                                 const float *restrict y, float *dx)               \
    {                                                                                              \
        KF_ACT_BACKWARD(f, n, y, dx, dx)                                                           \
    }                                                                                              \
    TARGET static void act_forward_any_##S(kf_activation f, size_t n, const float *x, float *y)   \
    {                                                                                              \
        if (x == y) {                                                                              \
            act_forward_in_place_##S(f, n, y);                                                     \
        } else {                                                                                   \
            act_forward_##S(f, n, x, y);                                                           \
        }                                                                                          \
    }                                                                                              \
    TARGET static void act_backward_any_##S(kf_activation f, size_t n, const float *y,            \
                                            const float *dy, float *dx)                            \
    {                                                                                              \
        if (dx == dy) {                                                                            \
            act_backward_in_place_##S(f, n, y, dx);                                                \
        } else {                                                                                   \
            act_backward_##S(f, n, y, dy, dx);                                                     \
        }                                                                                          \
    }

KF_DEFINE_ACTIVATION_LOOPS(generic, )

/* x86-64: the same loops for AVX2/FMA and AVX-512, through function attributes (no compiler
 * flag), chosen per call from the CPU's features as the portable GEMM does. Not with GCC on
 * Windows, which cannot align the stack for spilled AVX vectors (GCC bug 54412). */
#if defined(__GNUC__) && defined(__x86_64__) && (!defined(_WIN32) || defined(__clang__))
#define KF_ACT_X86 1
KF_DEFINE_ACTIVATION_LOOPS(avx2, __attribute__((target("avx2,fma"))))
KF_DEFINE_ACTIVATION_LOOPS(avx512, __attribute__((target("avx512f,avx2,fma"))))
#endif

int kf__activation_path_available(int path)
{
    switch (path) {
    case KF__ACT_PATH_GENERIC:
        return 1;
#if defined(KF_ACT_X86)
    case KF__ACT_PATH_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KF__ACT_PATH_AVX512:
        /* libgcc / compiler-rt report AVX-512 only when the OS saves the ZMM state. */
        return kf__activation_path_available(KF__ACT_PATH_AVX2) && __builtin_cpu_supports("avx512f");
#endif
    default:
        return 0;
    }
}

static int best_path(void)
{
    return kf__activation_path_available(KF__ACT_PATH_AVX512) ? KF__ACT_PATH_AVX512
           : kf__activation_path_available(KF__ACT_PATH_AVX2) ? KF__ACT_PATH_AVX2
                                                               : KF__ACT_PATH_GENERIC;
}

void kf__activation_forward_on(int path, kf_activation f, size_t n, const float *x, float *y)
{
    if (f == KF_ACTIVATION_IDENTITY) {
        if (n > 0 && y != x) {
            memcpy(y, x, n * sizeof(float));
        }
        return;
    }
    switch (kf__activation_path_available(path) ? path : KF__ACT_PATH_GENERIC) {
#if defined(KF_ACT_X86)
    case KF__ACT_PATH_AVX2: act_forward_any_avx2(f, n, x, y); break;
    case KF__ACT_PATH_AVX512: act_forward_any_avx512(f, n, x, y); break;
#endif
    default: act_forward_any_generic(f, n, x, y); break;
    }
}

void kf__activation_backward_on(int path, kf_activation f, size_t n, const float *y,
                                const float *dy, float *dx)
{
    if (f == KF_ACTIVATION_IDENTITY) {
        if (n > 0 && dx != dy) {
            memcpy(dx, dy, n * sizeof(float));
        }
        return;
    }
    switch (kf__activation_path_available(path) ? path : KF__ACT_PATH_GENERIC) {
#if defined(KF_ACT_X86)
    case KF__ACT_PATH_AVX2: act_backward_any_avx2(f, n, y, dy, dx); break;
    case KF__ACT_PATH_AVX512: act_backward_any_avx512(f, n, y, dy, dx); break;
#endif
    default: act_backward_any_generic(f, n, y, dy, dx); break;
    }
}

static int partly_overlap(const float *a, const float *b, size_t n)
{
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b, bytes = (uintptr_t)(n * sizeof(float));
    return a != b && pa < pb + bytes && pb < pa + bytes;
}

static kf_status check_kind(kf_context *ctx, const char *fn, kf_activation f)
{
    if (f != KF_ACTIVATION_IDENTITY && f != KF_ACTIVATION_RELU && f != KF_ACTIVATION_TANH &&
        f != KF_ACTIVATION_SIGMOID) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT, "%s: unknown activation %d", fn, (int)f);
    }
    return KF_OK;
}

kf_status kf_activation_forward(kf_context *ctx, kf_activation f, size_t n, const float *x,
                                float *y)
{
    kf_status st;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((st = check_kind(ctx, "kf_activation_forward", f)) != KF_OK) {
        return st;
    }
    if (n > 0 && (!x || !y)) {
        return kf__fail(&ctx->err, KF_ERR_NULL_POINTER, "kf_activation_forward: %s is NULL",
                        x ? "y" : "x");
    }
    if (n > SIZE_MAX / sizeof(float)) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "kf_activation_forward: n (%zu) is too large", n);
    }
    if (partly_overlap(x, y, n)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "kf_activation_forward: y overlaps x without being x");
    }
    kf__activation_forward_on(best_path(), f, n, x, y);
    kf__clear(&ctx->err);
    return KF_OK;
}

kf_status kf_activation_backward(kf_context *ctx, kf_activation f, size_t n, const float *y,
                                 const float *dy, float *dx)
{
    kf_status st;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if ((st = check_kind(ctx, "kf_activation_backward", f)) != KF_OK) {
        return st;
    }
    if (n > 0 && (!y || !dy || !dx)) {
        return kf__fail(&ctx->err, KF_ERR_NULL_POINTER, "kf_activation_backward: %s is NULL",
                        !y ? "y" : !dy ? "dy" : "dx");
    }
    if (n > SIZE_MAX / sizeof(float)) {
        return kf__fail(&ctx->err, KF_ERR_SHAPE, "kf_activation_backward: n (%zu) is too large", n);
    }
    if (n > 0 && (partly_overlap(dy, dx, n) || partly_overlap(y, dx, n) || y == dx)) {
        return kf__fail(&ctx->err, KF_ERR_INVALID_ARGUMENT,
                        "kf_activation_backward: dx overlaps y, or dy without being dy");
    }
    kf__activation_backward_on(best_path(), f, n, y, dy, dx);
    kf__clear(&ctx->err);
    return KF_OK;
}
