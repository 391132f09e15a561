/* Portable C99 dense kernels (the build without BLAS): GEMM, SYRK and DGEMM of kf_mat.h.
 *
 * Layout of the computation (the classic Goto/BLIS blocking, written so that the compiler's
 * auto-vectorizer does the SIMD part):
 *   - op(B) is packed, KC rows x NC columns at a time, into strips NR columns wide (zero-padded at
 *     the right edge), so that every transpose case reads unit-stride memory afterwards;
 *   - op(A) is packed MR rows x KC at a time (zero-padded at the bottom edge);
 *   - a micro-kernel accumulates an MR x NR tile of C in a local array that the compiler keeps in
 *     registers; its innermost loop runs over the MR contiguous values of a packed A column, each
 *     multiplied by one element of the packed B strip.
 * All buffers live on the stack with fixed sizes (about 72 KiB): no heap, no VLAs.
 * Accumulation is in the element type (float for GEMM/SYRK), as BLAS does.
 */
#if !defined(KRONFAC_HAVE_BLAS)

#include "kf_mat.h"

#include <math.h>
#include <stddef.h>

/* Register tile MR x NR. The micro-kernel vectorizes along MR (a contiguous column of the packed
 * A sliver, times one broadcast element of B): measured with GCC 12 and Clang 21 at SSE2, AVX2 and
 * AVX-512, this form vectorizes well with both compilers at every level, whereas the form that
 * vectorizes along NR collapses to scalar code with GCC at some tile sizes. MR is a multiple of
 * the vector width; MR x NR accumulators fit the register file (16 registers on SSE/AVX, 32 on
 * AVX-512 and AArch64). */
#if defined(__AVX512F__)
#define KF_S_MR 8
#define KF_S_NR 16
#define KF_D_MR 8
#define KF_D_NR 8
#else
#define KF_S_MR 8
#define KF_S_NR 8
#define KF_D_MR 8
#define KF_D_NR 4
#endif

/* Cache blocking: a KC x NC panel of B (64 KiB) stays in L2, an MR x KC sliver of A and a
 * KC x NR strip of B in L1. */
#define KF_S_KC 256
#define KF_S_NC 64
#define KF_D_KC 128
#define KF_D_NC 64

/* The packed B panel holds whole NR-wide strips only when NR divides NC. */
typedef char kf__s_nc_is_a_multiple_of_nr[KF_S_NC % KF_S_NR == 0 ? 1 : -1];
typedef char kf__d_nc_is_a_multiple_of_nr[KF_D_NC % KF_D_NR == 0 ? 1 : -1];

/* Fused multiply-add only where the hardware has it (otherwise fmaf is a slow library call).
 * With -std=c99, GCC does not contract a*b+c on its own (-ffp-contract=off). */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__aarch64__)
#define KF_FMAF(x, y, z) fmaf((x), (y), (z))
#define KF_FMA(x, y, z) fma((x), (y), (z))
#else
#define KF_FMAF(x, y, z) ((x) * (y) + (z))
#define KF_FMA(x, y, z) ((x) * (y) + (z))
#endif

/* One template instantiated for float and double; upper != 0 restricts the work to the upper
 * triangle of C (j >= i) for SYRK. Prefix P names the functions, T is the element type. */
