/* The optimizer object: exact steps, schedule, momentum and weight decay, KL-clip, EKFAC's
 * diagonal, allocation, atomicity, checkpoints. */
#include "kf_test.h"

typedef struct counter {
    long allocs, frees;
    size_t live;
} counter;

static void *count_alloc(size_t size, void *ctx)
{
    counter *c = (counter *)ctx;
    c->allocs++;
    c->live += size;
    return malloc(size);
}

static void count_free(void *p, size_t size, void *ctx)
{
    counter *c = (counter *)ctx;
    c->frees++;
    c->live -= size;
    free(p);
}

/* Linear regression data: N examples, x in R^in, y = T x + t0 + noise in R^out. */
typedef struct problem {
    size_t n, in, out;
    float *x, *y;
} problem;

static problem make_problem(kf_rng *rng, size_t n, size_t in, size_t out, float noise)
{
    problem p;
    float *t = (float *)kf_test_xmalloc((in + 1) * out * sizeof(float));
    p.n = n;
    p.in = in;
    p.out = out;
    p.x = (float *)kf_test_xmalloc(n * in * sizeof(float));
    p.y = (float *)kf_test_xmalloc(n * out * sizeof(float));
    kf_rng_fill(rng, p.x, n * in);
    kf_rng_fill(rng, t, (in + 1) * out);
    for (size_t e = 0; e < n; e++) {
        for (size_t o = 0; o < out; o++) {
            double s = t[o * (in + 1) + in];
            for (size_t i = 0; i < in; i++) {
                s += (double)t[o * (in + 1) + i] * p.x[e * in + i];
            }
            p.y[e * out + o] = (float)s + noise * kf_rng_uniform(rng);
        }
    }
    free(t);
    return p;
}

static void free_problem(problem *p)
{
    free(p->x);
    free(p->y);
}

/* Gradient of L = (1/2N) sum ||W x + b - y||^2 at (w, b); also the residuals r (n x out). */
static double regression_grad(const problem *p, const float *w, const float *b, float *gw,
                              float *gb, float *r)
{
    double loss = 0.0;
    memset(gw, 0, p->out * p->in * sizeof(float));
    memset(gb, 0, p->out * sizeof(float));
    for (size_t e = 0; e < p->n; e++) {
        for (size_t o = 0; o < p->out; o++) {
            double s = b ? b[o] : 0.0;
            for (size_t i = 0; i < p->in; i++) {
                s += (double)w[o * p->in + i] * p->x[e * p->in + i];
            }
            s -= p->y[e * p->out + o];
            r[e * p->out + o] = (float)s;
            loss += 0.5 * s * s / (double)p->n;
            for (size_t i = 0; i < p->in; i++) {
                gw[o * p->in + i] += (float)(s * p->x[e * p->in + i] / (double)p->n);
            }
            gb[o] += (float)(s / (double)p->n);
        }
    }
    return loss;
}

/* The least-squares solution [W b] of min sum ||W x + b - y||^2, by the normal equations. */
static void least_squares(const problem *p, double *wt)
{
    size_t d = p->in + 1;
    double *m = (double *)kf_test_xmalloc(d * d * sizeof(double));
    double *rhs = (double *)kf_test_xmalloc(d * p->out * sizeof(double));
    memset(m, 0, d * d * sizeof(double));
    memset(rhs, 0, d * p->out * sizeof(double));
    for (size_t e = 0; e < p->n; e++) {
        for (size_t i = 0; i < d; i++) {
            double xi = i < p->in ? p->x[e * p->in + i] : 1.0;
            for (size_t j = 0; j < d; j++) {
                double xj = j < p->in ? p->x[e * p->in + j] : 1.0;
                m[i * d + j] += xi * xj;
            }
            for (size_t o = 0; o < p->out; o++) {
                rhs[i * p->out + o] += xi * p->y[e * p->out + o];
            }
        }
    }
    CHECK(kf_test_solve(d, p->out, m, rhs) == 0);
    for (size_t o = 0; o < p->out; o++) {
        for (size_t i = 0; i < d; i++) {
            wt[o * d + i] = rhs[i * p->out + o];
        }
    }
    free(m);
    free(rhs);
}

/* Type-2 vectors of (1/2)||f - y||^2 are the columns of I: hand them as out rows per example,
 * i.e. n*out "examples" with scale sqrt(out), so that G = (1/n) sum_n sum_c e_c e_c^T = I. */
static void observe_identity_g(kf_optimizer *opt, size_t layer, size_t n, size_t out)
{
    float *g = (float *)kf_test_xmalloc(n * out * out * sizeof(float));
    memset(g, 0, n * out * out * sizeof(float));
    for (size_t e = 0; e < n; e++) {
        for (size_t c = 0; c < out; c++) {
            g[(e * out + c) * out + c] = 1.0f;
        }
    }
    CHECK_STATUS(kf_optimizer_observe_gradients(opt, layer, n * out, g, out, sqrtf((float)out)), KF_OK);
    free(g);
}

static kf_optimizer *make_opt(kf_algorithm algo, float lr, float damping, const kf_allocator *al)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    CHECK_STATUS(kf_optimizer_params_init(&p, algo), KF_OK);
    p.learning_rate = lr;
    p.damping = damping;
    p.momentum = 0.0f;
    CHECK_STATUS(kf_optimizer_create(&p, al, &opt), KF_OK);
    return opt;
}

static void test_newton_step(kf_rng *rng)
{
    /* SPEC.md 7 item 3: one undamped step with lr 1 lands on the least-squares solution. */
    problem pr = make_problem(rng, 40, 5, 3, 0.3f);
    size_t d = pr.in + 1;
    double want[18];
    least_squares(&pr, want);
    for (int algo = 0; algo < 3; algo++) {
        kf_algorithm a = algo == 0 ? KF_ALGO_FOOF : algo == 1 ? KF_ALGO_KFAC : KF_ALGO_KFAC_EXACT_DAMPING;
        kf_optimizer *opt = make_opt(a, 1.0f, a == KF_ALGO_FOOF ? 0.0f : 1e-10f, NULL);
        kf_layer_params lp;
        size_t idx;
        float w[15] = {0}, b[3] = {0}, gw[15], gb[3], r[120], got[18];
        kf_layer_tensors t = {w, 5, b, gw, 5, gb};
        kf_layer_params_init(&lp, 3, 5);
        CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
        kf_rng_fill(rng, w, 15);
        regression_grad(&pr, w, b, gw, gb, r);
        CHECK_STATUS(kf_optimizer_observe_activations(opt, idx, pr.n, pr.x, pr.in), KF_OK);
        if (a != KF_ALGO_FOOF) {
            observe_identity_g(opt, idx, pr.n, pr.out);
        }
        CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
        for (size_t o = 0; o < 3; o++) {
            for (size_t i = 0; i < 5; i++) {
                got[o * d + i] = w[o * 5 + i];
            }
            got[o * d + 5] = b[o];
        }
        kf_test_close("one undamped step = least squares", 3, d, got, d, want, d, 1e-3, 1e-3);
        kf_optimizer_destroy(opt);
    }
    free_problem(&pr);
}

