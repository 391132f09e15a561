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
 * K-FAC), the whole step their sum with the inverse amortised) has a ratio to sgemm next to it.
 * The machine may be shared: every repeat measures its own references right before the measured
 * piece, each repeat gives a ratio, and the table shows the median ratio and its spread. */
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

/* sgemm C (m x n) = A (m x k) B (k x n) on scratch operands: seconds and flops add up. */
static float *ga, *gb, *gc;

static void time_gemm(kf_context *ctx, size_t m, size_t n, size_t k, double *flops, double *secs)
{
    double t0 = now();
    kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, m, n, k, 1.0f, ga, k, gb, n, 0.0f, gc, n);
    *secs += now() - t0;
    *flops += 2.0 * (double)m * (double)n * (double)k;
}

/* The references of one repeat. */
typedef struct refs {
    double fwd, sgd;       /* forward+backward GEMMs, SGD update (kf_optimizer_step) */
    double f[6], t[6];     /* sgemm flops and seconds at the shapes of: */
} refs;
enum { P_STATS_A, P_STATS_G, P_INV_A, P_INV_G, P_DIR_A, P_DIR_G };

static void measure_refs(kf_context *ctx, model *m, kf_optimizer *sgd, refs *r)
{
    double t0 = now();
    fwd_bwd(ctx, m);
    r->fwd = now() - t0;
    r->sgd = time_steps(sgd, m, 0, 1, 0);
    memset(r->f, 0, sizeof r->f);
    memset(r->t, 0, sizeof r->t);
    for (size_t l = 0; l < n_layers; l++) {
        size_t in1 = widths[l] + 1, out = widths[l + 1];
        time_gemm(ctx, in1, in1, batch, &r->f[P_STATS_A], &r->t[P_STATS_A]);
        time_gemm(ctx, out, out, batch, &r->f[P_STATS_G], &r->t[P_STATS_G]);
        time_gemm(ctx, in1, in1, in1, &r->f[P_INV_A], &r->t[P_INV_A]);
        time_gemm(ctx, out, out, out, &r->f[P_INV_G], &r->t[P_INV_G]);
        time_gemm(ctx, out, in1, in1, &r->f[P_DIR_A], &r->t[P_DIR_A]);
        time_gemm(ctx, out, in1, out, &r->f[P_DIR_G], &r->t[P_DIR_G]);
    }
}

/* sgemm's rate (flops / s) at the shapes of a mix of pieces, weighted by how often each runs. */
static double gemm_rate(const refs *r, double w_stats, double w_inv, double w_dir, int with_g)
{
    double f = 0.0, t = 0.0;
    int last = with_g ? 2 : 1;
    for (int k = 0; k < last; k++) {
        f += w_stats * r->f[P_STATS_A + k] + w_inv * r->f[P_INV_A + k] + w_dir * r->f[P_DIR_A + k];
        t += w_stats * r->t[P_STATS_A + k] + w_inv * r->t[P_INV_A + k] + w_dir * r->t[P_DIR_A + k];
    }
    return f / t;
}

/* One row of the per-piece table: time, counted rate, and the ratio to sgemm (per repeat). */
static void rate_row(const char *label, double *secs, double *ratio, int n, double flops)
{
    stat t = summarise(secs, n), q = summarise(ratio, n);
    printf("  %-40s %8.2f ms [%.2f..%.2f] %7.1f GFLOP/s  ratio to sgemm %.2f [%.2f..%.2f]\n",
           label, 1e3 * t.median, 1e3 * t.lo, 1e3 * t.hi, flops / t.median / 1e9, q.median, q.lo,
           q.hi);
}

/* One overhead row: per repeat (step - SGD update) / (forward+backward + SGD update). */
static void overhead_row(const char *label, double *secs, double *over, int n)
{
    stat t = summarise(secs, n), o = summarise(over, n);
    printf("%-46s %8.2f ms [%.2f..%.2f]  overhead %+5.0f%% [%+.0f..%+.0f]\n", label,
           1e3 * t.median, 1e3 * t.lo, 1e3 * t.hi, 100.0 * o.median, 100.0 * o.lo, 100.0 * o.hi);
}

