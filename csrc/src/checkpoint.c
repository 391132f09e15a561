/* Versioned, checksummed checkpoints of the optimizer, in memory and in files.
 *
 * Layout (native byte order, marked; floats as their IEEE bytes so a resume is bit-exact):
 *   "KRONFAC\0", u32 format version, u32 byte-order mark, u64 total size,
 *   the parameters, u64 step, u32 pending refresh, u64 layer count,
 *   per layer: its shape and settings, its counters, then its buffers,
 *   u64 FNV-1a checksum of everything before it. */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L /* fsync and fileno: flushing a checkpoint to the disk */
#endif

#include "kf_optimizer_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#define KF_CK_MAGIC "KRONFAC"
#define KF_CK_VERSION 1u
#define KF_CK_BOM 0x01020304u
#define KF_CK_HEADER 24 /* magic 8, version 4, bom 4, size 8 */
#define KF_CK_LAYER_COUNTERS 44 /* weights 3 x 8, has_inverse 4, inverse_count 8, pi 4, damping 4 */

/* ---- a byte cursor that writes (or only counts when buf is NULL) ---------------------------- */

typedef struct wcur {
    unsigned char *buf;
    size_t pos;
} wcur;

static void put(wcur *w, const void *p, size_t n)
{
    if (w->buf && n) {
        memcpy(w->buf + w->pos, p, n);
    }
    w->pos += n;
}
static void put_u32(wcur *w, uint32_t v) { put(w, &v, sizeof v); }
static void put_u64(wcur *w, uint64_t v) { put(w, &v, sizeof v); }
static void put_i32(wcur *w, int32_t v) { put(w, &v, sizeof v); }
static void put_f32(wcur *w, float v) { put(w, &v, sizeof v); }
static void put_f64(wcur *w, double v) { put(w, &v, sizeof v); }

typedef struct rcur {
    const unsigned char *buf;
    size_t pos, size;
    int bad;
} rcur;

static void get(rcur *r, void *p, size_t n)
{
    if (r->bad || n > r->size - r->pos) {
        r->bad = 1;
        memset(p, 0, n);
        return;
    }
    memcpy(p, r->buf + r->pos, n);
    r->pos += n;
}
static uint32_t get_u32(rcur *r) { uint32_t v; get(r, &v, sizeof v); return v; }
static uint64_t get_u64(rcur *r) { uint64_t v; get(r, &v, sizeof v); return v; }
static int32_t get_i32(rcur *r) { int32_t v; get(r, &v, sizeof v); return v; }
static float get_f32(rcur *r) { float v; get(r, &v, sizeof v); return v; }
static double get_f64(rcur *r) { double v; get(r, &v, sizeof v); return v; }

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Whether `count` floats stored at p (possibly unaligned) are all finite. */
static int finite_floats(const unsigned char *p, size_t count)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, p + i * sizeof bits, sizeof bits);
        bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
    }
    return !bad;
}

/* 1 if the n x n floats at p (possibly unaligned) are exactly symmetric, bit for bit. */
static int symmetric_floats(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (memcmp(p + (i * n + j) * sizeof(float), p + (j * n + i) * sizeof(float),
                       sizeof(float)) != 0) {
                return 0;
            }
        }
    }
    return 1;
}

/* The floats a layer of these settings stores (the sum over layer_buffers), overflow-checked, so
 * that a checkpoint's claims can be checked against its size before anything is allocated. */
static int layer_floats(const kf_layer_params *p, size_t *floats)
{
    size_t da = p->in + (size_t)p->bias, mat, sq_a, sq_g, total;
    if (!kf__mul_size(p->out, da, &mat) || !kf__mul_size(da, da, &sq_a) ||
        !kf__mul_size(p->out, p->out, &sq_g) || mat > SIZE_MAX / 16 || sq_a > SIZE_MAX / 16 ||
        sq_g > SIZE_MAX / 16) {
        return 0;
    }
    total = mat;
    if (p->algorithm == KF_ALGO_ADAM) {
        total += mat;
    }
    if (kf__algo_precond(p->algorithm)) {
        total += 2 * sq_a + (kf__algo_eigen(p->algorithm) ? da : 0);
    }
    if (kf__algo_uses_g(p->algorithm)) {
        total += 2 * sq_g + (kf__algo_eigen(p->algorithm) ? p->out : 0);
    }
    if (p->algorithm == KF_ALGO_EKFAC) {
        total += mat;
    }
    *floats = total;
    return 1;
}

