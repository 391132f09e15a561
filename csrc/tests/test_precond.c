/* Damped inverses, eigendecompositions, pi and the preconditioned directions against dense
 * brute-force references (SPEC.md section 7, items 1, 3, 4, 5, 9). */
#include "kf_test.h"

/* A random SPD-ish factor: mean of k outer products of random vectors (rank min(k, n)). */
static void random_factor(kf_rng *rng, size_t n, size_t k, float *f, size_t ldf)
{
    float *x = (float *)kf_test_xmalloc(k * n * sizeof(float));
    kf_rng_fill(rng, x, k * n);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0;
            for (size_t t = 0; t < k; t++) {
                s += (double)x[t * n + i] * x[t * n + j];
            }
            f[i * ldf + j] = (float)(s / (double)k);
        }
    }
    free(x);
}

/* want = mat(M^{-1} rvec(V)) with M = (G + dg I) (x) (A + da I) + lambda I (row-major vec). */
static void dense_kron_solve(size_t out, size_t da_n, const float *g, size_t ldg, double dg,
                             const float *a, size_t lda, double da, double lambda, const float *v,
                             size_t ldv, double *want)
{
    size_t n = out * da_n;
    double *m = (double *)kf_test_xmalloc(n * n * sizeof(double));
    for (size_t i = 0; i < out; i++) {
        for (size_t j = 0; j < da_n; j++) {
            for (size_t k = 0; k < out; k++) {
                for (size_t l = 0; l < da_n; l++) {
                    double gv = (double)g[i * ldg + k] + (i == k ? dg : 0.0);
                    double av = (double)a[j * lda + l] + (j == l ? da : 0.0);
                    m[(i * da_n + j) * n + (k * da_n + l)] = gv * av + ((i == k && j == l) ? lambda : 0.0);
                }
            }
            want[i * da_n + j] = v[i * ldv + j];
        }
    }
    CHECK(kf_test_solve(n, 1, m, want) == 0);
    free(m);
}

static void test_inverse(kf_context *ctx, kf_rng *rng)
{
    static const size_t sizes[] = {1, 2, 5, 16, 40};
    for (size_t si = 0; si < 5; si++) {
        size_t n = sizes[si], ld = n + 3;
        for (int prec = 0; prec <= 1; prec++) {
            float *f = (float *)kf_test_xmalloc(n * ld * sizeof(float));
            float *inv = (float *)kf_test_xmalloc(n * ld * sizeof(float));
            double *prod = (double *)kf_test_xmalloc(n * n * sizeof(double));
            double *eye = (double *)kf_test_xmalloc(n * n * sizeof(double));
            float jitter = -1.0f, gamma = 0.1f;
            random_factor(rng, n, n + 2, f, ld);
            CHECK_STATUS(kf_damped_inverse(ctx, n, f, ld, gamma, (kf_precision)prec, inv, ld, &jitter), KF_OK);
            CHECK(jitter == 0.0f);
            for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < n; j++) {
                    double s = 0.0;
                    for (size_t k = 0; k < n; k++) {
                        s += ((double)f[i * ld + k] + (i == k ? gamma : 0.0)) * inv[k * ld + j];
                    }
                    prod[i * n + j] = s;
                    eye[i * n + j] = i == j ? 1.0 : 0.0;
                }
            }
            {
                /* Compare in double against I: the check wants float entries, so round. */
                float *pf = (float *)kf_test_xmalloc(n * n * sizeof(float));
                for (size_t i = 0; i < n * n; i++) {
                    pf[i] = (float)prod[i];
                }
                kf_test_close("(F + gamma I) inv = I", n, n, pf, n, eye, n, 0, 1e-4);
                free(pf);
            }
            free(f);
            free(inv);
            free(prod);
            free(eye);
        }
    }
}

