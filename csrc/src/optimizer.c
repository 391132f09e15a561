/* The stateful optimizer: registration (all memory planned here), observations, the step. */
#include "kf_optimizer_internal.h"
#include "kf_mat.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- parameters ------------------------------------------------------------------------------ */

const char *kf_algorithm_name(kf_algorithm algorithm)
{
    switch (algorithm) {
    case KF_ALGO_SGD: return "sgd";
    case KF_ALGO_ADAM: return "adam";
    case KF_ALGO_FOOF: return "foof";
    case KF_ALGO_KFAC: return "kfac";
    case KF_ALGO_KFAC_EXACT_DAMPING: return "kfac-exact";
    case KF_ALGO_EKFAC: return "ekfac";
    case KF_ALGO_DEFAULT: return "default";
    }
    return NULL;
}

int kf__algo_precond(kf_algorithm a)
{
    return a == KF_ALGO_FOOF || a == KF_ALGO_KFAC || a == KF_ALGO_KFAC_EXACT_DAMPING ||
           a == KF_ALGO_EKFAC;
}

int kf__algo_uses_g(kf_algorithm a)
{
    return a == KF_ALGO_KFAC || a == KF_ALGO_KFAC_EXACT_DAMPING || a == KF_ALGO_EKFAC;
}

int kf__algo_eigen(kf_algorithm a)
{
    return a == KF_ALGO_KFAC_EXACT_DAMPING || a == KF_ALGO_EKFAC;
}

static int valid_algo(kf_algorithm a)
{
    return a >= KF_ALGO_SGD && a <= KF_ALGO_EKFAC;
}

kf_status kf_optimizer_params_init(kf_optimizer_params *p, kf_algorithm algorithm)
{
    if (!p) {
        return KF_ERR_NULL_POINTER;
    }
    if (!valid_algo(algorithm)) {
        return KF_ERR_INVALID_ARGUMENT;
    }
    memset(p, 0, sizeof *p);
    p->algorithm = algorithm;
    p->factor_decay = 0.95f;          /* M&G 2015, kfac-jax, Benzing 2022 */
    p->stats_interval = 1;
    p->inverse_interval = 20;         /* M&G's T3; Benzing: T = 1..100 give the same curves */
    p->inverse_precision = KF_PRECISION_DOUBLE;
    p->kl_clip = 0.0f;
    p->adam_beta1 = 0.9f;
    p->adam_beta2 = 0.999f;
    p->adam_epsilon = 1e-8f;
    /* Starting points of DESIGN.md section 9 (784-1000-1000-1000-10 on Fashion-MNIST, batch 100). */
    switch (algorithm) {
    case KF_ALGO_SGD:
        p->learning_rate = 0.03f;
        p->momentum = 0.9f;
        p->damping = 0.0f;
        break;
    case KF_ALGO_ADAM:
        p->learning_rate = 1e-3f;
        p->damping = 0.0f;
        break;
    case KF_ALGO_FOOF:
        p->learning_rate = 0.3f;
        p->damping = 0.3f;
        break;
    default: /* the K-FAC family */
        p->learning_rate = 0.1f;
        p->damping = 0.1f;
        break;
    }
    return KF_OK;
}

static int finite_in(float x, float lo, float hi) /* lo <= x < hi */
{
    return isfinite(x) && x >= lo && x < hi;
}

kf_status kf__validate_params(kf_errbuf *e, const kf_optimizer_params *p)
{
    if (!valid_algo(p->algorithm)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "algorithm %d is not a kf_algorithm",
                        (int)p->algorithm);
    }
    if (!(isfinite(p->learning_rate) && p->learning_rate > 0.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "learning_rate (%g) must be finite and > 0",
                        (double)p->learning_rate);
    }
    if (!finite_in(p->momentum, 0.0f, 1.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "momentum (%g) must be in [0, 1)",
                        (double)p->momentum);
    }
    if (!(isfinite(p->weight_decay) && p->weight_decay >= 0.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "weight_decay (%g) must be finite and >= 0",
                        (double)p->weight_decay);
    }
    if (!(isfinite(p->damping) && p->damping >= 0.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "damping (%g) must be finite and >= 0",
                        (double)p->damping);
    }
    if (kf__algo_uses_g(p->algorithm) && !(p->damping > 0.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "damping must be > 0 for %s",
                        kf_algorithm_name(p->algorithm));
    }
    if (!finite_in(p->factor_decay, 0.0f, 1.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "factor_decay (%g) must be in [0, 1)",
                        (double)p->factor_decay);
    }
    if (p->stats_interval < 1 || p->inverse_interval < 1) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT,
                        "stats_interval (%u) and inverse_interval (%u) must be >= 1",
                        (unsigned)p->stats_interval, (unsigned)p->inverse_interval);
    }
    if (p->inverse_precision != KF_PRECISION_DOUBLE && p->inverse_precision != KF_PRECISION_FLOAT) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "inverse_precision %d is not a kf_precision",
                        (int)p->inverse_precision);
    }
    if (!(isfinite(p->kl_clip) && p->kl_clip >= 0.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "kl_clip (%g) must be finite and >= 0",
                        (double)p->kl_clip);
    }
    if (!finite_in(p->adam_beta1, 0.0f, 1.0f) || !finite_in(p->adam_beta2, 0.0f, 1.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "adam_beta1 (%g) and adam_beta2 (%g) must be in "
                        "[0, 1)", (double)p->adam_beta1, (double)p->adam_beta2);
    }
    if (!(isfinite(p->adam_epsilon) && p->adam_epsilon > 0.0f)) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "adam_epsilon (%g) must be finite and > 0",
                        (double)p->adam_epsilon);
    }
    return KF_OK;
}

/* What phase 1 decided for a layer; committed in phase 3. */
typedef struct plan {
    int fold_a, fold_g, refresh, s_update;
    int chol; /* the refresh factorises (kf__damped_cholesky_ws) instead of inverting */
    double wa, wg, ws;
    float pi, damping;
} plan;