/* ---- what a layer stores --------------------------------------------------------------------- */

/* The buffers of a layer in checkpoint order, with their sizes in floats; returns how many.
 * sym[b] is the dimension of a moving-average factor, 0 for the other buffers: the optimizer keeps
 * only a factor's lower triangle current, so a factor is written symmetric from it. */
static size_t layer_buffers(const kf_layer *l, float **ptrs, size_t *counts, size_t *sym)
{
    size_t k = 0, out = l->p.out, da = l->dim_a;
#define KF_BUF(ptr, n, s)   \
    do {                    \
        ptrs[k] = (ptr);    \
        counts[k] = (n);    \
        sym[k] = (s);       \
        k++;                \
    } while (0)
    KF_BUF(l->mom, out * da, 0);
    if (l->p.algorithm == KF_ALGO_ADAM) {
        KF_BUF(l->adam_v, out * da, 0);
    }
    if (l->precond) {
        KF_BUF(l->a.f, da * da, da);
        KF_BUF(l->a.inv, da * da, 0);
        if (l->eigen) {
            KF_BUF(l->a.eig, da, 0);
        }
    }
    if (l->uses_g) {
        KF_BUF(l->g.f, out * out, out);
        KF_BUF(l->g.inv, out * out, 0);
        if (l->eigen) {
            KF_BUF(l->g.eig, out, 0);
        }
    }
    if (l->p.algorithm == KF_ALGO_EKFAC) {
        KF_BUF(l->s, out * da, 0);
    }
#undef KF_BUF
    return k;
}

/* An n x n matrix written symmetric from its lower triangle. */
static void put_symmetric(wcur *w, const float *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            put_f32(w, j <= i ? m[i * n + j] : m[j * n + i]);
        }
    }
}

static void write_params(wcur *w, const kf_optimizer_params *p)
{
    put_i32(w, (int32_t)p->algorithm);
    put_f32(w, p->learning_rate);
    put_f32(w, p->momentum);
    put_f32(w, p->weight_decay);
    put_f32(w, p->damping);
    put_f32(w, p->factor_decay);
    put_u32(w, p->stats_interval);
    put_u32(w, p->inverse_interval);
    put_i32(w, (int32_t)p->inverse_precision);
    put_f32(w, p->kl_clip);
    put_f32(w, p->adam_beta1);
    put_f32(w, p->adam_beta2);
    put_f32(w, p->adam_epsilon);
    put_u32(w, p->stats_subsample);
}

static void read_params(rcur *r, kf_optimizer_params *p)
{
    memset(p, 0, sizeof *p);
    p->algorithm = (kf_algorithm)get_i32(r);
    p->learning_rate = get_f32(r);
    p->momentum = get_f32(r);
    p->weight_decay = get_f32(r);
    p->damping = get_f32(r);
    p->factor_decay = get_f32(r);
    p->stats_interval = get_u32(r);
    p->inverse_interval = get_u32(r);
    p->inverse_precision = (kf_precision)get_i32(r);
    p->kl_clip = get_f32(r);
    p->adam_beta1 = get_f32(r);
    p->adam_beta2 = get_f32(r);
    p->adam_epsilon = get_f32(r);
    p->stats_subsample = get_u32(r);
}

static void write_layer_shape(wcur *w, const kf_layer_params *p)
{
    put_u64(w, p->out);
    put_u64(w, p->in);
    put_i32(w, p->bias);
    put_u64(w, p->shared);
    put_i32(w, (int32_t)p->shared_mode);
    put_u64(w, p->loss_terms_per_example);
    put_i32(w, (int32_t)p->algorithm);
    put_u64(w, p->uses);
}

