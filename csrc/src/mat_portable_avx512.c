/* AVX-512 single-precision micro-kernels of the portable backend (see mat_portable.c).
 *
 * No compiler flag is involved: the target attribute enables AVX-512F (with AVX2/FMA) for these
 * functions only, and mat_portable.c calls them only when __builtin_cpu_supports reports them.
 *
 * Tile 12 x 32: each row of C is two 16-float vectors, so 24 accumulators plus two vectors of B
 * and one broadcast of A use 27 of the 32 zmm registers. Per step of k: 2 loads of B, 12
 * broadcasts of A, 24 FMAs. The tall tile keeps the B bytes per FMA low, because the B strip
 * streams from L2 while the A sliver stays in L1. 14 x 32 (31 registers) measured the same or
 * slightly slower, and leaves the compiler no room (GCC 12 spilled a vector of B).
 */
#include "kf_mat.h"

#if defined(KF__X86_PATHS)

#include <immintrin.h>
#include <stddef.h>

#define KF_TARGET __attribute__((target("avx512f,avx2,fma")))

#define KF_MR 12
#define KF_NR 32
/* kc x nc panel of B: 128 x 256 floats = 128 KiB in L2; the A sliver (12 x 128 floats) and a B
 * strip (128 x 32) in L1. Measured here, kc 128 / nc 256 beat kc 256 / nc 128 by 3-7%: a wider
 * panel means fewer repackings of A, which come from L3 at large sizes. */
#define KF_KC 128
#define KF_NC 256
/* Row stride of the rows layout: one cache line more than kc keeps the rows in different L1
 * sets whatever lda is. */
#define KF_ROWS_LD 144

typedef char kf__avx512_sizes_fit[KF_MR <= KF__MR_MAX && KF_NR <= KF__NR_MAX &&
                                          KF_NC % KF_NR == 0 && KF_KC <= KF_ROWS_LD &&
                                          KF_MR * KF_ROWS_LD * 4 <= KF__A_SLIVER_BYTES &&
                                          KF_KC * KF_NC * 4 <= KF__B_PANEL_BYTES
                                      ? 1
                                      : -1];

#define KF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

#define KF_ZERO(i) __m512 c##i##a = _mm512_setzero_ps(), c##i##b = _mm512_setzero_ps();

#define KF_STEP(i)                                                                                 \
    {                                                                                              \
        const __m512 av = _mm512_set1_ps(ak[(i) * rs]);                                            \
        c##i##a = _mm512_fmadd_ps(av, b0, c##i##a);                                                \
        c##i##b = _mm512_fmadd_ps(av, b1, c##i##b);                                                \
    }

/* The tile's rows of C are fetched early: they are needed only after the k loop. */
#define KF_PREFETCH(i)                                                                             \
    _mm_prefetch((const char *)(c + (i) * ldc), _MM_HINT_T0);                                      \
    _mm_prefetch((const char *)(c + (i) * ldc + KF_NR - 1), _MM_HINT_T0);

#define KF_STORE(i)                                                                                \
    {                                                                                              \
        float *ci = c + (i) * ldc;                                                                 \
        _mm512_storeu_ps(ci, _mm512_fmadd_ps(va, c##i##a, _mm512_loadu_ps(ci)));                   \
        _mm512_storeu_ps(ci + 16, _mm512_fmadd_ps(va, c##i##b, _mm512_loadu_ps(ci + 16)));         \
    }

/* C (12 x 32) += *alpha * A B over kc steps; A(i, p) is at ap[i * RS + p * CS]. */
#define KF_DEFINE_KERNEL(NAME, RS, CS)                                                             \
    KF_TARGET static void NAME(size_t kc, const float *restrict ap, const float *restrict bp,      \
                               const float *alpha, float *restrict c, size_t ldc)                  \
    {                                                                                              \
        const size_t rs = (RS), cs = (CS);                                                         \
        const float *ak = ap, *bk = bp;                                                            \
        KF_ROWS(KF_ZERO)                                                                           \
        KF_ROWS(KF_PREFETCH)                                                                       \
        for (size_t p = 0; p < kc; p++) {                                                          \
            const __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16);                  \
            KF_ROWS(KF_STEP)                                                                       \
            ak += cs;                                                                              \
            bk += KF_NR;                                                                           \
        }                                                                                          \
        const __m512 va = _mm512_set1_ps(*alpha);                                                  \
        KF_ROWS(KF_STORE)                                                                          \
    }

KF_DEFINE_KERNEL(kf__avx512_cols, 1, KF_MR)
KF_DEFINE_KERNEL(kf__avx512_rows, KF_ROWS_LD, 1)

static const kf__skernel kf__avx512_table = {"avx512f",  KF_MR,           KF_NR,
                                             KF_KC,      KF_NC,           KF_ROWS_LD,
                                             kf__avx512_cols, kf__avx512_rows};

const kf__skernel *kf__skernel_avx512(void)
{
    return &kf__avx512_table;
}

#else
/* Not x86-64 with GCC/clang (or the BLAS build): nothing to compile; keep the unit non-empty. */
typedef int kf__mat_portable_avx512_unused;
#endif
