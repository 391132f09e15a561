/* Factor + solve (the per-step path of inverse_interval 1): the blocked Cholesky factor and its
 * GEMM-based solves against the explicit damped inverse times the matrix, in float and double, the
 * jitter retry, NOT_PD leaving everything unchanged, and the optimizer's step on both paths. */
#include "kf_optimizer_internal.h"
#include "kf_mat.h"
#include "kf_test.h"

static float *xalloc(size_t n)
{
    return (float *)kf_test_xmalloc((n ? n : 1) * sizeof(float));
}

/* F = X^T X / k + shift I (k rows), an SPD factor like the optimizer's; rank k when shift = 0. */
static void random_factor(kf_rng *rng, size_t n, size_t k, float shift, float *f)
{
    float *x = xalloc(k * n);
    kf_rng_fill(rng, x, k * n);
    kf__syrk(k, n, 1.0f / (float)k, x, n, 0.0f, f, n);
    for (size_t i = 0; i < n; i++) {
        f[i * n + i] += shift;
    }
    free(x);
}

/* Max |a - b| / max |b|. */
static double rel_diff(size_t count, const float *a, const float *b)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = fabs((double)a[i] - (double)b[i]), m = fabs((double)b[i]);
        num = d > num ? d : num;
        den = m > den ? m : den;
    }
    return den > 0.0 ? num / den : num;
}

/* Both solves against D = V P and D = P V with P the explicit damped inverse. */
static void test_solves_match_inverse(void)
{
    static const size_t dims[] = {1, 2, 3, 8, 127, 128, 129, 300, 513, 897};
    static const size_t ms[] = {1, 5, 130};
    kf_rng rng = {42};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        size_t n = dims[di];
        void *scratch = kf_test_xmalloc(kf__cholesky_scratch(n));
        float *f = xalloc(n * n), *inv = xalloc(n * n), *lb = xalloc(n * n);
        random_factor(&rng, n, 2 * n + 3, 0.0f, f);
        for (int prec = 0; prec < 2; prec++) {
            kf_precision p = prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE;
            double tol = prec ? 2e-3 : 2e-4;
            float jit_i = -1.0f, jit_c = -1.0f;
            CHECK_STATUS(kf__damped_inverse_ws(NULL, n, f, n, 0.05f, p, inv, n, &jit_i, scratch),
                         KF_OK);
            CHECK_STATUS(kf__damped_cholesky_ws(NULL, n, f, n, 0.05f, p, lb, n, &jit_c, scratch),
                         KF_OK);
            CHECK(jit_i == jit_c);
            /* The blocks above the diagonal blocks are exactly zero (deterministic checkpoints),
             * the diagonal blocks symmetric. */
            {
                int upper_zero = 1, sym = 1;
                for (size_t i = 0; i < n; i++) {
                    for (size_t j = i + 1; j < n; j++) {
                        if (j / KF_CHOL_NB > i / KF_CHOL_NB) {
                            upper_zero &= lb[i * n + j] == 0.0f;
                        } else {
                            sym &= fabsf(lb[i * n + j] - lb[j * n + i]) <=
                                   1e-5f * (fabsf(lb[i * n + j]) + fabsf(lb[j * n + i]));
                        }
                    }
                }
                CHECK(upper_zero);
                CHECK(sym);
            }
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                size_t m = ms[mi];
                float *v = xalloc(m * n), *want = xalloc(m * n), *got = xalloc(m * n);
                float *tmp = xalloc(m * n);
                kf_rng_fill(&rng, v, m * n);
                /* Right: D = V P (m x n). */
                kf__gemm(0, 0, m, n, n, 1.0f, v, n, inv, n, 0.0f, want, n);
                memcpy(got, v, m * n * sizeof(float));
                kf__chol_solve_right(m, n, lb, n, got, n, tmp);
                if (!(rel_diff(m * n, got, want) <= tol)) {
                    fprintf(stderr, "right solve n=%zu m=%zu prec=%d: rel diff %g\n", n, m, prec,
                            rel_diff(m * n, got, want));
                    CHECK(0);
                } else {
                    CHECK(1);
                }
                /* Left: D = P V (n x m). */
                kf__gemm(0, 0, n, m, n, 1.0f, inv, n, v, m, 0.0f, want, m);
                memcpy(got, v, m * n * sizeof(float));
                kf__chol_solve_left(n, m, lb, n, got, m, tmp);
                if (!(rel_diff(m * n, got, want) <= tol)) {
                    fprintf(stderr, "left solve n=%zu m=%zu prec=%d: rel diff %g\n", n, m, prec,
                            rel_diff(m * n, got, want));
                    CHECK(0);
                } else {
                    CHECK(1);
                }
                free(v);
                free(want);
                free(got);
                free(tmp);
            }
        }
        free(f);
        free(inv);
        free(lb);
        free(scratch);
    }
}