static void read_layer_shape(rcur *r, kf_layer_params *p)
{
    memset(p, 0, sizeof *p);
    p->out = (size_t)get_u64(r);
    p->in = (size_t)get_u64(r);
    p->bias = get_i32(r);
    p->shared = (size_t)get_u64(r);
    p->shared_mode = (kf_shared_mode)get_i32(r);
    p->loss_terms_per_example = (size_t)get_u64(r);
    p->algorithm = (kf_algorithm)get_i32(r);
    p->uses = (size_t)get_u64(r);
}

static void write_all(wcur *w, const kf_optimizer *opt)
{
    put(w, KF_CK_MAGIC, 8);
    put_u32(w, KF_CK_VERSION);
    put_u32(w, KF_CK_BOM);
    put_u64(w, 0); /* total size, patched by the caller */
    write_params(w, &opt->p);
    put_u64(w, opt->step);
    put_u32(w, (uint32_t)opt->force_refresh);
    put_u64(w, opt->n_layers);
    for (size_t i = 0; i < opt->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        float *ptrs[12];
        size_t counts[12], sym[12], nb = layer_buffers(l, ptrs, counts, sym);
        write_layer_shape(w, &l->p);
        put_f64(w, l->a.weight);
        put_f64(w, l->g.weight);
        put_f64(w, l->s_weight);
        put_u32(w, (uint32_t)l->has_inverse);
        put_u64(w, l->inverse_count);
        put_f32(w, l->pi);
        put_f32(w, l->damping_used);
        for (size_t b = 0; b < nb; b++) {
            if (sym[b]) {
                put_symmetric(w, ptrs[b], sym[b]);
            } else {
                put(w, ptrs[b], counts[b] * sizeof(float));
            }
        }
    }
}

kf_status kf_optimizer_checkpoint_size(const kf_optimizer *opt, size_t *bytes)
{
    wcur w = {NULL, 0};
    if (!opt || !bytes) {
        return KF_ERR_NULL_POINTER;
    }
    write_all(&w, opt);
    *bytes = w.pos + sizeof(uint64_t);
    return KF_OK;
}

kf_status kf_optimizer_save(const kf_optimizer *opt, void *buf, size_t capacity, size_t *written)
{
    static const char fn[] = "kf_optimizer_save";
    kf_optimizer *m = (kf_optimizer *)opt;
    size_t need;
    wcur w;
    uint64_t total, sum;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!buf || !written) {
        return kf__fail(&m->err, KF_ERR_NULL_POINTER, "%s: %s is NULL", fn, !buf ? "buf" : "written");
    }
    kf_optimizer_checkpoint_size(opt, &need);
    if (capacity < need) {
        return kf__fail(&m->err, KF_ERR_SHAPE, "%s: capacity (%zu) < the checkpoint's size (%zu)",
                        fn, capacity, need);
    }
    w.buf = (unsigned char *)buf;
    w.pos = 0;
    write_all(&w, opt);
    total = (uint64_t)need;
    memcpy(w.buf + 16, &total, sizeof total);
    sum = fnv1a(w.buf, w.pos);
    put_u64(&w, sum);
    *written = w.pos;
    kf__clear(&m->err);
    return KF_OK;
}

/* ---- reading --------------------------------------------------------------------------------- */

