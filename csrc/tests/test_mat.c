/* Tests of the dense kernels (kf_gemm, kf_syrk, kf_scale, kf_axpby, kf_trace and the raw
 * kf__gemm / kf__dgemm) against naive double-precision loops, and of every error path. In the
 * portable build, every kernel path this CPU runs (generic C, AVX2/FMA, AVX-512, NEON) is tested
 * on its own through the kf__gemm_on / kf__syrk_on hooks. */
#include "kf_test.h"
#include "kf_mat.h"

#include <ctype.h>
#include <float.h>

/* ---- helpers ---------------------------------------------------------------------------------- */

/* Element (i, j) of op(X) for X stored row-major with leading dimension ld. */
static double op_at(const float *x, size_t ld, int trans, size_t i, size_t j)
{
    return trans ? (double)x[j * ld + i] : (double)x[i * ld + j];
}

/* Compares got (rows x cols, ldg) with want, each entry within `rel` times its magnitude bound
 * mag (sum of |terms|) plus a tiny absolute floor. Reports the worst entry. */
static int close_mag(const char *what, size_t rows, size_t cols, const float *got, size_t ldg,
                     const double *want, const double *mag, double rel)
{
    double worst = -1.0;
    size_t wi = 0, wj = 0;
    int ok = 1;
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            double g = got[i * ldg + j], w = want[i * cols + j];
            double tol = rel * mag[i * cols + j] + 1e-30;
            double ratio = fabs(g - w) / tol;
            if (!(ratio <= 1.0)) {
                ok = 0;
                ratio = isnan(ratio) ? HUGE_VAL : ratio;
            }
            if (ratio > worst) {
                worst = ratio;
                wi = i;
                wj = j;
            }
        }
    }
    CHECK(ok);
    if (!ok) {
        fprintf(stderr, "%s: worst at (%zu,%zu): got %.9g want %.9g (mag %.3g)\n", what, wi, wj,
                (double)got[wi * ldg + wj], want[wi * cols + wj], mag[wi * cols + wj]);
    }
    return ok;
}

/* Float accumulation of k products: the classic bound is about k * eps * sum|terms|; blocked
 * sums do much better, but the bound keeps the test free of false alarms while a wrong or missing
 * term (about 1/k of the magnitude) is still caught. */
static double gemm_rel(size_t k)
{
    return 2.0 * (double)(k + 4) * FLT_EPSILON;
}

/* 1 if the padding columns [cols, ld) of every row are bit-for-bit those of the copy. */
static int padding_unchanged(size_t rows, size_t cols, size_t ld, const float *x,
                             const float *copy)
{
    for (size_t i = 0; i < rows; i++) {
        if (ld > cols &&
            memcmp(x + i * ld + cols, copy + i * ld + cols, (ld - cols) * sizeof(float)) != 0) {
            return 0;
        }
    }
    return 1;
}

static int all_finite(size_t rows, size_t cols, const float *x, size_t ld)
{
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            if (!isfinite(x[i * ld + j])) {
                return 0;
            }
        }
    }
    return 1;
}

/* A distinctive bit pattern (not a value any kernel would produce) for unchanged-buffer checks. */
static void fill_sentinel(float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t bits = 0x7fa5a5a5u ^ (uint32_t)(i * 2654435761u);
        bits = (bits & 0x007fffffu) | 0x3f800000u; /* a float in [1, 2) */
        memcpy(&x[i], &bits, sizeof bits);
    }
}

