/* linalg_lapack.c - the kf_linalg.h contract through OpenBLAS's LAPACK (?potrf/?potri, dsyevd).
 *
 * Row-major storage seen as column-major is the transpose. The matrices here are symmetric, so the
 * column-major upper triangle ('U') is the row-major lower triangle, and LAPACK's results only need
 * mirroring (inverse) or transposing (eigenvectors) to read right in row-major. */
#if defined(KRONFAC_HAVE_BLAS)

#include "kf_linalg.h"

#include <limits.h>
#include <stdint.h>

/* There is no lapacke.h to rely on, so the Fortran symbols are declared here. INTEGER is int (LP64
 * OpenBLAS; the ILP64 build has other symbol names). The hidden lengths of the CHARACTER*1 arguments
 * are not passed, as in most C code calling OpenBLAS: the routines declare those arguments with
 * length 1 and never read the hidden lengths (?potrf is C code in OpenBLAS), and none of them ends in
 * a tail call that could reuse the caller's stack argument area (GCC PR 90329). */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info);
void spotri_(const char *uplo, const int *n, float *a, const int *lda, int *info);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork,
             int *info);

/* Tile edge of the blocked transposes: two 32 x 32 double tiles stay in L1. */
#define KF_TILE 32

/* Copies the row-major lower triangle onto the upper one, tile by tile (the strided side of a
 * plain loop would miss the cache on every element for large n). */
static void mirror_lower_d(size_t n, double *a, size_t lda)
{
    for (size_t ib = 0; ib < n; ib += KF_TILE) {
        size_t ie = ib + KF_TILE < n ? ib + KF_TILE : n;
        for (size_t jb = ib; jb < n; jb += KF_TILE) {
            size_t je = jb + KF_TILE < n ? jb + KF_TILE : n;
            for (size_t i = ib; i < ie; i++) {
                for (size_t j = (jb > i + 1 ? jb : i + 1); j < je; j++) {
                    a[i * lda + j] = a[j * lda + i];
                }
            }
        }
    }
}

static void mirror_lower_f(size_t n, float *a, size_t lda)
{
    for (size_t ib = 0; ib < n; ib += KF_TILE) {
        size_t ie = ib + KF_TILE < n ? ib + KF_TILE : n;
        for (size_t jb = ib; jb < n; jb += KF_TILE) {
            size_t je = jb + KF_TILE < n ? jb + KF_TILE : n;
            for (size_t i = ib; i < ie; i++) {
                for (size_t j = (jb > i + 1 ? jb : i + 1); j < je; j++) {
                    a[i * lda + j] = a[j * lda + i];
                }
            }
        }
    }
}

/* In-place transpose of the n x n matrix, tile by tile. */
static void transpose_d(size_t n, double *a, size_t lda)
{
    for (size_t ib = 0; ib < n; ib += KF_TILE) {
        size_t ie = ib + KF_TILE < n ? ib + KF_TILE : n;
        for (size_t jb = ib; jb < n; jb += KF_TILE) {
            size_t je = jb + KF_TILE < n ? jb + KF_TILE : n;
            for (size_t i = ib; i < ie; i++) {
                for (size_t j = (jb > i + 1 ? jb : i + 1); j < je; j++) {
                    double t = a[i * lda + j];
                    a[i * lda + j] = a[j * lda + i];
                    a[j * lda + i] = t;
                }
            }
        }
    }
}

/* LAPACK takes int sizes: anything larger is refused rather than truncated. */
static int fits_int(size_t n, size_t lda)
{
    return n <= (size_t)INT_MAX && lda <= (size_t)INT_MAX && lda >= n;
}

int kf__spd_inverse_d(size_t n, double *a, size_t lda)
{
    int in, ilda, info = 0;
    if (n == 0) {
        return 0;
    }
    if (!fits_int(n, lda)) {
        return 1;
    }
    in = (int)n;
    ilda = (int)lda;
    dpotrf_("U", &in, a, &ilda, &info);
    if (info != 0) {
        return 1;
    }
    dpotri_("U", &in, a, &ilda, &info);
    if (info != 0) {
        return 1;
    }
    mirror_lower_d(n, a, lda);
    return 0;
}

int kf__spd_inverse_f(size_t n, float *a, size_t lda)
{
    int in, ilda, info = 0;
    if (n == 0) {
        return 0;
    }
    if (!fits_int(n, lda)) {
        return 1;
    }
    in = (int)n;
    ilda = (int)lda;
    spotrf_("U", &in, a, &ilda, &info);
    if (info != 0) {
        return 1;
    }
    spotri_("U", &in, a, &ilda, &info);
    if (info != 0) {
        return 1;
    }
    mirror_lower_f(n, a, lda);
    return 0;
}

/* potrf alone: the column-major upper factor U (A = U^T U) is the row-major lower L = U^T. */
int kf__spd_cholesky_d(size_t n, double *a, size_t lda)
{
    int in, ilda, info = 0;
    if (n == 0) {
        return 0;
    }
    if (!fits_int(n, lda)) {
        return 1;
    }
    in = (int)n;
    ilda = (int)lda;
    dpotrf_("U", &in, a, &ilda, &info);
    return info != 0;
}

int kf__spd_cholesky_f(size_t n, float *a, size_t lda)
{
    int in, ilda, info = 0;
    if (n == 0) {
        return 0;
    }
    if (!fits_int(n, lda)) {
        return 1;
    }
    in = (int)n;
    ilda = (int)lda;
    spotrf_("U", &in, a, &ilda, &info);
    return info != 0;
}

/* dsyevd's minimum workspace for jobz = 'V': 1 + 6n + 2n^2 doubles and 3 + 5n ints. A size that
 * does not fit size_t saturates at SIZE_MAX so that the caller's allocation fails cleanly. */
size_t kf__sym_eig_work(size_t n)
{
    size_t nn;
    if (n != 0 && n > SIZE_MAX / n) {
        return SIZE_MAX;
    }
    nn = n * n; /* n <= 2^(bits/2) here, so 6n + 1 cannot overflow */
    if (nn > (SIZE_MAX - 1 - 6 * n) / 2) {
        return SIZE_MAX;
    }
    return 1 + 6 * n + 2 * nn;
}

size_t kf__sym_eig_iwork(size_t n)
{
    if (n > (SIZE_MAX - 3) / 5) {
        return SIZE_MAX;
    }
    return 3 + 5 * n;
}

int kf__sym_eig_d(size_t n, double *a, size_t lda, double *w, double *work, int *iwork)
{
    int in, ilda, lwork, liwork, info = 0;
    size_t lw, liw;
    if (n == 0) {
        return 0;
    }
    lw = kf__sym_eig_work(n);
    liw = kf__sym_eig_iwork(n);
    if (!fits_int(n, lda) || lw > (size_t)INT_MAX || liw > (size_t)INT_MAX) {
        return 1;
    }
    in = (int)n;
    ilda = (int)lda;
    lwork = (int)lw;
    liwork = (int)liw;
    dsyevd_("V", "U", &in, a, &ilda, w, work, &lwork, iwork, &liwork, &info);
    if (info != 0) {
        return 1;
    }
    /* dsyevd's column-major eigenvectors are the rows of the row-major array. */
    transpose_d(n, a, lda);
    return 0;
}

const char *kf__linalg_backend(void)
{
    return "lapack";
}

#else
typedef int kf__linalg_lapack_unused;
#endif /* KRONFAC_HAVE_BLAS */
