/* The distributed step (kronfac_dist.h), run under mpirun with 2 ranks:
 *
 *   mpirun -np 2 mpi_test_dist [equivalence|assignment|errors|checkpoint|all]
 *
 * equivalence: two ranks with half a batch each take the steps one process takes with the whole
 *              batch (FOOF, K-FAC, K-FAC with exact damping, EKFAC; inverses refreshed every 2
 *              steps), to float-summation tolerance, in both modes (inverses and directions, but
 *              EKFAC only in the first), and the two modes take bit-identical steps; the ranks'
 *              parameters are bit-identical; one rank alone is bit-identical to
 *              kf_optimizer_step in either mode; unequal local batches are weighted.
 * assignment:  every layer has exactly one owner; the largest load is within the LPT bounds.
 * errors:      a rank that fails (bad arguments, mismatched layers, a failed factorisation, ...)
 *              makes every rank fail with a clear message, and nobody hangs (ctest runs this under
 *              `timeout`).
 * checkpoint:  rank 0's file is the state every rank holds; restoring resumes bit-exactly; in the
 *              directions mode rank 0 first collects the inverses it lacks (the same file).
 * Counts are summed over the ranks; rank 0 prints "N passed, N failed"; every rank exits non-zero
 * when any check failed on any rank. */
#include "kronfac_dist.h"
#include "kf_optimizer_internal.h"
#include "kf_test.h"

static int rank, world;

/* ---- a small network: 3 tokens of width 5 per example -> shared dense 5->8 (tanh, mean over
 * the tokens) -> dense 8->7 without bias (tanh) -> dense 7->4; loss (1/2)||y - t||^2, batch mean */

#define R_TOK 3
#define D_IN 5
#define D_H0 8
#define D_H1 7
#define D_OUT 4
#define N_LAYERS 3

static const size_t lay_out[N_LAYERS] = {D_H0, D_H1, D_OUT};
static const size_t lay_in[N_LAYERS] = {D_IN, D_H0, D_H1};
static const int lay_bias[N_LAYERS] = {1, 0, 1};

typedef struct net {
    float *w[N_LAYERS], *b[N_LAYERS];
} net;

typedef struct grads {
    float *gw[N_LAYERS], *gb[N_LAYERS];
    float *a1, *a2;         /* inputs of layers 1 and 2 (h0, h1) */
    float *z0;              /* tanh outputs per token (n*R x 8) */
    float *gs[N_LAYERS];    /* output gradients of the batch-mean loss, per layer */
} grads;

static void net_init(net *m, uint64_t seed)
{
    kf_rng r = {seed};
    for (int l = 0; l < N_LAYERS; l++) {
        m->w[l] = (float *)kf_test_xmalloc(lay_out[l] * lay_in[l] * sizeof(float));
        m->b[l] = lay_bias[l] ? (float *)kf_test_xmalloc(lay_out[l] * sizeof(float)) : NULL;
        for (size_t k = 0; k < lay_out[l] * lay_in[l]; k++) {
            m->w[l][k] = 0.6f * kf_rng_uniform(&r);
        }
        for (size_t k = 0; lay_bias[l] && k < lay_out[l]; k++) {
            m->b[l][k] = 0.1f * kf_rng_uniform(&r);
        }
    }
}

static void net_copy(net *dst, const net *src)
{
    for (int l = 0; l < N_LAYERS; l++) {
        memcpy(dst->w[l], src->w[l], lay_out[l] * lay_in[l] * sizeof(float));
        if (lay_bias[l]) {
            memcpy(dst->b[l], src->b[l], lay_out[l] * sizeof(float));
        }
    }
}

static void net_free(net *m)
{
    for (int l = 0; l < N_LAYERS; l++) {
        free(m->w[l]);
        free(m->b[l]);
    }
}

/* 1 if the two networks hold the same bits. */
static int net_same(const net *a, const net *b)
{
    for (int l = 0; l < N_LAYERS; l++) {
        if (memcmp(a->w[l], b->w[l], lay_out[l] * lay_in[l] * sizeof(float)) != 0 ||
            (lay_bias[l] && memcmp(a->b[l], b->b[l], lay_out[l] * sizeof(float)) != 0)) {
            return 0;
        }
    }
    return 1;
}

/* Largest |a - b| / (1 + |b|) over all parameters. */
static double net_diff(const net *a, const net *b)
{
    double worst = 0.0;
    for (int l = 0; l < N_LAYERS; l++) {
        for (size_t k = 0; k < lay_out[l] * lay_in[l]; k++) {
            double e = fabs((double)a->w[l][k] - b->w[l][k]) / (1.0 + fabs((double)b->w[l][k]));
            worst = e > worst ? e : worst;
        }
        for (size_t k = 0; lay_bias[l] && k < lay_out[l]; k++) {
            double e = fabs((double)a->b[l][k] - b->b[l][k]) / (1.0 + fabs((double)b->b[l][k]));
            worst = e > worst ? e : worst;
        }
    }
    return worst;
}

/* 1 on every rank if every rank's network has rank 0's bits. */
static int net_same_everywhere(const net *m)
{
    net root;
    int same, all = 0;
    net_init(&root, 1);
    net_copy(&root, m);
    for (int l = 0; l < N_LAYERS; l++) {
        MPI_Bcast(root.w[l], (int)(lay_out[l] * lay_in[l]), MPI_FLOAT, 0, MPI_COMM_WORLD);
        if (lay_bias[l]) {
            MPI_Bcast(root.b[l], (int)lay_out[l], MPI_FLOAT, 0, MPI_COMM_WORLD);
        }
    }
    same = net_same(m, &root);
    MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    net_free(&root);
    return all;
}

static void grads_init(grads *g, size_t n)
{
    memset(g, 0, sizeof *g);
    for (int l = 0; l < N_LAYERS; l++) {
        g->gw[l] = (float *)kf_test_xmalloc(lay_out[l] * lay_in[l] * sizeof(float));
        g->gb[l] = lay_bias[l] ? (float *)kf_test_xmalloc(lay_out[l] * sizeof(float)) : NULL;
    }
    g->a1 = (float *)kf_test_xmalloc(n * D_H0 * sizeof(float));
    g->a2 = (float *)kf_test_xmalloc(n * D_H1 * sizeof(float));
    g->z0 = (float *)kf_test_xmalloc(n * R_TOK * D_H0 * sizeof(float));
    g->gs[0] = (float *)kf_test_xmalloc(n * R_TOK * D_H0 * sizeof(float));
    g->gs[1] = (float *)kf_test_xmalloc(n * D_H1 * sizeof(float));
    g->gs[2] = (float *)kf_test_xmalloc(n * D_OUT * sizeof(float));
}

static void grads_free(grads *g)
{
    for (int l = 0; l < N_LAYERS; l++) {
        free(g->gw[l]);
        free(g->gb[l]);
        free(g->gs[l]);
    }
    free(g->a1);
    free(g->a2);
    free(g->z0);
}

/* y = W x (+ b) for one row. */
static void dense(const net *m, int l, const float *x, float *y)
{
    for (size_t o = 0; o < lay_out[l]; o++) {
        double s = lay_bias[l] ? m->b[l][o] : 0.0;
        for (size_t i = 0; i < lay_in[l]; i++) {
            s += (double)m->w[l][o * lay_in[l] + i] * x[i];
        }
        y[o] = (float)s;
    }
}

/* Forward and backward over n examples (x: n*R rows of D_IN, t: n rows of D_OUT): the gradients
 * of the mean loss over these n and the layers' inputs and output gradients. */