/* A singular factor without damping needs the jitter: both paths take the same jitter, and their
 * directions agree; an indefinite one fails (the optimizer's state is checked below). */
static void test_jitter_and_failure(void)
{
    kf_rng rng = {7};
    size_t n = 150, m = 4;
    void *scratch = kf_test_xmalloc(kf__cholesky_scratch(n));
    float *f = xalloc(n * n), *inv = xalloc(n * n), *lb = xalloc(n * n), *keep = xalloc(n * n);
    float *v = xalloc(m * n), *want = xalloc(m * n), *got = xalloc(m * n), *tmp = xalloc(m * n);
    random_factor(&rng, n, 20, 0.0f, f); /* rank 20 of 150 */
    for (int prec = 0; prec < 2; prec++) {
        kf_precision p = prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE;
        float jit_i = 0.0f, jit_c = 0.0f;
        CHECK_STATUS(kf__damped_inverse_ws(NULL, n, f, n, 0.0f, p, inv, n, &jit_i, scratch), KF_OK);
        CHECK_STATUS(kf__damped_cholesky_ws(NULL, n, f, n, 0.0f, p, lb, n, &jit_c, scratch), KF_OK);
        CHECK(jit_c > 0.0f);
        CHECK(jit_i == jit_c);
        kf_rng_fill(&rng, v, m * n);
        kf__gemm(0, 0, m, n, n, 1.0f, v, n, inv, n, 0.0f, want, n);
        memcpy(got, v, m * n * sizeof(float));
        kf__chol_solve_right(m, n, lb, n, got, n, tmp);
        /* The jittered factor is ill-conditioned (about 1e6): a looser tolerance. */
        CHECK(rel_diff(m * n, got, want) <= 2e-2);
    }
    /* Indefinite beyond what the jitter repairs. */
    for (size_t i = 0; i < n; i++) {
        f[i * n + i] = i == n / 2 ? -1e3f : 1.0f;
    }
    for (size_t i = 0; i < n * n; i++) {
        lb[i] = keep[i] = (float)i;
    }
    for (int prec = 0; prec < 2; prec++) {
        kf_errbuf e;
        e.msg[0] = '\0';
        CHECK_STATUS(kf__damped_cholesky_ws(&e, n, f, n, 0.1f,
                                            prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE, lb, n,
                                            NULL, scratch),
                     KF_ERR_NOT_POSITIVE_DEFINITE);
        CHECK(strstr(e.msg, "positive definite") != NULL);
    }
    /* A NaN or Inf is reported as such in both precisions: anywhere by the inverse, which
     * symmetrises, and in the lower triangle by the Cholesky factor, which reads only that one
     * (the optimizer's factors are exactly symmetric). The copies are the checks. */
    for (int where = 0; where < 3; where++) {
        size_t at = where == 0 ? 1 : where == 1 ? n * n - 2 : n + 1; /* upper, lower, diagonal */
        float saved = f[at];
        f[at] = where == 1 ? INFINITY : NAN;
        for (int prec = 0; prec < 2; prec++) {
            kf_precision p = prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE;
            CHECK_STATUS(kf__damped_inverse_ws(NULL, n, f, n, 0.1f, p, inv, n, NULL, scratch),
                         KF_ERR_NON_FINITE);
            if (where > 0) {
                CHECK_STATUS(kf__damped_cholesky_ws(NULL, n, f, n, 0.1f, p, lb, n, NULL, scratch),
                             KF_ERR_NON_FINITE);
            }
        }
        f[at] = saved;
    }
    free(scratch);
    free(f);
    free(inv);
    free(lb);
    free(keep);
    free(v);
    free(want);
    free(got);
    free(tmp);
}

#define NL 3
static const size_t widths[NL + 1] = {40, 150, 20, 7};

typedef struct net {
    float *w[NL], *b[NL], *gw[NL], *gb[NL], *x[NL], *g[NL];
    kf_layer_tensors t[NL];
} net;

static void net_init(net *m, uint64_t seed, size_t batch)
{
    kf_rng rng = {seed};
    for (size_t l = 0; l < NL; l++) {
        size_t in = widths[l], out = widths[l + 1];
        m->w[l] = xalloc(out * in);
        m->b[l] = xalloc(out);
        m->gw[l] = xalloc(out * in);
        m->gb[l] = xalloc(out);
        m->x[l] = xalloc(batch * in);
        m->g[l] = xalloc(batch * out);
        kf_rng_fill(&rng, m->w[l], out * in);
        kf_rng_fill(&rng, m->b[l], out);
        kf_rng_fill(&rng, m->gw[l], out * in);
        kf_rng_fill(&rng, m->gb[l], out);
        kf_rng_fill(&rng, m->x[l], batch * in);
        kf_rng_fill(&rng, m->g[l], batch * out);
        m->t[l] = (kf_layer_tensors){m->w[l], in, m->b[l], m->gw[l], in, m->gb[l]};
    }
}

