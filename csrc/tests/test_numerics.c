/* Numerical robustness: factors that are rank-deficient, zero, huge (1e30), tiny (1e-30),
 * denormal, or of mixed scale; damping 0; gradients of 1e30. Every primitive and every algorithm
 * of the optimizer must end each case in a finite result or a clear error: a numerical status
 * (KF_ERR_NON_FINITE, KF_ERR_NOT_POSITIVE_DEFINITE, KF_ERR_NO_CONVERGENCE) or KF_ERR_INVALID_ARGUMENT
 * for damping the algorithm does not allow, with a message, and the outputs untouched. Cases whose
 * answer is well defined and representable (positive damping on a zero or rank-deficient factor,
 * say) must succeed. Prints the tally of outcomes. */
#include "kf_test.h"

#include <float.h>

#define N 6      /* factor size of the primitive cases */
#define OUT 3    /* rows of V */

enum { K_RANK1, K_ZERO, K_HUGE, K_TINY, K_DENORMAL, K_MIXED, K_IDENTITY, K_KINDS };
static const char *kind_name[K_KINDS] = {"rank-1", "zero", "1e30", "1e-30", "denormal", "mixed",
                                         "identity"};

static long n_cases, n_finite, n_errors, n_bad;
static long by_status[32];

/* A symmetric PSD factor of the given kind, n x n. */
static void make_factor(int kind, size_t n, float *f, kf_rng *rng)
{
    float u[16];
    kf_rng_fill(rng, u, n);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double v;
            switch (kind) {
            case K_RANK1: v = (double)u[i] * u[j]; break;
            case K_ZERO: v = 0.0; break;
            case K_HUGE: v = 1e30 * ((double)u[i] * u[j] + (i == j ? 1.0 : 0.0)); break;
            case K_TINY: v = 1e-30 * ((double)u[i] * u[j] + (i == j ? 1.0 : 0.0)); break;
            case K_DENORMAL: v = i == j ? 1e-40 : 0.0; break;
            case K_MIXED: v = i == j ? (i == 0 ? 1e30 : 1e-30) : 0.0; break;
            default: v = i == j ? 1.0 : 0.0; break;
            }
            f[i * n + j] = (float)v;
        }
    }
}

static int numerical_error(kf_status s)
{
    return s == KF_ERR_NON_FINITE || s == KF_ERR_NOT_POSITIVE_DEFINITE ||
           s == KF_ERR_NO_CONVERGENCE || s == KF_ERR_INVALID_ARGUMENT;
}

/* Judges one primitive call: out (count floats) was filled with a sentinel before the call. */
static void judge(const char *what, int kind, float damping, kf_status s, const float *out,
                  size_t count, const kf_context *ctx, int must_succeed)
{
    int ok;
    n_cases++;
    by_status[-s]++;
    if (s == KF_OK) {
        ok = 1;
        for (size_t i = 0; i < count; i++) {
            ok &= isfinite(out[i]) != 0;
        }
        n_finite += ok;
        if (!ok) {
            fprintf(stderr, "%s on a %s factor, damping %g: KF_OK with a non-finite result\n", what,
                    kind_name[kind], (double)damping);
        }
    } else {
        ok = numerical_error(s) && kf_context_last_error(ctx)[0] != '\0';
        for (size_t i = 0; i < count; i++) {
            ok &= out[i] == -12345.0f; /* untouched */
        }
        n_errors += ok;
        if (!ok) {
            fprintf(stderr, "%s on a %s factor, damping %g: %s, or the output was written\n", what,
                    kind_name[kind], (double)damping, kf_status_string(s));
        }
        if (must_succeed) {
            ok = 0;
            fprintf(stderr, "%s on a %s factor, damping %g: %s (%s) where the answer is well "
                    "defined\n", what, kind_name[kind], (double)damping, kf_status_string(s),
                    kf_context_last_error(ctx));
        }
    }
    n_bad += !ok;
    CHECK(ok);
}

static void fill(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = v;
    }
}