/* 1 if `word` occurs in msg delimited by non-identifier characters. */
static int mentions(const char *msg, const char *word)
{
    size_t len = strlen(word);
    for (const char *p = strstr(msg, word); p; p = strstr(p + 1, word)) {
        int left_ok = p == msg || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int right_ok = !(isalnum((unsigned char)p[len]) || p[len] == '_');
        if (left_ok && right_ok) {
            return 1;
        }
    }
    return 0;
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* Hook for the per-path tests: path < 0 calls the public kf_gemm / kf_syrk, path >= 0 the raw
 * kernel forced onto that path (portable build only). */
#if !defined(KRONFAC_HAVE_BLAS)
#define KF_HAVE_PATHS 1
#endif

static void run_gemm_case(kf_context *ctx, kf_rng *rng, int path, int ta, int tb, size_t m,
                          size_t n, size_t k, float alpha, float beta, size_t pad)
{
    /* Stored shapes with padding columns. */
    size_t a_rows = ta ? k : m, a_cols = ta ? m : k;
    size_t b_rows = tb ? n : k, b_cols = tb ? k : n;
    size_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
    if (lda == 0) {
        lda = 1;
    }
    if (ldb == 0) {
        ldb = 1;
    }
    float *a = kf_test_xmalloc((a_rows ? a_rows : 1) * lda * sizeof(float));
    float *b = kf_test_xmalloc((b_rows ? b_rows : 1) * ldb * sizeof(float));
    float *c = kf_test_xmalloc(m * ldc * sizeof(float));
    float *c0 = kf_test_xmalloc(m * ldc * sizeof(float));
    double *want = kf_test_xmalloc(m * n * sizeof(double));
    double *mag = kf_test_xmalloc(m * n * sizeof(double));
    char what[160];

    kf_rng_fill(rng, a, a_rows * lda);
    kf_rng_fill(rng, b, b_rows * ldb);
    if (beta == 0.0f) {
        /* beta = 0 must not read C: NaN everywhere, padding included. */
        for (size_t i = 0; i < m * ldc; i++) {
            c[i] = NAN;
        }
    } else {
        kf_rng_fill(rng, c, m * ldc);
    }
    memcpy(c0, c, m * ldc * sizeof(float));

    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0, sa = 0.0;
            for (size_t p = 0; p < k; p++) {
                double x = op_at(a, lda, ta, i, p), y = op_at(b, ldb, tb, p, j);
                s += x * y;
                sa += fabs(x * y);
            }
            double cv = beta == 0.0f ? 0.0 : (double)beta * c0[i * ldc + j];
            want[i * n + j] = (double)alpha * s + cv;
            mag[i * n + j] = fabs((double)alpha) * sa + fabs(cv);
        }
    }

    snprintf(what, sizeof what,
             "kf_gemm path=%d ta=%d tb=%d m=%zu n=%zu k=%zu alpha=%g beta=%g pad=%zu", path, ta, tb,
             m, n, k, (double)alpha, (double)beta, pad);
    if (path < 0) {
        CHECK_STATUS(kf_gemm(ctx, ta ? KF_TRANS : KF_NO_TRANS, tb ? KF_TRANS : KF_NO_TRANS, m, n,
                             k, alpha, a, lda, b, ldb, beta, c, ldc),
                     KF_OK);
        CHECK(kf_context_last_error(ctx)[0] == '\0');
    } else {
#if defined(KF_HAVE_PATHS)
        kf__gemm_on(path, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
    }
    close_mag(what, m, n, c, ldc, want, mag, gemm_rel(k));
    if (beta == 0.0f) {
        CHECK(all_finite(m, n, c, ldc));
    }
    if (!padding_unchanged(m, n, ldc, c, c0)) {
        fprintf(stderr, "%s: padding of C was written\n", what);
        CHECK(0);
    }

    free(a);
    free(b);
    free(c);
    free(c0);
    free(want);
    free(mag);
}

static void test_gemm(kf_context *ctx, kf_rng *rng)
{
    /* Sizes around the register tiles (4..8 x 8..32) and cache blocks (k 128/256, n 64). */
    static const size_t shapes[][3] = {
        {1, 1, 1},   {3, 17, 65},  {17, 3, 130},  {65, 130, 17}, {130, 65, 3},
        {1, 130, 257}, {130, 1, 256}, {17, 65, 1}, {7, 33, 300},  {65, 17, 512},
    };
    static const float ab[][2] = {{1.0f, 0.0f}, {-0.5f, 2.0f}, {1.5f, 1.0f}, {0.75f, -0.25f}};
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                for (size_t v = 0; v < sizeof ab / sizeof ab[0]; v++) {
                    size_t pad = (s + v) % 3 == 0 ? 0 : (s + v) % 3 == 1 ? 3 : 17;
                    run_gemm_case(ctx, rng, -1, ta, tb, shapes[s][0], shapes[s][1],
                                  shapes[s][2], ab[v][0], ab[v][1], pad);
                }
            }
            /* A larger product crossing every block boundary. */
            run_gemm_case(ctx, rng, -1, ta, tb, 300, 257, 190, 0.5f, ta == tb ? 0.0f : 1.0f, 5);
            /* k = 0: C = beta C, and beta = 0 clears a NaN-filled C. */
            run_gemm_case(ctx, rng, -1, ta, tb, 5, 9, 0, 1.0f, 0.0f, 2);
            run_gemm_case(ctx, rng, -1, ta, tb, 9, 5, 0, 2.0f, -3.0f, 0);
        }
    }
}

/* The raw double kernel used by the linear algebra. */
static void test_dgemm(kf_rng *rng)
{
    static const size_t shapes[][3] = {
        {1, 1, 1}, {3, 17, 65}, {33, 9, 129}, {65, 130, 17}, {131, 67, 140}, {6, 8, 0},
    };
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                size_t a_rows = ta ? k : m, a_cols = ta ? m : k;
                size_t b_rows = tb ? n : k, b_cols = tb ? k : n;
                size_t lda = a_cols + 2, ldb = b_cols + 1, ldc = n + 3;
                double *a = kf_test_xmalloc((a_rows + 1) * lda * sizeof(double));
                double *b = kf_test_xmalloc((b_rows + 1) * ldb * sizeof(double));
                double *c = kf_test_xmalloc(m * ldc * sizeof(double));
                double *c0 = kf_test_xmalloc(m * ldc * sizeof(double));
                double alpha = 0.625, beta = (s % 2) ? 0.0 : -1.5;
                int ok = 1;
                for (size_t i = 0; i < a_rows * lda; i++) {
                    a[i] = kf_rng_uniform(rng) + kf_rng_uniform(rng) * 1e-8;
                }
                for (size_t i = 0; i < b_rows * ldb; i++) {
                    b[i] = kf_rng_uniform(rng) + kf_rng_uniform(rng) * 1e-8;
                }
                for (size_t i = 0; i < m * ldc; i++) {
                    c[i] = beta == 0.0 ? NAN : kf_rng_uniform(rng);
                }
                memcpy(c0, c, m * ldc * sizeof(double));
                kf__dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
                for (size_t i = 0; i < m; i++) {
                    for (size_t j = 0; j < n; j++) {
                        double sum = 0.0, sa = 0.0;
                        for (size_t p = 0; p < k; p++) {
                            double x = ta ? a[p * lda + i] : a[i * lda + p];
                            double y = tb ? b[j * ldb + p] : b[p * ldb + j];
                            sum += x * y;
                            sa += fabs(x * y);
                        }
                        double cv = beta == 0.0 ? 0.0 : beta * c0[i * ldc + j];
                        double want = alpha * sum + cv;
                        double tol = 2.0 * (double)(k + 4) * DBL_EPSILON * (fabs(alpha) * sa + fabs(cv));
                        if (!(fabs(c[i * ldc + j] - want) <= tol + 1e-300)) {
                            ok = 0;
                        }
                    }
                    for (size_t j = n; j < ldc; j++) {
                        if (memcmp(&c[i * ldc + j], &c0[i * ldc + j], sizeof(double)) != 0) {
                            ok = 0;
                        }
                    }
                }
                if (!ok) {
                    fprintf(stderr, "kf__dgemm ta=%d tb=%d m=%zu n=%zu k=%zu mismatch\n", ta, tb,
                            m, n, k);
                }
                CHECK(ok);
                free(a);
                free(b);
                free(c);
                free(c0);
            }
        }
    }
}

