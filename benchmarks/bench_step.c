/* The cost of an optimizer step, as ratios to references measured in the same run.
 *
 *   bench_step [--widths 784-1000-500-250-30-250-500-1000-784] [--batch 1000] [--repeats 5]
 *              [--threads 2] [--float-inverses] [--subsample S] [--only foof|kfac]
 *
 * Reference 1, "SGD training step": per layer the three GEMMs of forward and backward at the
 * layer's shape (X W^T, G W, G^T X: 6 N out in' flops) plus the SGD update of kf_optimizer_step.
 * Reference 2: sgemm's flop rate at the same shapes.
 * Measured: the statistics (observations), the preconditioned step with inverses every T steps
 * (amortised) and every step, for FOOF and K-FAC; each reported as overhead over reference 1 and as
 * counted GFLOP/s against reference 2. Median and spread over the repeats.
 * Reference 3, per piece: sgemm timed at each piece's own shapes (statistics in' x in' x N, inverse
 * in' x in' x in', direction out x in' x in' and out x in' x out), so that every piece's counted
 * rate (statistics N in'^2 per factor, inverse in'^3, direction 2 out in'^2 (+ 2 out^2 in' for
 * K-FAC), the whole step their sum with the inverse amortised) has a ratio to sgemm next to it. */
#define _POSIX_C_SOURCE 200809L
#include <kronfac.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LAYERS 32

static size_t widths[MAX_LAYERS + 1];
static size_t n_layers;
static size_t batch = 1000;
static int repeats = 5;
static unsigned subsample = 0; /* S of SPEC.md 3.2 for the amortised rows; 0 = statistics every step */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stat {
    double median, lo, hi;
} stat;

static stat summarise(double *v, int n)
{
    stat s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    s.lo = v[0];
    s.hi = v[n - 1];
    return s;
}

static float *buf(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)((double)((i * 2654435761u) % 1000) / 1000.0 - 0.5);
    }
    return p;
}

static void die(kf_status s, const char *what, const char *msg)
{
    if (s != KF_OK) {
        fprintf(stderr, "%s: %s %s\n", what, kf_status_string(s), msg ? msg : "");
        exit(1);
    }
}

typedef struct model {
    float *x[MAX_LAYERS], *g[MAX_LAYERS], *w[MAX_LAYERS], *b[MAX_LAYERS], *gw[MAX_LAYERS],
        *gb[MAX_LAYERS], *y[MAX_LAYERS], *dx[MAX_LAYERS];
    kf_layer_tensors t[MAX_LAYERS];
} model;

static void model_init(model *m)
{
    for (size_t l = 0; l < n_layers; l++) {
        size_t in = widths[l], out = widths[l + 1];
        m->x[l] = buf(batch * in);
        m->g[l] = buf(batch * out);
        m->y[l] = buf(batch * out);
        m->dx[l] = buf(batch * in);
        m->w[l] = buf(out * in);
        m->b[l] = buf(out);
        m->gw[l] = buf(out * in);
        m->gb[l] = buf(out);
        for (size_t i = 0; i < out * in; i++) {
            m->w[l][i] *= 0.01f;
            m->gw[l][i] *= 1e-4f;
        }
        m->t[l] = (kf_layer_tensors){m->w[l], in, m->b[l], m->gw[l], in, m->gb[l]};
    }
}

/* Forward and backward GEMMs of the whole model. */
static void fwd_bwd(kf_context *ctx, model *m)
{
    for (size_t l = 0; l < n_layers; l++) {
        size_t in = widths[l], out = widths[l + 1];
        kf_gemm(ctx, KF_NO_TRANS, KF_TRANS, batch, out, in, 1.0f, m->x[l], in, m->w[l], in, 0.0f,
                m->y[l], out);
    }
    for (size_t l = n_layers; l-- > 0;) {
        size_t in = widths[l], out = widths[l + 1];
        kf_gemm(ctx, KF_TRANS, KF_NO_TRANS, out, in, batch, 1.0f, m->g[l], out, m->x[l], in, 0.0f,
                m->gw[l], in);
        kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, batch, in, out, 1.0f, m->g[l], out, m->w[l], in,
                0.0f, m->dx[l], in);
    }
}

