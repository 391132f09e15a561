/*
 * kronfac_dist.h - data-parallel FOOF and K-FAC over MPI (the optional module kronfac_dist).
 *
 * Every rank holds the same model and the same kf_optimizer, runs forward and backward on its own
 * share of each batch, observes its local activations and output gradients as usual, and then
 * calls kf_dist_step instead of kf_optimizer_step. The shape of distributed K-FAC follows Ba et
 * al. 2017, Osawa et al. 2019 and KAISA (Pauloski et al. 2021):
 *   1. one MPI_Allreduce per step of everything the ranks must agree on: the layers' gradients and,
 *      on statistics steps, this step's batch factors (symmetric, so only their upper triangles);
 *   2. each rank factorises (inverts, or eigendecomposes) only the layers assigned to it, the
 *      assignment balanced by cost (kf_dist_assign);
 *   3. on steps that refresh inverses, one MPI_Allgatherv hands every rank the inverses the
 *      others computed (KAISA's gradient-worker fraction 1: every rank preconditions every layer);
 *   4. every rank then takes the same step, so the parameters stay identical without being sent.
 * Two small agreement all-reduces per step make every error collective: when one rank fails
 * (a bad argument, mismatched layers, a failed factorisation) every rank returns an error and no
 * rank waits forever.
 *
 * Local batches: the gradients given to kf_dist_step are those of the mean loss over the rank's
 * n_local examples, and the observations of a statistics step are of the same n_local examples.
 * The ranks' contributions are weighted by n_local / sum(n_local), so the result is that of one
 * process on the whole batch, also when the local batches differ in size.
 *
 * Collectives: kf_dist_create, kf_dist_step, kf_dist_save_file, kf_dist_restore_file and
 * kf_dist_destroy must be called by every rank of the communicator, in the same order. A NULL
 * handle returns at once (there is no communicator to tell the others). MPI errors keep the
 * communicator's error handler (by default they abort the job, as MPI jobs expect).
 * Results are identical on every rank when every rank runs the same build with the same BLAS
 * thread count (the MPI reduction gives every rank the same sum).
 *
 * Thread safety as in kronfac.h; MPI must be initialised (MPI_Init) before kf_dist_create, and
 * only the thread that made the handle may use it.
 */
#ifndef KRONFAC_DIST_H
#define KRONFAC_DIST_H

#include <mpi.h>

#include "kronfac.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What is broadcast after the factorisations (KAISA's gradient-worker fraction). */
typedef enum kf_dist_mode {
    KF_DIST_BROADCAST_INVERSES = 0,  /* fraction 1: the owners send inverses (or eigenbases) on
                                        refresh steps; every rank holds every inverse (default) */
    KF_DIST_BROADCAST_DIRECTIONS = 1 /* fraction 1/world: the owners would send preconditioned
                                        directions every step and hold only their own inverses.
                                        Not available yet: kf_dist_create returns
                                        KF_ERR_UNSUPPORTED */
} kf_dist_mode;

typedef struct kf_dist_params {
    kf_dist_mode mode;
} kf_dist_params;

/* Defaults: KF_DIST_BROADCAST_INVERSES. */
KF_API kf_status kf_dist_params_init(kf_dist_params *p);

typedef struct kf_dist kf_dist;

/* Collective. Attaches a distributed step to opt, whose layers must all be registered already and
 * be the same (in order, shape, bias, shared axis, algorithm) on every rank, else every rank gets
 * KF_ERR_SHAPE. p may be NULL (defaults). The communicator is duplicated, so kf_dist's messages
 * never mix with the caller's. opt stays owned by the caller and must outlive the handle; step it
 * only through kf_dist_step from now on. EKFAC layers are refused (KF_ERR_UNSUPPORTED: their
 * per-example diagonal would need another all-reduce after the eigenbases are exchanged). */
KF_API kf_status kf_dist_create(kf_optimizer *opt, MPI_Comm comm, const kf_dist_params *p,
                                kf_dist **out);

