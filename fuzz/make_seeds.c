/* Writes the seed corpora: fuzz/corpus/checkpoint/ (real checkpoints of every algorithm after a
 * few steps, prefixed with the harness's flag byte) and fuzz/corpus/api/ (call sequences in the
 * encoding fuzz_api.c decodes). Run once by hand; its output is committed.
 *   make_seeds CORPUS_DIR */
#include "kronfac.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_seed(const char *dir, const char *name, uint8_t flag, const uint8_t *bytes,
                      size_t n, int prefix)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    if (prefix) {
        fputc(flag, f);
    }
    fwrite(bytes, 1, n, f);
    fclose(f);
    return 0;
}

static float rnd(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* An optimizer with two small layers (the first two match fuzz_checkpoint.c's reference), trained
 * for `steps` steps on random data, saved into a seed file. */
static int checkpoint_seed(const char *dir, kf_algorithm algo, int steps, int shared, int variant)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx, size = 0, written = 0;
    uint32_t seed = 7u + (uint32_t)algo * 31u + (uint32_t)variant;
    float w0[12], b0[3], gw0[12], gb0[3], w1[6], gw1[6], x[2 * 2 * 4], g[2 * 2 * 3];
    kf_layer_tensors t[2] = {{w0, 4, b0, gw0, 4, gb0}, {w1, 3, NULL, gw1, 3, NULL}};
    uint8_t *buf;
    char name[64];
    int rc;
    kf_optimizer_params_init(&p, algo);
    p.inverse_interval = 2;
    if (variant == 1) {
        p.momentum = 0.5f;
        p.weight_decay = 0.01f;
        p.kl_clip = 0.001f;
        p.stats_interval = 2;
    }
    if (kf_optimizer_create(&p, NULL, &opt) != KF_OK) {
        return 1;
    }
    kf_layer_params_init(&lp, 3, 4);
    lp.shared = (size_t)shared;
    lp.shared_mode = variant == 1 ? KF_SHARED_REDUCE : KF_SHARED_EXPAND;
    kf_optimizer_add_layer(opt, &lp, &idx);
    kf_layer_params_init(&lp, 2, 3);
    lp.bias = 0;
    lp.algorithm = algo == KF_ALGO_SGD ? KF_ALGO_ADAM : KF_ALGO_FOOF;
    kf_optimizer_add_layer(opt, &lp, &idx);
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) {
            x[i] = rnd(&seed);
        }
        for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
            g[i] = rnd(&seed);
        }
        for (size_t i = 0; i < 12; i++) {
            w0[i] = rnd(&seed);
            gw0[i] = rnd(&seed);
        }
        for (size_t i = 0; i < 6; i++) {
            w1[i] = rnd(&seed);
            gw1[i] = rnd(&seed);
        }
        for (size_t i = 0; i < 3; i++) {
            b0[i] = rnd(&seed);
            gb0[i] = rnd(&seed);
        }
        kf_optimizer_observe_activations(opt, 0, 2, x, 4);
        kf_optimizer_observe_gradients(opt, 0, 2, g, 3, 2.0f);
        kf_optimizer_observe_activations(opt, 1, 2, x, 3);
        kf_optimizer_observe_gradients(opt, 1, 2, g, 2, 2.0f);
        kf_optimizer_step(opt, t, 2);
    }
    kf_optimizer_checkpoint_size(opt, &size);
    buf = (uint8_t *)malloc(size);
    if (!buf || kf_optimizer_save(opt, buf, size, &written) != KF_OK) {
        free(buf);
        kf_optimizer_destroy(opt);
        return 1;
    }
    snprintf(name, sizeof name, "%s_s%d_r%d_v%d", kf_algorithm_name(algo), steps, shared, variant);
    rc = write_seed(dir, name, 0x05, buf, written, 1);
    kf_optimizer_destroy(opt);
    free(buf);
    return rc;
}

/* ---- call sequences for fuzz_api.c --------------------------------------------------------- */