kf_status kf_optimizer_params_validate(const kf_optimizer_params *p, char *message,
                                       size_t capacity)
{
    kf_errbuf e;
    kf_status s;
    if (!p || (!message && capacity > 0)) {
        return KF_ERR_NULL_POINTER;
    }
    e.msg[0] = '\0';
    s = kf__validate_params(&e, p);
    if (message && capacity > 0) {
        size_t n = strlen(e.msg);
        n = n < capacity - 1 ? n : capacity - 1;
        memcpy(message, e.msg, n);
        message[n] = '\0';
    }
    return s;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

kf_status kf_optimizer_create(const kf_optimizer_params *p, const kf_allocator *alloc,
                              kf_optimizer **out)
{
    kf_optimizer *opt;
    kf_allocator use = {NULL, NULL, NULL};
    kf_status s;
    if (!p || !out) {
        return KF_ERR_NULL_POINTER;
    }
    if (alloc) {
        if (!alloc->alloc || !alloc->free) {
            return KF_ERR_INVALID_ARGUMENT;
        }
        use = *alloc;
    }
    if ((s = kf__validate_params(NULL, p)) != KF_OK) {
        return s;
    }
    opt = (kf_optimizer *)kf__alloc(&use, sizeof *opt);
    if (!opt) {
        return KF_ERR_OUT_OF_MEMORY;
    }
    memset(opt, 0, sizeof *opt);
    opt->alloc = use;
    opt->p = *p;
    *out = opt;
    return KF_OK;
}

static void free_layer(kf_optimizer *opt, kf_layer *l)
{
    kf__free(&opt->alloc, l->block, l->block_bytes);
    kf__free(&opt->alloc, l->xobs, l->obs_bytes);
    l->block = NULL;
    l->xobs = NULL;
}

void kf_optimizer_destroy(kf_optimizer *opt)
{
    if (!opt) {
        return;
    }
    for (size_t i = 0; i < opt->n_layers; i++) {
        free_layer(opt, &opt->layers[i]);
    }
    kf__free(&opt->alloc, opt->layers, opt->cap_layers * (sizeof(kf_layer) + sizeof(plan)));
    kf__free(&opt->alloc, opt->work, opt->work_bytes);
    kf__free(&opt->alloc, opt->obs_work, opt->obs_work_bytes);
    {
        kf_allocator a = opt->alloc;
        kf__free(&a, opt, sizeof *opt);
    }
}

const char *kf_optimizer_last_error(const kf_optimizer *opt)
{
    return opt ? opt->err.msg : "kf_optimizer_last_error: opt is NULL";
}

kf_status kf_optimizer_get_params(const kf_optimizer *opt, kf_optimizer_params *p)
{
    if (!opt || !p) {
        return KF_ERR_NULL_POINTER;
    }
    *p = opt->p;
    return KF_OK;
}

kf_status kf_layer_params_init(kf_layer_params *p, size_t out, size_t in)
{
    if (!p) {
        return KF_ERR_NULL_POINTER;
    }
    memset(p, 0, sizeof *p);
    p->out = out;
    p->in = in;
    p->bias = 1;
    p->shared = 1;
    p->shared_mode = KF_SHARED_EXPAND;
    p->loss_terms_per_example = 0;
    p->algorithm = KF_ALGO_DEFAULT;
    p->uses = 1;
    return KF_OK;
}

/* ---- registration ---------------------------------------------------------------------------- */

/* The bytes of a layer's block, carved in the order used by carve_layer. */
static size_t layer_block_bytes(const kf_layer *l, int carve, unsigned char *base)
{
    unsigned char *cur = base;
    size_t out = l->p.out, da = l->dim_a, sq_a = da * da * sizeof(float);
    size_t sq_g = out * out * sizeof(float), mat = out * da * sizeof(float);
    size_t total = 0;
#define KF_PIECE(ptr, type, bytes)                                   \
    do {                                                            \
        if (carve) {                                                \
            (ptr) = (type *)kf__carve(&cur, (bytes));               \
        }                                                           \
        total += KF_ALIGN_UP(bytes);                                \
    } while (0)
    kf_layer *w = (kf_layer *)l; /* carving writes the pointers only when carve != 0 */
    KF_PIECE(w->dir, float, mat);
    KF_PIECE(w->mom, float, mat);
    if (l->p.algorithm == KF_ALGO_ADAM) {
        KF_PIECE(w->adam_v, float, mat);
    }
    if (l->precond) {
        KF_PIECE(w->a.f, float, sq_a);
        KF_PIECE(w->a.pending, float, sq_a);
        KF_PIECE(w->a.inv, float, sq_a);
        KF_PIECE(w->a.inv_next, float, sq_a);
        if (l->eigen) {
            KF_PIECE(w->a.eig, float, da * sizeof(float));
            KF_PIECE(w->a.eig_next, float, da * sizeof(float));
        }
    }
    if (l->uses_g) {
        KF_PIECE(w->g.f, float, sq_g);
        KF_PIECE(w->g.pending, float, sq_g);
        KF_PIECE(w->g.inv, float, sq_g);
        KF_PIECE(w->g.inv_next, float, sq_g);
        if (l->eigen) {
            KF_PIECE(w->g.eig, float, out * sizeof(float));
            KF_PIECE(w->g.eig_next, float, out * sizeof(float));
        }
    }
    if (l->p.algorithm == KF_ALGO_EKFAC) {
        KF_PIECE(w->s, float, mat);
        KF_PIECE(w->s_next, float, mat);
    }
#undef KF_PIECE
    return total;
}

/* The step workspace: V and two scratch matrices as large as the largest layer's gradient, then
 * the largest layer's factorisation scratch (the step carves it in that order). */
static size_t step_work_bytes(const kf_optimizer *opt, const kf_layer *extra)
{
    size_t mat = 0, fact = 0;
    for (size_t i = 0; i <= opt->n_layers; i++) {
        const kf_layer *l = i < opt->n_layers ? &opt->layers[i] : extra;
        size_t out = l->p.out, da = l->dim_a, big = da > out ? da : out;
        size_t m = KF_ALIGN_UP(out * da * sizeof(float)), f = 0;
        if (l->precond) {
            f = l->eigen ? kf__eig_scratch(big) : kf__cholesky_scratch(big);
        }
        mat = m > mat ? m : mat;
        fact = f > fact ? f : fact;
    }
    return 3 * mat + fact;
}

kf_status kf__optimizer_add_layer(kf_optimizer *opt, const kf_layer_params *p, size_t *index)
{
    kf_layer l;
    size_t bytes, work;
    memset(&l, 0, sizeof l);
    l.p = *p;
    l.dim_a = p->in + (size_t)p->bias;
    l.precond = kf__algo_precond(p->algorithm);
    l.uses_g = kf__algo_uses_g(p->algorithm);
    l.eigen = kf__algo_eigen(p->algorithm);
    l.a.dim = l.dim_a;
    l.g.dim = p->out;
    l.pi = 1.0f;
    l.damping_used = opt->p.damping;
    bytes = layer_block_bytes(&l, 0, NULL);
    work = step_work_bytes(opt, &l);
    if (opt->n_layers == opt->cap_layers) {
        size_t cap = opt->cap_layers ? 2 * opt->cap_layers : 4;
        /* Each layer's step plan lives after the table, so a step needs no allocation. */
        kf_layer *nl = (kf_layer *)kf__alloc(&opt->alloc, cap * (sizeof *nl + sizeof(plan)));
        if (!nl) {
            return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "out of memory for the layer table");
        }
        if (opt->n_layers) {
            memcpy(nl, opt->layers, opt->n_layers * sizeof *nl);
        }
        kf__free(&opt->alloc, opt->layers, opt->cap_layers * (sizeof *nl + sizeof(plan)));
        opt->layers = nl;
        opt->cap_layers = cap;
    }
    if (work > opt->work_bytes) {
        void *nw = kf__alloc(&opt->alloc, work);
        if (!nw) {
            return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY,
                            "out of memory for %zu bytes of step workspace", work);
        }
        kf__free(&opt->alloc, opt->work, opt->work_bytes);
        opt->work = nw;
        opt->work_bytes = work;
    }
    l.block = kf__alloc(&opt->alloc, bytes);
    if (!l.block) {
        return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY,
                        "out of memory for %zu bytes of layer state", bytes);
    }
    /* Zeroed: momentum starts at 0, and checkpoints of unused buffers are deterministic. */
    memset(l.block, 0, bytes);
    l.block_bytes = bytes;
    layer_block_bytes(&l, 1, (unsigned char *)l.block);
    opt->layers[opt->n_layers] = l;
    *index = opt->n_layers++;
    return KF_OK;
}

kf_status kf_optimizer_add_layer(kf_optimizer *opt, const kf_layer_params *p, size_t *index)
{
    static const char fn[] = "kf_optimizer_add_layer";
    kf_layer_params q;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!p || !index) {
        return kf__fail(&opt->err, KF_ERR_NULL_POINTER, "%s: %s is NULL", fn, !p ? "p" : "index");
    }
    if (opt->step > 0) {
        return kf__fail(&opt->err, KF_ERR_STATE, "%s: layers must be registered before the first "
                        "step", fn);
    }
    q = *p;
    if (q.out == 0 || q.in == 0 || q.shared == 0) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "%s: out (%zu), in (%zu) and shared (%zu) must be "
                        ">= 1", fn, q.out, q.in, q.shared);
    }
    if (q.out > 32000 || q.in > 32000 - 1) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "%s: layers wider than 32000 are not supported "
                        "(out %zu, in %zu)", fn, q.out, q.in);
    }
    if (q.bias != 0 && q.bias != 1) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: bias must be 0 or 1, got %d", fn,
                        q.bias);
    }
    if (q.shared_mode != KF_SHARED_EXPAND && q.shared_mode != KF_SHARED_REDUCE) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: shared_mode %d is not a "
                        "kf_shared_mode", fn, (int)q.shared_mode);
    }
    if (q.algorithm == KF_ALGO_DEFAULT) {
        q.algorithm = opt->p.algorithm;
    }
    if (!valid_algo(q.algorithm)) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: algorithm %d is not a "
                        "kf_algorithm", fn, (int)p->algorithm);
    }
    if (kf__algo_uses_g(q.algorithm) && !(opt->p.damping > 0.0f)) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: %s needs damping > 0", fn,
                        kf_algorithm_name(q.algorithm));
    }
    if (q.uses == 0 || q.uses > 4096) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: uses (%zu) must be in 1..4096", fn,
                        q.uses);
    }
    if (q.uses > 1 && (q.shared_mode != KF_SHARED_EXPAND || q.algorithm == KF_ALGO_EKFAC)) {
        return kf__fail(&opt->err, KF_ERR_UNSUPPORTED, "%s: weight tying (uses > 1) needs the "
                        "expand mode and is not available for EKFAC", fn);
    }
    if (q.loss_terms_per_example == 0) {
        q.loss_terms_per_example = q.shared_mode == KF_SHARED_EXPAND ? q.shared : 1;
    }
    {
        kf_status s = kf__optimizer_add_layer(opt, &q, index);
        if (s != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
    }
    kf__clear(&opt->err);
    return KF_OK;
}

/* ---- observations ---------------------------------------------------------------------------- */

static int stats_due(const kf_optimizer *opt)
{
    const kf_optimizer_params *p = &opt->p;
    if (p->stats_subsample > 0 && p->stats_subsample < p->inverse_interval) {
        /* Benzing 2022, section 4.1: only the S steps before each refresh feed the average, and
         * step 0, which needs statistics for the first refresh. */
        return opt->step == 0 || opt->step % p->inverse_interval >= p->inverse_interval - p->stats_subsample;
    }
    return opt->step % p->stats_interval == 0;
}

kf_status kf_optimizer_needs_statistics(const kf_optimizer *opt, int *needed)
{
    if (!opt || !needed) {
        return KF_ERR_NULL_POINTER;
    }
    *needed = stats_due(opt);
    return KF_OK;
}

static size_t batch_work_bytes(const kf_optimizer *opt, size_t n);

static kf_status grow_obs_work(kf_optimizer *opt, size_t bytes)
{
    void *p;
    if (bytes <= opt->obs_work_bytes) {
        return KF_OK;
    }
    if (!(p = kf__alloc(&opt->alloc, bytes))) {
        return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "out of memory for %zu bytes of "
                        "observation workspace", bytes);
    }
    kf__free(&opt->alloc, opt->obs_work, opt->obs_work_bytes);
    opt->obs_work = p;
    opt->obs_work_bytes = bytes;
    return KF_OK;
}

/* EKFAC keeps the observed rows; rows each of width dim_a (x) and out (g), twice (rotations). */
static kf_status grow_ekfac_obs(kf_optimizer *opt, kf_layer *l, size_t rows)
{
    size_t per_row, bytes;
    void *p;
    if (rows <= l->obs_cap_rows) {
        return KF_OK;
    }
    per_row = 2 * (l->dim_a + l->p.out) * sizeof(float);
    if (!kf__mul_size(rows, per_row, &bytes)) {
        return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "observation buffer size overflows");
    }
    if (!(p = kf__alloc(&opt->alloc, bytes))) {
        return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "out of memory for %zu bytes of EKFAC "
                        "observations", bytes);
    }
    /* The old rows are dropped: growth happens only when a larger batch replaces them. */
    kf__free(&opt->alloc, l->xobs, l->obs_bytes);
    l->xobs = (float *)p;
    l->gobs = l->xobs + 2 * rows * l->dim_a;
    l->obs_bytes = bytes;
    l->obs_cap_rows = rows;
    l->xobs_rows = l->gobs_rows = 0;
    l->xobs_n = l->gobs_n = 0;
    return KF_OK;
}

/* Before an observation: checks the use count and batch size of a tied layer's observations.
 * The new batch factor is always computed into the idle inv_next buffer, so that a factor that
 * overflows (huge but finite inputs) can be refused without touching what was observed before. */
