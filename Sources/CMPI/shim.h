/* Open MPI's C interface for the Swift package's MPI trait (pkg-config ompi-c; Debian:
 * openmpi-bin libopenmpi-dev). Only CKronfacDist's C sources use it. */
#include <mpi.h>