/* ---- syrk ------------------------------------------------------------------------------------- */

static void run_syrk_case(kf_context *ctx, kf_rng *rng, int path, size_t k, size_t n,
                          float alpha, float beta, size_t pad)
{
    size_t ldx = n + pad, ldc = n + (pad ? pad + 1 : 0);
    float *x = kf_test_xmalloc((k ? k : 1) * ldx * sizeof(float));
    float *c = kf_test_xmalloc(n * ldc * sizeof(float));
    float *c0 = kf_test_xmalloc(n * ldc * sizeof(float));
    double *want = kf_test_xmalloc(n * n * sizeof(double));
    double *mag = kf_test_xmalloc(n * n * sizeof(double));
    char what[160];
    int sym = 1;

    kf_rng_fill(rng, x, k * ldx);
    kf_rng_fill(rng, c, n * ldc);
    if (beta == 0.0f) {
        for (size_t i = 0; i < n * ldc; i++) {
            c[i] = NAN;
        }
    } else {
        /* The documented use: C symmetric on entry. */
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < i; j++) {
                c[i * ldc + j] = c[j * ldc + i];
            }
        }
    }
    memcpy(c0, c, n * ldc * sizeof(float));

    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0, sa = 0.0;
            for (size_t p = 0; p < k; p++) {
                double t = (double)x[p * ldx + i] * x[p * ldx + j];
                s += t;
                sa += fabs(t);
            }
            double cv = beta == 0.0f ? 0.0 : (double)beta * c0[i * ldc + j];
            want[i * n + j] = (double)alpha * s + cv;
            mag[i * n + j] = fabs((double)alpha) * sa + fabs(cv);
        }
    }

    snprintf(what, sizeof what, "kf_syrk path=%d k=%zu n=%zu alpha=%g beta=%g pad=%zu", path, k,
             n, (double)alpha, (double)beta, pad);
    if (path < 0) {
        CHECK_STATUS(kf_syrk(ctx, k, n, alpha, x, ldx, beta, c, ldc), KF_OK);
        CHECK(kf_context_last_error(ctx)[0] == '\0');
    } else {
#if defined(KF_HAVE_PATHS)
        kf__syrk_on(path, k, n, alpha, x, ldx, beta, c, ldc);
#endif
    }
    close_mag(what, n, n, c, ldc, want, mag, gemm_rel(k));
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (memcmp(&c[i * ldc + j], &c[j * ldc + i], sizeof(float)) != 0) {
                sym = 0;
            }
        }
    }
    if (!sym) {
        fprintf(stderr, "%s: result is not exactly symmetric\n", what);
    }
    CHECK(sym);
    CHECK(all_finite(n, n, c, ldc));
    if (!padding_unchanged(n, n, ldc, c, c0)) {
        fprintf(stderr, "%s: padding of C was written\n", what);
        CHECK(0);
    }

    free(x);
    free(c);
    free(c0);
    free(want);
    free(mag);
}

static void test_syrk(kf_context *ctx, kf_rng *rng)
{
    static const size_t ns[] = {1, 3, 17, 65, 130, 201};
    static const size_t ks[] = {0, 1, 5, 64, 257};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.25f, 1.0f}, {-2.0f, 0.5f}};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
            for (size_t v = 0; v < sizeof ab / sizeof ab[0]; v++) {
                run_syrk_case(ctx, rng, -1, ks[j], ns[i], ab[v][0], ab[v][1], (i + j + v) % 3 * 4);
            }
        }
    }
    run_syrk_case(ctx, rng, -1, 300, 257, 1.0f / 300.0f, 0.0f, 3);
    run_syrk_case(ctx, rng, -1, 190, 300, 0.5f, 0.5f, 0);
}

/* ---- every kernel path ------------------------------------------------------------------------ */

#if defined(KF_HAVE_PATHS)
/* GEMM and SYRK on each path this CPU runs, whichever the dispatcher would pick. The shapes sit
 * around every path's register tile (generic 8 x 8 or 8 x 16, AVX2 6 x 16, AVX-512 12 x 32, NEON
 * 8 x 12) and cache blocks (kc 128, nc 240 / 256): exact multiples, one less, one more, several
 * blocks. */
