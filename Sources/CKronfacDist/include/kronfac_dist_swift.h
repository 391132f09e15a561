/* The MPI module as Swift sees it (package trait MPI): kronfac_dist.h's step over MPI_COMM_WORLD,
 * without <mpi.h>, so that the Swift side needs no MPI headers. Defined only when the trait is on. */
#ifndef KRONFAC_DIST_SWIFT_H
#define KRONFAC_DIST_SWIFT_H

#include "kronfac.h"

struct kf_dist;

/* MPI_Init unless done; the world's rank and size. Returns MPI's error code (0 = success). */
int kfs_mpi_start(int *rank, int *size);
/* MPI_Finalize unless done (call after every kf_dist is destroyed). */
void kfs_mpi_finish(void);
/* MPI_Abort on the world: ends every rank. */
void kfs_mpi_abort(int code);
/* The minimum of value over the world's ranks (collective). */
int kfs_mpi_min_int(int value);

/* kf_dist_create over MPI_COMM_WORLD, in the inverses mode or (directions != 0) the directions
 * mode; then kf_dist_step, kf_dist_destroy, kf_dist_last_error. */
kf_status kfs_dist_create_world(kf_optimizer *opt, int directions, struct kf_dist **out);
kf_status kfs_dist_step(struct kf_dist *dist, const kf_layer_tensors *layers, size_t num_layers,
                        size_t n_local);
void kfs_dist_destroy(struct kf_dist *dist);
const char *kfs_dist_last_error(const struct kf_dist *dist);

#endif
