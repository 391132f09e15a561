/* Raw dense kernels: no validation (the public wrappers in mat.c validate). Row-major.
 * Implemented twice: mat_blas.c (OpenBLAS CBLAS) and mat_portable.c (C99, cache-blocked);
 * exactly one is compiled, chosen by KRONFAC_HAVE_BLAS. */
#ifndef KF_MAT_H
#define KF_MAT_H

#include <stddef.h>

/* C (m x n) = alpha op(A) op(B) + beta C; ta/tb are 0 (no transpose) or 1 (transpose).
 * k may be 0. beta == 0 means C is not read. */
void kf__gemm(int ta, int tb, size_t m, size_t n, size_t k, float alpha, const float *a,
              size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* C (n x n) = alpha X^T X + beta C, X is k x n; both triangles written. beta == 0: C not read. */
void kf__syrk(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta, float *c,
              size_t ldc);

/* The lower triangle (diagonal included) of C (n x n) = alpha X^T X + beta C's lower triangle, X k x
 * n; the strictly upper triangle is unspecified afterwards (BLAS leaves it, the portable kernels
 * overwrite it). For callers that read only the lower triangle: no mirror pass. */
void kf__syrk_lower(size_t k, size_t n, float alpha, const float *x, size_t ldx, float beta,
                    float *c, size_t ldc);
/* y (n) = alpha * (the column sums of X, m x n); y is not read. */
void kf__colsum(size_t m, size_t n, float alpha, const float *x, size_t ldx, float *y);
/* The same in double (used by the linear algebra and the eigenbasis code). */
void kf__dgemm(int ta, int tb, size_t m, size_t n, size_t k, double alpha, const double *a,
               size_t lda, const double *b, size_t ldb, double beta, double *c, size_t ldc);

/* Name of the kernel backend ("openblas" / "portable") and of the SIMD path in use ("openblas",
 * or the portable path chosen for this CPU: "avx512f", "avx2+fma", "neon", "sse2", "generic"). */
const char *kf__mat_backend(void);
const char *kf__mat_simd(void);

/* ---- Portable backend internals (mat_portable*.c; absent from the BLAS build) ------------------
 * The blocked driver in mat_portable.c packs the operands and calls a register-tiled micro-kernel
 * through a kf__skernel table; the generic C table is always present, per-ISA tables (AVX2/FMA,
 * AVX-512, NEON) live in their own files. The path is chosen per call from the CPU's features
 * (a cheap, read-only query), so there is no mutable global state. */
#if !defined(KRONFAC_HAVE_BLAS)

/* x86-64 intrinsics paths: GCC/clang function attributes select the ISA per function, so no
 * compiler flag is needed. Not on 32-bit x86, whose 8 vector registers cannot hold the tiles, and
 * not with GCC on Windows, which cannot align the stack for spilled AVX vectors (GCC bug 54412). */
#if defined(__GNUC__) && defined(__x86_64__) && (!defined(_WIN32) || defined(__clang__))
#define KF__X86_PATHS 1
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#define KF__NEON_PATH 1
#endif

/* Limits the driver's stack buffers are sized for (about 140 KiB in all). The B panel is the
 * lever: measured on AVX-512, 96 KiB costs about 5% and 64 KiB about 10% at n >= 1024 (A is
 * repacked once per panel), while 512 KiB would gain about 12%. */
#define KF__MR_MAX 16             /* register tile rows */
#define KF__NR_MAX 32             /* register tile columns */
#define KF__A_SLIVER_BYTES 9216   /* packed MR x kc sliver of op(A): 16 x 144 floats */
#define KF__B_PANEL_BYTES 131072  /* packed kc x nc panel of op(B) */

/* Micro-kernel: C (MR x NR at c, row stride ldc) += *alpha * A B, summed over kc steps (alpha is
 * passed by address so that it holds no register through the k loop, where the tallest tiles need
 * nearly the whole register file). The packed B strip holds kc rows of NR values
 * (bp[p * NR + j]). The packed A sliver holds A(i, p) at ap[p * MR + i] (the "cols" layout, for
 * transposed A) or at ap[i * rows_ld + p] (the "rows" layout, a plain copy of MR rows of
 * untransposed A). */
typedef void (*kf__skernel_fn)(size_t kc, const float *ap, const float *bp, const float *alpha,
                               float *c, size_t ldc);
typedef struct kf__skernel {
    const char *name; /* what kf__mat_simd() reports */
    size_t mr, nr;    /* register tile, mr <= KF__MR_MAX, nr <= KF__NR_MAX */
    size_t kc, nc;    /* cache blocks: kc x nc panel of B, nc a multiple of nr */
    size_t rows_ld;   /* row stride of the rows layout (>= kc); 0 when `rows` is NULL */
    kf__skernel_fn cols, rows; /* rows may be NULL: then A is always packed in the cols layout */
} kf__skernel;

#if defined(KF__X86_PATHS)
const kf__skernel *kf__skernel_avx2(void);   /* mat_portable_avx2.c */
const kf__skernel *kf__skernel_avx512(void); /* mat_portable_avx512.c */
#endif
#if defined(KF__NEON_PATH)
const kf__skernel *kf__skernel_neon(void); /* mat_portable_neon.c */
#endif

/* Test hooks: paths 0 .. KF__PATHS-1; the generic one is always available. */
enum { KF__PATH_GENERIC, KF__PATH_AVX2, KF__PATH_AVX512, KF__PATH_NEON, KF__PATHS };
/* Name of `path` if it is compiled in and this CPU runs it, else NULL. */
const char *kf__mat_path(int path);
/* kf__gemm / kf__syrk on a given path (an unavailable one falls back to the generic path). */
void kf__gemm_on(int path, int ta, int tb, size_t m, size_t n, size_t k, float alpha,
                 const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                 size_t ldc);
void kf__syrk_on(int path, size_t k, size_t n, float alpha, const float *x, size_t ldx,
                 float beta, float *c, size_t ldc);

#endif /* !KRONFAC_HAVE_BLAS */

#endif /* KF_MAT_H */
