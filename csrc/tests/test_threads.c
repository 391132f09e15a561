/* The header's thread-safety paragraph, proven: separate handles used from several threads at
 * once. Each thread owns a context and an optimizer (a different algorithm per thread) and runs a
 * fixed workload: primitives, observations, steps, schedule changes, checkpoints to memory and
 * back, and the static queries (version, build info, status strings). Run alone, then all at once:
 * every thread must end with bit-identical results. Built with -fsanitize=thread (portable kernels,
 * so that OpenBLAS's own threads stay out of the picture) by scripts/test_reliability, where any
 * data race inside the library is reported by ThreadSanitizer and fails the run.
 * POSIX: pthreads. */
#define _POSIX_C_SOURCE 200809L

#include "kf_test.h"

#include <pthread.h>

#define THREADS 4
#define STEPS 12

typedef struct job {
    int id;
    const float *shared_x; /* read by every thread at once: inputs are const */
    uint64_t hash;
    int ok;
} job;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void *work(void *arg)
{
    job *j = (job *)arg;
    kf_algorithm algo = (kf_algorithm)(KF_ALGO_SGD + j->id % 6);
    kf_context *ctx = NULL;
    kf_optimizer *opt = NULL;
    kf_optimizer_params p;
    kf_layer_params lp;
    kf_rng rng;
    size_t idx, n = 6, in = 12, out = 5, size = 0, written = 0;
    float x[6 * 12], g[6 * 5], w[5 * 12], b[5], gw[5 * 12], gb[5];
    float a[13 * 13], inv[13 * 13], ev[13], q[13 * 13], c[5 * 13], d[5 * 13];
    kf_layer_tensors t = {w, 12, b, gw, 12, gb};
    unsigned char *ck;
    uint64_t h = 1469598103934665603ULL;
    int ok = 1;
    rng.s = 1000u + (uint64_t)j->id;
    ok &= kf_context_create(NULL, &ctx) == KF_OK;
    kf_optimizer_params_init(&p, algo);
    p.momentum = 0.5f;
    p.inverse_interval = 3;
    ok &= kf_optimizer_create(&p, NULL, &opt) == KF_OK;
    kf_layer_params_init(&lp, out, in);
    ok &= kf_optimizer_add_layer(opt, &lp, &idx) == KF_OK;
    if (!ok) {
        j->ok = 0;
        kf_context_destroy(ctx);
        kf_optimizer_destroy(opt);
        return NULL;
    }
    kf_rng_fill(&rng, w, sizeof w / sizeof w[0]);
    kf_rng_fill(&rng, b, 5);
    for (int s = 0; s < STEPS; s++) {
        /* The static queries, which must need no lock. */
        ok &= strlen(kf_build_info()) > 0 && strlen(kf_version()) > 0;
        ok &= strlen(kf_status_string((kf_status)(-(s % 24)))) > 0;
        ok &= kf_algorithm_name(algo) != NULL;
        /* Primitives on this thread's context, reading the shared input. */
        ok &= kf_activation_factor(ctx, n, 1, in, j->shared_x, in, 1, KF_SHARED_EXPAND, a, 13) == KF_OK;
        ok &= kf_damped_inverse(ctx, 13, a, 13, 0.1f, KF_PRECISION_DOUBLE, inv, 13, NULL) == KF_OK;
        ok &= kf_sym_eig(ctx, 13, a, 13, ev, q, 13) == KF_OK;
        kf_rng_fill(&rng, c, sizeof c / sizeof c[0]);
        ok &= kf_foof_direction(ctx, out, 13, c, 13, a, 13, 0.1f, d, 13) == KF_OK;
        ok &= kf_gemm(ctx, KF_NO_TRANS, KF_TRANS, out, out, 13, 1.0f, c, 13, d, 13, 0.0f, q, out) == KF_OK;
        h = fnv(h, inv, sizeof inv);
        h = fnv(h, ev, sizeof ev);
        h = fnv(h, d, sizeof d);
        /* The optimizer. */
        kf_rng_fill(&rng, x, sizeof x / sizeof x[0]);
        kf_rng_fill(&rng, g, sizeof g / sizeof g[0]);
        kf_rng_fill(&rng, gw, sizeof gw / sizeof gw[0]);
        kf_rng_fill(&rng, gb, 5);
        ok &= kf_optimizer_observe_activations(opt, 0, n, x, in) == KF_OK;
        ok &= kf_optimizer_observe_gradients(opt, 0, n, g, out, (float)n) == KF_OK;
        ok &= kf_optimizer_step(opt, &t, 1) == KF_OK;
        if (s == STEPS / 2) {
            ok &= kf_optimizer_set_learning_rate(opt, p.learning_rate * 0.5f) == KF_OK;
            ok &= kf_optimizer_set_damping(opt, algo == KF_ALGO_SGD || algo == KF_ALGO_ADAM
                                                    ? 0.0f : 0.2f) == KF_OK;
        }
        /* A checkpoint round trip every few steps. */
        if (s % 4 == 3) {
            ok &= kf_optimizer_checkpoint_size(opt, &size) == KF_OK;
            ck = (unsigned char *)kf_test_xmalloc(size);
            ok &= kf_optimizer_save(opt, ck, size, &written) == KF_OK;
            ok &= kf_optimizer_restore(opt, ck, written) == KF_OK;
            h = fnv(h, ck, written);
            free(ck);
        }
    }
    h = fnv(h, w, sizeof w);
    h = fnv(h, b, sizeof b);
    j->hash = h;
    j->ok = ok;
    kf_context_destroy(ctx);
    kf_optimizer_destroy(opt);
    return NULL;
}

int main(void)
{
    job alone[THREADS], together[THREADS], first[THREADS];
    pthread_t th[THREADS];
    float shared_x[6 * 12];
    kf_rng rng = {77};
    int rounds = 3;
    kf_rng_fill(&rng, shared_x, sizeof shared_x / sizeof shared_x[0]);
    /* All at once first (so that nothing the library might set up lazily was set up by this
     * thread beforehand), then one at a time for the reference results, then all at once again. */
    for (int r = 0; r <= rounds; r++) {
        if (r == 1) {
            for (int i = 0; i < THREADS; i++) {
                alone[i].id = i;
                alone[i].shared_x = shared_x;
                work(&alone[i]);
                CHECK(alone[i].ok);
            }
            for (int i = 0; i < THREADS; i++) {
                CHECK(first[i].ok);
                CHECK(first[i].hash == alone[i].hash);
            }
        }
        int started = 0;
        for (int i = 0; i < THREADS; i++) {
            together[i].id = i;
            together[i].shared_x = shared_x;
            together[i].ok = 0;
            together[i].hash = 0;
            if (pthread_create(&th[i], NULL, work, &together[i]) == 0) {
                started++;
            }
        }
        CHECK(started == THREADS);
        for (int i = 0; i < started; i++) {
            pthread_join(th[i], NULL);
        }
        if (r == 0) {
            memcpy(first, together, sizeof first);
            continue;
        }
        for (int i = 0; i < started; i++) {
            CHECK(together[i].ok);
            CHECK(together[i].hash == alone[i].hash);
        }
    }
    printf("test_threads: %d threads x %d rounds, each with its own context and optimizer (%s)\n",
           THREADS, rounds, kf_has_blas() ? "openblas" : "portable");
    return kf_test_finish("test_threads");
}