static void test_foof_is_kfac_with_identity_g(kf_rng *rng)
{
    /* SPEC.md 7 item 14: with G = I, K-FAC's step (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1} is
     * FOOF with damping pi gamma and learning rate lr / (1 + gamma/pi). */
    problem pr = make_problem(rng, 30, 6, 4, 0.5f);
    float w0[24], b0[4], wk[24], bk[4], wf[24], bf[4], gw[24], gb[4], r[120], pi = 0.0f;
    double lambda = 0.04, gamma = sqrt(lambda), want[28];
    kf_layer_params lp;
    size_t idx;
    kf_optimizer *k = make_opt(KF_ALGO_KFAC, 0.5f, (float)lambda, NULL), *f;
    kf_layer_tensors tk = {wk, 6, bk, gw, 6, gb}, tf = {wf, 6, bf, gw, 6, gb};
    kf_rng_fill(rng, w0, 24);
    kf_rng_fill(rng, b0, 4);
    memcpy(wk, w0, sizeof w0);
    memcpy(bk, b0, sizeof b0);
    memcpy(wf, w0, sizeof w0);
    memcpy(bf, b0, sizeof b0);
    regression_grad(&pr, w0, b0, gw, gb, r);
    kf_layer_params_init(&lp, 4, 6);
    CHECK_STATUS(kf_optimizer_add_layer(k, &lp, &idx), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(k, idx, pr.n, pr.x, pr.in), KF_OK);
    observe_identity_g(k, idx, pr.n, pr.out);
    CHECK_STATUS(kf_optimizer_step(k, &tk, 1), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_pi(k, 0, &pi), KF_OK);
    CHECK(pi > 0.0f && pi != 1.0f);
    f = make_opt(KF_ALGO_FOOF, (float)(0.5 / (1.0 + gamma / pi)), (float)(pi * gamma), NULL);
    CHECK_STATUS(kf_optimizer_add_layer(f, &lp, &idx), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(f, idx, pr.n, pr.x, pr.in), KF_OK);
    CHECK_STATUS(kf_optimizer_step(f, &tf, 1), KF_OK);
    for (size_t i = 0; i < 24; i++) {
        want[i] = wk[i];
    }
    kf_test_close("FOOF = K-FAC with G = I (weights)", 4, 6, wf, 6, want, 6, 1e-4, 1e-6);
    for (size_t i = 0; i < 4; i++) {
        want[i] = bk[i];
    }
    kf_test_close("FOOF = K-FAC with G = I (bias)", 1, 4, bf, 4, want, 4, 1e-4, 1e-6);
    kf_optimizer_destroy(k);
    kf_optimizer_destroy(f);
    free_problem(&pr);
}

/* The EKFAC step of a layer from a batch with factor_decay 0 (so s is this batch's diagonal)
 * against s* = diag((Q_A (x) Q_G)^T C (Q_A (x) Q_G)) with the exact C of the mean loss, formed
 * densely from per-example gradients (SPEC.md 7 item 11). */
static void test_ekfac(kf_rng *rng)
{
    enum { N = 7, IN = 3, OUT = 2, R = 3, D = IN + 1 };
    for (int shared = 0; shared <= 1; shared++) {
        size_t r = shared ? R : 1, rows = N * r;
        float x[N * R * IN], g[N * R * OUT], a[D * D], gf[OUT * OUT];
        float qa[D * D], qg[OUT * OUT], ea[D], eg[OUT], s[OUT * D], v[OUT * D], dref[OUT * D];
        float w[OUT * IN], b[OUT], gw[OUT * IN], gb[OUT], w0[OUT * IN], b0[OUT];
        double c[(OUT * D) * (OUT * D)], lambda = 0.05, want[OUT * D];
        kf_context *ctx = NULL;
        kf_optimizer_params p;
        kf_optimizer *opt = NULL;
        kf_layer_params lp;
        size_t idx;
        kf_layer_tensors t = {w, IN, b, gw, IN, gb};
        kf_rng_fill(rng, x, rows * IN);
        kf_rng_fill(rng, g, rows * OUT);
        kf_rng_fill(rng, w0, OUT * IN);
        kf_rng_fill(rng, b0, OUT);
        kf_rng_fill(rng, gw, OUT * IN);
        kf_rng_fill(rng, gb, OUT);
        memcpy(w, w0, sizeof w);
        memcpy(b, b0, sizeof b);
        CHECK_STATUS(kf_context_create(NULL, &ctx), KF_OK);
        CHECK_STATUS(kf_activation_factor(ctx, N, r, IN, x, IN, 1, KF_SHARED_EXPAND, a, D), KF_OK);
        CHECK_STATUS(kf_gradient_factor(ctx, N, r, OUT, g, OUT, KF_SHARED_EXPAND, r, 1.0f, gf, OUT), KF_OK);
        CHECK_STATUS(kf_sym_eig(ctx, D, a, D, ea, qa, D), KF_OK);
        CHECK_STATUS(kf_sym_eig(ctx, OUT, gf, OUT, eg, qg, OUT), KF_OK);
        /* C = (1/(N R')) sum_n vec(J_n) vec(J_n)^T, J_n = sum_r g a~^T (rvec, out x D). */
        memset(c, 0, sizeof c);
        for (size_t e = 0; e < N; e++) {
            double jn[OUT * D] = {0};
            for (size_t k = 0; k < r; k++) {
                for (size_t o = 0; o < OUT; o++) {
                    for (size_t i = 0; i < D; i++) {
                        double ai = i < IN ? x[(e * r + k) * IN + i] : 1.0;
                        jn[o * D + i] += (double)g[(e * r + k) * OUT + o] * ai;
                    }
                }
            }
            for (size_t u = 0; u < OUT * D; u++) {
                for (size_t q = 0; q < OUT * D; q++) {
                    c[u * OUT * D + q] += jn[u] * jn[q] / ((double)N * (double)r);
                }
            }
        }
        /* s*_{ij} = (q_g,i (x) q_a,j)^T C (q_g,i (x) q_a,j). */
        for (size_t i = 0; i < OUT; i++) {
            for (size_t j = 0; j < D; j++) {
                double u[OUT * D], acc = 0.0;
                for (size_t o = 0; o < OUT; o++) {
                    for (size_t k = 0; k < D; k++) {
                        u[o * D + k] = (double)qg[o * OUT + i] * qa[k * D + j];
                    }
                }
                for (size_t m = 0; m < OUT * D; m++) {
                    for (size_t q = 0; q < OUT * D; q++) {
                        acc += u[m] * c[m * OUT * D + q] * u[q];
                    }
                }
                s[i * D + j] = (float)acc;
            }
        }
        for (size_t o = 0; o < OUT; o++) {
            memcpy(v + o * D, gw + o * IN, IN * sizeof(float));
            v[o * D + IN] = gb[o];
        }
        CHECK_STATUS(kf_eigenbasis_apply(ctx, OUT, D, v, D, qg, OUT, NULL, qa, D, NULL, s, D, (float)lambda, dref, D), KF_OK);
        kf_optimizer_params_init(&p, KF_ALGO_EKFAC);
        p.learning_rate = 1.0f;
        p.damping = (float)lambda;
        p.factor_decay = 0.0f;
        CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
        kf_layer_params_init(&lp, OUT, IN);
        lp.shared = r;
        CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_activations(opt, idx, N, x, IN), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_gradients(opt, idx, N, g, OUT, 1.0f), KF_OK);
        CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
        for (size_t o = 0; o < OUT; o++) {
            for (size_t i = 0; i < IN; i++) {
                want[o * D + i] = (double)w0[o * IN + i] - dref[o * D + i];
            }
            want[o * D + IN] = (double)b0[o] - dref[o * D + IN];
        }
        kf_test_close(shared ? "EKFAC step, shared axis (exact per-example diagonal)"
                             : "EKFAC step (exact per-example diagonal)",
                      OUT, IN, w, IN, want, D, 1e-4, 1e-5);
        kf_optimizer_destroy(opt);

        /* With one example K-FAC is exact, so EKFAC's diagonal is beta alpha^T: EKFAC = K-FAC exact. */
        if (!shared) {
            float we[OUT * IN], be[OUT], wk[OUT * IN], bk[OUT];
            kf_layer_tensors te = {we, IN, be, gw, IN, gb}, tk = {wk, IN, bk, gw, IN, gb};
            kf_optimizer *o1 = NULL, *o2 = NULL;
            double wd[OUT * IN];
            memcpy(we, w0, sizeof we);
            memcpy(wk, w0, sizeof wk);
            memcpy(be, b0, sizeof be);
            memcpy(bk, b0, sizeof bk);
            CHECK_STATUS(kf_optimizer_create(&p, NULL, &o1), KF_OK);
            p.algorithm = KF_ALGO_KFAC_EXACT_DAMPING;
            CHECK_STATUS(kf_optimizer_create(&p, NULL, &o2), KF_OK);
            p.algorithm = KF_ALGO_EKFAC;
            lp.shared = 1;
            CHECK_STATUS(kf_optimizer_add_layer(o1, &lp, &idx), KF_OK);
            CHECK_STATUS(kf_optimizer_add_layer(o2, &lp, &idx), KF_OK);
            CHECK_STATUS(kf_optimizer_observe_activations(o1, 0, 1, x, IN), KF_OK);
            CHECK_STATUS(kf_optimizer_observe_gradients(o1, 0, 1, g, OUT, 1.0f), KF_OK);
            CHECK_STATUS(kf_optimizer_observe_activations(o2, 0, 1, x, IN), KF_OK);
            CHECK_STATUS(kf_optimizer_observe_gradients(o2, 0, 1, g, OUT, 1.0f), KF_OK);
            CHECK_STATUS(kf_optimizer_step(o1, &te, 1), KF_OK);
            CHECK_STATUS(kf_optimizer_step(o2, &tk, 1), KF_OK);
            for (size_t i = 0; i < OUT * IN; i++) {
                wd[i] = wk[i];
            }
            kf_test_close("EKFAC = K-FAC exact when K-FAC is exact", OUT, IN, we, IN, wd, IN, 1e-4, 1e-5);
            kf_optimizer_destroy(o1);
            kf_optimizer_destroy(o2);
        }
        kf_context_destroy(ctx);
    }
}

