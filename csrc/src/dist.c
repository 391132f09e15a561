/* The distributed step over MPI (kronfac_dist.h): packing, the all-reduce, the inverse owners, the
 * exchange of inverses, agreement on errors, checkpoints through rank 0.
 *
 * SwiftPM compiles every file under csrc/src, and the core must stay MPI-free: without
 * KRONFAC_WITH_MPI (set only for CMake's kronfac_dist target) this file is empty. */
#if defined(KRONFAC_WITH_MPI)

#include "kronfac_dist.h"
#include "kf_optimizer_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The agreement vector all-reduced at the start of every collective call, with one reduction per
 * entry (an MPI_Op of our own, so that maxima, minima and the total batch travel in one message
 * of fixed size whatever the number of ranks). Hashes are kept in 62 bits so they stay positive
 * in a long long. */
enum {
    AG_FAIL,        /* max of rank * 64 + (-status) over failing ranks, -1 if none */
    AG_LAYERS_MAX, AG_LAYERS_MIN,
    AG_SHAPE_MAX, AG_SHAPE_MIN,   /* hash of the registered layers (and the mode) */
    AG_STATE_MAX, AG_STATE_MIN,   /* hash of the step count, hyperparameters and observations */
    AG_N_SUM,                     /* the global batch: sum of n_local */
    AG_COUNT
};

static const int ag_kind[AG_COUNT] = {
    1, 1, -1, 1, -1, 1, -1, 0 /* 1: max, -1: min, 0: sum */
};

/* The vector travels as one element of a contiguous type, so that MPI never hands the operation
 * a piece of it: *len counts whole vectors. */
static void ag_reduce(void *in, void *inout, int *len, MPI_Datatype *type)
{
    const long long *a = (const long long *)in;
    long long *b = (long long *)inout;
    (void)type;
    for (int i = 0; i < *len * AG_COUNT; i++) {
        int k = ag_kind[i % AG_COUNT];
        if (k > 0) {
            b[i] = a[i] > b[i] ? a[i] : b[i];
        } else if (k < 0) {
            b[i] = a[i] < b[i] ? a[i] : b[i];
        } else {
            b[i] += a[i];
        }
    }
}

struct kf_dist {
    kf_allocator alloc;
    kf_errbuf err;
    kf_optimizer *opt;
    MPI_Comm comm;
    MPI_Op op;                 /* ag_reduce */
    MPI_Datatype ag_type;      /* AG_COUNT long longs */
    int rank, size;
    kf_dist_params p;
    size_t n_layers;
    int *owner;
    double *cost;
    size_t *grad_off;          /* where each layer's gradient sits in red */
    size_t grad_floats;        /* the gradients' total; the factors follow */
    float *red;                /* the all-reduced buffer: gradients, then this step's factors */
    size_t red_cap;
    float *gat;                /* the gathered inverses or directions; EKFAC's diagonals */
    size_t gat_cap;
    int *counts, *displs;      /* of the Allgatherv, per rank */
    kf_layer_tensors *tensors; /* the step's layers: the caller's parameters, reduced gradients */
    int exchanged;             /* the hook's agreement has run in this step */
    float w;                   /* this step's weight of the rank: n_local / sum of n_local */
    void *block;
    size_t block_bytes;
    kf_dist_stats stats;
};

/* ---- small helpers --------------------------------------------------------------------------- */

static size_t tri(size_t n)
{
    return n * (n + 1) / 2;
}

/* Floats a layer's refresh sends: upper triangles of the damped inverses (symmetric), or full
 * eigenvector matrices plus eigenvalues. */
static size_t inverse_payload(const kf_layer *l)
{
    size_t da = l->dim_a, out = l->p.out;
    if (!l->precond) {
        return 0;
    }
    if (l->eigen) {
        return da * da + da + out * out + out;
    }
    return tri(da) + (l->uses_g ? tri(out) : 0);
}

static double layer_cost(const kf_layer *l)
{
    double da = (double)l->dim_a, out = (double)l->p.out;
    if (!l->precond) {
        return 0.0;
    }
    return da * da * da + (l->uses_g ? out * out * out : 0.0);
}

