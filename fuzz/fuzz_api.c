/* Fuzz harness: random sequences of API calls.
 *
 * The input is decoded into up to 48 calls: contexts and optimizers created with parameters from
 * the bytes (valid or not) and with an allocator that may fail its k-th allocation; layers of
 * random shapes (<= 16); observations, steps, schedules, queries, checkpoints; and every primitive
 * with random shapes and leading dimensions (sometimes invalid, sometimes aliased), on buffers of
 * exactly the size the shape claims, filled with ordinary values, zeros, rank-one data, NaN, Inf,
 * denormals, 1e30 and 1e-30.
 *
 * Any status is acceptable; these are bugs (the harness aborts on them):
 *   crashes, sanitizer reports, hangs, leaks, a free with the wrong size;
 *   a failed call that wrote to an output or changed the optimizer's state (its checkpoint);
 *   a call that wrote to a const input or into the gap between rows (ld > width);
 *   an error without a last-error message; counters that disagree with the calls made;
 *   a checkpoint that does not restore to the same bytes, or a corrupted one that is accepted. */
#include "fuzz_util.h"

#define MAX_LAYERS 6
#define MAX_OPS 48

typedef struct layer_shape {
    size_t out, in, shared, da;
    int bias;
} layer_shape;

typedef struct world {
    fz_in in;
    fz_pool pool;
    kf_context *ctx;
    kf_optimizer *opt;
    layer_shape layers[MAX_LAYERS];
    size_t n_layers;
    uint64_t steps;
} world;

static fz_alloc_state ctx_alloc, opt_alloc;

/* ---- helpers ------------------------------------------------------------------------------- */

/* A leading dimension for rows of `width`: usually width plus a small gap, sometimes too small. */
static size_t pick_ld(fz_in *in, size_t width)
{
    uint8_t b = fz_u8(in);
    if (b % 16 == 15) {
        return width > 0 ? width - 1 : 0;
    }
    return width + b % 4;
}

/* A filled matrix of exactly (rows - 1) * ld + cols floats; the gaps between rows hold a canary. */
static float *make_input(world *w, size_t rows, size_t cols, size_t ld)
{
    float *p = fz_mat(&w->pool, rows, cols, ld);
    size_t eff_cols = cols < ld ? cols : ld;
    if (!p) {
        return NULL;
    }
    if (rows > 0 && cols > 0) {
        fz_fill(&w->in, p, rows, eff_cols, ld);
    }
    return p;
}

static size_t count_of(size_t rows, size_t cols, size_t ld)
{
    return fz_mat_count(rows, cols, ld);
}

/* The whole buffer is unchanged. */
static void same_bytes(const void *a, const void *b, size_t bytes)
{
    FZ_ASSERT(memcmp(a, b, bytes) == 0);
}

/* Nothing was written in the gaps between rows (columns >= cols of each row). */
static void gaps_unchanged(const float *before, const float *after, size_t rows, size_t cols,
                           size_t ld)
{
    if (ld <= cols || rows == 0) {
        return;
    }
    for (size_t i = 0; i + 1 < rows; i++) {
        FZ_ASSERT(memcmp(before + i * ld + cols, after + i * ld + cols,
                         (ld - cols) * sizeof(float)) == 0);
    }
}

static uint8_t *save_all(const kf_optimizer *opt, size_t *size)
{
    size_t need = 0, written = 0;
    uint8_t *buf;
    FZ_ASSERT(kf_optimizer_checkpoint_size(opt, &need) == KF_OK);
    buf = (uint8_t *)malloc(need);
    FZ_ASSERT(buf != NULL);
    FZ_ASSERT(kf_optimizer_save(opt, buf, need, &written) == KF_OK);
    FZ_ASSERT(written == need);
    *size = need;
    return buf;
}

static void state_unchanged(const kf_optimizer *opt, const uint8_t *before, size_t size)
{
    size_t now_size;
    uint8_t *now = save_all(opt, &now_size);
    FZ_ASSERT(now_size == size && memcmp(now, before, size) == 0);
    free(now);
}

static void ctx_error_has_message(const world *w, kf_status s)
{
    if (s != KF_OK && w->ctx) {
        FZ_ASSERT(kf_context_last_error(w->ctx)[0] != '\0');
    }
}

/* ---- primitives ---------------------------------------------------------------------------- */

