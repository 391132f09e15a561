/* linalg_portable.c - the kf_linalg.h contract in plain C99, for builds without OpenBLAS.
 *
 * Inverse: the input is symmetric with both triangles given, so the factorisation works on the
 * row-major UPPER triangle, A = U^T U, where every inner loop runs along a row (contiguous, and an
 * axpy that compilers vectorise without reassociating sums). The strictly lower triangle is then
 * free scratch: X = U^{-1} is formed in place in the upper triangle, copied transposed into the
 * lower one, and A^{-1} = X X^T is accumulated back into the upper triangle from there, again by
 * row axpys. Each O(n^3) pass is blocked over KF_NB rows so that a row of the other operand is
 * loaded once per block rather than once per row. No allocation anywhere.
 *
 * Eigendecomposition: Householder tridiagonalisation, explicit formation of the orthogonal factor,
 * then implicit symmetric QR steps with Wilkinson shifts. The rotations are applied to the
 * eigenvectors stored as rows (contiguous), which are transposed into columns at the end. */
#if !defined(KRONFAC_HAVE_BLAS)

#include "kf_linalg.h"

#include <float.h>
#include <math.h>
#include <stdint.h>

/* Rows per block of the O(n^3) passes: a block of 32 rows of a 1000-wide double matrix (256 KB)
 * stays in L2 while the other operand streams past it once. */
#define KF_NB 32
/* Tile edge of the blocked transposes. */
#define KF_TILE 32

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* ---- double kernels -------------------------------------------------------------------------- */

/* y += c x */
static void axpy_d(size_t len, double c, const double *restrict x, double *restrict y)
{
    for (size_t j = 0; j < len; j++) {
        y[j] += c * x[j];
    }
}

/* y += c0 x0 + c1 x1 + c2 x2 + c3 x3: four updates per load and store of y. */
static void axpy4_d(size_t len, double c0, const double *restrict x0, double c1,
                    const double *restrict x1, double c2, const double *restrict x2, double c3,
                    const double *restrict x3, double *restrict y)
{
    for (size_t j = 0; j < len; j++) {
        y[j] += c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j];
    }
}

/* Copies one strict triangle onto the other, tile by tile: the upper onto the lower with
 * to_lower, else the lower (the callers' triangle) onto the upper (the factorisation's). */
static void mirror_d(size_t n, double *a, size_t lda, int to_lower)
{
    for (size_t ib = 0; ib < n; ib += KF_TILE) {
        size_t ie = min_size(ib + KF_TILE, n);
        for (size_t jb = 0; jb <= ib; jb += KF_TILE) {
            size_t je = min_size(jb + KF_TILE, n);
            for (size_t i = ib; i < ie; i++) {
                size_t jend = min_size(je, i);
                for (size_t j = jb; j < jend; j++) {
                    if (to_lower) {
                        a[i * lda + j] = a[j * lda + i];
                    } else {
                        a[j * lda + i] = a[i * lda + j];
                    }
                }
            }
        }
    }
}

/* In-place transpose of the n x n matrix, tile by tile. */
static void transpose_d(size_t n, double *a, size_t lda)
{
    for (size_t ib = 0; ib < n; ib += KF_TILE) {
        size_t ie = min_size(ib + KF_TILE, n);
        for (size_t jb = 0; jb <= ib; jb += KF_TILE) {
            size_t je = min_size(jb + KF_TILE, n);
            for (size_t i = ib; i < ie; i++) {
                size_t jend = min_size(je, i);
                for (size_t j = jb; j < jend; j++) {
                    double t = a[i * lda + j];
                    a[i * lda + j] = a[j * lda + i];
                    a[j * lda + i] = t;
                }
            }
        }
    }
}

/* A = U^T U in the upper triangle (right-looking, by panels of KF_NB rows). Row k of U is row k of
 * the array from the diagonal on, so the update of a trailing row i, A[i][i:] -= U[k][i] U[k][i:],
 * is an axpy along rows. Returns non-zero at the first pivot that is not positive and finite. */