static uint64_t fnv(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xffu;
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t fnv_float(uint64_t h, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return fnv(h, u);
}

static uint64_t fnv_double(uint64_t h, double f)
{
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    return fnv(h, u);
}

static long long hash_ll(uint64_t h)
{
    return (long long)(h >> 2);
}

static uint64_t shape_hash(const kf_optimizer *opt, int mode)
{
    uint64_t h = 14695981039346656037ULL;
    h = fnv(h, (uint64_t)opt->n_layers);
    h = fnv(h, (uint64_t)mode);
    for (size_t i = 0; i < opt->n_layers; i++) {
        const kf_layer_params *p = &opt->layers[i].p;
        h = fnv(h, p->out);
        h = fnv(h, p->in);
        h = fnv(h, (uint64_t)p->bias);
        h = fnv(h, p->shared);
        h = fnv(h, (uint64_t)p->shared_mode);
        h = fnv(h, p->loss_terms_per_example);
        h = fnv(h, (uint64_t)(p->algorithm + 16));
        h = fnv(h, p->uses);
    }
    return h;
}

/* Everything that decides what a step does besides the data: if it differs, the ranks would take
 * different steps (or different collectives). */
static uint64_t state_hash(const kf_optimizer *opt)
{
    const kf_optimizer_params *p = &opt->p;
    uint64_t h = 1469598103934665603ULL;
    h = fnv(h, opt->step);
    h = fnv(h, (uint64_t)opt->force_refresh);
    h = fnv(h, (uint64_t)(p->algorithm + 16));
    h = fnv_float(h, p->learning_rate);
    h = fnv_float(h, p->momentum);
    h = fnv_float(h, p->weight_decay);
    h = fnv_float(h, p->damping);
    h = fnv_float(h, p->factor_decay);
    h = fnv(h, p->stats_interval);
    h = fnv(h, p->inverse_interval);
    h = fnv(h, (uint64_t)p->inverse_precision);
    h = fnv_float(h, p->kl_clip);
    h = fnv_float(h, p->adam_beta1);
    h = fnv_float(h, p->adam_beta2);
    h = fnv_float(h, p->adam_epsilon);
    h = fnv(h, p->stats_subsample);
    for (size_t i = 0; i < opt->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        h = fnv(h, l->a.has_pending);
        h = fnv(h, l->g.has_pending);
        h = fnv(h, (uint64_t)l->has_inverse);
        h = fnv(h, l->inverse_count);
        h = fnv_double(h, l->a.weight);
        h = fnv_double(h, l->g.weight);
        if (l->p.algorithm == KF_ALGO_EKFAC) {
            /* Whether the step has activation/gradient pairs for the diagonal (its all-reduce). */
            h = fnv(h, (uint64_t)(l->xobs_rows > 0 && l->gobs_rows == l->xobs_rows));
        }
    }
    return h;
}

static void fill_agreement(long long *v, int rank, kf_status s, long long layers, long long shape,
                           long long state, long long n)
{
    v[AG_FAIL] = s == KF_OK ? -1 : (long long)rank * 64 + (long long)(-(int)s);
    v[AG_LAYERS_MAX] = v[AG_LAYERS_MIN] = layers;
    v[AG_SHAPE_MAX] = v[AG_SHAPE_MIN] = shape;
    v[AG_STATE_MAX] = v[AG_STATE_MIN] = state;
    v[AG_N_SUM] = n;
}

static void timed_start(double *t)
{
    *t = MPI_Wtime();
}

static void timed_end(kf_dist *d, double t)
{
    if (d) {
        d->stats.comm_seconds += MPI_Wtime() - t;
    }
}

/* The first rank whose value at `index` of its own vector differs from rank 0's (only called when
 * the all-reduced maximum and minimum differ, on every rank: two more collectives, on the failure
 * path only). */
static int first_differing_rank(MPI_Comm comm, int rank, const long long *mine, int index)
{
    long long root[AG_COUNT];
    int me, first = INT_MAX;
    memcpy(root, mine, sizeof root);
    MPI_Bcast(root, AG_COUNT, MPI_LONG_LONG, 0, comm);
    me = mine[index] != root[index] ? rank : INT_MAX;
    MPI_Allreduce(&me, &first, 1, MPI_INT, MPI_MIN, comm);
    return first;
}

/* Turns the all-reduced agreement into one status, the same on every rank (the failing rank keeps
 * its own status and message). Collective on the mismatch paths. */
static kf_status judge(kf_errbuf *e, MPI_Comm comm, int rank, const char *fn, kf_status local,
                       const long long *mine, const long long *all, int check_state)
{
    if (all[AG_FAIL] >= 0) {
        int who = (int)(all[AG_FAIL] / 64);
        kf_status s = (kf_status)(-(int)(all[AG_FAIL] % 64));
        if (local != KF_OK) {
            return local;
        }
        return kf__fail(e, s, "%s: rank %d failed (%s); its last error says why", fn, who,
                        kf_status_string(s));
    }
    if (all[AG_LAYERS_MAX] != all[AG_LAYERS_MIN]) {
        int who = first_differing_rank(comm, rank, mine, AG_LAYERS_MAX);
        return kf__fail(e, KF_ERR_SHAPE, "%s: the ranks registered different numbers of layers "
                        "(%lld to %lld; rank %d differs from rank 0): every rank must register the "
                        "same layers in the same order", fn, all[AG_LAYERS_MIN],
                        all[AG_LAYERS_MAX], who);
    }
    if (all[AG_SHAPE_MAX] != all[AG_SHAPE_MIN]) {
        int who = first_differing_rank(comm, rank, mine, AG_SHAPE_MAX);
        return kf__fail(e, KF_ERR_SHAPE, "%s: the layers on rank %d differ from rank 0's: every "
                        "rank must register the same layers (shapes, bias, shared axis, algorithm, "
                        "uses) in the same order", fn, who);
    }
    if (check_state && all[AG_STATE_MAX] != all[AG_STATE_MIN]) {
        int who = first_differing_rank(comm, rank, mine, AG_STATE_MAX);
        return kf__fail(e, KF_ERR_STATE, "%s: the optimizer on rank %d is out of step with rank "
                        "0's (step count, hyperparameters or this step's observations differ)",
                        fn, who);
    }
    return KF_OK;
}

/* ---- the assignment -------------------------------------------------------------------------- */

typedef struct job {
    double cost;
    size_t index;
} job;

static int job_cmp(const void *x, const void *y)
{
    const job *a = (const job *)x, *b = (const job *)y;
    if (a->cost != b->cost) {
        return a->cost > b->cost ? -1 : 1;
    }
    return a->index < b->index ? -1 : (a->index > b->index);
}

/* Greedy LPT into owner; loads (ranks doubles) and jobs (n) are scratch. */
static double assign_lpt(size_t n, const double *cost, int ranks, int *owner, double *load,
                         job *jobs)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        jobs[i].cost = cost[i];
        jobs[i].index = i;
    }
    if (n > 1) {
        qsort(jobs, n, sizeof *jobs, job_cmp);
    }
    for (int r = 0; r < ranks; r++) {
        load[r] = 0.0;
    }
    for (size_t k = 0; k < n; k++) {
        int best = 0;
        for (int r = 1; r < ranks; r++) {
            if (load[r] < load[best]) {
                best = r;
            }
        }
        owner[jobs[k].index] = best;
        load[best] += jobs[k].cost;
    }
    for (int r = 0; r < ranks; r++) {
        worst = load[r] > worst ? load[r] : worst;
    }
    return worst;
}

kf_status kf_dist_assign(size_t n, const double *cost, int ranks, int *owner, double *max_load)
{
    double *load;
    job *jobs;
    double worst;
    if (ranks < 1) {
        return KF_ERR_INVALID_ARGUMENT;
    }
    if (n > 0 && (!cost || !owner)) {
        return KF_ERR_NULL_POINTER;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(cost[i] >= 0.0) || !isfinite(cost[i])) {
            return KF_ERR_INVALID_ARGUMENT;
        }
    }
    if (n > ((size_t)-1) / sizeof(job) / 2) {
        return KF_ERR_OUT_OF_MEMORY;
    }
    load = (double *)malloc((size_t)ranks * sizeof *load);
    jobs = (job *)malloc((n ? n : 1) * sizeof *jobs);
    if (!load || !jobs) {
        free(load);
        free(jobs);
        return KF_ERR_OUT_OF_MEMORY;
    }
    worst = assign_lpt(n, cost, ranks, owner, load, jobs);
    if (max_load) {
        *max_load = worst;
    }
    free(load);
    free(jobs);
    return KF_OK;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