static void test_momentum_and_weight_decay(kf_rng *rng)
{
    /* SGD on L = 1/2 ||W - T||^2 (gradient W - T), and FOOF with a constant A, against the closed
     * forms v <- mu v + d, W <- W - lr (v + wd W), in double. */
    for (int foof = 0; foof <= 1; foof++) {
        enum { OUT = 3, IN = 4 };
        float w[OUT * IN], tgt[OUT * IN], gw[OUT * IN], x[8 * IN], a[IN * IN], ainv[IN * IN];
        double wr[OUT * IN], vr[OUT * IN] = {0}, mu = 0.7, lr = 0.1, wd = 0.05;
        kf_optimizer_params p;
        kf_optimizer *opt = NULL;
        kf_layer_params lp;
        kf_context *ctx = NULL;
        size_t idx;
        kf_layer_tensors t = {w, IN, NULL, gw, IN, NULL};
        kf_rng_fill(rng, w, OUT * IN);
        kf_rng_fill(rng, tgt, OUT * IN);
        kf_rng_fill(rng, x, 8 * IN);
        for (size_t i = 0; i < OUT * IN; i++) {
            wr[i] = w[i];
        }
        kf_optimizer_params_init(&p, foof ? KF_ALGO_FOOF : KF_ALGO_SGD);
        p.learning_rate = (float)lr;
        p.momentum = (float)mu;
        p.weight_decay = (float)wd;
        p.damping = 0.5f;
        p.inverse_interval = 1;
        CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
        kf_layer_params_init(&lp, OUT, IN);
        lp.bias = 0;
        CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
        CHECK_STATUS(kf_context_create(NULL, &ctx), KF_OK);
        CHECK_STATUS(kf_activation_factor(ctx, 8, 1, IN, x, IN, 0, KF_SHARED_EXPAND, a, IN), KF_OK);
        CHECK_STATUS(kf_damped_inverse(ctx, IN, a, IN, 0.5f, KF_PRECISION_DOUBLE, ainv, IN, NULL), KF_OK);
        for (int step = 0; step < 5; step++) {
            for (size_t i = 0; i < OUT * IN; i++) {
                gw[i] = w[i] - tgt[i];
            }
            if (foof) {
                CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 8, x, IN), KF_OK);
            }
            CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
            for (size_t o = 0; o < OUT; o++) {
                for (size_t i = 0; i < IN; i++) {
                    double d = 0.0;
                    if (foof) {
                        for (size_t k = 0; k < IN; k++) {
                            d += (wr[o * IN + k] - tgt[o * IN + k]) * ainv[k * IN + i];
                        }
                    } else {
                        d = wr[o * IN + i] - tgt[o * IN + i];
                    }
                    vr[o * IN + i] = mu * vr[o * IN + i] + d;
                }
            }
            for (size_t i = 0; i < OUT * IN; i++) {
                wr[i] -= lr * (vr[i] + wd * wr[i]);
            }
        }
        kf_test_close(foof ? "FOOF momentum + decoupled weight decay closed form"
                           : "SGD momentum + decoupled weight decay closed form",
                      OUT, IN, w, IN, wr, IN, 1e-4, 1e-5);
        kf_optimizer_destroy(opt);
        kf_context_destroy(ctx);
    }
}

static void test_kl_clip(kf_rng *rng)
{
    problem pr = make_problem(rng, 20, 4, 2, 1.0f);
    float w[8], b[2], w0[8], b0[8], gw[8], gb[2], r[40], a[25], d[10], v[10];
    kf_context *ctx = NULL;
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx;
    kf_layer_tensors t = {w, 4, b, gw, 4, gb};
    double lr = 0.5, kappa = 1e-3, dot = 0.0, nu, bound;
    kf_rng_fill(rng, w0, 8);
    kf_rng_fill(rng, b0, 2);
    memcpy(w, w0, sizeof w);
    memcpy(b, b0, sizeof b);
    regression_grad(&pr, w, b, gw, gb, r);
    kf_optimizer_params_init(&p, KF_ALGO_FOOF);
    p.learning_rate = (float)lr;
    p.damping = 0.1f;
    p.kl_clip = (float)kappa;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
    kf_layer_params_init(&lp, 2, 4);
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, pr.n, pr.x, pr.in), KF_OK);
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
    /* The unclipped direction d, then nu from the applied step, then the bound. */
    CHECK_STATUS(kf_context_create(NULL, &ctx), KF_OK);
    CHECK_STATUS(kf_activation_factor(ctx, pr.n, 1, 4, pr.x, 4, 1, KF_SHARED_EXPAND, a, 5), KF_OK);
    for (size_t o = 0; o < 2; o++) {
        memcpy(v + o * 5, gw + o * 4, 4 * sizeof(float));
        v[o * 5 + 4] = gb[o];
    }
    CHECK_STATUS(kf_foof_direction(ctx, 2, 5, v, 5, a, 5, 0.1f, d, 5), KF_OK);
    for (size_t i = 0; i < 10; i++) {
        dot += (double)d[i] * v[i];
    }
    nu = ((double)w0[0] - w[0]) / (lr * d[0]);
    bound = lr * lr * nu * nu * dot;
    CHECK(nu > 0.0 && nu < 1.0); /* the clip was active with these numbers */
    CHECK(bound <= kappa * (1.0 + 1e-3));
    CHECK(fabs(bound - kappa) < 1e-3 * kappa);
    for (size_t i = 1; i < 8; i++) {
        CHECK(fabs(((double)w0[i] - w[i]) - lr * nu * d[i + i / 4]) < 1e-5);
    }
    kf_optimizer_destroy(opt);
    kf_context_destroy(ctx);
    free_problem(&pr);
}

static void test_schedule(kf_rng *rng)
{
    /* T_stats = 2, T_inv = 3: statistics on even steps; refreshes on steps 0, 3, 6, 9, and after a
     * damping change. */
    float w[6], b[2], gw[6], gb[2], x[5 * 3], g[5 * 2];
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx;
    kf_layer_tensors t = {w, 3, b, gw, 3, gb};
    static const uint64_t expect[12] = {1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 5};
    kf_rng_fill(rng, w, 6);
    kf_rng_fill(rng, b, 2);
    kf_rng_fill(rng, x, 15);
    kf_rng_fill(rng, g, 10);
    kf_optimizer_params_init(&p, KF_ALGO_KFAC);
    p.stats_interval = 2;
    p.inverse_interval = 3;
    p.learning_rate = 1e-3f;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
    kf_layer_params_init(&lp, 2, 3);
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
    for (int step = 0; step < 12; step++) {
        int needed = -1;
        uint64_t count = 0, steps = 0;
        CHECK_STATUS(kf_optimizer_needs_statistics(opt, &needed), KF_OK);
        CHECK(needed == (step % 2 == 0));
        CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 5, x, 3), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_gradients(opt, 0, 5, g, 2, 5.0f), KF_OK);
        kf_rng_fill(rng, gw, 6);
        kf_rng_fill(rng, gb, 2);
        if (step == 8) {
            CHECK_STATUS(kf_optimizer_set_damping(opt, 0.2f), KF_OK);
        }
        CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
        CHECK_STATUS(kf_optimizer_inverse_count(opt, 0, &count), KF_OK);
        CHECK(count == expect[step]);
        CHECK_STATUS(kf_optimizer_step_count(opt, &steps), KF_OK);
        CHECK(steps == (uint64_t)step + 1);
    }
    {
        float damping = 0.0f;
        CHECK_STATUS(kf_optimizer_layer_damping(opt, 0, &damping), KF_OK);
        CHECK(damping == 0.2f);
    }
    kf_optimizer_destroy(opt);
}