static void fwd_bwd(const net *m, const float *x, const float *t, size_t n, grads *g)
{
    float y[D_OUT], dh1[D_H1], dh0[D_H0];
    for (int l = 0; l < N_LAYERS; l++) {
        memset(g->gw[l], 0, lay_out[l] * lay_in[l] * sizeof(float));
        if (lay_bias[l]) {
            memset(g->gb[l], 0, lay_out[l] * sizeof(float));
        }
    }
    for (size_t e = 0; e < n; e++) {
        float *h0 = g->a1 + e * D_H0, *h1 = g->a2 + e * D_H1;
        memset(h0, 0, D_H0 * sizeof(float));
        for (size_t r = 0; r < R_TOK; r++) {
            float *z = g->z0 + (e * R_TOK + r) * D_H0;
            dense(m, 0, x + (e * R_TOK + r) * D_IN, z);
            for (size_t o = 0; o < D_H0; o++) {
                z[o] = tanhf(z[o]);
                h0[o] += z[o] / (float)R_TOK;
            }
        }
        dense(m, 1, h0, h1);
        for (size_t o = 0; o < D_H1; o++) {
            h1[o] = tanhf(h1[o]);
        }
        dense(m, 2, h1, y);
        /* Backward of the batch mean: every output gradient carries 1/n. */
        for (size_t o = 0; o < D_OUT; o++) {
            g->gs[2][e * D_OUT + o] = (y[o] - t[e * D_OUT + o]) / (float)n;
        }
        for (size_t i = 0; i < D_H1; i++) {
            double s = 0.0;
            for (size_t o = 0; o < D_OUT; o++) {
                s += (double)m->w[2][o * D_H1 + i] * g->gs[2][e * D_OUT + o];
            }
            dh1[i] = (float)s;
            g->gs[1][e * D_H1 + i] = dh1[i] * (1.0f - h1[i] * h1[i]);
        }
        for (size_t i = 0; i < D_H0; i++) {
            double s = 0.0;
            for (size_t o = 0; o < D_H1; o++) {
                s += (double)m->w[1][o * D_H0 + i] * g->gs[1][e * D_H1 + o];
            }
            dh0[i] = (float)s;
        }
        for (size_t r = 0; r < R_TOK; r++) {
            const float *z = g->z0 + (e * R_TOK + r) * D_H0;
            for (size_t o = 0; o < D_H0; o++) {
                g->gs[0][(e * R_TOK + r) * D_H0 + o] = dh0[o] / (float)R_TOK * (1.0f - z[o] * z[o]);
            }
        }
    }
    /* dW = Gs^T X, db = column sums of Gs. */
    for (int l = 0; l < N_LAYERS; l++) {
        size_t rows = l == 0 ? n * R_TOK : n;
        const float *xin = l == 0 ? x : (l == 1 ? g->a1 : g->a2);
        for (size_t o = 0; o < lay_out[l]; o++) {
            for (size_t i = 0; i < lay_in[l]; i++) {
                double s = 0.0;
                for (size_t k = 0; k < rows; k++) {
                    s += (double)g->gs[l][k * lay_out[l] + o] * xin[k * lay_in[l] + i];
                }
                g->gw[l][o * lay_in[l] + i] = (float)s;
            }
            if (lay_bias[l]) {
                double s = 0.0;
                for (size_t k = 0; k < rows; k++) {
                    s += g->gs[l][k * lay_out[l] + o];
                }
                g->gb[l][o] = (float)s;
            }
        }
    }
}

typedef struct batch {
    size_t n;
    float *x, *t;
} batch;

/* The global batch of step `step`: N examples, the same on every rank. */
static batch make_batch(uint64_t step, size_t n)
{
    batch b;
    kf_rng r = {0x9E3779B97F4A7C15ULL ^ (step * 7919 + 17)};
    b.n = n;
    b.x = (float *)kf_test_xmalloc(n * R_TOK * D_IN * sizeof(float));
    b.t = (float *)kf_test_xmalloc(n * D_OUT * sizeof(float));
    kf_rng_fill(&r, b.x, n * R_TOK * D_IN);
    kf_rng_fill(&r, b.t, n * D_OUT);
    for (size_t k = 0; k < n * D_OUT; k++) {
        b.t[k] *= 0.8f;
    }
    return b;
}

static void free_batch(batch *b)
{
    free(b->x);
    free(b->t);
}

static kf_optimizer *make_opt(kf_algorithm algo, int mixed)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_optimizer_params_init(&p, algo);
    p.inverse_interval = 2;
    p.momentum = 0.5f;
    p.weight_decay = 1e-3f;
    p.learning_rate = algo == KF_ALGO_FOOF ? 0.2f : 0.1f;
    p.damping = algo == KF_ALGO_FOOF ? 0.3f : 0.1f;
    if (algo == KF_ALGO_KFAC) {
        p.kl_clip = 0.01f; /* the clip's factor is a sum over all layers: the same everywhere */
    }
    if (kf_optimizer_create(&p, NULL, &opt) != KF_OK) {
        fprintf(stderr, "kf_optimizer_create failed\n");
        exit(2);
    }
    for (int l = 0; l < N_LAYERS; l++) {
        kf_layer_params lp;
        size_t idx;
        kf_layer_params_init(&lp, lay_out[l], lay_in[l]);
        lp.bias = lay_bias[l];
        if (l == 0) {
            lp.shared = R_TOK; /* K-FAC-expand over the tokens */
        }
        if (mixed && l == 1) {
            lp.algorithm = KF_ALGO_FOOF; /* a K-FAC model with one FOOF layer */
        }
        if (kf_optimizer_add_layer(opt, &lp, &idx) != KF_OK) {
            fprintf(stderr, "kf_optimizer_add_layer: %s\n", kf_optimizer_last_error(opt));
            exit(2);
        }
    }
    return opt;
}

/* Observes examples [lo, lo + n) of b and steps: kf_dist_step when d is given, else
 * kf_optimizer_step. */
static kf_status train_step(kf_optimizer *opt, kf_dist *d, net *m, const batch *b, size_t lo,
                            size_t n)
{
    grads g;
    kf_layer_tensors t[N_LAYERS];
    const float *x = b->x + lo * R_TOK * D_IN, *tt = b->t + lo * D_OUT;
    int stats = 0;
    kf_status s;
    grads_init(&g, n);
    fwd_bwd(m, x, tt, n, &g);
    kf_optimizer_needs_statistics(opt, &stats);
    if (stats) {
        const float *ins[N_LAYERS] = {x, g.a1, g.a2};
        for (int l = 0; l < N_LAYERS; l++) {
            kf_optimizer_observe_activations(opt, (size_t)l, n, ins[l], lay_in[l]);
            /* Gradients of the mean over n: scale n gives the per-example ones. */
            kf_optimizer_observe_gradients(opt, (size_t)l, n, g.gs[l], lay_out[l], (float)n);
        }
    }
    for (int l = 0; l < N_LAYERS; l++) {
        t[l].weight = m->w[l];
        t[l].ld_weight = lay_in[l];
        t[l].bias = m->b[l];
        t[l].grad_weight = g.gw[l];
        t[l].ld_grad_weight = lay_in[l];
        t[l].grad_bias = g.gb[l];
    }
    s = d ? kf_dist_step(d, t, N_LAYERS, n) : kf_optimizer_step(opt, t, N_LAYERS);
    grads_free(&g);
    return s;
}

/* ---- equivalence ----------------------------------------------------------------------------- */

static int everywhere(int cond);

#define STEPS 6
#define HALF 6 /* examples per rank; the single process takes 2 * HALF */

