/* Raw dense symmetric linear algebra on row-major matrices: no validation, no allocation (the caller
 * provides the workspace). Implemented by linalg_lapack.c (OpenBLAS's LAPACK) and linalg_portable.c
 * (our own), exactly one compiled, chosen by KRONFAC_HAVE_BLAS. Row-major lower triangle == column-
 * major upper triangle, which is how the LAPACK version maps its arguments. */
#ifndef KF_LINALG_H
#define KF_LINALG_H

#include <stddef.h>

/* In place: replaces the symmetric positive definite n x n matrix A (given by its row-major lower
 * triangle, diagonal included; the strictly upper triangle is not read) by its inverse, both
 * triangles written. Returns 0 on success, non-zero if A is not positive definite
 * (then the contents of A are unspecified). No NaN checks: callers check finiteness first. */
int kf__spd_inverse_d(size_t n, double *a, size_t lda);
int kf__spd_inverse_f(size_t n, float *a, size_t lda);

/* In place: the Cholesky factor of the symmetric positive definite n x n matrix A (given by its
 * row-major lower triangle, as above): on success the row-major LOWER triangle (diagonal included) holds L with A = L L^T; the
 * strictly upper triangle is unspecified. Returns non-zero if A is not positive definite. */
int kf__spd_cholesky_d(size_t n, double *a, size_t lda);
int kf__spd_cholesky_f(size_t n, float *a, size_t lda);

/* Symmetric eigendecomposition: A (n x n, both triangles, overwritten) = Q diag(w) Q^T.
 * On success w (n) is ascending and the columns of A hold the eigenvectors (Q in place of A).
 * work must hold kf__sym_eig_work(n) doubles, iwork kf__sym_eig_iwork(n) ints.
 * Returns 0 on success, non-zero when the solver did not converge. */
size_t kf__sym_eig_work(size_t n);
size_t kf__sym_eig_iwork(size_t n);
int kf__sym_eig_d(size_t n, double *a, size_t lda, double *w, double *work, int *iwork);

/* "lapack" or "portable". */
const char *kf__linalg_backend(void);

#endif /* KF_LINALG_H */
