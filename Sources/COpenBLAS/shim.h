/* OpenBLAS's CBLAS header, which also declares openblas_get_corename and
 * openblas_get_num_threads (Debian: libopenblas-dev). */
#include <cblas.h>
