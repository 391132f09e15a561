/* A tiny shared test helper: checks that count, a seeded generator, double-precision references.
 * Each test program ends with kf_test_finish(), which prints "N passed, N failed" and returns the
 * exit code. */
#ifndef KF_TEST_H
#define KF_TEST_H

#include "kronfac.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Not every test program uses every helper. */
#if defined(__GNUC__) || defined(__clang__)
#define KF_TEST_MAYBE_UNUSED __attribute__((unused))
#else
#define KF_TEST_MAYBE_UNUSED
#endif

static int kf_test_passed = 0;
static int kf_test_failed = 0;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (cond) {                                                                       \
            kf_test_passed++;                                                             \
        } else {                                                                          \
            kf_test_failed++;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                                 \
    } while (0)

/* Checks a status and, for errors, that the context message is not empty. */
#define CHECK_STATUS(expr, expected)                                                      \
    do {                                                                                  \
        kf_status kf_s_ = (expr);                                                         \
        if (kf_s_ == (expected)) {                                                        \
            kf_test_passed++;                                                             \
        } else {                                                                          \
            kf_test_failed++;                                                             \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__, __LINE__,   \
                    #expr, kf_status_string(kf_s_), kf_status_string(expected));         \
        }                                                                                 \
    } while (0)

/* |got - want| <= atol + rtol |want| elementwise; reports the worst entry. */
KF_TEST_MAYBE_UNUSED static int kf_test_close(const char *what, size_t rows, size_t cols, const float *got, size_t ldg,
                         const double *want, size_t ldw, double rtol, double atol)
{
    double worst = 0.0;
    size_t wi = 0, wj = 0;
    int ok = 1;
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            double g = got[i * ldg + j], w = want[i * ldw + j];
            double err = fabs(g - w);
            double tol = atol + rtol * fabs(w);
            if (!(err <= tol)) {
                ok = 0;
            }
            if (!(err <= worst)) {
                worst = err;
                wi = i;
                wj = j;
            }
        }
    }
    if (ok) {
        kf_test_passed++;
    } else {
        kf_test_failed++;
        fprintf(stderr, "%s: mismatch, worst at (%zu,%zu): got %.9g want %.9g\n", what, wi, wj,
                (double)got[wi * ldg + wj], want[wi * ldw + wj]);
    }
    return ok;
}

/* xorshift64*: deterministic across platforms. */
typedef struct kf_rng {
    uint64_t s;
} kf_rng;

KF_TEST_MAYBE_UNUSED static uint64_t kf_rng_next(kf_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ULL;
}

/* Uniform in [-1, 1). */
KF_TEST_MAYBE_UNUSED static float kf_rng_uniform(kf_rng *r)
{
    return (float)((double)(kf_rng_next(r) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

KF_TEST_MAYBE_UNUSED static void kf_rng_fill(kf_rng *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = kf_rng_uniform(r);
    }
}

KF_TEST_MAYBE_UNUSED static void *kf_test_xmalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory in a test\n");
        exit(2);
    }
    return p;
}

/* Solves the dense n x n system M X = B (B n x m, both row-major double, overwritten: X in B) by
 * Gaussian elimination with partial pivoting. A brute-force reference, not a library routine. */
KF_TEST_MAYBE_UNUSED static int kf_test_solve(size_t n, size_t m, double *M, double *B)
{
    for (size_t c = 0; c < n; c++) {
        size_t p = c;
        for (size_t i = c + 1; i < n; i++) {
            if (fabs(M[i * n + c]) > fabs(M[p * n + c])) {
                p = i;
            }
        }
        if (M[p * n + c] == 0.0) {
            return -1;
        }
        if (p != c) {
            for (size_t j = 0; j < n; j++) {
                double t = M[c * n + j];
                M[c * n + j] = M[p * n + j];
                M[p * n + j] = t;
            }
            for (size_t j = 0; j < m; j++) {
                double t = B[c * m + j];
                B[c * m + j] = B[p * m + j];
                B[p * m + j] = t;
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (i == c) {
                continue;
            }
            double f = M[i * n + c] / M[c * n + c];
            if (f == 0.0) {
                continue;
            }
            for (size_t j = c; j < n; j++) {
                M[i * n + j] -= f * M[c * n + j];
            }
            for (size_t j = 0; j < m; j++) {
                B[i * m + j] -= f * B[c * m + j];
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < m; j++) {
            B[i * m + j] /= M[i * n + i];
        }
    }
    return 0;
}

KF_TEST_MAYBE_UNUSED static int kf_test_finish(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, kf_test_passed, kf_test_failed);
    return kf_test_failed == 0 ? 0 : 1;
}

#endif /* KF_TEST_H */