/* A three-layer problem with every algorithm in one optimizer (per-layer overrides), used by the
 * allocation, atomicity and resume tests. */
typedef struct rig {
    size_t n;
    float w0[4 * 6], b0[4], w1[5 * 4], b1[5], w2[3 * 5];
    float gw0[4 * 6], gb0[4], gw1[5 * 4], gb1[5], gw2[3 * 5];
    float x0[8 * 6], x1[8 * 2 * 4], x2[8 * 5];
    float g0[8 * 4], g1[8 * 2 * 5], g2[8 * 3];
    kf_layer_tensors t[3];
} rig;

static void rig_init(rig *r, kf_rng *rng)
{
    r->n = 8;
    kf_rng_fill(rng, r->w0, 24);
    kf_rng_fill(rng, r->b0, 4);
    kf_rng_fill(rng, r->w1, 20);
    kf_rng_fill(rng, r->b1, 5);
    kf_rng_fill(rng, r->w2, 15);
    r->t[0] = (kf_layer_tensors){r->w0, 6, r->b0, r->gw0, 6, r->gb0};
    r->t[1] = (kf_layer_tensors){r->w1, 4, r->b1, r->gw1, 4, r->gb1};
    r->t[2] = (kf_layer_tensors){r->w2, 5, NULL, r->gw2, 5, NULL};
}

/* Deterministic per-step data: a fresh generator seeded by the step number. */
static void rig_data(rig *r, int step)
{
    kf_rng g = {0x1234567ULL + 7919ULL * (uint64_t)(step + 1)};
    kf_rng_fill(&g, r->gw0, 24);
    kf_rng_fill(&g, r->gb0, 4);
    kf_rng_fill(&g, r->gw1, 20);
    kf_rng_fill(&g, r->gb1, 5);
    kf_rng_fill(&g, r->gw2, 15);
    kf_rng_fill(&g, r->x0, sizeof r->x0 / sizeof(float));
    kf_rng_fill(&g, r->x1, sizeof r->x1 / sizeof(float));
    kf_rng_fill(&g, r->x2, sizeof r->x2 / sizeof(float));
    kf_rng_fill(&g, r->g0, sizeof r->g0 / sizeof(float));
    kf_rng_fill(&g, r->g1, sizeof r->g1 / sizeof(float));
    kf_rng_fill(&g, r->g2, sizeof r->g2 / sizeof(float));
}

static kf_optimizer *rig_optimizer(kf_algorithm algo, const kf_allocator *al)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx;
    kf_optimizer_params_init(&p, algo);
    p.learning_rate = algo == KF_ALGO_ADAM ? 1e-2f : 0.05f;
    p.momentum = algo == KF_ALGO_ADAM ? 0.0f : 0.5f;
    p.weight_decay = 0.01f;
    p.damping = algo == KF_ALGO_SGD || algo == KF_ALGO_ADAM ? 0.0f : 0.3f;
    p.inverse_interval = 3;
    p.kl_clip = 0.01f;
    if (kf_optimizer_create(&p, al, &opt) != KF_OK) {
        return NULL;
    }
    kf_layer_params_init(&lp, 4, 6);
    if (kf_optimizer_add_layer(opt, &lp, &idx) != KF_OK) {
        kf_optimizer_destroy(opt);
        return NULL;
    }
    kf_layer_params_init(&lp, 5, 4);
    lp.shared = 2;
    lp.shared_mode = KF_SHARED_REDUCE;
    if (kf_optimizer_add_layer(opt, &lp, &idx) != KF_OK) {
        kf_optimizer_destroy(opt);
        return NULL;
    }
    kf_layer_params_init(&lp, 3, 5);
    lp.bias = 0;
    /* The last layer uses another algorithm when the first allows (overrides). */
    lp.algorithm = algo == KF_ALGO_SGD ? KF_ALGO_ADAM : KF_ALGO_SGD;
    if (kf_optimizer_add_layer(opt, &lp, &idx) != KF_OK) {
        kf_optimizer_destroy(opt);
        return NULL;
    }
    return opt;
}

static kf_status rig_step(kf_optimizer *opt, rig *r, int step)
{
    int needed = 0;
    kf_status s;
    rig_data(r, step);
    kf_optimizer_needs_statistics(opt, &needed);
    if (needed) {
        if ((s = kf_optimizer_observe_activations(opt, 0, r->n, r->x0, 6)) != KF_OK ||
            (s = kf_optimizer_observe_activations(opt, 1, r->n, r->x1, 4)) != KF_OK ||
            (s = kf_optimizer_observe_activations(opt, 2, r->n, r->x2, 5)) != KF_OK ||
            (s = kf_optimizer_observe_gradients(opt, 0, r->n, r->g0, 4, (float)r->n)) != KF_OK ||
            (s = kf_optimizer_observe_gradients(opt, 1, r->n, r->g1, 5, (float)r->n)) != KF_OK ||
            (s = kf_optimizer_observe_gradients(opt, 2, r->n, r->g2, 3, (float)r->n)) != KF_OK) {
            return s;
        }
    }
    return kf_optimizer_step(opt, r->t, 3);
}

static int rig_equal(const rig *a, const rig *b)
{
    return memcmp(a->w0, b->w0, sizeof a->w0) == 0 && memcmp(a->b0, b->b0, sizeof a->b0) == 0 &&
           memcmp(a->w1, b->w1, sizeof a->w1) == 0 && memcmp(a->b1, b->b1, sizeof a->b1) == 0 &&
           memcmp(a->w2, b->w2, sizeof a->w2) == 0;
}

static unsigned char *snapshot(kf_optimizer *opt, size_t *size)
{
    unsigned char *buf;
    size_t written = 0;
    CHECK_STATUS(kf_optimizer_checkpoint_size(opt, size), KF_OK);
    buf = (unsigned char *)kf_test_xmalloc(*size);
    CHECK_STATUS(kf_optimizer_save(opt, buf, *size, &written), KF_OK);
    CHECK(written == *size);
    return buf;
}