kf_status kf_dist_params_init(kf_dist_params *p)
{
    if (!p) {
        return KF_ERR_NULL_POINTER;
    }
    memset(p, 0, sizeof *p);
    p->mode = KF_DIST_BROADCAST_INVERSES;
    return KF_OK;
}

/* Plans the handle's single block; carves it when d->block is set. */
static size_t dist_block(kf_dist *d, int carve)
{
    unsigned char *cur = (unsigned char *)d->block;
    size_t n = d->n_layers, total = 0;
#define KF_DPIECE(ptr, type, bytes)                          \
    do {                                                    \
        if (carve) {                                        \
            (ptr) = (type *)kf__carve(&cur, (bytes));       \
        }                                                   \
        total += KF_ALIGN_UP(bytes);                        \
    } while (0)
    KF_DPIECE(d->owner, int, n * sizeof(int));
    KF_DPIECE(d->cost, double, n * sizeof(double));
    KF_DPIECE(d->grad_off, size_t, n * sizeof(size_t));
    KF_DPIECE(d->tensors, kf_layer_tensors, n * sizeof(kf_layer_tensors));
    KF_DPIECE(d->counts, int, (size_t)d->size * sizeof(int));
    KF_DPIECE(d->displs, int, (size_t)d->size * sizeof(int));
    KF_DPIECE(d->red, float, d->red_cap * sizeof(float));
    KF_DPIECE(d->gat, float, d->gat_cap * sizeof(float));
#undef KF_DPIECE
    return total;
}

/* The local part of kf_dist_create: checks and allocation; the handle is complete but for the
 * communicator on success. */