static void op_gemm(world *w)
{
    fz_in *in = &w->in;
    kf_transpose ta = (kf_transpose)(fz_u8(in) % 3), tb = (kf_transpose)(fz_u8(in) % 3);
    size_t m = fz_dim(in, 17), n = fz_dim(in, 17), k = fz_upto(in, 17);
    size_t ar = ta == KF_TRANS ? k : m, ac = ta == KF_TRANS ? m : k;
    size_t br = tb == KF_TRANS ? n : k, bc = tb == KF_TRANS ? k : n;
    size_t lda = pick_ld(in, ac), ldb = pick_ld(in, bc), ldc = pick_ld(in, n);
    float alpha = fz_float(in), beta = fz_u8(in) % 2 ? 0.0f : fz_float(in);
    int alias = fz_u8(in) % 8 == 0;
    float *a = make_input(w, ar, ac, lda), *b = make_input(w, br, bc, ldb), *c, *a0, *b0, *c0;
    size_t na = count_of(ar, ac, lda), nb = count_of(br, bc, ldb), nc = count_of(m, n, ldc);
    kf_status s;
    if (!a || !b) {
        return;
    }
    if (alias && na >= nc) {
        c = a; /* C overlapping A must be refused */
    } else {
        c = fz_mat(&w->pool, m, n, ldc);
        if (!c) {
            return;
        }
        if (beta != 0.0f) {
            fz_fill(in, c, m, n < ldc ? n : ldc, ldc);
        }
    }
    a0 = fz_dup(&w->pool, a, na * sizeof(float));
    b0 = fz_dup(&w->pool, b, nb * sizeof(float));
    c0 = fz_dup(&w->pool, c, nc * sizeof(float));
    if (!a0 || !b0 || !c0) {
        return;
    }
    s = kf_gemm(w->ctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    ctx_error_has_message(w, s);
    if (c != a) {
        same_bytes(a, a0, na * sizeof(float));
    }
    same_bytes(b, b0, nb * sizeof(float));
    if (s != KF_OK) {
        same_bytes(c, c0, nc * sizeof(float));
        return;
    }
    FZ_ASSERT(c != a || k == 0); /* with k = 0, A is not read and may alias C */
    if (c != a) {
        gaps_unchanged(c0, c, m, n, ldc);
    }
    /* beta = 0: C is not read, so its NaN must not reach a result of finite moderate inputs. */
    if (beta == 0.0f && fabsf(alpha) <= 1e3f && fz_all_finite(a, ar, ac, lda) &&
        fz_all_finite(b, br, bc, ldb)) {
        int moderate = 1;
        for (size_t i = 0; i < na; i++) {
            moderate &= !(fabsf(a[i]) > 1e3f);
        }
        for (size_t i = 0; i < nb; i++) {
            moderate &= !(fabsf(b[i]) > 1e3f);
        }
        if (moderate) {
            FZ_ASSERT(fz_all_finite(c, m, n, ldc));
        }
    }
}

static void op_syrk(world *w)
{
    fz_in *in = &w->in;
    size_t k = fz_upto(in, 17), n = fz_dim(in, 17), ldx = pick_ld(in, n), ldc = pick_ld(in, n);
    float alpha = fz_float(in), beta = fz_u8(in) % 2 ? 0.0f : fz_float(in);
    float *x = make_input(w, k, n, ldx), *c = fz_mat(&w->pool, n, n, ldc), *x0, *c0;
    size_t nx = count_of(k, n, ldx), nc = count_of(n, n, ldc);
    kf_status s;
    if (!x || !c) {
        return;
    }
    if (beta != 0.0f) {
        fz_fill(in, c, n, n < ldc ? n : ldc, ldc);
    }
    x0 = fz_dup(&w->pool, x, nx * sizeof(float));
    c0 = fz_dup(&w->pool, c, nc * sizeof(float));
    if (!x0 || !c0) {
        return;
    }
    s = kf_syrk(w->ctx, k, n, alpha, x, ldx, beta, c, ldc);
    ctx_error_has_message(w, s);
    same_bytes(x, x0, nx * sizeof(float));
    if (s != KF_OK) {
        same_bytes(c, c0, nc * sizeof(float));
        return;
    }
    gaps_unchanged(c0, c, n, n, ldc);
    /* Both triangles are written and equal (the product is symmetric by construction). */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            float u = c[i * ldc + j], l = c[j * ldc + i];
            FZ_ASSERT((isnan(u) && isnan(l)) || u == l);
        }
    }
}

static void op_scale_axpby_trace(world *w, int which)
{
    fz_in *in = &w->in;
    size_t rows = fz_dim(in, 17), cols = fz_dim(in, 17);
    size_t ldx = pick_ld(in, cols), ldy = pick_ld(in, cols);
    float alpha = fz_float(in), beta = fz_u8(in) % 2 ? 0.0f : fz_float(in);
    float *x = make_input(w, rows, cols, ldx), *y = make_input(w, rows, cols, ldy), *x0, *y0;
    size_t nx = count_of(rows, cols, ldx), ny = count_of(rows, cols, ldy);
    double tr = 12345.0;
    kf_status s;
    if (!x || !y) {
        return;
    }
    x0 = fz_dup(&w->pool, x, nx * sizeof(float));
    y0 = fz_dup(&w->pool, y, ny * sizeof(float));
    if (!x0 || !y0) {
        return;
    }
    if (which == 0) {
        s = kf_scale(w->ctx, rows, cols, alpha, x, ldx);
        ctx_error_has_message(w, s);
        if (s != KF_OK) {
            same_bytes(x, x0, nx * sizeof(float));
        } else {
            gaps_unchanged(x0, x, rows, cols, ldx);
        }
    } else if (which == 1) {
        int alias = fz_u8(in) % 8 == 0 && ny >= nx;
        float *yy = alias ? x : y;
        s = kf_axpby(w->ctx, rows, cols, alpha, x, ldx, beta, yy, ldy);
        ctx_error_has_message(w, s);
        if (alias) {
            FZ_ASSERT(s != KF_OK);
        }
        if (!alias) {
            same_bytes(x, x0, nx * sizeof(float));
        }
        if (s != KF_OK) {
            same_bytes(yy, alias ? x0 : y0, (alias ? nx : ny) * sizeof(float));
        } else {
            gaps_unchanged(y0, y, rows, cols, ldy);
        }
    } else {
        size_t n = rows, lda = pick_ld(in, n);
        float *a = make_input(w, n, n, lda);
        if (!a) {
            return;
        }
        s = kf_trace(w->ctx, n, a, lda, fz_u8(in) % 16 == 0 ? NULL : &tr);
        ctx_error_has_message(w, s);
        if (s != KF_OK) {
            FZ_ASSERT(tr == 12345.0);
        }
    }
}