static void net_free(net *m)
{
    for (size_t l = 0; l < NL; l++) {
        free(m->w[l]);
        free(m->b[l]);
        free(m->gw[l]);
        free(m->gb[l]);
        free(m->x[l]);
        free(m->g[l]);
    }
}

static kf_optimizer *make_opt(kf_algorithm algo, unsigned t_inv, kf_precision prec, float kl)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    size_t idx;
    kf_optimizer_params_init(&p, algo);
    p.inverse_interval = t_inv;
    p.inverse_precision = prec;
    p.momentum = 0.5f;
    p.weight_decay = 0.01f;
    p.learning_rate = 0.1f;
    p.damping = 0.05f;
    p.kl_clip = kl;
    if (kf_optimizer_create(&p, NULL, &opt) != KF_OK) {
        return NULL;
    }
    for (size_t l = 0; l < NL; l++) {
        kf_layer_params lp;
        kf_layer_params_init(&lp, widths[l + 1], widths[l]);
        if (kf_optimizer_add_layer(opt, &lp, &idx) != KF_OK) {
            kf_optimizer_destroy(opt);
            return NULL;
        }
    }
    return opt;
}

static void observe(kf_optimizer *opt, net *m, size_t batch)
{
    for (size_t l = 0; l < NL; l++) {
        CHECK_STATUS(kf_optimizer_observe_activations(opt, l, batch, m->x[l], widths[l]), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_gradients(opt, l, batch, m->g[l], widths[l + 1], 1.0f),
                     KF_OK);
    }
}

/* The first step of inverse_interval 1 (factor + solve) and of inverse_interval 2 (explicit
 * inverse; step 0 refreshes too) give the same update. */
static void test_optimizer_paths_agree(void)
{
    static const kf_algorithm algos[2] = {KF_ALGO_FOOF, KF_ALGO_KFAC};
    const size_t batch = 64;
    for (int a = 0; a < 2; a++) {
        for (int prec = 0; prec < 2; prec++) {
            for (int kl = 0; kl < 2; kl++) {
                kf_precision p = prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE;
                kf_optimizer *o1 = make_opt(algos[a], 1, p, kl ? 1e-3f : 0.0f);
                kf_optimizer *o2 = make_opt(algos[a], 2, p, kl ? 1e-3f : 0.0f);
                net m1, m2;
                CHECK(o1 && o2);
                if (!o1 || !o2) {
                    return;
                }
                net_init(&m1, 5, batch);
                net_init(&m2, 5, batch);
                observe(o1, &m1, batch);
                observe(o2, &m2, batch);
                CHECK_STATUS(kf_optimizer_step(o1, m1.t, NL), KF_OK);
                CHECK_STATUS(kf_optimizer_step(o2, m2.t, NL), KF_OK);
                CHECK(o1->layers[0].inv_chol == 1 && o2->layers[0].inv_chol == 0);
                for (size_t l = 0; l < NL; l++) {
                    size_t in = widths[l], out = widths[l + 1];
                    /* Compare the updates (W - W0), not the weights. */
                    float *d1 = xalloc(out * in), *d2 = xalloc(out * in);
                    net w0;
                    net_init(&w0, 5, batch);
                    for (size_t k = 0; k < out * in; k++) {
                        d1[k] = m1.w[l][k] - w0.w[l][k];
                        d2[k] = m2.w[l][k] - w0.w[l][k];
                    }
                    if (!(rel_diff(out * in, d1, d2) <= (prec ? 5e-3 : 1e-3))) {
                        fprintf(stderr, "%s prec %d kl %d layer %zu: rel diff %g\n",
                                kf_algorithm_name(algos[a]), prec, kl, l,
                                rel_diff(out * in, d1, d2));
                        CHECK(0);
                    } else {
                        CHECK(1);
                    }
                    net_free(&w0);
                    free(d1);
                    free(d2);
                }
                /* Further steps keep working (every one refreshes on the per-step path). */
                for (int s = 0; s < 3; s++) {
                    observe(o1, &m1, batch);
                    CHECK_STATUS(kf_optimizer_step(o1, m1.t, NL), KF_OK);
                }
                {
                    uint64_t count = 0;
                    kf_optimizer_inverse_count(o1, 1, &count);
                    CHECK(count == 4);
                }
                net_free(&m1);
                net_free(&m2);
                kf_optimizer_destroy(o1);
                kf_optimizer_destroy(o2);
            }
        }
    }
}

/* A factorisation that fails on the per-step path changes nothing: parameters, momentum, the
 * factors in use and the counters stay as they were. */