/* Tolerance of the 2-rank run against one process: the sums over the batch are formed in another
 * order (each rank's half, then the all-reduce), so the float results differ in the last bits,
 * and 6 preconditioned steps carry that along. 1e-5 relative (to 1 + |value|) is ~80 float ulps
 * of slack at magnitude 1; the observed difference (~1e-7) is printed. */
#define EQ_RTOL 1e-5

static kf_dist *make_dist(kf_optimizer *opt, MPI_Comm comm, kf_dist_mode mode)
{
    kf_dist_params dp;
    kf_dist *d = NULL;
    kf_dist_params_init(&dp);
    dp.mode = mode;
    CHECK_STATUS(kf_dist_create(opt, comm, &dp, &d), KF_OK);
    return d;
}

/* One process on the whole batch (ref), and 2 ranks on half each in both modes: the inverses
 * mode (md) and, but for EKFAC, the directions mode (mx), which must take the very same steps as
 * the inverses mode (bit for bit: the same inverses, the same arithmetic, only elsewhere). */
static void equivalence_run(kf_algorithm algo, int mixed, const char *name)
{
    int with_dirs = algo != KF_ALGO_EKFAC;
    kf_optimizer *ref = make_opt(algo, mixed), *opt = make_opt(algo, mixed);
    kf_optimizer *optx = make_opt(algo, mixed);
    kf_dist *d = NULL, *dx = NULL;
    net mr, md, mx;
    int ok_all = 1, same_modes = 1;
    double worst = 0.0, worst_x = 0.0;
    net_init(&mr, 42);
    net_init(&md, 42);
    net_init(&mx, 42);
    d = make_dist(opt, MPI_COMM_WORLD, KF_DIST_BROADCAST_INVERSES);
    if (with_dirs) {
        dx = make_dist(optx, MPI_COMM_WORLD, KF_DIST_BROADCAST_DIRECTIONS);
    }
    if (!d || (with_dirs && !dx)) {
        return;
    }
    for (uint64_t step = 0; step < STEPS; step++) {
        batch b = make_batch(step, (size_t)world * HALF);
        kf_status s1 = train_step(ref, NULL, &mr, &b, 0, b.n);
        kf_status s2 = train_step(opt, d, &md, &b, (size_t)rank * HALF, HALF);
        kf_status s3 = with_dirs ? train_step(optx, dx, &mx, &b, (size_t)rank * HALF, HALF) : KF_OK;
        ok_all &= s1 == KF_OK && s2 == KF_OK && s3 == KF_OK;
        if (s2 != KF_OK || s3 != KF_OK) {
            fprintf(stderr, "rank %d %s step %llu: %s / %s\n", rank, name,
                    (unsigned long long)step, kf_dist_last_error(d),
                    dx ? kf_dist_last_error(dx) : "");
        }
        {
            double e = net_diff(&md, &mr);
            worst = e > worst ? e : worst;
            if (with_dirs) {
                e = net_diff(&mx, &mr);
                worst_x = e > worst_x ? e : worst_x;
                same_modes &= net_same(&mx, &md);
            }
        }
        free_batch(&b);
    }
    CHECK(ok_all);
    CHECK(worst <= EQ_RTOL);
    CHECK(worst_x <= EQ_RTOL);
    CHECK(everywhere(same_modes));
    if (with_dirs) {
        kf_dist_stats st;
        uint64_t c = 0;
        CHECK(net_same_everywhere(&mx));
        kf_dist_get_stats(dx, &st);
        /* Every step gathers the other ranks' directions; no inverse ever travels. */
        CHECK(st.steps == STEPS && st.refresh_steps == 3 && st.floats_gathered > 0);
        for (size_t l = 0; l < N_LAYERS; l++) {
            kf_optimizer_inverse_count(optx, l, &c);
            CHECK(c == 3);
        }
    }
    /* The parameters moved: the comparison is not of untouched initial values. */
    {
        net init;
        net_init(&init, 42);
        CHECK(net_diff(&md, &init) > 1e-3);
        net_free(&init);
    }
    CHECK(net_same_everywhere(&md));
    for (size_t l = 0; l < N_LAYERS; l++) {
        uint64_t c1 = 0, c2 = 0;
        kf_optimizer_inverse_count(ref, l, &c1);
        kf_optimizer_inverse_count(opt, l, &c2);
        CHECK(c1 == 3 && c2 == 3); /* refreshed on steps 0, 2, 4 */
    }
    {
        kf_dist_stats st;
        kf_dist_get_stats(d, &st);
        CHECK(st.steps == STEPS && st.refresh_steps == 3);
        CHECK(st.floats_gathered > 0 && st.comm_seconds >= 0.0 &&
              st.comm_seconds <= st.step_seconds);
    }
    if (rank == 0) {
        printf("equivalence %-10s %d ranks x %d vs 1 x %d, %d steps: max rel. difference %.3g "
               "(inverses mode), %.3g (directions mode%s) (bound %.0e)\n", name, world, HALF,
               world * HALF, STEPS, worst, worst_x,
               with_dirs ? (same_modes ? ", bit-identical to inverses mode" : "") : ": refused",
               EQ_RTOL);
    }
    kf_dist_destroy(d);
    kf_dist_destroy(dx);
    kf_optimizer_destroy(opt);
    kf_optimizer_destroy(optx);
    kf_optimizer_destroy(ref);
    net_free(&mr);
    net_free(&md);
    net_free(&mx);
}

/* One rank (MPI_COMM_SELF): the distributed step is kf_optimizer_step bit for bit. */
static void single_rank_exact(kf_algorithm algo, kf_dist_mode mode)
{
    kf_optimizer *ref = make_opt(algo, 0), *opt = make_opt(algo, 0);
    kf_dist *d = NULL;
    net mr, md;
    int same = 1;
    net_init(&mr, 7);
    net_init(&md, 7);
    d = make_dist(opt, MPI_COMM_SELF, mode);
    for (uint64_t step = 0; d && step < STEPS; step++) {
        batch b = make_batch(step + 100, 2 * HALF);
        CHECK_STATUS(train_step(ref, NULL, &mr, &b, 0, b.n), KF_OK);
        CHECK_STATUS(train_step(opt, d, &md, &b, 0, b.n), KF_OK);
        same &= net_same(&mr, &md);
        free_batch(&b);
    }
    CHECK(same);
    kf_dist_destroy(d);
    kf_optimizer_destroy(opt);
    kf_optimizer_destroy(ref);
    net_free(&mr);
    net_free(&md);
}

/* Local batches of different sizes (3, 5, 7, ... examples on ranks 0, 1, 2, ...) weigh by their
 * sizes. */
static void unequal_batches(kf_algorithm algo, kf_dist_mode mode)
{
    kf_optimizer *ref = make_opt(algo, 0), *opt = make_opt(algo, 0);
    kf_dist *d = NULL;
    net mr, md;
    double worst = 0.0;
    int ok_all = 1;
    size_t total = 0, lo = 0, n = 0;
    for (int r = 0; r < world; r++) {
        size_t nr = 3 + 2 * (size_t)r;
        if (r == rank) {
            lo = total;
            n = nr;
        }
        total += nr;
    }
    net_init(&mr, 5);
    net_init(&md, 5);
    d = make_dist(opt, MPI_COMM_WORLD, mode);
    for (uint64_t step = 0; d && step < 4; step++) {
        batch b = make_batch(step + 200, total);
        ok_all &= train_step(ref, NULL, &mr, &b, 0, total) == KF_OK;
        ok_all &= train_step(opt, d, &md, &b, lo, n) == KF_OK;
        {
            double e = net_diff(&md, &mr);
            worst = e > worst ? e : worst;
        }
        free_batch(&b);
    }
    CHECK(ok_all);
    CHECK(worst <= EQ_RTOL);
    CHECK(net_same_everywhere(&md));
    if (rank == 0) {
        printf("equivalence unequal local batches (3, 5, ...), %s, %s mode: max rel. difference "
               "%.3g\n", kf_algorithm_name(algo), mode == KF_DIST_BROADCAST_DIRECTIONS ?
               "directions" : "inverses", worst);
    }
    kf_dist_destroy(d);
    kf_optimizer_destroy(opt);
    kf_optimizer_destroy(ref);
    net_free(&mr);
    net_free(&md);
}