static void op_factor(world *w, int which)
{
    fz_in *in = &w->in;
    size_t n = fz_dim(in, 5), r = fz_dim(in, 3), width = fz_dim(in, 16);
    int bias = (int)(fz_u8(in) % 3) - (fz_u8(in) % 16 == 0 ? 2 : 0);
    kf_shared_mode mode = (kf_shared_mode)(fz_u8(in) % 3);
    size_t rows = n * r, ldx = pick_ld(in, width), dim, ldo;
    float *x = make_input(w, rows, width, ldx), *x0, *o, *o0;
    size_t nx = count_of(rows, width, ldx), no;
    kf_status s;
    if (!x) {
        return;
    }
    dim = which == 0 ? width + (bias == 1) : width;
    ldo = pick_ld(in, dim);
    o = fz_mat(&w->pool, dim, dim, ldo);
    no = count_of(dim, dim, ldo);
    x0 = fz_dup(&w->pool, x, nx * sizeof(float));
    if (!o || !x0 || !(o0 = fz_dup(&w->pool, o, no * sizeof(float)))) {
        return;
    }
    if (which == 0) {
        s = kf_activation_factor(w->ctx, n, r, width, x, ldx, bias, mode, o, ldo);
    } else {
        size_t lt = fz_upto(in, 3);
        float scale = fz_float(in);
        s = kf_gradient_factor(w->ctx, n, r, width, x, ldx, mode, lt, scale, o, ldo);
    }
    ctx_error_has_message(w, s);
    same_bytes(x, x0, nx * sizeof(float));
    if (s != KF_OK) {
        same_bytes(o, o0, no * sizeof(float));
    } else {
        gaps_unchanged(o0, o, dim, dim, ldo);
    }
}

static void op_ema(world *w)
{
    fz_in *in = &w->in;
    size_t dim = fz_dim(in, 16), ldb = pick_ld(in, dim), lda = pick_ld(in, dim);
    float decay = fz_u8(in) % 2 ? fz_moderate(in) * 0.99f : fz_float(in);
    double weight = fz_u8(in) % 2 ? 0.0 : (double)fz_float(in);
    double weight0 = weight;
    float *b = make_input(w, dim, dim, ldb), *a = make_input(w, dim, dim, lda), *a0;
    size_t na = count_of(dim, dim, lda);
    kf_status s;
    if (!a || !b || !(a0 = fz_dup(&w->pool, a, na * sizeof(float)))) {
        return;
    }
    s = kf_factor_ema_update(w->ctx, dim, decay, b, ldb, a, lda, &weight);
    ctx_error_has_message(w, s);
    if (s != KF_OK) {
        same_bytes(a, a0, na * sizeof(float));
        FZ_ASSERT(memcmp(&weight, &weight0, sizeof weight) == 0);
    } else {
        gaps_unchanged(a0, a, dim, dim, lda);
    }
}

static void op_inverse_eig_pi(world *w, int which)
{
    fz_in *in = &w->in;
    size_t n = fz_dim(in, 16), ldf = pick_ld(in, n), ldo = pick_ld(in, n);
    float damping = fz_u8(in) % 2 ? fz_moderate(in) : fz_float(in);
    kf_precision prec = (kf_precision)(fz_u8(in) % 3);
    float *f = make_input(w, n, n, ldf), *o = fz_mat(&w->pool, n, n, ldo), *f0, *o0;
    float *ev = fz_mat(&w->pool, 1, n, n), *ev0;
    size_t nf = count_of(n, n, ldf), no = count_of(n, n, ldo);
    float jitter = -7.0f, pi = -7.0f;
    kf_status s;
    if (!f || !o || !ev || !(f0 = fz_dup(&w->pool, f, nf * sizeof(float))) ||
        !(o0 = fz_dup(&w->pool, o, no * sizeof(float))) ||
        !(ev0 = fz_dup(&w->pool, ev, n * sizeof(float)))) {
        return;
    }
    if (which == 0) {
        s = kf_damped_inverse(w->ctx, n, f, ldf, damping, prec, o, ldo, &jitter);
        if (s == KF_OK) {
            FZ_ASSERT(jitter >= 0.0f && isfinite(jitter));
            FZ_ASSERT(fz_all_finite(o, n, n, ldo));
        } else {
            FZ_ASSERT(jitter == -7.0f);
        }
    } else if (which == 1) {
        s = kf_sym_eig(w->ctx, n, f, ldf, ev, o, ldo);
        if (s == KF_OK) {
            /* Returned eigenpairs are finite: an eigenvalue beyond FLT_MAX needs an error. */
#ifndef KF_FUZZ_EXPLORE /* to look past the known finding on overflowing eigenvalues */
            FZ_ASSERT(fz_all_finite(o, n, n, ldo) && fz_all_finite(ev, 1, n, n));
#endif
            for (size_t i = 1; i < n; i++) {
                FZ_ASSERT(ev[i - 1] <= ev[i]); /* ascending */
            }
        } else {
            same_bytes(ev, ev0, n * sizeof(float));
        }
    } else {
        size_t ng = fz_dim(in, 16), ldg = pick_ld(in, ng);
        float *g = make_input(w, ng, ng, ldg);
        if (!g) {
            return;
        }
        s = kf_pi(w->ctx, n, f, ldf, ng, g, ldg, &pi);
        if (s == KF_OK) {
            FZ_ASSERT(pi > 0.0f && isfinite(pi)); /* pi = 1 for non-finite or non-positive traces */
        } else {
            FZ_ASSERT(pi == -7.0f);
        }
    }
    ctx_error_has_message(w, s);
    same_bytes(f, f0, nf * sizeof(float));
    if (s != KF_OK) {
        same_bytes(o, o0, no * sizeof(float));
    } else if (which < 2) {
        gaps_unchanged(o0, o, n, n, ldo);
    }
}