static void test_paths(kf_context *ctx, kf_rng *rng)
{
    static const size_t shapes[][3] = {
        {1, 1, 1},      {6, 16, 1},      {12, 32, 128},  {11, 31, 127},  {13, 33, 129},
        {14, 32, 256},  {8, 12, 7},      {29, 65, 300},  {43, 257, 37},  {100, 130, 64},
        {130, 260, 258}, {25, 513, 20},  {2, 300, 513},  {300, 2, 40},
    };
    static const float ab[][2] = {{1.0f, 0.0f}, {-0.5f, 2.0f}, {0.75f, -0.25f}, {1.5f, 1.0f}};
    static const size_t sn[] = {1, 13, 14, 15, 33, 129, 200};
    static const size_t sk[] = {0, 1, 7, 256, 300};
    int tested = 0;
    for (int path = 0; path < KF__PATHS; path++) {
        const char *name = kf__mat_path(path);
        if (!name) {
            continue; /* not compiled in, or this CPU lacks it */
        }
        CHECK(name[0] != '\0');
        tested++;
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                    size_t v = (s + (size_t)(2 * ta + tb)) % 4;
                    size_t pad = s % 3 == 0 ? 0 : s % 3 == 1 ? 3 : 17;
                    run_gemm_case(ctx, rng, path, ta, tb, shapes[s][0], shapes[s][1],
                                  shapes[s][2], ab[v][0], ab[v][1], pad);
                }
                run_gemm_case(ctx, rng, path, ta, tb, 7, 9, 0, 1.0f, 0.0f, 1);
                run_gemm_case(ctx, rng, path, ta, tb, 9, 7, 0, 2.0f, -3.0f, 0);
            }
        }
        for (size_t i = 0; i < sizeof sn / sizeof sn[0]; i++) {
            for (size_t j = 0; j < sizeof sk / sizeof sk[0]; j++) {
                size_t v = (i + j) % 4;
                run_syrk_case(ctx, rng, path, sk[j], sn[i], ab[v][0], ab[v][1], (i + j) % 3 * 4);
            }
        }
    }
    CHECK(tested >= 1 && kf__mat_path(KF__PATH_GENERIC) != NULL);
    fprintf(stderr, "test_mat: %d kernel path(s) tested:", tested);
    for (int path = 0; path < KF__PATHS; path++) {
        if (kf__mat_path(path)) {
            fprintf(stderr, " %s", kf__mat_path(path));
        }
    }
    fprintf(stderr, "; in use: %s\n", kf__mat_simd());
}

/* kf__mat_simd() names the path the dispatcher uses: the best one available, and kf__gemm's
 * result is bit for bit that of kf__gemm_on that path. */
static void test_dispatch(kf_rng *rng)
{
    static const int preference[] = {KF__PATH_AVX512, KF__PATH_AVX2, KF__PATH_NEON,
                                     KF__PATH_GENERIC};
    enum { M = 37, N = 45, K = 300 };
    int best = KF__PATH_GENERIC;
    float *a = kf_test_xmalloc(M * K * sizeof(float));
    float *b = kf_test_xmalloc(K * N * sizeof(float));
    float *c1 = kf_test_xmalloc(M * N * sizeof(float));
    float *c2 = kf_test_xmalloc(M * N * sizeof(float));
    for (size_t i = 0; i < sizeof preference / sizeof preference[0]; i++) {
        if (kf__mat_path(preference[i])) {
            best = preference[i];
            break;
        }
    }
    CHECK(strcmp(kf__mat_simd(), kf__mat_path(best)) == 0);
    kf_rng_fill(rng, a, M * K);
    kf_rng_fill(rng, b, K * N);
    kf__gemm(0, 0, M, N, K, 0.5f, a, K, b, N, 0.0f, c1, N);
    kf__gemm_on(best, 0, 0, M, N, K, 0.5f, a, K, b, N, 0.0f, c2, N);
    CHECK(memcmp(c1, c2, M * N * sizeof(float)) == 0);
    /* An unknown path falls back to the generic one. */
    CHECK(kf__mat_path(-1) == NULL && kf__mat_path(KF__PATHS) == NULL);
    kf__gemm_on(KF__PATHS, 0, 0, M, N, K, 0.5f, a, K, b, N, 0.0f, c1, N);
    kf__gemm_on(KF__PATH_GENERIC, 0, 0, M, N, K, 0.5f, a, K, b, N, 0.0f, c2, N);
    CHECK(memcmp(c1, c2, M * N * sizeof(float)) == 0);
    free(a);
    free(b);
    free(c1);
    free(c2);
}
#endif

/* ---- scale, axpby, trace ---------------------------------------------------------------------- */

