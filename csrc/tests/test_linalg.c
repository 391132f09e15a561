/* test_linalg.c - the raw symmetric linear algebra of kf_linalg.h (whichever backend is compiled):
 * SPD inverses in double and float, failures on singular and indefinite input, and the symmetric
 * eigendecomposition against closed forms and reconstruction. References are computed here in
 * double (kf_test_solve, explicit products), never with the code under test. */
#include "kf_test.h"

#include "kf_linalg.h"

#include <float.h>
#include <limits.h>

#define SENTINEL 777.25 /* written into the padding (ld > n); must survive every call */

static const size_t kSizes[] = {1, 2, 3, 8, 33, 100, 257};
#define NUM_SIZES (sizeof kSizes / sizeof kSizes[0])

/* ---- helpers ------------------------------------------------------------------------------------ */

static double *dalloc(size_t count)
{
    return (double *)kf_test_xmalloc(count * sizeof(double));
}

/* A = B B^T + shift I with B uniform in [-1, 1); n x n, ld n. */
static void random_spd(kf_rng *rng, size_t n, double shift, double *a)
{
    double *b = dalloc(n * n);
    for (size_t i = 0; i < n * n; i++) {
        b[i] = kf_rng_uniform(rng);
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j <= i; j++) {
            double s = 0.0;
            for (size_t k = 0; k < n; k++) {
                s += b[i * n + k] * b[j * n + k];
            }
            a[i * n + j] = s;
            a[j * n + i] = s;
        }
        a[i * n + i] += shift;
    }
    free(b);
}

/* Symmetric with entries uniform in [-1, 1). */
static void random_sym(kf_rng *rng, size_t n, double *a)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j <= i; j++) {
            double v = kf_rng_uniform(rng);
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
}

/* Q (n x n, ld n) = product of three random Householder reflectors: orthogonal to rounding. */
static void random_orthogonal(kf_rng *rng, size_t n, double *q)
{
    double *v = dalloc(n);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            q[i * n + j] = i == j ? 1.0 : 0.0;
        }
    }
    for (int h = 0; h < 3; h++) {
        double vv = 0.0;
        for (size_t i = 0; i < n; i++) {
            v[i] = kf_rng_uniform(rng);
            vv += v[i] * v[i];
        }
        /* q <- q (I - 2 v v^T / v^T v) */
        for (size_t i = 0; i < n; i++) {
            double s = 0.0;
            for (size_t j = 0; j < n; j++) {
                s += q[i * n + j] * v[j];
            }
            for (size_t j = 0; j < n; j++) {
                q[i * n + j] -= 2.0 * s / vv * v[j];
            }
        }
    }
    free(v);
}

/* A = Q diag(lambda) Q^T, n x n, ld n. */
static void from_spectrum(size_t n, const double *q, const double *lambda, double *a)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0;
            for (size_t k = 0; k < n; k++) {
                s += q[i * n + k] * lambda[k] * q[j * n + k];
            }
            a[i * n + j] = s;
        }
    }
}

/* Copies the n x n matrix (ld n) into a fresh buffer with leading dimension ld, padding filled
 * with SENTINEL. */
static double *padded_d(size_t n, const double *a, size_t ld)
{
    double *p = dalloc(n * ld);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < ld; j++) {
            p[i * ld + j] = j < n ? a[i * n + j] : SENTINEL;
        }
    }
    return p;
}

static float *padded_f(size_t n, const double *a, size_t ld)
{
    float *p = (float *)kf_test_xmalloc(n * ld * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < ld; j++) {
            p[i * ld + j] = j < n ? (float)a[i * n + j] : (float)SENTINEL;
        }
    }
    return p;
}

static int padding_intact_d(size_t n, const double *p, size_t ld)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = n; j < ld; j++) {
            if (p[i * ld + j] != SENTINEL) {
                return 0;
            }
        }
    }
    return 1;
}

static int padding_intact_f(size_t n, const float *p, size_t ld)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = n; j < ld; j++) {
            if (p[i * ld + j] != (float)SENTINEL) {
                return 0;
            }
        }
    }
    return 1;
}