/* Checks the frame: size, magic, version, byte order, stated size and checksum. */
static kf_status check_frame(kf_errbuf *e, const unsigned char *b, size_t size)
{
    uint32_t version, bom;
    uint64_t total, sum;
    if (size < KF_CK_HEADER + sizeof(uint64_t)) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint truncated: %zu bytes", size);
    }
    if (memcmp(b, KF_CK_MAGIC, 8) != 0) {
        return kf__fail(e, KF_ERR_FORMAT, "not a Kronfac checkpoint (bad magic)");
    }
    memcpy(&version, b + 8, 4);
    memcpy(&bom, b + 12, 4);
    memcpy(&total, b + 16, 8);
    if (bom != KF_CK_BOM) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint written with another byte order");
    }
    if (version != KF_CK_VERSION) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint format version %u, this library reads %u",
                        (unsigned)version, KF_CK_VERSION);
    }
    if (total != (uint64_t)size) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint truncated or padded: %zu bytes, header says "
                        "%llu", size, (unsigned long long)total);
    }
    memcpy(&sum, b + size - 8, 8);
    if (sum != fnv1a(b, size - 8)) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint checksum mismatch (corrupt)");
    }
    return KF_OK;
}

/* Reads parameters and the layer count after a checked frame. */
static kf_status read_head(kf_errbuf *e, rcur *r, kf_optimizer_params *p, uint64_t *step,
                           uint32_t *refresh, uint64_t *n_layers)
{
    kf_status s;
    r->pos = KF_CK_HEADER;
    read_params(r, p);
    *step = get_u64(r);
    *refresh = get_u32(r);
    *n_layers = get_u64(r);
    if (r->bad) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint truncated in its header");
    }
    if ((s = kf__validate_params(e, p)) != KF_OK) {
        return kf__prefix(e, KF_ERR_FORMAT, "checkpoint parameters invalid");
    }
    if (*refresh > 1 || *n_layers > 1000000) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint header values out of range");
    }
    return KF_OK;
}

static int same_layer(const kf_layer_params *a, const kf_layer_params *b)
{
    return a->out == b->out && a->in == b->in && a->bias == b->bias && a->shared == b->shared &&
           a->shared_mode == b->shared_mode &&
           a->loss_terms_per_example == b->loss_terms_per_example && a->algorithm == b->algorithm &&
           a->uses == b->uses;
}

/* Walks every layer of the checkpoint against opt's layers. With apply = 0 it only validates;
 * with apply = 1 it copies the state in (after a successful validation pass). */
static kf_status walk_layers(kf_errbuf *e, rcur *r, kf_optimizer *opt, uint64_t n_layers,
                             int apply)
{
    for (uint64_t i = 0; i < n_layers; i++) {
        kf_layer_params lp;
        kf_layer *l = &opt->layers[i];
        float *ptrs[12];
        size_t counts[12], sym[12], nb;
        double wa, wg, ws;
        uint32_t has_inv;
        uint64_t inv_count;
        float pi, damp;
        read_layer_shape(r, &lp);
        wa = get_f64(r);
        wg = get_f64(r);
        ws = get_f64(r);
        has_inv = get_u32(r);
        inv_count = get_u64(r);
        pi = get_f32(r);
        damp = get_f32(r);
        if (r->bad) {
            return kf__fail(e, KF_ERR_FORMAT, "checkpoint truncated in layer %llu",
                            (unsigned long long)i);
        }
        if (!same_layer(&lp, &l->p)) {
            return kf__fail(e, KF_ERR_FORMAT, "checkpoint layer %llu is %zu x %zu (bias %d, shared "
                            "%zu, %s) but this optimizer's is %zu x %zu (bias %d, shared %zu, %s)",
                            (unsigned long long)i, lp.out, lp.in, lp.bias, lp.shared,
                            kf_algorithm_name(lp.algorithm) ? kf_algorithm_name(lp.algorithm) : "?",
                            l->p.out, l->p.in, l->p.bias, l->p.shared,
                            kf_algorithm_name(l->p.algorithm));
        }
        if (!(wa >= 0.0 && wg >= 0.0 && ws >= 0.0) || !isfinite(wa) || !isfinite(wg) ||
            !isfinite(ws) || has_inv > 1 || !(pi > 0.0f) || !isfinite(pi) || !(damp >= 0.0f) ||
            !isfinite(damp)) {
            return kf__fail(e, KF_ERR_FORMAT, "checkpoint layer %llu has invalid counters",
                            (unsigned long long)i);
        }
        nb = layer_buffers(l, ptrs, counts, sym);
        for (size_t b = 0; b < nb; b++) {
            size_t bytes = counts[b] * sizeof(float);
            if (bytes > r->size - r->pos) {
                return kf__fail(e, KF_ERR_FORMAT, "checkpoint truncated in layer %llu",
                                (unsigned long long)i);
            }
            if (apply) {
                memcpy(ptrs[b], r->buf + r->pos, bytes);
            } else if (!finite_floats(r->buf + r->pos, counts[b])) {
                /* A state the library never produces: it would turn the next step into NaN. */
                return kf__fail(e, KF_ERR_FORMAT, "checkpoint layer %llu holds NaN or Inf",
                                (unsigned long long)i);
            } else if (sym[b] && !symmetric_floats(r->buf + r->pos, sym[b])) {
                /* Nor this: factors are written symmetric, and the optimizer reads one triangle. */
                return kf__fail(e, KF_ERR_FORMAT, "checkpoint layer %llu holds an asymmetric factor",
                                (unsigned long long)i);
            }
            r->pos += bytes;
        }
        if (apply) {
            l->a.weight = wa;
            l->g.weight = wg;
            l->s_weight = ws;
            l->has_inverse = (int)has_inv;
            l->inverse_count = inv_count;
            l->pi = pi;
            l->damping_used = damp;
            /* Observations belong to the step they were made for, which the checkpoint ends. */
            l->a.has_pending = l->g.has_pending = 0;
            l->xobs_rows = l->gobs_rows = 0;
        }
    }
    if (r->pos != r->size - sizeof(uint64_t)) {
        return kf__fail(e, KF_ERR_FORMAT, "checkpoint has %zu unexpected trailing bytes",
                        r->size - sizeof(uint64_t) - r->pos);
    }
    return KF_OK;
}