static kf_status begin_observation(kf_optimizer *opt, const char *fn, size_t layer, kf_side *sd,
                                   size_t n, float **target)
{
    const kf_layer *l = &opt->layers[layer];
    *target = sd->inv_next;
    if (l->p.uses == 1 || sd->has_pending == 0) {
        return KF_OK;
    }
    if (sd->has_pending >= l->p.uses) {
        return kf__fail(&opt->err, KF_ERR_STATE, "%s: layer %zu has %zu uses, all observed for "
                        "this step already", fn, layer, l->p.uses);
    }
    if (n != sd->pending_n) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "%s: layer %zu: every use of a step must have the "
                        "same n (%zu, not %zu)", fn, layer, sd->pending_n, n);
    }
    return KF_OK;
}

/* Takes the batch factor from inv_next into pending: a first (or only) use by swapping buffers,
 * a further use of a tied layer by merging (activations average over all uses' rows, equal
 * counts; gradient factors add up, as their normalisation counts loss terms, which tying does not
 * change). Refuses a factor that overflowed. */
/* A deferred input check: the observed rows, checked only when the factor is not finite. */
typedef struct obs_input {
    const float *data;
    size_t rows, width, ld, layer;
    const char *name;
} obs_input;

/* 1 if a factor the observation computed is finite, judged by its diagonal: by Cauchy-Schwarz no
 * entry exceeds the largest diagonal one in magnitude (folds into a moving average included), and a
 * NaN or Inf of the input reaches the diagonal (sums of squares). The bound holds for the raw sums
 * inside the kernel too while they stay below FLT_MAX / 4, i.e. while every diagonal entry is at
 * most `scale` * FLT_MAX / 4, `scale` being what the raw sums were multiplied by; past that the
 * whole matrix is scanned. One pass over dim entries instead of dim^2. */
static int factor_finite(size_t dim, const float *f, double scale)
{
    const double limit = scale * (FLT_MAX / 4.0);
    for (size_t i = 0; i < dim; i++) {
        float d = f[i * dim + i];
        if (!(d >= 0.0f && (double)d <= limit)) {
            return kf__all_finite(dim, dim, f, dim);
        }
    }
    return 1;
}

/* folded: the weight after the fold when the factor was computed folded (see kf_side), else 0;
 * scale as in factor_finite. */
static kf_status finish_observation(kf_optimizer *opt, const char *fn, const kf_layer *l,
                                    kf_side *sd, size_t n, int average, const obs_input *in,
                                    double folded, double scale)
{
    size_t nel = sd->dim * sd->dim, k = sd->has_pending;
    if (!factor_finite(sd->dim, sd->inv_next, scale)) {
        if (in && !kf__all_finite(in->rows, in->width, in->data, in->ld)) {
            return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: %s of layer %zu contains NaN or "
                            "Inf", fn, in->name, in->layer);
        }
        return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: the factor of this batch overflows "
                        "(inputs too large)", fn);
    }
    if (l->p.uses > 1 && k > 0) {
        float keep = (float)k / (float)(k + 1), add = 1.0f / (float)(k + 1);
        for (size_t i = 0; i < nel; i++) {
            float merged = average ? keep * sd->pending[i] + add * sd->inv_next[i]
                                   : sd->pending[i] + sd->inv_next[i];
            sd->inv_next[i] = merged;
        }
        if (!kf__all_finite(sd->dim, sd->dim, sd->inv_next, sd->dim)) {
            return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: the summed factor of the uses "
                            "overflows", fn);
        }
    }
    {
        float *t = sd->pending;
        sd->pending = sd->inv_next;
        sd->inv_next = t;
    }
    sd->has_pending = k + 1 > l->p.uses ? 1 : k + 1;
    sd->pending_n = n;
    sd->pending_weight = folded;
    return KF_OK;
}

static kf_status check_layer_index(kf_optimizer *opt, const char *fn, size_t layer)
{
    if (layer >= opt->n_layers) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: layer %zu does not exist (%zu "
                        "registered)", fn, layer, opt->n_layers);
    }
    return KF_OK;
}

/* The checks both observations share: the layer exists and its n * R rows at `data` (ldd apart;
 * `in` wide for activations, `out` wide for gradients) are a valid matrix. *rows receives n * R. */
static kf_status check_observation(kf_optimizer *opt, const char *fn, size_t layer, size_t n,
                                   const float *data, size_t ldd, int gradients, size_t *rows)
{
    const char *name = gradients ? "g" : "x";
    size_t width;
    kf_status s;
    if ((s = check_layer_index(opt, fn, layer)) != KF_OK) {
        return s;
    }
    width = gradients ? opt->layers[layer].p.out : opt->layers[layer].p.in;
    if (n == 0 || !kf__mul_size(n, opt->layers[layer].p.shared, rows)) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "%s: n (%zu) must be >= 1 and n * R must not "
                        "overflow", fn, n);
    }
    if ((s = kf__check_mat(&opt->err, data, *rows, width, ldd, name)) != KF_OK) {
        return kf__prefix(&opt->err, s, fn);
    }
    return KF_OK;
}

/* The fold an observation makes as it computes: a plain layer's product comes out folded into the
 * moving average (the step then has no fold pass to make), in its lower triangle only (no mirror
 * pass: the optimizer reads the factors' lower triangles). The others, and the eigenbasis
 * algorithms, whose eigendecomposition reads both triangles, fold in the step after merging their
 * uses: *fold_w = 0. Else *fold_w is the weight after the fold, *keep and *c its coefficients, and
 * the moving average to fold is returned (NULL before the first statistics: the batch alone). */
static const float *observation_fold(const kf_optimizer *opt, const kf_layer *l,
                                     const kf_side *sd, int deferred, double *fold_w, float *keep,
                                     float *c)
{
    *fold_w = deferred && !l->eigen ? (double)opt->p.factor_decay * sd->weight + 1.0 : 0.0;
    if (*fold_w == 0.0 || sd->weight == 0.0) {
        *keep = 0.0f;
        *c = 1.0f;
        return NULL;
    }
    *keep = (float)(1.0 - 1.0 / *fold_w);
    *c = (float)(1.0 / *fold_w);
    return sd->f;
}

kf_status kf_optimizer_observe_activations(kf_optimizer *opt, size_t layer, size_t n,
                                           const float *x, size_t ldx)
{
    static const char fn[] = "kf_optimizer_observe_activations";
    float *target = NULL, keep, c;
    const float *prev;
    kf_layer *l;
    size_t rows, in, r, needed = 0, coll_rows;
    int deferred;
    double fold_w;
    kf_status s;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = check_observation(opt, fn, layer, n, x, ldx, 0, &rows)) != KF_OK) {
        return s;
    }
    l = &opt->layers[layer];
    in = l->p.in;
    r = l->p.shared;
    if (!l->precond || !stats_due(opt)) {
        kf__clear(&opt->err);
        return KF_OK;
    }
    coll_rows = (l->p.shared_mode == KF_SHARED_REDUCE && r > 1) ? n : 0;
    /* A plain layer's factor is computed into idle scratch and checked anyway, and a NaN or Inf
     * in x always reaches its diagonal (sums of squares cannot cancel), so x is checked only to
     * name the culprit: one pass over the batch fewer. Layers that grow buffers or merge tied
     * uses first keep the check up front, so that bad input changes nothing there either. */
    deferred = l->p.uses == 1 && !coll_rows && l->p.algorithm != KF_ALGO_EKFAC;
    if (!deferred && !kf__all_finite(rows, in, x, ldx)) {
        return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: x of layer %zu contains NaN or Inf", fn,
                        layer);
    }
    if (coll_rows && !kf__mul_size(coll_rows, in * sizeof(float), &needed)) {
        return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "%s: workspace size overflows", fn);
    }
    if (coll_rows && (s = grow_obs_work(opt, needed)) != KF_OK) {
        return kf__prefix(&opt->err, s, fn);
    }
    if (l->p.algorithm == KF_ALGO_EKFAC) {
        size_t keep = coll_rows ? n : rows;
        if ((s = grow_ekfac_obs(opt, l, keep)) != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
    }
    if ((s = begin_observation(opt, fn, layer, &l->a, n, &target)) != KF_OK) {
        return s;
    }
    prev = observation_fold(opt, l, &l->a, deferred, &fold_w, &keep, &c);
    kf__activation_factor_ws(n, r, in, x, ldx, l->p.bias, l->p.shared_mode, prev, keep, c, target,
                             l->dim_a, (float *)opt->obs_work);
    const obs_input xin = {x, rows, in, ldx, layer, "x"};
    if ((s = finish_observation(opt, fn, l, &l->a, n, 1, deferred ? &xin : NULL, fold_w,
                                (double)c / (double)(coll_rows ? n : rows))) != KF_OK) {
        return s;
    }
    if (l->p.algorithm == KF_ALGO_EKFAC) {
        /* The rows a~ as the factor saw them (averaged for reduce), with the homogeneous 1. */
        size_t keep = coll_rows ? n : rows, da = l->dim_a;
        for (size_t i = 0; i < keep; i++) {
            float *dst = l->xobs + i * da;
            if (coll_rows) {
                kf__collapse_shared(1, r, in, x + i * r * ldx, ldx, 1.0f / (float)r, dst);
            } else {
                memcpy(dst, x + i * ldx, in * sizeof(float));
            }
            if (l->p.bias) {
                dst[in] = 1.0f;
            }
        }
        l->xobs_rows = keep;
        l->xobs_n = n;
        l->gobs_rows = 0; /* gradients must follow the activations of the same step */
    }
    kf__clear(&opt->err);
    return KF_OK;
}