static void test_inverse_failures(kf_context *ctx)
{
    float f[9] = {1, 0, 0, 0, 0, 0, 0, 0, 1}; /* singular */
    float neg[4] = {-1, 0, 0, -2};            /* negative definite: no jitter rescues it */
    float inv[9], sentinel[9], jitter = -1.0f;
    for (int i = 0; i < 9; i++) {
        inv[i] = sentinel[i] = 7.0f + (float)i;
    }
    /* A singular factor with zero damping is rescued by jitter, which is reported. */
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, 0.0f, KF_PRECISION_DOUBLE, inv, 3, &jitter), KF_OK);
    CHECK(jitter > 0.0f);
    for (int i = 0; i < 9; i++) {
        inv[i] = sentinel[i];
    }
    CHECK_STATUS(kf_damped_inverse(ctx, 2, neg, 2, 0.0f, KF_PRECISION_DOUBLE, inv, 2, NULL),
                 KF_ERR_NOT_POSITIVE_DEFINITE);
    CHECK(strstr(kf_context_last_error(ctx), "positive definite") != NULL);
    CHECK(memcmp(inv, sentinel, sizeof inv) == 0);
    CHECK_STATUS(kf_damped_inverse(ctx, 2, neg, 2, 0.0f, KF_PRECISION_FLOAT, inv, 2, NULL),
                 KF_ERR_NOT_POSITIVE_DEFINITE);
    CHECK(memcmp(inv, sentinel, sizeof inv) == 0);
    f[4] = NAN;
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, 1.0f, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_NON_FINITE);
    CHECK(memcmp(inv, sentinel, sizeof inv) == 0);
    f[4] = 0.0f;
    CHECK_STATUS(kf_damped_inverse(NULL, 3, f, 3, 1.0f, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, NULL, 3, 1.0f, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, 1.0f, KF_PRECISION_DOUBLE, NULL, 3, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_damped_inverse(ctx, 0, f, 3, 1.0f, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_SHAPE);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 2, 1.0f, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_SHAPE);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, 1.0f, KF_PRECISION_DOUBLE, inv, 2, NULL), KF_ERR_SHAPE);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, -1.0f, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kf_context_last_error(ctx), "damping") != NULL);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, INFINITY, KF_PRECISION_DOUBLE, inv, 3, NULL), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_damped_inverse(ctx, 3, f, 3, 1.0f, (kf_precision)5, inv, 3, NULL), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_damped_inverse(ctx, 2, inv, 3, 1.0f, KF_PRECISION_DOUBLE, inv + 1, 3, NULL), KF_ERR_INVALID_ARGUMENT);
    CHECK(memcmp(inv, sentinel, sizeof inv) == 0);
}

static void test_eig(kf_context *ctx, kf_rng *rng)
{
    size_t n = 12, ld = 14;
    float f[12 * 14], q[12 * 14], w[12], sentinel[12];
    double *rec = (double *)kf_test_xmalloc(n * n * sizeof(double));
    random_factor(rng, n, 5, f, ld); /* rank 5: seven zero eigenvalues */
    CHECK_STATUS(kf_sym_eig(ctx, n, f, ld, w, q, ld), KF_OK);
    for (size_t i = 0; i + 1 < n; i++) {
        CHECK(w[i] <= w[i + 1]);
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0;
            for (size_t k = 0; k < n; k++) {
                s += (double)q[i * ld + k] * w[k] * q[j * ld + k];
            }
            rec[i * n + j] = s;
        }
    }
    {
        double *fd = (double *)kf_test_xmalloc(n * n * sizeof(double));
        float *rf = (float *)kf_test_xmalloc(n * n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++) {
                fd[i * n + j] = f[i * ld + j];
                rf[i * n + j] = (float)rec[i * n + j];
            }
        }
        kf_test_close("Q diag(w) Q^T = F", n, n, rf, n, fd, n, 1e-5, 1e-6);
        free(fd);
        free(rf);
    }
    {
        float two[4] = {2, 1, 1, 2}, w2[2], q2[4];
        double want[2] = {1, 3};
        CHECK_STATUS(kf_sym_eig(ctx, 2, two, 2, w2, q2, 2), KF_OK);
        kf_test_close("eig [[2,1],[1,2]]", 1, 2, w2, 2, want, 2, 1e-6, 1e-6);
    }
    for (size_t i = 0; i < n; i++) {
        w[i] = sentinel[i] = -3.0f;
    }
    f[3] = NAN;
    CHECK_STATUS(kf_sym_eig(ctx, n, f, ld, w, q, ld), KF_ERR_NON_FINITE);
    CHECK(memcmp(w, sentinel, sizeof w) == 0);
    CHECK_STATUS(kf_sym_eig(NULL, n, f, ld, w, q, ld), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_sym_eig(ctx, n, f, ld, NULL, q, ld), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_sym_eig(ctx, n, f, ld, w, NULL, ld), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_sym_eig(ctx, 0, f, ld, w, q, ld), KF_ERR_SHAPE);
    CHECK_STATUS(kf_sym_eig(ctx, n, f, n - 1, w, q, ld), KF_ERR_SHAPE);
    CHECK_STATUS(kf_sym_eig(ctx, n, f, ld, w, f, ld), KF_ERR_INVALID_ARGUMENT);
    free(rec);
}