static kf_optimizer *make(kf_algorithm algo, unsigned t_inv, kf_precision prec)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    size_t idx;
    kf_optimizer_params_init(&p, algo);
    p.learning_rate = 1e-6f; /* keep the weights where they are across repeats */
    p.inverse_interval = t_inv;
    p.inverse_precision = prec;
    p.stats_subsample = t_inv == 100 ? subsample : 0;
    if (algo == KF_ALGO_SGD) {
        p.momentum = 0.9f;
    }
    die(kf_optimizer_create(&p, NULL, &opt), "create", NULL);
    for (size_t l = 0; l < n_layers; l++) {
        kf_layer_params lp;
        kf_layer_params_init(&lp, widths[l + 1], widths[l]);
        die(kf_optimizer_add_layer(opt, &lp, &idx), "add_layer", kf_optimizer_last_error(opt));
    }
    die(kf_optimizer_reserve_batch(opt, batch), "reserve", kf_optimizer_last_error(opt));
    return opt;
}

static void observe(kf_optimizer *opt, model *m, int with_g)
{
    for (size_t l = 0; l < n_layers; l++) {
        die(kf_optimizer_observe_activations(opt, l, batch, m->x[l], widths[l]), "observe",
            kf_optimizer_last_error(opt));
        if (with_g) {
            die(kf_optimizer_observe_gradients(opt, l, batch, m->g[l], widths[l + 1], 1.0f),
                "observe", kf_optimizer_last_error(opt));
        }
    }
}

/* Seconds of one full step (observations + kf_optimizer_step), averaged over `steps` steps. */
static long observed_steps; /* steps that observed, for the whole-step flop count */

static double time_steps(kf_optimizer *opt, model *m, int with_g, int steps, int observe_on)
{
    double t0 = now();
    for (int s = 0; s < steps; s++) {
        int due = 0;
        kf_optimizer_needs_statistics(opt, &due);
        if (observe_on && due) {
            observed_steps++;
            /* With K-FAC this is also where the model's curvature backward pass would run. */
            observe(opt, m, with_g);
        }
        die(kf_optimizer_step(opt, m->t, n_layers), "step", kf_optimizer_last_error(opt));
    }
    return (now() - t0) / steps;
}

static void parse_widths(const char *s)
{
    n_layers = 0;
    while (*s && n_layers <= MAX_LAYERS) {
        char *end;
        widths[n_layers++] = strtoul(s, &end, 10);
        s = *end == '-' ? end + 1 : end;
        if (end == s && *s) {
            break;
        }
    }
    n_layers--;
}