static void suite_equivalence(void)
{
    equivalence_run(KF_ALGO_FOOF, 0, "foof");
    equivalence_run(KF_ALGO_KFAC, 0, "kfac");
    equivalence_run(KF_ALGO_KFAC, 1, "kfac+foof");
    equivalence_run(KF_ALGO_KFAC_EXACT_DAMPING, 0, "kfac-exact");
    equivalence_run(KF_ALGO_EKFAC, 0, "ekfac");
    for (int m = 0; m < 2; m++) {
        kf_dist_mode mode = m ? KF_DIST_BROADCAST_DIRECTIONS : KF_DIST_BROADCAST_INVERSES;
        single_rank_exact(KF_ALGO_FOOF, mode);
        single_rank_exact(KF_ALGO_KFAC, mode);
        single_rank_exact(KF_ALGO_KFAC_EXACT_DAMPING, mode);
        unequal_batches(KF_ALGO_KFAC, mode);
    }
    single_rank_exact(KF_ALGO_EKFAC, KF_DIST_BROADCAST_INVERSES);
    unequal_batches(KF_ALGO_EKFAC, KF_DIST_BROADCAST_INVERSES);
}

/* ---- assignment ------------------------------------------------------------------------------ */

/* The best makespan by brute force over all ranks^n assignments (small n only). */
static double best_makespan(size_t n, const double *cost, int ranks)
{
    double best = INFINITY, load[8];
    size_t combos = 1;
    for (size_t i = 0; i < n; i++) {
        combos *= (size_t)ranks;
    }
    for (size_t c = 0; c < combos; c++) {
        size_t code = c;
        double worst = 0.0;
        for (int r = 0; r < ranks; r++) {
            load[r] = 0.0;
        }
        for (size_t i = 0; i < n; i++) {
            load[code % (size_t)ranks] += cost[i];
            code /= (size_t)ranks;
        }
        for (int r = 0; r < ranks; r++) {
            worst = load[r] > worst ? load[r] : worst;
        }
        best = worst < best ? worst : best;
    }
    return best;
}

static void suite_assignment(void)
{
    kf_rng rng = {12345};
    int owner[64], covered = 1, graham = 1, lpt = 1;
    double cost[64], max_load;
    double worst_ratio = 0.0;
    /* Random instances: each layer one owner in range, the loads add up to the total, and the
     * largest load is at most average + largest cost (Graham's bound for any list schedule). */
    for (int trial = 0; trial < 300; trial++) {
        size_t n = (size_t)(kf_rng_next(&rng) % 40);
        int ranks = 1 + (int)(kf_rng_next(&rng) % 8);
        double total = 0.0, biggest = 0.0, load[8] = {0}, worst = 0.0;
        for (size_t i = 0; i < n; i++) {
            /* Layer-like costs: in^3 + out^3 for widths 1..1000. */
            double a = 1.0 + (double)(kf_rng_next(&rng) % 1000), b = (double)(kf_rng_next(&rng) % 1000);
            cost[i] = a * a * a + b * b * b;
            total += cost[i];
            biggest = cost[i] > biggest ? cost[i] : biggest;
        }
        if (kf_dist_assign(n, cost, ranks, owner, &max_load) != KF_OK) {
            covered = 0;
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            if (owner[i] < 0 || owner[i] >= ranks) {
                covered = 0;
                continue;
            }
            load[owner[i]] += cost[i];
        }
        for (int r = 0; r < ranks; r++) {
            worst = load[r] > worst ? load[r] : worst;
        }
        covered &= fabs(worst - max_load) <= 1e-9 * (1.0 + total);
        graham &= max_load <= total / ranks + biggest + 1e-9 * total;
    }
    CHECK(covered);
    CHECK(graham);
    /* Small instances against the optimum: LPT is within 4/3 - 1/(3m) of it (Graham 1969). */
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + (size_t)(kf_rng_next(&rng) % 9);
        int ranks = 2 + (int)(kf_rng_next(&rng) % 2);
        double opt_load, bound = 4.0 / 3.0 - 1.0 / (3.0 * ranks);
        for (size_t i = 0; i < n; i++) {
            double a = 1.0 + (double)(kf_rng_next(&rng) % 300);
            cost[i] = a * a * a;
        }
        kf_dist_assign(n, cost, ranks, owner, &max_load);
        opt_load = best_makespan(n, cost, ranks);
        lpt &= max_load <= bound * opt_load * (1.0 + 1e-12);
        worst_ratio = max_load / opt_load > worst_ratio ? max_load / opt_load : worst_ratio;
    }
    CHECK(lpt);
    /* The textbook case where LPT is not optimal: 2 ranks, costs 3 3 2 2 2 -> 7 vs 6. */
    {
        double c[5] = {3, 3, 2, 2, 2};
        CHECK_STATUS(kf_dist_assign(5, c, 2, owner, &max_load), KF_OK);
        CHECK(max_load == 7.0 && best_makespan(5, c, 2) == 6.0);
    }
    /* Edge cases and argument errors. */
    CHECK_STATUS(kf_dist_assign(0, NULL, 3, NULL, &max_load), KF_OK);
    CHECK(max_load == 0.0);
    {
        double c[3] = {5, 1, 9};
        CHECK_STATUS(kf_dist_assign(3, c, 1, owner, NULL), KF_OK);
        CHECK(owner[0] == 0 && owner[1] == 0 && owner[2] == 0);
        CHECK_STATUS(kf_dist_assign(3, c, 0, owner, NULL), KF_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(kf_dist_assign(3, NULL, 2, owner, NULL), KF_ERR_NULL_POINTER);
        c[1] = -1.0;
        CHECK_STATUS(kf_dist_assign(3, c, 2, owner, NULL), KF_ERR_INVALID_ARGUMENT);
        c[1] = NAN;
        CHECK_STATUS(kf_dist_assign(3, c, 2, owner, NULL), KF_ERR_INVALID_ARGUMENT);
    }
    /* The handle on the autoencoder 784-1000-500-250-30-250-500-1000-784 (K-FAC): the ranks agree
     * on the owners, the costs are dim_a^3 + out^3, the bound holds. */
    {
        static const size_t wd[9] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
        kf_optimizer_params p;
        kf_optimizer *opt = NULL;
        kf_dist *d = NULL;
        double total = 0.0, biggest = 0.0, load[64] = {0}, worst = 0.0;
        int ok = 1;
        kf_optimizer_params_init(&p, KF_ALGO_KFAC);
        kf_optimizer_create(&p, NULL, &opt);
        for (int l = 0; l < 8; l++) {
            kf_layer_params lp;
            size_t idx;
            kf_layer_params_init(&lp, wd[l + 1], wd[l]);
            kf_optimizer_add_layer(opt, &lp, &idx);
        }
        CHECK_STATUS(kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d), KF_OK);
        for (size_t l = 0; d && l < 8; l++) {
            int r = -1, r0;
            double c = 0.0, da = (double)wd[l] + 1.0, out = (double)wd[l + 1];
            ok &= kf_dist_assignment(d, l, &r) == KF_OK && r >= 0 && r < world;
            ok &= kf_dist_layer_cost(d, l, &c) == KF_OK && c == da * da * da + out * out * out;
            r0 = r;
            MPI_Bcast(&r0, 1, MPI_INT, 0, MPI_COMM_WORLD);
            ok &= r0 == r;
            if (r >= 0 && r < world) {
                load[r] += c;
            }
            total += c;
            biggest = c > biggest ? c : biggest;
        }
        CHECK(ok);
        for (int r = 0; r < world; r++) {
            worst = load[r] > worst ? load[r] : worst;
        }
        {
            double lower = total / world > biggest ? total / world : biggest;
            CHECK(worst <= total / world + biggest);
            if (rank == 0) {
                printf("assignment: autoencoder on %d ranks: largest load %.4g, lower bound %.4g "
                       "(ratio %.3f); random small cases: worst LPT/optimum %.3f (bound 4/3)\n",
                       world, worst, lower, worst / lower, worst_ratio);
            }
        }
        CHECK_STATUS(kf_dist_assignment(d, 8, (int[1]){0}), KF_ERR_INVALID_ARGUMENT);
        /* Its buffers: the packed gradients and factor triangles (6,086,506 floats for this
         * model) and the inverses' triangles (3,249,192 floats). */
        {
            size_t bytes = 0;
            CHECK_STATUS(kf_dist_memory_bytes(d, &bytes), KF_OK);
            CHECK(bytes >= (6086506 + 3249192) * sizeof(float) &&
                  bytes < (6086506 + 3249192) * sizeof(float) + 65536);
        }
        kf_dist_destroy(d);
        kf_optimizer_destroy(opt);
    }
}