static int chol_upper_d(size_t n, double *a, size_t lda)
{
    for (size_t k0 = 0; k0 < n; k0 += KF_NB) {
        size_t k1 = min_size(k0 + KF_NB, n);
        /* The panel rows k0..k1-1 hold every update from earlier panels; finish them. */
        for (size_t k = k0; k < k1; k++) {
            double *rk = a + k * lda;
            double d = rk[k];
            if (!(d > 0.0) || !(d <= DBL_MAX)) {
                return 1;
            }
            d = sqrt(d);
            rk[k] = d;
            for (size_t j = k + 1; j < n; j++) {
                rk[j] /= d;
            }
            for (size_t i = k + 1; i < k1; i++) {
                axpy_d(n - i, -rk[i], rk + i, a + i * lda + i);
            }
        }
        /* One pass over the trailing rows applies the whole panel. */
        for (size_t i = k1; i < n; i++) {
            double *ri = a + i * lda + i;
            size_t k = k0;
            for (; k + 4 <= k1; k += 4) {
                const double *r0 = a + k * lda, *r1 = r0 + lda, *r2 = r1 + lda, *r3 = r2 + lda;
                axpy4_d(n - i, -r0[i], r0 + i, -r1[i], r1 + i, -r2[i], r2 + i, -r3[i], r3 + i, ri);
            }
            for (; k < k1; k++) {
                const double *rk = a + k * lda;
                axpy_d(n - i, -rk[i], rk + i, ri);
            }
        }
    }
    return 0;
}

/* One step of the in-place row inverse (see trinv_upper_d): folds row k of X into row i. */
static void trinv_step_d(size_t n, double *ri, const double *xk, size_t k)
{
    double c = ri[k]; /* still U[i][k]: only steps k' <= k write entry k */
    ri[k] = c * xk[k];
    axpy_d(n - k - 1, c, xk + k + 1, ri + k + 1);
}

/* X = U^{-1} in place in the upper triangle. From U X = I, row i of X is
 *   X[i][i] = 1/U[i][i],  X[i][j] = -(sum_{i<k<=j} U[i][k] X[k][j]) / U[i][i]  (j > i),
 * which needs only the rows below it. The sum is accumulated in place in row i with k running
 * downwards: at step k, entry k has received nothing yet (X[k'][k] = 0 for k' > k), so it still
 * holds the coefficient U[i][k]. Rows are done in blocks from the bottom: first every row of the
 * block takes the rows below the block (each of those rows read once per block), then the rows
 * inside the block are finished bottom-up. */
static void trinv_upper_d(size_t n, double *a, size_t lda)
{
    size_t i1 = n;
    while (i1 > 0) {
        size_t i0 = i1 > KF_NB ? i1 - KF_NB : 0;
        for (size_t k = n; k-- > i1;) {
            const double *xk = a + k * lda;
            for (size_t i = i0; i < i1; i++) {
                trinv_step_d(n, a + i * lda, xk, k);
            }
        }
        for (size_t i = i1; i-- > i0;) {
            double *ri = a + i * lda;
            double inv;
            for (size_t k = i1; k-- > i + 1;) {
                trinv_step_d(n, ri, a + k * lda, k);
            }
            inv = 1.0 / ri[i];
            ri[i] = inv;
            for (size_t j = i + 1; j < n; j++) {
                ri[j] *= -inv;
            }
        }
        i1 = i0;
    }
}

/* W = X X^T into the upper triangle (diagonal included), from Y = X^T held in the lower triangle
 * (diagonal included): W[i][j] = sum_{k>=j} Y[k][i] Y[k][j] for i <= j, i.e. row i of W gathers
 * Y[k][i] * Y[k][i..k] over k >= i, an axpy along row k of Y. The two triangles only share the
 * diagonal; the diagonal of a block's rows is accumulated aside and written after the block, when
 * no later read of Y needs it. */
static void lauum_lower_to_upper_d(size_t n, double *a, size_t lda)
{
    double diag[KF_NB];
    for (size_t i0 = 0; i0 < n; i0 += KF_NB) {
        size_t i1 = min_size(i0 + KF_NB, n);
        for (size_t i = i0; i < i1; i++) {
            double *ri = a + i * lda;
            diag[i - i0] = 0.0;
            for (size_t j = i + 1; j < n; j++) {
                ri[j] = 0.0;
            }
        }
        for (size_t k = i0; k < n; k++) {
            const double *yk = a + k * lda;
            size_t iend = min_size(i1, k + 1);
            for (size_t i = i0; i < iend; i++) {
                double c = yk[i];
                diag[i - i0] += c * c;
                axpy_d(k - i, c, yk + i + 1, a + i * lda + i + 1);
            }
        }
        for (size_t i = i0; i < i1; i++) {
            a[i * lda + i] = diag[i - i0];
        }
    }
}