static int exactly_symmetric_d(size_t n, const double *x, size_t ld)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (memcmp(&x[i * ld + j], &x[j * ld + i], sizeof(double)) != 0) {
                return 0;
            }
        }
    }
    return 1;
}

static int exactly_symmetric_f(size_t n, const float *x, size_t ld)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (memcmp(&x[i * ld + j], &x[j * ld + i], sizeof(float)) != 0) {
                return 0;
            }
        }
    }
    return 1;
}

/* max |A X - I| with A (ld n) and X (ld ldx), both n x n double. */
static double residual_d(size_t n, const double *a, const double *x, size_t ldx)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = i == j ? -1.0 : 0.0;
            for (size_t k = 0; k < n; k++) {
                s += a[i * n + k] * x[k * ldx + j];
            }
            if (!(fabs(s) <= worst)) {
                worst = fabs(s);
            }
        }
    }
    return worst;
}

/* max-row-sum norm of an n x n matrix with leading dimension ld. */
static double norm_inf_d(size_t n, const double *a, size_t ld)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (size_t j = 0; j < n; j++) {
            s += fabs(a[i * ld + j]);
        }
        worst = s > worst ? s : worst;
    }
    return worst;
}

/* Reference inverse of the n x n matrix a (ld n) by Gaussian elimination; n x n, ld n. */
static double *reference_inverse(size_t n, const double *a)
{
    double *m = dalloc(n * n), *x = dalloc(n * n);
    memcpy(m, a, n * n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        x[i * n + i] = 1.0;
    }
    CHECK(kf_test_solve(n, n, m, x) == 0);
    free(m);
    return x;
}

/* ---- SPD inverse -------------------------------------------------------------------------------- */

static void test_inverse_random(void)
{
    kf_rng rng = {0x1234567u};
    for (size_t s = 0; s < NUM_SIZES; s++) {
        size_t n = kSizes[s], ld = n + 3;
        double *a = dalloc(n * n), *ref, *x, *af = dalloc(n * n), *reff, *xfd = dalloc(n * n);
        float *xf;
        double maxref = 0.0, errd = 0.0, errf = 0.0;
        random_spd(&rng, n, 0.1, a);
        ref = reference_inverse(n, a);

        /* double */
        x = padded_d(n, a, ld);
        CHECK(kf__spd_inverse_d(n, x, ld) == 0);
        CHECK(padding_intact_d(n, x, ld));
        CHECK(exactly_symmetric_d(n, x, ld));
        {
            double r = residual_d(n, a, x, ld);
            if (!(r <= 1e-10)) {
                fprintf(stderr, "n=%zu: double residual %.3g\n", n, r);
            }
            CHECK(r <= 1e-10);
        }
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++) {
                double d = fabs(x[i * ld + j] - ref[i * n + j]);
                errd = d > errd ? d : errd;
                maxref = fabs(ref[i * n + j]) > maxref ? fabs(ref[i * n + j]) : maxref;
            }
        }
        CHECK(errd <= 1e-10 * maxref);

        /* float: the reference is the exact inverse of the float-rounded matrix */
        xf = padded_f(n, a, ld);
        for (size_t i = 0; i < n * n; i++) {
            af[i] = (double)(float)a[i];
        }
        reff = reference_inverse(n, af);
        CHECK(kf__spd_inverse_f(n, xf, ld) == 0);
        CHECK(padding_intact_f(n, xf, ld));
        CHECK(exactly_symmetric_f(n, xf, ld));
        maxref = 0.0;
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++) {
                double d = fabs((double)xf[i * ld + j] - reff[i * n + j]);
                errf = d > errf ? d : errf;
                maxref = fabs(reff[i * n + j]) > maxref ? fabs(reff[i * n + j]) : maxref;
                xfd[i * n + j] = xf[i * ld + j];
            }
        }
        if (!(errf <= 1e-3 * maxref)) {
            fprintf(stderr, "n=%zu: float relative error %.3g\n", n, errf / maxref);
        }
        CHECK(errf <= 1e-3 * maxref);
        /* normalised residual ||A X - I|| / (||A|| ||X||): a few float epsilons times n */
        {
            double r = residual_d(n, af, xfd, n) / (norm_inf_d(n, af, n) * norm_inf_d(n, xfd, n));
            CHECK(r <= 1e-5);
        }
        free(a);
        free(ref);
        free(x);
        free(af);
        free(reff);
        free(xf);
        free(xfd);
    }
}

