/* Portable C99 dense kernels (the build without BLAS): GEMM, SYRK and DGEMM of kf_mat.h.
 *
 * Layout of the computation (the classic Goto/BLIS blocking):
 *   - op(B) is packed, kc rows x nc columns at a time, into strips NR columns wide (zero-padded at
 *     the right edge), so that every transpose case reads unit-stride memory afterwards; the panel
 *     stays in L2 and is reused by every row of C;
 *   - op(A) is packed MR rows x kc at a time (zero-padded at the bottom edge) and stays in L1 while
 *     the micro-kernel runs along the panel's strips. Untransposed A is packed as a plain copy of
 *     MR rows (the "rows" layout) when the kernel reads that layout, so that neither operand's
 *     repacking needs a transposition in the common cases;
 *   - a micro-kernel accumulates an MR x NR tile of C in registers and adds alpha times it to C.
 * The micro-kernels come from a table (kf__skernel in kf_mat.h): generic C written to
 * auto-vectorize (always present, defined here), and AVX2/FMA, AVX-512 and NEON intrinsics in
 * mat_portable_*.c. The path is picked per call from the CPU's features (__builtin_cpu_supports
 * reads a table libgcc fills at load time), so nothing global is ever written.
 * All buffers live on the stack with fixed sizes (about 140 KiB, mostly the 128 KiB panel of B,
 * see KF__B_PANEL_BYTES): no heap, no VLAs.
 * Accumulation is in the element type (float for GEMM/SYRK), as BLAS does.
 */
#if !defined(KRONFAC_HAVE_BLAS)

#include "kf_mat.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- generic C micro-kernels ------------------------------------------------------------------ */

/* Register tile MR x NR of the generic kernels. They vectorize along MR (a contiguous column of
 * the packed A sliver, times one broadcast element of B): measured with GCC 12 and Clang 21 at
 * SSE2, AVX2 and AVX-512, this form vectorizes well with both compilers at every level, whereas
 * the form that vectorizes along NR collapses to scalar code with GCC at some tile sizes. MR is a
 * multiple of the vector width; MR x NR accumulators fit the register file. */
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

/* Cache blocking of the generic path: a KC x NC panel of B (128 KiB) in L2, an MR x KC sliver of
 * A and a KC x NR strip of B in L1. */
#define KF_S_KC 128
#define KF_S_NC 256
#define KF_D_KC 128
#define KF_D_NC 128

/* Fused multiply-add only where the hardware has it (otherwise fmaf is a slow library call).
 * With -std=c99, GCC does not contract a*b+c on its own (-ffp-contract=off). */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__aarch64__)
#define KF_FMAF(x, y, z) fmaf((x), (y), (z))
#define KF_FMA(x, y, z) fma((x), (y), (z))
#else
#define KF_FMAF(x, y, z) ((x) * (y) + (z))
#define KF_FMA(x, y, z) ((x) * (y) + (z))
#endif

/* C (MR x NR) += *alpha * ap (cols layout, MR x kc) * bp (kc x NR). Fixed trip counts let the
 * compiler unroll the tile loops, keep acc in vector registers and vectorize over i. */
#define KF_DEFINE_GENERIC_KERNEL(P, T, MR, NR, FMAOP)                                              \
    static void P##_generic_kernel(size_t kc, const T *restrict ap, const T *restrict bp,          \
                                   const T *restrict alpha, T *restrict c, size_t ldc)             \
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
                c[i * ldc + j] += *alpha * acc[i][j];                                              \
            }                                                                                      \
        }                                                                                          \
    }

KF_DEFINE_GENERIC_KERNEL(kf__sg, float, KF_S_MR, KF_S_NR, KF_FMAF)
KF_DEFINE_GENERIC_KERNEL(kf__dg, double, KF_D_MR, KF_D_NR, KF_FMA)

/* The double kernels have no intrinsics versions (kf__dgemm is off the hot paths), so
 * their table type is private to this file. */
typedef void (*kf__dkernel_fn)(size_t kc, const double *ap, const double *bp, const double *alpha,
                               double *c, size_t ldc);
