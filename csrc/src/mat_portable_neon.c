/* NEON single-precision micro-kernels of the portable backend on AArch64 (see mat_portable.c).
 * NEON is part of the AArch64 base ISA, so this path needs no run-time check.
 *
 * Tile 8 x 12: each row of C is three 4-float vectors, so 24 accumulators plus three vectors of B
 * and one broadcast of A use 28 of the 32 vector registers. Per step of k: 3 loads of B, 8
 * broadcast loads of A (ld1r), 24 FMAs.
 */
#include "kf_mat.h"

#if defined(KF__NEON_PATH)

#include <arm_neon.h>
#include <stddef.h>

#define KF_MR 8
#define KF_NR 12
/* kc x nc panel of B: 128 x 240 floats = 120 KiB in L2; the A sliver (8 x 128 floats) and a B
 * strip (128 x 12) in L1. Not tuned: no AArch64 machine was at hand. */
#define KF_KC 128
#define KF_NC 240
/* Row stride of the rows layout: one cache line more than kc keeps the rows in different L1
 * sets whatever lda is. */
#define KF_ROWS_LD 144

typedef char kf__neon_sizes_fit[KF_MR <= KF__MR_MAX && KF_NR <= KF__NR_MAX && KF_NC % KF_NR == 0 &&
                                        KF_KC <= KF_ROWS_LD &&
                                        KF_MR * KF_ROWS_LD * 4 <= KF__A_SLIVER_BYTES &&
                                        KF_KC * KF_NC * 4 <= KF__B_PANEL_BYTES
                                    ? 1
                                    : -1];

#define KF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

#define KF_ZERO(i)                                                                                 \
    float32x4_t c##i##a = vdupq_n_f32(0.0f), c##i##b = vdupq_n_f32(0.0f),                          \
                c##i##c = vdupq_n_f32(0.0f);

#define KF_STEP(i)                                                                                 \
    {                                                                                              \
        const float32x4_t av = vld1q_dup_f32(ak + (i) * rs);                                       \
        c##i##a = vfmaq_f32(c##i##a, av, b0);                                                      \
        c##i##b = vfmaq_f32(c##i##b, av, b1);                                                      \
        c##i##c = vfmaq_f32(c##i##c, av, b2);                                                      \
    }

#define KF_STORE(i)                                                                                \
    {                                                                                              \
        float *ci = c + (i) * ldc;                                                                 \
        vst1q_f32(ci, vfmaq_f32(vld1q_f32(ci), va, c##i##a));                                      \
        vst1q_f32(ci + 4, vfmaq_f32(vld1q_f32(ci + 4), va, c##i##b));                              \
        vst1q_f32(ci + 8, vfmaq_f32(vld1q_f32(ci + 8), va, c##i##c));                              \
    }

/* C (8 x 12) += *alpha * A B over kc steps; A(i, p) is at ap[i * RS + p * CS]. */
#define KF_DEFINE_KERNEL(NAME, RS, CS)                                                             \
    static void NAME(size_t kc, const float *restrict ap, const float *restrict bp,                \
                     const float *alpha, float *restrict c, size_t ldc)                            \
    {                                                                                              \
        const size_t rs = (RS), cs = (CS);                                                         \
        const float *ak = ap, *bk = bp;                                                            \
        KF_ROWS(KF_ZERO)                                                                           \
        for (size_t p = 0; p < kc; p++) {                                                          \
            const float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4), b2 = vld1q_f32(bk + 8);  \
            KF_ROWS(KF_STEP)                                                                       \
            ak += cs;                                                                              \
            bk += KF_NR;                                                                           \
        }                                                                                          \
        const float32x4_t va = vdupq_n_f32(*alpha);                                                \
        KF_ROWS(KF_STORE)                                                                          \
    }

KF_DEFINE_KERNEL(kf__neon_cols, 1, KF_MR)
KF_DEFINE_KERNEL(kf__neon_rows, KF_ROWS_LD, 1)

static const kf__skernel kf__neon_table = {"neon", KF_MR,      KF_NR,         KF_KC,
                                           KF_NC,  KF_ROWS_LD, kf__neon_cols, kf__neon_rows};

const kf__skernel *kf__skernel_neon(void)
{
    return &kf__neon_table;
}

#else
/* Not AArch64 (or the BLAS build): nothing to compile; keep the unit non-empty. */
typedef int kf__mat_portable_neon_unused;
#endif