/* Seconds of one sgemm C (m x n) = A (m x k) B (k x n), the best of three (a reference rate). */
static double time_gemm(kf_context *ctx, size_t m, size_t n, size_t k, float *a, float *b, float *c)
{
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now(), t;
        kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
        t = now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

/* One row of the per-piece table: counted flops over the median time, and the ratio to sgemm's
 * rate at the piece's shapes (gemm_flops done in gemm_secs). */
static void rate_row(const char *label, stat s, double flops, double gemm_flops, double gemm_secs)
{
    double rate = flops / s.median / 1e9, ref = gemm_flops / gemm_secs / 1e9;
    printf("  %-42s %8.2f ms [%.2f..%.2f] %7.1f GFLOP/s [%.1f..%.1f]  sgemm %6.1f  ratio %.2f\n",
           label, 1e3 * s.median, 1e3 * s.lo, 1e3 * s.hi, rate, flops / s.hi / 1e9,
           flops / s.lo / 1e9, ref, rate / ref);
}

int main(int argc, char **argv)
{
    kf_context *ctx = NULL;
    int threads = 2;
    const char *only = NULL;
    kf_precision prec = KF_PRECISION_DOUBLE;
    model m;
    double ref[64], v[64];
    double fwd_flops = 0.0, foof_flops = 0.0, kfac_extra = 0.0, stats_flops = 0.0;
    double stats_g_flops = 0.0, inv_a_flops = 0.0, inv_g_flops = 0.0;
    /* sgemm at each piece's shapes: flops done and seconds taken. */
    double gs_f = 0.0, gs_t = 0.0, gsg_f = 0.0, gsg_t = 0.0, gi_f = 0.0, gi_t = 0.0, gig_f = 0.0,
           gig_t = 0.0, gd_f = 0.0, gd_t = 0.0, gdk_f = 0.0, gdk_t = 0.0;
    stat r_step, r_sgd, s;
    parse_widths("784-1000-500-250-30-250-500-1000-784");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--widths") && i + 1 < argc) {
            parse_widths(argv[++i]);
        } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
            batch = strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) {
            repeats = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--subsample") && i + 1 < argc) {
            subsample = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            only = argv[++i];
        } else if (!strcmp(argv[i], "--float-inverses")) {
            prec = KF_PRECISION_FLOAT;
        } else {
            fprintf(stderr, "usage: %s [--widths A-B-C] [--batch N] [--repeats R] [--threads T] "
                            "[--float-inverses] [--subsample S] [--only foof|kfac]\n", argv[0]);
            return 2;
        }
    }
    if (n_layers < 1 || batch < 1 || repeats < 1 || repeats > 64) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    kf_blas_set_threads(threads);
    die(kf_context_create(NULL, &ctx), "context", NULL);
    model_init(&m);
    for (size_t l = 0; l < n_layers; l++) {
        double in1 = (double)widths[l] + 1.0, out = (double)widths[l + 1], n = (double)batch;
        fwd_flops += 6.0 * n * out * in1;
        stats_flops += n * in1 * in1;
        stats_g_flops += n * out * out;
        inv_a_flops += in1 * in1 * in1;
        inv_g_flops += out * out * out;
        foof_flops += 2.0 * out * in1 * in1;
        kfac_extra += 2.0 * out * out * in1;
    }
    printf("kronfac %s | %s | BLAS threads %d | batch %zu | layers", kf_version(), kf_build_info(),
           threads, batch);
    for (size_t l = 0; l <= n_layers; l++) {
        printf("%s%zu", l ? "-" : " ", widths[l]);
    }
    printf(" | %s inverses\n", prec == KF_PRECISION_FLOAT ? "float" : "double");
    {
        /* sgemm at the pieces' shapes (operands: the model's buffers, sized generously). */
        size_t big = batch;
        float *a, *b, *c;
        for (size_t l = 0; l <= n_layers; l++) {
            big = widths[l] + 1 > big ? widths[l] + 1 : big;
        }
        a = buf(big * big);
        b = buf(big * big);
        c = buf(big * big);
        for (size_t l = 0; l < n_layers; l++) {
            size_t in1 = widths[l] + 1, out = widths[l + 1];
            double t;
            t = time_gemm(ctx, in1, in1, batch, a, b, c);
            gs_f += 2.0 * in1 * in1 * batch, gs_t += t;
            t = time_gemm(ctx, out, out, batch, a, b, c);
            gsg_f += 2.0 * out * out * batch, gsg_t += t;
            t = time_gemm(ctx, in1, in1, in1, a, b, c);
            gi_f += 2.0 * in1 * in1 * in1, gi_t += t;
            t = time_gemm(ctx, out, out, out, a, b, c);
            gig_f += 2.0 * out * out * out, gig_t += t;
            t = time_gemm(ctx, out, in1, in1, a, b, c);
            gd_f += 2.0 * out * in1 * in1, gd_t += t;
            t = time_gemm(ctx, out, in1, out, a, b, c);
            gdk_f += 2.0 * out * out * in1, gdk_t += t;
        }
        free(a);
        free(b);
        free(c);
    }

    /* Reference: forward + backward GEMMs (flop rate = sgemm at these shapes). */
    fwd_bwd(ctx, &m);
    for (int r = 0; r < repeats; r++) {
        double t0 = now();
        fwd_bwd(ctx, &m);
        ref[r] = now() - t0;
    }
    r_step = summarise(ref, repeats);
    printf("%-44s %9.2f ms  [%.2f..%.2f]  %6.1f GFLOP/s (sgemm at these shapes)\n",
           "forward+backward GEMMs (reference)", 1e3 * r_step.median, 1e3 * r_step.lo,
           1e3 * r_step.hi, fwd_flops / r_step.median / 1e9);
    {
        kf_optimizer *sgd = make(KF_ALGO_SGD, 1, prec);
        time_steps(sgd, &m, 0, 1, 0);
        for (int r = 0; r < repeats; r++) {
            v[r] = time_steps(sgd, &m, 0, 1, 0);
        }
        r_sgd = summarise(v, repeats);
        printf("%-44s %9.2f ms  [%.2f..%.2f]\n", "SGD update (kf_optimizer_step)",
               1e3 * r_sgd.median, 1e3 * r_sgd.lo, 1e3 * r_sgd.hi);
        kf_optimizer_destroy(sgd);
    }
    {
        double base = r_step.median + r_sgd.median;
        static const kf_algorithm algos[2] = {KF_ALGO_FOOF, KF_ALGO_KFAC};
        printf("%-44s %9.2f ms  (= 100%%)\n", "SGD training step", 1e3 * base);
        for (int a = 0; a < 2; a++) {
            int with_g = algos[a] == KF_ALGO_KFAC;
            const char *name = kf_algorithm_name(algos[a]);
            char label[96];
            double flops_dir = foof_flops + (with_g ? kfac_extra : 0.0);
            double f_stats = stats_flops + (with_g ? stats_g_flops : 0.0);
            double f_inv = inv_a_flops + (with_g ? inv_g_flops : 0.0);
            /* sgemm seconds at the shapes of each piece, scaled to its counted flops. */
            double g_stats_f = gs_f + (with_g ? gsg_f : 0.0), g_stats_t = gs_t + (with_g ? gsg_t : 0.0);
            double g_inv_f = gi_f + (with_g ? gig_f : 0.0), g_inv_t = gi_t + (with_g ? gig_t : 0.0);
            double g_dir_f = gd_f + (with_g ? gdk_f : 0.0), g_dir_t = gd_t + (with_g ? gdk_t : 0.0);
            stat st_stats, st_dir, st_inv;
            if (only && strcmp(only, name)) {
                continue;
            }
            /* Statistics alone. */
            kf_optimizer *o = make(algos[a], 1000000, prec);
            observe(o, &m, with_g);
            die(kf_optimizer_step(o, m.t, n_layers), "step", kf_optimizer_last_error(o));
            for (int r = 0; r < repeats; r++) {
                double t0 = now();
                observe(o, &m, with_g);
                v[r] = now() - t0;
            }
            s = st_stats = summarise(v, repeats);
            snprintf(label, sizeof label, "%s statistics (observe)", name);
            printf("%-44s %9.2f ms  %+6.0f%%  %6.1f GFLOP/s\n", label, 1e3 * s.median,
                   100.0 * s.median / base, f_stats / s.median / 1e9);
            /* Step without refresh (direction + update); the statistics are pending from above. */
            for (int r = 0; r < repeats; r++) {
                v[r] = time_steps(o, &m, with_g, 1, 0);
            }
            s = summarise(v, repeats);
            snprintf(label, sizeof label, "%s step, no refresh", name);
            printf("%-44s %9.2f ms  %+6.0f%%  %6.1f GFLOP/s (direction)\n", label, 1e3 * s.median,
                   100.0 * s.median / base, flops_dir / s.median / 1e9);
            /* The direction alone: the step less the SGD update (same element-wise passes). */
            for (int r = 0; r < repeats; r++) {
                v[r] -= r_sgd.median;
            }
            st_dir = summarise(v, repeats);
            /* The inverses alone: kf_damped_inverse on the layer's factors (only its time). */
            {
                size_t big = 1;
                float *f, *inv;
                for (size_t l = 0; l <= n_layers; l++) {
                    big = widths[l] + 1 > big ? widths[l] + 1 : big;
                }
                f = buf(big * big);
                inv = buf(big * big);
                for (int r = 0; r < repeats; r++) {
                    v[r] = 0.0;
                    for (size_t l = 0; l < n_layers; l++) {
                        size_t in1 = widths[l] + 1, out = widths[l + 1];
                        double t0;
                        die(kf_optimizer_layer_factor(o, l, KF_FACTOR_A, f, in1), "factor", NULL);
                        t0 = now();
                        die(kf_damped_inverse(ctx, in1, f, in1, 0.1f, prec, inv, in1, NULL),
                            "inverse", NULL);
                        v[r] += now() - t0;
                        if (with_g) {
                            die(kf_optimizer_layer_factor(o, l, KF_FACTOR_G, f, out), "factor", NULL);
                            t0 = now();
                            die(kf_damped_inverse(ctx, out, f, out, 0.1f, prec, inv, out, NULL),
                                "inverse", NULL);
                            v[r] += now() - t0;
                        }
                    }
                }
                free(f);
                free(inv);
            }
            st_inv = summarise(v, repeats);
            kf_optimizer_destroy(o);
            printf("%s pieces (counted flops; sgemm at each piece's shapes, same run):\n", name);
            rate_row("statistics (N in'^2 per factor)", st_stats, f_stats, g_stats_f, g_stats_t);
            rate_row("inverses (in'^3 per factor)", st_inv, f_inv, g_inv_f, g_inv_t);
            rate_row(with_g ? "direction (2 out in'^2 + 2 out^2 in')" : "direction (2 out in'^2)",
                     st_dir, flops_dir, g_dir_f, g_dir_t);
            /* Full steps with refreshes every step and every 100 steps (amortised). */
            o = make(algos[a], 1, prec);
            time_steps(o, &m, with_g, 1, 1);
            for (int r = 0; r < repeats; r++) {
                v[r] = time_steps(o, &m, with_g, 1, 1);
            }
            s = summarise(v, repeats);
            snprintf(label, sizeof label, "%s whole step, inverses every step", name);
            printf("%-44s %9.2f ms  [%.2f..%.2f]  %+6.0f%% overhead over SGD step [%+.0f..%+.0f]\n",
                   label, 1e3 * s.median, 1e3 * s.lo, 1e3 * s.hi,
                   100.0 * (s.median + r_step.median - base) / base,
                   100.0 * (s.lo + r_step.median - base) / base,
                   100.0 * (s.hi + r_step.median - base) / base);
            for (int r = 0; r < repeats; r++) {
                v[r] -= r_sgd.median;
            }
            rate_row("optimizer work, inverses every step", summarise(v, repeats),
                     f_stats + f_inv + flops_dir,
                     g_stats_f + g_inv_f + g_dir_f, g_stats_t + g_inv_t + g_dir_t);
            kf_optimizer_destroy(o);
            {
                /* Amortised over a whole period: 100 steps, one of which refreshes (and, with
                 * subsampling, the S before it observe). */
                int nr = repeats < 3 ? repeats : 3;
                double obs_frac;
                o = make(algos[a], 100, prec);
                time_steps(o, &m, with_g, 1, 1); /* step 0 observes and refreshes */
                observed_steps = 0;
                for (int r = 0; r < nr; r++) {
                    v[r] = time_steps(o, &m, with_g, 100, 1);
                }
                obs_frac = (double)observed_steps / (100.0 * nr);
                s = summarise(v, nr);
                snprintf(label, sizeof label, "%s whole step, inverses every 100%s", name,
                         subsample ? ", S" : "");
                printf("%-44s %9.2f ms  [%.2f..%.2f]  %+6.0f%% overhead over SGD step "
                       "[%+.0f..%+.0f]\n", label, 1e3 * s.median, 1e3 * s.lo, 1e3 * s.hi,
                       100.0 * (s.median + r_step.median - base) / base,
                       100.0 * (s.lo + r_step.median - base) / base,
                       100.0 * (s.hi + r_step.median - base) / base);
                for (int r = 0; r < nr; r++) {
                    v[r] -= r_sgd.median;
                }
                rate_row("optimizer work, amortised", summarise(v, nr),
                         obs_frac * f_stats + f_inv / 100.0 + flops_dir,
                         obs_frac * g_stats_f + g_inv_f / 100.0 + g_dir_f,
                         obs_frac * g_stats_t + g_inv_t / 100.0 + g_dir_t);
                kf_optimizer_destroy(o);
            }
        }
    }
    kf_context_destroy(ctx);
    return 0;
}
