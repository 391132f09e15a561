/* The distributed step: time of one step on P ranks and its share of communication.
 *
 *   mpirun -np P bench_dist [--widths 784-1000-500-250-30-250-500-1000-784] [--batch 1000]
 *                           [--steps 6] [--threads T]
 *
 * The global batch (default 1000) is split evenly over the P ranks. One step is what a training
 * loop adds to its forward and backward pass: the observations of every layer's activations (and
 * output gradients for K-FAC) on the local batch, then kf_dist_step (all-reduce of gradients and
 * factors, the rank's share of the factorisations, the exchange of inverses, the update). Two
 * kinds of step are timed for FOOF and K-FAC: with a refresh of every inverse (T_inv = 1) and
 * without (the other T_inv - 1 steps of an interval). Reported: median wall time per step over
 * the slowest rank, the time inside MPI calls (including waiting for the other ranks) and its
 * share, and the floats all-reduced and gathered per step, in both kf_dist modes (inverses:
 * owners send inverses on refresh steps; directions: owners send their layers' directions every
 * step). Run it with -np 1 and -np 2 and
 * compare; --threads sets OpenBLAS's threads per rank (the default 1: on a machine with as many
 * cores as ranks, more would oversubscribe). */
#include <kronfac_dist.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LAYERS 32

static size_t widths[MAX_LAYERS + 1], n_layers, batch = 1000;
static int steps = 6, rank, world;