typedef struct kf__dkernel {
    const char *name;
    size_t mr, nr, kc, nc, rows_ld;
    kf__dkernel_fn cols, rows;
} kf__dkernel;

#if defined(__AVX512F__) && defined(__FMA__)
#define KF_GENERIC_NAME "avx512f+fma"
#elif defined(__AVX2__) && defined(__FMA__)
#define KF_GENERIC_NAME "avx2+fma"
#elif defined(__AVX__)
#define KF_GENERIC_NAME "avx"
#elif defined(__SSE2__) || defined(_M_X64)
#define KF_GENERIC_NAME "sse2"
#else
#define KF_GENERIC_NAME "generic"
#endif

static const kf__skernel kf__s_generic = {KF_GENERIC_NAME, KF_S_MR, KF_S_NR, KF_S_KC, KF_S_NC, 0,
                                          kf__sg_generic_kernel, NULL};
static const kf__dkernel kf__d_generic = {KF_GENERIC_NAME, KF_D_MR, KF_D_NR, KF_D_KC, KF_D_NC, 0,
                                          kf__dg_generic_kernel, NULL};

typedef char kf__generic_tiles_fit[KF_S_MR <= KF__MR_MAX && KF_S_NR <= KF__NR_MAX &&
                                           KF_D_MR <= KF__MR_MAX && KF_D_NR <= KF__NR_MAX &&
                                           KF_S_NC % KF_S_NR == 0 && KF_D_NC % KF_D_NR == 0 &&
                                           KF_S_KC * KF_S_NC * 4 <= KF__B_PANEL_BYTES &&
                                           KF_D_KC * KF_D_NC * 8 <= KF__B_PANEL_BYTES &&
                                           KF_S_MR * KF_S_KC * 4 <= KF__A_SLIVER_BYTES &&
                                           KF_D_MR * KF_D_KC * 8 <= KF__A_SLIVER_BYTES
                                       ? 1
                                       : -1];

/* ---- the blocked driver ----------------------------------------------------------------------- */

/* The first 64-byte boundary at or after p (buffers are over-allocated by 64 bytes): aligned
 * packed panels keep every vector load of the kernels inside one cache line. */
static void *kf__align64(void *p)
{
    uintptr_t u = (uintptr_t)p;
    return (char *)p + ((64u - (unsigned)(u & 63u)) & 63u);
}

/* One template instantiated for float and double; upper != 0 restricts the work to the upper
 * triangle of C (j >= i) for SYRK. Prefix P names the functions, T is the element type, KT the
 * kernel table type. */
