/* zlib for the Swift data-set readers (gzip-compressed IDX files). */
#include <zlib.h>