typedef struct seq {
    uint8_t b[1024];
    size_t n;
} seq;

static void put(seq *s, int count, ...)
{
    va_list ap;
    va_start(ap, count);
    for (int i = 0; i < count && s->n < sizeof s->b; i++) {
        s->b[s->n++] = (uint8_t)va_arg(ap, int);
    }
    va_end(ap);
}

/* The decoder's byte order for each call (see fuzz_api.c). */
static void create(seq *s, kf_algorithm algo) { put(s, 5, 16, (int)algo + 1, 0xFF, 1, 1); }
static void add_layer(seq *s, int out, int in) { put(s, 7, 17, out - 1, in - 1, 1, 1, 1, 1); }
static void observe(seq *s, int grads, int layer) { put(s, 7, grads ? 21 : 19, 1, 1, layer, 0, 0, 9); }
static void step(seq *s, int layers, int bias)
{
    put(s, 1, 24);
    for (int i = 0; i < layers; i++) {
        put(s, 6, 0, 0, 0, 3, 0, 4);
        if (bias) {
            put(s, 4, 0, 5, 0, 6);
        }
    }
    put(s, 1, 0);
}

static int api_seed(const char *dir, kf_algorithm algo)
{
    seq s;
    char name[64];
    memset(&s, 0, sizeof s);
    create(&s, algo);
    add_layer(&s, 3, 4);
    add_layer(&s, 2, 5);
    for (int k = 0; k < 3; k++) {
        observe(&s, 0, 0);
        observe(&s, 1, 0);
        observe(&s, 0, 1);
        observe(&s, 1, 1);
        step(&s, 2, 1);
    }
    put(&s, 4, 28, 0, 0, 0);         /* queries, factor A of layer 0 */
    put(&s, 2, 29, 0);               /* restore the same bytes */
    put(&s, 5, 29, 1, 7, 9, 3);      /* truncated and flipped checkpoints */
    put(&s, 2, 29, 2);               /* create from checkpoint */
    put(&s, 4, 27, 0, 1, 40);        /* damping */
    observe(&s, 0, 0);
    observe(&s, 1, 0);
    observe(&s, 0, 1);
    observe(&s, 1, 1);
    step(&s, 2, 1);
    snprintf(name, sizeof name, "seq_%s", kf_algorithm_name(algo));
    return write_seed(dir, name, 0, s.b, s.n, 0);
}

/* Every primitive once, with small shapes and ordinary values. */
static int primitives_seed(const char *dir, int variant)
{
    seq s;
    char name[64];
    memset(&s, 0, sizeof s);
    for (int op = 0; op < 16; op++) {
        put(&s, 1, op);
        if (op == 0) {
            put(&s, 1, 1); /* the context's allocator: not failing */
        }
        for (int k = 0; k < 24; k++) {
            put(&s, 1, variant == 0 ? 3 + (k % 5) : (k * 37 + op * 11) & 0xff);
        }
    }
    snprintf(name, sizeof name, "primitives_%d", variant);
    return write_seed(dir, name, 0, s.b, s.n, 0);
}

int main(int argc, char **argv)
{
    char ck[1024], api[1024];
    int rc = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds CORPUS_DIR\n");
        return 2;
    }
    snprintf(ck, sizeof ck, "%s/checkpoint", argv[1]);
    snprintf(api, sizeof api, "%s/api", argv[1]);
    for (int a = KF_ALGO_SGD; a <= KF_ALGO_EKFAC; a++) {
        rc |= checkpoint_seed(ck, (kf_algorithm)a, a == KF_ALGO_KFAC ? 0 : 3, 1, 0);
        rc |= checkpoint_seed(ck, (kf_algorithm)a, 4, 2, 1);
        rc |= api_seed(api, (kf_algorithm)a);
    }
    rc |= primitives_seed(api, 0);
    rc |= primitives_seed(api, 1);
    return rc;
}
