/* K-FAC-expand against K-FAC-reduce (Eschenhagen et al. 2023): the time and memory of one step's
 * statistics for a layer with a shared axis, measured in one run.
 *
 *   bench_shared [--repeats 7] [--threads 2]
 *
 * Layers: a 3x3 convolution (batch 32, 64 -> 64 channels, 32x32 input, padding 1: R = 1024
 * locations, in = 576) and a sequence layer (batch 16, 512 tokens, 768 -> 768). For each, the
 * activation factor (from the patch or token rows) and the gradient factor, in expand and reduce
 * mode, through kf_activation_factor and kf_gradient_factor; the counted flops are N R in^2 for
 * expand and N R in + N in^2 for reduce (each factor). Memory: the rows the factor reads, and the
 * workspace the mode adds (reduce keeps the N collapsed rows). */
#define _POSIX_C_SOURCE 200809L
#include <kronfac.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float *fill(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)((double)((i * 2654435761u) % 2000) / 1000.0 - 1.0);
    }
    return p;
}

typedef struct layer {
    const char *name;
    size_t n, r, in, out;
} layer;

int main(int argc, char **argv)
{
    static const layer layers[2] = {{"conv 3x3 64->64, 32x32, batch 32", 32, 1024, 576, 64},
                                    {"sequence 768->768, 512 tokens, batch 16", 16, 512, 768, 768}};
    int repeats = 7, threads = 2;
    kf_context *ctx = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc) {
            repeats = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--repeats R] [--threads T]\n", argv[0]);
            return 2;
        }
    }
    if (repeats < 1 || repeats > 64) {
        return 2;
    }
    kf_blas_set_threads(threads);
    if (kf_context_create(NULL, &ctx) != KF_OK) {
        return 1;
    }
    printf("kronfac %s | %s | BLAS threads %d | median of %d\n", kf_version(), kf_build_info(),
           threads, repeats);
    printf("%-42s %-7s %10s %10s %9s %12s %12s\n", "layer", "mode", "A ms", "G ms", "GFLOP/s",
           "rows read", "workspace");
    for (int li = 0; li < 2; li++) {
        const layer *L = &layers[li];
        size_t rows = L->n * L->r, da = L->in + 1;
        float *x = fill(rows * L->in), *g = fill(rows * L->out);
        float *a = (float *)malloc(da * da * sizeof(float));
        float *gf = (float *)malloc(L->out * L->out * sizeof(float));
        double t_mode[2] = {0, 0};
        if (!a || !gf) {
            return 2;
        }
        for (int mode = 0; mode <= 1; mode++) {
            double ta[64], tg[64], flops;
            size_t ws_before = 0, ws_after = 0;
            kf_context_memory_bytes(ctx, &ws_before);
            for (int r = -1; r < repeats; r++) { /* one warm-up */
                double t0 = now();
                if (kf_activation_factor(ctx, L->n, L->r, L->in, x, L->in, 1, (kf_shared_mode)mode,
                                         a, da) != KF_OK) {
                    fprintf(stderr, "%s\n", kf_context_last_error(ctx));
                    return 1;
                }
                double t1 = now();
                if (kf_gradient_factor(ctx, L->n, L->r, L->out, g, L->out, (kf_shared_mode)mode,
                                       mode == KF_SHARED_EXPAND ? L->r : 1, 1.0f, gf,
                                       L->out) != KF_OK) {
                    fprintf(stderr, "%s\n", kf_context_last_error(ctx));
                    return 1;
                }
                double t2 = now();
                if (r >= 0) {
                    ta[r] = t1 - t0;
                    tg[r] = t2 - t1;
                }
            }
            kf_context_memory_bytes(ctx, &ws_after);
            qsort(ta, (size_t)repeats, sizeof(double), cmp);
            qsort(tg, (size_t)repeats, sizeof(double), cmp);
            if (mode == KF_SHARED_EXPAND) {
                flops = (double)rows * ((double)L->in * L->in + (double)L->out * L->out);
            } else {
                flops = (double)rows * (double)(L->in + L->out) +
                        (double)L->n * ((double)L->in * L->in + (double)L->out * L->out);
            }
            t_mode[mode] = ta[repeats / 2] + tg[repeats / 2];
            printf("%-42s %-7s %10.2f %10.2f %9.1f %10.1f MB %10.2f MB\n", L->name,
                   mode ? "reduce" : "expand", 1e3 * ta[repeats / 2], 1e3 * tg[repeats / 2],
                   flops / t_mode[mode] / 1e9,
                   (double)rows * (double)(L->in + L->out) * 4.0 / 1e6,
                   mode == KF_SHARED_REDUCE
                       ? (double)L->n * (double)(L->in > L->out ? L->in : L->out) * 4.0 / 1e6
                       : 0.0);
            (void)ws_before;
            (void)ws_after;
        }
        printf("%-42s reduce is %.1fx faster than expand\n", "", t_mode[0] / t_mode[1]);
        free(x);
        free(g);
        free(a);
        free(gf);
    }
    kf_context_destroy(ctx);
    return 0;
}
