/*
 * kronfac_dist.h - data-parallel FOOF, K-FAC and EKFAC over MPI (the optional module kronfac_dist).
 *
 * Every rank holds the same model and the same kf_optimizer, runs forward and backward on its own
 * share of each batch, observes its local activations and output gradients as usual, and then
 * calls kf_dist_step instead of kf_optimizer_step. The shape of distributed K-FAC follows Ba et
 * al. 2017, Osawa et al. 2019 and KAISA (Pauloski et al. 2021):
 *   1. one MPI_Allreduce per step of everything the ranks must agree on: the layers' gradients and,
 *      on statistics steps, this step's batch factors (symmetric, so only their upper triangles);
 *   2. each rank factorises (inverts, or eigendecomposes) only the layers assigned to it, the
 *      assignment balanced by cost (kf_dist_assign);
 *   3. then, by kf_dist_mode (KAISA's gradient-worker fraction):
 *      KF_DIST_BROADCAST_INVERSES (fraction 1, the default): on steps that refresh inverses, one
 *        MPI_Allgatherv hands every rank the inverses the others computed, and every rank
 *        preconditions every layer;
 *      KF_DIST_BROADCAST_DIRECTIONS (fraction 1/world): a layer's inverses stay with its owner,
 *        which alone computes its preconditioned direction; one MPI_Allgatherv per step hands every
 *        rank the directions the others computed;
 *      EKFAC (inverses mode only): the eigenbases travel like inverses, and then one more
 *        MPI_Allreduce sums the per-example diagonal, E[(U_G^T g a~^T U_A)^2] over every rank's
 *        examples in the common bases, weighted like the gradients (George et al. 2018);
 *   4. every rank then takes the same step (momentum, weight decay, KL-clip over the sum of all
 *      layers, the finiteness check, the commit), so the parameters stay identical without being
 *      sent. Both modes take bit-identical steps.
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
/* The trade, per step, for P ranks and preconditioned layers i of out_i x d_i (d_i = in_i + bias):
 * both modes all-reduce sum_i out_i in_i (+ out_i with bias) gradient floats, plus, on
 * statistics steps, sum_i d_i(d_i+1)/2 + out_i(out_i+1)/2 factor floats (K-FAC; FOOF: no out_i
 * term). Then each rank receives
 *   inverses mode:   on refresh steps only, the upper triangles d_i(d_i+1)/2 (+ out_i(out_i+1)/2)
 *                    of the layers it does not own (eigenbases: d_i^2 + d_i + out_i^2 + out_i);
 *                    every rank computes every direction (2 out d^2 + 2 out^2 d flops per layer);
 *   directions mode: on every step, out_i d_i floats of each layer it does not own; it computes
 *                    only its own layers' directions.
 * The directions mode suits frequent refreshes (small T_inv) and wide layers (d^2 >> out d); the
 * inverses mode suits T_inv >> 1. Memory: the optimizer plans its buffers at registration, before
 * any assignment, and uses its inverse buffers as observation scratch, so every rank keeps them in
 * both modes (non-owners leave them unfilled in directions mode); the handle's gather buffer
 * (kf_dist_memory_bytes) holds sum_i of the inverse payloads (inverses mode) or of out_i d_i
 * (directions mode). */
typedef enum kf_dist_mode {
    KF_DIST_BROADCAST_INVERSES = 0,  /* fraction 1: the owners send inverses (or eigenbases) on
                                        refresh steps; every rank holds every inverse (default) */
    KF_DIST_BROADCAST_DIRECTIONS = 1 /* fraction 1/world: the owners send their layers'
                                        preconditioned directions every step and are the only
                                        ranks that hold those layers' inverses. Not for EKFAC
                                        (KF_ERR_UNSUPPORTED: its diagonal rotates every rank's
                                        own examples, so every rank needs every eigenbasis).
                                        kf_dist_save_file first sends rank 0 the inverses it lacks
                                        (point to point), so the file is the inverses mode's.
                                        After kf_dist_destroy the optimizer refreshes every
                                        inverse on its next step (it lacked the others'). */
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
 * only through kf_dist_step from now on. KF_ERR_UNSUPPORTED for EKFAC layers in the directions
 * mode, and for a factor wider than 46340 (its square would not fit one MPI message). */
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
    uint64_t refresh_steps;     /* of which refreshed inverses */
    double step_seconds;        /* wall time inside kf_dist_step */
    double comm_seconds;        /* of which inside MPI calls (including waiting for other ranks) */
    uint64_t floats_reduced;    /* floats all-reduced (each rank's contribution; EKFAC's diagonals
                                   included) */
    uint64_t floats_gathered;   /* floats received from other ranks: inverses (inverses mode) or
                                   directions (directions mode) */
} kf_dist_stats;

KF_API kf_status kf_dist_get_stats(const kf_dist *dist, kf_dist_stats *stats);
KF_API kf_status kf_dist_reset_stats(kf_dist *dist);

/* Bytes held by the handle (besides the optimizer's own): the packed all-reduce buffer (the
 * gradients and the factors' upper triangles) and the all-gather buffer of the inverses (inverses
 * mode; it also carries EKFAC's diagonals) or of the directions (directions mode). */
KF_API kf_status kf_dist_memory_bytes(const kf_dist *dist, size_t *bytes);

#ifdef __cplusplus
}
#endif

#endif /* KRONFAC_DIST_H */