static void test_primitives(void)
{
    static const float dampings[3] = {0.0f, 1e-3f, 0.1f};
    kf_context *ctx = NULL;
    kf_rng rng = {31};
    float fa[N * N], fg[OUT * OUT], inv[N * N], ev[N], q[N * N], v[OUT * N], d[OUT * N];
    float qg[OUT * OUT], eg[OUT], pi;
    CHECK_STATUS(kf_context_create(NULL, &ctx), KF_OK);
    for (int kind = 0; kind < K_KINDS; kind++) {
        for (int di = 0; di < 3; di++) {
            float damping = dampings[di];
            /* Positive damping on a factor whose entries are all at most 1: the inverse is defined
             * and at most 1/damping, so an error would be a failure to compute it. */
            int benign = damping > 0.0f && (kind == K_RANK1 || kind == K_ZERO || kind == K_TINY ||
                                            kind == K_DENORMAL || kind == K_IDENTITY);
            for (int prec = 0; prec < 2; prec++) {
                kf_status s;
                make_factor(kind, N, fa, &rng);
                fill(inv, N * N, -12345.0f);
                s = kf_damped_inverse(ctx, N, fa, N, damping,
                                      prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE, inv, N, NULL);
                judge(prec ? "kf_damped_inverse(float)" : "kf_damped_inverse", kind, damping, s,
                      inv, N * N, ctx, benign && damping >= 1e-3f);
            }
            /* Directions, with moderate gradients and with gradients of 1e30. */
            for (int vv = 0; vv < 2; vv++) {
                kf_status s;
                make_factor(kind, N, fa, &rng);
                make_factor(kind == K_ZERO ? K_RANK1 : kind, OUT, fg, &rng);
                kf_rng_fill(&rng, v, OUT * N);
                if (vv) {
                    for (size_t i = 0; i < OUT * N; i++) {
                        v[i] *= 1e30f;
                    }
                }
                fill(d, OUT * N, -12345.0f);
                s = kf_foof_direction(ctx, OUT, N, v, N, fa, N, damping, d, N);
                judge(vv ? "kf_foof_direction(V 1e30)" : "kf_foof_direction", kind, damping, s, d,
                      OUT * N, ctx, benign && !vv);
                fill(d, OUT * N, -12345.0f);
                pi = -1.0f;
                s = kf_kfac_direction(ctx, OUT, N, v, N, fa, N, fg, OUT, damping, d, N, &pi);
                judge(vv ? "kf_kfac_direction(V 1e30)" : "kf_kfac_direction", kind, damping, s, d,
                      OUT * N, ctx, 0);
                fill(d, OUT * N, -12345.0f);
                s = kf_kfac_exact_direction(ctx, OUT, N, v, N, fa, N, fg, OUT, damping, d, N);
                judge(vv ? "kf_kfac_exact_direction(V 1e30)" : "kf_kfac_exact_direction", kind,
                      damping, s, d, OUT * N, ctx, benign && !vv);
                /* The eigenbasis route, from the library's own eigendecompositions. */
                fill(ev, N, -12345.0f);
                fill(q, N * N, -12345.0f);
                s = kf_sym_eig(ctx, N, fa, N, ev, q, N);
                if (s == KF_OK) {
                    fill(eg, OUT, -12345.0f);
                    fill(qg, OUT * OUT, -12345.0f);
                    s = kf_sym_eig(ctx, OUT, fg, OUT, eg, qg, OUT);
                    if (s == KF_OK) {
                        fill(d, OUT * N, -12345.0f);
                        s = kf_eigenbasis_apply(ctx, OUT, N, v, N, qg, OUT, eg, q, N, ev, NULL, 0,
                                                damping, d, N);
                        judge("kf_eigenbasis_apply", kind, damping, s, d, OUT * N, ctx, 0);
                    } else {
                        judge("kf_sym_eig (G)", kind, damping, s, eg, OUT, ctx, 0);
                    }
                }
                {
                    /* The eigendecomposition itself: finite eigenpairs or an error. */
                    float both[N + N * N];
                    memcpy(both, ev, sizeof ev);
                    memcpy(both + N, q, sizeof q);
                    judge("kf_sym_eig", kind, damping, s == KF_OK ? KF_OK : s, both,
                          s == KF_OK ? N + N * N : 0, ctx, 0);
                }
            }
        }
    }
    /* Two cases stated exactly: eigenvalues beyond FLT_MAX, and a FOOF direction on a tiny factor
     * without damping (the inverse is 1e30, the direction 1e30 * 1e30). */
    {
        float big[4] = {FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX}, w2[2], q2[4];
        float tiny[1] = {1e-30f}, v1[1] = {1e30f}, d1[1];
        kf_status s;
        fill(w2, 2, -12345.0f);
        fill(q2, 4, -12345.0f);
        s = kf_sym_eig(ctx, 2, big, 2, w2, q2, 2);
        {
            float both[6];
            memcpy(both, w2, sizeof w2);
            memcpy(both + 2, q2, sizeof q2);
            judge("kf_sym_eig(FLT_MAX entries)", K_HUGE, 0.0f, s, both, 6, ctx, 0);
        }
        d1[0] = -12345.0f;
        s = kf_foof_direction(ctx, 1, 1, v1, 1, tiny, 1, 0.0f, d1, 1);
        judge("kf_foof_direction(A 1e-30, V 1e30)", K_TINY, 0.0f, s, d1, 1, ctx, 0);
        /* K-FAC: pi = sqrt(1e-41 / 1e30) makes (A + pi gamma)^{-1} ~ 4e35; V times it overflows
         * before (G + gamma/pi)^{-1} ~ 5e-36 brings it back (the exact answer is ~2e30). */
        {
            float a1[1] = {1e-41f}, g1[1] = {1e30f};
            d1[0] = -12345.0f;
            s = kf_kfac_direction(ctx, 1, 1, v1, 1, a1, 1, g1, 1, 0.5f, d1, 1, NULL);
            judge("kf_kfac_direction(A 1e-41, G 1e30, V 1e30)", K_MIXED, 0.5f, s, d1, 1, ctx, 0);
        }
        /* Applying cached inverses of 1e30 to a gradient of 1e30. */
        {
            float ai[1] = {1e30f}, gi[1] = {1e30f};
            d1[0] = -12345.0f;
            s = kf_kronecker_apply(ctx, 1, 1, v1, 1, gi, 1, ai, 1, d1, 1);
            judge("kf_kronecker_apply(1e30 x 1e30 x 1e30)", K_HUGE, 0.0f, s, d1, 1, ctx, 0);
        }
    }
    kf_context_destroy(ctx);
}