int kf__spd_inverse_d(size_t n, double *a, size_t lda)
{
    mirror_d(n, a, lda, 0);
    if (chol_upper_d(n, a, lda) != 0) {
        return 1;
    }
    trinv_upper_d(n, a, lda);
    mirror_d(n, a, lda, 1);
    lauum_lower_to_upper_d(n, a, lda);
    mirror_d(n, a, lda, 1);
    return 0;
}

/* The upper factor U (A = U^T U), copied transposed into the lower triangle: L = U^T. */
int kf__spd_cholesky_d(size_t n, double *a, size_t lda)
{
    mirror_d(n, a, lda, 0);
    if (chol_upper_d(n, a, lda) != 0) {
        return 1;
    }
    mirror_d(n, a, lda, 1);
    return 0;
}

/* ---- float kernels: the double ones above, line by line, in float ---------------------------- */

static void axpy_f(size_t len, float c, const float *restrict x, float *restrict y)
{
    for (size_t j = 0; j < len; j++) {
        y[j] += c * x[j];
    }
}

static void axpy4_f(size_t len, float c0, const float *restrict x0, float c1,
                    const float *restrict x1, float c2, const float *restrict x2, float c3,
                    const float *restrict x3, float *restrict y)
{
    for (size_t j = 0; j < len; j++) {
        y[j] += c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j];
    }
}

static void mirror_f(size_t n, float *a, size_t lda, int to_lower)
{
    for (size_t ib = 0; ib < n; ib += KF_TILE) {
        size_t ie = min_size(ib + KF_TILE, n);
        for (size_t jb = 0; jb <= ib; jb += KF_TILE) {
            size_t je = min_size(jb + KF_TILE, n);
            for (size_t i = ib; i < ie; i++) {
                size_t jend = min_size(je, i);
                for (size_t j = jb; j < jend; j++) {
                    if (to_lower) {
                        a[i * lda + j] = a[j * lda + i];
                    } else {
                        a[j * lda + i] = a[i * lda + j];
                    }
                }
            }
        }
    }
}

static int chol_upper_f(size_t n, float *a, size_t lda)
{
    for (size_t k0 = 0; k0 < n; k0 += KF_NB) {
        size_t k1 = min_size(k0 + KF_NB, n);
        for (size_t k = k0; k < k1; k++) {
            float *rk = a + k * lda;
            float d = rk[k];
            if (!(d > 0.0f) || !(d <= FLT_MAX)) {
                return 1;
            }
            d = sqrtf(d);
            rk[k] = d;
            for (size_t j = k + 1; j < n; j++) {
                rk[j] /= d;
            }
            for (size_t i = k + 1; i < k1; i++) {
                axpy_f(n - i, -rk[i], rk + i, a + i * lda + i);
            }
        }
        for (size_t i = k1; i < n; i++) {
            float *ri = a + i * lda + i;
            size_t k = k0;
            for (; k + 4 <= k1; k += 4) {
                const float *r0 = a + k * lda, *r1 = r0 + lda, *r2 = r1 + lda, *r3 = r2 + lda;
                axpy4_f(n - i, -r0[i], r0 + i, -r1[i], r1 + i, -r2[i], r2 + i, -r3[i], r3 + i, ri);
            }
            for (; k < k1; k++) {
                const float *rk = a + k * lda;
                axpy_f(n - i, -rk[i], rk + i, ri);
            }
        }
    }
    return 0;
}

static void trinv_step_f(size_t n, float *ri, const float *xk, size_t k)
{
    float c = ri[k];
    ri[k] = c * xk[k];
    axpy_f(n - k - 1, c, xk + k + 1, ri + k + 1);
}