static void op_direction(world *w, int which)
{
    fz_in *in = &w->in;
    size_t out = fz_dim(in, 16), da = fz_dim(in, 16);
    size_t ldv = pick_ld(in, da), lda = pick_ld(in, da), ldg = pick_ld(in, out);
    size_t ldd = pick_ld(in, da), lds = pick_ld(in, da);
    float damping = fz_u8(in) % 2 ? fz_moderate(in) : fz_float(in), pi = -7.0f;
    float *v = make_input(w, out, da, ldv), *a = make_input(w, da, da, lda);
    float *g = make_input(w, out, out, ldg), *d = fz_mat(&w->pool, out, da, ldd);
    float *ea = make_input(w, 1, da, da), *eg = make_input(w, 1, out, out);
    float *sc = fz_u8(in) % 2 ? make_input(w, out, da, lds) : NULL;
    size_t nv = count_of(out, da, ldv), nd = count_of(out, da, ldd);
    float *v0, *d0, *a0, *g0;
    kf_status s;
    int alias = fz_u8(in) % 8 == 0 && nv >= nd;
    if (!v || !a || !g || !d || !ea || !eg) {
        return;
    }
    if (alias) {
        d = v; /* D overlapping V must be refused */
    }
    if (!(v0 = fz_dup(&w->pool, v, nv * sizeof(float))) ||
        !(d0 = fz_dup(&w->pool, d, nd * sizeof(float))) ||
        !(a0 = fz_dup(&w->pool, a, count_of(da, da, lda) * sizeof(float))) ||
        !(g0 = fz_dup(&w->pool, g, count_of(out, out, ldg) * sizeof(float)))) {
        return;
    }
    switch (which) {
    case 0:
        s = kf_kronecker_apply(w->ctx, out, da, v, ldv, fz_u8(in) % 2 ? NULL : g, ldg, a, lda, d,
                               ldd);
        break;
    case 1:
        s = kf_foof_direction(w->ctx, out, da, v, ldv, a, lda, damping, d, ldd);
        break;
    case 2:
        s = kf_kfac_direction(w->ctx, out, da, v, ldv, a, lda, g, ldg, damping, d, ldd, &pi);
        if (s == KF_OK) {
            FZ_ASSERT(pi > 0.0f && isfinite(pi));
        } else {
            FZ_ASSERT(pi == -7.0f);
        }
        break;
    case 3:
        s = kf_eigenbasis_apply(w->ctx, out, da, v, ldv, g, ldg, sc ? NULL : eg, a, lda,
                                sc ? NULL : ea, sc, lds, damping, d, ldd);
        break;
    default:
        s = kf_kfac_exact_direction(w->ctx, out, da, v, ldv, a, lda, g, ldg, damping, d, ldd);
        break;
    }
    ctx_error_has_message(w, s);
    if (alias) {
        FZ_ASSERT(s != KF_OK);
    }
    same_bytes(a, a0, count_of(da, da, lda) * sizeof(float));
    same_bytes(g, g0, count_of(out, out, ldg) * sizeof(float));
    if (!alias) {
        same_bytes(v, v0, nv * sizeof(float));
    }
    if (s != KF_OK) {
        same_bytes(d, alias ? v0 : d0, nd * sizeof(float));
    } else {
        /* A direction that is returned is finite: every failure has its own code. The one
         * exception is kf_kronecker_apply, a plain product of given matrices: finite inputs of
         * magnitude 1e30 may overflow there (reported as a finding), so it is held to this only
         * for moderate inputs. */
        int moderate = 1, strict = which != 0;
#ifdef KF_FUZZ_EXPLORE /* to look past the known finding on overflowing directions */
        strict = 0;
        moderate = which == 0;
#endif
        if (!strict) {
            const float *ms[3] = {v, a, g};
            size_t ns[3] = {nv, count_of(da, da, lda), count_of(out, out, ldg)};
            for (int q = 0; q < 3; q++) {
                for (size_t i = 0; i < ns[q]; i++) {
                    moderate &= !(fabsf(ms[q][i]) > 1e3f);
                }
            }
        }
        if (moderate && !fz_all_finite(d, out, da, ldd)) {
            static const char *names[] = {"kf_kronecker_apply", "kf_foof_direction",
                                          "kf_kfac_direction", "kf_eigenbasis_apply",
                                          "kf_kfac_exact_direction"};
            fprintf(stderr, "%s (out %zu, dim_a %zu, damping %g) returned KF_OK with a non-finite "
                    "direction\n", names[which], out, da, (double)damping);
        }
        FZ_ASSERT(!moderate || fz_all_finite(d, out, da, ldd));
        gaps_unchanged(d0, d, out, da, ldd);
    }
}

/* ---- the optimizer ------------------------------------------------------------------------- */

static void destroy_opt(world *w)
{
    kf_optimizer_destroy(w->opt);
    w->opt = NULL;
    w->n_layers = 0;
    w->steps = 0;
    FZ_ASSERT(opt_alloc.live == 0 && opt_alloc.live_bytes == 0);
}