static void test_inverse_exact_cases(void)
{
    /* 1 x 1 and a diagonal of powers of 4: square roots and inverses exact in binary */
    double one[1] = {4.0};
    float onef[1] = {4.0f};
    double diag[9] = {4.0, 0.0, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 16.0};
    const double want[9] = {0.25, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0625};
    CHECK(kf__spd_inverse_d(1, one, 1) == 0 && one[0] == 0.25);
    CHECK(kf__spd_inverse_f(1, onef, 1) == 0 && onef[0] == 0.25f);
    CHECK(kf__spd_inverse_d(3, diag, 3) == 0);
    for (size_t i = 0; i < 9; i++) {
        CHECK(diag[i] == want[i]); /* == so that -0.0 off the diagonal counts as 0 */
    }
    /* [[4, 2], [2, 2]]^{-1} = [[0.5, -0.5], [-0.5, 1]] */
    {
        double m[4] = {4.0, 2.0, 2.0, 2.0};
        CHECK(kf__spd_inverse_d(2, m, 2) == 0);
        CHECK(fabs(m[0] - 0.5) < 1e-15 && fabs(m[1] + 0.5) < 1e-15 && fabs(m[2] + 0.5) < 1e-15 &&
              fabs(m[3] - 1.0) < 1e-15);
    }
}

/* Matrices that are not positive definite, with exact arithmetic making the bad pivot exact. */
static void test_inverse_failures(void)
{
    static const double zero[16] = {0};
    static const double ones[4] = {1.0, 1.0, 1.0, 1.0};                       /* singular */
    static const double rank1[9] = {1, 2, 3, 2, 4, 6, 3, 6, 9};               /* u u^T */
    static const double indef[4] = {1.0, 2.0, 2.0, 1.0};                      /* eigenvalues -1, 3 */
    static const double middle0[9] = {1, 0, 0, 0, 0, 0, 0, 0, 1};             /* zero pivot inside */
    static const double negdiag[9] = {1, 0, 0, 0, 1, 0, 0, 0, -2};            /* negative pivot */
    struct {
        size_t n;
        const double *a;
    } cases[] = {{4, zero}, {2, ones}, {3, rank1}, {2, indef}, {3, middle0}, {3, negdiag}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c].n, ld = n + 2;
        double *x = padded_d(n, cases[c].a, ld);
        float *xf = padded_f(n, cases[c].a, ld);
        CHECK(kf__spd_inverse_d(n, x, ld) != 0);
        CHECK(kf__spd_inverse_f(n, xf, ld) != 0);
        CHECK(padding_intact_d(n, x, ld));
        CHECK(padding_intact_f(n, xf, ld));
        free(x);
        free(xf);
    }
    /* A large SPD matrix whose last diagonal entry is made negative: found only at the last pivot,
     * after every blocked update. */
    {
        kf_rng rng = {99u};
        size_t n = 100, ld = 101;
        double *a = dalloc(n * n), *x;
        float *xf;
        random_spd(&rng, n, 0.1, a);
        a[(n - 1) * n + n - 1] = -1.0;
        x = padded_d(n, a, ld);
        xf = padded_f(n, a, ld);
        CHECK(kf__spd_inverse_d(n, x, ld) != 0);
        CHECK(kf__spd_inverse_f(n, xf, ld) != 0);
        free(a);
        free(x);
        free(xf);
    }
    /* Indefinite with a positive diagonal: B B^T + 0.1 I - 2 lambda_max-ish e e^T along a dense
     * direction, so that no single pivot is negative on sight. */
    {
        kf_rng rng = {7u};
        size_t n = 40, ld = 43;
        double *a = dalloc(n * n), *x;
        float *xf;
        random_spd(&rng, n, 0.1, a);
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++) {
                a[i * n + j] -= 100.0 / (double)n; /* subtracts 100 u u^T with u = 1/sqrt(n) */
            }
            a[i * n + i] += 50.0 / (double)n + 1.0;
        }
        x = padded_d(n, a, ld);
        xf = padded_f(n, a, ld);
        for (size_t i = 0; i < n; i++) {
            CHECK(a[i * n + i] > 0.0);
        }
        CHECK(kf__spd_inverse_d(n, x, ld) != 0);
        CHECK(kf__spd_inverse_f(n, xf, ld) != 0);
        free(a);
        free(x);
        free(xf);
    }
}

