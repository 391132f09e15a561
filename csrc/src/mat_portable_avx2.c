/* AVX2 + FMA single-precision micro-kernels of the portable backend (see mat_portable.c).
 *
 * No compiler flag is involved: the target attribute enables AVX2/FMA for these functions only,
 * and mat_portable.c calls them only when __builtin_cpu_supports reports both features.
 *
 * Tile 6 x 16: each row of C is two 8-float vectors, so 12 accumulators plus two vectors of B and
 * one broadcast of A use 15 of the 16 ymm registers. Per step of k: 2 loads of B, 6 broadcasts of
 * A, 12 FMAs; the two FMA ports set the pace.
 */
#include "kf_mat.h"

#if defined(KF__X86_PATHS)

#include <immintrin.h>
#include <stddef.h>

#define KF_TARGET __attribute__((target("avx2,fma")))

#define KF_MR 6
#define KF_NR 16
/* kc x nc panel of B: 128 x 256 floats = 128 KiB in L2; the A sliver (6 x 128 floats) and a B
 * strip (128 x 16) in L1. Measured here, kc 128 / nc 256 beat kc 256 / nc 128 by a few percent:
 * a wider panel means fewer repackings of A. */
#define KF_KC 128
#define KF_NC 256
/* Row stride of the rows layout: one cache line more than kc keeps the six rows in different L1
 * sets whatever lda is. */
#define KF_ROWS_LD 144

typedef char kf__avx2_sizes_fit[KF_MR <= KF__MR_MAX && KF_NR <= KF__NR_MAX && KF_NC % KF_NR == 0 &&
                                        KF_KC <= KF_ROWS_LD &&
                                        KF_MR * KF_ROWS_LD * 4 <= KF__A_SLIVER_BYTES &&
                                        KF_KC * KF_NC * 4 <= KF__B_PANEL_BYTES
                                    ? 1
                                    : -1];

#define KF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

#define KF_ZERO(i) __m256 c##i##a = _mm256_setzero_ps(), c##i##b = _mm256_setzero_ps();

#define KF_STEP(i)                                                                                 \
    {                                                                                              \
        const __m256 av = _mm256_broadcast_ss(ak + (i) * rs);                                      \
        c##i##a = _mm256_fmadd_ps(av, b0, c##i##a);                                                \
        c##i##b = _mm256_fmadd_ps(av, b1, c##i##b);                                                \
    }

/* The tile's rows of C are fetched early: they are needed only after the k loop. */
#define KF_PREFETCH(i)                                                                             \
    _mm_prefetch((const char *)(c + (i) * ldc), _MM_HINT_T0);                                      \
    _mm_prefetch((const char *)(c + (i) * ldc + KF_NR - 1), _MM_HINT_T0);

#define KF_STORE(i)                                                                                \
    {                                                                                              \
        float *ci = c + (i) * ldc;                                                                 \
        _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, c##i##a, _mm256_loadu_ps(ci)));                   \
        _mm256_storeu_ps(ci + 8, _mm256_fmadd_ps(va, c##i##b, _mm256_loadu_ps(ci + 8)));           \
    }

/* C (6 x 16) += *alpha * A B over kc steps; A(i, p) is at ap[i * RS + p * CS]. */
#define KF_DEFINE_KERNEL(NAME, RS, CS)                                                             \
    KF_TARGET static void NAME(size_t kc, const float *restrict ap, const float *restrict bp,      \
                               const float *alpha, float *restrict c, size_t ldc)                  \
    {                                                                                              \
        const size_t rs = (RS), cs = (CS);                                                         \
        const float *ak = ap, *bk = bp;                                                            \
        KF_ROWS(KF_ZERO)                                                                           \
        KF_ROWS(KF_PREFETCH)                                                                       \
        for (size_t p = 0; p < kc; p++) {                                                          \
            const __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);                   \
            KF_ROWS(KF_STEP)                                                                       \
            ak += cs;                                                                              \
            bk += KF_NR;                                                                           \
        }                                                                                          \
        const __m256 va = _mm256_set1_ps(*alpha);                                                  \
        KF_ROWS(KF_STORE)                                                                          \
    }

KF_DEFINE_KERNEL(kf__avx2_cols, 1, KF_MR)
KF_DEFINE_KERNEL(kf__avx2_rows, KF_ROWS_LD, 1)

static const kf__skernel kf__avx2_table = {"avx2+fma", KF_MR,         KF_NR,         KF_KC,
                                           KF_NC,      KF_ROWS_LD,    kf__avx2_cols, kf__avx2_rows};

const kf__skernel *kf__skernel_avx2(void)
{
    return &kf__avx2_table;
}

#else
/* Not x86-64 with GCC/clang (or the BLAS build): nothing to compile; keep the unit non-empty. */
typedef int kf__mat_portable_avx2_unused;
#endif