#define KF_DEFINE_DRIVER(P, T, KT)                                                                 \
                                                                                                   \
    /* C = beta C over the (upper part of the) m x n matrix; beta == 0 writes zeros unread. */     \
    static void P##_scale_c(size_t m, size_t n, T beta, T *restrict c, size_t ldc, int upper)      \
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
    /* Packs op(B)[pc..pc+kc) x [jc..jc+nc) into strips of NR columns: strip s holds kc rows of    \
     * NR values at bp + s * NR * kc, zero columns past nc. */                                     \
    static void P##_pack_b(int tb, const T *restrict b, size_t ldb, size_t pc, size_t kc,          \
                           size_t jc, size_t nc, size_t NR, T *restrict bp)                        \
    {                                                                                              \
        for (size_t jr = 0; jr < nc; jr += NR) {                                                   \
            size_t nr = nc - jr < NR ? nc - jr : NR;                                               \
            T *restrict dst = bp + jr * kc;                                                        \
            if (!tb) {                                                                             \
                const T *restrict src = b + pc * ldb + jc + jr;                                    \
                for (size_t p = 0; p < kc; p++) {                                                  \
                    T *restrict d = dst + p * NR;                                                  \
                    const T *restrict s = src + p * ldb;                                           \
                    size_t j = 0;                                                                  \
                    for (; j < nr; j++) {                                                          \
                        d[j] = s[j];                                                               \
                    }                                                                              \
                    for (; j < NR; j++) {                                                          \
                        d[j] = (T)0;                                                               \
                    }                                                                              \
                }                                                                                  \
            } else {                                                                               \
                /* B is stored n x k: column j of op(B) is a contiguous row of B. Four columns at  \
                 * a time, so that each written line of the strip gets four values per visit. */   \
                const T *restrict src = b + (jc + jr) * ldb + pc;                                  \
                size_t j = 0;                                                                      \
                for (; j + 4 <= nr; j += 4) {                                                      \
                    const T *restrict s0 = src + j * ldb, *restrict s1 = s0 + ldb;                 \
                    const T *restrict s2 = s1 + ldb, *restrict s3 = s2 + ldb;                      \
                    for (size_t p = 0; p < kc; p++) {                                              \
                        T *restrict d = dst + p * NR + j;                                          \
                        d[0] = s0[p];                                                              \
                        d[1] = s1[p];                                                              \
                        d[2] = s2[p];                                                              \
                        d[3] = s3[p];                                                              \
                    }                                                                              \
                }                                                                                  \
                for (; j < nr; j++) {                                                              \
                    const T *restrict s = src + j * ldb;                                           \
                    for (size_t p = 0; p < kc; p++) {                                              \
                        dst[p * NR + j] = s[p];                                                    \
                    }                                                                              \
                }                                                                                  \
                for (; j < NR; j++) {                                                              \
                    for (size_t p = 0; p < kc; p++) {                                              \
                        dst[p * NR + j] = (T)0;                                                    \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* Packs op(A)[ic..ic+mr) x [pc..pc+kc) in the cols layout ap[p * MR + i], zero rows below     \
     * mr. */                                                                                      \
    static void P##_pack_a_cols(int ta, const T *restrict a, size_t lda, size_t ic, size_t mr,     \
                                size_t pc, size_t kc, size_t MR, T *restrict ap)                   \
    {                                                                                              \
        if (!ta) {                                                                                 \
            for (size_t i = 0; i < MR; i++) {                                                      \
                if (i < mr) {                                                                      \
                    const T *restrict src = a + (ic + i) * lda + pc;                               \
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
                const T *restrict src = a + (pc + p) * lda + ic;                                   \
                T *restrict d = ap + p * MR;                                                       \
                size_t i = 0;                                                                      \
                for (; i < mr; i++) {                                                              \
                    d[i] = src[i];                                                                 \
                }                                                                                  \
                for (; i < MR; i++) {                                                              \
                    d[i] = (T)0;                                                                   \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* Packs untransposed A[ic..ic+mr) x [pc..pc+kc) in the rows layout ap[i * ld + p]: a copy of  \
     * each row (the padded stride keeps the rows in different L1 sets), zero rows below mr. */    \
    static void P##_pack_a_rows(const T *restrict a, size_t lda, size_t ic, size_t mr, size_t pc,  \
                                size_t kc, size_t MR, size_t ld, T *restrict ap)                   \
    {                                                                                              \
        for (size_t i = 0; i < MR; i++) {                                                          \
            if (i < mr) {                                                                          \
                memcpy(ap + i * ld, a + (ic + i) * lda + pc, kc * sizeof(T));                      \
            } else {                                                                               \
                memset(ap + i * ld, 0, kc * sizeof(T));                                            \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* C += alpha op(A) op(B) after C was scaled by beta, with the kernels of table kt. */         \
    static void P##_blocked(const KT *kt, int ta, int tb, int upper, size_t m, size_t n, size_t k, \
                            T alpha, const T *a, size_t lda, const T *b, size_t ldb, T *c,         \
                            size_t ldc)                                                            \
    {                                                                                              \
        T bbuf[KF__B_PANEL_BYTES / sizeof(T) + 64 / sizeof(T)];                                    \
        T abuf[KF__A_SLIVER_BYTES / sizeof(T) + 64 / sizeof(T)];                                   \
        T tile[KF__MR_MAX * KF__NR_MAX];                                                           \
        T *bp = (T *)kf__align64(bbuf), *ap = (T *)kf__align64(abuf);                              \
        const size_t MR = kt->mr, NR = kt->nr, KC = kt->kc, NC = kt->nc;                           \
        const int rows = !ta && kt->rows != NULL;                                                  \
        for (size_t jc = 0; jc < n; jc += NC) {                                                    \
            size_t nc = n - jc < NC ? n - jc : NC;                                                 \
            /* For the upper triangle, rows at or beyond the panel's last column add nothing. */   \
            size_t mend = upper && jc + nc < m ? jc + nc : m;                                      \
            for (size_t pc = 0; pc < k; pc += KC) {                                                \
                size_t kc = k - pc < KC ? k - pc : KC;                                             \
                P##_pack_b(tb, b, ldb, pc, kc, jc, nc, NR, bp);                                    \
                for (size_t ic = 0; ic < mend; ic += MR) {                                         \
                    size_t mr = mend - ic < MR ? mend - ic : MR;                                   \
                    if (rows) {                                                                    \
                        P##_pack_a_rows(a, lda, ic, mr, pc, kc, MR, kt->rows_ld, ap);              \
                    } else {                                                                       \
                        P##_pack_a_cols(ta, a, lda, ic, mr, pc, kc, MR, ap);                       \
                    }                                                                              \
                    for (size_t jr = 0; jr < nc; jr += NR) {                                       \
                        size_t nr = nc - jr < NR ? nc - jr : NR;                                   \
                        size_t j0 = jc + jr;                                                       \
                        T *cij = c + ic * ldc + j0;                                                \
                        if (upper && j0 + nr <= ic) {                                              \
                            continue; /* tile strictly below the diagonal */                       \
                        }                                                                          \
                        if (mr == MR && nr == NR && !(upper && ic + MR - 1 > j0)) {                \
                            (rows ? kt->rows : kt->cols)(kc, ap, bp + jr * kc, &alpha, cij, ldc);  \
                            continue;                                                              \
                        }                                                                          \
                        /* Edge or diagonal tile: compute it whole in a scratch tile, add the      \
                         * part that exists (and, for SYRK, lies on or above the diagonal). */     \
                        for (size_t t = 0; t < MR * NR; t++) {                                     \
                            tile[t] = (T)0;                                                        \
                        }                                                                          \
                        (rows ? kt->rows : kt->cols)(kc, ap, bp + jr * kc, &alpha, tile, NR);      \
                        for (size_t i = 0; i < mr; i++) {                                          \
                            size_t jstart = upper && ic + i > j0 ? ic + i - j0 : 0;                \
                            for (size_t j = jstart; j < nr; j++) {                                 \
                                cij[i * ldc + j] += tile[i * NR + j];                              \
                            }                                                                      \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

KF_DEFINE_DRIVER(kf__sg, float, kf__skernel)
KF_DEFINE_DRIVER(kf__dg, double, kf__dkernel)

/* ---- path selection --------------------------------------------------------------------------- */

#if defined(KF__X86_PATHS)
static int kf__cpu_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* libgcc / compiler-rt only report AVX-512 when the OS saves the ZMM state (XCR0). */
static int kf__cpu_avx512(void)
{
    return kf__cpu_avx2() && __builtin_cpu_supports("avx512f");
}
#endif

/* The fastest path this CPU runs. */
static int kf__best_path(void)
{
#if defined(KF__X86_PATHS)
    if (kf__cpu_avx512()) {
        return KF__PATH_AVX512;
    }
    if (kf__cpu_avx2()) {
        return KF__PATH_AVX2;
    }
#endif
#if defined(KF__NEON_PATH)
    return KF__PATH_NEON;
#else
    return KF__PATH_GENERIC;
#endif
}

/* The single-precision table of `path`, or NULL if it is not compiled in or the CPU lacks it. */
static const kf__skernel *kf__s_table_or_null(int path)
{
    switch (path) {
    case KF__PATH_GENERIC:
        return &kf__s_generic;
#if defined(KF__X86_PATHS)
    case KF__PATH_AVX2:
        return kf__cpu_avx2() ? kf__skernel_avx2() : NULL;
    case KF__PATH_AVX512:
        return kf__cpu_avx512() ? kf__skernel_avx512() : NULL;
#endif
#if defined(KF__NEON_PATH)
    case KF__PATH_NEON:
        return kf__skernel_neon();
#endif
    default:
        return NULL;
    }
}

static const kf__skernel *kf__s_table(int path)
{
    const kf__skernel *kt = kf__s_table_or_null(path);
    return kt ? kt : &kf__s_generic;
}

const char *kf__mat_path(int path)
{
    const kf__skernel *kt = kf__s_table_or_null(path);
    return kt ? kt->name : NULL;
}

/* ---- the kernels of kf_mat.h ------------------------------------------------------------------ */

void kf__gemm_on(int path, int ta, int tb, size_t m, size_t n, size_t k, float alpha,
                 const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                 size_t ldc)
{
    if (beta != 1.0f) {
        kf__sg_scale_c(m, n, beta, c, ldc, 0);
    }
    /* As in BLAS, alpha == 0 leaves A and B unread. */
    if (k == 0 || alpha == 0.0f) {
        return;
    }
    kf__sg_blocked(kf__s_table(path), ta, tb, 0, m, n, k, alpha, a, lda, b, ldb, c, ldc);
}

void kf__gemm(int ta, int tb, size_t m, size_t n, size_t k, float alpha, const float *a,
              size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    kf__gemm_on(kf__best_path(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
    kf__dg_blocked(&kf__d_generic, ta, tb, 0, m, n, k, alpha, a, lda, b, ldb, c, ldc);
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

void kf__syrk_on(int path, size_t k, size_t n, float alpha, const float *x, size_t ldx,
                 float beta, float *c, size_t ldc)
{
    /* Only the upper triangle of C is read, computed and then mirrored, like BLAS with uplo=U:
     * the driver skips the tiles below the diagonal, so this costs about half a GEMM. */
    if (beta != 1.0f) {
        kf__sg_scale_c(n, n, beta, c, ldc, 1);
    }
    if (k != 0 && alpha != 0.0f) {
        /* X^T X: op(A) = X^T (A = X stored k x n, transposed), op(B) = X. */
        kf__sg_blocked(kf__s_table(path), 1, 0, 1, n, n, k, alpha, x, ldx, x, ldx, c, ldc);
    }
    kf__mirror_upper(n, c, ldc);
}

void kf__syrk_lower(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta,
                    float *c, size_t ldc)
{
    /* The blocked driver computes the upper triangle and mirrors it: hand it the lower one. */
    if (beta != 0.0f) {
        for (size_t i = 1; i < n; i++) {
            for (size_t j = 0; j < i; j++) {
                c[j * ldc + i] = c[i * ldc + j];
            }
        }
    }
    kf__syrk(k, n, alpha, x, ldx, beta, c, ldc);
}

void kf__colsum(size_t m, size_t n, float alpha, const float *x, size_t ldx, float *y)
{
    /* Along the rows (unit stride, vectorised), accumulated in y. */
    for (size_t j = 0; j < n; j++) {
        y[j] = 0.0f;
    }
    for (size_t i = 0; i < m; i++) {
        const float *row = x + i * ldx;
        for (size_t j = 0; j < n; j++) {
            y[j] += row[j];
        }
    }
    for (size_t j = 0; j < n; j++) {
        y[j] *= alpha;
    }
}

void kf__syrk(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta, float *c,
              size_t ldc)
{
    kf__syrk_on(kf__best_path(), k, n, alpha, x, ldx, beta, c, ldc);
}

const char *kf__mat_backend(void)
{
    return "portable";
}

const char *kf__mat_simd(void)
{
    return kf__s_table(kf__best_path())->name;
}

#else
/* The BLAS build uses mat_blas.c; keep this translation unit non-empty for -Wpedantic. */
typedef int kf__mat_portable_unused;
#endif