static void trinv_upper_f(size_t n, float *a, size_t lda)
{
    size_t i1 = n;
    while (i1 > 0) {
        size_t i0 = i1 > KF_NB ? i1 - KF_NB : 0;
        for (size_t k = n; k-- > i1;) {
            const float *xk = a + k * lda;
            for (size_t i = i0; i < i1; i++) {
                trinv_step_f(n, a + i * lda, xk, k);
            }
        }
        for (size_t i = i1; i-- > i0;) {
            float *ri = a + i * lda;
            float inv;
            for (size_t k = i1; k-- > i + 1;) {
                trinv_step_f(n, ri, a + k * lda, k);
            }
            inv = 1.0f / ri[i];
            ri[i] = inv;
            for (size_t j = i + 1; j < n; j++) {
                ri[j] *= -inv;
            }
        }
        i1 = i0;
    }
}

static void lauum_lower_to_upper_f(size_t n, float *a, size_t lda)
{
    float diag[KF_NB];
    for (size_t i0 = 0; i0 < n; i0 += KF_NB) {
        size_t i1 = min_size(i0 + KF_NB, n);
        for (size_t i = i0; i < i1; i++) {
            float *ri = a + i * lda;
            diag[i - i0] = 0.0f;
            for (size_t j = i + 1; j < n; j++) {
                ri[j] = 0.0f;
            }
        }
        for (size_t k = i0; k < n; k++) {
            const float *yk = a + k * lda;
            size_t iend = min_size(i1, k + 1);
            for (size_t i = i0; i < iend; i++) {
                float c = yk[i];
                diag[i - i0] += c * c;
                axpy_f(k - i, c, yk + i + 1, a + i * lda + i + 1);
            }
        }
        for (size_t i = i0; i < i1; i++) {
            a[i * lda + i] = diag[i - i0];
        }
    }
}

int kf__spd_cholesky_f(size_t n, float *a, size_t lda)
{
    mirror_f(n, a, lda, 0);
    if (chol_upper_f(n, a, lda) != 0) {
        return 1;
    }
    mirror_f(n, a, lda, 1);
    return 0;
}

int kf__spd_inverse_f(size_t n, float *a, size_t lda)
{
    mirror_f(n, a, lda, 0);
    if (chol_upper_f(n, a, lda) != 0) {
        return 1;
    }
    trinv_upper_f(n, a, lda);
    mirror_f(n, a, lda, 1);
    lauum_lower_to_upper_f(n, a, lda);
    mirror_f(n, a, lda, 1);
    return 0;
}

/* ---- symmetric eigendecomposition ------------------------------------------------------------ */

/* Workspace: off-diagonal e, Householder scalars tau, and one vector of scratch. */
size_t kf__sym_eig_work(size_t n)
{
    return n > SIZE_MAX / 3 ? SIZE_MAX : 3 * n;
}

/* No integer workspace: iwork is never touched and may be NULL. */
size_t kf__sym_eig_iwork(size_t n)
{
    (void)n;
    return 0;
}

/* y -= c0 x0 + c1 x1 (the symmetric rank-2 update of the tridiagonalisation). */
static void axpy2_d(size_t len, double c0, const double *restrict x0, double c1,
                    const double *restrict x1, double *restrict y)
{
    for (size_t j = 0; j < len; j++) {
        y[j] -= c0 * x0[j] + c1 * x1[j];
    }
}

/* Applies the plane rotation [c s; -s c] to the rows x and y. */
static void rot_d(size_t len, double c, double s, double *restrict x, double *restrict y)
{
    for (size_t j = 0; j < len; j++) {
        double t0 = x[j], t1 = y[j];
        x[j] = c * t0 + s * t1;
        y[j] = c * t1 - s * t0;
    }
}

/* An off-diagonal entry is negligible next to its two diagonal neighbours (or underflowed). */
static int negligible(double e, double d0, double d1)
{
    double ae = fabs(e);
    return ae <= DBL_EPSILON * (fabs(d0) + fabs(d1)) || ae < DBL_MIN;
}

/* Householder tridiagonalisation of the full symmetric matrix: Q^T A Q = T with
 * Q = H_0 ... H_{n-3}, H_k = I - tau_k v_k v_k^T acting on indices k+1..n-1. Row k of A (equal to
 * column k) is reflected onto beta e_1; v_k (with v_k[0] = 1) is stored over it. The trailing
 * block is updated in full, B -= v w^T + w v^T, by row axpys. d receives the diagonal of T, e the
 * off-diagonal. */
