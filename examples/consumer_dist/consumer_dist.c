/* A program that uses the installed MPI module kronfac_dist: every rank observes its share of a
 * small least-squares batch and takes one distributed K-FAC step in each mode; the ranks must end
 * with the same parameters, and the loss must fall. Run it under mpirun with any number of ranks. */
#include <kronfac_dist.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define N 8   /* global batch */
#define IN 3
#define OUT 2

static float loss_and_grads(const float *w, const float *b, const float *x, const float *t,
                            size_t lo, size_t n, float *gw, float *gb, float *gs)
{
    float loss = 0.0f;
    memset(gw, 0, OUT * IN * sizeof(float));
    memset(gb, 0, OUT * sizeof(float));
    for (size_t e = lo; e < lo + n; e++) {
        for (int o = 0; o < OUT; o++) {
            float y = b[o], r;
            for (int i = 0; i < IN; i++) {
                y += w[o * IN + i] * x[e * IN + i];
            }
            r = y - t[e * OUT + o];
            loss += 0.5f * r * r / (float)n;
            gs[(e - lo) * OUT + o] = r / (float)n; /* of the mean loss over the n examples */
            for (int i = 0; i < IN; i++) {
                gw[o * IN + i] += r * x[e * IN + i] / (float)n;
            }
            gb[o] += r / (float)n;
        }
    }
    return loss;
}

static int run(int rank, int world, kf_dist_mode mode)
{
    float x[N * IN], t[N * OUT], w[OUT * IN] = {0}, b[OUT] = {0};
    float gw[OUT * IN], gb[OUT], gs[N * OUT], before, after, wmax[OUT * IN], wmin[OUT * IN];
    size_t lo = (size_t)rank * N / (size_t)world, hi = (size_t)(rank + 1) * N / (size_t)world;
    kf_optimizer_params p;
    kf_layer_params lp;
    kf_optimizer *opt = NULL;
    kf_dist_params dp;
    kf_dist *dist = NULL;
    kf_layer_tensors lt;
    size_t idx;
    kf_status s;
    int ok;
    for (int k = 0; k < N * IN; k++) {
        x[k] = (float)((k * 7) % 11) / 11.0f - 0.5f;
    }
    for (int k = 0; k < N * OUT; k++) {
        t[k] = (float)((k * 5) % 7) / 7.0f;
    }
    kf_optimizer_params_init(&p, KF_ALGO_KFAC);
    p.learning_rate = 0.5f;
    kf_optimizer_create(&p, NULL, &opt);
    kf_layer_params_init(&lp, OUT, IN);
    kf_optimizer_add_layer(opt, &lp, &idx);
    kf_dist_params_init(&dp);
    dp.mode = mode;
    if ((s = kf_dist_create(opt, MPI_COMM_WORLD, &dp, &dist)) != KF_OK) {
        fprintf(stderr, "kf_dist_create: %s\n", kf_optimizer_last_error(opt));
        kf_optimizer_destroy(opt);
        return 0;
    }
    before = loss_and_grads(w, b, x, t, 0, N, gw, gb, gs);
    loss_and_grads(w, b, x, t, lo, hi - lo, gw, gb, gs);
    kf_optimizer_observe_activations(opt, 0, hi - lo, x + lo * IN, IN);
    kf_optimizer_observe_gradients(opt, 0, hi - lo, gs, OUT, (float)(hi - lo));
    lt.weight = w;
    lt.ld_weight = IN;
    lt.bias = b;
    lt.grad_weight = gw;
    lt.ld_grad_weight = IN;
    lt.grad_bias = gb;
    s = kf_dist_step(dist, &lt, 1, hi - lo);
    after = loss_and_grads(w, b, x, t, 0, N, gw, gb, gs);
    MPI_Allreduce(w, wmax, OUT * IN, MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(w, wmin, OUT * IN, MPI_FLOAT, MPI_MIN, MPI_COMM_WORLD);
    ok = s == KF_OK && after < before && memcmp(wmax, wmin, sizeof wmax) == 0;
    if (rank == 0) {
        printf("kronfac_dist %s, %d ranks, %s mode: loss %.4f -> %.4f: %s\n", kf_version(), world,
               mode == KF_DIST_BROADCAST_DIRECTIONS ? "directions" : "inverses", before, after,
               ok ? "ok" : kf_dist_last_error(dist));
    }
    kf_dist_destroy(dist);
    kf_optimizer_destroy(opt);
    return ok;
}

int main(int argc, char **argv)
{
    int rank = 0, world = 1, ok, all = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    ok = run(rank, world, KF_DIST_BROADCAST_INVERSES) && run(rank, world, KF_DIST_BROADCAST_DIRECTIONS);
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Finalize();
    return all ? 0 : 1;
}