kf_status kf_optimizer_observe_gradients(kf_optimizer *opt, size_t layer, size_t n,
                                         const float *g, size_t ldg, float scale)
{
    static const char fn[] = "kf_optimizer_observe_gradients";
    float *target = NULL;
    const float *prev;
    kf_layer *l;
    size_t rows, out, r, needed = 0, coll_rows;
    int deferred;
    float keep, c;
    double alpha, fold_w;
    kf_status s;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if ((s = check_observation(opt, fn, layer, n, g, ldg, 1, &rows)) != KF_OK) {
        return s;
    }
    l = &opt->layers[layer];
    out = l->p.out;
    r = l->p.shared;
    if (!isfinite(scale) || scale == 0.0f) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: scale (%g) must be finite and "
                        "non-zero", fn, (double)scale);
    }
    alpha = (double)scale * (double)scale / ((double)n * (double)l->p.loss_terms_per_example);
    if (!(alpha > 0.0) || alpha > 3.0e38) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "%s: scale^2 / (n R') = %g is not "
                        "representable", fn, alpha);
    }
    if (!l->uses_g || !stats_due(opt)) {
        kf__clear(&opt->err);
        return KF_OK;
    }
    coll_rows = (l->p.shared_mode == KF_SHARED_REDUCE && r > 1) ? n : 0;
    /* As for the activations: alpha > 0 carries a NaN or Inf of g onto the factor's diagonal. */
    deferred = l->p.uses == 1 && !coll_rows && l->p.algorithm != KF_ALGO_EKFAC;
    if (!deferred && !kf__all_finite(rows, out, g, ldg)) {
        return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: g of layer %zu contains NaN or Inf", fn,
                        layer);
    }
    if (l->p.algorithm == KF_ALGO_EKFAC && (l->xobs_rows == 0 || l->xobs_n != n)) {
        return kf__fail(&opt->err, KF_ERR_STATE, "%s: EKFAC layer %zu needs the activations of "
                        "the same %zu examples observed first", fn, layer, n);
    }
    if (coll_rows && !kf__mul_size(coll_rows, out * sizeof(float), &needed)) {
        return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "%s: workspace size overflows", fn);
    }
    if (coll_rows && (s = grow_obs_work(opt, needed)) != KF_OK) {
        return kf__prefix(&opt->err, s, fn);
    }
    if ((s = begin_observation(opt, fn, layer, &l->g, n, &target)) != KF_OK) {
        return s;
    }
    prev = observation_fold(opt, l, &l->g, deferred, &fold_w, &keep, &c);
    if (prev) {
        alpha /= fold_w; /* the gradient factor takes the fold's c inside alpha */
    }
    kf__gradient_factor_ws(n, r, out, g, ldg, l->p.shared_mode, (float)alpha, prev, keep, target,
                           out, (float *)opt->obs_work);
    const obs_input gin = {g, rows, out, ldg, layer, "g"};
    if ((s = finish_observation(opt, fn, l, &l->g, n, 0, deferred ? &gin : NULL, fold_w,
                                alpha)) != KF_OK) {
        return s;
    }
    if (l->p.algorithm == KF_ALGO_EKFAC) {
        size_t keep = coll_rows ? n : rows;
        for (size_t i = 0; i < keep; i++) {
            float *dst = l->gobs + i * out;
            if (coll_rows) {
                kf__collapse_shared(1, r, out, g + i * r * ldg, ldg, scale, dst);
            } else {
                for (size_t j = 0; j < out; j++) {
                    dst[j] = scale * g[i * ldg + j];
                }
            }
        }
        l->gobs_rows = keep;
        l->gobs_n = n;
    }
    kf__clear(&opt->err);
    return KF_OK;
}

kf_status kf_optimizer_reserve_batch(kf_optimizer *opt, size_t n)
{
    static const char fn[] = "kf_optimizer_reserve_batch";
    kf_status s;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (n == 0) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "%s: n must be >= 1", fn);
    }
    if ((s = grow_obs_work(opt, batch_work_bytes(opt, n))) != KF_OK) {
        return kf__prefix(&opt->err, s, fn);
    }
    for (size_t i = 0; i < opt->n_layers; i++) {
        kf_layer *l = &opt->layers[i];
        size_t width = l->p.in > l->p.out ? l->p.in : l->p.out, bytes, rows;
        if (!l->precond) {
            continue;
        }
        if (!kf__mul_size(n, l->p.shared, &rows) || !kf__mul_size(n, width * sizeof(float), &bytes)) {
            return kf__fail(&opt->err, KF_ERR_OUT_OF_MEMORY, "%s: size overflows", fn);
        }
        if (l->p.shared_mode == KF_SHARED_REDUCE && l->p.shared > 1 &&
            (s = grow_obs_work(opt, bytes)) != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
        if (l->p.algorithm == KF_ALGO_EKFAC &&
            (s = grow_ekfac_obs(opt, l, l->p.shared_mode == KF_SHARED_REDUCE ? n : rows)) != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
    }
    kf__clear(&opt->err);
    return KF_OK;
}

/* ---- the step -------------------------------------------------------------------------------- */

/* Where a step takes a layer's gradient from: the gradient itself (kf_optimizer_step), or the
 * layer's inputs and output gradients of the batch-mean loss (kf_optimizer_step_batch), whose
 * product is the gradient. */
typedef struct grad_source {
    const kf_layer_tensors *t;
    const kf_layer_batch *b;
    size_t n;                   /* examples of the batch (batch form) */
} grad_source;

static float *src_weight(const grad_source *g, size_t i)
{
    return g->t ? g->t[i].weight : g->b[i].weight;
}

static size_t src_ld_weight(const grad_source *g, size_t i)
{
    return g->t ? g->t[i].ld_weight : g->b[i].ld_weight;
}

static float *src_bias(const grad_source *g, size_t i)
{
    return g->t ? g->t[i].bias : g->b[i].bias;
}

static kf_status check_source(kf_optimizer *opt, size_t i, const grad_source *g)
{
    const kf_layer *l = &opt->layers[i];
    size_t out = l->p.out, in = l->p.in, rows = g->n * l->p.shared;
    float *w = src_weight(g, i), *b = src_bias(g, i);
    size_t ldw = src_ld_weight(g, i);
    kf_status s;
    char name[64];
    snprintf(name, sizeof name, "layers[%zu].weight", i);
    if ((s = kf__check_mat(&opt->err, w, out, in, ldw, name)) != KF_OK) {
        return s;
    }
    if (g->t) {
        const kf_layer_tensors *t = &g->t[i];
        snprintf(name, sizeof name, "layers[%zu].grad_weight", i);
        if ((s = kf__check_mat(&opt->err, t->grad_weight, out, in, t->ld_grad_weight, name)) != KF_OK) {
            return s;
        }
        if (l->p.bias && (!t->bias || !t->grad_bias)) {
            return kf__fail(&opt->err, KF_ERR_NULL_POINTER, "layers[%zu]: the layer has a bias, "
                            "but %s is NULL", i, !t->bias ? "bias" : "grad_bias");
        }
        if (!l->p.bias && (t->bias || t->grad_bias)) {
            return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "layers[%zu]: the layer has no "
                            "bias, but bias or grad_bias is given", i);
        }
        if (kf__overlap(w, out, ldw, in, t->grad_weight, out, t->ld_grad_weight, in) ||
            (l->p.bias && (kf__overlap(b, 1, out, out, t->grad_bias, 1, out, out) ||
                           kf__overlap(w, out, ldw, in, b, 1, out, out)))) {
            return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "layers[%zu]: parameters overlap "
                            "gradients", i);
        }
        if (!kf__all_finite(out, in, t->grad_weight, t->ld_grad_weight) ||
            (l->p.bias && !kf__all_finite(1, out, t->grad_bias, out))) {
            return kf__fail(&opt->err, KF_ERR_NON_FINITE, "layers[%zu]: gradients contain NaN or "
                            "Inf", i);
        }
    } else {
        const kf_layer_batch *lb = &g->b[i];
        snprintf(name, sizeof name, "layers[%zu].x", i);
        if ((s = kf__check_mat(&opt->err, lb->x, rows, in, lb->ldx, name)) != KF_OK) {
            return s;
        }
        snprintf(name, sizeof name, "layers[%zu].gs", i);
        if ((s = kf__check_mat(&opt->err, lb->gs, rows, out, lb->ldgs, name)) != KF_OK) {
            return s;
        }
        if (l->p.bias != (b != NULL)) {
            return kf__fail(&opt->err, l->p.bias ? KF_ERR_NULL_POINTER : KF_ERR_INVALID_ARGUMENT,
                            "layers[%zu]: the layer %s a bias, but bias is %s", i,
                            l->p.bias ? "has" : "has no", b ? "given" : "NULL");
        }
        if (kf__overlap(w, out, ldw, in, lb->x, rows, lb->ldx, in) ||
            kf__overlap(w, out, ldw, in, lb->gs, rows, lb->ldgs, out) ||
            (b && (kf__overlap(w, out, ldw, in, b, 1, out, out) ||
                   kf__overlap(b, 1, out, out, lb->x, rows, lb->ldx, in) ||
                   kf__overlap(b, 1, out, out, lb->gs, rows, lb->ldgs, out)))) {
            return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "layers[%zu]: parameters overlap "
                            "the batch", i);
        }
        if (!kf__all_finite(rows, in, lb->x, lb->ldx) ||
            !kf__all_finite(rows, out, lb->gs, lb->ldgs)) {
            return kf__fail(&opt->err, KF_ERR_NON_FINITE, "layers[%zu]: x or gs contains NaN or "
                            "Inf", i);
        }
    }
    if (!kf__all_finite(out, in, w, ldw) || (l->p.bias && !kf__all_finite(1, out, b, out))) {
        return kf__fail(&opt->err, KF_ERR_NON_FINITE, "layers[%zu]: parameters contain NaN or Inf",
                        i);
    }
    return KF_OK;
}

/* pending <- (1 - 1/w') f + (1/w') pending with w' = decay w + 1; returns w'. */
static double fold_pending(kf_side *sd, float decay)
{
    size_t n = sd->dim * sd->dim;
    double w = (double)decay * sd->weight + 1.0;
    if (sd->weight != 0.0) {
        const float c = (float)(1.0 / w), keep = (float)(1.0 - 1.0 / w);
        for (size_t i = 0; i < n; i++) {
            sd->pending[i] = keep * sd->f[i] + c * sd->pending[i];
        }
    }
    return w;
}

static void swap_f(float **a, float **b)
{
    float *t = *a;
    *a = *b;
    *b = t;
}

/* EKFAC's diagonal of this batch in the basis (q_a, q_g), normalised like G, into s_out
 * (alpha = 1/(N R')): per example the rotated gradient Q_G^T (sum_r g a~^T) Q_A, squared. */