static void test_pi(kf_context *ctx)
{
    /* A = a I, G = b I: the pi-damped eigenvalue (a + gamma pi)(b + gamma/pi) = (sqrt(ab) + gamma)^2. */
    float a[9] = {4, 0, 0, 0, 4, 0, 0, 0, 4}, g[4] = {0.25f, 0, 0, 0.25f}, pi = 0.0f, z[4] = {0};
    double gamma = 0.3, want;
    CHECK_STATUS(kf_pi(ctx, 3, a, 3, 2, g, 2, &pi), KF_OK);
    CHECK(fabs(pi - 4.0) < 1e-6);
    want = (sqrt(4.0 * 0.25) + gamma) * (sqrt(4.0 * 0.25) + gamma);
    CHECK(fabs((4.0 + gamma * pi) * (0.25 + gamma / pi) - want) < 1e-6);
    /* Scale covariance: pi(cA, G) = sqrt(c) pi(A, G). */
    for (int i = 0; i < 9; i++) {
        a[i] *= 9.0f;
    }
    CHECK_STATUS(kf_pi(ctx, 3, a, 3, 2, g, 2, &pi), KF_OK);
    CHECK(fabs(pi - 12.0) < 1e-5);
    CHECK_STATUS(kf_pi(ctx, 3, a, 3, 2, z, 2, &pi), KF_OK);
    CHECK(pi == 1.0f);
    CHECK_STATUS(kf_pi(ctx, 2, z, 2, 2, g, 2, &pi), KF_OK);
    CHECK(pi == 1.0f);
    CHECK_STATUS(kf_pi(ctx, 3, a, 3, 2, g, 2, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_pi(ctx, 0, a, 3, 2, g, 2, &pi), KF_ERR_SHAPE);
    /* And the K-FAC direction on these factors scales V by 1/(sqrt(ab)+gamma)^2 exactly. */
    {
        float aa[4] = {4, 0, 0, 4}, gg[1] = {0.25f}, v[2] = {1.0f, -2.0f}, d[2], pu = 0;
        double w2[2];
        double den = (1.0 + gamma) * (1.0 + gamma);
        CHECK_STATUS(kf_kfac_direction(ctx, 1, 2, v, 2, aa, 2, gg, 1, (float)(gamma * gamma), d, 2, &pu), KF_OK);
        w2[0] = 1.0 / den;
        w2[1] = -2.0 / den;
        kf_test_close("pi-damped closed form", 1, 2, d, 2, w2, 2, 1e-6, 1e-7);
        CHECK(fabs(pu - 4.0f) < 1e-6f);
        /* Exact damping: eigenvalue ab + gamma^2 = 1 + gamma^2. */
        CHECK_STATUS(kf_kfac_exact_direction(ctx, 1, 2, v, 2, aa, 2, gg, 1, (float)(gamma * gamma), d, 2), KF_OK);
        w2[0] = 1.0 / (1.0 + gamma * gamma);
        w2[1] = -2.0 / (1.0 + gamma * gamma);
        kf_test_close("exact-damping closed form", 1, 2, d, 2, w2, 2, 1e-6, 1e-7);
    }
}

static void test_foof(kf_context *ctx, kf_rng *rng)
{
    /* Benzing 2022 App. F: a1 = (3, 1), a2 = (1, 0), labels +1, -1, w = 0, L = 1/2 sum (w.a - y)^2.
     * Mean-normalised: A = (1/2) sum a a^T, gradient of the mean loss = (1/2)(-2, -1). Undamped FOOF
     * with lr 1 lands on w = (-1, 4), which fits both points. */
    float x[4] = {3, 1, 1, 0}, a[4], grad[2] = {-1.0f, -0.5f}, d[2];
    double want[2] = {-1.0, 4.0};
    float w[2];
    CHECK_STATUS(kf_activation_factor(ctx, 2, 1, 2, x, 2, 0, KF_SHARED_EXPAND, a, 2), KF_OK);
    CHECK_STATUS(kf_foof_direction(ctx, 1, 2, grad, 2, a, 2, 0.0f, d, 2), KF_OK);
    w[0] = -d[0];
    w[1] = -d[1];
    kf_test_close("Benzing's two-point example", 1, 2, w, 2, want, 2, 1e-5, 1e-5);
    CHECK(fabs(w[0] * 3 + w[1] * 1 - 1.0) < 1e-4 && fabs(w[0] * 1 + w[1] * 0 + 1.0) < 1e-4);

    /* FOOF = ridge least squares = its Woodbury form, and -> E^T (X^T)^+ as lambda -> 0. Data X is
     * D x m (rows are data points), output gradients E are D x n; V = E^T X, A = X^T X. */
    for (int wide = 0; wide <= 1; wide++) {
        size_t dn = wide ? 4 : 12, m = 7, n = 3;
        float *xm = (float *)kf_test_xmalloc(dn * m * sizeof(float));
        float *e = (float *)kf_test_xmalloc(dn * n * sizeof(float));
        float v[21], aa[49], dd[21];
        double lambda = 0.05;
        kf_rng_fill(rng, xm, dn * m);
        kf_rng_fill(rng, e, dn * n);
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < m; j++) {
                double s = 0.0;
                for (size_t t = 0; t < dn; t++) {
                    s += (double)e[t * n + i] * xm[t * m + j];
                }
                v[i * m + j] = (float)s;
            }
        }
        CHECK_STATUS(kf_syrk(ctx, dn, m, 1.0f, xm, m, 0.0f, aa, m), KF_OK);
        CHECK_STATUS(kf_foof_direction(ctx, n, m, v, m, aa, m, (float)lambda, dd, m), KF_OK);
        {
            /* Ridge: D^T solves (X^T X + lambda I) D^T = V^T. */
            double *mm = (double *)kf_test_xmalloc(m * m * sizeof(double));
            double *rhs = (double *)kf_test_xmalloc(m * n * sizeof(double));
            double *want_d = (double *)kf_test_xmalloc(n * m * sizeof(double));
            for (size_t i = 0; i < m; i++) {
                for (size_t j = 0; j < m; j++) {
                    double s = 0.0;
                    for (size_t t = 0; t < dn; t++) {
                        s += (double)xm[t * m + i] * xm[t * m + j];
                    }
                    mm[i * m + j] = s + (i == j ? lambda : 0.0);
                }
                for (size_t j = 0; j < n; j++) {
                    rhs[i * n + j] = v[j * m + i];
                }
            }
            CHECK(kf_test_solve(m, n, mm, rhs) == 0);
            for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < m; j++) {
                    want_d[i * m + j] = rhs[j * n + i];
                }
            }
            kf_test_close("FOOF = ridge least squares", n, m, dd, m, want_d, m, 1e-3, 1e-4);
            /* Woodbury: E^T (X X^T + lambda I_D)^{-1} X. */
            {
                double *k = (double *)kf_test_xmalloc(dn * dn * sizeof(double));
                double *b = (double *)kf_test_xmalloc(dn * m * sizeof(double));
                for (size_t i = 0; i < dn; i++) {
                    for (size_t j = 0; j < dn; j++) {
                        double s = 0.0;
                        for (size_t t = 0; t < m; t++) {
                            s += (double)xm[i * m + t] * xm[j * m + t];
                        }
                        k[i * dn + j] = s + (i == j ? lambda : 0.0);
                    }
                    for (size_t j = 0; j < m; j++) {
                        b[i * m + j] = xm[i * m + j];
                    }
                }
                CHECK(kf_test_solve(dn, m, k, b) == 0);
                for (size_t i = 0; i < n; i++) {
                    for (size_t j = 0; j < m; j++) {
                        double s = 0.0;
                        for (size_t t = 0; t < dn; t++) {
                            s += (double)e[t * n + i] * b[t * m + j];
                        }
                        want_d[i * m + j] = s;
                    }
                }
                kf_test_close("FOOF = Woodbury form", n, m, dd, m, want_d, m, 1e-3, 1e-4);
                free(k);
                free(b);
            }
            /* Small-damping limit: the minimum-norm solution E^T (X^T)^+. For D < m (wide),
             * (X^T)^+ = (X X^T)^{-1} X; for D > m, (X^T)^+ = X (X^T X)^{-1}. The error shrinks
             * with lambda. */
            {
                double err_prev = 1e30;
                double *pinv = (double *)kf_test_xmalloc(n * m * sizeof(double));
                double *k = (double *)kf_test_xmalloc(dn * dn * sizeof(double));
                double *b = (double *)kf_test_xmalloc(dn * m * sizeof(double));
                if (wide) {
                    for (size_t i = 0; i < dn; i++) {
                        for (size_t j = 0; j < dn; j++) {
                            double s = 0.0;
                            for (size_t t = 0; t < m; t++) {
                                s += (double)xm[i * m + t] * xm[j * m + t];
                            }
                            k[i * dn + j] = s;
                        }
                        for (size_t j = 0; j < m; j++) {
                            b[i * m + j] = xm[i * m + j];
                        }
                    }
                    CHECK(kf_test_solve(dn, m, k, b) == 0);
                    for (size_t i = 0; i < n; i++) {
                        for (size_t j = 0; j < m; j++) {
                            double s = 0.0;
                            for (size_t t = 0; t < dn; t++) {
                                s += (double)e[t * n + i] * b[t * m + j];
                            }
                            pinv[i * m + j] = s;
                        }
                    }
                } else {
                    double *mm2 = (double *)kf_test_xmalloc(m * m * sizeof(double));
                    double *rhs2 = (double *)kf_test_xmalloc(m * n * sizeof(double));
                    for (size_t i = 0; i < m; i++) {
                        for (size_t j = 0; j < m; j++) {
                            double s = 0.0;
                            for (size_t t = 0; t < dn; t++) {
                                s += (double)xm[t * m + i] * xm[t * m + j];
                            }
                            mm2[i * m + j] = s;
                        }
                        for (size_t j = 0; j < n; j++) {
                            rhs2[i * n + j] = v[j * m + i];
                        }
                    }
                    CHECK(kf_test_solve(m, n, mm2, rhs2) == 0);
                    for (size_t i = 0; i < n; i++) {
                        for (size_t j = 0; j < m; j++) {
                            pinv[i * m + j] = rhs2[j * n + i];
                        }
                    }
                    free(mm2);
                    free(rhs2);
                }
                for (double lam = 1e-1; lam >= 1e-4; lam *= 0.1) {
                    double err = 0.0;
                    CHECK_STATUS(kf_foof_direction(ctx, n, m, v, m, aa, m, (float)lam, dd, m), KF_OK);
                    for (size_t i = 0; i < n * m; i++) {
                        err = fmax(err, fabs(dd[i] - pinv[i]));
                    }
                    /* Shrinks with lambda down to float rounding, about eps / lambda. */
                    CHECK(err < err_prev || err < 2e-3);
                    err_prev = err;
                }
                CHECK(err_prev < 2e-3);
                free(pinv);
                free(k);
                free(b);
            }
            free(mm);
            free(rhs);
            free(want_d);
        }
        free(xm);
        free(e);
    }
}