/* ---- errors ---------------------------------------------------------------------------------- */

/* 1 on every rank if cond holds on every rank. */
static int everywhere(int cond)
{
    int all = 0;
    cond = cond ? 1 : 0;
    MPI_Allreduce(&cond, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

static int contains(const char *s, const char *part)
{
    return s && strstr(s, part) != NULL;
}

/* An allocator that counts, and fails from the fail_at-th allocation on (0: never). */
typedef struct counter {
    long allocs, fail_at;
    size_t live;
} counter;

static void *count_alloc(size_t size, void *ctx)
{
    counter *c = (counter *)ctx;
    if (c->fail_at > 0 && c->allocs + 1 >= c->fail_at) {
        return NULL;
    }
    c->allocs++;
    c->live += size;
    return malloc(size);
}

static void count_free(void *p, size_t size, void *ctx)
{
    counter *c = (counter *)ctx;
    c->live -= size;
    free(p);
}

/* The handle allocates through the optimizer's allocator and gives everything back; running out
 * of memory on one rank fails kf_dist_create on every rank. */
static void allocation(void)
{
    counter c = {0, 0, 0};
    kf_allocator a = {count_alloc, count_free, &c};
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_dist *d = NULL;
    int oom_ok = 1;
    size_t base;
    kf_optimizer_params_init(&p, KF_ALGO_KFAC);
    kf_optimizer_create(&p, &a, &opt);
    for (int l = 0; l < N_LAYERS; l++) {
        kf_layer_params lp;
        size_t idx;
        kf_layer_params_init(&lp, lay_out[l], lay_in[l]);
        kf_optimizer_add_layer(opt, &lp, &idx);
    }
    base = c.live;
    for (long k = 1; k <= 4; k++) {
        kf_status s;
        c.fail_at = rank == 1 ? c.allocs + k : 0;
        s = kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d);
        oom_ok &= everywhere(s == KF_ERR_OUT_OF_MEMORY && d == NULL && c.live == base);
        oom_ok &= everywhere(contains(kf_optimizer_last_error(opt),
                                      rank == 1 ? "out of memory" : "rank 1 failed"));
    }
    CHECK(oom_ok);
    c.fail_at = 0;
    CHECK(everywhere(kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d) == KF_OK && c.live > base));
    /* Restoring: no room on rank 1 for the file or for the copy of the state -> every rank
     * fails and keeps its state; with room, everything allocated is given back. */
    {
        const char *path = "mpi_test_dist_alloc.kfck";
        size_t live = c.live;
        uint64_t steps = 1;
        CHECK(everywhere(kf_dist_save_file(d, path) == KF_OK));
        for (long k = 1; k <= 2; k++) {
            c.fail_at = rank == 1 ? c.allocs + k : 0;
            CHECK(everywhere(kf_dist_restore_file(d, path) == KF_ERR_OUT_OF_MEMORY &&
                             c.live == live));
        }
        c.fail_at = 0;
        CHECK(everywhere(kf_dist_restore_file(d, path) == KF_OK && c.live == live));
        kf_optimizer_step_count(opt, &steps);
        CHECK(everywhere(steps == 0));
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) {
            remove(path);
        }
    }
    kf_dist_destroy(d);
    CHECK(everywhere(c.live == base));
    kf_optimizer_destroy(opt);
    CHECK(everywhere(c.live == 0));
}

/* Directions mode: a direction that is not finite on its owner only (its inverse corrupted
 * there), and a factorisation that fails on its owner only, fail every rank and change nothing;
 * then the ranks step on together. */
static void directions_errors(void)
{
    kf_optimizer *opt = make_opt(KF_ALGO_KFAC, 0);
    kf_dist *d = make_dist(opt, MPI_COMM_WORLD, KF_DIST_BROADCAST_DIRECTIONS);
    net m, before;
    uint64_t steps = 0, step = 0;
    int owner1 = -1, owner0 = -1;
    size_t mem_dirs = 0, mem_inv = 0;
    kf_status s;
    if (!d) {
        return;
    }
    net_init(&m, 9);
    net_init(&before, 9);
    {
        kf_optimizer *o2 = make_opt(KF_ALGO_KFAC, 0);
        kf_dist *d2 = make_dist(o2, MPI_COMM_WORLD, KF_DIST_BROADCAST_INVERSES);
        kf_dist_memory_bytes(d, &mem_dirs);
        kf_dist_memory_bytes(d2, &mem_inv);
        CHECK(mem_dirs > 0 && mem_inv > 0 && mem_dirs != mem_inv);
        kf_dist_destroy(d2);
        kf_optimizer_destroy(o2);
    }
    kf_dist_assignment(d, 1, &owner1);
    kf_dist_assignment(d, 0, &owner0);
    {
        batch b = make_batch(step++, (size_t)world * HALF);
        CHECK(everywhere(train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF) == KF_OK));
        free_batch(&b);
    }
    /* Step 1 uses the inverses of step 0: poison layer 1's on its owner. */
    {
        batch b = make_batch(step, (size_t)world * HALF);
        float keep = opt->layers[1].a.inv[0];
        if (rank == owner1) {
            opt->layers[1].a.inv[0] = INFINITY;
        }
        net_copy(&before, &m);
        s = train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF);
        CHECK(everywhere(s == KF_ERR_NON_FINITE));
        CHECK(everywhere(contains(kf_dist_last_error(d), "direction of layer 1")));
        if (rank == 0) {
            printf("errors: directions mode, non-finite direction on rank %d -> rank 0: %s\n",
                   owner1, kf_dist_last_error(d));
        }
        kf_optimizer_step_count(opt, &steps);
        CHECK(everywhere(steps == 1 && net_same(&m, &before)));
        opt->layers[1].a.inv[0] = keep;
        CHECK(everywhere(train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF) == KF_OK));
        CHECK(net_same_everywhere(&m));
        free_batch(&b);
        step++;
    }
    /* Step 2 refreshes: layer 0's factorisation fails on its owner only. */
    {
        batch b = make_batch(step, (size_t)world * HALF);
        kf_layer *l0 = &opt->layers[0];
        size_t dim = l0->a.dim;
        float *saved = (float *)kf_test_xmalloc(dim * dim * sizeof(float));
        memcpy(saved, l0->a.f, dim * dim * sizeof(float));
        if (rank == owner0) {
            for (size_t i = 0; i < dim; i++) {
                l0->a.f[i * dim + i] = -1e6f;
            }
        }
        net_copy(&before, &m);
        s = train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF);
        CHECK(everywhere(s == KF_ERR_NOT_POSITIVE_DEFINITE));
        kf_optimizer_step_count(opt, &steps);
        CHECK(everywhere(steps == 2 && net_same(&m, &before)));
        memcpy(l0->a.f, saved, dim * dim * sizeof(float));
        free(saved);
        CHECK(everywhere(train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF) == KF_OK));
        CHECK(net_same_everywhere(&m));
        free_batch(&b);
    }
    /* Once the handle is gone, the optimizer alone first refreshes the inverses it never held. */
    kf_dist_destroy(d);
    CHECK(opt->force_refresh == (world > 1));
    kf_optimizer_destroy(opt);
    net_free(&m);
    net_free(&before);
}

