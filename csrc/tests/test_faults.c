/* Fault injection: an allocator that fails the k-th allocation, for every k through creation,
 * registration, observations, steps and checkpoints. Each call either succeeds or returns
 * KF_ERR_OUT_OF_MEMORY, the handle stays usable, and destroying it frees everything (the byte
 * counter returns to zero; the sanitizer build adds LeakSanitizer on top). */
#include "kf_test.h"

typedef struct faulty {
    long calls;     /* allocations attempted */
    long fail_at;   /* the attempt that fails (0-based); < 0: none */
    long failures;  /* failures injected */
    long live_blocks;
    size_t live_bytes;
} faulty;

static void *f_alloc(size_t size, void *ctx)
{
    faulty *f = (faulty *)ctx;
    void *p;
    if (f->calls++ == f->fail_at) {
        f->failures++;
        return NULL;
    }
    p = malloc(size);
    if (p) {
        f->live_blocks++;
        f->live_bytes += size;
    }
    return p;
}

static void f_free(void *p, size_t size, void *ctx)
{
    faulty *f = (faulty *)ctx;
    f->live_blocks--;
    f->live_bytes -= size;
    free(p);
}

/* One scenario under allocator f; returns 1 if every call returned OK or OOM as allowed. */
static int scenario(faulty *f)
{
    kf_allocator al = {f_alloc, f_free, f};
    kf_optimizer_params p;
    kf_optimizer *opt = NULL, *copy = NULL;
    kf_context *ctx = NULL;
    kf_rng rng = {11};
    float x[6 * 2 * 5], g[6 * 2 * 4], w[4 * 5], b[4], gw[4 * 5], gb[4], a[36], inv[36];
    kf_layer_tensors t = {w, 5, b, gw, 5, gb};
    size_t idx, size = 0, written = 0;
    unsigned char *buf = NULL;
    kf_status s;
    int ok = 1;
#define ALLOWED(expr) (s = (expr), (s == KF_OK || s == KF_ERR_OUT_OF_MEMORY) ? 1 : (fprintf(stderr, "line %d: %s\n", __LINE__, kf_status_string(s)), 0))
    kf_rng_fill(&rng, x, sizeof x / sizeof x[0]);
    kf_rng_fill(&rng, g, sizeof g / sizeof g[0]);
    kf_rng_fill(&rng, w, 20);
    kf_rng_fill(&rng, b, 4);
    kf_rng_fill(&rng, gw, 20);
    kf_rng_fill(&rng, gb, 4);
    /* The context and primitives that grow its workspace. */
    ok &= ALLOWED(kf_context_create(&al, &ctx));
    if (s == KF_OK) {
        ok &= ALLOWED(kf_activation_factor(ctx, 6, 2, 5, x, 5, 1, KF_SHARED_REDUCE, a, 6));
        ok &= ALLOWED(kf_damped_inverse(ctx, 6, a, 6, 0.1f, KF_PRECISION_DOUBLE, inv, 6, NULL));
        ok &= ALLOWED(kf_kfac_exact_direction(ctx, 4, 6, x, 6, a, 6, a, 6, 0.1f, g, 6));
        kf_context_destroy(ctx);
    }
    /* An optimizer with one layer of each kind of state. */
    kf_optimizer_params_init(&p, KF_ALGO_EKFAC);
    ok &= ALLOWED(kf_optimizer_create(&p, &al, &opt));
    if (s != KF_OK) {
        return ok;
    }
    for (int l = 0; l < 3; l++) {
        kf_layer_params lp;
        kf_layer_params_init(&lp, 4, 5);
        lp.shared = 2;
        lp.shared_mode = l == 1 ? KF_SHARED_REDUCE : KF_SHARED_EXPAND;
        lp.algorithm = l == 2 ? KF_ALGO_ADAM : KF_ALGO_DEFAULT;
        ok &= ALLOWED(kf_optimizer_add_layer(opt, &lp, &idx));
    }
    {
        size_t n = 0;
        kf_optimizer_layer_count(opt, &n);
        if (n == 3) {
            kf_layer_tensors ts[3] = {t, t, t};
            for (int step = 0; step < 2; step++) {
                for (size_t l = 0; l < 3; l++) {
                    ok &= ALLOWED(kf_optimizer_observe_activations(opt, l, 6, x, 5));
                    /* EKFAC refuses gradients whose activations were not observed (OOM). */
                    s = kf_optimizer_observe_gradients(opt, l, 6, g, 4, 6.0f);
                    ok &= s == KF_OK || s == KF_ERR_OUT_OF_MEMORY || s == KF_ERR_STATE;
                }
                s = kf_optimizer_step(opt, ts, 3);
                /* A layer whose observation failed for lack of memory has no statistics. */
                ok &= s == KF_OK || s == KF_ERR_STATE;
            }
            ok &= ALLOWED(kf_optimizer_save_file(opt, "test_faults.kfck"));
            if (kf_optimizer_checkpoint_size(opt, &size) == KF_OK && (buf = (unsigned char *)malloc(size))) {
                ok &= kf_optimizer_save(opt, buf, size, &written) == KF_OK;
                ok &= ALLOWED(kf_optimizer_create_from_checkpoint(buf, size, &al, &copy));
                kf_optimizer_destroy(copy);
                copy = NULL;
                /* The file is missing when saving it ran out of memory. */
                s = kf_optimizer_create_from_file("test_faults.kfck", &al, &copy);
                ok &= s == KF_OK || s == KF_ERR_OUT_OF_MEMORY || s == KF_ERR_IO;
                kf_optimizer_destroy(copy);
                free(buf);
            }
            remove("test_faults.kfck");
        }
    }
    kf_optimizer_destroy(opt);
#undef ALLOWED
    return ok;
}

int main(void)
{
    faulty clean = {0, -1, 0, 0, 0};
    long total, injected = 0;
    int all_ok = 1, all_freed = 1;
    CHECK(scenario(&clean));
    CHECK(clean.live_blocks == 0 && clean.live_bytes == 0);
    total = clean.calls;
    CHECK(total > 10);
    for (long k = 0; k < total; k++) {
        faulty f = {0, k, 0, 0, 0};
        all_ok &= scenario(&f);
        all_freed &= f.live_blocks == 0 && f.live_bytes == 0;
        injected += f.failures;
        if (!(f.live_blocks == 0 && f.live_bytes == 0)) {
            fprintf(stderr, "failing allocation %ld leaked %ld blocks\n", k, f.live_blocks);
        }
    }
    CHECK(all_ok);
    CHECK(all_freed);
    CHECK(injected == total);
    printf("test_faults: %ld allocation sites, %ld faults injected\n", total, injected);
    return kf_test_finish("test_faults");
}
