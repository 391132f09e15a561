/* What Swift needs from MPI besides kronfac_dist.h: Open MPI's MPI_COMM_WORLD is a macro over a
 * global object, which Swift cannot import, so these small functions stand in for it. */
#include "kronfac_dist_swift.h"

#if defined(KRONFAC_WITH_MPI)

#include "kronfac_dist.h"

int kfs_mpi_start(int *rank, int *size)
{
    int flag = 0, rc = MPI_SUCCESS;
    MPI_Initialized(&flag);
    if (!flag) {
        rc = MPI_Init(NULL, NULL);
    }
    if (rc == MPI_SUCCESS) {
        MPI_Comm_rank(MPI_COMM_WORLD, rank);
        MPI_Comm_size(MPI_COMM_WORLD, size);
    }
    return rc;
}

void kfs_mpi_finish(void)
{
    int flag = 0, done = 0;
    MPI_Initialized(&flag);
    MPI_Finalized(&done);
    if (flag && !done) {
        MPI_Finalize();
    }
}

void kfs_mpi_abort(int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
}

int kfs_mpi_min_int(int value)
{
    int all = value;
    MPI_Allreduce(&value, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

kf_status kfs_dist_create_world(kf_optimizer *opt, int directions, struct kf_dist **out)
{
    kf_dist_params p;
    kf_dist_params_init(&p);
    p.mode = directions ? KF_DIST_BROADCAST_DIRECTIONS : KF_DIST_BROADCAST_INVERSES;
    return kf_dist_create(opt, MPI_COMM_WORLD, &p, out);
}

kf_status kfs_dist_step(struct kf_dist *dist, const kf_layer_tensors *layers, size_t num_layers,
                        size_t n_local)
{
    return kf_dist_step(dist, layers, num_layers, n_local);
}

void kfs_dist_destroy(struct kf_dist *dist)
{
    kf_dist_destroy(dist);
}

const char *kfs_dist_last_error(const struct kf_dist *dist)
{
    return kf_dist_last_error(dist);
}

#else
typedef int kfs__mpi_unused;
#endif
