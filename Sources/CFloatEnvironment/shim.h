/* Flush-to-zero for the calling thread: subnormal float results become 0 and subnormal inputs
 * are read as 0 (x86-64: MXCSR FTZ and DAZ; AArch64: FPCR.FZ). Training produces subnormals
 * routinely (Adam's second moments of units whose gradients vanish decay through them), and x86
 * processes them about a hundred times slower than normal numbers. */
#ifndef KRONFAC_FLOAT_ENVIRONMENT_H
#define KRONFAC_FLOAT_ENVIRONMENT_H

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* Returns 1 if the mode was set, 0 on other processors. */
static inline int kf_cli_flush_subnormals(void)
{
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(_mm_getcsr() | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return 1;
#elif defined(__aarch64__)
    unsigned long fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    fpcr |= 1ul << 24; /* FZ */
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
    return 1;
#else
    return 0;
#endif
}

#endif