static void op_create(world *w)
{
    fz_in *in = &w->in;
    kf_optimizer_params p;
    kf_algorithm algo = (kf_algorithm)((int)(fz_u8(in) % 8) - 1);
    kf_status s;
    kf_optimizer *opt = NULL;
    uint8_t which;
    if (kf_optimizer_params_init(&p, algo) != KF_OK) {
        FZ_ASSERT(algo < KF_ALGO_SGD || algo > KF_ALGO_EKFAC);
        kf_optimizer_params_init(&p, KF_ALGO_FOOF);
        p.algorithm = algo;
    }
    /* Mutate a few fields, each to a value from the bytes (valid or not). */
    which = fz_u8(in);
    for (int k = 0; k < 4 && (which >> (2 * k)) % 4 == 0; k++) {
        switch (fz_u8(in) % 13) {
        case 0: p.learning_rate = fz_float(in); break;
        case 1: p.momentum = fz_u8(in) % 2 ? fz_moderate(in) * 0.99f : fz_float(in); break;
        case 2: p.weight_decay = fz_u8(in) % 2 ? fz_moderate(in) * 0.1f : fz_float(in); break;
        case 3: p.damping = fz_u8(in) % 2 ? fz_moderate(in) : fz_float(in); break;
        case 4: p.factor_decay = fz_u8(in) % 2 ? fz_moderate(in) * 0.99f : fz_float(in); break;
        case 5: p.stats_interval = fz_u8(in) % 4; break;
        case 6: p.inverse_interval = fz_u8(in) % 4; break;
        case 7: p.inverse_precision = (kf_precision)(fz_u8(in) % 3); break;
        case 8: p.kl_clip = fz_u8(in) % 2 ? fz_moderate(in) * 1e-2f : fz_float(in); break;
        case 9: p.adam_beta1 = fz_float(in); break;
        case 10: p.adam_beta2 = fz_float(in); break;
        case 11: p.adam_epsilon = fz_float(in); break;
        default: p.learning_rate = fz_moderate(in); break;
        }
    }
    destroy_opt(w);
    fz_alloc_init(&opt_alloc, fz_u8(in) % 4 == 0 ? (long)fz_upto(in, 40) : -1, (size_t)64 << 20);
    s = kf_optimizer_create(&p, fz_u8(in) % 8 == 0 ? NULL : &(kf_allocator){fz_alloc_fn, fz_free_fn, &opt_alloc},
                            &opt);
    if (s == KF_OK) {
        kf_optimizer_params q;
        FZ_ASSERT(opt != NULL);
        FZ_ASSERT(kf_optimizer_get_params(opt, &q) == KF_OK);
        FZ_ASSERT(memcmp(&p, &q, sizeof p) == 0);
        FZ_ASSERT(kf_optimizer_last_error(opt)[0] == '\0');
        w->opt = opt;
    } else {
        FZ_ASSERT(opt == NULL);
        FZ_ASSERT(s == KF_ERR_INVALID_ARGUMENT || s == KF_ERR_OUT_OF_MEMORY);
    }
}

static void op_add_layer(world *w)
{
    fz_in *in = &w->in;
    kf_layer_params lp;
    size_t idx = 12345, before_count = 0, after_count = 0, size;
    uint8_t *before;
    kf_status s;
    if (!w->opt) {
        return;
    }
    kf_layer_params_init(&lp, fz_dim(in, 16), fz_dim(in, 16));
    if (fz_u8(in) % 4 == 0) {
        lp.bias = (int)(fz_u8(in) % 3);
    }
    if (fz_u8(in) % 2 == 0) {
        lp.shared = fz_upto(in, 3);
        lp.shared_mode = (kf_shared_mode)(fz_u8(in) % 3);
        lp.loss_terms_per_example = fz_upto(in, 3);
    }
    if (fz_u8(in) % 2 == 0) {
        lp.algorithm = (kf_algorithm)((int)(fz_u8(in) % 8) - 1);
    }
    before = save_all(w->opt, &size);
    kf_optimizer_layer_count(w->opt, &before_count);
    s = kf_optimizer_add_layer(w->opt, &lp, fz_u8(in) % 32 == 0 ? NULL : &idx);
    kf_optimizer_layer_count(w->opt, &after_count);
    if (s == KF_OK) {
        FZ_ASSERT(idx == before_count && after_count == before_count + 1);
        FZ_ASSERT(w->steps == 0);
        if (w->n_layers < MAX_LAYERS) {
            layer_shape *l = &w->layers[w->n_layers];
            l->out = lp.out;
            l->in = lp.in;
            l->bias = lp.bias;
            l->shared = lp.shared;
            l->da = lp.in + (size_t)lp.bias;
        }
        w->n_layers++;
    } else {
        FZ_ASSERT(after_count == before_count);
        FZ_ASSERT(kf_optimizer_last_error(w->opt)[0] != '\0');
        state_unchanged(w->opt, before, size);
    }
    free(before);
}

/* Observations never change the checkpointed state (pending observations are not part of it). */
static void op_observe(world *w, int grads)
{
    fz_in *in = &w->in;
    size_t layer, n = fz_dim(in, 4), width, rows, ld, size, nx;
    float *x, *x0, scale = fz_u8(in) % 2 ? (float)n : fz_float(in);
    uint8_t *before;
    kf_status s;
    if (!w->opt || w->n_layers > MAX_LAYERS) {
        return;
    }
    layer = fz_upto(in, w->n_layers);
    if (layer < w->n_layers) {
        width = grads ? w->layers[layer].out : w->layers[layer].in;
        rows = n * w->layers[layer].shared;
    } else {
        width = fz_dim(in, 16);
        rows = n;
    }
    ld = pick_ld(in, width);
    x = make_input(w, rows, width, ld);
    nx = count_of(rows, width, ld);
    if (!x || !(x0 = fz_dup(&w->pool, x, nx * sizeof(float)))) {
        return;
    }
    before = save_all(w->opt, &size);
    if (grads) {
        s = kf_optimizer_observe_gradients(w->opt, layer, n, x, ld, scale);
    } else {
        s = kf_optimizer_observe_activations(w->opt, layer, n, x, ld);
    }
    if (s != KF_OK) {
        FZ_ASSERT(kf_optimizer_last_error(w->opt)[0] != '\0');
    }
    same_bytes(x, x0, nx * sizeof(float));
    state_unchanged(w->opt, before, size);
    free(before);
}