kf_status kf_optimizer_restore(kf_optimizer *opt, const void *buf, size_t size)
{
    static const char fn[] = "kf_optimizer_restore";
    kf_optimizer_params p;
    uint64_t step, n_layers;
    uint32_t refresh;
    rcur r;
    kf_status s;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!buf) {
        return kf__fail(&opt->err, KF_ERR_NULL_POINTER, "%s: buf is NULL", fn);
    }
    r.buf = (const unsigned char *)buf;
    r.size = size;
    r.pos = 0;
    r.bad = 0;
    if ((s = check_frame(&opt->err, r.buf, size)) != KF_OK ||
        (s = read_head(&opt->err, &r, &p, &step, &refresh, &n_layers)) != KF_OK) {
        return kf__prefix(&opt->err, s, fn);
    }
    if (n_layers != opt->n_layers) {
        return kf__fail(&opt->err, KF_ERR_FORMAT, "%s: the checkpoint has %llu layers, this "
                        "optimizer %zu", fn, (unsigned long long)n_layers, opt->n_layers);
    }
    for (size_t i = 0; i < opt->n_layers; i++) {
        if (kf__algo_uses_g(opt->layers[i].p.algorithm) && !(p.damping > 0.0f)) {
            return kf__fail(&opt->err, KF_ERR_FORMAT, "%s: checkpoint damping is 0 but layer %zu "
                            "uses K-FAC", fn, i);
        }
    }
    {
        size_t body = r.pos;
        if ((s = walk_layers(&opt->err, &r, opt, n_layers, 0)) != KF_OK) {
            return kf__prefix(&opt->err, s, fn);
        }
        r.pos = body;
        walk_layers(&opt->err, &r, opt, n_layers, 1);
    }
    opt->p = p;
    opt->step = step;
    opt->force_refresh = (int)refresh;
    kf__clear(&opt->err);
    return KF_OK;
}