static void test_scale_axpby_trace(kf_context *ctx, kf_rng *rng)
{
    static const size_t shapes[][2] = {{1, 1}, {3, 17}, {17, 3}, {65, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t rows = shapes[s][0], cols = shapes[s][1], ldx = cols + 2, ldy = cols + 5;
        float *x = kf_test_xmalloc(rows * ldx * sizeof(float));
        float *x0 = kf_test_xmalloc(rows * ldx * sizeof(float));
        float *y = kf_test_xmalloc(rows * ldy * sizeof(float));
        float *y0 = kf_test_xmalloc(rows * ldy * sizeof(float));
        int ok = 1;

        /* scale: one rounding per entry, so the result is exact in float. */
        kf_rng_fill(rng, x, rows * ldx);
        memcpy(x0, x, rows * ldx * sizeof(float));
        CHECK_STATUS(kf_scale(ctx, rows, cols, -1.75f, x, ldx), KF_OK);
        for (size_t i = 0; i < rows; i++) {
            for (size_t j = 0; j < cols; j++) {
                float w = x0[i * ldx + j] * -1.75f;
                ok &= memcmp(&w, &x[i * ldx + j], sizeof w) == 0;
            }
        }
        CHECK(ok);
        CHECK(padding_unchanged(rows, cols, ldx, x, x0));

        /* axpby with beta = 0 and NaN in Y: Y = alpha X exactly. */
        for (size_t i = 0; i < rows * ldy; i++) {
            y[i] = NAN;
        }
        memcpy(y0, y, rows * ldy * sizeof(float));
        CHECK_STATUS(kf_axpby(ctx, rows, cols, 0.5f, x, ldx, 0.0f, y, ldy), KF_OK);
        ok = 1;
        for (size_t i = 0; i < rows; i++) {
            for (size_t j = 0; j < cols; j++) {
                float w = 0.5f * x[i * ldx + j];
                ok &= memcmp(&w, &y[i * ldy + j], sizeof w) == 0;
            }
        }
        CHECK(ok);
        CHECK(padding_unchanged(rows, cols, ldy, y, y0));

        /* axpby with beta != 0: two roundings, compared in double. */
        kf_rng_fill(rng, y, rows * ldy);
        memcpy(y0, y, rows * ldy * sizeof(float));
        CHECK_STATUS(kf_axpby(ctx, rows, cols, 2.0f, x, ldx, -0.375f, y, ldy), KF_OK);
        ok = 1;
        for (size_t i = 0; i < rows; i++) {
            for (size_t j = 0; j < cols; j++) {
                double xv = x[i * ldx + j], yv = y0[i * ldy + j];
                double w = 2.0 * xv - 0.375 * yv;
                double tol = 3.0 * FLT_EPSILON * (fabs(2.0 * xv) + fabs(0.375 * yv));
                ok &= fabs(y[i * ldy + j] - w) <= tol;
            }
        }
        CHECK(ok);
        CHECK(padding_unchanged(rows, cols, ldy, y, y0));

        free(x);
        free(x0);
        free(y);
        free(y0);
    }

    /* trace in double: 1e8 plus a thousand ones is exact in double, not in float. */
    {
        size_t n = 1001, lda = n + 1;
        float *a = kf_test_xmalloc(n * lda * sizeof(float));
        double tr = -1.0, want = 0.0;
        kf_rng_fill(rng, a, n * lda);
        a[0] = 1e8f;
        for (size_t i = 1; i < n; i++) {
            a[i * lda + i] = 1.0f;
        }
        CHECK_STATUS(kf_trace(ctx, n, a, lda, &tr), KF_OK);
        CHECK(tr == 1e8 + 1000.0);
        for (size_t i = 0; i < n; i++) {
            a[i * lda + i] = kf_rng_uniform(rng);
            want += a[i * lda + i];
        }
        CHECK_STATUS(kf_trace(ctx, n, a, lda, &tr), KF_OK);
        CHECK(fabs(tr - want) <= 1e-12 * (double)n);
        CHECK_STATUS(kf_trace(ctx, 1, a, 1, &tr), KF_OK);
        CHECK(tr == (double)a[0]);
        free(a);
    }
}

/* ---- error paths ------------------------------------------------------------------------------ */

/* Checks one failing call: its status, a message that starts with the function's name and names
 * the argument, and an output buffer bit-for-bit unchanged. */
static void check_error(kf_context *ctx, kf_status got, kf_status want, const char *fn,
                        const char *arg, const float *out, const float *saved, size_t count,
                        int line)
{
    const char *msg = kf_context_last_error(ctx);
    int ok = got == want;
    if (arg) {
        ok &= msg[0] != '\0' && strncmp(msg, fn, strlen(fn)) == 0 && mentions(msg, arg);
    }
    if (out) {
        ok &= memcmp(out, saved, count * sizeof(float)) == 0;
    }
    if (!ok) {
        fprintf(stderr, "line %d: %s returned %s (want %s), message \"%s\" (want a mention of %s)\n",
                line, fn, kf_status_string(got), kf_status_string(want), msg, arg ? arg : "-");
    }
    CHECK(ok);
}

#define EXPECT_ERR(call, want, fn, arg, out, saved, count) \
    check_error(ctx, (call), (want), (fn), (arg), (out), (saved), (count), __LINE__)

static void test_errors(kf_context *ctx)
{
    enum { M = 4, N = 5, K = 3, LD = 8, BUF = 64 };
    float a[BUF], b[BUF], c[BUF], saved[BUF], xbuf[BUF];
    double tr = 123.0, tr_saved = 123.0;
    const float nan = NAN, inf = INFINITY;
    const size_t huge = SIZE_MAX / 2;

    for (int i = 0; i < BUF; i++) {
        a[i] = (float)i * 0.25f;
        b[i] = 1.0f - (float)i * 0.125f;
        xbuf[i] = (float)i;
    }
    fill_sentinel(c, BUF);
    memcpy(saved, c, sizeof c);

    /* kf_gemm: A 4 x 3 (lda 8), B 3 x 5 (ldb 8), C 4 x 5 (ldc 8). */
    CHECK_STATUS(kf_gemm(NULL, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, 0.0f, c, LD),
                 KF_ERR_NULL_POINTER);
    CHECK(memcmp(c, saved, sizeof c) == 0);
    EXPECT_ERR(kf_gemm(ctx, (kf_transpose)7, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, 0.0f, c, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "ta", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, (kf_transpose)-1, M, N, K, 1.0f, a, LD, b, LD, 0.0f, c, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "tb", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, NULL, LD, b, LD, 0.0f, c, LD),
               KF_ERR_NULL_POINTER, "kf_gemm", "a", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, NULL, LD, 0.0f, c, LD),
               KF_ERR_NULL_POINTER, "kf_gemm", "b", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, 0.0f, NULL, LD),
               KF_ERR_NULL_POINTER, "kf_gemm", "c", NULL, NULL, 0);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, 0, 1.0f, NULL, LD, b, LD, 0.0f, c, LD),
               KF_ERR_NULL_POINTER, "kf_gemm", "a", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, 0, N, K, 1.0f, a, LD, b, LD, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "m", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, 0, K, 1.0f, a, LD, b, LD, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "n", c, saved, BUF);
    /* lda: A stored m x k without transpose (needs >= k), k x m with (needs >= m). */
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, K - 1, b, LD, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "lda", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, M - 1, b, LD, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "lda", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, 0, 1.0f, a, 0, b, LD, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "lda", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, N - 1, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "ldb", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_TRANS, M, N, K, 1.0f, a, LD, b, K - 1, 0.0f, c, LD),
               KF_ERR_SHAPE, "kf_gemm", "ldb", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, 0.0f, c, N - 1),
               KF_ERR_SHAPE, "kf_gemm", "ldc", c, saved, BUF);
    /* Sizes whose extent cannot be addressed are shape errors, not overflows. */
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, huge, N, K, 1.0f, a, huge, b, LD, 0.0f, c,
                       LD),
               KF_ERR_SHAPE, "kf_gemm", "A", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, nan, a, LD, b, LD, 0.0f, c, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "alpha", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, -inf, a, LD, b, LD, 0.0f, c, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "alpha", c, saved, BUF);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, inf, c, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "beta", c, saved, BUF);
    /* C overlapping A or B: C's rows interleave with the input's here. */
    memcpy(saved, a, sizeof a);
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, 0.0f, a + 2, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "a", a, saved, BUF);
    memcpy(saved, b, sizeof b);
    EXPECT_ERR(kf_gemm(ctx, KF_TRANS, KF_TRANS, M, N, K, 1.0f, a, LD, b, LD, 1.0f, b + 20, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "b", b, saved, BUF);
    /* Only C's third row reaches into B (B = b + 30, 3 x 5; C = b, rows 16 apart). */
    EXPECT_ERR(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b + 30, LD, 1.0f, b,
                       2 * LD),
               KF_ERR_INVALID_ARGUMENT, "kf_gemm", "b", b, saved, BUF);
    /* A success clears the message. */
    CHECK_STATUS(kf_gemm(ctx, KF_NO_TRANS, KF_NO_TRANS, M, N, K, 1.0f, a, LD, b, LD, 0.0f, c, LD),
                 KF_OK);
    CHECK(kf_context_last_error(ctx)[0] == '\0');
    /* k = 0 with disjoint-but-adjacent storage is fine. */
    CHECK_STATUS(kf_gemm(ctx, KF_TRANS, KF_NO_TRANS, M, N, 0, 1.0f, a, M, b, N, 2.0f, c, LD),
                 KF_OK);

    /* kf_syrk: X 3 x 5 (ldx 8), C 5 x 5 (ldc 8). */
    fill_sentinel(c, BUF);
    memcpy(saved, c, sizeof c);
    CHECK_STATUS(kf_syrk(NULL, K, N, 1.0f, xbuf, LD, 0.0f, c, LD), KF_ERR_NULL_POINTER);
    CHECK(memcmp(c, saved, sizeof c) == 0);
    EXPECT_ERR(kf_syrk(ctx, K, N, 1.0f, NULL, LD, 0.0f, c, LD), KF_ERR_NULL_POINTER, "kf_syrk", "x",
               c, saved, BUF);
    EXPECT_ERR(kf_syrk(ctx, K, N, 1.0f, xbuf, LD, 0.0f, NULL, LD), KF_ERR_NULL_POINTER, "kf_syrk",
               "c", NULL, NULL, 0);
    EXPECT_ERR(kf_syrk(ctx, K, 0, 1.0f, xbuf, LD, 0.0f, c, LD), KF_ERR_SHAPE, "kf_syrk", "n", c,
               saved, BUF);
    EXPECT_ERR(kf_syrk(ctx, K, N, 1.0f, xbuf, N - 1, 0.0f, c, LD), KF_ERR_SHAPE, "kf_syrk", "ldx",
               c, saved, BUF);
    EXPECT_ERR(kf_syrk(ctx, 0, N, 1.0f, xbuf, N - 1, 0.0f, c, LD), KF_ERR_SHAPE, "kf_syrk", "ldx",
               c, saved, BUF);
    EXPECT_ERR(kf_syrk(ctx, K, N, 1.0f, xbuf, LD, 0.0f, c, N - 1), KF_ERR_SHAPE, "kf_syrk", "ldc",
               c, saved, BUF);
    EXPECT_ERR(kf_syrk(ctx, K, N, inf, xbuf, LD, 0.0f, c, LD), KF_ERR_INVALID_ARGUMENT, "kf_syrk",
               "alpha", c, saved, BUF);
    EXPECT_ERR(kf_syrk(ctx, K, N, 1.0f, xbuf, LD, nan, c, LD), KF_ERR_INVALID_ARGUMENT, "kf_syrk",
               "beta", c, saved, BUF);
    memcpy(saved, xbuf, sizeof xbuf);
    EXPECT_ERR(kf_syrk(ctx, K, N, 1.0f, xbuf, LD, 0.0f, xbuf + 2 * LD + 1, LD),
               KF_ERR_INVALID_ARGUMENT, "kf_syrk", "x", xbuf, saved, BUF);
    CHECK_STATUS(kf_syrk(ctx, K, N, 1.0f, xbuf, LD, 0.0f, c, LD), KF_OK);
    CHECK(kf_context_last_error(ctx)[0] == '\0');

    /* kf_scale: X 4 x 5 (ldx 8). */
    fill_sentinel(c, BUF);
    memcpy(saved, c, sizeof c);
    CHECK_STATUS(kf_scale(NULL, M, N, 2.0f, c, LD), KF_ERR_NULL_POINTER);
    CHECK(memcmp(c, saved, sizeof c) == 0);
    EXPECT_ERR(kf_scale(ctx, M, N, 2.0f, NULL, LD), KF_ERR_NULL_POINTER, "kf_scale", "x", NULL,
               NULL, 0);
    EXPECT_ERR(kf_scale(ctx, 0, N, 2.0f, c, LD), KF_ERR_SHAPE, "kf_scale", "rows", c, saved, BUF);
    EXPECT_ERR(kf_scale(ctx, M, 0, 2.0f, c, LD), KF_ERR_SHAPE, "kf_scale", "cols", c, saved, BUF);
    EXPECT_ERR(kf_scale(ctx, M, N, 2.0f, c, N - 1), KF_ERR_SHAPE, "kf_scale", "ldx", c, saved, BUF);
    EXPECT_ERR(kf_scale(ctx, huge, N, 2.0f, c, huge), KF_ERR_SHAPE, "kf_scale", "X", c, saved, BUF);
    EXPECT_ERR(kf_scale(ctx, M, N, nan, c, LD), KF_ERR_INVALID_ARGUMENT, "kf_scale", "alpha", c,
               saved, BUF);
    EXPECT_ERR(kf_scale(ctx, M, N, inf, c, LD), KF_ERR_INVALID_ARGUMENT, "kf_scale", "alpha", c,
               saved, BUF);

    /* kf_axpby: X, Y 4 x 5 (ld 8). */
    CHECK_STATUS(kf_axpby(NULL, M, N, 1.0f, a, LD, 1.0f, c, LD), KF_ERR_NULL_POINTER);
    CHECK(memcmp(c, saved, sizeof c) == 0);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, NULL, LD, 1.0f, c, LD), KF_ERR_NULL_POINTER, "kf_axpby",
               "x", c, saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, a, LD, 1.0f, NULL, LD), KF_ERR_NULL_POINTER, "kf_axpby",
               "y", NULL, NULL, 0);
    EXPECT_ERR(kf_axpby(ctx, 0, N, 1.0f, a, LD, 1.0f, c, LD), KF_ERR_SHAPE, "kf_axpby", "rows", c,
               saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, 0, 1.0f, a, LD, 1.0f, c, LD), KF_ERR_SHAPE, "kf_axpby", "cols", c,
               saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, a, N - 1, 1.0f, c, LD), KF_ERR_SHAPE, "kf_axpby", "ldx", c,
               saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, a, LD, 1.0f, c, N - 1), KF_ERR_SHAPE, "kf_axpby", "ldy", c,
               saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, N, nan, a, LD, 1.0f, c, LD), KF_ERR_INVALID_ARGUMENT, "kf_axpby",
               "alpha", c, saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, a, LD, -inf, c, LD), KF_ERR_INVALID_ARGUMENT, "kf_axpby",
               "beta", c, saved, BUF);
    memcpy(saved, xbuf, sizeof xbuf);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, xbuf, LD, 1.0f, xbuf, LD), KF_ERR_INVALID_ARGUMENT,
               "kf_axpby", "x", xbuf, saved, BUF);
    EXPECT_ERR(kf_axpby(ctx, M, N, 1.0f, xbuf + 10, LD, 0.0f, xbuf, LD), KF_ERR_INVALID_ARGUMENT,
               "kf_axpby", "y", xbuf, saved, BUF);
    CHECK_STATUS(kf_axpby(ctx, M, N, 1.0f, a, LD, 1.0f, c, LD), KF_OK);
    CHECK(kf_context_last_error(ctx)[0] == '\0');

    /* kf_trace: A 5 x 5 (lda 8). */
    CHECK_STATUS(kf_trace(NULL, N, a, LD, &tr), KF_ERR_NULL_POINTER);
    CHECK(tr == tr_saved);
    EXPECT_ERR(kf_trace(ctx, N, NULL, LD, &tr), KF_ERR_NULL_POINTER, "kf_trace", "a", NULL, NULL, 0);
    CHECK(tr == tr_saved);
    EXPECT_ERR(kf_trace(ctx, N, a, LD, NULL), KF_ERR_NULL_POINTER, "kf_trace", "trace", NULL, NULL,
               0);
    EXPECT_ERR(kf_trace(ctx, 0, a, LD, &tr), KF_ERR_SHAPE, "kf_trace", "n", NULL, NULL, 0);
    CHECK(tr == tr_saved);
    EXPECT_ERR(kf_trace(ctx, N, a, N - 1, &tr), KF_ERR_SHAPE, "kf_trace", "lda", NULL, NULL, 0);
    CHECK(tr == tr_saved);
    EXPECT_ERR(kf_trace(ctx, huge, a, huge, &tr), KF_ERR_SHAPE, "kf_trace", "A", NULL, NULL, 0);
    CHECK(tr == tr_saved);
    CHECK_STATUS(kf_trace(ctx, N, a, LD, &tr), KF_OK);
    CHECK(tr == (double)a[0] + a[9] + a[18] + a[27] + a[36]);
    CHECK(kf_context_last_error(ctx)[0] == '\0');
}