static void op_reserve(world *w)
{
    fz_in *in = &w->in;
    size_t n, size;
    uint8_t *before;
    kf_status s;
    if (!w->opt) {
        return;
    }
    /* Absurd batch sizes must fail cleanly (their byte counts overflow size_t). */
    n = fz_u8(in) % 8 == 0 ? (SIZE_MAX / 4 + fz_upto(in, 3)) : fz_upto(in, 9);
#ifdef KF_FUZZ_EXPLORE /* to look past the known finding on overflowing reserve sizes */
    n = n > 9 ? 9 : n;
#endif
    before = save_all(w->opt, &size);
    s = kf_optimizer_reserve_batch(w->opt, n);
    if (s != KF_OK) {
        FZ_ASSERT(s == KF_ERR_SHAPE || s == KF_ERR_OUT_OF_MEMORY);
        FZ_ASSERT(kf_optimizer_last_error(w->opt)[0] != '\0');
    }
    state_unchanged(w->opt, before, size);
    free(before);
}

static void op_step(world *w)
{
    fz_in *in = &w->in;
    kf_layer_tensors t[MAX_LAYERS];
    float *wcopy[MAX_LAYERS], *bcopy[MAX_LAYERS], *gcopy[MAX_LAYERS];
    size_t nl, size, count;
    uint64_t steps_after = 0;
    uint8_t *before;
    kf_status s;
    uint8_t twist;
    int twisted = 1;
    if (!w->opt || w->n_layers > MAX_LAYERS) {
        return;
    }
    nl = w->n_layers;
    for (size_t i = 0; i < nl; i++) {
        const layer_shape *l = &w->layers[i];
        size_t ldw = pick_ld(in, l->in), ldg = pick_ld(in, l->in);
        t[i].weight = make_input(w, l->out, l->in, ldw);
        t[i].grad_weight = make_input(w, l->out, l->in, ldg);
        t[i].ld_weight = ldw;
        t[i].ld_grad_weight = ldg;
        t[i].bias = l->bias ? make_input(w, 1, l->out, l->out) : NULL;
        t[i].grad_bias = l->bias ? make_input(w, 1, l->out, l->out) : NULL;
        if (!t[i].weight || !t[i].grad_weight || (l->bias && (!t[i].bias || !t[i].grad_bias))) {
            return;
        }
        wcopy[i] = fz_dup(&w->pool, t[i].weight, count_of(l->out, l->in, ldw) * sizeof(float));
        gcopy[i] = fz_dup(&w->pool, t[i].grad_weight, count_of(l->out, l->in, ldg) * sizeof(float));
        bcopy[i] = l->bias ? fz_dup(&w->pool, t[i].bias, l->out * sizeof(float)) : NULL;
        if (!wcopy[i] || !gcopy[i] || (l->bias && !bcopy[i])) {
            return;
        }
    }
    /* Sometimes a wrong call: a wrong count, a missing bias, a bias where there is none, aliasing. */
    twist = fz_u8(in);
    count = nl;
    if (twist % 16 == 1) {
        count = nl + 1;
    } else if (twist % 16 == 2 && nl > 0) {
        if (t[0].bias) {
            t[0].bias = NULL;
        } else {
            t[0].bias = t[0].weight;
            t[0].grad_bias = t[0].grad_weight;
        }
    } else if (twist % 16 == 3 && nl > 0 && t[0].ld_grad_weight == t[0].ld_weight) {
        t[0].grad_weight = t[0].weight;
    } else {
        twisted = 0;
    }
    before = save_all(w->opt, &size);
    s = kf_optimizer_step(w->opt, nl ? t : (fz_u8(in) % 2 ? NULL : t), count);
    kf_optimizer_step_count(w->opt, &steps_after);
    if (s == KF_OK) {
        FZ_ASSERT(!twisted);
        w->steps++;
        FZ_ASSERT(steps_after == w->steps);
        for (size_t i = 0; i < nl; i++) {
            const layer_shape *l = &w->layers[i];
            gaps_unchanged(wcopy[i], t[i].weight, l->out, l->in, t[i].ld_weight);
            same_bytes(t[i].grad_weight, gcopy[i],
                       count_of(l->out, l->in, t[i].ld_grad_weight) * sizeof(float));
        }
    } else {
        FZ_ASSERT(steps_after == w->steps);
        FZ_ASSERT(kf_optimizer_last_error(w->opt)[0] != '\0');
        state_unchanged(w->opt, before, size);
        for (size_t i = 0; i < nl; i++) {
            const layer_shape *l = &w->layers[i];
            if (twisted && i == 0) {
                continue;
            }
            same_bytes(t[i].weight, wcopy[i], count_of(l->out, l->in, t[i].ld_weight) * sizeof(float));
            if (l->bias && bcopy[i] && t[i].bias && t[i].bias != t[i].weight) {
                same_bytes(t[i].bias, bcopy[i], l->out * sizeof(float));
            }
        }
    }
    free(before);
}

