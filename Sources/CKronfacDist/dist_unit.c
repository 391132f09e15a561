/* The Swift package's build of the MPI module kronfac_dist: csrc/src/dist.c itself, compiled with
 * KRONFAC_WITH_MPI only when the package trait MPI is enabled (`swift build --traits MPI`).
 * Without the trait SwiftPM still compiles this target (it builds every target), and both files
 * compile to nothing, so the default build needs no MPI. */
#include "../../csrc/src/dist.c"