static void ekfac_batch_diag(kf_layer *l, const float *q_a, const float *q_g, float *s_out,
                             float *tmp)
{
    size_t rows = l->xobs_rows, da = l->dim_a, out = l->p.out, n = l->xobs_n;
    float *xr = l->xobs + l->obs_cap_rows * da; /* rotation halves */
    float *gr = l->gobs + l->obs_cap_rows * out;
    float alpha = (float)(1.0 / ((double)n * (double)l->p.loss_terms_per_example));
    kf__gemm(0, 0, rows, da, da, 1.0f, l->xobs, da, q_a, da, 0.0f, xr, da);
    kf__gemm(0, 0, rows, out, out, 1.0f, l->gobs, out, q_g, out, 0.0f, gr, out);
    if (rows == n) {
        /* One row per example: the rotated gradient is rank one, its square is the product of
         * squares, so the whole diagonal is one GEMM. */
        for (size_t i = 0; i < rows * da; i++) {
            xr[i] *= xr[i];
        }
        for (size_t i = 0; i < rows * out; i++) {
            gr[i] *= gr[i];
        }
        kf__gemm(1, 0, out, da, rows, alpha, gr, out, xr, da, 0.0f, s_out, da);
        return;
    }
    memset(s_out, 0, out * da * sizeof(float));
    {
        size_t r = rows / n;
        for (size_t e = 0; e < n; e++) {
            kf__gemm(1, 0, out, da, r, 1.0f, gr + e * r * out, out, xr + e * r * da, da, 0.0f,
                     tmp, da);
            for (size_t i = 0; i < out * da; i++) {
                s_out[i] += alpha * tmp[i] * tmp[i];
            }
        }
    }
}

/* s_next <- fold of `batch` into prior (weight w_prior) with the factor decay; returns the new
 * weight. prior may alias s_next. */
static double fold_s(size_t n, const float *prior, double w_prior, const float *batch, float *s_next,
                     float decay)
{
    double w = (double)decay * w_prior + 1.0;
    const float c = (float)(1.0 / w), keep = (float)(1.0 - 1.0 / w);
    if (w_prior == 0.0) {
        memcpy(s_next, batch, n * sizeof(float));
        return 1.0;
    }
    for (size_t i = 0; i < n; i++) {
        s_next[i] = keep * prior[i] + c * batch[i];
    }
    return w;
}

/* V = [dW db] into v (out x dim_a), from either form of the source. */
static void assemble_grad(const kf_layer *l, const grad_source *g, size_t i, float *v)
{
    size_t out = l->p.out, in = l->p.in, da = l->dim_a;
    if (g->t) {
        const kf_layer_tensors *t = &g->t[i];
        for (size_t r = 0; r < out; r++) {
            memcpy(v + r * da, t->grad_weight + r * t->ld_grad_weight, in * sizeof(float));
            if (l->p.bias) {
                v[r * da + in] = t->grad_bias[r];
            }
        }
    } else {
        const kf_layer_batch *b = &g->b[i];
        size_t rows = g->n * l->p.shared;
        /* dW = Gs^T X and db = the column sums of Gs. */
        kf__gemm(1, 0, out, in, rows, 1.0f, b->gs, b->ldgs, b->x, b->ldx, 0.0f, v, da);
        if (l->p.bias) {
            for (size_t r = 0; r < out; r++) {
                v[r * da + in] = 0.0f;
            }
            for (size_t k = 0; k < rows; k++) {
                const float *gr = b->gs + k * b->ldgs;
                for (size_t r = 0; r < out; r++) {
                    v[r * da + in] += gr[r];
                }
            }
        }
    }
}

static int reassociate(const kf_optimizer *opt, const kf_layer *l, const grad_source *g);

/* Phase 1 for one layer: fold statistics into pending, refresh inverses or eigenbases into the
 * _next buffers. Fallible; writes nothing that phase 3 does not swap in. local: no other rank
 * shares the refreshes (the exchange of dist.c sends symmetric inverses). */
static kf_status plan_layer(kf_optimizer *opt, size_t i, int stats, int inv_due, int factorise,
                            int local, const grad_source *g, plan *pl, void *fact_scratch)
{
    kf_layer *l = &opt->layers[i];
    const float *fa, *fg = NULL;
    float lambda = opt->p.damping, decay = opt->p.factor_decay;
    kf_status s;
    memset(pl, 0, sizeof *pl);
    pl->pi = l->pi;
    pl->damping = l->damping_used;
    if (!l->precond) {
        return KF_OK;
    }
    if ((l->a.has_pending && l->a.has_pending < l->p.uses) ||
        (l->uses_g && l->g.has_pending && l->g.has_pending < l->p.uses)) {
        return kf__fail(&opt->err, KF_ERR_STATE, "layer %zu has %zu uses but only %zu activation "
                        "and %zu gradient observations this step", i, l->p.uses,
                        l->a.has_pending, l->g.has_pending);
    }
    pl->fold_a = stats && l->a.has_pending;
    pl->fold_g = l->uses_g && stats && l->g.has_pending;
    if (l->a.weight == 0.0 && !pl->fold_a) {
        return kf__fail(&opt->err, KF_ERR_STATE, "layer %zu (%s) has no statistics yet: observe "
                        "its activations before its first step", i,
                        kf_algorithm_name(l->p.algorithm));
    }
    if (l->uses_g && l->g.weight == 0.0 && !pl->fold_g) {
        return kf__fail(&opt->err, KF_ERR_STATE, "layer %zu (%s) has no gradient statistics yet: "
                        "observe its output gradients before its first step", i,
                        kf_algorithm_name(l->p.algorithm));
    }
    if (pl->fold_a) {
        pl->wa = l->a.pending_weight != 0.0 ? l->a.pending_weight : fold_pending(&l->a, decay);
    }
    if (pl->fold_g) {
        pl->wg = l->g.pending_weight != 0.0 ? l->g.pending_weight : fold_pending(&l->g, decay);
    }
    fa = pl->fold_a ? l->a.pending : l->a.f;
    if (l->uses_g) {
        fg = pl->fold_g ? l->g.pending : l->g.f;
    }
    pl->refresh = inv_due || !l->has_inverse;
    l->refreshing = pl->refresh;
    if (pl->refresh && !factorise) {
        /* Another rank factorises; pi is cheap and computed from the same factors everywhere. */
        pl->damping = lambda;
        if (l->p.algorithm == KF_ALGO_KFAC) {
            pl->pi = kf__pi(l->dim_a, fa, l->dim_a, l->p.out, fg, l->p.out);
        }
    } else if (pl->refresh) {
        size_t da = l->dim_a, out = l->p.out;
        /* A factor used for one step only: factor + solve (n^3/3) beats the explicit inverse
         * (n^3) with the same solve flops. An inverse kept for several steps stays explicit, as
         * the checkpoints and the distributed exchange expect. */
        kf_status (*refresh)(kf_errbuf *, size_t, const float *, size_t, float, kf_precision,
                             float *, size_t, float *, void *);
        pl->chol = local && opt->p.inverse_interval == 1 && !reassociate(opt, l, g) &&
                   (l->p.algorithm == KF_ALGO_FOOF || l->p.algorithm == KF_ALGO_KFAC);
        refresh = pl->chol ? kf__damped_cholesky_ws : kf__damped_inverse_lower_ws;
        pl->damping = lambda;
        switch (l->p.algorithm) {
        case KF_ALGO_FOOF:
            s = refresh(&opt->err, da, fa, da, lambda, opt->p.inverse_precision, l->a.inv_next,
                        da, NULL, fact_scratch);
            break;
        case KF_ALGO_KFAC: {
            double gamma = sqrt((double)lambda);
            pl->pi = kf__pi(da, fa, da, out, fg, out);
            s = refresh(&opt->err, da, fa, da, (float)(pl->pi * gamma), opt->p.inverse_precision,
                        l->a.inv_next, da, NULL, fact_scratch);
            if (s == KF_OK) {
                s = refresh(&opt->err, out, fg, out, (float)(gamma / pl->pi),
                            opt->p.inverse_precision, l->g.inv_next, out, NULL, fact_scratch);
            }
            break;
        }
        default: /* eigenbasis algorithms */
            s = kf__sym_eig_ws(&opt->err, da, fa, da, l->a.eig_next, l->a.inv_next, da,
                               fact_scratch);
            if (s == KF_OK) {
                s = kf__sym_eig_ws(&opt->err, out, fg, out, l->g.eig_next, l->g.inv_next, out,
                                   fact_scratch);
            }
            break;
        }
        if (s != KF_OK) {
            char where[48];
            snprintf(where, sizeof where, "layer %zu", i);
            return kf__prefix(&opt->err, s, where);
        }
    }
    return KF_OK;
}

/* Phase 1b for an EKFAC layer, once its bases are known (after the exchange of a distributed
 * step): on a refresh, restart the diagonal from K-FAC's beta alpha^T in the new bases (George et
 * al. 2018); with this step's observations, this batch's own diagonal into dir (free until phase
 * 2), marked diag_pending for the fold. */
static void ekfac_batch(kf_layer *l, plan *pl, float *tmp)
{
    const float *qa = pl->refresh ? l->a.inv_next : l->a.inv;
    const float *qg = pl->refresh ? l->g.inv_next : l->g.inv;
    l->diag_pending = pl->fold_g && l->xobs_rows > 0 && l->gobs_rows == l->xobs_rows;
    if (pl->refresh) {
        const float *ea = l->a.eig_next, *eg = l->g.eig_next;
        for (size_t r = 0; r < l->p.out; r++) {
            float b = eg[r] > 0.0f ? eg[r] : 0.0f;
            for (size_t c = 0; c < l->dim_a; c++) {
                l->s_next[r * l->dim_a + c] = b * (ea[c] > 0.0f ? ea[c] : 0.0f);
            }
        }
        pl->ws = 1.0;
        pl->s_update = 1;
    }
    if (l->diag_pending) {
        ekfac_batch_diag(l, qa, qg, l->dir, tmp);
    }
}