int main(int argc, char **argv)
{
    kf_context *ctx = NULL;
    int threads = 2;
    const char *only = NULL;
    kf_precision prec = KF_PRECISION_DOUBLE;
    kf_optimizer *sgd;
    model m;
    refs rf;
    double fwd_flops = 0.0, foof_flops = 0.0, kfac_extra = 0.0, stats_flops = 0.0;
    double stats_g_flops = 0.0, inv_a_flops = 0.0, inv_g_flops = 0.0;
    double t_fwd[64], t_sgd[64], t_gemm_rate[64];
    size_t big = 1;
    float *fbuf, *ibuf;
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
    for (size_t l = 0; l <= n_layers; l++) {
        big = widths[l] + 1 > big ? widths[l] + 1 : big;
    }
    big = batch > big ? batch : big;
    ga = buf(big * big);
    gb = buf(big * big);
    gc = buf(big * big);
    fbuf = buf(big * big);
    ibuf = buf(big * big);
    printf("kronfac %s | %s | BLAS threads %d | batch %zu | layers", kf_version(), kf_build_info(),
           threads, batch);
    for (size_t l = 0; l <= n_layers; l++) {
        printf("%s%zu", l ? "-" : " ", widths[l]);
    }
    printf(" | %s inverses | %d repeats\n", prec == KF_PRECISION_FLOAT ? "float" : "double",
           repeats);

    sgd = make(KF_ALGO_SGD, 1, prec);
    measure_refs(ctx, &m, sgd, &rf); /* warm-up */
    for (int r = 0; r < repeats; r++) {
        measure_refs(ctx, &m, sgd, &rf);
        t_fwd[r] = rf.fwd;
        t_sgd[r] = rf.sgd;
        t_gemm_rate[r] = fwd_flops / rf.fwd / 1e9;
    }
    {
        stat a = summarise(t_fwd, repeats), b = summarise(t_sgd, repeats);
        stat c = summarise(t_gemm_rate, repeats);
        printf("%-46s %8.2f ms [%.2f..%.2f]  %.1f GFLOP/s (sgemm at these shapes)\n",
               "forward+backward GEMMs (reference)", 1e3 * a.median, 1e3 * a.lo, 1e3 * a.hi,
               c.median);
        printf("%-46s %8.2f ms [%.2f..%.2f]\n", "SGD update (kf_optimizer_step)", 1e3 * b.median,
               1e3 * b.lo, 1e3 * b.hi);
        printf("%-46s %8.2f ms  (= 100%%; the overheads below are per repeat against the "
               "references of that repeat)\n", "SGD training step", 1e3 * (a.median + b.median));
    }
    for (int a = 0; a < 2; a++) {
        static const kf_algorithm algos[2] = {KF_ALGO_FOOF, KF_ALGO_KFAC};
        int with_g = algos[a] == KF_ALGO_KFAC;
        const char *name = kf_algorithm_name(algos[a]);
        char label[96];
        double f_dir = foof_flops + (with_g ? kfac_extra : 0.0);
        double f_stats = stats_flops + (with_g ? stats_g_flops : 0.0);
        double f_inv = inv_a_flops + (with_g ? inv_g_flops : 0.0);
        double ts[64], ti[64], td[64], tw[64], qs[64], qi[64], qd[64], qw[64], ow[64];
        kf_optimizer *o;
        if (only && strcmp(only, name)) {
            continue;
        }
        /* Pieces: statistics (observe), inverses (kf_damped_inverse on the layer's factors),
         * direction (a step that refreshes nothing, less the SGD update of the same repeat). */
        o = make(algos[a], 1000000, prec);
        observe(o, &m, with_g);
        die(kf_optimizer_step(o, m.t, n_layers), "step", kf_optimizer_last_error(o));
        for (int r = 0; r < repeats; r++) {
            double t0;
            measure_refs(ctx, &m, sgd, &rf);
            t0 = now();
            observe(o, &m, with_g);
            ts[r] = now() - t0;
            qs[r] = (f_stats / ts[r]) / gemm_rate(&rf, 1, 0, 0, with_g);
            td[r] = time_steps(o, &m, with_g, 1, 0) - rf.sgd;
            qd[r] = (f_dir / td[r]) / gemm_rate(&rf, 0, 0, 1, with_g);
            ti[r] = 0.0;
            for (size_t l = 0; l < n_layers; l++) {
                size_t in1 = widths[l] + 1, out = widths[l + 1];
                die(kf_optimizer_layer_factor(o, l, KF_FACTOR_A, fbuf, in1), "factor", NULL);
                t0 = now();
                die(kf_damped_inverse(ctx, in1, fbuf, in1, 0.1f, prec, ibuf, in1, NULL), "inverse",
                    NULL);
                ti[r] += now() - t0;
                if (with_g) {
                    die(kf_optimizer_layer_factor(o, l, KF_FACTOR_G, fbuf, out), "factor", NULL);
                    t0 = now();
                    die(kf_damped_inverse(ctx, out, fbuf, out, 0.1f, prec, ibuf, out, NULL),
                        "inverse", NULL);
                    ti[r] += now() - t0;
                }
            }
            qi[r] = (f_inv / ti[r]) / gemm_rate(&rf, 0, 1, 0, with_g);
        }
        kf_optimizer_destroy(o);
        printf("%s pieces (counted flops: statistics N in'^2 per factor, inverse in'^3 per factor, "
               "direction 2 out in'^2%s):\n", name, with_g ? " + 2 out^2 in'" : "");
        rate_row("statistics (observe)", ts, qs, repeats, f_stats);
        rate_row("explicit inverses (kf_damped_inverse)", ti, qi, repeats, f_inv);
        rate_row("direction (step without refresh)", td, qd, repeats, f_dir);

        /* Whole steps, refreshing every step. */
        o = make(algos[a], 1, prec);
        time_steps(o, &m, with_g, 1, 1);
        for (int r = 0; r < repeats; r++) {
            measure_refs(ctx, &m, sgd, &rf);
            tw[r] = time_steps(o, &m, with_g, 1, 1);
            ow[r] = (tw[r] - rf.sgd) / (rf.fwd + rf.sgd);
            tw[r] -= rf.sgd;
            qw[r] = ((f_stats + f_inv + f_dir) / tw[r]) / gemm_rate(&rf, 1, 1, 1, with_g);
        }
        kf_optimizer_destroy(o);
        snprintf(label, sizeof label, "%s whole step, inverses every step", name);
        overhead_row(label, tw, ow, repeats);
        rate_row("optimizer work (step - SGD update)", tw, qw, repeats, f_stats + f_inv + f_dir);
        {
            /* Amortised over whole periods of 100 steps, one of which refreshes (and, with
             * subsampling, the S before it observe). */
            int nr = repeats < 3 ? repeats : 3;
            double obs_frac = 0.0; /* the same in every period */
            o = make(algos[a], 100, prec);
            time_steps(o, &m, with_g, 1, 1); /* step 0 observes and refreshes */
            for (int r = 0; r < nr; r++) {
                measure_refs(ctx, &m, sgd, &rf);
                observed_steps = 0;
                tw[r] = time_steps(o, &m, with_g, 100, 1);
                obs_frac = (double)observed_steps / 100.0;
                ow[r] = (tw[r] - rf.sgd) / (rf.fwd + rf.sgd);
                tw[r] -= rf.sgd;
                qw[r] = ((obs_frac * f_stats + f_inv / 100.0 + f_dir) / tw[r]) /
                        gemm_rate(&rf, obs_frac, 0.01, 1, with_g);
            }
            kf_optimizer_destroy(o);
            snprintf(label, sizeof label, "%s whole step, inverses every 100%s", name,
                     subsample ? ", S" : "");
            overhead_row(label, tw, ow, nr);
            rate_row("optimizer work (step - SGD update)", tw, qw, nr,
                     obs_frac * f_stats + f_inv / 100.0 + f_dir);
        }
    }
    kf_optimizer_destroy(sgd);
    free(ga);
    free(gb);
    free(gc);
    free(fbuf);
    free(ibuf);
    kf_context_destroy(ctx);
    return 0;
}