static void test_allocation_and_resume(void)
{
    static const kf_algorithm algos[] = {KF_ALGO_SGD, KF_ALGO_ADAM, KF_ALGO_FOOF, KF_ALGO_KFAC,
                                         KF_ALGO_KFAC_EXACT_DAMPING, KF_ALGO_EKFAC};
    for (size_t ai = 0; ai < 6; ai++) {
        counter c = {0, 0, 0};
        kf_allocator al = {count_alloc, count_free, &c};
        kf_rng rng = {99 + ai};
        rig straight, resumed;
        kf_optimizer *a = rig_optimizer(algos[ai], &al), *b = NULL, *bb = NULL;
        unsigned char *ck;
        size_t ck_size, mem = 0;
        long allocs;
        int ok = 1;
        CHECK(a != NULL);
        rig_init(&straight, &rng);
        resumed = straight;
        rig_init(&resumed, &rng); /* re-point the tensors at resumed's own arrays */
        memcpy(resumed.w0, straight.w0, sizeof straight.w0);
        memcpy(resumed.b0, straight.b0, sizeof straight.b0);
        memcpy(resumed.w1, straight.w1, sizeof straight.w1);
        memcpy(resumed.b1, straight.b1, sizeof straight.b1);
        memcpy(resumed.w2, straight.w2, sizeof straight.w2);
        /* A first step grows the observation workspace once (reduce layer); after that, steps
         * and observations of the same size allocate nothing. */
        CHECK_STATUS(kf_optimizer_reserve_batch(a, 8), KF_OK);
        allocs = c.allocs;
        for (int step = 0; step < 10; step++) {
            ok &= rig_step(a, &straight, step) == KF_OK;
        }
        CHECK(ok);
        CHECK(c.allocs == allocs);
        CHECK_STATUS(kf_optimizer_memory_bytes(a, &mem), KF_OK);
        CHECK(mem > 0 && mem <= c.live + 1024);
        /* Resume: 4 steps, checkpoint, a fresh handle from it, 6 more; equal to 10 straight. */
        b = rig_optimizer(algos[ai], NULL);
        for (int step = 0; step < 4; step++) {
            ok &= rig_step(b, &resumed, step) == KF_OK;
        }
        ck = snapshot(b, &ck_size);
        kf_optimizer_destroy(b);
        CHECK_STATUS(kf_optimizer_create_from_checkpoint(ck, ck_size, NULL, &bb), KF_OK);
        for (int step = 4; step < 10; step++) {
            ok &= bb && rig_step(bb, &resumed, step) == KF_OK;
        }
        CHECK(ok);
        CHECK(rig_equal(&straight, &resumed));
        {
            /* And the states themselves are identical. */
            size_t s1, s2;
            unsigned char *c1 = snapshot(a, &s1), *c2 = snapshot(bb, &s2);
            CHECK(s1 == s2 && memcmp(c1, c2, s1) == 0);
            free(c1);
            free(c2);
        }
        /* Restore into an existing, fresh handle too, through a file. */
        {
            kf_optimizer *fresh = rig_optimizer(algos[ai], NULL);
            size_t s1, s2;
            unsigned char *c1, *c2;
            CHECK_STATUS(kf_optimizer_save_file(bb, "test_optimizer.kfck"), KF_OK);
            CHECK_STATUS(kf_optimizer_restore_file(fresh, "test_optimizer.kfck"), KF_OK);
            c1 = snapshot(bb, &s1);
            c2 = snapshot(fresh, &s2);
            CHECK(s1 == s2 && memcmp(c1, c2, s1) == 0);
            free(c1);
            free(c2);
            kf_optimizer_destroy(fresh);
            fresh = NULL;
            CHECK_STATUS(kf_optimizer_create_from_file("test_optimizer.kfck", NULL, &fresh), KF_OK);
            CHECK(fresh != NULL);
            kf_optimizer_destroy(fresh);
            remove("test_optimizer.kfck");
        }
        kf_optimizer_destroy(bb);
        free(ck);
        kf_optimizer_destroy(a);
        CHECK(c.live == 0 && c.allocs == c.frees);
    }
}

static void test_corrupt_checkpoints(void)
{
    kf_rng rng = {5};
    rig r;
    kf_optimizer *opt = rig_optimizer(KF_ALGO_KFAC, NULL), *other, *made = NULL;
    unsigned char *good, *before, *after, *bad;
    size_t size, s2, s3;
    rig_init(&r, &rng);
    for (int step = 0; step < 3; step++) {
        CHECK_STATUS(rig_step(opt, &r, step), KF_OK);
    }
    good = snapshot(opt, &size);
    other = rig_optimizer(KF_ALGO_KFAC, NULL);
    for (int step = 0; step < 2; step++) {
        CHECK_STATUS(rig_step(other, &r, 10 + step), KF_OK);
    }
    before = snapshot(other, &s2);
    bad = (unsigned char *)kf_test_xmalloc(size);
    /* Truncated at every length. */
    {
        int all = 1;
        for (size_t len = 0; len < size; len += (len < 64 ? 1 : 37)) {
            all &= kf_optimizer_restore(other, good, len) == KF_ERR_FORMAT;
            all &= kf_optimizer_create_from_checkpoint(good, len, NULL, &made) == KF_ERR_FORMAT;
        }
        CHECK(all);
    }
    /* Every single bit flipped (sampled) is caught by the checksum or the header checks. */
    {
        int all = 1;
        for (size_t bit = 0; bit < size * 8; bit += 13) {
            memcpy(bad, good, size);
            bad[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            all &= kf_optimizer_restore(other, bad, size) == KF_ERR_FORMAT;
        }
        CHECK(all);
        CHECK(strstr(kf_optimizer_last_error(other), "checkpoint") != NULL);
    }
    /* Another format version. */
    memcpy(bad, good, size);
    bad[8] ^= 0x02;
    CHECK_STATUS(kf_optimizer_restore(other, bad, size), KF_ERR_FORMAT);
    CHECK(strstr(kf_optimizer_last_error(other), "version") != NULL);
    /* Another shape. */
    {
        kf_optimizer_params p;
        kf_optimizer *shape = NULL;
        kf_layer_params lp;
        size_t idx;
        kf_optimizer_params_init(&p, KF_ALGO_KFAC);
        CHECK_STATUS(kf_optimizer_create(&p, NULL, &shape), KF_OK);
        kf_layer_params_init(&lp, 4, 7);
        CHECK_STATUS(kf_optimizer_add_layer(shape, &lp, &idx), KF_OK);
        CHECK_STATUS(kf_optimizer_restore(shape, good, size), KF_ERR_FORMAT);
        kf_layer_params_init(&lp, 5, 4);
        CHECK_STATUS(kf_optimizer_add_layer(shape, &lp, &idx), KF_OK);
        kf_layer_params_init(&lp, 3, 5);
        CHECK_STATUS(kf_optimizer_add_layer(shape, &lp, &idx), KF_OK);
        CHECK_STATUS(kf_optimizer_restore(shape, good, size), KF_ERR_FORMAT);
        CHECK(strstr(kf_optimizer_last_error(shape), "layer 0") != NULL);
        kf_optimizer_destroy(shape);
    }
    after = snapshot(other, &s3);
    CHECK(s2 == s3 && memcmp(before, after, s2) == 0);
    CHECK_STATUS(kf_optimizer_restore_file(other, "/nonexistent/dir/x.kfck"), KF_ERR_IO);
    CHECK_STATUS(kf_optimizer_save_file(other, "/nonexistent/dir/x.kfck"), KF_ERR_IO);
    CHECK_STATUS(kf_optimizer_restore(other, good, size), KF_OK);
    free(good);
    free(before);
    free(after);
    free(bad);
    kf_optimizer_destroy(opt);
    kf_optimizer_destroy(other);
}

static void test_non_finite_changes_nothing(void)
{
    static const kf_algorithm algos[] = {KF_ALGO_FOOF, KF_ALGO_KFAC, KF_ALGO_EKFAC, KF_ALGO_ADAM};
    for (size_t ai = 0; ai < 4; ai++) {
        kf_rng rng = {77};
        rig r, keep;
        kf_optimizer *opt = rig_optimizer(algos[ai], NULL);
        unsigned char *before, *after;
        size_t s1, s2;
        rig_init(&r, &rng);
        for (int step = 0; step < 2; step++) {
            CHECK_STATUS(rig_step(opt, &r, step), KF_OK);
        }
        before = snapshot(opt, &s1);
        keep = r;
        rig_data(&r, 2);
        r.x0[3] = NAN;
        CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, r.n, r.x0, 6),
                     algos[ai] != KF_ALGO_ADAM ? KF_ERR_NON_FINITE : KF_OK);
        r.g1[5] = INFINITY;
        CHECK_STATUS(kf_optimizer_observe_gradients(opt, 1, r.n, r.g1, 5, 8.0f),
                     algos[ai] == KF_ALGO_KFAC || algos[ai] == KF_ALGO_EKFAC ? KF_ERR_NON_FINITE : KF_OK);
        r.gw1[2] = NAN;
        CHECK_STATUS(kf_optimizer_step(opt, r.t, 3), KF_ERR_NON_FINITE);
        CHECK(strstr(kf_optimizer_last_error(opt), "layers[1]") != NULL);
        r.gw1[2] = 0.0f;
        r.w2[0] = -INFINITY;
        CHECK_STATUS(kf_optimizer_step(opt, r.t, 3), KF_ERR_NON_FINITE);
        r.w2[0] = keep.w2[0];
        after = snapshot(opt, &s2);
        CHECK(s1 == s2 && memcmp(before, after, s1) == 0);
        CHECK(memcmp(r.w0, keep.w0, sizeof r.w0) == 0 && memcmp(r.w1, keep.w1, sizeof r.w1) == 0);
        free(before);
        free(after);
        kf_optimizer_destroy(opt);
    }
}