/* Collective (frees the duplicated communicator). Accepts NULL. Call before MPI_Finalize. */
KF_API void kf_dist_destroy(kf_dist *dist);

/* The message of the last failed call on dist ("" after a success). When another rank's failure
 * failed the call, the message names that rank; its own message says why. */
KF_API const char *kf_dist_last_error(const kf_dist *dist);

/* The rank that factorises the layer (every layer has exactly one; layers without inverses, SGD
 * and Adam, have cost 0). */
KF_API kf_status kf_dist_assignment(const kf_dist *dist, size_t layer, int *rank);

/* The cost the assignment balances for a layer: dim_a^3 + out^3 for the K-FAC family (two
 * factorisations), dim_a^3 for FOOF, 0 for SGD and Adam (dim_a = in + bias). */
KF_API kf_status kf_dist_layer_cost(const kf_dist *dist, size_t layer, double *cost);

/* The assignment itself, a pure function: greedy longest-processing-time first (Graham 1969).
 * Jobs in order of decreasing cost (ties: lower index first) each go to the least loaded rank
 * (ties: lower rank). owner[i] in 0..ranks-1 for every i. The largest load is at most
 * sum/ranks + max(cost), and at most (4/3 - 1/(3 ranks)) times the best possible.
 * *max_load (may be NULL) receives the largest load. */
KF_API kf_status kf_dist_assign(size_t n, const double *cost, int ranks, int *owner,
                                double *max_load);

/* Collective. One step of the optimizer on the whole (global) batch: layers[i] holds this rank's
 * parameters (updated in place, identically on every rank) and its local gradients (of the mean
 * loss over its n_local >= 1 examples; not modified). num_layers = the number registered. Errors
 * as kf_optimizer_step, on every rank; in addition KF_ERR_SHAPE when the ranks' layers or
 * arguments disagree and KF_ERR_STATE when their optimizers are out of step (different step
 * counts, hyperparameters or observations). A failure before the all-reduce changes nothing; a
 * later one changes no parameter or state but drops this step's observations on every rank
 * (observe again before retrying, as with kf_optimizer_step). The step allocates nothing.
 * There is no distributed kf_optimizer_step_batch: its inputs are per example, so the gradients
 * are formed (and all-reduced) instead. */
KF_API kf_status kf_dist_step(kf_dist *dist, const kf_layer_tensors *layers, size_t num_layers,
                              size_t n_local);

/* Collective. Rank 0 writes the checkpoint (kf_optimizer_save_file: the same bytes one process
 * would write, since every rank holds the same state); every rank returns rank 0's status. */
KF_API kf_status kf_dist_save_file(kf_dist *dist, const char *path);

/* Collective. Rank 0 reads the file (only rank 0 needs to see it) and sends it to every rank,
 * which restores it. All or nothing: if any rank cannot restore, every rank keeps its state
 * (a copy is taken first) and returns an error. Pending observations are dropped everywhere. */
KF_API kf_status kf_dist_restore_file(kf_dist *dist, const char *path);

/* Counters since creation or the last reset, for this rank. */
typedef struct kf_dist_stats {
    uint64_t steps;             /* kf_dist_step calls that succeeded */
    uint64_t refresh_steps;     /* of which exchanged inverses */
    double step_seconds;        /* wall time inside kf_dist_step */
    double comm_seconds;        /* of which inside MPI calls (including waiting for other ranks) */
    uint64_t floats_reduced;    /* floats all-reduced (each rank's contribution) */
    uint64_t floats_gathered;   /* floats of inverses received from other ranks */
} kf_dist_stats;

KF_API kf_status kf_dist_get_stats(const kf_dist *dist, kf_dist_stats *stats);
KF_API kf_status kf_dist_reset_stats(kf_dist *dist);

/* Bytes held by the handle (besides the optimizer's own): the packed all-reduce buffer (the
 * gradients and the factors' upper triangles) and the all-gather buffer of the inverses. */
KF_API kf_status kf_dist_memory_bytes(const kf_dist *dist, size_t *bytes);

#ifdef __cplusplus
}
#endif

#endif /* KRONFAC_DIST_H */