static void suite_errors(void)
{
    kf_dist_params dp;
    kf_dist *d = NULL;
    kf_status s;
    allocation();
    directions_errors();
    /* Mismatched registrations: rank 1's second layer is one input wider. */
    {
        kf_optimizer_params p;
        kf_optimizer *opt = NULL;
        kf_optimizer_params_init(&p, KF_ALGO_KFAC);
        kf_optimizer_create(&p, NULL, &opt);
        for (int l = 0; l < N_LAYERS; l++) {
            kf_layer_params lp;
            size_t idx;
            kf_layer_params_init(&lp, lay_out[l], lay_in[l] + (l == 1 && rank == 1 ? 1 : 0));
            kf_optimizer_add_layer(opt, &lp, &idx);
        }
        s = kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d);
        CHECK(everywhere(s == KF_ERR_SHAPE && d == NULL));
        CHECK(everywhere(contains(kf_optimizer_last_error(opt), "layers on rank 1 differ")));
        if (rank == 0 && s != KF_OK) {
            printf("errors: mismatched layers -> %s\n", kf_optimizer_last_error(opt));
        }
        kf_optimizer_destroy(opt);
    }
    /* A layer fewer on rank 1. */
    {
        kf_optimizer_params p;
        kf_optimizer *opt = NULL;
        kf_optimizer_params_init(&p, KF_ALGO_FOOF);
        kf_optimizer_create(&p, NULL, &opt);
        for (int l = 0; l < (rank == 1 ? N_LAYERS - 1 : N_LAYERS); l++) {
            kf_layer_params lp;
            size_t idx;
            kf_layer_params_init(&lp, lay_out[l], lay_in[l]);
            kf_optimizer_add_layer(opt, &lp, &idx);
        }
        s = kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d);
        CHECK(everywhere(s == KF_ERR_SHAPE && d == NULL));
        CHECK(everywhere(contains(kf_optimizer_last_error(opt), "numbers of layers (2 to 3; rank 1")));
        kf_optimizer_destroy(opt);
    }
    /* EKFAC in the directions mode (on rank 1 only): every rank gets KF_ERR_UNSUPPORTED; EKFAC on
     * rank 1 against K-FAC on rank 0: KF_ERR_SHAPE; one rank in the other mode: KF_ERR_SHAPE. */
    {
        kf_optimizer *opt = make_opt(KF_ALGO_KFAC, 0);
        kf_optimizer_params p;
        kf_optimizer *ek = NULL, *ek2 = make_opt(KF_ALGO_EKFAC, 0);
        kf_dist_params_init(&dp);
        dp.mode = rank == 1 ? KF_DIST_BROADCAST_DIRECTIONS : KF_DIST_BROADCAST_INVERSES;
        s = kf_dist_create(ek2, MPI_COMM_WORLD, &dp, &d);
        CHECK(everywhere(s == KF_ERR_UNSUPPORTED && d == NULL));
        CHECK(everywhere(contains(kf_optimizer_last_error(ek2), rank == 1 ? "EKFAC" : "rank 1")));
        if (rank == 1) {
            printf("errors: EKFAC in directions mode -> %s\n", kf_optimizer_last_error(ek2));
        }
        kf_optimizer_destroy(ek2);
        s = kf_dist_create(opt, MPI_COMM_WORLD, &dp, &d);
        CHECK(everywhere(s == KF_ERR_SHAPE && d == NULL));
        kf_optimizer_params_init(&p, rank == 1 ? KF_ALGO_EKFAC : KF_ALGO_KFAC);
        kf_optimizer_create(&p, NULL, &ek);
        for (int l = 0; l < N_LAYERS; l++) {
            kf_layer_params lp;
            size_t idx;
            kf_layer_params_init(&lp, lay_out[l], lay_in[l]);
            kf_optimizer_add_layer(ek, &lp, &idx);
        }
        s = kf_dist_create(ek, MPI_COMM_WORLD, NULL, &d);
        CHECK(everywhere(s == KF_ERR_SHAPE && d == NULL));
        CHECK(everywhere(contains(kf_optimizer_last_error(ek), "layers on rank 1 differ")));
        kf_optimizer_destroy(ek);
        dp.mode = (kf_dist_mode)7;
        CHECK(everywhere(kf_dist_create(opt, MPI_COMM_WORLD, &dp, &d) == KF_ERR_INVALID_ARGUMENT));
        CHECK(everywhere(kf_dist_create(NULL, MPI_COMM_WORLD, NULL, &d) == KF_ERR_NULL_POINTER));
        CHECK(kf_dist_params_init(NULL) == KF_ERR_NULL_POINTER);
        kf_optimizer_destroy(opt);
    }
    /* Bad step arguments on rank 1 only: every rank fails, nothing changes, and the step after
     * works without observing again (the failure came before the all-reduce). */
    {
        kf_optimizer *opt = make_opt(KF_ALGO_KFAC, 0);
        net m, before;
        grads g;
        kf_layer_tensors t[N_LAYERS];
        batch b = make_batch(0, (size_t)world * HALF);
        const float *x = b.x + (size_t)rank * HALF * R_TOK * D_IN;
        uint64_t steps = 0;
        net_init(&m, 3);
        net_init(&before, 3);
        CHECK_STATUS(kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d), KF_OK);
        grads_init(&g, HALF);
        fwd_bwd(&m, x, b.t + (size_t)rank * HALF * D_OUT, HALF, &g);
        {
            const float *ins[N_LAYERS] = {x, g.a1, g.a2};
            for (int l = 0; l < N_LAYERS; l++) {
                kf_optimizer_observe_activations(opt, (size_t)l, HALF, ins[l], lay_in[l]);
                kf_optimizer_observe_gradients(opt, (size_t)l, HALF, g.gs[l], lay_out[l], HALF);
            }
        }
        for (int l = 0; l < N_LAYERS; l++) {
            t[l].weight = m.w[l];
            t[l].ld_weight = lay_in[l];
            t[l].bias = m.b[l];
            t[l].grad_weight = g.gw[l];
            t[l].ld_grad_weight = lay_in[l];
            t[l].grad_bias = g.gb[l];
        }
        /* Fewer layers on rank 1. */
        s = kf_dist_step(d, t, rank == 1 ? N_LAYERS - 1 : N_LAYERS, HALF);
        CHECK(everywhere(s == KF_ERR_SHAPE));
        CHECK(everywhere(contains(kf_dist_last_error(d), rank == 1 ? "num_layers" : "rank 1")));
        if (rank == 0) {
            printf("errors: rank 1 passed fewer layers -> rank 0: %s\n", kf_dist_last_error(d));
        }
        /* A leading dimension too small on rank 1. */
        t[0].ld_grad_weight = rank == 1 ? 2 : lay_in[0];
        CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, HALF) == KF_ERR_SHAPE));
        t[0].ld_grad_weight = lay_in[0];
        /* A missing bias gradient, and a NULL layer array, on rank 1. */
        t[2].grad_bias = rank == 1 ? NULL : g.gb[2];
        CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, HALF) == KF_ERR_NULL_POINTER));
        t[2].grad_bias = g.gb[2];
        CHECK(everywhere(kf_dist_step(d, rank == 1 ? NULL : t, N_LAYERS, HALF) ==
                         KF_ERR_NULL_POINTER));
        CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, rank == 1 ? 0 : HALF) == KF_ERR_SHAPE));
        /* Another learning rate on rank 1: out of step. */
        if (rank == 1) {
            kf_optimizer_set_learning_rate(opt, 0.5f);
        }
        s = kf_dist_step(d, t, N_LAYERS, HALF);
        CHECK(everywhere(s == KF_ERR_STATE && contains(kf_dist_last_error(d), "rank 1")));
        if (rank == 1) {
            kf_optimizer_set_learning_rate(opt, 0.1f);
        }
        kf_optimizer_step_count(opt, &steps);
        CHECK(everywhere(steps == 0 && net_same(&m, &before)));
        /* The observations survived the failures: the step goes through now. */
        CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, HALF) == KF_OK));
        CHECK(everywhere(kf_dist_last_error(d)[0] == '\0'));
        CHECK(net_same_everywhere(&m));
        /* Observations on rank 1 only: out of step. */
        fwd_bwd(&m, x, b.t + (size_t)rank * HALF * D_OUT, HALF, &g);
        if (rank == 1) {
            kf_optimizer_observe_activations(opt, 0, HALF, x, lay_in[0]);
        }
        CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, HALF) == KF_ERR_STATE));
        /* NaN in rank 1's gradient: all-reduced, so every rank refuses the same sum. */
        {
            const float *ins[N_LAYERS] = {x, g.a1, g.a2};
            for (int l = 0; l < N_LAYERS; l++) {
                kf_optimizer_observe_activations(opt, (size_t)l, HALF, ins[l], lay_in[l]);
                kf_optimizer_observe_gradients(opt, (size_t)l, HALF, g.gs[l], lay_out[l], HALF);
            }
            net_copy(&before, &m);
            if (rank == 1) {
                g.gw[1][3] = NAN;
            }
            CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, HALF) == KF_ERR_NON_FINITE));
            CHECK(everywhere(net_same(&m, &before)));
            g.gw[1][3] = 0.25f;
        }
        /* A factorisation that fails on its owner only (a moving average corrupted there to be
         * indefinite): the other rank is waiting in the exchange and must hear of it. */
        {
            int owner0 = -1;
            kf_layer *l0 = &opt->layers[0];
            size_t dim = l0->a.dim;
            float *saved = (float *)kf_test_xmalloc(dim * dim * sizeof(float));
            uint64_t inv_before = 0, inv_after = 0;
            const float *ins[N_LAYERS] = {x, g.a1, g.a2};
            kf_dist_assignment(d, 0, &owner0);
            /* Step 1 is a statistics step; force a refresh through a new damping (every rank).
             * The corruption comes first: a plain layer's observation folds the moving average. */
            kf_optimizer_set_damping(opt, 0.2f);
            memcpy(saved, l0->a.f, dim * dim * sizeof(float));
            if (rank == owner0) {
                for (size_t i = 0; i < dim; i++) {
                    l0->a.f[i * dim + i] = -1e6f;
                }
            }
            for (int l = 0; l < N_LAYERS; l++) {
                kf_optimizer_observe_activations(opt, (size_t)l, HALF, ins[l], lay_in[l]);
                kf_optimizer_observe_gradients(opt, (size_t)l, HALF, g.gs[l], lay_out[l], HALF);
            }
            kf_optimizer_inverse_count(opt, 0, &inv_before);
            net_copy(&before, &m);
            s = kf_dist_step(d, t, N_LAYERS, HALF);
            CHECK(everywhere(s == KF_ERR_NOT_POSITIVE_DEFINITE));
            CHECK(everywhere(rank == owner0 ? contains(kf_dist_last_error(d), "positive definite")
                                            : contains(kf_dist_last_error(d), "failed this step")));
            if (rank == 0) {
                printf("errors: failed factorisation on rank %d -> rank 0: %s\n", owner0,
                       kf_dist_last_error(d));
            }
            kf_optimizer_inverse_count(opt, 0, &inv_after);
            kf_optimizer_step_count(opt, &steps);
            CHECK(everywhere(net_same(&m, &before) && inv_after == inv_before && steps == 1));
            /* Repaired and observed again, the ranks step on together. */
            memcpy(l0->a.f, saved, dim * dim * sizeof(float));
            free(saved);
            for (int l = 0; l < N_LAYERS; l++) {
                kf_optimizer_observe_activations(opt, (size_t)l, HALF, ins[l], lay_in[l]);
                kf_optimizer_observe_gradients(opt, (size_t)l, HALF, g.gs[l], lay_out[l], HALF);
            }
            CHECK(everywhere(kf_dist_step(d, t, N_LAYERS, HALF) == KF_OK));
            kf_optimizer_inverse_count(opt, 0, &inv_after);
            CHECK(everywhere(inv_after == inv_before + 1));
            CHECK(net_same_everywhere(&m));
        }
        CHECK(kf_dist_step(NULL, t, N_LAYERS, HALF) == KF_ERR_NULL_POINTER);
        CHECK(contains(kf_dist_last_error(NULL), "NULL"));
        kf_dist_destroy(d);
        kf_dist_destroy(NULL);
        grads_free(&g);
        free_batch(&b);
        net_free(&m);
        net_free(&before);
        kf_optimizer_destroy(opt);
    }
}