static void test_errors(void)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx, count;
    float w[6] = {0}, b[2] = {0}, gw[6] = {0}, gb[2] = {0}, x[6] = {0}, f[16];
    kf_layer_tensors t = {w, 3, b, gw, 3, gb};
    CHECK_STATUS(kf_optimizer_params_init(NULL, KF_ALGO_FOOF), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_optimizer_params_init(&p, (kf_algorithm)42), KF_ERR_INVALID_ARGUMENT);
    CHECK(kf_algorithm_name((kf_algorithm)42) == NULL);
    CHECK(strcmp(kf_algorithm_name(KF_ALGO_EKFAC), "ekfac") == 0);
    kf_optimizer_params_init(&p, KF_ALGO_KFAC);
    p.damping = 0.0f;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_ERR_INVALID_ARGUMENT);
    kf_optimizer_params_init(&p, KF_ALGO_FOOF);
    p.learning_rate = -1.0f;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_ERR_INVALID_ARGUMENT);
    p.learning_rate = 0.1f;
    p.momentum = 1.0f;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_ERR_INVALID_ARGUMENT);
    p.momentum = 0.0f;
    p.inverse_interval = 0;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_ERR_INVALID_ARGUMENT);
    p.inverse_interval = 5;
    p.factor_decay = NAN;
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_ERR_INVALID_ARGUMENT);
    {
        char msg[64];
        CHECK_STATUS(kf_optimizer_params_validate(&p, msg, sizeof msg), KF_ERR_INVALID_ARGUMENT);
        CHECK(strstr(msg, "factor_decay") != NULL);
        CHECK_STATUS(kf_optimizer_params_validate(&p, NULL, 0), KF_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(kf_optimizer_params_validate(&p, NULL, 4), KF_ERR_NULL_POINTER);
    }
    p.factor_decay = 0.9f;
    CHECK_STATUS(kf_optimizer_params_validate(&p, NULL, 0), KF_OK);
    CHECK_STATUS(kf_optimizer_create(&p, NULL, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
    kf_optimizer_destroy(NULL);
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_ERR_STATE);
    CHECK_STATUS(kf_layer_params_init(&lp, 0, 3), KF_OK);
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_ERR_SHAPE);
    kf_layer_params_init(&lp, 2, 3);
    lp.bias = 3;
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_ERR_INVALID_ARGUMENT);
    lp.bias = 1;
    lp.algorithm = KF_ALGO_KFAC; /* damping 0.3 > 0: accepted */
    lp.algorithm = (kf_algorithm)17;
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_ERR_INVALID_ARGUMENT);
    lp.algorithm = KF_ALGO_DEFAULT;
    CHECK_STATUS(kf_optimizer_add_layer(opt, NULL, &idx), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_count(opt, &count), KF_OK);
    CHECK(count == 1);
    {
        kf_layer_params got;
        CHECK_STATUS(kf_optimizer_layer_params(opt, 0, &got), KF_OK);
        CHECK(got.out == 2 && got.in == 3 && got.bias == 1 && got.algorithm == KF_ALGO_FOOF &&
              got.loss_terms_per_example == 1);
        CHECK_STATUS(kf_optimizer_layer_params(opt, 1, &got), KF_ERR_INVALID_ARGUMENT);
    }
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_ERR_STATE); /* no statistics yet */
    CHECK(strstr(kf_optimizer_last_error(opt), "no statistics") != NULL);
    CHECK_STATUS(kf_optimizer_layer_factor(opt, 0, KF_FACTOR_A, f, 4), KF_ERR_STATE);
    CHECK_STATUS(kf_optimizer_layer_factor(opt, 0, KF_FACTOR_G, f, 4), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 1, 2, x, 3), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 0, x, 3), KF_ERR_SHAPE);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 2, x, 2), KF_ERR_SHAPE);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 2, NULL, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_optimizer_observe_gradients(opt, 0, 2, x, 2, 0.0f), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 2, x, 3), KF_OK);
    CHECK_STATUS(kf_optimizer_step(opt, &t, 2), KF_ERR_SHAPE);
    CHECK_STATUS(kf_optimizer_step(opt, NULL, 1), KF_ERR_NULL_POINTER);
    t.bias = NULL;
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_ERR_NULL_POINTER);
    t.bias = b;
    t.ld_weight = 2;
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_ERR_SHAPE);
    CHECK(strstr(kf_optimizer_last_error(opt), "layers[0].weight") != NULL);
    t.ld_weight = 3;
    t.grad_weight = w;
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_ERR_INVALID_ARGUMENT);
    t.grad_weight = gw;
    CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_factor(opt, 0, KF_FACTOR_A, f, 4), KF_OK);
    CHECK(f[3 * 4 + 3] == 1.0f); /* the bias entry */
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_ERR_STATE);
    CHECK_STATUS(kf_optimizer_set_learning_rate(opt, 0.0f), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_optimizer_set_damping(opt, -1.0f), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_optimizer_inverse_count(opt, 3, NULL), KF_ERR_NULL_POINTER);
    {
        uint64_t c = 0;
        CHECK_STATUS(kf_optimizer_inverse_count(opt, 3, &c), KF_ERR_INVALID_ARGUMENT);
    }
    CHECK_STATUS(kf_optimizer_save(opt, f, 4, &count), KF_ERR_SHAPE);
    CHECK_STATUS(kf_optimizer_restore(opt, NULL, 10), KF_ERR_NULL_POINTER);
    kf_optimizer_destroy(opt);
}

/* The step workspace must hold the largest gradient and the largest factorisation even when they
 * belong to different layers (regression: it once held only the largest per-layer sum). */
static void test_workspace_mixed_shapes(kf_rng *rng)
{
    static const kf_algorithm algos[] = {KF_ALGO_KFAC, KF_ALGO_EKFAC};
    for (int a = 0; a < 2; a++) {
        kf_optimizer *opt = make_opt(algos[a], 0.1f, 0.1f, NULL);
        kf_layer_params lp;
        size_t idx;
        float w0[40 * 3], b0[40], g0[40 * 3], gb0[40], w1[2 * 60], b1[2], g1[2 * 60], gb1[2];
        float x0[5 * 3], x1[5 * 60], e0[5 * 40], e1[5 * 2];
        kf_layer_tensors t[2] = {{w0, 3, b0, g0, 3, gb0}, {w1, 60, b1, g1, 60, gb1}};
        kf_rng_fill(rng, w0, 120);
        kf_rng_fill(rng, b0, 40);
        kf_rng_fill(rng, g0, 120);
        kf_rng_fill(rng, gb0, 40);
        kf_rng_fill(rng, w1, 120);
        kf_rng_fill(rng, b1, 2);
        kf_rng_fill(rng, g1, 120);
        kf_rng_fill(rng, gb1, 2);
        kf_rng_fill(rng, x0, 15);
        kf_rng_fill(rng, x1, 300);
        kf_rng_fill(rng, e0, 200);
        kf_rng_fill(rng, e1, 10);
        kf_layer_params_init(&lp, 40, 3);  /* large gradient, small factors */
        CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
        kf_layer_params_init(&lp, 2, 60);  /* small gradient, large factor */
        CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 5, x0, 3), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_activations(opt, 1, 5, x1, 60), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_gradients(opt, 0, 5, e0, 40, 5.0f), KF_OK);
        CHECK_STATUS(kf_optimizer_observe_gradients(opt, 1, 5, e1, 2, 5.0f), KF_OK);
        CHECK_STATUS(kf_optimizer_step(opt, t, 2), KF_OK);
        kf_optimizer_destroy(opt);
    }
}

/* kf_optimizer_step_batch takes x and gs instead of the gradient gs^T [x 1]; whether it
 * re-associates (small batches) or not, it must give kf_optimizer_step's parameters. */