/* Condition number 1e12: the inverse is inaccurate by ~cond * eps, but its normalised residual
 * ||A X - I|| / (||A|| ||X||) must stay at the level of n * eps (backward stability), its plain
 * residual within n * eps * cond, and its error against the exact inverse within 10 * cond * eps.
 * (Both backends measure ~1e-18, ~1e-5 and ~3e-6 here.) */
static void test_inverse_ill_conditioned(void)
{
    kf_rng rng = {2024u};
    size_t n = 60, ld = 64;
    const double cond = 1e12;
    double *q = dalloc(n * n), *lam = dalloc(n), *inv_lam = dalloc(n), *a = dalloc(n * n),
           *exact = dalloc(n * n), *x;
    double r, err = 0.0, maxe = 0.0;
    random_orthogonal(&rng, n, q);
    for (size_t i = 0; i < n; i++) {
        lam[i] = pow(cond, -(double)i / (double)(n - 1));
        inv_lam[i] = 1.0 / lam[i];
    }
    from_spectrum(n, q, lam, a);
    from_spectrum(n, q, inv_lam, exact);
    x = padded_d(n, a, ld);
    CHECK(kf__spd_inverse_d(n, x, ld) == 0);
    CHECK(exactly_symmetric_d(n, x, ld));
    r = residual_d(n, a, x, ld);
    CHECK(r / (norm_inf_d(n, a, n) * norm_inf_d(n, x, ld)) <= (double)n * DBL_EPSILON);
    CHECK(r <= (double)n * DBL_EPSILON * cond);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double d = fabs(x[i * ld + j] - exact[i * n + j]);
            err = d > err ? d : err;
            maxe = fabs(exact[i * n + j]) > maxe ? fabs(exact[i * n + j]) : maxe;
        }
    }
    CHECK(err <= 10.0 * DBL_EPSILON * cond * maxe);
    free(q);
    free(lam);
    free(inv_lam);
    free(a);
    free(exact);
    free(x);
}

/* ---- eigendecomposition ------------------------------------------------------------------------- */

typedef struct eig_result {
    double *q; /* n x ld, eigenvectors in the columns */
    double *w;
    int rc;
} eig_result;

/* Runs kf__sym_eig_d on a padded copy of a (n x n, ld n) with workspaces of exactly the advertised
 * size (so that the sanitizer build catches overruns). */
static eig_result run_eig(size_t n, const double *a, size_t ld)
{
    eig_result r;
    size_t lw = kf__sym_eig_work(n), liw = kf__sym_eig_iwork(n);
    double *work = dalloc(lw);
    int *iwork = (int *)kf_test_xmalloc((liw ? liw : 1) * sizeof(int));
    r.q = padded_d(n, a, ld);
    r.w = dalloc(n);
    r.rc = kf__sym_eig_d(n, r.q, ld, r.w, work, liw ? iwork : NULL);
    free(work);
    free(iwork);
    return r;
}