/* ---- checkpoint ------------------------------------------------------------------------------ */

static unsigned char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long end;
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    end = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (unsigned char *)kf_test_xmalloc((size_t)end);
    *size = fread(buf, 1, (size_t)end, f);
    fclose(f);
    return buf;
}

/* Directions mode: rank 0 holds only its own layers' inverses, so the save first brings it the
 * others'; the file is byte for byte the inverses mode's file, and resuming from it (in either
 * mode) continues bit-exactly. */
static void checkpoint_directions(void)
{
    const char *pi = "mpi_test_dist_inv.kfck", *px = "mpi_test_dist_dir.kfck";
    kf_optimizer *oi = make_opt(KF_ALGO_KFAC, 1), *ox = make_opt(KF_ALGO_KFAC, 1);
    kf_optimizer *or2 = make_opt(KF_ALGO_KFAC, 1);
    kf_dist *di = make_dist(oi, MPI_COMM_WORLD, KF_DIST_BROADCAST_INVERSES);
    kf_dist *dx = make_dist(ox, MPI_COMM_WORLD, KF_DIST_BROADCAST_DIRECTIONS);
    kf_dist *dr = make_dist(or2, MPI_COMM_WORLD, KF_DIST_BROADCAST_DIRECTIONS);
    net mi, mx, mr;
    int ok = 1;
    net_init(&mi, 13);
    net_init(&mx, 13);
    net_init(&mr, 13);
    if (!di || !dx || !dr) {
        return;
    }
    for (uint64_t step = 0; step < 3; step++) {
        batch b = make_batch(step + 400, (size_t)world * HALF);
        ok &= train_step(oi, di, &mi, &b, (size_t)rank * HALF, HALF) == KF_OK;
        ok &= train_step(ox, dx, &mx, &b, (size_t)rank * HALF, HALF) == KF_OK;
        free_batch(&b);
    }
    CHECK(everywhere(ok));
    CHECK_STATUS(kf_dist_save_file(di, pi), KF_OK);
    CHECK_STATUS(kf_dist_save_file(dx, px), KF_OK);
    {
        size_t si = 0, sx = 0;
        unsigned char *fi = read_all(pi, &si), *fx = read_all(px, &sx);
        CHECK(everywhere(fi && fx && si == sx && si > 0 && memcmp(fi, fx, si) == 0));
        free(fi);
        free(fx);
    }
    CHECK_STATUS(kf_dist_restore_file(dr, px), KF_OK);
    net_copy(&mr, &mx);
    for (uint64_t step = 3; step < 6; step++) {
        batch b = make_batch(step + 400, (size_t)world * HALF);
        ok &= train_step(ox, dx, &mx, &b, (size_t)rank * HALF, HALF) == KF_OK;
        ok &= train_step(or2, dr, &mr, &b, (size_t)rank * HALF, HALF) == KF_OK;
        ok &= net_same(&mx, &mr);
        free_batch(&b);
    }
    CHECK(everywhere(ok));
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        remove(pi);
        remove(px);
        printf("checkpoint: directions mode writes the inverses mode's bytes and resumes "
               "bit-exactly: %s\n", ok ? "yes" : "NO");
    }
    kf_dist_destroy(di);
    kf_dist_destroy(dx);
    kf_dist_destroy(dr);
    kf_optimizer_destroy(oi);
    kf_optimizer_destroy(ox);
    kf_optimizer_destroy(or2);
    net_free(&mi);
    net_free(&mx);
    net_free(&mr);
}