static void test_step_batch(kf_rng *rng)
{
    static const kf_algorithm algos[] = {KF_ALGO_SGD, KF_ALGO_ADAM, KF_ALGO_FOOF, KF_ALGO_KFAC,
                                         KF_ALGO_KFAC_EXACT_DAMPING, KF_ALGO_EKFAC};
    enum { OUT = 12, IN = 9 };
    for (size_t ai = 0; ai < 6; ai++) {
        for (int big = 0; big <= 1; big++) {
            for (int bias = 0; bias <= 1; bias++) {
                size_t n = big ? 40 : 3, r = bias ? 1 : 2, rows = n * r;
                float *x = (float *)kf_test_xmalloc(rows * IN * sizeof(float));
                float *gs = (float *)kf_test_xmalloc(rows * OUT * sizeof(float));
                float w1[OUT * IN], b1[OUT], w2[OUT * IN], b2[OUT], gw[OUT * IN], gb[OUT];
                double want[OUT * IN];
                kf_optimizer_params p;
                kf_optimizer *o1 = NULL, *o2 = NULL;
                kf_layer_params lp;
                size_t idx;
                kf_optimizer_params_init(&p, algos[ai]);
                p.momentum = 0.5f;
                p.inverse_interval = 2;
                CHECK_STATUS(kf_optimizer_create(&p, NULL, &o1), KF_OK);
                CHECK_STATUS(kf_optimizer_create(&p, NULL, &o2), KF_OK);
                kf_layer_params_init(&lp, OUT, IN);
                lp.bias = bias;
                lp.shared = r;
                CHECK_STATUS(kf_optimizer_add_layer(o1, &lp, &idx), KF_OK);
                CHECK_STATUS(kf_optimizer_add_layer(o2, &lp, &idx), KF_OK);
                kf_rng_fill(rng, w1, OUT * IN);
                kf_rng_fill(rng, b1, OUT);
                memcpy(w2, w1, sizeof w1);
                memcpy(b2, b1, sizeof b1);
                for (int step = 0; step < 3; step++) {
                    kf_layer_tensors t = {w1, IN, bias ? b1 : NULL, gw, IN, bias ? gb : NULL};
                    kf_layer_batch lb = {w2, IN, bias ? b2 : NULL, x, IN, gs, OUT};
                    kf_rng_fill(rng, x, rows * IN);
                    kf_rng_fill(rng, gs, rows * OUT);
                    for (size_t o = 0; o < OUT; o++) {
                        double sb = 0.0;
                        for (size_t i = 0; i < IN; i++) {
                            double sw = 0.0;
                            for (size_t k = 0; k < rows; k++) {
                                sw += (double)gs[k * OUT + o] * x[k * IN + i];
                            }
                            gw[o * IN + i] = (float)sw;
                        }
                        for (size_t k = 0; k < rows; k++) {
                            sb += gs[k * OUT + o];
                        }
                        gb[o] = (float)sb;
                    }
                    CHECK_STATUS(kf_optimizer_observe_activations(o1, 0, n, x, IN), KF_OK);
                    CHECK_STATUS(kf_optimizer_observe_activations(o2, 0, n, x, IN), KF_OK);
                    CHECK_STATUS(kf_optimizer_observe_gradients(o1, 0, n, gs, OUT, (float)n), KF_OK);
                    CHECK_STATUS(kf_optimizer_observe_gradients(o2, 0, n, gs, OUT, (float)n), KF_OK);
                    CHECK_STATUS(kf_optimizer_step(o1, &t, 1), KF_OK);
                    CHECK_STATUS(kf_optimizer_step_batch(o2, n, &lb, 1), KF_OK);
                }
                for (size_t i = 0; i < OUT * IN; i++) {
                    want[i] = w1[i];
                }
                kf_test_close("step_batch = step", OUT, IN, w2, IN, want, IN, 2e-4, 2e-5);
                if (bias) {
                    for (size_t i = 0; i < OUT; i++) {
                        want[i] = b1[i];
                    }
                    kf_test_close("step_batch = step (bias)", 1, OUT, b2, OUT, want, OUT, 2e-4, 2e-5);
                }
                {
                    kf_layer_batch bad = {w2, IN, bias ? b2 : NULL, x, IN - 1, gs, OUT};
                    CHECK_STATUS(kf_optimizer_step_batch(o2, n, &bad, 1), KF_ERR_SHAPE);
                    bad.ldx = IN;
                    bad.bias = bias ? NULL : b2;
                    CHECK(kf_optimizer_step_batch(o2, n, &bad, 1) != KF_OK);
                    bad.bias = bias ? b2 : NULL;
                    x[1] = NAN;
                    CHECK_STATUS(kf_optimizer_step_batch(o2, n, &bad, 1), KF_ERR_NON_FINITE);
                    CHECK_STATUS(kf_optimizer_step_batch(o2, 0, &bad, 1), KF_ERR_SHAPE);
                    CHECK_STATUS(kf_optimizer_step_batch(o2, n, NULL, 1), KF_ERR_NULL_POINTER);
                }
                kf_optimizer_destroy(o1);
                kf_optimizer_destroy(o2);
                free(x);
                free(gs);
            }
        }
    }
}

/* Statistics subsampling: with T_inv = 5 and S = 2, statistics on step 0 and on the two steps
 * before each refresh (t mod 5 in {3, 4}). */
static void test_stats_subsample(void)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx;
    float w[4] = {0}, gw[4] = {0};
    kf_layer_tensors t = {w, 2, NULL, gw, 2, NULL};
    float x[4] = {1, 0, 0, 1};
    kf_optimizer_params_init(&p, KF_ALGO_FOOF);
    p.inverse_interval = 5;
    p.stats_subsample = 2;
    p.stats_interval = 3; /* not used when subsampling */
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
    kf_layer_params_init(&lp, 2, 2);
    lp.bias = 0;
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
    for (int step = 0; step < 12; step++) {
        int needed = -1, want = step == 0 || step % 5 >= 3;
        CHECK_STATUS(kf_optimizer_needs_statistics(opt, &needed), KF_OK);
        CHECK(needed == want);
        CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, 2, x, 2), KF_OK);
        CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
    }
    kf_optimizer_destroy(opt);
}

/* Weight tying: a layer applied twice per forward pass (uses = 2), observed once per use, has the
 * factors of the same layer with its two applications as two shared positions (expand, one loss
 * term per example), and refuses an incomplete or excess set of observations. */