/* Reconstruction, orthogonality, ordering and padding; tol is absolute on entries of size ~1. */
static void check_eig(const char *what, size_t n, const double *a, size_t ld, eig_result *r,
                      double tol)
{
    double rec = 0.0, orth = 0.0;
    int ascending = 1;
    CHECK(r->rc == 0);
    if (r->rc != 0) {
        fprintf(stderr, "%s: eig failed\n", what);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            double s = 0.0, t = i == j ? -1.0 : 0.0;
            for (size_t k = 0; k < n; k++) {
                s += r->q[i * ld + k] * r->w[k] * r->q[j * ld + k];
                t += r->q[k * ld + i] * r->q[k * ld + j];
            }
            s = fabs(s - a[i * n + j]);
            rec = s > rec ? s : rec;
            orth = fabs(t) > orth ? fabs(t) : orth;
        }
    }
    for (size_t i = 0; i + 1 < n; i++) {
        ascending &= r->w[i] <= r->w[i + 1];
    }
    if (!(rec <= tol) || !(orth <= 1e-10)) {
        fprintf(stderr, "%s (n=%zu): reconstruction %.3g, orthogonality %.3g\n", what, n, rec, orth);
    }
    CHECK(rec <= tol);
    CHECK(orth <= 1e-10);
    CHECK(ascending);
    CHECK(padding_intact_d(n, r->q, ld));
}

static void free_eig(eig_result *r)
{
    free(r->q);
    free(r->w);
}

static void test_eig_random(void)
{
    kf_rng rng = {0xabcdefu};
    for (size_t s = 0; s < NUM_SIZES; s++) {
        size_t n = kSizes[s], ld = n + 3;
        double *a = dalloc(n * n), trace = 0.0, sum = 0.0;
        eig_result r;
        random_sym(&rng, n, a);
        r = run_eig(n, a, ld);
        check_eig("random symmetric", n, a, ld, &r, 1e-10);
        for (size_t i = 0; i < n; i++) {
            trace += a[i * n + i];
            sum += r.w[i];
        }
        CHECK(fabs(trace - sum) <= 1e-10 * (double)n);
        free_eig(&r);

        /* an SPD one: all eigenvalues >= the 0.1 shift */
        random_spd(&rng, n, 0.1, a);
        r = run_eig(n, a, ld);
        check_eig("random SPD", n, a, ld, &r, 1e-10 * (double)n);
        CHECK(r.rc == 0 && r.w[0] >= 0.1 - 1e-9);
        free_eig(&r);
        free(a);
    }
}

