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

/* The same in double (used by the linear algebra and the eigenbasis code). */
void kf__dgemm(int ta, int tb, size_t m, size_t n, size_t k, double alpha, const double *a,
               size_t lda, const double *b, size_t ldb, double beta, double *c, size_t ldc);

/* Name of the kernel backend and SIMD level compiled in, e.g. "openblas" / "portable", "avx2+fma". */
const char *kf__mat_backend(void);
const char *kf__mat_simd(void);

#endif /* KF_MAT_H */