kf_status kf_optimizer_create_from_checkpoint(const void *buf, size_t size,
                                              const kf_allocator *alloc, kf_optimizer **out)
{
    kf_optimizer_params p;
    uint64_t step, n_layers;
    uint32_t refresh;
    kf_optimizer *opt = NULL;
    rcur r;
    kf_status s;
    if (!buf || !out) {
        return KF_ERR_NULL_POINTER;
    }
    r.buf = (const unsigned char *)buf;
    r.size = size;
    r.pos = 0;
    r.bad = 0;
    if ((s = check_frame(NULL, r.buf, size)) != KF_OK ||
        (s = read_head(NULL, &r, &p, &step, &refresh, &n_layers)) != KF_OK) {
        return s;
    }
    {
        /* Every layer's claimed shape must fit the bytes the checkpoint has, before a single
         * layer is allocated: a small hostile file must not request gigabytes. */
        size_t body = r.pos;
        for (uint64_t i = 0; i < n_layers; i++) {
            kf_layer_params lp;
            size_t floats = 0, bytes;
            read_layer_shape(&r, &lp);
            if (r.bad || lp.out == 0 || lp.in == 0 || lp.shared == 0 || lp.out > 32000 ||
                lp.in > 31999 || (lp.bias != 0 && lp.bias != 1) || lp.shared > ((size_t)1 << 32) ||
                (lp.shared_mode != KF_SHARED_EXPAND && lp.shared_mode != KF_SHARED_REDUCE) ||
                lp.loss_terms_per_example == 0 || lp.loss_terms_per_example > ((size_t)1 << 32) ||
                lp.uses == 0 || lp.uses > 4096 ||
                (lp.uses > 1 && (lp.shared_mode != KF_SHARED_EXPAND || lp.algorithm == KF_ALGO_EKFAC)) ||
                kf_algorithm_name(lp.algorithm) == NULL || lp.algorithm == KF_ALGO_DEFAULT ||
                !layer_floats(&lp, &floats) || floats > SIZE_MAX / sizeof(float) - 64) {
                return KF_ERR_FORMAT;
            }
            bytes = floats * sizeof(float) + KF_CK_LAYER_COUNTERS;
            if (bytes > r.size - r.pos) {
                return KF_ERR_FORMAT;
            }
            r.pos += bytes;
        }
        r.pos = body;
    }
    if ((s = kf_optimizer_create(&p, alloc, &opt)) != KF_OK) {
        return s;
    }
    for (uint64_t i = 0; i < n_layers; i++) {
        kf_layer_params lp;
        size_t idx, floats = 0;
        read_layer_shape(&r, &lp);
        if ((s = kf__optimizer_add_layer(opt, &lp, &idx)) != KF_OK) {
            kf_optimizer_destroy(opt);
            return s;
        }
        layer_floats(&lp, &floats);
        r.pos += floats * sizeof(float) + KF_CK_LAYER_COUNTERS;
    }
    if ((s = kf_optimizer_restore(opt, buf, size)) != KF_OK) {
        kf_optimizer_destroy(opt);
        return s;
    }
    *out = opt;
    return KF_OK;
}

/* ---- files ----------------------------------------------------------------------------------- */