#define KF_DEFINE_BLOCKED_GEMM(P, T, MR, NR, KC, NC, FMAOP)                                        \
                                                                                                   \
    /* C = beta C over the (upper part of the) m x n matrix; beta == 0 writes zeros unread. */     \
    static void P##_scale_c(size_t m, size_t n, T beta, T *restrict c, size_t ldc, int upper)    \
    {                                                                                              \
        for (size_t i = 0; i < m; i++) {                                                           \
            T *restrict row = c + i * ldc;                                                         \
            size_t j0 = upper ? i : 0;                                                             \
            if (beta == (T)0) {                                                                    \
                for (size_t j = j0; j < n; j++) {                                                  \
                    row[j] = (T)0;                                                                 \
                }                                                                                  \
            } else {                                                                               \
                for (size_t j = j0; j < n; j++) {                                                  \
                    row[j] *= beta;                                                                \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* Packs op(B)[pc..pc+kc) x [jc..jc+nc) into strips: strip s holds kc rows of NR values. */    \
    static void P##_pack_b(int tb, const T *restrict b, size_t ldb, size_t pc, size_t kc,         \
                           size_t jc, size_t nc, T *restrict bp)                                   \
    {                                                                                              \
        for (size_t jr = 0; jr < nc; jr += NR) {                                                   \
            size_t nr = nc - jr < NR ? nc - jr : NR;                                               \
            T *restrict dst = bp + jr * kc;                                                        \
            if (!tb) {                                                                             \
                const T *src = b + pc * ldb + jc + jr;                                             \
                for (size_t p = 0; p < kc; p++) {                                                  \
                    size_t j = 0;                                                                  \
                    for (; j < nr; j++) {                                                          \
                        dst[p * NR + j] = src[p * ldb + j];                                        \
                    }                                                                              \
                    for (; j < NR; j++) {                                                          \
                        dst[p * NR + j] = (T)0;                                                    \
                    }                                                                              \
                }                                                                                  \
            } else {                                                                               \
                /* B is stored n x k: column j of op(B) is a contiguous row of B. */               \
                for (size_t j = 0; j < NR; j++) {                                                  \
                    if (j < nr) {                                                                  \
                        const T *src = b + (jc + jr + j) * ldb + pc;                               \
                        for (size_t p = 0; p < kc; p++) {                                          \
                            dst[p * NR + j] = src[p];                                              \
                        }                                                                          \
                    } else {                                                                       \
                        for (size_t p = 0; p < kc; p++) {                                          \
                            dst[p * NR + j] = (T)0;                                                \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* Packs op(A)[ic..ic+mr) x [pc..pc+kc) as ap[p * MR + i], zero rows below mr. */              \
    static void P##_pack_a(int ta, const T *restrict a, size_t lda, size_t ic, size_t mr,         \
                           size_t pc, size_t kc, T *restrict ap)                                   \
    {                                                                                              \
        if (!ta) {                                                                                 \
            for (size_t i = 0; i < MR; i++) {                                                      \
                if (i < mr) {                                                                      \
                    const T *src = a + (ic + i) * lda + pc;                                        \
                    for (size_t p = 0; p < kc; p++) {                                              \
                        ap[p * MR + i] = src[p];                                                   \
                    }                                                                              \
                } else {                                                                           \
                    for (size_t p = 0; p < kc; p++) {                                              \
                        ap[p * MR + i] = (T)0;                                                     \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        } else {                                                                                   \
            /* A is stored k x m: row p of A holds column p of op(A). */                           \
            for (size_t p = 0; p < kc; p++) {                                                      \
                const T *src = a + (pc + p) * lda + ic;                                            \
                size_t i = 0;                                                                      \
                for (; i < mr; i++) {                                                              \
                    ap[p * MR + i] = src[i];                                                       \
                }                                                                                  \
                for (; i < MR; i++) {                                                              \
                    ap[p * MR + i] = (T)0;                                                         \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* t (MR x NR) = ap (MR x kc) * bp (kc x NR). Fixed trip counts let the compiler unroll the    \
     * tile loops, keep acc in vector registers and vectorize over i. */                           \
    static void P##_kernel(size_t kc, const T *restrict ap, const T *restrict bp, T *restrict t)  \
    {                                                                                              \
        T acc[MR][NR];                                                                             \
        for (size_t i = 0; i < MR; i++) {                                                          \
            for (size_t j = 0; j < NR; j++) {                                                      \
                acc[i][j] = (T)0;                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (size_t p = 0; p < kc; p++) {                                                          \
            const T *restrict brow = bp + p * NR;                                                  \
            const T *restrict acol = ap + p * MR;                                                  \
            for (size_t j = 0; j < NR; j++) {                                                      \
                const T bv = brow[j];                                                              \
                for (size_t i = 0; i < MR; i++) {                                                  \
                    acc[i][j] = FMAOP(acol[i], bv, acc[i][j]);                                     \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (size_t i = 0; i < MR; i++) {                                                          \
            for (size_t j = 0; j < NR; j++) {                                                      \
                t[i * NR + j] = acc[i][j];                                                         \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* C += alpha op(A) op(B) after C was scaled by beta. */                                       \
    static void P##_blocked(int ta, int tb, int upper, size_t m, size_t n, size_t k, T alpha,      \
                            const T *restrict a, size_t lda, const T *restrict b, size_t ldb,      \
                            T *restrict c, size_t ldc)                                             \
    {                                                                                              \
        T bp[KC * NC];                                                                             \
        T ap[MR * KC];                                                                             \
        T t[MR * NR];                                                                              \
        for (size_t jc = 0; jc < n; jc += NC) {                                                    \
            size_t nc = n - jc < NC ? n - jc : NC;                                                 \
            /* For the upper triangle, rows at or beyond the panel's last column add nothing. */   \
            size_t mend = upper && jc + nc < m ? jc + nc : m;                                      \
            for (size_t pc = 0; pc < k; pc += KC) {                                                \
                size_t kc = k - pc < KC ? k - pc : KC;                                             \
                P##_pack_b(tb, b, ldb, pc, kc, jc, nc, bp);                                        \
                for (size_t ic = 0; ic < mend; ic += MR) {                                         \
                    size_t mr = mend - ic < MR ? mend - ic : MR;                                   \
                    P##_pack_a(ta, a, lda, ic, mr, pc, kc, ap);                                    \
                    for (size_t jr = 0; jr < nc; jr += NR) {                                       \
                        size_t nr = nc - jr < NR ? nc - jr : NR;                                   \
                        size_t j0 = jc + jr;                                                       \
                        if (upper && j0 + nr <= ic) {                                              \
                            continue; /* tile strictly below the diagonal */                       \
                        }                                                                          \
                        P##_kernel(kc, ap, bp + jr * kc, t);                                       \
                        for (size_t i = 0; i < mr; i++) {                                          \
                            T *restrict crow = c + (ic + i) * ldc + j0;                            \
                            const T *restrict trow = t + i * NR;                                   \
                            size_t jstart = 0;                                                     \
                            if (upper && ic + i > j0) {                                            \
                                jstart = ic + i - j0;                                              \
                            }                                                                      \
                            if (nr == NR && jstart == 0) {                                         \
                                for (size_t j = 0; j < NR; j++) {                                  \
                                    crow[j] += alpha * trow[j];                                    \
                                }                                                                  \
                            } else {                                                               \
                                for (size_t j = jstart; j < nr; j++) {                             \
                                    crow[j] += alpha * trow[j];                                    \
                                }                                                                  \
                            }                                                                      \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

KF_DEFINE_BLOCKED_GEMM(kf__sg, float, KF_S_MR, KF_S_NR, KF_S_KC, KF_S_NC, KF_FMAF)
KF_DEFINE_BLOCKED_GEMM(kf__dg, double, KF_D_MR, KF_D_NR, KF_D_KC, KF_D_NC, KF_FMA)

void kf__gemm(int ta, int tb, size_t m, size_t n, size_t k, float alpha, const float *a,
              size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    if (beta != 1.0f) {
        kf__sg_scale_c(m, n, beta, c, ldc, 0);
    }
    /* As in BLAS, alpha == 0 leaves A and B unread. */
    if (k == 0 || alpha == 0.0f) {
        return;
    }
    kf__sg_blocked(ta, tb, 0, m, n, k, alpha, a, lda, b, ldb, c, ldc);
}

void kf__dgemm(int ta, int tb, size_t m, size_t n, size_t k, double alpha, const double *a,
               size_t lda, const double *b, size_t ldb, double beta, double *c, size_t ldc)
{
    if (beta != 1.0) {
        kf__dg_scale_c(m, n, beta, c, ldc, 0);
    }
    if (k == 0 || alpha == 0.0) {
        return;
    }
    kf__dg_blocked(ta, tb, 0, m, n, k, alpha, a, lda, b, ldb, c, ldc);
}

/* Copies the upper triangle into the lower one in square tiles, so that the strided reads of a
 * tile's columns stay in cache. */
static void kf__mirror_upper(size_t n, float *c, size_t ldc)
{
    const size_t bs = 64;
    for (size_t ib = 0; ib < n; ib += bs) {
        size_t ie = n - ib < bs ? n - ib : bs;
        for (size_t jb = 0; jb <= ib; jb += bs) {
            size_t je = n - jb < bs ? n - jb : bs;
            for (size_t i = ib; i < ib + ie; i++) {
                size_t jend = jb + je < i ? jb + je : i;
                for (size_t j = jb; j < jend; j++) {
                    c[i * ldc + j] = c[j * ldc + i];
                }
            }
        }
    }
}

void kf__syrk(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta, float *c,
              size_t ldc)
{
    /* Only the upper triangle of C is read, computed and then mirrored, like BLAS with uplo=U. */
    if (beta != 1.0f) {
        kf__sg_scale_c(n, n, beta, c, ldc, 1);
    }
    if (k != 0 && alpha != 0.0f) {
        /* X^T X: op(A) = X^T (A = X stored k x n, transposed), op(B) = X. */
        kf__sg_blocked(1, 0, 1, n, n, k, alpha, x, ldx, x, ldx, c, ldc);
    }
    kf__mirror_upper(n, c, ldc);
}

const char *kf__mat_backend(void)
{
    return "portable";
}

const char *kf__mat_simd(void)
{
#if defined(__AVX512F__) && defined(__FMA__)
    return "avx512f+fma";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2+fma";
#elif defined(__AVX__)
    return "avx";
#elif defined(__SSE2__) || defined(_M_X64)
    return "sse2";
#elif defined(__ARM_NEON) || defined(__aarch64__)
    return "neon";
#else
    return "generic";
#endif
}

#else
/* The BLAS build uses mat_blas.c; keep this translation unit non-empty for -Wpedantic. */
typedef int kf__mat_portable_unused;
#endif