static void test_weight_tying(kf_rng *rng)
{
    enum { N = 6, IN = 4, OUT = 3 };
    float x1[N * IN], x2[N * IN], g1[N * OUT], g2[N * OUT], xs[N * 2 * IN], gs[N * 2 * OUT];
    float w[OUT * IN], b[OUT], gw[OUT * IN], gb[OUT], w2[OUT * IN], b2[OUT];
    float fa1[25], fa2[25], fg1[9], fg2[9];
    double want[25];
    kf_optimizer *tied = make_opt(KF_ALGO_KFAC, 0.1f, 0.1f, NULL);
    kf_optimizer *flat = make_opt(KF_ALGO_KFAC, 0.1f, 0.1f, NULL);
    kf_layer_params lp;
    size_t idx;
    kf_layer_tensors t1 = {w, IN, b, gw, IN, gb}, t2 = {w2, IN, b2, gw, IN, gb};
    kf_rng_fill(rng, x1, N * IN);
    kf_rng_fill(rng, x2, N * IN);
    kf_rng_fill(rng, g1, N * OUT);
    kf_rng_fill(rng, g2, N * OUT);
    kf_rng_fill(rng, w, OUT * IN);
    kf_rng_fill(rng, b, OUT);
    kf_rng_fill(rng, gw, OUT * IN);
    kf_rng_fill(rng, gb, OUT);
    memcpy(w2, w, sizeof w);
    memcpy(b2, b, sizeof b);
    for (size_t n = 0; n < N; n++) {
        memcpy(xs + (2 * n) * IN, x1 + n * IN, IN * sizeof(float));
        memcpy(xs + (2 * n + 1) * IN, x2 + n * IN, IN * sizeof(float));
        memcpy(gs + (2 * n) * OUT, g1 + n * OUT, OUT * sizeof(float));
        memcpy(gs + (2 * n + 1) * OUT, g2 + n * OUT, OUT * sizeof(float));
    }
    kf_layer_params_init(&lp, OUT, IN);
    lp.uses = 2;
    CHECK_STATUS(kf_optimizer_add_layer(tied, &lp, &idx), KF_OK);
    kf_layer_params_init(&lp, OUT, IN);
    lp.shared = 2;
    lp.loss_terms_per_example = 1;
    CHECK_STATUS(kf_optimizer_add_layer(flat, &lp, &idx), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(tied, 0, N, x1, IN), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_gradients(tied, 0, N, g1, OUT, 1.0f), KF_OK);
    CHECK_STATUS(kf_optimizer_step(tied, &t1, 1), KF_ERR_STATE); /* one use of two */
    CHECK(strstr(kf_optimizer_last_error(tied), "uses") != NULL);
    CHECK_STATUS(kf_optimizer_observe_activations(tied, 0, N - 1, x2, IN), KF_ERR_SHAPE);
    CHECK_STATUS(kf_optimizer_observe_activations(tied, 0, N, x2, IN), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(tied, 0, N, x2, IN), KF_ERR_STATE);
    CHECK_STATUS(kf_optimizer_observe_gradients(tied, 0, N, g2, OUT, 1.0f), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(flat, 0, N, xs, IN), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_gradients(flat, 0, N, gs, OUT, 1.0f), KF_OK);
    CHECK_STATUS(kf_optimizer_step(tied, &t1, 1), KF_OK);
    CHECK_STATUS(kf_optimizer_step(flat, &t2, 1), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_factor(tied, 0, KF_FACTOR_A, fa1, 5), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_factor(flat, 0, KF_FACTOR_A, fa2, 5), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_factor(tied, 0, KF_FACTOR_G, fg1, 3), KF_OK);
    CHECK_STATUS(kf_optimizer_layer_factor(flat, 0, KF_FACTOR_G, fg2, 3), KF_OK);
    for (int i = 0; i < 25; i++) {
        want[i] = fa2[i];
    }
    kf_test_close("tied A = A over both uses as positions", 5, 5, fa1, 5, want, 5, 1e-6, 1e-7);
    for (int i = 0; i < 9; i++) {
        want[i] = fg2[i];
    }
    kf_test_close("tied G = G over both uses as positions", 3, 3, fg1, 3, want, 3, 1e-6, 1e-7);
    for (int i = 0; i < OUT * IN; i++) {
        want[i] = w2[i];
    }
    kf_test_close("tied step = step over both uses", OUT, IN, w, IN, want, IN, 1e-5, 1e-6);
    kf_optimizer_destroy(tied);
    kf_optimizer_destroy(flat);
    {
        kf_optimizer *e = make_opt(KF_ALGO_EKFAC, 0.1f, 0.1f, NULL);
        kf_layer_params_init(&lp, OUT, IN);
        lp.uses = 2;
        CHECK_STATUS(kf_optimizer_add_layer(e, &lp, &idx), KF_ERR_UNSUPPORTED);
        lp.algorithm = KF_ALGO_FOOF;
        lp.shared_mode = KF_SHARED_REDUCE;
        CHECK_STATUS(kf_optimizer_add_layer(e, &lp, &idx), KF_ERR_UNSUPPORTED);
        lp.uses = 0;
        CHECK_STATUS(kf_optimizer_add_layer(e, &lp, &idx), KF_ERR_INVALID_ARGUMENT);
        kf_optimizer_destroy(e);
    }
}

/* The factors the optimizer keeps are the normalised moving averages of kf_activation_factor and
 * kf_gradient_factor (kf_factor_ema_update), whichever way the step folds them: plain layers fold
 * during the observation, reduce-mode layers in the step; with refreshes on some steps only. */
static void test_factor_moving_average(kf_rng *rng)
{
    enum { N = 4, R = 3, IN = 5, OUT = 3, STEPS = 5 };
    kf_context *ctx = NULL;
    CHECK_STATUS(kf_context_create(NULL, &ctx), KF_OK);
    for (int algo = 0; algo < 2; algo++) {
        for (int reduce = 0; reduce < 2; reduce++) {
            kf_optimizer_params p;
            kf_optimizer *opt = NULL;
            kf_layer_params lp;
            kf_shared_mode mode = reduce ? KF_SHARED_REDUCE : KF_SHARED_EXPAND;
            size_t idx, r = reduce ? R : 1, da = IN + 1;
            float w[OUT * IN], b[OUT], gw[OUT * IN], gb[OUT], x[N * R * IN], g[N * R * OUT];
            float fa[(IN + 1) * (IN + 1)], fg[OUT * OUT], got[(IN + 1) * (IN + 1)];
            double wa = 0.0, wg = 0.0, want[(IN + 1) * (IN + 1)];
            float avg_a[(IN + 1) * (IN + 1)], avg_g[OUT * OUT];
            kf_layer_tensors t = {w, IN, b, gw, IN, gb};
            const float scale = 2.0f;
            CHECK_STATUS(kf_optimizer_params_init(&p, algo ? KF_ALGO_KFAC : KF_ALGO_FOOF), KF_OK);
            p.factor_decay = 0.8f;
            p.inverse_interval = 2;
            p.momentum = 0.0f;
            CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
            kf_layer_params_init(&lp, OUT, IN);
            lp.shared = r;
            lp.shared_mode = mode;
            CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
            kf_rng_fill(rng, w, OUT * IN);
            kf_rng_fill(rng, b, OUT);
            for (int step = 0; step < STEPS; step++) {
                size_t lt = reduce ? 1 : r;
                kf_rng_fill(rng, x, N * r * IN);
                kf_rng_fill(rng, g, N * r * OUT);
                kf_rng_fill(rng, gw, OUT * IN);
                kf_rng_fill(rng, gb, OUT);
                CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, N, x, IN), KF_OK);
                CHECK_STATUS(kf_activation_factor(ctx, N, r, IN, x, IN, 1, mode, fa, da), KF_OK);
                CHECK_STATUS(kf_factor_ema_update(ctx, da, p.factor_decay, fa, da, avg_a, da, &wa),
                             KF_OK);
                if (algo) {
                    CHECK_STATUS(kf_optimizer_observe_gradients(opt, 0, N, g, OUT, scale), KF_OK);
                    CHECK_STATUS(kf_gradient_factor(ctx, N, r, OUT, g, OUT, mode, lt, scale, fg, OUT),
                                 KF_OK);
                    CHECK_STATUS(kf_factor_ema_update(ctx, OUT, p.factor_decay, fg, OUT, avg_g, OUT,
                                                      &wg),
                                 KF_OK);
                }
                CHECK_STATUS(kf_optimizer_step(opt, &t, 1), KF_OK);
                CHECK_STATUS(kf_optimizer_layer_factor(opt, 0, KF_FACTOR_A, got, da), KF_OK);
                for (size_t i = 0; i < da * da; i++) {
                    want[i] = avg_a[i];
                }
                kf_test_close(reduce ? "A moving average (reduce: folded in the step)"
                                     : "A moving average (folded in the observation)",
                              da, da, got, da, want, da, 1e-5, 1e-6);
                if (algo) {
                    CHECK_STATUS(kf_optimizer_layer_factor(opt, 0, KF_FACTOR_G, got, OUT), KF_OK);
                    for (size_t i = 0; i < OUT * OUT; i++) {
                        want[i] = avg_g[i];
                    }
                    kf_test_close("G moving average", OUT, OUT, got, OUT, want, OUT, 1e-5, 1e-6);
                }
            }
            kf_optimizer_destroy(opt);
        }
    }
    kf_context_destroy(ctx);
}

int main(void)
{
    kf_rng rng = {0xC0FFEEULL};
    test_factor_moving_average(&rng);
    test_weight_tying(&rng);
    test_step_batch(&rng);
    test_stats_subsample();
    test_workspace_mixed_shapes(&rng);
    test_newton_step(&rng);
    test_foof_is_kfac_with_identity_g(&rng);
    test_ekfac(&rng);
    test_momentum_and_weight_decay(&rng);
    test_kl_clip(&rng);
    test_schedule(&rng);
    test_allocation_and_resume();
    test_corrupt_checkpoints();
    test_non_finite_changes_nothing();
    test_errors();
    return kf_test_finish("test_optimizer");
}