kf_status kf_optimizer_save_file(const kf_optimizer *opt, const char *path)
{
    static const char fn[] = "kf_optimizer_save_file";
    kf_optimizer *m = (kf_optimizer *)opt;
    size_t need, written = 0, plen;
    unsigned char *buf;
    char *tmp;
    FILE *f;
    int ok;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!path) {
        return kf__fail(&m->err, KF_ERR_NULL_POINTER, "%s: path is NULL", fn);
    }
    plen = strlen(path);
    kf_optimizer_checkpoint_size(opt, &need);
    buf = (unsigned char *)kf__alloc(&m->alloc, need);
    tmp = (char *)kf__alloc(&m->alloc, plen + 5);
    if (!buf || !tmp) {
        kf__free(&m->alloc, buf, need);
        kf__free(&m->alloc, tmp, plen + 5);
        return kf__fail(&m->err, KF_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu bytes", fn, need);
    }
    kf_optimizer_save(opt, buf, need, &written);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    /* Write aside, flush to the disk, then rename over the old file: a crash at any moment leaves
     * the old or the new checkpoint, never a torn one. */
    f = fopen(tmp, "wb");
    ok = f != NULL;
    if (ok) {
        ok = fwrite(buf, 1, written, f) == written;
        ok = fflush(f) == 0 && ok;
#if defined(__unix__) || defined(__APPLE__)
        ok = ok && fsync(fileno(f)) == 0;
#endif
        ok = fclose(f) == 0 && ok;
    }
    ok = ok && rename(tmp, path) == 0;
    if (!ok) {
        remove(tmp);
    }
    kf__free(&m->alloc, buf, need);
    kf__free(&m->alloc, tmp, plen + 5);
    if (!ok) {
        return kf__fail(&m->err, KF_ERR_IO, "%s: could not write '%s'", fn, path);
    }
    kf__clear(&m->err);
    return KF_OK;
}

/* Reads a whole file through the allocator; *size receives its length. Reads to the end in
 * growing chunks rather than trusting ftell, which reports nonsense for a directory or a pipe. */
static kf_status read_file(kf_errbuf *e, const kf_allocator *a, const char *path,
                           unsigned char **out, size_t *size, size_t *capacity)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, len = 0;
    if (!f) {
        return kf__fail(e, KF_ERR_IO, "could not open '%s'", path);
    }
    for (;;) {
        size_t got;
        if (len == cap) {
            size_t ncap = cap ? 2 * cap : 65536;
            unsigned char *nb;
            if (ncap < cap || ncap > ((size_t)1 << 40)) {
                kf__free(a, buf, cap);
                fclose(f);
                return kf__fail(e, KF_ERR_IO, "'%s' is too large for a checkpoint", path);
            }
            if (!(nb = (unsigned char *)kf__alloc(a, ncap))) {
                kf__free(a, buf, cap);
                fclose(f);
                return kf__fail(e, KF_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
            }
            if (len) {
                memcpy(nb, buf, len);
            }
            kf__free(a, buf, cap);
            buf = nb;
            cap = ncap;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            break;
        }
    }
    if (ferror(f)) {
        kf__free(a, buf, cap);
        fclose(f);
        return kf__fail(e, KF_ERR_IO, "could not read '%s'", path);
    }
    fclose(f);
    *out = buf;
    *size = len;
    *capacity = cap; /* what the caller frees */
    return KF_OK;
}

kf_status kf_optimizer_restore_file(kf_optimizer *opt, const char *path)
{
    static const char fn[] = "kf_optimizer_restore_file";
    unsigned char *buf = NULL;
    size_t size = 0, cap = 0;
    kf_status s;
    if (!opt) {
        return KF_ERR_NULL_POINTER;
    }
    if (!path) {
        return kf__fail(&opt->err, KF_ERR_NULL_POINTER, "%s: path is NULL", fn);
    }
    if ((s = read_file(&opt->err, &opt->alloc, path, &buf, &size, &cap)) != KF_OK) {
        return kf__prefix(&opt->err, s, fn);
    }
    s = kf_optimizer_restore(opt, buf, size);
    kf__free(&opt->alloc, buf, cap);
    return s;
}

kf_status kf_optimizer_create_from_file(const char *path, const kf_allocator *alloc,
                                        kf_optimizer **out)
{
    unsigned char *buf = NULL;
    size_t size = 0, cap = 0;
    kf_status s;
    if (!path || !out) {
        return KF_ERR_NULL_POINTER;
    }
    if (alloc && (!alloc->alloc || !alloc->free)) {
        return KF_ERR_INVALID_ARGUMENT;
    }
    if ((s = read_file(NULL, alloc, path, &buf, &size, &cap)) != KF_OK) {
        return s;
    }
    s = kf_optimizer_create_from_checkpoint(buf, size, alloc, out);
    kf__free(alloc, buf, cap);
    return s;
}
