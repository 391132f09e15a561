/* Status strings, version, build information, error messages and argument checks. */
#include "kf_internal.h"
#include "kf_linalg.h"
#include "kf_mat.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(KRONFAC_HAVE_BLAS)
#include <cblas.h>
#endif

#define KF_STR2(x) #x
#define KF_STR(x) KF_STR2(x)
#define KF_VERSION_STRING \
    KF_STR(KF_VERSION_MAJOR) "." KF_STR(KF_VERSION_MINOR) "." KF_STR(KF_VERSION_PATCH)

const char *kf_status_string(kf_status status)
{
    switch (status) {
    case KF_OK: return "KF_OK: success";
    case KF_ERR_NULL_POINTER: return "KF_ERR_NULL_POINTER: a required pointer was NULL";
    case KF_ERR_INVALID_ARGUMENT: return "KF_ERR_INVALID_ARGUMENT: an argument is out of range";
    case KF_ERR_SHAPE: return "KF_ERR_SHAPE: a size or leading dimension is invalid or shapes disagree";
    case KF_ERR_OUT_OF_MEMORY: return "KF_ERR_OUT_OF_MEMORY: allocation failed";
    case KF_ERR_NON_FINITE: return "KF_ERR_NON_FINITE: NaN or Inf in an input";
    case KF_ERR_NOT_POSITIVE_DEFINITE: return "KF_ERR_NOT_POSITIVE_DEFINITE: Cholesky failed after every retry";
    case KF_ERR_NO_CONVERGENCE: return "KF_ERR_NO_CONVERGENCE: an iterative solver did not converge";
    case KF_ERR_STATE: return "KF_ERR_STATE: not allowed in the current state";
    case KF_ERR_FORMAT: return "KF_ERR_FORMAT: checkpoint truncated, corrupt, of another version or shape";
    case KF_ERR_IO: return "KF_ERR_IO: file could not be read or written";
    case KF_ERR_UNSUPPORTED: return "KF_ERR_UNSUPPORTED: not available in this build";
    }
    return "KF_ERR_UNKNOWN: unknown status code";
}

const char *kf_version(void) { return KF_VERSION_STRING; }
int kf_version_major(void) { return KF_VERSION_MAJOR; }
int kf_version_minor(void) { return KF_VERSION_MINOR; }
int kf_version_patch(void) { return KF_VERSION_PATCH; }

int kf_has_blas(void)
{
#if defined(KRONFAC_HAVE_BLAS)
    return 1;
#else
    return 0;
#endif
}

/* Every answer is a string literal: the library writes no global state at run time (a buffer
 * filled on first use would be a data race between threads). */
#if defined(KRONFAC_HAVE_BLAS)
#define KF_BUILD_PREFIX "kronfac " KF_VERSION_STRING "; backend=openblas; linalg=lapack; simd="
#else
#define KF_BUILD_PREFIX "kronfac " KF_VERSION_STRING "; backend=portable; linalg=portable; simd="
#endif

const char *kf_build_info(void)
{
    static const char *const names[] = {"openblas", "avx512f", "avx2+fma", "avx", "sse2",
                                        "neon", "generic"};
    static const char *const infos[] = {KF_BUILD_PREFIX "openblas", KF_BUILD_PREFIX "avx512f",
                                        KF_BUILD_PREFIX "avx2+fma", KF_BUILD_PREFIX "avx",
                                        KF_BUILD_PREFIX "sse2", KF_BUILD_PREFIX "neon",
                                        KF_BUILD_PREFIX "generic"};
    const char *simd = kf__mat_simd();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(simd, names[i]) == 0) {
            return infos[i];
        }
    }
    return KF_BUILD_PREFIX "other";
}

kf_status kf_blas_set_threads(int threads)
{
    if (threads < 1) {
        return KF_ERR_INVALID_ARGUMENT;
    }
#if defined(KRONFAC_HAVE_BLAS)
    openblas_set_num_threads(threads);
    return KF_OK;
#else
    return KF_ERR_UNSUPPORTED;
#endif
}

