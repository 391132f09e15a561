/* Shared pieces of the fuzz harnesses: a byte reader that never runs out (exhausted input reads as
 * zeros), float decoding biased towards the values that break numerics, exact-size buffers (so
 * that AddressSanitizer sees any read or write past what a shape claims), a checked allocator
 * that can fail its k-th allocation, and a harness-level assertion that aborts (libFuzzer then
 * saves the input as a crash). */
#ifndef KF_FUZZ_UTIL_H
#define KF_FUZZ_UTIL_H

#include "kronfac.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define FZ_UNUSED __attribute__((unused))
#else
#define FZ_UNUSED
#endif

/* A violated library property: print what and where, then abort so the fuzzer keeps the input. */
#define FZ_ASSERT(cond)                                                                       \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond);     \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

typedef struct fz_in {
    const uint8_t *d;
    size_t n, pos;
} fz_in;

FZ_UNUSED static int fz_left(const fz_in *in) { return in->pos < in->n; }

FZ_UNUSED static uint8_t fz_u8(fz_in *in)
{
    return in->pos < in->n ? in->d[in->pos++] : 0;
}

FZ_UNUSED static uint32_t fz_u32(fz_in *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        v |= (uint32_t)fz_u8(in) << (8 * i);
    }
    return v;
}

/* 0..max inclusive. */
FZ_UNUSED static size_t fz_upto(fz_in *in, size_t max)
{
    return (size_t)fz_u8(in) % (max + 1);
}

/* A size: mostly small and valid, sometimes 0 or absurd (the library must refuse those without
 * touching memory, so the buffers stay small: callers clamp before allocating). */
FZ_UNUSED static size_t fz_dim(fz_in *in, size_t max)
{
    uint8_t b = fz_u8(in);
    if (b == 255) {
        return 0;
    }
    return 1 + (size_t)b % max;
}

/* One float, chosen by a tag byte: ordinary values most of the time, and every kind of value
 * that breaks numerics (NaN, infinities, denormals, huge and tiny magnitudes, raw bit patterns). */
FZ_UNUSED static float fz_float(fz_in *in)
{
    uint8_t tag = fz_u8(in);
    switch (tag % 16) {
    case 0: return 0.0f;
    case 1: return 1.0f;
    case 2: return -1.0f;
    case 3: return NAN;
    case 4: return INFINITY;
    case 5: return -INFINITY;
    case 6: return 1e-45f;            /* smallest denormal */
    case 7: return 1e-39f;            /* a denormal */
    case 8: return 1e30f;
    case 9: return -1e30f;
    case 10: return 1e-30f;
    case 11: return FLT_MAX;
    case 12: {
        uint32_t bits = fz_u32(in);
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    default:
        return ((float)fz_u8(in) - 128.0f) / 32.0f;
    }
}

/* A float that is finite and moderate (hyperparameters meant to be accepted). */
FZ_UNUSED static float fz_moderate(fz_in *in)
{
    return (float)(fz_u8(in) + 1) / 256.0f;
}

/* xorshift32 for filling buffers from a seed taken from the input (keeps inputs short). */
FZ_UNUSED static uint32_t fz_rand(uint32_t *s)
{
    uint32_t x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Fills rows x cols (ld apart) according to a mode byte from the input: random in [-1, 1], all
 * zero, rank one, one constant, huge, tiny, denormal, or random with a few special values. */
FZ_UNUSED static void fz_fill(fz_in *in, float *x, size_t rows, size_t cols, size_t ld)
{
    uint8_t mode = fz_u8(in);
    uint32_t seed = (uint32_t)fz_u8(in) | ((uint32_t)mode << 8) | 1u;
    float scale = 1.0f, konst = 0.0f;
    size_t specials = 0;
    switch (mode % 9) {
    case 1: scale = 0.0f; break;
    case 3: konst = fz_float(in); break;
    case 4: scale = 1e30f; break;
    case 5: scale = 1e-30f; break;
    case 6: scale = 1e-40f; break;
    case 7: specials = 1 + fz_upto(in, 3); break;
    default: break;
    }
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            float v = ((float)(fz_rand(&seed) & 0xffff) / 32768.0f - 1.0f) * scale;
            if (mode % 9 == 2) { /* rank one: row i is (i+1) * the first row */
                v = (float)(i + 1) * ((float)((j * 7919u + 13u) % 17u) / 8.0f - 1.0f);
            } else if (mode % 9 == 3) {
                v = konst;
            }
            x[i * ld + j] = v;
        }
    }
    for (size_t k = 0; k < specials && rows && cols; k++) {
        size_t i = fz_upto(in, 255) % rows, j = fz_upto(in, 255) % cols;
        x[i * ld + j] = fz_float(in);
    }
}