/* kf__colsum: alpha times the column sums, across the BLAS path's 1024-row chunks, with padded
 * rows; y is written without being read (NaN before). */
static void test_colsum(kf_rng *rng)
{
    static const size_t ms[] = {1, 3, 1023, 1024, 1025, 2500};
    static const size_t ns[] = {1, 7, 300};
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            size_t m = ms[mi], n = ns[ni], ldx = n + 2;
            float *x = kf_test_xmalloc(m * ldx * sizeof(float)), *y = kf_test_xmalloc(n * sizeof(float));
            double *want = kf_test_xmalloc(n * sizeof(double));
            char what[96];
            kf_rng_fill(rng, x, m * ldx);
            for (size_t j = 0; j < n; j++) {
                want[j] = 0.0;
                y[j] = NAN;
                for (size_t i = 0; i < m; i++) {
                    want[j] += x[i * ldx + j];
                }
                want[j] *= 0.5;
            }
            kf__colsum(m, n, 0.5f, x, ldx, y);
            snprintf(what, sizeof what, "colsum m=%zu n=%zu", m, n);
            kf_test_close(what, 1, n, y, n, want, n, 1e-5, 1e-5 * (double)m);
            free(x);
            free(y);
            free(want);
        }
    }
}

/* kf__syrk_lower: the lower triangle of alpha X^T X + beta C from C's lower triangle alone (the
 * upper one holds NaN before: it must not be read). */