static void suite_checkpoint(void)
{
    const char *path = "mpi_test_dist.kfck";
    kf_optimizer *opt = make_opt(KF_ALGO_KFAC, 1), *opt2 = make_opt(KF_ALGO_KFAC, 1);
    kf_dist *d = NULL, *d2 = NULL;
    net m, saved, m2;
    net_init(&m, 11);
    net_init(&saved, 11);
    net_init(&m2, 11);
    CHECK_STATUS(kf_dist_create(opt, MPI_COMM_WORLD, NULL, &d), KF_OK);
    CHECK_STATUS(kf_dist_create(opt2, MPI_COMM_WORLD, NULL, &d2), KF_OK);
    if (!d || !d2) {
        return;
    }
    for (uint64_t step = 0; step < 3; step++) {
        batch b = make_batch(step + 300, (size_t)world * HALF);
        CHECK_STATUS(train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF), KF_OK);
        free_batch(&b);
    }
    CHECK_STATUS(kf_dist_save_file(d, rank == 0 ? path : NULL), KF_OK);
    net_copy(&saved, &m);
    /* The file is what every rank holds, byte for byte. */
    {
        size_t fsize = 0, need = 0, written = 0;
        unsigned char *file = read_all(path, &fsize), *mine;
        kf_optimizer_checkpoint_size(opt, &need);
        mine = (unsigned char *)kf_test_xmalloc(need);
        kf_optimizer_save(opt, mine, need, &written);
        CHECK(everywhere(file && fsize == written && memcmp(file, mine, fsize) == 0));
        free(file);
        free(mine);
    }
    for (uint64_t step = 3; step < 6; step++) {
        batch b = make_batch(step + 300, (size_t)world * HALF);
        CHECK_STATUS(train_step(opt, d, &m, &b, (size_t)rank * HALF, HALF), KF_OK);
        free_batch(&b);
    }
    /* Resume in a second optimizer: the same steps give the same bits. */
    CHECK_STATUS(kf_dist_restore_file(d2, path), KF_OK);
    net_copy(&m2, &saved);
    for (uint64_t step = 3; step < 6; step++) {
        batch b = make_batch(step + 300, (size_t)world * HALF);
        CHECK_STATUS(train_step(opt2, d2, &m2, &b, (size_t)rank * HALF, HALF), KF_OK);
        free_batch(&b);
    }
    CHECK(everywhere(net_same(&m, &m2)));
    /* Failures are everybody's, and change nothing. */
    {
        uint64_t steps = 0;
        CHECK(everywhere(kf_dist_restore_file(d2, "no-such-dir/none.kfck") == KF_ERR_IO));
        CHECK(everywhere(contains(kf_dist_last_error(d2), "none.kfck")));
        CHECK(everywhere(kf_dist_save_file(d2, "no-such-dir/x.kfck") == KF_ERR_IO));
        if (rank == 0) {
            FILE *f = fopen("mpi_test_dist_bad.kfck", "wb");
            fputs("not a checkpoint", f);
            fclose(f);
        }
        CHECK(everywhere(kf_dist_restore_file(d2, "mpi_test_dist_bad.kfck") == KF_ERR_FORMAT));
        kf_optimizer_step_count(opt2, &steps);
        CHECK(everywhere(steps == 6));
        CHECK(kf_dist_save_file(NULL, path) == KF_ERR_NULL_POINTER);
        CHECK(kf_dist_restore_file(NULL, path) == KF_ERR_NULL_POINTER);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        remove(path);
        remove("mpi_test_dist_bad.kfck");
    }
    kf_dist_destroy(d);
    kf_dist_destroy(d2);
    kf_optimizer_destroy(opt);
    kf_optimizer_destroy(opt2);
    net_free(&m);
    net_free(&saved);
    net_free(&m2);
    checkpoint_directions();
}

int main(int argc, char **argv)
{
    const char *suite = argc > 1 ? argv[1] : "all";
    int counts[2], totals[2] = {0, 0};
    char name[64];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world != 2 && strcmp(suite, "assignment") != 0 && strcmp(suite, "equivalence") != 0) {
        if (rank == 0) {
            fprintf(stderr, "mpi_test_dist %s needs 2 ranks (mpirun -np 2)\n", suite);
        }
        MPI_Finalize();
        return 2;
    }
    if (!strcmp(suite, "equivalence") || !strcmp(suite, "all")) {
        suite_equivalence();
    }
    if (!strcmp(suite, "assignment") || !strcmp(suite, "all")) {
        suite_assignment();
    }
    if (!strcmp(suite, "errors") || !strcmp(suite, "all")) {
        suite_errors();
    }
    if (!strcmp(suite, "checkpoint") || !strcmp(suite, "all")) {
        suite_checkpoint();
    }
    counts[0] = kf_test_passed;
    counts[1] = kf_test_failed;
    MPI_Allreduce(counts, totals, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        snprintf(name, sizeof name, "mpi_test_dist %s (%d ranks)", suite, world);
        kf_test_passed = totals[0];
        kf_test_failed = totals[1];
        kf_test_finish(name);
    }
    MPI_Finalize();
    return totals[1] == 0 ? 0 : 1;
}