/* The optimizer, end to end: activations of each kind, every algorithm, a few steps. */
static void test_optimizer(void)
{
    static const float dampings[3] = {0.0f, 1e-3f, 0.1f};
    const size_t n = 4, in = 5, out = 3;
    for (int a = KF_ALGO_SGD; a <= KF_ALGO_EKFAC; a++) {
        for (int kind = 0; kind < K_KINDS; kind++) {
            for (int di = 0; di < 3; di++) {
                kf_optimizer_params p;
                kf_optimizer *opt = NULL;
                kf_layer_params lp;
                kf_rng rng = {(uint64_t)(1 + a * 100 + kind * 10 + di)};
                float x[4 * 5], g[4 * 3], w[15], b[3], gw[15], gb[3], w0[15], b0[3];
                kf_layer_tensors t = {w, 5, b, gw, 5, gb};
                size_t idx;
                kf_status s;
                kf_optimizer_params_init(&p, (kf_algorithm)a);
                p.damping = dampings[di];
                p.inverse_interval = 1;
                s = kf_optimizer_create(&p, NULL, &opt);
                if (s != KF_OK) {
                    /* Damping 0 for the K-FAC family is refused up front, clearly. */
                    CHECK(s == KF_ERR_INVALID_ARGUMENT && di == 0 && a >= KF_ALGO_KFAC);
                    n_cases++;
                    n_errors++;
                    by_status[-s]++;
                    continue;
                }
                kf_layer_params_init(&lp, out, in);
                CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
                kf_rng_fill(&rng, w, 15);
                kf_rng_fill(&rng, b, 3);
                for (int step = 0; step < 3; step++) {
                    float scale;
                    /* Activations whose factor is of the kind (rank one: one example repeated). */
                    for (size_t e = 0; e < n; e++) {
                        for (size_t j = 0; j < in; j++) {
                            float u = kf_rng_uniform(&rng);
                            switch (kind) {
                            case K_RANK1: x[e * in + j] = (float)(j + 1) * 0.1f; break;
                            case K_ZERO: x[e * in + j] = 0.0f; break;
                            case K_HUGE: x[e * in + j] = 1e15f * u; break;
                            case K_TINY: x[e * in + j] = 1e-15f * u; break;
                            case K_DENORMAL: x[e * in + j] = 1e-40f * u; break;
                            case K_MIXED: x[e * in + j] = j == 0 ? 1e15f * u : 1e-15f * u; break;
                            default: x[e * in + j] = u; break;
                            }
                        }
                    }
                    scale = kind == K_HUGE ? 1e15f : kind == K_TINY ? 1e-15f : 1.0f;
                    kf_rng_fill(&rng, g, n * out);
                    kf_rng_fill(&rng, gw, 15);
                    kf_rng_fill(&rng, gb, 3);
                    memcpy(w0, w, sizeof w);
                    memcpy(b0, b, sizeof b);
                    s = kf_optimizer_observe_activations(opt, idx, n, x, in);
                    if (s == KF_OK) {
                        s = kf_optimizer_observe_gradients(opt, idx, n, g, out, scale * (float)n);
                    }
                    if (s == KF_OK) {
                        s = kf_optimizer_step(opt, &t, 1);
                    }
                    n_cases++;
                    by_status[-s]++;
                    if (s == KF_OK) {
                        int finite = 1;
                        for (size_t i = 0; i < 15; i++) {
                            finite &= isfinite(w[i]) != 0;
                        }
                        for (size_t i = 0; i < 3; i++) {
                            finite &= isfinite(b[i]) != 0;
                        }
                        n_finite += finite;
                        n_bad += !finite;
                        CHECK(finite);
                        if (!finite) {
                            fprintf(stderr, "%s, %s activations, damping %g: a step made the "
                                    "parameters non-finite\n", kf_algorithm_name((kf_algorithm)a),
                                    kind_name[kind], (double)dampings[di]);
                        }
                    } else {
                        int clear = numerical_error(s) && kf_optimizer_last_error(opt)[0] != '\0' &&
                                    memcmp(w, w0, sizeof w) == 0 && memcmp(b, b0, sizeof b) == 0;
                        n_errors += clear;
                        n_bad += !clear;
                        CHECK(clear);
                        if (!clear) {
                            fprintf(stderr, "%s, %s activations, damping %g: %s: %s\n",
                                    kf_algorithm_name((kf_algorithm)a), kind_name[kind],
                                    (double)dampings[di], kf_status_string(s),
                                    kf_optimizer_last_error(opt));
                        }
                    }
                    /* Zero, rank-one or tiny activations with positive damping are ordinary
                     * situations (dead units, tiny batches): they must train. */
                    if ((kind == K_ZERO || kind == K_RANK1 || kind == K_IDENTITY) && di > 0) {
                        CHECK_STATUS(s, KF_OK);
                    }
                }
                kf_optimizer_destroy(opt);
            }
        }
    }
}

int main(void)
{
    test_primitives();
    test_optimizer();
    printf("test_numerics: %ld cases: %ld finite results, %ld clear errors (non-finite %ld, not "
           "positive definite %ld, no convergence %ld, invalid argument %ld), %ld bad\n",
           n_cases, n_finite, n_errors, by_status[-KF_ERR_NON_FINITE],
           by_status[-KF_ERR_NOT_POSITIVE_DEFINITE], by_status[-KF_ERR_NO_CONVERGENCE],
           by_status[-KF_ERR_INVALID_ARGUMENT], n_bad);
    return kf_test_finish("test_numerics");
}