static kf_status create_local(kf_errbuf *e, kf_optimizer *opt, MPI_Comm comm,
                              const kf_dist_params *p, kf_dist **out, kf_dist **made)
{
    static const char fn[] = "kf_dist_create";
    kf_dist *d;
    kf_dist_params use;
    size_t red = 0, gat = 0, inv = 0, dirs = 0;
    double *load;
    job *jobs;
    int flag = 0;
    *made = NULL;
    MPI_Initialized(&flag);
    if (!flag) {
        return kf__fail(e, KF_ERR_STATE, "%s: MPI is not initialised (call MPI_Init first)", fn);
    }
    if (!opt || !out) {
        return kf__fail(e, KF_ERR_NULL_POINTER, "%s: %s is NULL", fn, !opt ? "opt" : "out");
    }
    kf_dist_params_init(&use);
    if (p) {
        use = *p;
    }
    if (use.mode != KF_DIST_BROADCAST_INVERSES && use.mode != KF_DIST_BROADCAST_DIRECTIONS) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "%s: mode %d is not a kf_dist_mode", fn,
                        (int)use.mode);
    }
    if (opt->n_layers == 0) {
        return kf__fail(e, KF_ERR_STATE, "%s: register the optimizer's layers first", fn);
    }
    for (size_t i = 0; i < opt->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        size_t big = l->dim_a > l->p.out ? l->dim_a : l->p.out;
        if (l->p.algorithm == KF_ALGO_EKFAC && use.mode == KF_DIST_BROADCAST_DIRECTIONS) {
            return kf__fail(e, KF_ERR_UNSUPPORTED, "%s: layer %zu uses EKFAC, which "
                            "KF_DIST_BROADCAST_DIRECTIONS does not support: EKFAC's diagonal "
                            "rotates every rank's own examples into the eigenbases, so every rank "
                            "needs every basis (use KF_DIST_BROADCAST_INVERSES)", fn, i);
        }
        if (l->precond && big > 46340) {
            return kf__fail(e, KF_ERR_UNSUPPORTED, "%s: layer %zu: a %zu x %zu factor exceeds the "
                            "%d elements one MPI message carries", fn, i, big, big, INT_MAX);
        }
        red += l->p.out * l->p.in + (l->p.bias ? l->p.out : 0);
        if (l->precond) {
            red += tri(l->dim_a) + (l->uses_g ? tri(l->p.out) : 0);
            dirs += l->p.out * l->dim_a;
        }
        inv += inverse_payload(l);
    }
    /* Inverses mode gathers inverses on refresh steps (and EKFAC's diagonals, out x dim_a per
     * layer, fit in the same room: out dim_a <= (dim_a^2 + out^2) / 2); directions mode gathers
     * the directions every step and never holds others' inverses. */
    gat = use.mode == KF_DIST_BROADCAST_DIRECTIONS ? dirs : inv;
    if (gat > (size_t)INT_MAX) {
        return kf__fail(e, KF_ERR_UNSUPPORTED, "%s: the %s (%zu floats) exceed the %d "
                        "elements one MPI_Allgatherv can carry", fn,
                        use.mode == KF_DIST_BROADCAST_DIRECTIONS ? "directions" : "inverses", gat,
                        INT_MAX);
    }
    d = (kf_dist *)kf__alloc(&opt->alloc, sizeof *d);
    if (!d) {
        return kf__fail(e, KF_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    memset(d, 0, sizeof *d);
    d->alloc = opt->alloc;
    d->opt = opt;
    d->comm = MPI_COMM_NULL;
    d->op = MPI_OP_NULL;
    d->ag_type = MPI_DATATYPE_NULL;
    d->p = use;
    MPI_Comm_rank(comm, &d->rank);
    MPI_Comm_size(comm, &d->size);
    d->n_layers = opt->n_layers;
    d->red_cap = red;
    d->gat_cap = gat;
    d->block_bytes = dist_block(d, 0);
    d->block = kf__alloc(&d->alloc, d->block_bytes);
    load = (double *)kf__alloc(&d->alloc, (size_t)d->size * sizeof *load);
    jobs = (job *)kf__alloc(&d->alloc, d->n_layers * sizeof *jobs);
    if (!d->block || !load || !jobs) {
        kf_allocator a = d->alloc;
        size_t bytes = d->block_bytes;
        kf__free(&a, load, (size_t)d->size * sizeof *load);
        kf__free(&a, jobs, d->n_layers * sizeof *jobs);
        kf__free(&a, d->block, bytes);
        kf__free(&a, d, sizeof *d);
        return kf__fail(e, KF_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu bytes of buffers", fn,
                        bytes);
    }
    memset(d->block, 0, d->block_bytes);
    dist_block(d, 1);
    {
        size_t off = 0;
        for (size_t i = 0; i < d->n_layers; i++) {
            const kf_layer *l = &opt->layers[i];
            d->cost[i] = layer_cost(l);
            d->grad_off[i] = off;
            off += l->p.out * l->p.in + (l->p.bias ? l->p.out : 0);
        }
        d->grad_floats = off;
    }
    assign_lpt(d->n_layers, d->cost, d->size, d->owner, load, jobs);
    kf__free(&d->alloc, load, (size_t)d->size * sizeof *load);
    kf__free(&d->alloc, jobs, d->n_layers * sizeof *jobs);
    *made = d;
    return KF_OK;
}

static void free_dist(kf_dist *d)
{
    kf_allocator a = d->alloc;
    if (d->op != MPI_OP_NULL) {
        MPI_Op_free(&d->op);
    }
    if (d->ag_type != MPI_DATATYPE_NULL) {
        MPI_Type_free(&d->ag_type);
    }
    kf__free(&a, d->block, d->block_bytes);
    kf__free(&a, d, sizeof *d);
}

kf_status kf_dist_create(kf_optimizer *opt, MPI_Comm comm, const kf_dist_params *p,
                         kf_dist **out)
{
    static const char fn[] = "kf_dist_create";
    kf_errbuf e;
    kf_dist *d = NULL;
    long long mine[AG_COUNT], all[AG_COUNT];
    MPI_Op op;
    MPI_Datatype type;
    int rank = 0, flag = 0;
    kf_status s;
    e.msg[0] = '\0';
    MPI_Initialized(&flag);
    if (!flag || comm == MPI_COMM_NULL) {
        /* No communicator to agree over: nobody else can be waiting on a valid one with us. */
        return !flag ? KF_ERR_STATE : KF_ERR_INVALID_ARGUMENT;
    }
    MPI_Comm_rank(comm, &rank);
    s = create_local(&e, opt, comm, p, out, &d);
    fill_agreement(mine, rank, s, d ? (long long)d->n_layers : -1,
                   d ? hash_ll(shape_hash(opt, (int)d->p.mode)) : -1, 0, 1);
    /* Every rank creates the type and operation (local calls) so that all take part in the
     * agreement, even those that already failed. */
    MPI_Type_contiguous(AG_COUNT, MPI_LONG_LONG, &type);
    MPI_Type_commit(&type);
    MPI_Op_create(ag_reduce, 1, &op);
    MPI_Allreduce(mine, all, 1, type, op, comm);
    s = judge(&e, comm, rank, fn, s, mine, all, 0);
    if (s == KF_OK) {
        MPI_Comm_dup(comm, &d->comm); /* collective, and on the success path of every rank */
        d->op = op;
        d->ag_type = type;
        *out = d;
        return KF_OK;
    }
    MPI_Op_free(&op);
    MPI_Type_free(&type);
    if (d) {
        free_dist(d);
    }
    if (opt) {
        /* The only handle that exists to carry the message. */
        memcpy(opt->err.msg, e.msg, sizeof e.msg);
    }
    return s;
}

void kf_dist_destroy(kf_dist *dist)
{
    if (!dist) {
        return;
    }
    if (dist->comm != MPI_COMM_NULL) {
        MPI_Comm_free(&dist->comm);
    }
    if (dist->p.mode == KF_DIST_BROADCAST_DIRECTIONS && dist->size > 1) {
        /* This rank holds no inverses of the layers it did not own: a step of the optimizer on
         * its own refreshes them all first. */
        dist->opt->force_refresh = 1;
    }
    free_dist(dist);
}

const char *kf_dist_last_error(const kf_dist *dist)
{
    return dist ? dist->err.msg : "kf_dist_last_error: dist is NULL";
}

kf_status kf_dist_assignment(const kf_dist *dist, size_t layer, int *rank)
{
    if (!dist || !rank) {
        return KF_ERR_NULL_POINTER;
    }
    if (layer >= dist->n_layers) {
        return kf__fail(&((kf_dist *)dist)->err, KF_ERR_INVALID_ARGUMENT, "kf_dist_assignment: "
                        "layer %zu does not exist (%zu registered)", layer, dist->n_layers);
    }
    *rank = dist->owner[layer];
    return KF_OK;
}

kf_status kf_dist_layer_cost(const kf_dist *dist, size_t layer, double *cost)
{
    if (!dist || !cost) {
        return KF_ERR_NULL_POINTER;
    }
    if (layer >= dist->n_layers) {
        return kf__fail(&((kf_dist *)dist)->err, KF_ERR_INVALID_ARGUMENT, "kf_dist_layer_cost: "
                        "layer %zu does not exist (%zu registered)", layer, dist->n_layers);
    }
    *cost = dist->cost[layer];
    return KF_OK;
}

kf_status kf_dist_get_stats(const kf_dist *dist, kf_dist_stats *stats)
{
    if (!dist || !stats) {
        return KF_ERR_NULL_POINTER;
    }
    *stats = dist->stats;
    return KF_OK;
}

kf_status kf_dist_reset_stats(kf_dist *dist)
{
    if (!dist) {
        return KF_ERR_NULL_POINTER;
    }
    memset(&dist->stats, 0, sizeof dist->stats);
    return KF_OK;
}

kf_status kf_dist_memory_bytes(const kf_dist *dist, size_t *bytes)
{
    if (!dist || !bytes) {
        return KF_ERR_NULL_POINTER;
    }
    *bytes = sizeof *dist + dist->block_bytes;
    return KF_OK;
}

/* ---- the step -------------------------------------------------------------------------------- */

static kf_status check_local(kf_dist *d, const char *fn, const kf_layer_tensors *layers,
                             size_t num_layers, size_t n_local)
{
    kf_optimizer *opt = d->opt;
    char name[64];
    kf_status s;
    if (!layers) {
        return kf__fail(&d->err, KF_ERR_NULL_POINTER, "%s: layers is NULL", fn);
    }
    if (opt->n_layers != d->n_layers) {
        return kf__fail(&d->err, KF_ERR_STATE, "%s: layers were registered after kf_dist_create "
                        "(%zu then, %zu now)", fn, d->n_layers, opt->n_layers);
    }
    if (num_layers != d->n_layers) {
        return kf__fail(&d->err, KF_ERR_SHAPE, "%s: num_layers (%zu) differs from the %zu "
                        "registered layers", fn, num_layers, d->n_layers);
    }
    if (n_local == 0 || n_local > ((size_t)1 << 40)) {
        return kf__fail(&d->err, KF_ERR_SHAPE, "%s: n_local (%zu) must be in 1..2^40", fn, n_local);
    }
    for (size_t i = 0; i < num_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        const kf_layer_tensors *t = &layers[i];
        snprintf(name, sizeof name, "layers[%zu].weight", i);
        if ((s = kf__check_mat(&d->err, t->weight, l->p.out, l->p.in, t->ld_weight, name)) != KF_OK) {
            return kf__prefix(&d->err, s, fn);
        }
        snprintf(name, sizeof name, "layers[%zu].grad_weight", i);
        if ((s = kf__check_mat(&d->err, t->grad_weight, l->p.out, l->p.in, t->ld_grad_weight,
                               name)) != KF_OK) {
            return kf__prefix(&d->err, s, fn);
        }
        if (l->p.bias && (!t->bias || !t->grad_bias)) {
            return kf__fail(&d->err, KF_ERR_NULL_POINTER, "%s: layers[%zu]: the layer has a bias, "
                            "but %s is NULL", fn, i, !t->bias ? "bias" : "grad_bias");
        }
        if (!l->p.bias && (t->bias || t->grad_bias)) {
            return kf__fail(&d->err, KF_ERR_INVALID_ARGUMENT, "%s: layers[%zu]: the layer has no "
                            "bias, but bias or grad_bias is given", fn, i);
        }
    }
    return KF_OK;
}

static void pack_upper(size_t n, const float *m, float w, float *dst)
{
    for (size_t i = 0; i < n; i++) {
        const float *row = m + i * n;
        if (w == 1.0f) {
            memcpy(dst, row + i, (n - i) * sizeof(float));
        } else {
            for (size_t j = i; j < n; j++) {
                dst[j - i] = w * row[j];
            }
        }
        dst += n - i;
    }
}

static void unpack_upper(size_t n, const float *src, float *m)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(m + i * n + i, src, (n - i) * sizeof(float));
        for (size_t j = i + 1; j < n; j++) {
            m[j * n + i] = src[j - i];
        }
        src += n - i;
    }
}