static void test_eig_closed_forms(void)
{
    /* diagonal: sorted diagonal, eigenvectors the unit vectors */
    {
        static const double d[5] = {3.0, -1.0, 2.0, 0.0, 5.0};
        static const double want[5] = {-1.0, 0.0, 2.0, 3.0, 5.0};
        static const size_t from[5] = {1, 3, 2, 0, 4}; /* row of the 1 in each column */
        double a[25] = {0};
        eig_result r;
        for (size_t i = 0; i < 5; i++) {
            a[i * 5 + i] = d[i];
        }
        r = run_eig(5, a, 7);
        check_eig("diagonal", 5, a, 7, &r, 1e-14);
        for (size_t j = 0; j < 5; j++) {
            CHECK(fabs(r.w[j] - want[j]) <= 1e-15);
            for (size_t i = 0; i < 5; i++) {
                CHECK(fabs(fabs(r.q[i * 7 + j]) - (i == from[j] ? 1.0 : 0.0)) <= 1e-15);
            }
        }
        free_eig(&r);
    }
    /* [[2, 1], [1, 2]]: eigenvalues 1, 3 with (1, -1)/sqrt2 and (1, 1)/sqrt2 */
    {
        static const double a[4] = {2.0, 1.0, 1.0, 2.0};
        const double h = sqrt(0.5);
        eig_result r = run_eig(2, a, 3);
        check_eig("2x2", 2, a, 3, &r, 1e-14);
        CHECK(fabs(r.w[0] - 1.0) <= 1e-15 && fabs(r.w[1] - 3.0) <= 1e-15);
        CHECK(fabs(fabs(r.q[0]) - h) <= 1e-15 && fabs(r.q[0] + r.q[3]) <= 1e-15);
        CHECK(fabs(fabs(r.q[1]) - h) <= 1e-15 && fabs(r.q[1] - r.q[4]) <= 1e-15);
        free_eig(&r);
    }
    /* 1 x 1 */
    {
        static const double a[1] = {-2.5};
        eig_result r = run_eig(1, a, 2);
        CHECK(r.rc == 0 && r.w[0] == -2.5 && fabs(r.q[0]) == 1.0);
        free_eig(&r);
    }
    /* identity and zero: one eigenvalue of multiplicity n */
    {
        size_t n = 10;
        double *a = dalloc(n * n);
        eig_result r;
        for (size_t i = 0; i < n; i++) {
            a[i * n + i] = 1.0;
        }
        r = run_eig(n, a, n + 1);
        check_eig("identity", n, a, n + 1, &r, 1e-14);
        for (size_t i = 0; i < n; i++) {
            CHECK(fabs(r.w[i] - 1.0) <= 1e-15);
        }
        free_eig(&r);
        memset(a, 0, n * n * sizeof(double));
        r = run_eig(n, a, n + 1);
        check_eig("zero", n, a, n + 1, &r, 0.0);
        for (size_t i = 0; i < n; i++) {
            CHECK(r.w[i] == 0.0);
        }
        free_eig(&r);
        free(a);
    }
    /* rank one u u^T: n - 1 zeros and |u|^2 with eigenvector u/|u| */
    {
        kf_rng rng = {5u};
        size_t n = 20, ld = 22;
        double u[20], uu = 0.0, dot = 0.0, *a = dalloc(n * n);
        eig_result r;
        for (size_t i = 0; i < n; i++) {
            u[i] = kf_rng_uniform(&rng);
            uu += u[i] * u[i];
        }
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++) {
                a[i * n + j] = u[i] * u[j];
            }
        }
        r = run_eig(n, a, ld);
        check_eig("rank one", n, a, ld, &r, 1e-13);
        for (size_t i = 0; i + 1 < n; i++) {
            CHECK(fabs(r.w[i]) <= 1e-14 * uu);
        }
        CHECK(fabs(r.w[n - 1] - uu) <= 1e-14 * uu);
        for (size_t i = 0; i < n; i++) {
            dot += r.q[i * ld + n - 1] * u[i];
        }
        CHECK(fabs(fabs(dot) - sqrt(uu)) <= 1e-14 * sqrt(uu));
        free_eig(&r);
        free(a);
    }
    /* 1-D Laplacian tridiag(-1, 2, -1): eigenvalues 2 - 2 cos(k pi / (n + 1)), k = 1..n */
    {
        size_t n = 50, ld = 53;
        double *a = dalloc(n * n), worst = 0.0;
        const double pi = 3.14159265358979323846;
        eig_result r;
        for (size_t i = 0; i < n; i++) {
            a[i * n + i] = 2.0;
            if (i + 1 < n) {
                a[i * n + i + 1] = -1.0;
                a[(i + 1) * n + i] = -1.0;
            }
        }
        r = run_eig(n, a, ld);
        check_eig("laplacian", n, a, ld, &r, 1e-13);
        for (size_t k = 0; k < n; k++) {
            double want = 2.0 - 2.0 * cos((double)(k + 1) * pi / (double)(n + 1));
            double d = fabs(r.w[k] - want);
            worst = d > worst ? d : worst;
        }
        CHECK(worst <= 1e-13);
        free_eig(&r);
        free(a);
    }
    /* repeated eigenvalues in a rotated basis */
    {
        kf_rng rng = {11u};
        size_t n = 12, ld = 15;
        static const double lam[12] = {2, 1, 5, 1, 2, 1, -3, 5, 5, 0, 2, 1};
        static const double want[12] = {-3, 0, 1, 1, 1, 1, 2, 2, 2, 5, 5, 5};
        double *q = dalloc(n * n), *a = dalloc(n * n);
        eig_result r;
        random_orthogonal(&rng, n, q);
        from_spectrum(n, q, lam, a);
        r = run_eig(n, a, ld);
        check_eig("clustered", n, a, ld, &r, 1e-13);
        for (size_t i = 0; i < n; i++) {
            CHECK(fabs(r.w[i] - want[i]) <= 1e-13);
        }
        free_eig(&r);
        free(q);
        free(a);
    }
}