/* Phase 1c for an EKFAC layer: folds the batch diagonal in dir into the moving average. */
static kf_status ekfac_fold(kf_optimizer *opt, size_t i, plan *pl)
{
    kf_layer *l = &opt->layers[i];
    const float *prior = pl->refresh ? l->s_next : l->s;
    double w_prior = pl->refresh ? 1.0 : l->s_weight;
    if (!l->diag_pending) {
        return KF_OK;
    }
    l->diag_pending = 0;
    if (!kf__all_finite(l->p.out, l->dim_a, l->dir, l->dim_a)) {
        return kf__fail(&opt->err, KF_ERR_NON_FINITE, "layer %zu: the EKFAC diagonal of this "
                        "batch overflows", i);
    }
    pl->ws = fold_s(l->p.out * l->dim_a, prior, w_prior, l->dir, l->s_next, opt->p.factor_decay);
    pl->s_update = 1;
    return KF_OK;
}

/* Flops of the FOOF / K-FAC direction formed from the gradient, and re-associated from the
 * batch (DESIGN.md section 8): Gs^T (X~ P) and (Gs Q)^T (X~ P) never form the gradient. */
static int reassociate(const kf_optimizer *opt, const kf_layer *l, const grad_source *g)
{
    double rows = (double)(g->n * l->p.shared), out = (double)l->p.out, da = (double)l->dim_a;
    double direct, re;
    if (!g->b || opt->p.kl_clip > 0.0f ||
        (l->p.algorithm != KF_ALGO_FOOF && l->p.algorithm != KF_ALGO_KFAC)) {
        return 0;
    }
    direct = 2.0 * rows * out * da + 2.0 * out * da * da;
    re = 2.0 * rows * da * da + 2.0 * rows * out * da;
    if (l->p.algorithm == KF_ALGO_KFAC) {
        direct += 2.0 * out * out * da;
        re += 2.0 * rows * out * out;
    }
    return re < direct;
}

/* Phase 2 for one layer: its direction into l->dir, using the inverses phase 1 chose (for Adam,
 * the gradient itself: Adam's moments are updated at the commit). Returns <d, V> for the KL-clip.
 * v, t1 (two adjacent matrices) are step workspace; bw is the batch workspace. */
static double direction(kf_optimizer *opt, kf_layer *l, const grad_source *g, size_t i,
                        const plan *pl, float *v, float *t1, float *bw)
{
    size_t out = l->p.out, in = l->p.in, da = l->dim_a, nel = out * da;
    const float *ai = pl->refresh ? l->a.inv_next : l->a.inv;
    const float *gi = pl->refresh ? l->g.inv_next : l->g.inv;
    int chol = pl->refresh ? pl->chol : l->inv_chol;
    double dot = 0.0;
    if (chol) {
        /* D = V (A + .)^{-1} (and (G + .)^{-1} first for K-FAC) by solves in place in dir; V is
         * kept apart only for the KL-clip's <d, V>. */
        if (opt->p.kl_clip > 0.0f) {
            assemble_grad(l, g, i, v);
            memcpy(l->dir, v, nel * sizeof(float));
        } else {
            assemble_grad(l, g, i, l->dir);
        }
        kf__chol_solve_right(out, da, ai, da, l->dir, da, t1);
        if (l->p.algorithm == KF_ALGO_KFAC) {
            kf__chol_solve_left(out, da, gi, out, l->dir, da, t1);
        }
        if (opt->p.kl_clip > 0.0f) {
            for (size_t k = 0; k < nel; k++) {
                dot += (double)l->dir[k] * (double)v[k];
            }
        }
        return dot;
    }
    if (reassociate(opt, l, g)) {
        const kf_layer_batch *b = &g->b[i];
        size_t rows = g->n * l->p.shared;
        float *xp = bw, *gq = bw + rows * da;
        /* X~ P = X P[0:in, :] + 1 P[in, :]. */
        kf__gemm(0, 0, rows, da, in, 1.0f, b->x, b->ldx, ai, da, 0.0f, xp, da);
        if (l->p.bias) {
            for (size_t k = 0; k < rows; k++) {
                for (size_t c = 0; c < da; c++) {
                    xp[k * da + c] += ai[in * da + c];
                }
            }
        }
        if (l->p.algorithm == KF_ALGO_KFAC) {
            kf__gemm(0, 0, rows, out, out, 1.0f, b->gs, b->ldgs, gi, out, 0.0f, gq, out);
            kf__gemm(1, 0, out, da, rows, 1.0f, gq, out, xp, da, 0.0f, l->dir, da);
        } else {
            kf__gemm(1, 0, out, da, rows, 1.0f, b->gs, b->ldgs, xp, da, 0.0f, l->dir, da);
        }
        return 0.0; /* only used with the KL-clip, which disables re-association */
    }
    if (!l->precond) {
        assemble_grad(l, g, i, l->dir); /* the gradient is the direction: no copy through v */
        return 0.0;
    }
    if (g->t && opt->p.kl_clip == 0.0f &&
        (l->p.algorithm == KF_ALGO_FOOF || l->p.algorithm == KF_ALGO_KFAC)) {
        /* [dW db] P = dW P[0:in, :] + db P[in, :], read from the caller's buffers: the copy of
         * the gradient into V is a pass over it that the GEMM does not need. */
        const kf_layer_tensors *t = &g->t[i];
        float *vp = l->p.algorithm == KF_ALGO_KFAC ? t1 : l->dir;
        kf__gemm(0, 0, out, da, in, 1.0f, t->grad_weight, t->ld_grad_weight, ai, da, 0.0f, vp, da);
        if (l->p.bias) {
            kf__gemm(0, 0, out, da, 1, 1.0f, t->grad_bias, 1, ai + in * da, da, 1.0f, vp, da);
        }
        if (l->p.algorithm == KF_ALGO_KFAC) {
            kf__gemm(0, 0, out, da, out, 1.0f, gi, out, t1, da, 0.0f, l->dir, da);
        }
        return 0.0;
    }
    assemble_grad(l, g, i, v);
    switch (l->p.algorithm) {
    case KF_ALGO_SGD:
    case KF_ALGO_ADAM:
        memcpy(l->dir, v, nel * sizeof(float));
        return 0.0;
    case KF_ALGO_FOOF:
        kf__kronecker_apply_ws(out, da, v, da, NULL, 0, ai, da, l->dir, da, NULL);
        break;
    case KF_ALGO_KFAC:
        kf__kronecker_apply_ws(out, da, v, da, gi, out, ai, da, l->dir, da, t1);
        break;
    default: {
        const float *ea = pl->refresh ? l->a.eig_next : l->a.eig;
        const float *eg = pl->refresh ? l->g.eig_next : l->g.eig;
        const float *s = NULL;
        if (l->p.algorithm == KF_ALGO_EKFAC) {
            s = pl->s_update ? l->s_next : l->s;
        }
        /* t1 starts the two adjacent workspace matrices that form the eigenbasis scratch; ai and
         * gi hold the eigenvectors here. */
        if (kf__eigenbasis_apply_ws(NULL, out, da, v, da, gi, out, s ? NULL : eg, ai, da,
                                    s ? NULL : ea, s, da, pl->damping, l->dir, da, t1) != KF_OK) {
            /* Only a non-finite result gets here (damping > 0 is validated): mark it so that the
             * finiteness check refuses the step. */
            l->dir[0] = NAN;
        }
        break;
    }
    }
    if (opt->p.kl_clip > 0.0f) {
        for (size_t k = 0; k < nel; k++) {
            dot += (double)l->dir[k] * (double)v[k];
        }
    }
    return dot;
}

/* Bytes of batch workspace a batch step over n examples needs (re-associated directions). */
static size_t batch_work_bytes(const kf_optimizer *opt, size_t n)
{
    size_t need = 0;
    for (size_t i = 0; i < opt->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        size_t rows, b;
        /* SIZE_MAX on overflow: the allocation then fails cleanly with KF_ERR_OUT_OF_MEMORY. */
        if (!kf__mul_size(n, l->p.shared, &rows) ||
            !kf__mul_size(rows, (l->dim_a + l->p.out) * sizeof(float), &b)) {
            return SIZE_MAX;
        }
        need = b > need ? b : need;
    }
    return need;
}

/* After a failed step: the pending buffers of the first `count` layers that phase 1 folded hold
 * averages now, not observations, so they are dropped (observe again before retrying). */
static void drop_folded(kf_optimizer *opt, const plan *plans, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        if (plans[k].fold_a) {
            opt->layers[k].a.has_pending = 0;
        }
        if (plans[k].fold_g) {
            opt->layers[k].g.has_pending = 0;
        }
    }
}

/* Moments of weights whose gradient is exactly zero (dead units, always-zero inputs) decay
 * geometrically into subnormal floats, which x86 processes about a hundred times slower; below
 * FLT_MIN they are worth nothing to the update, so they become 0. */
static float flush_subnormal(float x)
{
    return fabsf(x) < 1.17549435e-38f ? 0.0f : x;
}

/* 1 when the float is NaN or Inf (exponent bits all ones), as an integer so that loops OR it up
 * and vectorise. */
static uint32_t nonfinite_bit(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
}

/* One pass over layer i before anything is written: is its direction finite (*dir_ok), and would
 * the commit leave its parameters and moments finite (the return value)? The commit's own
 * arithmetic, evaluated without touching the state. With momentum (not Adam) the new momentum is
 * left in dir, which the step no longer needs, so that the commit reads it instead of recomputing
 * it from mom and dir (one pass fewer over three buffers). */