/* The factors the same way from their lower triangles, the ones the optimizer keeps current (a
 * plain layer's observation leaves the upper one stale); unpacked into both triangles. */
static void pack_lower(size_t n, const float *m, float w, float *dst)
{
    for (size_t i = 0; i < n; i++) {
        const float *row = m + i * n;
        for (size_t j = 0; j <= i; j++) {
            dst[j] = w * row[j];
        }
        dst += i + 1;
    }
}

static void unpack_lower(size_t n, const float *src, float *m)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j <= i; j++) {
            m[i * n + j] = m[j * n + i] = src[j];
        }
        src += i + 1;
    }
}

/* The lower triangle from the upper one, so that the owner keeps exactly what the others rebuild
 * from the upper triangle it sends. */
static void mirror_upper(size_t n, float *m)
{
    for (size_t i = 1; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            m[i * n + j] = m[j * n + i];
        }
    }
}

/* Gradients (weighted by w) and, on statistics steps, the pending batch factors into red; returns
 * the floats packed. */
static size_t pack_step(kf_dist *d, const kf_layer_tensors *layers, float w, int stats)
{
    kf_optimizer *opt = d->opt;
    float *cur;
    for (size_t i = 0; i < d->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        const kf_layer_tensors *t = &layers[i];
        size_t out = l->p.out, in = l->p.in;
        float *dst = d->red + d->grad_off[i];
        for (size_t r = 0; r < out; r++) {
            const float *src = t->grad_weight + r * t->ld_grad_weight;
            if (w == 1.0f) {
                memcpy(dst + r * in, src, in * sizeof(float));
            } else {
                for (size_t c = 0; c < in; c++) {
                    dst[r * in + c] = w * src[c];
                }
            }
        }
        if (l->p.bias) {
            for (size_t r = 0; r < out; r++) {
                dst[out * in + r] = w * t->grad_bias[r];
            }
        }
    }
    cur = d->red + d->grad_floats;
    if (stats) {
        for (size_t i = 0; i < d->n_layers; i++) {
            const kf_layer *l = &opt->layers[i];
            if (!l->precond) {
                continue;
            }
            if (l->a.has_pending) {
                pack_lower(l->dim_a, l->a.pending, w, cur);
                cur += tri(l->dim_a);
            }
            if (l->uses_g && l->g.has_pending) {
                pack_lower(l->p.out, l->g.pending, w, cur);
                cur += tri(l->p.out);
            }
        }
    }
    return (size_t)(cur - d->red);
}

static void unpack_factors(kf_dist *d, int stats)
{
    kf_optimizer *opt = d->opt;
    const float *cur = d->red + d->grad_floats;
    if (!stats) {
        return;
    }
    for (size_t i = 0; i < d->n_layers; i++) {
        kf_layer *l = &opt->layers[i];
        if (!l->precond) {
            continue;
        }
        if (l->a.has_pending) {
            unpack_lower(l->dim_a, cur, l->a.pending);
            cur += tri(l->dim_a);
        }
        if (l->uses_g && l->g.has_pending) {
            unpack_lower(l->p.out, cur, l->g.pending);
            cur += tri(l->p.out);
        }
    }
}

static kf_status allreduce_sum(kf_dist *d, float *buf, size_t count)
{
    const size_t chunk = (size_t)1 << 28; /* well inside MPI's int counts */
    double t;
    timed_start(&t);
    for (size_t off = 0; off < count; off += chunk) {
        size_t c = count - off < chunk ? count - off : chunk;
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)c, MPI_FLOAT, MPI_SUM, d->comm);
    }
    timed_end(d, t);
    d->stats.floats_reduced += count;
    return KF_OK;
}

/* Every rank learns whether any failed this step; returns KF_OK or the failing rank's status. */
static kf_status agree_status(kf_dist *d, kf_status local, int *who)
{
    int code = local == KF_OK ? -1 : d->rank * 64 + (-(int)local), all = -1;
    double t;
    timed_start(&t);
    MPI_Allreduce(&code, &all, 1, MPI_INT, MPI_MAX, d->comm);
    timed_end(d, t);
    d->exchanged = 1;
    if (all < 0) {
        *who = -1;
        return KF_OK;
    }
    *who = all / 64;
    return (kf_status)(-(all % 64));
}