static void tridiagonalise(size_t n, double *a, size_t lda, double *d, double *e, double *tau,
                           double *p)
{
    for (size_t k = 0; k + 2 < n; k++) {
        double *x = a + k * lda + k + 1;
        size_t m = n - k - 1;
        double alpha = x[0], sigma = 0.0, norm, beta, v0, t, pv, half;
        d[k] = a[k * lda + k];
        for (size_t i = 1; i < m; i++) {
            sigma += x[i] * x[i];
        }
        if (sigma == 0.0) {
            /* Already reduced: H_k = I. */
            tau[k] = 0.0;
            e[k] = alpha;
            continue;
        }
        norm = sqrt(alpha * alpha + sigma);
        beta = alpha >= 0.0 ? -norm : norm; /* the sign that avoids cancellation in v0 */
        v0 = alpha - beta;
        t = (beta - alpha) / beta;
        tau[k] = t;
        e[k] = beta;
        x[0] = 1.0;
        for (size_t i = 1; i < m; i++) {
            x[i] /= v0;
        }
        /* p = tau B v, by rows of B (B is symmetric). */
        for (size_t j = 0; j < m; j++) {
            p[j] = 0.0;
        }
        for (size_t i = 0; i < m; i++) {
            axpy_d(m, t * x[i], a + (k + 1 + i) * lda + k + 1, p);
        }
        /* w = p - (tau/2)(p.v) v */
        pv = 0.0;
        for (size_t j = 0; j < m; j++) {
            pv += p[j] * x[j];
        }
        half = 0.5 * t * pv;
        for (size_t j = 0; j < m; j++) {
            p[j] -= half * x[j];
        }
        for (size_t i = 0; i < m; i++) {
            axpy2_d(m, x[i], p, p[i], x, a + (k + 1 + i) * lda + k + 1);
        }
    }
    if (n >= 2) {
        d[n - 2] = a[(n - 2) * lda + n - 2];
        d[n - 1] = a[(n - 1) * lda + n - 1];
        e[n - 2] = a[(n - 2) * lda + n - 1];
    } else {
        d[0] = a[0];
    }
}

/* Overwrites A with Q = H_0 H_1 ... H_{n-3} from the reflectors left in its rows. Built from the
 * right end, Q_k = H_k Q_{k+1}, where Q_{k+1} is the identity outside indices k+2..n-1: row k+1 (whose
 * reflector has already been used) is reset to e_{k+1} before H_k is applied from the left. */
static void form_q(size_t n, double *a, size_t lda, const double *tau, double *r)
{
    for (size_t j = 0; j < n; j++) {
        a[(n - 1) * lda + j] = j == n - 1 ? 1.0 : 0.0;
    }
    for (size_t k = n >= 3 ? n - 2 : 0; k-- > 0;) {
        size_t s = k + 1, m = n - s;
        const double *v = a + k * lda + s;
        double *q = a + s * lda + s; /* the block Q[s.., s..] */
        for (size_t j = 0; j < m; j++) {
            q[j] = j == 0 ? 1.0 : 0.0;
        }
        for (size_t i = 1; i < m; i++) {
            q[i * lda] = 0.0;
        }
        if (tau[k] == 0.0) {
            continue;
        }
        /* block -= tau v (v^T block) */
        for (size_t j = 0; j < m; j++) {
            r[j] = 0.0;
        }
        for (size_t i = 0; i < m; i++) {
            axpy_d(m, v[i], q + i * lda, r);
        }
        for (size_t i = 0; i < m; i++) {
            axpy_d(m, -tau[k] * v[i], r, q + i * lda);
        }
    }
    /* Index 0 is untouched by every reflector. */
    for (size_t j = 0; j < n; j++) {
        a[j] = j == 0 ? 1.0 : 0.0;
        a[j * lda] = j == 0 ? 1.0 : 0.0;
    }
}

/* One implicit symmetric QR step with a Wilkinson shift on the unreduced block lo..hi of the
 * tridiagonal (d, e); the rotations are applied to rows lo..hi of Z^T (rows of zt). */
