/* Trains a small tanh MLP (8-32-32-4, mean squared error) on data it generates, with SGD, FOOF and
 * K-FAC through the installed library, and checks that both second-order methods end with a lower
 * training loss than SGD after the same number of steps.
 *
 * Everything a framework would do is written out by hand: forward pass, backward pass of the
 * training loss, and for K-FAC a second backward pass with sampled outputs (the Monte-Carlo Fisher
 * of a Gaussian likelihood: v ~ N(0, I) at the output). */
#include <kronfac.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LAYERS = 3, DATA = 512, BATCH = 64, STEPS = 300 };
static const size_t width[LAYERS + 1] = {8, 32, 32, 4};

typedef struct net {
    float *w[LAYERS], *b[LAYERS], *gw[LAYERS], *gb[LAYERS];
    float *a[LAYERS + 1]; /* a[0] = input, a[l] = output of layer l */
    float *d[LAYERS];     /* gradient at the pre-activation of layer l */
} net;

static uint64_t rng_state;

static double uniform(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static double gaussian(void)
{
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void net_init(net *m, uint64_t seed)
{
    rng_state = seed;
    for (int l = 0; l < LAYERS; l++) {
        size_t in = width[l], out = width[l + 1];
        double scale = sqrt(1.0 / (double)in); /* Glorot-like for tanh */
        m->w[l] = (float *)xcalloc(out * in, sizeof(float));
        m->gw[l] = (float *)xcalloc(out * in, sizeof(float));
        m->b[l] = (float *)xcalloc(out, sizeof(float));
        m->gb[l] = (float *)xcalloc(out, sizeof(float));
        m->d[l] = (float *)xcalloc(BATCH * out, sizeof(float));
        for (size_t i = 0; i < out * in; i++) {
            m->w[l][i] = (float)(scale * gaussian());
        }
    }
    for (int l = 0; l <= LAYERS; l++) {
        m->a[l] = (float *)xcalloc(BATCH * width[l], sizeof(float));
    }
}

static void net_free(net *m)
{
    for (int l = 0; l < LAYERS; l++) {
        free(m->w[l]);
        free(m->gw[l]);
        free(m->b[l]);
        free(m->gb[l]);
        free(m->d[l]);
    }
    for (int l = 0; l <= LAYERS; l++) {
        free(m->a[l]);
    }
}

static int check(kf_status s, kf_context *ctx, const char *what)
{
    if (s != KF_OK) {
        fprintf(stderr, "%s: %s (%s)\n", what, kf_status_string(s), kf_context_last_error(ctx));
        exit(1);
    }
    return 0;
}

/* Forward pass of n rows of x; returns nothing, fills m->a. */
static void forward(kf_context *ctx, net *m, const float *x, size_t n)
{
    memcpy(m->a[0], x, n * width[0] * sizeof(float));
    for (int l = 0; l < LAYERS; l++) {
        size_t in = width[l], out = width[l + 1];
        float *s = m->a[l + 1];
        for (size_t i = 0; i < n; i++) {
            memcpy(s + i * out, m->b[l], out * sizeof(float));
        }
        check(kf_gemm(ctx, KF_NO_TRANS, KF_TRANS, n, out, in, 1.0f, m->a[l], in, m->w[l], in, 1.0f,
                      s, out), ctx, "forward gemm");
        if (l + 1 < LAYERS) {
            for (size_t i = 0; i < n * out; i++) {
                s[i] = tanhf(s[i]);
            }
        }
    }
}

/* Backpropagates the output gradient already in m->d[LAYERS-1]; with grads != 0 also forms the
 * weight gradients. */
static void backward(kf_context *ctx, net *m, size_t n, int grads)
{
    for (int l = LAYERS - 1; l >= 0; l--) {
        size_t in = width[l], out = width[l + 1];
        if (grads) {
            check(kf_gemm(ctx, KF_TRANS, KF_NO_TRANS, out, in, n, 1.0f, m->d[l], out, m->a[l], in,
                          0.0f, m->gw[l], in), ctx, "weight gradient");
            for (size_t o = 0; o < out; o++) {
                double s = 0.0;
                for (size_t i = 0; i < n; i++) {
                    s += m->d[l][i * out + o];
                }
                m->gb[l][o] = (float)s;
            }
        }
        if (l > 0) {
            check(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, n, in, out, 1.0f, m->d[l], out, m->w[l],
                          in, 0.0f, m->d[l - 1], in), ctx, "backward gemm");
            for (size_t i = 0; i < n * in; i++) {
                float a = m->a[l][i];
                m->d[l - 1][i] *= 1.0f - a * a;
            }
        }
    }
}

static double loss_on(kf_context *ctx, net *m, const float *x, const float *y, size_t n)
{
    double loss = 0.0;
    for (size_t start = 0; start < n; start += BATCH) {
        size_t b = n - start < BATCH ? n - start : BATCH;
        forward(ctx, m, x + start * width[0], b);
        for (size_t i = 0; i < b * width[LAYERS]; i++) {
            double r = m->a[LAYERS][i] - y[start * width[LAYERS] + i];
            loss += 0.5 * r * r;
        }
    }
    return loss / (double)n;
}

static double train(kf_algorithm algo, const float *x, const float *y)
{
    kf_context *ctx = NULL;
    kf_optimizer *opt = NULL;
    kf_optimizer_params p;
    kf_layer_tensors t[LAYERS];
    net m;
    double final;
    size_t idx;
    check(kf_context_create(NULL, &ctx), NULL, "context");
    net_init(&m, 1234);
    check(kf_optimizer_params_init(&p, algo), ctx, "params");
    /* Each the best of a small grid on this problem (lr x damping, momentum 0.9 for all):
     * SGD lr 0.2 (0.3 diverges); FOOF lr 0.3, damping 0.3; K-FAC lr 0.1, damping 0.1. */
    p.momentum = 0.9f;
    p.inverse_interval = 10;
    if (algo == KF_ALGO_SGD) {
        p.learning_rate = 0.2f;
    } else if (algo == KF_ALGO_FOOF) {
        p.learning_rate = 0.3f;
        p.damping = 0.3f;
    } else {
        p.learning_rate = 0.1f;
        p.damping = 0.1f;
    }
    if (kf_optimizer_create(&p, NULL, &opt) != KF_OK) {
        fprintf(stderr, "kf_optimizer_create failed\n");
        exit(1);
    }
    for (int l = 0; l < LAYERS; l++) {
        kf_layer_params lp;
        kf_layer_params_init(&lp, width[l + 1], width[l]);
        if (kf_optimizer_add_layer(opt, &lp, &idx) != KF_OK) {
            fprintf(stderr, "add_layer: %s\n", kf_optimizer_last_error(opt));
            exit(1);
        }
        t[l].weight = m.w[l];
        t[l].ld_weight = width[l];
        t[l].bias = m.b[l];
        t[l].grad_weight = m.gw[l];
        t[l].ld_grad_weight = width[l];
        t[l].grad_bias = m.gb[l];
    }
    rng_state = 42;
    for (int step = 0; step < STEPS; step++) {
        size_t start = (size_t)(uniform() * (DATA / BATCH)) * BATCH, out = width[LAYERS];
        const float *xb = x + start * width[0], *yb = y + start * out;
        int stats = 0;
        forward(ctx, &m, xb, BATCH);
        kf_optimizer_needs_statistics(opt, &stats);
        if (stats) {
            for (int l = 0; l < LAYERS; l++) {
                kf_optimizer_observe_activations(opt, (size_t)l, BATCH, m.a[l], width[l]);
            }
            if (algo == KF_ALGO_KFAC) {
                /* Curvature pass: per-example output gradients v ~ N(0, I), not divided by N. */
                for (size_t i = 0; i < BATCH * out; i++) {
                    m.d[LAYERS - 1][i] = (float)gaussian();
                }
                backward(ctx, &m, BATCH, 0);
                for (int l = 0; l < LAYERS; l++) {
                    kf_optimizer_observe_gradients(opt, (size_t)l, BATCH, m.d[l], width[l + 1], 1.0f);
                }
            }
        }
        for (size_t i = 0; i < BATCH * out; i++) {
            m.d[LAYERS - 1][i] = (m.a[LAYERS][i] - yb[i]) / (float)BATCH;
        }
        backward(ctx, &m, BATCH, 1);
        if (kf_optimizer_step(opt, t, LAYERS) != KF_OK) {
            fprintf(stderr, "step %d: %s\n", step, kf_optimizer_last_error(opt));
            exit(1);
        }
    }
    final = loss_on(ctx, &m, x, y, DATA);
    kf_optimizer_destroy(opt);
    kf_context_destroy(ctx);
    net_free(&m);
    return final;
}

int main(void)
{
    float *x = (float *)xcalloc(DATA * width[0], sizeof(float));
    float *y = (float *)xcalloc(DATA * width[LAYERS], sizeof(float));
    double sgd, foof, kfac;
    /* A teacher network of the same shape labels inputs whose scales span two decades: the
     * ill-conditioning that preconditioning by the input statistics removes. */
    rng_state = 7;
    for (size_t e = 0; e < DATA; e++) {
        for (size_t i = 0; i < width[0]; i++) {
            double sigma = pow(10.0, 2.0 * (double)i / (double)(width[0] - 1) - 1.0);
            x[e * width[0] + i] = (float)(sigma * gaussian());
        }
    }
    {
        kf_context *ctx = NULL;
        net teacher;
        check(kf_context_create(NULL, &ctx), NULL, "context");
        net_init(&teacher, 99);
        for (int l = 0; l < LAYERS; l++) {
            for (size_t i = 0; i < width[l + 1]; i++) {
                teacher.b[l][i] = (float)(0.5 * gaussian());
            }
        }
        for (size_t start = 0; start < DATA; start += BATCH) {
            forward(ctx, &teacher, x + start * width[0], BATCH);
            memcpy(y + start * width[LAYERS], teacher.a[LAYERS], BATCH * width[LAYERS] * sizeof(float));
        }
        net_free(&teacher);
        kf_context_destroy(ctx);
    }
    sgd = train(KF_ALGO_SGD, x, y);
    foof = train(KF_ALGO_FOOF, x, y);
    kfac = train(KF_ALGO_KFAC, x, y);
    printf("kronfac %s: training loss after %d steps: SGD %.5f, FOOF %.5f (%.2fx), K-FAC %.5f "
           "(%.2fx)\n", kf_version(), STEPS, sgd, foof, sgd / foof, kfac, sgd / kfac);
    free(x);
    free(y);
    if (!(foof < sgd && kfac < sgd)) {
        fprintf(stderr, "FAILED: FOOF and K-FAC must beat SGD\n");
        return 1;
    }
    printf("1 passed, 0 failed\n");
    return 0;
}