static int prepare_update(const kf_optimizer *opt, size_t i, const grad_source *g, float scale,
                          int *dir_ok)
{
    kf_layer *l = (kf_layer *)&opt->layers[i];
    size_t out = l->p.out, in = l->p.in, da = l->dim_a;
    const float *w = src_weight(g, i), *bias = src_bias(g, i);
    size_t ldw = src_ld_weight(g, i);
    float lr = opt->p.learning_rate, mu = opt->p.momentum, wd = opt->p.weight_decay;
    uint32_t bad = 0, bad_dir = 0;
    if (l->p.algorithm == KF_ALGO_ADAM) {
        float b1 = opt->p.adam_beta1, b2 = opt->p.adam_beta2, eps = opt->p.adam_epsilon;
        double t_step = (double)(opt->step + 1);
        float c1 = (float)(1.0 / (1.0 - pow((double)b1, t_step)));
        float c2 = (float)(1.0 / (1.0 - pow((double)b2, t_step)));
        for (size_t r = 0; r < out; r++) {
            for (size_t c = 0; c < da; c++) {
                size_t k = r * da + c;
                float dk = l->dir[k];
                float m2 = b1 * l->mom[k] + (1.0f - b1) * dk;
                float v2 = b2 * l->adam_v[k] + (1.0f - b2) * dk * dk;
                float u = (m2 * c1) / (sqrtf(v2 * c2) + eps);
                float p = c < in ? w[r * ldw + c] : bias[r];
                float np = c < in ? p - lr * (u + wd * p) : p - lr * u;
                bad_dir |= nonfinite_bit(dk);
                bad |= nonfinite_bit(np) | nonfinite_bit(m2) | nonfinite_bit(v2);
            }
        }
        *dir_ok = !bad_dir;
        return !bad;
    }
    for (size_t r = 0; r < out; r++) {
        float *d = l->dir + r * da;
        const float *wr = w + r * ldw;
        if (mu > 0.0f) {
            const float *m = l->mom + r * da;
            for (size_t c = 0; c < in; c++) {
                float m2 = mu * m[c] + scale * d[c];
                bad_dir |= nonfinite_bit(d[c]);
                bad |= nonfinite_bit(m2) | nonfinite_bit(wr[c] - lr * (m2 + wd * wr[c]));
                d[c] = flush_subnormal(m2);
            }
            if (l->p.bias) {
                float m2 = mu * m[in] + scale * d[in];
                bad_dir |= nonfinite_bit(d[in]);
                bad |= nonfinite_bit(m2) | nonfinite_bit(bias[r] - lr * m2);
                d[in] = flush_subnormal(m2);
            }
        } else {
            for (size_t c = 0; c < in; c++) {
                bad_dir |= nonfinite_bit(d[c]);
                bad |= nonfinite_bit(wr[c] - lr * (scale * d[c] + wd * wr[c]));
            }
            if (l->p.bias) {
                bad_dir |= nonfinite_bit(d[in]);
                bad |= nonfinite_bit(bias[r] - lr * scale * d[in]);
            }
        }
    }
    *dir_ok = !bad_dir;
    return !bad;
}

static kf_status step_common(kf_optimizer *opt, const char *fn, const grad_source *g,
                             size_t num_layers, const kf__step_hook *hook)
{
    unsigned char *cur;
    float *v, *t1, *bw = NULL;
    void *fact;
    size_t maxmat = 0;
    int stats, inv_due, any_diag = 0, split;
    double dot_sum = 0.0;
    float nu = 1.0f, lr = opt->p.learning_rate;
    kf_status s = KF_OK;
    plan *plans;
    size_t i;
    if (opt->n_layers == 0) {
        return kf__fail(&opt->err, KF_ERR_STATE, "%s: no layers are registered", fn);
    }
    if (num_layers != opt->n_layers) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "%s: num_layers (%zu) differs from the %zu "
                        "registered layers", fn, num_layers, opt->n_layers);
    }
    for (i = 0; i < num_layers; i++) {
        if ((s = check_source(opt, i, g)) != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
    }
    if (g->b) {
        /* Grown only for a batch larger than any before (kf_optimizer_reserve_batch plans it);
         * this is the step's one possible allocation, and it happens before any change. */
        if ((s = grow_obs_work(opt, batch_work_bytes(opt, g->n))) != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
        bw = (float *)opt->obs_work;
    }
    for (i = 0; i < opt->n_layers; i++) {
        size_t m = KF_ALIGN_UP(opt->layers[i].p.out * opt->layers[i].dim_a * sizeof(float));
        maxmat = m > maxmat ? m : maxmat;
    }
    /* The workspace was planned at registration: V, then T1 and T2 (adjacent: the eigenbasis
     * scratch), then the factorisation scratch. The plans sit after the layer table. */
    cur = (unsigned char *)opt->work;
    v = (float *)kf__carve(&cur, maxmat);
    t1 = (float *)kf__carve(&cur, maxmat);
    kf__carve(&cur, maxmat);
    fact = cur;
    plans = (plan *)(void *)(opt->layers + opt->cap_layers);
    stats = stats_due(opt);
    inv_due = (opt->step % opt->p.inverse_interval == 0) || opt->force_refresh;

    /* Phase 1: statistics and refreshes (fallible; nothing visible changes). */
    for (i = 0; i < opt->n_layers; i++) {
        int mine = !hook || !hook->owns || hook->owns(hook->ctx, i);
        if ((s = plan_layer(opt, i, stats, inv_due, mine, hook == NULL, g, &plans[i], fact)) != KF_OK) {
            drop_folded(opt, plans, i + 1);
            return kf__prefix(&opt->err, s, fn);
        }
    }
    if (hook && hook->exchange && (s = hook->exchange(hook->ctx, opt)) != KF_OK) {
        drop_folded(opt, plans, opt->n_layers);
        return kf__prefix(&opt->err, s, fn);
    }
    /* EKFAC's diagonal needs the bases, which the exchange completes. */
    for (i = 0; i < opt->n_layers; i++) {
        if (opt->layers[i].p.algorithm == KF_ALGO_EKFAC) {
            ekfac_batch(&opt->layers[i], &plans[i], t1);
            any_diag |= opt->layers[i].diag_pending;
        }
    }
    if (any_diag && hook && hook->reduce_diagonals &&
        (s = hook->reduce_diagonals(hook->ctx, opt)) != KF_OK) {
        drop_folded(opt, plans, opt->n_layers);
        return kf__prefix(&opt->err, s, fn);
    }
    for (i = 0; i < opt->n_layers; i++) {
        if ((s = ekfac_fold(opt, i, &plans[i])) != KF_OK) {
            drop_folded(opt, plans, opt->n_layers);
            return kf__prefix(&opt->err, s, fn);
        }
    }
    /* Phase 2: directions (infallible but for a non-finite result, found below). When the
     * directions are shared out, each caller computes those it owns, the exchange brings the
     * others, and only then is the KL-clip's sum formed and every direction checked (by every
     * caller alike, in the pass that prepares the update). */
    split = hook && hook->owns_direction && hook->exchange_directions;
    for (i = 0; i < opt->n_layers; i++) {
        kf_layer *l = &opt->layers[i];
        double dot;
        if (split && l->precond && !hook->owns_direction(hook->ctx, i)) {
            continue;
        }
        dot = direction(opt, l, g, i, &plans[i], v, t1, bw);
        if (split) {
            continue;
        }
        if (l->precond) {
            dot_sum += dot;
        }
    }
    if (split) {
        if ((s = hook->exchange_directions(hook->ctx, opt)) != KF_OK) {
            drop_folded(opt, plans, opt->n_layers);
            return kf__prefix(&opt->err, s, fn);
        }
        for (i = 0; i < opt->n_layers; i++) {
            kf_layer *l = &opt->layers[i];
            size_t nel = l->p.out * l->dim_a;
            if (l->precond && opt->p.kl_clip > 0.0f) {
                /* <d, V> as direction() forms it, so that the sum is the same bits. */
                double dot = 0.0;
                assemble_grad(l, g, i, v);
                for (size_t k = 0; k < nel; k++) {
                    dot += (double)l->dir[k] * (double)v[k];
                }
                dot_sum += dot;
            }
        }
    }
    if (opt->p.kl_clip > 0.0f && dot_sum != 0.0) {
        /* Ba et al. 2017; kfac-pytorch uses |<d, grad>| so that nu stays real. */
        double q = (double)opt->p.kl_clip / ((double)lr * (double)lr * fabs(dot_sum));
        nu = q < 1.0 ? (float)sqrt(q) : 1.0f;
    }

    /* The directions must be finite, and the update itself can overflow from finite inputs (a
     * huge gradient times the learning rate): both are found in one pass per layer, before
     * anything is written. A non-finite direction is reported first, wherever it is. */
    {
        size_t bad_dir = SIZE_MAX, bad_update = SIZE_MAX;
        for (i = 0; i < opt->n_layers; i++) {
            int dir_ok = 1;
            if (!prepare_update(opt, i, g, opt->layers[i].precond ? nu : 1.0f, &dir_ok) &&
                bad_update == SIZE_MAX) {
                bad_update = i;
            }
            if (!dir_ok && bad_dir == SIZE_MAX) {
                bad_dir = i;
            }
        }
        if (bad_dir != SIZE_MAX || bad_update != SIZE_MAX) {
            drop_folded(opt, plans, opt->n_layers);
            if (bad_dir != SIZE_MAX) {
                return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: the direction of layer %zu is "
                                "not finite (increase the damping?)", fn, bad_dir);
            }
            return kf__fail(&opt->err, KF_ERR_NON_FINITE, "%s: the update of layer %zu overflows "
                            "(learning rate or gradients too large?)", fn, bad_update);
        }
    }

    /* Phase 3: commit. */
    for (i = 0; i < opt->n_layers; i++) {
        kf_layer *l = &opt->layers[i];
        const plan *pl = &plans[i];
        size_t out = l->p.out, in = l->p.in, da = l->dim_a, nel = out * da;
        float *w = src_weight(g, i), *bias = src_bias(g, i);
        size_t ldw = src_ld_weight(g, i);
        float mu = opt->p.momentum, wd = opt->p.weight_decay;
        float scale = l->precond ? nu : 1.0f;
        const float *upd = l->dir;
        float us = scale;
        if (l->p.algorithm == KF_ALGO_ADAM) {
            /* AdamW: dir holds the gradient; the step is m^ / (sqrt(v^) + eps). */
            float b1 = opt->p.adam_beta1, b2 = opt->p.adam_beta2, eps = opt->p.adam_epsilon;
            double t_step = (double)(opt->step + 1);
            float c1 = (float)(1.0 / (1.0 - pow((double)b1, t_step)));
            float c2 = (float)(1.0 / (1.0 - pow((double)b2, t_step)));
            for (size_t k = 0; k < nel; k++) {
                float gk = l->dir[k];
                l->mom[k] = flush_subnormal(b1 * l->mom[k] + (1.0f - b1) * gk);
                l->adam_v[k] = flush_subnormal(b2 * l->adam_v[k] + (1.0f - b2) * gk * gk);
                l->dir[k] = (l->mom[k] * c1) / (sqrtf(l->adam_v[k] * c2) + eps);
            }
            us = 1.0f;
        } else if (mu > 0.0f) {
            /* prepare_update left the new momentum in dir: it becomes the momentum buffer. */
            swap_f(&l->mom, &l->dir);
            upd = l->mom;
            us = 1.0f;
        }
        for (size_t r = 0; r < out; r++) {
            float *wr = w + r * ldw;
            const float *u = upd + r * da;
            for (size_t c = 0; c < in; c++) {
                wr[c] -= lr * (us * u[c] + wd * wr[c]);
            }
            if (l->p.bias) {
                bias[r] -= lr * us * u[in];
            }
        }
        if (pl->fold_a) {
            swap_f(&l->a.f, &l->a.pending);
            l->a.weight = pl->wa;
            l->a.has_pending = 0;
        }
        if (pl->fold_g) {
            swap_f(&l->g.f, &l->g.pending);
            l->g.weight = pl->wg;
            l->g.has_pending = 0;
        }
        if (pl->refresh) {
            swap_f(&l->a.inv, &l->a.inv_next);
            if (l->uses_g) {
                swap_f(&l->g.inv, &l->g.inv_next);
            }
            if (l->eigen) {
                swap_f(&l->a.eig, &l->a.eig_next);
                swap_f(&l->g.eig, &l->g.eig_next);
            }
            l->has_inverse = 1;
            l->inv_chol = pl->chol;
            l->inverse_count++;
            l->pi = pl->pi;
            l->damping_used = pl->damping;
        }
        if (pl->s_update) {
            swap_f(&l->s, &l->s_next);
            l->s_weight = pl->ws;
        }
        if (l->p.algorithm == KF_ALGO_EKFAC && pl->fold_g) {
            l->xobs_rows = l->gobs_rows = 0;
        }
    }
    opt->step++;
    opt->force_refresh = 0;
    kf__clear(&opt->err);
    return KF_OK;
}