static void qr_step(size_t n, size_t lo, size_t hi, double *d, double *e, double *zt, size_t ldz)
{
    double half = 0.5 * (d[hi - 1] - d[hi]);
    double eh = e[hi - 1];
    double mu = d[hi] - eh * eh / (half + copysign(hypot(half, eh), half));
    double x = d[lo] - mu, z = e[lo];
    for (size_t k = lo; k < hi; k++) {
        double r = hypot(x, z), c = 1.0, s = 0.0, a0, a1, b;
        if (r != 0.0) {
            c = x / r;
            s = z / r;
        }
        if (k > lo) {
            e[k - 1] = r; /* the bulge below it is annihilated */
        }
        a0 = d[k];
        a1 = d[k + 1];
        b = e[k];
        d[k] = c * c * a0 + 2.0 * c * s * b + s * s * a1;
        d[k + 1] = s * s * a0 - 2.0 * c * s * b + c * c * a1;
        e[k] = c * s * (a1 - a0) + (c * c - s * s) * b;
        if (k + 1 < hi) {
            /* The rotation creates a bulge at (k+2, k); the next one chases it down. */
            x = e[k];
            z = s * e[k + 1];
            e[k + 1] *= c;
        }
        rot_d(n, c, s, zt + k * ldz, zt + (k + 1) * ldz);
    }
}

int kf__sym_eig_d(size_t n, double *a, size_t lda, double *w, double *work, int *iwork)
{
    double *e = work, *tau = work + n, *scratch = work + 2 * n;
    double amax = 0.0;
    int scale_exp = 0;
    size_t iter = 0, maxit;
    (void)iwork;
    if (n == 0) {
        return 0;
    }
    /* Non-finite input can never converge; say so at once instead of iterating to the limit. */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double v = fabs(a[i * lda + j]);
            if (!(v <= DBL_MAX)) {
                return 1;
            }
            amax = v > amax ? v : amax;
        }
    }
    if (amax == 0.0) {
        for (size_t i = 0; i < n; i++) {
            w[i] = 0.0;
            for (size_t j = 0; j < n; j++) {
                a[i * lda + j] = i == j ? 1.0 : 0.0;
            }
        }
        return 0;
    }
    /* Far from 1, squares in the reflector norms could overflow or underflow: scale by a power of
     * two (exact), and scale the eigenvalues back at the end. */
    if (amax > 0x1p256 || amax < 0x1p-256) {
        (void)frexp(amax, &scale_exp);
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++) {
                a[i * lda + j] = ldexp(a[i * lda + j], -scale_exp);
            }
        }
    }

    tridiagonalise(n, a, lda, w, e, tau, scratch);
    form_q(n, a, lda, tau, scratch);
    transpose_d(n, a, lda); /* rows of A are now the columns of Q: rotations act on rows */

    /* Deflate from the bottom: split off converged eigenvalues, then step on the lowest unreduced
     * block. 30 steps per eigenvalue on average is far more than the 2-3 that are typical. */
    maxit = 30 * n;
    for (size_t hi = n - 1; hi > 0;) {
        size_t lo;
        if (negligible(e[hi - 1], w[hi - 1], w[hi])) {
            e[hi - 1] = 0.0;
            hi--;
            continue;
        }
        lo = hi - 1;
        while (lo > 0 && !negligible(e[lo - 1], w[lo - 1], w[lo])) {
            lo--;
        }
        if (lo > 0) {
            e[lo - 1] = 0.0;
        }
        if (++iter > maxit) {
            return 1;
        }
        qr_step(n, lo, hi, w, e, a, lda);
    }

    /* Ascending order (selection sort: O(n^2) comparisons, at most n row swaps). */
    for (size_t i = 0; i + 1 < n; i++) {
        size_t best = i;
        for (size_t j = i + 1; j < n; j++) {
            if (w[j] < w[best]) {
                best = j;
            }
        }
        if (best != i) {
            double t = w[i];
            double *ri = a + i * lda, *rb = a + best * lda;
            w[i] = w[best];
            w[best] = t;
            for (size_t j = 0; j < n; j++) {
                double u = ri[j];
                ri[j] = rb[j];
                rb[j] = u;
            }
        }
    }
    if (scale_exp != 0) {
        for (size_t i = 0; i < n; i++) {
            w[i] = ldexp(w[i], scale_exp);
        }
    }
    transpose_d(n, a, lda); /* eigenvectors into the columns */
    return 0;
}

const char *kf__linalg_backend(void)
{
    return "portable";
}

#else
typedef int kf__linalg_portable_unused;
#endif /* !KRONFAC_HAVE_BLAS */