static void op_schedule(world *w)
{
    fz_in *in = &w->in;
    int lr = fz_u8(in) % 2;
    float v = fz_u8(in) % 2 ? fz_moderate(in) : fz_float(in);
    kf_optimizer_params p0, p1;
    size_t size;
    uint8_t *before;
    kf_status s;
    if (!w->opt) {
        return;
    }
    kf_optimizer_get_params(w->opt, &p0);
    before = save_all(w->opt, &size);
    s = lr ? kf_optimizer_set_learning_rate(w->opt, v) : kf_optimizer_set_damping(w->opt, v);
    kf_optimizer_get_params(w->opt, &p1);
    if (s == KF_OK) {
        FZ_ASSERT(lr ? p1.learning_rate == v : p1.damping == v);
    } else {
        FZ_ASSERT(s == KF_ERR_INVALID_ARGUMENT);
        FZ_ASSERT(memcmp(&p0, &p1, sizeof p0) == 0);
        state_unchanged(w->opt, before, size);
    }
    free(before);
}

static void op_queries(world *w)
{
    fz_in *in = &w->in;
    size_t layer, count = 99;
    uint64_t c64 = 99;
    float f = -7.0f;
    kf_algorithm algo;
    int needed = -1;
    kf_status s;
    if (!w->opt) {
        return;
    }
    layer = fz_upto(in, w->n_layers);
    FZ_ASSERT(kf_optimizer_layer_count(w->opt, &count) == KF_OK && count == w->n_layers);
    FZ_ASSERT(kf_optimizer_step_count(w->opt, &c64) == KF_OK && c64 == w->steps);
    FZ_ASSERT(kf_optimizer_needs_statistics(w->opt, &needed) == KF_OK && (needed == 0 || needed == 1));
    s = kf_optimizer_inverse_count(w->opt, layer, &c64);
    FZ_ASSERT((s == KF_OK) == (layer < w->n_layers));
    if (s == KF_OK) {
        FZ_ASSERT(c64 <= w->steps);
    }
    s = kf_optimizer_layer_pi(w->opt, layer, &f);
    FZ_ASSERT((s == KF_OK) == (layer < w->n_layers));
    s = kf_optimizer_layer_damping(w->opt, layer, &f);
    FZ_ASSERT((s == KF_OK) == (layer < w->n_layers));
    if (s == KF_OK) {
        FZ_ASSERT(f >= 0.0f && isfinite(f));
    }
    s = kf_optimizer_layer_algorithm(w->opt, layer, &algo);
    FZ_ASSERT((s == KF_OK) == (layer < w->n_layers));
    if (s == KF_OK) {
        FZ_ASSERT(kf_algorithm_name(algo) != NULL && algo != KF_ALGO_DEFAULT);
    }
    {
        size_t bytes = 0;
        FZ_ASSERT(kf_optimizer_memory_bytes(w->opt, &bytes) == KF_OK && bytes > 0);
    }
    if (layer < w->n_layers && w->n_layers <= MAX_LAYERS) {
        kf_factor_kind which = (kf_factor_kind)(fz_u8(in) % 3);
        size_t dim = which == KF_FACTOR_A ? w->layers[layer].da : w->layers[layer].out;
        size_t ldf = pick_ld(in, dim), nf = count_of(dim, dim, ldf);
        float *fb = fz_mat(&w->pool, dim, dim, ldf), *f0;
        if (!fb || !(f0 = fz_dup(&w->pool, fb, nf * sizeof(float)))) {
            return;
        }
        s = kf_optimizer_layer_factor(w->opt, layer, which, fb, ldf);
        if (s != KF_OK) {
            FZ_ASSERT(kf_optimizer_last_error(w->opt)[0] != '\0');
            same_bytes(fb, f0, nf * sizeof(float));
        } else {
            gaps_unchanged(f0, fb, dim, dim, ldf);
        }
    }
}