static void test_kfac_dense(kf_context *ctx, kf_rng *rng)
{
    /* Sizes <= 8: the Kronecker product is formed explicitly and solved by elimination. */
    static const size_t outs[] = {1, 3, 6};
    static const size_t dims[] = {1, 4, 8};
    for (size_t oi = 0; oi < 3; oi++) {
        for (size_t di = 0; di < 3; di++) {
            size_t out = outs[oi], da = dims[di], ldv = da + 1, lda = da + 2, ldg = out + 3;
            float v[6 * 9], a[8 * 10], g[6 * 9], d[6 * 9], pi = 0.0f;
            double want[48];
            double lambda = 0.07;
            random_factor(rng, da, 3, a, lda);  /* rank-deficient when da > 3 */
            random_factor(rng, out, 2, g, ldg);
            kf_rng_fill(rng, v, out * ldv);
            CHECK_STATUS(kf_kfac_direction(ctx, out, da, v, ldv, a, lda, g, ldg, (float)lambda, d, ldv, &pi), KF_OK);
            {
                double gamma = sqrt(lambda);
                dense_kron_solve(out, da, g, ldg, gamma / pi, a, lda, gamma * pi, 0.0, v, ldv, want);
                kf_test_close("K-FAC = dense pi-damped Kronecker solve", out, da, d, ldv, want, da, 2e-3, 1e-4);
            }
            CHECK_STATUS(kf_kfac_exact_direction(ctx, out, da, v, ldv, a, lda, g, ldg, (float)lambda, d, ldv), KF_OK);
            dense_kron_solve(out, da, g, ldg, 0.0, a, lda, 0.0, lambda, v, ldv, want);
            kf_test_close("exact damping = dense (A (x) G + lambda I) solve", out, da, d, ldv, want, da, 2e-3, 1e-4);

            /* EKFAC with s = beta alpha^T reproduces exact-damping K-FAC; with another s it equals
             * the dense solve against (Q_A (x) Q_G) diag(s + lambda) (Q_A (x) Q_G)^T. */
            {
                float qa[64], qg[36], wa[8], wg[6], s[48], d2[6 * 9];
                CHECK_STATUS(kf_sym_eig(ctx, da, a, lda, wa, qa, da), KF_OK);
                CHECK_STATUS(kf_sym_eig(ctx, out, g, ldg, wg, qg, out), KF_OK);
                for (size_t i = 0; i < out; i++) {
                    for (size_t j = 0; j < da; j++) {
                        s[i * da + j] = fmaxf(wg[i], 0.0f) * fmaxf(wa[j], 0.0f);
                    }
                }
                CHECK_STATUS(kf_eigenbasis_apply(ctx, out, da, v, ldv, qg, out, NULL, qa, da, NULL, s, da, (float)lambda, d2, ldv), KF_OK);
                kf_test_close("EKFAC(s = beta alpha^T) = K-FAC exact", out, da, d2, ldv, want, da, 2e-3, 1e-4);
                CHECK_STATUS(kf_eigenbasis_apply(ctx, out, da, v, ldv, qg, out, wg, qa, da, wa, NULL, 0, (float)lambda, d2, ldv), KF_OK);
                kf_test_close("eigenbasis apply (K-FAC)", out, da, d2, ldv, want, da, 2e-3, 1e-4);
                /* A general diagonal: reference through the rotation written out densely. */
                for (size_t i = 0; i < out * da; i++) {
                    s[i] = 0.5f + (float)(i % 5) * 0.3f;
                }
                CHECK_STATUS(kf_eigenbasis_apply(ctx, out, da, v, ldv, qg, out, NULL, qa, da, NULL, s, da, (float)lambda, d2, ldv), KF_OK);
                {
                    double rot[48], back[48];
                    for (size_t i = 0; i < out; i++) {
                        for (size_t j = 0; j < da; j++) {
                            double t = 0.0;
                            for (size_t k = 0; k < out; k++) {
                                for (size_t l = 0; l < da; l++) {
                                    t += (double)qg[k * out + i] * v[k * ldv + l] * qa[l * da + j];
                                }
                            }
                            rot[i * da + j] = t / ((double)s[i * da + j] + lambda);
                        }
                    }
                    for (size_t i = 0; i < out; i++) {
                        for (size_t j = 0; j < da; j++) {
                            double t = 0.0;
                            for (size_t k = 0; k < out; k++) {
                                for (size_t l = 0; l < da; l++) {
                                    t += (double)qg[i * out + k] * rot[k * da + l] * qa[j * da + l];
                                }
                            }
                            back[i * da + j] = t;
                        }
                    }
                    kf_test_close("EKFAC general diagonal", out, da, d2, ldv, back, da, 1e-4, 1e-5);
                }
            }
            /* Cached inverses: kf_kronecker_apply with g_inv = NULL is FOOF. */
            {
                float ainv[64], d3[6 * 9];
                CHECK_STATUS(kf_damped_inverse(ctx, da, a, lda, (float)lambda, KF_PRECISION_DOUBLE, ainv, da, NULL), KF_OK);
                CHECK_STATUS(kf_kronecker_apply(ctx, out, da, v, ldv, NULL, 0, ainv, da, d3, ldv), KF_OK);
                CHECK_STATUS(kf_foof_direction(ctx, out, da, v, ldv, a, lda, (float)lambda, d, ldv), KF_OK);
                {
                    double wd[48];
                    for (size_t i = 0; i < out; i++) {
                        for (size_t j = 0; j < da; j++) {
                            wd[i * da + j] = d[i * ldv + j];
                        }
                    }
                    kf_test_close("kronecker_apply(G = I) = FOOF", out, da, d3, ldv, wd, da, 1e-5, 1e-6);
                }
            }
        }
    }
}