static void die(kf_status s, const char *what, const char *msg)
{
    if (s != KF_OK) {
        fprintf(stderr, "rank %d: %s: %s %s\n", rank, what, kf_status_string(s), msg ? msg : "");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

static float *buf(size_t n, unsigned seed, float scale)
{
    float *p = (float *)malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    for (size_t i = 0; i < n; i++) {
        p[i] = scale * (float)((double)(((i + seed) * 2654435761u) % 1000) / 1000.0 - 0.5);
    }
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct model {
    float *x[MAX_LAYERS], *g[MAX_LAYERS], *w[MAX_LAYERS], *b[MAX_LAYERS], *gw[MAX_LAYERS],
        *gb[MAX_LAYERS];
    kf_layer_tensors t[MAX_LAYERS];
} model;

typedef struct result {
    double step, comm, reduced, gathered;
} result;

/* Median over `steps` steps (after one warm-up step, which also makes the first inverses). */
static result run(kf_algorithm algo, unsigned t_inv, kf_dist_mode mode, model *m, size_t n_local)
{
    kf_dist_params dp;
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_dist *d = NULL;
    double *t_step = (double *)malloc((size_t)steps * sizeof(double));
    double *t_comm = (double *)malloc((size_t)steps * sizeof(double));
    kf_dist_stats st0, st1;
    result r;
    kf_optimizer_params_init(&p, algo);
    p.learning_rate = 1e-6f; /* keep the weights where they are */
    p.inverse_interval = t_inv;
    die(kf_optimizer_create(&p, NULL, &opt), "create", NULL);
    for (size_t l = 0; l < n_layers; l++) {
        kf_layer_params lp;
        size_t idx;
        kf_layer_params_init(&lp, widths[l + 1], widths[l]);
        die(kf_optimizer_add_layer(opt, &lp, &idx), "add_layer", kf_optimizer_last_error(opt));
    }
    die(kf_optimizer_reserve_batch(opt, n_local), "reserve", kf_optimizer_last_error(opt));
    kf_dist_params_init(&dp);
    dp.mode = mode;
    die(kf_dist_create(opt, MPI_COMM_WORLD, &dp, &d), "kf_dist_create",
        kf_optimizer_last_error(opt));
    for (int s = -1; s < steps; s++) {
        double t0, mine[2], worst[2];
        MPI_Barrier(MPI_COMM_WORLD);
        kf_dist_get_stats(d, &st0);
        t0 = MPI_Wtime();
        for (size_t l = 0; l < n_layers; l++) {
            die(kf_optimizer_observe_activations(opt, l, n_local, m->x[l], widths[l]), "observe",
                kf_optimizer_last_error(opt));
            if (algo == KF_ALGO_KFAC) {
                die(kf_optimizer_observe_gradients(opt, l, n_local, m->g[l], widths[l + 1], 1.0f),
                    "observe", kf_optimizer_last_error(opt));
            }
        }
        die(kf_dist_step(d, m->t, n_layers, n_local), "kf_dist_step", kf_dist_last_error(d));
        mine[0] = MPI_Wtime() - t0;
        kf_dist_get_stats(d, &st1);
        mine[1] = st1.comm_seconds - st0.comm_seconds;
        /* The step ends when the slowest rank is done; its communication share is reported. */
        MPI_Allreduce(mine, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (s >= 0) {
            t_step[s] = worst[0];
            t_comm[s] = worst[1];
        }
        if (s == steps - 1) {
            r.reduced = (double)(st1.floats_reduced - st0.floats_reduced);
            r.gathered = (double)(st1.floats_gathered - st0.floats_gathered);
        }
    }
    r.step = median(t_step, steps);
    r.comm = median(t_comm, steps);
    free(t_step);
    free(t_comm);
    kf_dist_destroy(d);
    kf_optimizer_destroy(opt);
    return r;
}

static void parse_widths(const char *s)
{
    n_layers = 0;
    while (*s && n_layers <= MAX_LAYERS) {
        char *end;
        widths[n_layers++] = strtoul(s, &end, 10);
        if (end == s) {
            break;
        }
        s = *end == '-' ? end + 1 : end;
    }
    n_layers--;
}

int main(int argc, char **argv)
{
    int threads = 1;
    size_t n_local;
    model m;
    static const kf_algorithm algos[2] = {KF_ALGO_FOOF, KF_ALGO_KFAC};
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    parse_widths("784-1000-500-250-30-250-500-1000-784");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--widths") && i + 1 < argc) {
            parse_widths(argv[++i]);
        } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
            batch = strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            steps = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else {
            if (rank == 0) {
                fprintf(stderr, "usage: bench_dist [--widths a-b-c] [--batch N] [--steps S] "
                        "[--threads T]\n");
            }
            MPI_Finalize();
            return 2;
        }
    }
    if (n_layers < 1 || batch < (size_t)world || steps < 1 || threads < 1) {
        if (rank == 0) {
            fprintf(stderr, "bench_dist: bad arguments\n");
        }
        MPI_Finalize();
        return 2;
    }
    kf_blas_set_threads(threads);
    n_local = batch / (size_t)world;
    for (size_t l = 0; l < n_layers; l++) {
        size_t in = widths[l], out = widths[l + 1];
        m.x[l] = buf(n_local * in, (unsigned)(rank * 7 + l), 1.0f);
        m.g[l] = buf(n_local * out, (unsigned)(rank * 13 + l), 1.0f);
        m.w[l] = buf(out * in, (unsigned)l, 0.01f);
        m.b[l] = buf(out, (unsigned)l, 0.01f);
        m.gw[l] = buf(out * in, (unsigned)(rank + l), 1e-4f);
        m.gb[l] = buf(out, (unsigned)(rank + l), 1e-4f);
        m.t[l].weight = m.w[l];
        m.t[l].ld_weight = in;
        m.t[l].bias = m.b[l];
        m.t[l].grad_weight = m.gw[l];
        m.t[l].ld_grad_weight = in;
        m.t[l].grad_bias = m.gb[l];
    }
    if (rank == 0) {
        printf("bench_dist: %d rank%s x %d BLAS thread%s, global batch %zu (%zu per rank), "
               "widths", world, world == 1 ? "" : "s", threads, threads == 1 ? "" : "s", batch,
               n_local);
        for (size_t l = 0; l <= n_layers; l++) {
            printf("%c%zu", l ? '-' : ' ', widths[l]);
        }
        printf(", median of %d steps\n", steps);
        printf("%-6s %-11s %-16s %10s %10s %7s %14s %14s\n", "algo", "mode", "step", "time ms",
               "MPI ms", "share", "all-reduced", "gathered");
    }
    for (int a = 0; a < 2; a++) {
        for (int md = 0; md < 2; md++) {
            for (int refresh = 0; refresh < 2; refresh++) {
                /* T_inv = 1: every step refreshes; T_inv huge: only the warm-up step does. */
                kf_dist_mode mode = md ? KF_DIST_BROADCAST_DIRECTIONS : KF_DIST_BROADCAST_INVERSES;
                result r = run(algos[a], refresh ? 1u : 1000000u, mode, &m, n_local);
                if (rank == 0) {
                    printf("%-6s %-11s %-16s %10.1f %10.1f %6.1f%% %11.3g fl %11.3g fl\n",
                           kf_algorithm_name(algos[a]), md ? "directions" : "inverses",
                           refresh ? "with refresh" : "without refresh", 1e3 * r.step,
                           1e3 * r.comm, 100.0 * r.comm / r.step, r.reduced, r.gathered);
                }
            }
        }
    }
    /* The wire alone: a bare MPI_Allreduce of K-FAC's packed size after a barrier, so that the
     * MPI time above can be split into moving data and waiting for the slower rank. */
    {
        size_t count = 0;
        double *t = (double *)malloc((size_t)steps * sizeof(double)), mine, worst;
        float *v;
        for (size_t l = 0; l < n_layers; l++) {
            size_t d = widths[l] + 1, out = widths[l + 1];
            count += out * d + d * (d + 1) / 2 + out * (out + 1) / 2;
        }
        v = buf(count, (unsigned)rank, 1.0f);
        for (int s = -1; s < steps; s++) {
            double t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, v, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            mine = MPI_Wtime() - t0;
            MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            if (s >= 0) {
                t[s] = worst;
            }
        }
        if (rank == 0) {
            printf("bare MPI_Allreduce of %zu floats (%.1f MB): %.1f ms\n", count,
                   4e-6 * (double)count, 1e3 * median(t, steps));
        }
        free(v);
        free(t);
    }
    for (size_t l = 0; l < n_layers; l++) {
        free(m.x[l]);
        free(m.g[l]);
        free(m.w[l]);
        free(m.b[l]);
        free(m.gw[l]);
        free(m.gb[l]);
    }
    MPI_Finalize();
    return 0;
}