static void test_syrk_lower(kf_rng *rng)
{
    static const size_t ns[] = {1, 5, 130};
    static const size_t ks[] = {1, 64, 300};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            size_t n = ns[ni], k = ks[ki], ldc = n + 3;
            float *x = kf_test_xmalloc(k * n * sizeof(float)), *c = kf_test_xmalloc(n * ldc * sizeof(float));
            double *want = kf_test_xmalloc(n * n * sizeof(double));
            float *got = kf_test_xmalloc(n * n * sizeof(float));
            char what[96];
            kf_rng_fill(rng, x, k * n);
            kf_rng_fill(rng, c, n * ldc);
            for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j <= i; j++) {
                    double acc = 0.0;
                    for (size_t p = 0; p < k; p++) {
                        acc += (double)x[p * n + i] * x[p * n + j];
                    }
                    want[i * n + j] = 0.5 * acc + 0.75 * c[i * ldc + j];
                }
                for (size_t j = i + 1; j < n; j++) {
                    c[i * ldc + j] = NAN;
                }
            }
            kf__syrk_lower(k, n, 0.5f, x, n, 0.75f, c, ldc);
            for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < n; j++) {
                    got[i * n + j] = j <= i ? c[i * ldc + j] : 0.0f;
                    if (j > i) {
                        want[i * n + j] = 0.0;
                    }
                }
            }
            snprintf(what, sizeof what, "syrk_lower n=%zu k=%zu", n, k);
            kf_test_close(what, n, n, got, n, want, n, 1e-5, 1e-5);
            free(x);
            free(c);
            free(want);
            free(got);
        }
    }
}

int main(void)
{
    kf_context *ctx = NULL;
    kf_rng rng = {0x9e3779b97f4a7c15ULL};
    CHECK_STATUS(kf_context_create(NULL, &ctx), KF_OK);
    if (!ctx) {
        return kf_test_finish("test_mat");
    }
    CHECK(strcmp(kf__mat_backend(), kf_has_blas() ? "openblas" : "portable") == 0);
    CHECK(kf__mat_simd()[0] != '\0');

    test_gemm(ctx, &rng);
    test_dgemm(&rng);
    test_syrk(ctx, &rng);
    test_colsum(&rng);
    test_syrk_lower(&rng);
#if defined(KF_HAVE_PATHS)
    test_paths(ctx, &rng);
    test_dispatch(&rng);
#endif
    test_scale_axpby_trace(ctx, &rng);
    test_errors(ctx);

    kf_context_destroy(ctx);
    return kf_test_finish("test_mat");
}