static int hook_owns(void *ctx, size_t layer)
{
    const kf_dist *d = (const kf_dist *)ctx;
    return d->owner[layer] == d->rank;
}

/* Copies a refreshing layer's new inverses (or eigenbases) to / from the wire. */
static float *put_inverses(kf_layer *l, float *dst)
{
    size_t da = l->dim_a, out = l->p.out;
    if (l->eigen) {
        memcpy(dst, l->a.inv_next, da * da * sizeof(float));
        dst += da * da;
        memcpy(dst, l->a.eig_next, da * sizeof(float));
        dst += da;
        memcpy(dst, l->g.inv_next, out * out * sizeof(float));
        dst += out * out;
        memcpy(dst, l->g.eig_next, out * sizeof(float));
        return dst + out;
    }
    mirror_upper(da, l->a.inv_next);
    pack_upper(da, l->a.inv_next, 1.0f, dst);
    dst += tri(da);
    if (l->uses_g) {
        mirror_upper(out, l->g.inv_next);
        pack_upper(out, l->g.inv_next, 1.0f, dst);
        dst += tri(out);
    }
    return dst;
}

static const float *get_inverses(kf_layer *l, const float *src)
{
    size_t da = l->dim_a, out = l->p.out;
    if (l->eigen) {
        memcpy(l->a.inv_next, src, da * da * sizeof(float));
        src += da * da;
        memcpy(l->a.eig_next, src, da * sizeof(float));
        src += da;
        memcpy(l->g.inv_next, src, out * out * sizeof(float));
        src += out * out;
        memcpy(l->g.eig_next, src, out * sizeof(float));
        return src + out;
    }
    unpack_upper(da, src, l->a.inv_next);
    src += tri(da);
    if (l->uses_g) {
        unpack_upper(out, src, l->g.inv_next);
        src += tri(out);
    }
    return src;
}

/* The hook's exchange: agree that every rank's statistics and factorisations succeeded, then one
 * MPI_Allgatherv of the refreshed inverses, each rank contributing those it owns. */
static kf_status hook_exchange(void *ctx, kf_optimizer *opt)
{
    kf_dist *d = (kf_dist *)ctx;
    int who, total = 0;
    double t;
    kf_status s = agree_status(d, KF_OK, &who);
    if (s != KF_OK) {
        return kf__fail(&opt->err, s, "rank %d failed this step (%s); its last error says why", who,
                        kf_status_string(s));
    }
    if (d->size == 1) {
        return KF_OK; /* nothing to send, and the inverses stay exactly as computed */
    }
    if (d->p.mode == KF_DIST_BROADCAST_DIRECTIONS) {
        /* Nothing to send either: only the owner ever uses a layer's inverses. It keeps them as
         * the inverses mode would (the lower triangle mirrored from the upper one), so that both
         * modes take the same steps bit for bit. */
        int any = 0;
        for (size_t i = 0; i < d->n_layers; i++) {
            kf_layer *l = &opt->layers[i];
            if (l->precond && l->refreshing) {
                any = 1;
                if (d->owner[i] == d->rank && !l->eigen) {
                    mirror_upper(l->dim_a, l->a.inv_next);
                    if (l->uses_g) {
                        mirror_upper(l->p.out, l->g.inv_next);
                    }
                }
            }
        }
        d->stats.refresh_steps += (uint64_t)any;
        return KF_OK;
    }
    for (int r = 0; r < d->size; r++) {
        d->counts[r] = 0;
    }
    for (size_t i = 0; i < d->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        if (l->precond && l->refreshing) {
            d->counts[d->owner[i]] += (int)inverse_payload(l);
        }
    }
    for (int r = 0; r < d->size; r++) {
        d->displs[r] = total;
        total += d->counts[r];
    }
    if (total == 0) {
        return KF_OK;
    }
    {
        float *cur = d->gat + d->displs[d->rank];
        for (size_t i = 0; i < d->n_layers; i++) {
            kf_layer *l = &opt->layers[i];
            if (l->precond && l->refreshing && d->owner[i] == d->rank) {
                cur = put_inverses(l, cur);
            }
        }
    }
    timed_start(&t);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, d->gat, d->counts, d->displs, MPI_FLOAT,
                   d->comm);
    timed_end(d, t);
    for (int r = 0; r < d->size; r++) {
        const float *cur = d->gat + d->displs[r];
        if (r == d->rank) {
            continue;
        }
        for (size_t i = 0; i < d->n_layers; i++) {
            kf_layer *l = &opt->layers[i];
            if (l->precond && l->refreshing && d->owner[i] == r) {
                cur = get_inverses(l, cur);
            }
        }
    }
    d->stats.floats_gathered += (uint64_t)(total - d->counts[d->rank]);
    d->stats.refresh_steps++;
    return KF_OK;
}

static int hook_owns_direction(void *ctx, size_t layer)
{
    return hook_owns(ctx, layer);
}

/* Directions mode: one MPI_Allgatherv of the preconditioned layers' directions, each rank
 * contributing those it owns (possibly non-finite: the optimizer checks them all afterwards). */
static kf_status hook_exchange_directions(void *ctx, kf_optimizer *opt)
{
    kf_dist *d = (kf_dist *)ctx;
    int total = 0;
    double t;
    float *cur;
    if (d->size == 1) {
        return KF_OK;
    }
    for (int r = 0; r < d->size; r++) {
        d->counts[r] = 0;
    }
    for (size_t i = 0; i < d->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        if (l->precond) {
            d->counts[d->owner[i]] += (int)(l->p.out * l->dim_a);
        }
    }
    for (int r = 0; r < d->size; r++) {
        d->displs[r] = total;
        total += d->counts[r];
    }
    if (total == 0) {
        return KF_OK;
    }
    cur = d->gat + d->displs[d->rank];
    for (size_t i = 0; i < d->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        if (l->precond && d->owner[i] == d->rank) {
            memcpy(cur, l->dir, l->p.out * l->dim_a * sizeof(float));
            cur += l->p.out * l->dim_a;
        }
    }
    timed_start(&t);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, d->gat, d->counts, d->displs, MPI_FLOAT,
                   d->comm);
    timed_end(d, t);
    for (int r = 0; r < d->size; r++) {
        const float *src = d->gat + d->displs[r];
        if (r == d->rank) {
            continue;
        }
        for (size_t i = 0; i < d->n_layers; i++) {
            kf_layer *l = &opt->layers[i];
            if (l->precond && d->owner[i] == r) {
                memcpy(l->dir, src, l->p.out * l->dim_a * sizeof(float));
                src += l->p.out * l->dim_a;
            }
        }
    }
    d->stats.floats_gathered += (uint64_t)(total - d->counts[d->rank]);
    return KF_OK;
}