/* Entries far from 1: eigenvalues scale exactly with the matrix (no overflow or underflow). */
static void test_eig_scaling(void)
{
    kf_rng rng = {31u};
    size_t n = 20, ld = 21;
    static const double scales[] = {1e150, 1e-150, 1e300, 1e-300};
    double *a = dalloc(n * n), *b = dalloc(n * n);
    eig_result base;
    random_sym(&rng, n, a);
    base = run_eig(n, a, ld);
    CHECK(base.rc == 0);
    for (size_t s = 0; s < sizeof scales / sizeof scales[0]; s++) {
        eig_result r;
        double worst = 0.0, orth = 0.0;
        for (size_t i = 0; i < n * n; i++) {
            b[i] = a[i] * scales[s];
        }
        r = run_eig(n, b, ld);
        CHECK(r.rc == 0);
        for (size_t i = 0; i < n; i++) {
            double d = fabs(r.w[i] / scales[s] - base.w[i]);
            worst = d > worst ? d : worst;
            for (size_t j = 0; j < n; j++) {
                double t = i == j ? -1.0 : 0.0;
                for (size_t k = 0; k < n; k++) {
                    t += r.q[k * ld + i] * r.q[k * ld + j];
                }
                orth = fabs(t) > orth ? fabs(t) : orth;
            }
        }
        if (!(worst <= 1e-12) || !(orth <= 1e-12)) {
            fprintf(stderr, "scale %g: eigenvalue error %.3g, orthogonality %.3g\n", scales[s],
                    worst, orth);
        }
        CHECK(worst <= 1e-12);
        CHECK(orth <= 1e-12);
        free_eig(&r);
    }
    free_eig(&base);
    free(a);
    free(b);
}

/* Workspace sizes saturate instead of wrapping; sizes LAPACK cannot take are refused. */
static void test_sizes(void)
{
    CHECK(kf__sym_eig_work(SIZE_MAX) == SIZE_MAX);
    CHECK(kf__sym_eig_work(SIZE_MAX / 2) == SIZE_MAX);
    CHECK(kf__sym_eig_work(1000) >= 1000);
    CHECK(kf__sym_eig_iwork(SIZE_MAX) == SIZE_MAX || kf__sym_eig_iwork(SIZE_MAX) == 0);
#if defined(KRONFAC_HAVE_BLAS)
    CHECK(strcmp(kf__linalg_backend(), "lapack") == 0);
    /* n, lda or lwork beyond INT_MAX: refused before LAPACK (or memory) is touched */
    {
        double dummy[4] = {1.0, 0.0, 0.0, 1.0}, w[2], work[16];
        float dummyf[4] = {1.0f, 0.0f, 0.0f, 1.0f};
        int iwork[16];
        CHECK(kf__spd_inverse_d((size_t)INT_MAX + 1, dummy, (size_t)INT_MAX + 1) != 0);
        CHECK(kf__spd_inverse_f((size_t)INT_MAX + 1, dummyf, (size_t)INT_MAX + 1) != 0);
        CHECK(kf__spd_inverse_d(2, dummy, (size_t)INT_MAX + 1) != 0);
        CHECK(kf__sym_eig_d(40000, dummy, 40000, w, work, iwork) != 0); /* lwork > INT_MAX */
        CHECK(kf__sym_eig_work(40000) > (size_t)INT_MAX);
        CHECK(dummy[0] == 1.0 && dummyf[0] == 1.0f);
    }
#else
    CHECK(strcmp(kf__linalg_backend(), "portable") == 0);
    /* the portable solver reports non-finite input as non-convergence at once */
    {
        double a[4] = {1.0, NAN, NAN, 1.0}, w[2], work[6];
        CHECK(kf__sym_eig_d(2, a, 2, w, work, NULL) != 0);
    }
#endif
}

int main(void)
{
    test_inverse_exact_cases();
    test_inverse_random();
    test_inverse_failures();
    test_inverse_ill_conditioned();
    test_eig_closed_forms();
    test_eig_random();
    test_eig_scaling();
    test_sizes();
    return kf_test_finish("test_linalg");
}