static void op_checkpoint(world *w)
{
    fz_in *in = &w->in;
    size_t size, written = 0;
    uint8_t *good, mode = fz_u8(in) % 6;
    kf_status s;
    if (!w->opt) {
        return;
    }
    good = save_all(w->opt, &size);
    if (mode == 0) {
        /* The same bytes restore to the same state. */
        FZ_ASSERT(kf_optimizer_restore(w->opt, good, size) == KF_OK);
        state_unchanged(w->opt, good, size);
    } else if (mode == 1 && size > 0) {
        /* Truncated or with a byte changed: refused, nothing changes. FNV-1a detects every
         * single-byte change, so a changed byte can never be accepted. */
        uint8_t *bad = (uint8_t *)malloc(size);
        size_t cut = fz_u32(in) % size, at = fz_u32(in) % size;
        FZ_ASSERT(bad != NULL);
        memcpy(bad, good, size);
        FZ_ASSERT(kf_optimizer_restore(w->opt, bad, cut) == KF_ERR_FORMAT);
        state_unchanged(w->opt, good, size);
        bad[at] ^= (uint8_t)(1u + fz_u8(in) % 255u);
        FZ_ASSERT(kf_optimizer_restore(w->opt, bad, size) == KF_ERR_FORMAT);
        FZ_ASSERT(kf_optimizer_last_error(w->opt)[0] != '\0');
        state_unchanged(w->opt, good, size);
        free(bad);
    } else if (mode == 2) {
        /* A new optimizer from the checkpoint saves the same bytes. */
        kf_optimizer *copy = NULL;
        s = kf_optimizer_create_from_checkpoint(good, size, NULL, &copy);
        FZ_ASSERT(s == KF_OK);
        state_unchanged(copy, good, size);
        kf_optimizer_destroy(copy);
    } else if (mode == 3) {
        /* Too small a buffer is refused without writing. */
        uint8_t *small = (uint8_t *)malloc(size);
        size_t cap = size ? fz_u32(in) % size : 0;
        FZ_ASSERT(small != NULL);
        memset(small, 0xA5, size);
        s = kf_optimizer_save(w->opt, small, cap, &written);
        FZ_ASSERT(s == KF_ERR_SHAPE);
        for (size_t i = 0; i < size; i++) {
            FZ_ASSERT(small[i] == 0xA5);
        }
        free(small);
    } else if (mode == 4) {
        /* Through a file. */
        char path[64];
        snprintf(path, sizeof path, "/tmp/kf_fuzz_api_%u.kfck", (unsigned)(size % 5));
        s = kf_optimizer_save_file(w->opt, path);
        FZ_ASSERT(s == KF_OK || s == KF_ERR_OUT_OF_MEMORY);
        if (s == KF_OK) {
            FZ_ASSERT(kf_optimizer_restore_file(w->opt, path) == KF_OK ||
                      opt_alloc.fail_at >= 0);
            state_unchanged(w->opt, good, size);
            remove(path);
        }
    } else {
        /* A checkpoint of another optimizer's shapes is refused. */
        kf_optimizer_params p;
        kf_optimizer *other = NULL;
        kf_layer_params lp;
        size_t idx, osize;
        uint8_t *ob;
        kf_optimizer_params_init(&p, KF_ALGO_SGD);
        FZ_ASSERT(kf_optimizer_create(&p, NULL, &other) == KF_OK);
        kf_layer_params_init(&lp, 17, 17);
        FZ_ASSERT(kf_optimizer_add_layer(other, &lp, &idx) == KF_OK);
        ob = save_all(other, &osize);
        FZ_ASSERT(kf_optimizer_restore(w->opt, ob, osize) == KF_ERR_FORMAT);
        state_unchanged(w->opt, good, size);
        free(ob);
        kf_optimizer_destroy(other);
    }
    free(good);
}

/* ---- the driver ---------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    world w;
    memset(&w, 0, sizeof w);
    w.in.d = data;
    w.in.n = size;
    fz_alloc_init(&ctx_alloc, -1, (size_t)64 << 20);
    fz_alloc_init(&opt_alloc, -1, (size_t)64 << 20);
    for (int ops = 0; ops < MAX_OPS && fz_left(&w.in); ops++) {
        uint8_t op = fz_u8(&w.in);
        if (op % 32 < 16 && !w.ctx) {
            /* The primitives need a context: create one (allocator may fail its k-th call). */
            int faulty = fz_u8(&w.in) % 4 == 0;
            kf_allocator al = {fz_alloc_fn, fz_free_fn, &ctx_alloc};
            fz_alloc_init(&ctx_alloc, faulty ? (long)fz_upto(&w.in, 3) : -1, (size_t)64 << 20);
            if (kf_context_create(&al, &w.ctx) != KF_OK) {
                FZ_ASSERT(w.ctx == NULL);
            }
        }
        switch (op % 32) {
        case 0: op_gemm(&w); break;
        case 1: op_syrk(&w); break;
        case 2: op_scale_axpby_trace(&w, 0); break;
        case 3: op_scale_axpby_trace(&w, 1); break;
        case 4: op_scale_axpby_trace(&w, 2); break;
        case 5: op_factor(&w, 0); break;
        case 6: op_factor(&w, 1); break;
        case 7: op_ema(&w); break;
        case 8: op_inverse_eig_pi(&w, 0); break;
        case 9: op_inverse_eig_pi(&w, 1); break;
        case 10: op_inverse_eig_pi(&w, 2); break;
        case 11: op_direction(&w, 0); break;
        case 12: op_direction(&w, 1); break;
        case 13: op_direction(&w, 2); break;
        case 14: op_direction(&w, 3); break;
        case 15: op_direction(&w, 4); break;
        case 16: op_create(&w); break;
        case 17: case 18: op_add_layer(&w); break;
        case 19: case 20: op_observe(&w, 0); break;
        case 21: case 22: op_observe(&w, 1); break;
        case 23: op_reserve(&w); break;
        case 24: case 25: case 26: op_step(&w); break;
        case 27: op_schedule(&w); break;
        case 28: op_queries(&w); break;
        case 29: op_checkpoint(&w); break;
        case 30: {
            size_t bytes = 0;
            if (w.ctx) {
                FZ_ASSERT(kf_context_memory_bytes(w.ctx, &bytes) == KF_OK && bytes > 0);
                kf_status s = kf_context_reserve(w.ctx, fz_upto(&w.in, 20), fz_upto(&w.in, 40));
                FZ_ASSERT(s == KF_OK || s == KF_ERR_OUT_OF_MEMORY || s == KF_ERR_SHAPE);
            }
            break;
        }
        default:
            kf_context_destroy(w.ctx);
            w.ctx = NULL;
            FZ_ASSERT(ctx_alloc.live == 0);
            destroy_opt(&w);
            break;
        }
        fz_pool_free(&w.pool);
    }
    kf_context_destroy(w.ctx);
    FZ_ASSERT(ctx_alloc.live == 0);
    destroy_opt(&w);
    fz_pool_free(&w.pool);
    return 0;
}