static void test_direction_errors(kf_context *ctx)
{
    float v[6] = {1, 2, 3, 4, 5, 6}, a[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, g[4] = {1, 0, 0, 1};
    float d[6], sentinel[6], w[3] = {1, 1, 1};
    for (int i = 0; i < 6; i++) {
        d[i] = sentinel[i] = -9.5f;
    }
#define UNCHANGED() CHECK(memcmp(d, sentinel, sizeof d) == 0)
    CHECK_STATUS(kf_foof_direction(NULL, 2, 3, v, 3, a, 3, 1.0f, d, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, NULL, 3, a, 3, 1.0f, d, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, NULL, 3, 1.0f, d, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, a, 3, 1.0f, NULL, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_foof_direction(ctx, 0, 3, v, 3, a, 3, 1.0f, d, 3), KF_ERR_SHAPE);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 2, a, 3, 1.0f, d, 3), KF_ERR_SHAPE);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, a, 2, 1.0f, d, 3), KF_ERR_SHAPE);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, a, 3, -1.0f, d, 3), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, a, 3, 1.0f, v, 3), KF_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kf_context_last_error(ctx), "overlap") != NULL);
    v[4] = NAN;
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, a, 3, 1.0f, d, 3), KF_ERR_NON_FINITE);
    v[4] = 5.0f;
    a[4] = INFINITY;
    CHECK_STATUS(kf_foof_direction(ctx, 2, 3, v, 3, a, 3, 1.0f, d, 3), KF_ERR_NON_FINITE);
    a[4] = 1.0f;
    UNCHANGED();

    CHECK_STATUS(kf_kfac_direction(ctx, 2, 3, v, 3, a, 3, g, 2, 0.0f, d, 3, NULL), KF_ERR_INVALID_ARGUMENT);
    CHECK(strstr(kf_context_last_error(ctx), "damping") != NULL);
    CHECK_STATUS(kf_kfac_direction(ctx, 2, 3, v, 3, a, 3, NULL, 2, 1.0f, d, 3, NULL), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_kfac_direction(ctx, 2, 3, v, 3, a, 3, g, 1, 1.0f, d, 3, NULL), KF_ERR_SHAPE);
    g[3] = NAN;
    CHECK_STATUS(kf_kfac_direction(ctx, 2, 3, v, 3, a, 3, g, 2, 1.0f, d, 3, NULL), KF_ERR_NON_FINITE);
    CHECK_STATUS(kf_kfac_exact_direction(ctx, 2, 3, v, 3, a, 3, g, 2, 1.0f, d, 3), KF_ERR_NON_FINITE);
    g[3] = 1.0f;
    CHECK_STATUS(kf_kfac_exact_direction(ctx, 2, 3, v, 3, a, 3, g, 2, -2.0f, d, 3), KF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kf_kfac_exact_direction(NULL, 2, 3, v, 3, a, 3, g, 2, 1.0f, d, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_kronecker_apply(ctx, 2, 3, v, 3, g, 2, NULL, 3, d, 3), KF_ERR_NULL_POINTER);
    CHECK_STATUS(kf_kronecker_apply(ctx, 2, 3, v, 3, g, 1, a, 3, d, 3), KF_ERR_SHAPE);
    /* Zero damping with a zero eigenvalue: division by zero is refused. */
    {
        float z[3] = {0, 1, 1};
        CHECK_STATUS(kf_eigenbasis_apply(ctx, 2, 3, v, 3, g, 2, w, a, 3, z, NULL, 0, 0.0f, d, 3), KF_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(kf_eigenbasis_apply(ctx, 2, 3, v, 3, g, 2, NULL, a, 3, z, NULL, 0, 1.0f, d, 3), KF_ERR_NULL_POINTER);
        CHECK_STATUS(kf_eigenbasis_apply(ctx, 2, 3, v, 3, g, 2, w, a, 3, w, NULL, 0, NAN, d, 3), KF_ERR_INVALID_ARGUMENT);
    }
    UNCHANGED();
#undef UNCHANGED
}

int main(void)
{
    kf_context *ctx = NULL;
    kf_rng rng = {0x2545F4914F6CDD1DULL};
    if (kf_context_create(NULL, &ctx) != KF_OK) {
        return 2;
    }
    test_inverse(ctx, &rng);
    test_inverse_failures(ctx);
    test_eig(ctx, &rng);
    test_pi(ctx);
    test_foof(ctx, &rng);
    test_kfac_dense(ctx, &rng);
    test_direction_errors(ctx);
    kf_context_destroy(ctx);
    return kf_test_finish("test_precond");
}