/* ---- buffers of exactly the size a shape claims -------------------------------------------- */

#define FZ_MAX_BUFS 64

typedef struct fz_pool {
    void *p[FZ_MAX_BUFS];
    size_t n;
} fz_pool;

/* (rows - 1) * ld + cols floats (at least one), owned by the pool. Poison-free: NaN-filled so that
 * a library that reads an output it promised not to read (beta = 0) is noticed by the checks. */
FZ_UNUSED static float *fz_mat(fz_pool *pool, size_t rows, size_t cols, size_t ld)
{
    size_t n = rows == 0 ? 0 : (rows - 1) * ld + cols;
    float *p;
    if (n == 0) {
        n = 1;
    }
    if (pool->n == FZ_MAX_BUFS || rows > 4096 || cols > 4096 || ld > 4096) {
        return NULL;
    }
    p = (float *)malloc(n * sizeof(float));
    if (!p) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        p[i] = NAN;
    }
    pool->p[pool->n++] = p;
    return p;
}

FZ_UNUSED static size_t fz_mat_count(size_t rows, size_t cols, size_t ld)
{
    return rows == 0 ? 1 : (rows - 1) * ld + cols;
}

FZ_UNUSED static void fz_pool_free(fz_pool *pool)
{
    for (size_t i = 0; i < pool->n; i++) {
        free(pool->p[i]);
    }
    pool->n = 0;
}

FZ_UNUSED static void *fz_dup(fz_pool *pool, const void *src, size_t bytes)
{
    void *p;
    if (pool->n == FZ_MAX_BUFS) {
        return NULL;
    }
    p = malloc(bytes ? bytes : 1);
    if (!p) {
        abort();
    }
    memcpy(p, src, bytes);
    pool->p[pool->n++] = p;
    return p;
}

FZ_UNUSED static int fz_all_finite(const float *x, size_t rows, size_t cols, size_t ld)
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

/* ---- a checked allocator ------------------------------------------------------------------- */

/* Fails allocation number fail_at (0-based; < 0: never) and every request above max_request;
 * records every live block so that a free with the wrong size, a double free or a leak at the
 * end is caught. */
#define FZ_MAX_LIVE 4096

typedef struct fz_alloc_state {
    long calls, fail_at;
    size_t max_request, largest_request, live_bytes;
    void *ptr[FZ_MAX_LIVE];
    size_t size[FZ_MAX_LIVE];
    size_t live;
} fz_alloc_state;

FZ_UNUSED static void *fz_alloc_fn(size_t size, void *ctx)
{
    fz_alloc_state *s = (fz_alloc_state *)ctx;
    void *p;
    long call = s->calls++;
    if (size > s->largest_request) {
        s->largest_request = size;
    }
    if (call == s->fail_at || size > s->max_request || s->live == FZ_MAX_LIVE) {
        return NULL;
    }
    p = malloc(size);
    if (p) {
        s->ptr[s->live] = p;
        s->size[s->live] = size;
        s->live++;
        s->live_bytes += size;
    }
    return p;
}

FZ_UNUSED static void fz_free_fn(void *p, size_t size, void *ctx)
{
    fz_alloc_state *s = (fz_alloc_state *)ctx;
    size_t i;
    for (i = 0; i < s->live; i++) {
        if (s->ptr[i] == p) {
            break;
        }
    }
    FZ_ASSERT(i < s->live);          /* freed something the allocator never gave (or twice) */
    FZ_ASSERT(s->size[i] == size);   /* freed with another size than it was allocated with */
    s->live_bytes -= size;
    s->ptr[i] = s->ptr[s->live - 1];
    s->size[i] = s->size[s->live - 1];
    s->live--;
    free(p);
}

FZ_UNUSED static void fz_alloc_init(fz_alloc_state *s, long fail_at, size_t max_request)
{
    memset(s, 0, sizeof *s);
    s->fail_at = fail_at;
    s->max_request = max_request;
}

#endif /* KF_FUZZ_UTIL_H */
