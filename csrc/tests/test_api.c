/* Status strings, version, build info, the context handle and its allocator hooks. */
#include "kf_test.h"

typedef struct counter {
    long allocs, frees;
    size_t live;
    long fail_after; /* allocations allowed before failing; < 0 = never fail */
} counter;

static void *count_alloc(size_t size, void *ctx)
{
    counter *c = (counter *)ctx;
    if (c->fail_after >= 0 && c->allocs >= c->fail_after) {
        return NULL;
    }
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

static void test_strings(void)
{
    static const kf_status all[] = {KF_OK, KF_ERR_NULL_POINTER, KF_ERR_INVALID_ARGUMENT, KF_ERR_SHAPE,
                                    KF_ERR_OUT_OF_MEMORY, KF_ERR_NON_FINITE,
                                    KF_ERR_NOT_POSITIVE_DEFINITE, KF_ERR_NO_CONVERGENCE,
                                    KF_ERR_STATE, KF_ERR_FORMAT, KF_ERR_IO, KF_ERR_UNSUPPORTED};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        const char *s = kf_status_string(all[i]);
        CHECK(s != NULL && strncmp(s, "KF_", 3) == 0);
        for (size_t j = 0; j < i; j++) {
            CHECK(strcmp(s, kf_status_string(all[j])) != 0);
        }
    }
    CHECK(strstr(kf_status_string((kf_status)-999), "UNKNOWN") != NULL);
    /* The ABI values are fixed forever. */
    CHECK(KF_OK == 0 && KF_ERR_NULL_POINTER == -1 && KF_ERR_SHAPE == -3 && KF_ERR_NON_FINITE == -10);
    {
        char want[32];
        snprintf(want, sizeof want, "%d.%d.%d", kf_version_major(), kf_version_minor(), kf_version_patch());
        CHECK(strcmp(kf_version(), want) == 0);
        CHECK(kf_version_major() == KF_VERSION_MAJOR && kf_version_minor() == KF_VERSION_MINOR);
    }
    CHECK(strstr(kf_build_info(), kf_version()) != NULL);
#if defined(KRONFAC_HAVE_BLAS)
    CHECK(kf_has_blas() == 1);
    CHECK(strstr(kf_build_info(), "openblas") != NULL);
    CHECK_STATUS(kf_blas_set_threads(1), KF_OK);
#else
    CHECK(kf_has_blas() == 0);
    CHECK(strstr(kf_build_info(), "portable") != NULL);
    CHECK_STATUS(kf_blas_set_threads(1), KF_ERR_UNSUPPORTED);
#endif
    CHECK_STATUS(kf_blas_set_threads(0), KF_ERR_INVALID_ARGUMENT);
}

static void test_context(void)
{
    counter c = {0, 0, 0, -1};
    kf_allocator al = {count_alloc, count_free, &c};
    kf_allocator half = {count_alloc, NULL, &c};
    kf_context *ctx = NULL;
    size_t bytes = 0;
    CHECK_STATUS(kf_context_create(NULL, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_context_create(&half, &ctx), KF_ERR_INVALID_ARGUMENT);
    CHECK(ctx == NULL);
    kf_context_destroy(NULL); /* accepted */
    CHECK(strlen(kf_context_last_error(NULL)) > 0);
    c.fail_after = 0;
    CHECK_STATUS(kf_context_create(&al, &ctx), KF_ERR_OUT_OF_MEMORY);
    CHECK(ctx == NULL);
    c.fail_after = -1;
    CHECK_STATUS(kf_context_create(&al, &ctx), KF_OK);
    CHECK(c.allocs == 1);
    CHECK(strcmp(kf_context_last_error(ctx), "") == 0);
    CHECK_STATUS(kf_context_memory_bytes(ctx, &bytes), KF_OK);
    CHECK(bytes == c.live);
    CHECK_STATUS(kf_context_memory_bytes(ctx, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_context_memory_bytes(NULL, &bytes), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_context_reserve(ctx, 0, 10), KF_ERR_SHAPE);
    CHECK_STATUS(kf_context_reserve(NULL, 10, 10), KF_ERR_NULL_POINTER);

    /* After reserving, every primitive on sizes within the reservation allocates nothing. */
    CHECK_STATUS(kf_context_reserve(ctx, 9, 40), KF_OK);
    {
        long before = c.allocs;
        kf_rng rng = {42};
        float x[40 * 8], gr[40 * 5], a[81], g[25], ainv[81], v[45], d[45], w[9], q[81], pi;
        kf_rng_fill(&rng, x, sizeof x / sizeof x[0]);
        kf_rng_fill(&rng, gr, sizeof gr / sizeof gr[0]);
        kf_rng_fill(&rng, v, 45);
        CHECK_STATUS(kf_activation_factor(ctx, 8, 5, 8, x, 8, 1, KF_SHARED_REDUCE, a, 9), KF_OK);
        CHECK_STATUS(kf_gradient_factor(ctx, 8, 5, 5, gr, 5, KF_SHARED_REDUCE, 1, 8.0f, g, 5), KF_OK);
        CHECK_STATUS(kf_damped_inverse(ctx, 9, a, 9, 0.1f, KF_PRECISION_FLOAT, ainv, 9, NULL), KF_OK);
        CHECK_STATUS(kf_sym_eig(ctx, 9, a, 9, w, q, 9), KF_OK);
        CHECK_STATUS(kf_pi(ctx, 9, a, 9, 5, g, 5, &pi), KF_OK);
        CHECK_STATUS(kf_foof_direction(ctx, 5, 9, v, 9, a, 9, 0.1f, d, 9), KF_OK);
        CHECK_STATUS(kf_kfac_direction(ctx, 5, 9, v, 9, a, 9, g, 5, 0.1f, d, 9, NULL), KF_OK);
        CHECK_STATUS(kf_kfac_exact_direction(ctx, 5, 9, v, 9, a, 9, g, 5, 0.1f, d, 9), KF_OK);
        CHECK_STATUS(kf_kronecker_apply(ctx, 5, 9, v, 9, g, 5, ainv, 9, d, 9), KF_OK);
        CHECK(c.allocs == before);
    }
    /* A failing allocator while growing the workspace: OOM, the output untouched. */
    {
        float f[4] = {2, 0, 0, 2}, inv[4] = {5, 5, 5, 5};
        float big[30 * 30];
        memset(big, 0, sizeof big);
        for (int i = 0; i < 30; i++) {
            big[i * 30 + i] = 1.0f;
        }
        c.fail_after = c.allocs;
        CHECK_STATUS(kf_damped_inverse(ctx, 2, f, 2, 0.0f, KF_PRECISION_DOUBLE, inv, 2, NULL), KF_OK);
        CHECK_STATUS(kf_sym_eig(ctx, 30, big, 30, big, big + 30, 30), KF_ERR_INVALID_ARGUMENT);
        {
            float w30[30], q30[900];
            memset(w30, 0, sizeof w30);
            CHECK_STATUS(kf_sym_eig(ctx, 30, big, 30, w30, q30, 30), KF_ERR_OUT_OF_MEMORY);
            CHECK(w30[0] == 0.0f);
            CHECK(strstr(kf_context_last_error(ctx), "kf_sym_eig") != NULL);
        }
        c.fail_after = -1;
    }
    kf_context_destroy(ctx);
    CHECK(c.live == 0);
    CHECK(c.allocs == c.frees);
}

int main(void)
{
    test_strings();
    test_context();
    return kf_test_finish("test_api");
}
