/* The optimizer's private state, shared by optimizer.c and checkpoint.c. */
#ifndef KF_OPTIMIZER_INTERNAL_H
#define KF_OPTIMIZER_INTERNAL_H

#include "kf_internal.h"

#include <stdint.h>

/* One Kronecker factor of a layer (A or G) and what is derived from it. */
typedef struct kf_side {
    size_t dim;
    float *f;          /* moving average (dim x dim) */
    float *pending;    /* the observed batch factor; during a step it becomes the new average */
    float *inv;        /* damped inverse, or eigenvectors (columns) for eigenbasis algorithms */
    float *inv_next;   /* the refresh is computed here and swapped in when the step commits */
    float *eig;        /* eigenvalues (eigenbasis algorithms) */
    float *eig_next;
    double weight;     /* moving-average weight state, 0 before the first statistics */
    size_t has_pending; /* observations made for the next step (up to the layer's uses) */
    size_t pending_n;   /* their batch size (all uses of a step must agree) */
    double pending_weight; /* non-zero: pending already holds the fold into f (the observation of
                            * a plain layer folds in its product), and this is the weight after it */
} kf_side;

typedef struct kf_layer {
    kf_layer_params p;     /* as registered (algorithm resolved, loss terms resolved) */
    size_t dim_a;          /* in + bias */
    int precond;           /* FOOF, K-FAC, K-FAC exact or EKFAC */
    int uses_g;            /* K-FAC family */
    int eigen;             /* K-FAC exact or EKFAC */
    kf_side a, g;
    int has_inverse;
    int inv_chol;          /* inv holds blocked Cholesky factors (kf__damped_cholesky_ws), not
                            * inverses: the per-step path, with inverse_interval 1 */
    int refreshing;        /* during a step: this step refreshes the layer (into the _next buffers) */
    uint64_t inverse_count;
    float pi;              /* of the last refresh */
    float damping_used;    /* of the current inverses */
    float *dir;            /* this step's direction, out x dim_a */
    float *mom;            /* momentum buffer, or Adam's first moment */
    float *adam_v;         /* Adam's second moment */
    float *s, *s_next;     /* EKFAC: diagonal in the eigenbasis, out x dim_a */
    double s_weight;
    int diag_pending;      /* during an EKFAC step: dir holds this batch's diagonal, not yet folded */
    /* EKFAC observations kept for the per-example diagonal: a~ rows (with the 1) and scaled g rows,
     * after the shared-axis treatment, plus room for their rotations. Grown at observation. */
    float *xobs, *gobs;
    size_t xobs_rows, gobs_rows; /* rows held */
    size_t xobs_n, gobs_n;       /* examples they came from */
    size_t obs_cap_rows;         /* capacity of xobs/gobs in rows (each has 2x for rotations) */
    size_t obs_bytes;
    void *block;           /* the single allocation behind every per-layer buffer above but obs */
    size_t block_bytes;
} kf_layer;

struct kf_optimizer {
    kf_allocator alloc;
    kf_errbuf err;
    kf_optimizer_params p;
    kf_layer *layers;
    size_t n_layers, cap_layers;
    uint64_t step;
    int force_refresh;     /* the damping changed: refresh on the next step */
    void *work;            /* step workspace, planned at registration */
    size_t work_bytes;
    void *obs_work;        /* observation workspace (shared-axis collapse), grown at observation */
    size_t obs_work_bytes;
};

/* A step whose work is shared out (the distributed step of dist.c). Every member may be NULL.
 *   owns(layer): whether this caller factorises the layer (NULL: every layer).
 *   exchange(): runs after all statistics and refreshes; must fill inv_next (and eig_next) of every
 *     refreshing layer it does not own -- unless owns_direction says the caller never uses them --
 *     or fail (then the step changes nothing).
 *   reduce_diagonals(): EKFAC, after the exchange: every layer with diag_pending holds this
 *     caller's batch diagonal (in the new bases) in dir; replace it by the diagonal of the whole
 *     batch. Whatever it does, the finiteness check that follows must decide alike everywhere.
 *   owns_direction(layer): whether this caller computes the direction of a preconditioned layer
 *     (NULL: every layer). Layers it does not own get no direction here; then
 *   exchange_directions(): runs after the owned directions (possibly non-finite: they are checked
 *     after the exchange, so that every caller judges the same numbers) and must fill dir of every
 *     preconditioned layer not owned. */
typedef struct kf__step_hook {
    int (*owns)(void *ctx, size_t layer);
    kf_status (*exchange)(void *ctx, kf_optimizer *opt);
    kf_status (*reduce_diagonals)(void *ctx, kf_optimizer *opt);
    int (*owns_direction)(void *ctx, size_t layer);
    kf_status (*exchange_directions)(void *ctx, kf_optimizer *opt);
    void *ctx;
} kf__step_hook;
kf_status kf__optimizer_step_hooked(kf_optimizer *opt, const kf_layer_tensors *layers,
                                    size_t num_layers, const kf__step_hook *hook);

/* Validates optimizer parameters; message into e. */
kf_status kf__validate_params(kf_errbuf *e, const kf_optimizer_params *p);
/* Registers a layer whose params are already resolved and validated (used by restore too). */
kf_status kf__optimizer_add_layer(kf_optimizer *opt, const kf_layer_params *p, size_t *index);
/* Is the layer's algorithm one that preconditions / uses G / uses eigenbases. */
int kf__algo_precond(kf_algorithm a);
int kf__algo_uses_g(kf_algorithm a);
int kf__algo_eigen(kf_algorithm a);

#endif /* KF_OPTIMIZER_INTERNAL_H */