/* EKFAC: the batch diagonals (each rank's own examples in the now common eigenbases, in dir) are
 * summed over the ranks, weighted like the gradients, in one more MPI_Allreduce: the diagonal of
 * the whole batch. Uses the gather buffer, idle once the inverses are unpacked. */
static kf_status hook_reduce_diagonals(void *ctx, kf_optimizer *opt)
{
    kf_dist *d = (kf_dist *)ctx;
    size_t count = 0;
    float *cur = d->gat;
    if (d->size == 1) {
        return KF_OK;
    }
    for (size_t i = 0; i < d->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        if (l->diag_pending) {
            size_t nel = l->p.out * l->dim_a;
            for (size_t k = 0; k < nel; k++) {
                cur[k] = d->w * l->dir[k];
            }
            cur += nel;
            count += nel;
        }
    }
    allreduce_sum(d, d->gat, count);
    cur = d->gat;
    for (size_t i = 0; i < d->n_layers; i++) {
        kf_layer *l = &opt->layers[i];
        if (l->diag_pending) {
            size_t nel = l->p.out * l->dim_a;
            memcpy(l->dir, cur, nel * sizeof(float));
            cur += nel;
        }
    }
    return KF_OK;
}

/* After a failure past the all-reduce: the pending buffers hold reduced factors (or folded
 * averages), not this rank's observations; drop them on every rank alike. */
static void drop_pending(kf_optimizer *opt)
{
    for (size_t i = 0; i < opt->n_layers; i++) {
        opt->layers[i].a.has_pending = 0;
        opt->layers[i].g.has_pending = 0;
    }
}

kf_status kf_dist_step(kf_dist *dist, const kf_layer_tensors *layers, size_t num_layers,
                       size_t n_local)
{
    static const char fn[] = "kf_dist_step";
    kf_dist *d = dist;
    kf_optimizer *opt;
    long long mine[AG_COUNT], all[AG_COUNT];
    double t0, t;
    int stats = 0, who;
    size_t count;
    float w;
    kf_status s;
    kf__step_hook hook;
    if (!d) {
        return KF_ERR_NULL_POINTER;
    }
    opt = d->opt;
    t0 = MPI_Wtime();
    s = check_local(d, fn, layers, num_layers, n_local);
    fill_agreement(mine, d->rank, s, (long long)opt->n_layers, hash_ll(shape_hash(opt, (int)d->p.mode)),
                   hash_ll(state_hash(opt)), (long long)n_local);
    timed_start(&t);
    MPI_Allreduce(mine, all, 1, d->ag_type, d->op, d->comm);
    timed_end(d, t);
    if ((s = judge(&d->err, d->comm, d->rank, fn, s, mine, all, 1)) != KF_OK) {
        d->stats.step_seconds += MPI_Wtime() - t0;
        return s;
    }
    /* Each rank's means weigh as its share of the global batch. With one rank, w = 1 and the step
     * is bit for bit kf_optimizer_step's. */
    w = d->size == 1 ? 1.0f : (float)((double)n_local / (double)all[AG_N_SUM]);
    d->w = w;
    kf_optimizer_needs_statistics(opt, &stats);
    count = pack_step(d, layers, w, stats);
    allreduce_sum(d, d->red, count);
    unpack_factors(d, stats);
    for (size_t i = 0; i < d->n_layers; i++) {
        const kf_layer *l = &opt->layers[i];
        kf_layer_tensors *t2 = &d->tensors[i];
        t2->weight = layers[i].weight;
        t2->ld_weight = layers[i].ld_weight;
        t2->bias = layers[i].bias;
        t2->grad_weight = d->red + d->grad_off[i];
        t2->ld_grad_weight = l->p.in;
        t2->grad_bias = l->p.bias ? d->red + d->grad_off[i] + l->p.out * l->p.in : NULL;
    }
    memset(&hook, 0, sizeof hook);
    hook.owns = hook_owns;
    hook.exchange = hook_exchange;
    hook.reduce_diagonals = hook_reduce_diagonals;
    if (d->p.mode == KF_DIST_BROADCAST_DIRECTIONS) {
        hook.owns_direction = hook_owns_direction;
        hook.exchange_directions = hook_exchange_directions;
    }
    hook.ctx = d;
    d->exchanged = 0;
    s = kf__optimizer_step_hooked(opt, d->tensors, d->n_layers, &hook);
    if (!d->exchanged) {
        /* This rank failed before the exchange (the optimizer calls it on every successful path);
         * the others wait in the exchange's agreement: join it. */
        agree_status(d, s, &who);
    }
    if (s != KF_OK) {
        drop_pending(opt);
        kf__fail(&d->err, s, "%s: %s", fn, opt->err.msg);
    } else {
        d->stats.steps++;
        kf__clear(&d->err);
    }
    d->stats.step_seconds += MPI_Wtime() - t0;
    return s;
}

/* ---- checkpoints ----------------------------------------------------------------------------- */

/* What rank 0 tells the others about a file operation. */
typedef struct root_report {
    int status;
    long long size;
    char msg[KF_MSG_CAP];
} root_report;

/* Directions mode: rank 0 receives the current inverses (or eigenbases) of the layers it does not
 * own straight into its optimizer's buffers, one message per matrix from the owner, in layer
 * order (which every rank knows, so the messages always match); then rank 0 holds what one
 * process would hold. */