kf_status kf_optimizer_step(kf_optimizer *opt, const kf_layer_tensors *layers, size_t num_layers)
{
    grad_source g;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!layers) {
        return kf__fail(&opt->err, KF_ERR_NULL_POINTER, "kf_optimizer_step: layers is NULL");
    }
    g.t = layers;
    g.b = NULL;
    g.n = 0;
    return step_common(opt, "kf_optimizer_step", &g, num_layers, NULL);
}

kf_status kf__optimizer_step_hooked(kf_optimizer *opt, const kf_layer_tensors *layers,
                                    size_t num_layers, const kf__step_hook *hook)
{
    grad_source g;
    g.t = layers;
    g.b = NULL;
    g.n = 0;
    return step_common(opt, "kf_optimizer_step", &g, num_layers, hook);
}

kf_status kf_optimizer_step_batch(kf_optimizer *opt, size_t n, const kf_layer_batch *layers,
                                  size_t num_layers)
{
    grad_source g;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!layers) {
        return kf__fail(&opt->err, KF_ERR_NULL_POINTER, "kf_optimizer_step_batch: layers is NULL");
    }
    if (n == 0 || n > ((size_t)1 << 40)) {
        return kf__fail(&opt->err, KF_ERR_SHAPE, "kf_optimizer_step_batch: n (%zu) must be in "
                        "1..2^40", n);
    }
    g.t = NULL;
    g.b = layers;
    g.n = n;
    return step_common(opt, "kf_optimizer_step_batch", &g, num_layers, NULL);
}

/* ---- schedules and queries ------------------------------------------------------------------- */

kf_status kf_optimizer_set_learning_rate(kf_optimizer *opt, float learning_rate)
{
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!(isfinite(learning_rate) && learning_rate > 0.0f)) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "kf_optimizer_set_learning_rate: "
                        "learning_rate (%g) must be finite and > 0", (double)learning_rate);
    }
    opt->p.learning_rate = learning_rate;
    kf__clear(&opt->err);
    return KF_OK;
}

kf_status kf_optimizer_set_damping(kf_optimizer *opt, float damping)
{
    int needs_positive = kf__algo_uses_g(opt ? opt->p.algorithm : KF_ALGO_SGD);
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    for (size_t i = 0; i < opt->n_layers; i++) {
        needs_positive |= opt->layers[i].uses_g;
    }
    if (!(isfinite(damping) && damping >= 0.0f) || (needs_positive && !(damping > 0.0f))) {
        return kf__fail(&opt->err, KF_ERR_INVALID_ARGUMENT, "kf_optimizer_set_damping: damping "
                        "(%g) must be finite and %s", (double)damping,
                        needs_positive ? "> 0 (K-FAC layers)" : ">= 0");
    }
    if (damping != opt->p.damping) {
        opt->p.damping = damping;
        opt->force_refresh = 1;
    }
    kf__clear(&opt->err);
    return KF_OK;
}

kf_status kf_optimizer_layer_count(const kf_optimizer *opt, size_t *count)
{
    if (!opt || !count) {
        return KF_ERR_NULL_POINTER;
    }
    *count = opt->n_layers;
    return KF_OK;
}

kf_status kf_optimizer_step_count(const kf_optimizer *opt, uint64_t *steps)
{
    if (!opt || !steps) {
        return KF_ERR_NULL_POINTER;
    }
    *steps = opt->step;
    return KF_OK;
}

/* Shared checks of the per-layer queries (const handle: the message is still recorded). */
static kf_status query_layer(const kf_optimizer *opt, size_t layer, const void *out,
                             const char *fn)
{
    kf_optimizer *m = (kf_optimizer *)opt;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!out) {
        return kf__fail(&m->err, KF_ERR_NULL_POINTER, "%s: the output pointer is NULL", fn);
    }
    return check_layer_index(m, fn, layer);
}

kf_status kf_optimizer_inverse_count(const kf_optimizer *opt, size_t layer, uint64_t *count)
{
    kf_status s = query_layer(opt, layer, count, "kf_optimizer_inverse_count");
    if (s == KF_OK) {
        *count = opt->layers[layer].inverse_count;
    }
    return s;
}

kf_status kf_optimizer_layer_pi(const kf_optimizer *opt, size_t layer, float *pi)
{
    kf_status s = query_layer(opt, layer, pi, "kf_optimizer_layer_pi");
    if (s == KF_OK) {
        *pi = opt->layers[layer].pi;
    }
    return s;
}

kf_status kf_optimizer_layer_damping(const kf_optimizer *opt, size_t layer, float *damping)
{
    kf_status s = query_layer(opt, layer, damping, "kf_optimizer_layer_damping");
    if (s == KF_OK) {
        *damping = opt->layers[layer].has_inverse ? opt->layers[layer].damping_used
                                                  : opt->p.damping;
    }
    return s;
}

kf_status kf_optimizer_layer_params(const kf_optimizer *opt, size_t layer, kf_layer_params *p)
{
    kf_status s = query_layer(opt, layer, p, "kf_optimizer_layer_params");
    if (s == KF_OK) {
        *p = opt->layers[layer].p;
    }
    return s;
}

kf_status kf_optimizer_layer_algorithm(const kf_optimizer *opt, size_t layer,
                                       kf_algorithm *algorithm)
{
    kf_status s = query_layer(opt, layer, algorithm, "kf_optimizer_layer_algorithm");
    if (s == KF_OK) {
        *algorithm = opt->layers[layer].p.algorithm;
    }
    return s;
}

kf_status kf_optimizer_layer_factor(const kf_optimizer *opt, size_t layer, kf_factor_kind which,
                                    float *f, size_t ldf)
{
    static const char fn[] = "kf_optimizer_layer_factor";
    kf_optimizer *m = (kf_optimizer *)opt;
    const kf_side *sd;
    kf_status s = query_layer(opt, layer, f, fn);
    if (s != KF_OK) {
        return s;
    }
    if (which != KF_FACTOR_A && which != KF_FACTOR_G) {
        return kf__fail(&m->err, KF_ERR_INVALID_ARGUMENT, "%s: which (%d) is not a kf_factor_kind",
                        fn, (int)which);
    }
    {
        const kf_layer *l = &opt->layers[layer];
        if (!l->precond || (which == KF_FACTOR_G && !l->uses_g)) {
            return kf__fail(&m->err, KF_ERR_INVALID_ARGUMENT, "%s: layer %zu (%s) has no %s factor",
                            fn, layer, kf_algorithm_name(l->p.algorithm),
                            which == KF_FACTOR_A ? "activation" : "gradient");
        }
        sd = which == KF_FACTOR_A ? &l->a : &l->g;
    }
    if (ldf < sd->dim) {
        return kf__fail(&m->err, KF_ERR_SHAPE, "%s: ldf (%zu) < the factor's size (%zu)", fn, ldf,
                        sd->dim);
    }
    if (sd->weight == 0.0) {
        return kf__fail(&m->err, KF_ERR_STATE, "%s: layer %zu has no statistics yet", fn, layer);
    }
    /* From the lower triangle, the one the optimizer keeps current (see kf__activation_factor_ws). */
    for (size_t i = 0; i < sd->dim; i++) {
        for (size_t j = 0; j <= i; j++) {
            f[i * ldf + j] = f[j * ldf + i] = sd->f[i * sd->dim + j];
        }
    }
    kf__clear(&m->err);
    return KF_OK;
}

kf_status kf_optimizer_memory_bytes(const kf_optimizer *opt, size_t *bytes)
{
    size_t total;
    if (!opt || !bytes) {
        return KF_ERR_NULL_POINTER;
    }
    total = sizeof *opt + opt->cap_layers * (sizeof(kf_layer) + sizeof(plan)) + opt->work_bytes +
            opt->obs_work_bytes;
    for (size_t i = 0; i < opt->n_layers; i++) {
        total += opt->layers[i].block_bytes + opt->layers[i].obs_bytes;
    }
    *bytes = total;
    return KF_OK;
}