static void test_optimizer_not_pd_atomic(void)
{
    const size_t batch = 32;
    for (int prec = 0; prec < 2; prec++) {
        kf_optimizer *o = make_opt(KF_ALGO_KFAC, 1, prec ? KF_PRECISION_FLOAT : KF_PRECISION_DOUBLE,
                                   0.0f);
        net m, before;
        kf_layer *l1;
        size_t da, out;
        float *inv_a, *inv_g, *mom;
        uint64_t steps = 0, count = 0;
        CHECK(o != NULL);
        if (!o) {
            return;
        }
        net_init(&m, 9, batch);
        net_init(&before, 9, batch);
        observe(o, &m, batch);
        CHECK_STATUS(kf_optimizer_step(o, m.t, NL), KF_OK);
        l1 = &o->layers[1];
        da = l1->dim_a;
        out = l1->p.out;
        /* Corrupt the moving average in use (no new observation: the step uses it as it is). */
        for (size_t i = 0; i < da; i++) {
            l1->a.f[i * da + i] = -1e6f;
        }
        inv_a = xalloc(da * da);
        inv_g = xalloc(out * out);
        mom = xalloc(out * da);
        memcpy(inv_a, l1->a.inv, da * da * sizeof(float));
        memcpy(inv_g, l1->g.inv, out * out * sizeof(float));
        memcpy(mom, l1->mom, out * da * sizeof(float));
        for (size_t l = 0; l < NL; l++) {
            memcpy(before.w[l], m.w[l], widths[l] * widths[l + 1] * sizeof(float));
            memcpy(before.b[l], m.b[l], widths[l + 1] * sizeof(float));
        }
        CHECK_STATUS(kf_optimizer_step(o, m.t, NL), KF_ERR_NOT_POSITIVE_DEFINITE);
        CHECK(strstr(kf_optimizer_last_error(o), "layer 1") != NULL);
        for (size_t l = 0; l < NL; l++) {
            CHECK(memcmp(before.w[l], m.w[l], widths[l] * widths[l + 1] * sizeof(float)) == 0);
            CHECK(memcmp(before.b[l], m.b[l], widths[l + 1] * sizeof(float)) == 0);
        }
        CHECK(memcmp(inv_a, l1->a.inv, da * da * sizeof(float)) == 0);
        CHECK(memcmp(inv_g, l1->g.inv, out * out * sizeof(float)) == 0);
        CHECK(memcmp(mom, l1->mom, out * da * sizeof(float)) == 0);
        kf_optimizer_step_count(o, &steps);
        kf_optimizer_inverse_count(o, 1, &count);
        CHECK(steps == 1 && count == 1);
        free(inv_a);
        free(inv_g);
        free(mom);
        net_free(&m);
        net_free(&before);
        kf_optimizer_destroy(o);
    }
}

/* The observation's input check runs after the factor on plain layers: a NaN or Inf still names
 * the input, huge finite inputs still report the overflow, and nothing is taken either way. */
static void test_observation_checks(void)
{
    const size_t batch = 16;
    kf_optimizer *o = make_opt(KF_ALGO_KFAC, 1, KF_PRECISION_DOUBLE, 0.0f);
    net m;
    CHECK(o != NULL);
    if (!o) {
        return;
    }
    net_init(&m, 3, batch);
    m.x[1][5] = NAN;
    CHECK_STATUS(kf_optimizer_observe_activations(o, 1, batch, m.x[1], widths[1]),
                 KF_ERR_NON_FINITE);
    CHECK(strstr(kf_optimizer_last_error(o), "x of layer 1") != NULL);
    CHECK(o->layers[1].a.has_pending == 0);
    m.x[1][5] = -INFINITY;
    CHECK_STATUS(kf_optimizer_observe_activations(o, 1, batch, m.x[1], widths[1]),
                 KF_ERR_NON_FINITE);
    CHECK(strstr(kf_optimizer_last_error(o), "x of layer 1") != NULL);
    m.x[1][5] = 3e30f;
    CHECK_STATUS(kf_optimizer_observe_activations(o, 1, batch, m.x[1], widths[1]),
                 KF_ERR_NON_FINITE);
    CHECK(strstr(kf_optimizer_last_error(o), "overflows") != NULL);
    m.g[2][0] = INFINITY;
    CHECK_STATUS(kf_optimizer_observe_gradients(o, 2, batch, m.g[2], widths[3], 1.0f),
                 KF_ERR_NON_FINITE);
    CHECK(strstr(kf_optimizer_last_error(o), "g of layer 2") != NULL);
    CHECK(o->layers[2].g.has_pending == 0);
    net_free(&m);
    kf_optimizer_destroy(o);
}

int main(void)
{
    test_observation_checks();
    test_solves_match_inverse();
    test_jitter_and_failure();
    test_optimizer_paths_agree();
    test_optimizer_not_pd_atomic();
    return kf_test_finish("test_solve");
}