static void gather_inverses_to_root(kf_dist *d)
{
    kf_optimizer *opt = d->opt;
    double t;
    if (d->p.mode != KF_DIST_BROADCAST_DIRECTIONS || d->size == 1) {
        return;
    }
    timed_start(&t);
    for (size_t i = 0; i < d->n_layers; i++) {
        kf_layer *l = &opt->layers[i];
        float *bufs[4];
        int counts[4], nb = 0;
        if (!l->precond || !l->has_inverse || d->owner[i] == 0 ||
            (d->rank != 0 && d->rank != d->owner[i])) {
            continue;
        }
        bufs[nb] = l->a.inv;
        counts[nb++] = (int)(l->dim_a * l->dim_a);
        if (l->uses_g) {
            bufs[nb] = l->g.inv;
            counts[nb++] = (int)(l->p.out * l->p.out);
        }
        if (l->eigen) {
            bufs[nb] = l->a.eig;
            counts[nb++] = (int)l->dim_a;
            bufs[nb] = l->g.eig;
            counts[nb++] = (int)l->p.out;
        }
        for (int k = 0; k < nb; k++) {
            if (d->rank == 0) {
                MPI_Recv(bufs[k], counts[k], MPI_FLOAT, d->owner[i], 71, d->comm,
                         MPI_STATUS_IGNORE);
            } else {
                MPI_Send(bufs[k], counts[k], MPI_FLOAT, 0, 71, d->comm);
            }
        }
    }
    timed_end(d, t);
}

kf_status kf_dist_save_file(kf_dist *dist, const char *path)
{
    root_report rep;
    if (!dist) {
        return KF_ERR_NULL_POINTER;
    }
    gather_inverses_to_root(dist);
    memset(&rep, 0, sizeof rep);
    if (dist->rank == 0) {
        if (!path) {
            rep.status = KF_ERR_NULL_POINTER;
            snprintf(rep.msg, sizeof rep.msg, "kf_dist_save_file: path is NULL on rank 0");
        } else {
            rep.status = kf_optimizer_save_file(dist->opt, path);
            if (rep.status != KF_OK) {
                snprintf(rep.msg, sizeof rep.msg, "kf_dist_save_file: %s",
                         kf_optimizer_last_error(dist->opt));
            }
        }
    }
    /* Also the barrier: no rank returns before the file is complete. */
    MPI_Bcast(&rep, (int)sizeof rep, MPI_BYTE, 0, dist->comm);
    if (rep.status != KF_OK) {
        return kf__fail(&dist->err, (kf_status)rep.status, "%s%s", dist->rank == 0 ? "" :
                        "(rank 0) ", rep.msg);
    }
    kf__clear(&dist->err);
    return KF_OK;
}

static void bcast_bytes(MPI_Comm comm, unsigned char *buf, size_t size)
{
    const size_t chunk = (size_t)1 << 30;
    for (size_t off = 0; off < size; off += chunk) {
        size_t c = size - off < chunk ? size - off : chunk;
        MPI_Bcast(buf + off, (int)c, MPI_BYTE, 0, comm);
    }
}

static void read_file(const char *path, root_report *rep, unsigned char **buf, const kf_allocator *a)
{
    FILE *f;
    long end;
    *buf = NULL;
    if (!path) {
        rep->status = KF_ERR_NULL_POINTER;
        snprintf(rep->msg, sizeof rep->msg, "kf_dist_restore_file: path is NULL on rank 0");
        return;
    }
    f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        if (f) {
            fclose(f);
        }
        rep->status = KF_ERR_IO;
        snprintf(rep->msg, sizeof rep->msg, "kf_dist_restore_file: cannot open or size '%s'", path);
        return;
    }
    *buf = (unsigned char *)kf__alloc(a, (size_t)end);
    if (!*buf) {
        fclose(f);
        rep->status = KF_ERR_OUT_OF_MEMORY;
        snprintf(rep->msg, sizeof rep->msg, "kf_dist_restore_file: out of memory for %ld bytes", end);
        return;
    }
    if (fread(*buf, 1, (size_t)end, f) != (size_t)end) {
        kf__free(a, *buf, (size_t)end);
        *buf = NULL;
        fclose(f);
        rep->status = KF_ERR_IO;
        snprintf(rep->msg, sizeof rep->msg, "kf_dist_restore_file: cannot read '%s'", path);
        return;
    }
    fclose(f);
    rep->size = end;
}

kf_status kf_dist_restore_file(kf_dist *dist, const char *path)
{
    static const char fn[] = "kf_dist_restore_file";
    kf_dist *d = dist;
    root_report rep;
    unsigned char *buf = NULL, *backup = NULL;
    size_t size, bsize = 0, written = 0;
    kf_status s = KF_OK, all;
    int who;
    if (!d) {
        return KF_ERR_NULL_POINTER;
    }
    memset(&rep, 0, sizeof rep);
    if (d->rank == 0) {
        read_file(path, &rep, &buf, &d->alloc);
    }
    MPI_Bcast(&rep, (int)sizeof rep, MPI_BYTE, 0, d->comm);
    if (rep.status != KF_OK) {
        return kf__fail(&d->err, (kf_status)rep.status, "%s%s", d->rank == 0 ? "" : "(rank 0) ",
                        rep.msg);
    }
    size = (size_t)rep.size;
    /* Room for the file and for a copy of the current state, on every rank, before anything. */
    if (d->rank != 0 && !(buf = (unsigned char *)kf__alloc(&d->alloc, size))) {
        s = kf__fail(&d->err, KF_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu bytes", fn, size);
    }
    kf_optimizer_checkpoint_size(d->opt, &bsize);
    if (s == KF_OK && !(backup = (unsigned char *)kf__alloc(&d->alloc, bsize))) {
        s = kf__fail(&d->err, KF_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu bytes", fn, bsize);
    }
    all = agree_status(d, s, &who);
    if (all == KF_OK) {
        bcast_bytes(d->comm, buf, size);
        kf_optimizer_save(d->opt, backup, bsize, &written);
        s = kf_optimizer_restore(d->opt, buf, size);
        if (s != KF_OK) {
            kf__fail(&d->err, s, "%s: %s", fn, kf_optimizer_last_error(d->opt));
        }
        all = agree_status(d, s, &who);
        if (all != KF_OK && s == KF_OK) {
            /* Another rank could not restore: undo, so that every rank keeps its old state. */
            kf_optimizer_restore(d->opt, backup, written);
        }
    }
    kf__free(&d->alloc, buf, size);
    kf__free(&d->alloc, backup, bsize);
    if (all != KF_OK) {
        if (s == KF_OK) {
            kf__fail(&d->err, all, "%s: rank %d failed (%s); its last error says why", fn, who,
                     kf_status_string(all));
        }
        return s != KF_OK ? s : all;
    }
    drop_pending(d->opt);
    kf__clear(&d->err);
    return KF_OK;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int kf__dist_unused;
#endif