kf_status kf__fail(kf_errbuf *e, kf_status status, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

kf_status kf__prefix(kf_errbuf *e, kf_status status, const char *fn)
{
    if (e) {
        /* Built by hand: the message is meant to be cut at the buffer's end. */
        char tmp[KF_MSG_CAP];
        size_t fl = strlen(fn), pos = 0;
        memcpy(tmp, e->msg, sizeof tmp);
        tmp[KF_MSG_CAP - 1] = '\0';
        for (size_t i = 0; i < fl && pos < KF_MSG_CAP - 1; i++) {
            e->msg[pos++] = fn[i];
        }
        for (size_t i = 0; i < 2 && pos < KF_MSG_CAP - 1; i++) {
            e->msg[pos++] = ": "[i];
        }
        for (size_t i = 0; tmp[i] != '\0' && pos < KF_MSG_CAP - 1; i++) {
            e->msg[pos++] = tmp[i];
        }
        e->msg[pos] = '\0';
    }
    return status;
}

void kf__clear(kf_errbuf *e)
{
    if (e) {
        e->msg[0] = '\0';
    }
}

int kf__mul_size(size_t x, size_t y, size_t *out)
{
    if (x != 0 && y > SIZE_MAX / x) {
        return 0;
    }
    *out = x * y;
    return 1;
}

kf_status kf__check_ptr(kf_errbuf *e, const void *p, const char *name)
{
    if (!p) {
        return kf__fail(e, KF_ERR_NULL_POINTER, "%s is NULL", name);
    }
    return KF_OK;
}

kf_status kf__check_mat(kf_errbuf *e, const void *p, size_t rows, size_t cols, size_t ld,
                        const char *name)
{
    size_t span;
    if (!p) {
        return kf__fail(e, KF_ERR_NULL_POINTER, "%s is NULL", name);
    }
    if (rows == 0 || cols == 0) {
        return kf__fail(e, KF_ERR_SHAPE, "%s is %zu x %zu; both sizes must be >= 1", name, rows, cols);
    }
    if (ld < cols) {
        return kf__fail(e, KF_ERR_SHAPE, "leading dimension of %s (%zu) < its width (%zu)", name, ld,
                        cols);
    }
    /* The last element's offset must be representable, with room for a float index. */
    if (!kf__mul_size(rows - 1, ld, &span) || span > SIZE_MAX / sizeof(double) - cols) {
        return kf__fail(e, KF_ERR_SHAPE, "%s is too large (%zu rows, ld %zu)", name, rows, ld);
    }
    return KF_OK;
}

int kf__all_finite(size_t rows, size_t cols, const float *x, size_t ldx)
{
    for (size_t i = 0; i < rows; i++) {
        const float *row = x + i * ldx;
        /* A float is NaN or Inf exactly when its exponent bits are all ones. Integer OR is
         * associative, so this loop vectorizes (a float sum would not, without -ffast-math). */
        uint32_t bad = 0;
        for (size_t j = 0; j < cols; j++) {
            uint32_t bits;
            memcpy(&bits, row + j, sizeof bits);
            bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
        }
        if (bad) {
            return 0;
        }
    }
    return 1;
}

int kf__all_finite_d(size_t rows, size_t cols, const double *x, size_t ldx)
{
    for (size_t i = 0; i < rows; i++) {
        const double *row = x + i * ldx;
        uint64_t bad = 0;
        for (size_t j = 0; j < cols; j++) {
            uint64_t bits;
            memcpy(&bits, row + j, sizeof bits);
            bad |= (uint64_t)((bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
        }
        if (bad) {
            return 0;
        }
    }
    return 1;
}

int kf__overlap(const float *a, size_t rows_a, size_t ld_a, size_t cols_a,
                const float *b, size_t rows_b, size_t ld_b, size_t cols_b)
{
    /* Compare addresses as integers: relational comparison of pointers into different objects is
     * undefined in C. */
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    uintptr_t a1 = a0 + ((rows_a - 1) * ld_a + cols_a) * sizeof(float);
    uintptr_t b1 = b0 + ((rows_b - 1) * ld_b + cols_b) * sizeof(float);
    return a0 < b1 && b0 < a1;
}
