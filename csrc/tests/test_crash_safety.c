/* Crash-safe checkpoints.
 *
 * 1. A child process saves a large optimizer over and over (kf_optimizer_save_file: PATH.tmp,
 *    flush, fsync, rename); the parent SIGKILLs it at random moments, many times. After every kill
 *    the file at PATH must load (kf_optimizer_create_from_file) to exactly one of the states the
 *    child saved - the last one it reported finished, or the one it was finishing - or be absent
 *    before the first rename. A torn PATH.tmp left behind must be refused, never crash.
 * 2. A good checkpoint truncated at every offset, and with every single byte changed, is refused
 *    with KF_ERR_FORMAT by restore and by create_from_checkpoint, and the optimizer is unchanged.
 * POSIX: fork, kill, waitpid, pipes, nanosleep. */
#define _POSIX_C_SOURCE 200809L

#include "kf_test.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CK_PATH "test_crash_safety.kfck"
#define CK_TMP CK_PATH ".tmp"

/* The state the child saves as number k: one fixed trained optimizer with learning rate lr(k). */
static float lr_of(long k) { return 1e-3f * (float)(k + 1); }

/* A FOOF and a K-FAC layer, wide enough that one save takes a few milliseconds, after one step. */
static kf_optimizer *big_optimizer(size_t width)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx, n = 8;
    kf_rng rng = {99};
    float *x = (float *)kf_test_xmalloc(n * width * sizeof(float));
    float *w = (float *)kf_test_xmalloc(width * width * sizeof(float));
    float *gw = (float *)kf_test_xmalloc(width * width * sizeof(float));
    float *b = (float *)kf_test_xmalloc(width * sizeof(float));
    float *gb = (float *)kf_test_xmalloc(width * sizeof(float));
    float g[8 * 4];
    float w2[4 * 8], gw2[4 * 8], b2[4], gb2[4];
    kf_layer_tensors t[2] = {{w, width, b, gw, width, gb}, {w2, 8, b2, gw2, 8, gb2}};
    kf_optimizer_params_init(&p, KF_ALGO_FOOF);
    if (kf_optimizer_create(&p, NULL, &opt) != KF_OK) {
        exit(2);
    }
    kf_layer_params_init(&lp, width, width);
    kf_optimizer_add_layer(opt, &lp, &idx);
    kf_layer_params_init(&lp, 4, 8);
    lp.algorithm = KF_ALGO_KFAC;
    kf_optimizer_add_layer(opt, &lp, &idx);
    kf_rng_fill(&rng, x, n * width);
    kf_rng_fill(&rng, w, width * width);
    kf_rng_fill(&rng, gw, width * width);
    kf_rng_fill(&rng, b, width);
    kf_rng_fill(&rng, gb, width);
    kf_rng_fill(&rng, g, sizeof g / sizeof g[0]);
    kf_rng_fill(&rng, w2, 32);
    kf_rng_fill(&rng, gw2, 32);
    kf_rng_fill(&rng, b2, 4);
    kf_rng_fill(&rng, gb2, 4);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 0, n, x, width), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_activations(opt, 1, n, x, width), KF_OK);
    CHECK_STATUS(kf_optimizer_observe_gradients(opt, 1, n, g, 4, (float)n), KF_OK);
    CHECK_STATUS(kf_optimizer_step(opt, t, 2), KF_OK);
    free(x);
    free(w);
    free(gw);
    free(b);
    free(gb);
    return opt;
}

static unsigned char *save_mem(const kf_optimizer *opt, size_t *size)
{
    size_t written = 0;
    unsigned char *buf;
    if (kf_optimizer_checkpoint_size(opt, size) != KF_OK) {
        exit(2);
    }
    buf = (unsigned char *)kf_test_xmalloc(*size);
    if (kf_optimizer_save(opt, buf, *size, &written) != KF_OK || written != *size) {
        exit(2);
    }
    return buf;
}

/* The child: save state k, k+1, ... forever, reporting each finished save on the pipe. */
static void writer(kf_optimizer *opt, long k, int fd)
{
    for (;; k++) {
        kf_optimizer_set_learning_rate(opt, lr_of(k));
        if (kf_optimizer_save_file(opt, CK_PATH) != KF_OK) {
            _exit(3);
        }
        if (write(fd, &k, sizeof k) != (ssize_t)sizeof k) {
            _exit(4);
        }
    }
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_us(long us)
{
    struct timespec ts;
    ts.tv_sec = us / 1000000;
    ts.tv_nsec = (us % 1000000) * 1000;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void test_kill_during_save(void)
{
    const int kills = 30;
    kf_optimizer *opt = big_optimizer(400);
    unsigned char *expect;
    size_t expect_size;
    double t0, save_ms;
    long next_k = 0, last_done = -1;
    int found_done = 0, found_in_progress = 0, found_absent = 0, torn_tmp = 0, bad = 0;
    kf_rng rng = {2024};
    remove(CK_PATH);
    remove(CK_TMP);
    /* How long one save takes here, to spread the kills over whole saves. */
    t0 = now_ms();
    CHECK_STATUS(kf_optimizer_save_file(opt, CK_PATH), KF_OK);
    save_ms = now_ms() - t0;
    remove(CK_PATH);
    for (int round = 0; round < kills; round++) {
        int fds[2];
        pid_t pid;
        long done = -1, k, delay_us;
        kf_optimizer *loaded = NULL;
        kf_status s;
        if (pipe(fds) != 0) {
            CHECK(!"pipe");
            return;
        }
        pid = fork();
        if (pid < 0) {
            CHECK(!"fork");
            return;
        }
        if (pid == 0) {
            close(fds[0]);
            writer(opt, next_k, fds[1]);
        }
        close(fds[1]);
        /* Kill somewhere within the first few saves, at a random point of a save. */
        delay_us = (long)((kf_rng_next(&rng) % 1000) * (3.0 * save_ms + 1.0));
        sleep_us(delay_us);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        /* What did the child finish? (The pipe holds every finished k.) */
        while (read(fds[0], &k, sizeof k) == (ssize_t)sizeof k) {
            done = k;
        }
        close(fds[0]);
        if (done >= 0) {
            last_done = done;
        }
        /* The file: absent only before any save finished; else state last_done or the next. */
        s = kf_optimizer_create_from_file(CK_PATH, NULL, &loaded);
        if (s == KF_ERR_IO && !file_exists(CK_PATH)) {
            if (last_done < 0) {
                found_absent++;
            } else {
                bad++;
                fprintf(stderr, "round %d: %s vanished after save %ld finished\n", round, CK_PATH,
                        last_done);
            }
        } else if (s != KF_OK) {
            bad++;
            fprintf(stderr, "round %d: %s does not load: %s\n", round, CK_PATH, kf_status_string(s));
        } else {
            kf_optimizer_params p;
            size_t got_size;
            unsigned char *got;
            long which = -1;
            kf_optimizer_get_params(loaded, &p);
            /* next_k == last_done + 1 at every round's start, so these are the only two. */
            for (long c = last_done < 0 ? 0 : last_done; c <= last_done + 1; c++) {
                if (p.learning_rate == lr_of(c)) {
                    which = c;
                }
            }
            /* Byte-for-byte the state the child had for that k. */
            got = save_mem(loaded, &got_size);
            if (which >= 0) {
                kf_optimizer_set_learning_rate(opt, lr_of(which));
                expect = save_mem(opt, &expect_size);
                if (expect_size != got_size || memcmp(expect, got, got_size) != 0) {
                    which = -1;
                }
                free(expect);
            }
            if (which < 0) {
                bad++;
                fprintf(stderr, "round %d: %s holds lr %g, not state %ld or %ld\n", round, CK_PATH,
                        (double)p.learning_rate, last_done, last_done + 1);
            } else if (which == last_done) {
                found_done++;
            } else {
                found_in_progress++;
                last_done = which;
            }
            free(got);
            kf_optimizer_destroy(loaded);
        }
        /* A temporary left behind may be torn: it must be refused cleanly, or be whole. */
        if (file_exists(CK_TMP)) {
            loaded = NULL;
            s = kf_optimizer_create_from_file(CK_TMP, NULL, &loaded);
            CHECK(s == KF_OK || s == KF_ERR_FORMAT);
            torn_tmp += s == KF_ERR_FORMAT;
            kf_optimizer_destroy(loaded);
        }
        next_k = last_done + 1;
    }
    CHECK(bad == 0);
    CHECK(found_done + found_in_progress + found_absent == kills);
    CHECK(found_done + found_in_progress > 0); /* the kills did not all land before any save */
    printf("test_crash_safety: %d kills during saves (%.1f ms each): %d found the last finished "
           "save, %d the save in progress, %d before the first save; %d torn temporaries refused; "
           "%d bad\n",
           kills, save_ms, found_done, found_in_progress, found_absent, torn_tmp, bad);
    remove(CK_PATH);
    remove(CK_TMP);
    kf_optimizer_destroy(opt);
}

/* ---- truncation and corruption ------------------------------------------------------------- */

static kf_optimizer *small_optimizer(kf_algorithm algo)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL;
    kf_layer_params lp;
    size_t idx;
    kf_rng rng = {5};
    float x[3 * 2 * 4], g[3 * 2 * 3], w[12], b[3], gw[12], gb[3], w2[6], gw2[6];
    kf_layer_tensors t[2] = {{w, 4, b, gw, 4, gb}, {w2, 3, NULL, gw2, 3, NULL}};
    kf_optimizer_params_init(&p, algo);
    p.momentum = 0.5f;
    if (kf_optimizer_create(&p, NULL, &opt) != KF_OK) {
        exit(2);
    }
    kf_layer_params_init(&lp, 3, 4);
    lp.shared = 2;
    kf_optimizer_add_layer(opt, &lp, &idx);
    kf_layer_params_init(&lp, 2, 3);
    lp.bias = 0;
    lp.algorithm = KF_ALGO_ADAM;
    kf_optimizer_add_layer(opt, &lp, &idx);
    for (int s = 0; s < 2; s++) {
        kf_rng_fill(&rng, x, sizeof x / sizeof x[0]);
        kf_rng_fill(&rng, g, sizeof g / sizeof g[0]);
        kf_rng_fill(&rng, w, 12);
        kf_rng_fill(&rng, gw, 12);
        kf_rng_fill(&rng, b, 3);
        kf_rng_fill(&rng, gb, 3);
        kf_rng_fill(&rng, w2, 6);
        kf_rng_fill(&rng, gw2, 6);
        kf_optimizer_observe_activations(opt, 0, 3, x, 4);
        kf_optimizer_observe_gradients(opt, 0, 3, g, 3, 3.0f);
        CHECK_STATUS(kf_optimizer_step(opt, t, 2), KF_OK);
    }
    return opt;
}

static void test_truncate_and_flip(void)
{
    long refused = 0, wrong = 0;
    for (int a = KF_ALGO_SGD; a <= KF_ALGO_EKFAC; a++) {
        kf_optimizer *opt = small_optimizer((kf_algorithm)a), *target = small_optimizer((kf_algorithm)a);
        size_t size, tsize;
        unsigned char *good = save_mem(opt, &size), *bad = (unsigned char *)kf_test_xmalloc(size);
        unsigned char *before;
        int ok = 1;
        /* The target differs from the checkpoint (one more learning-rate change), so a restore
         * that wrote anything would show. */
        kf_optimizer_set_learning_rate(target, 0.125f);
        before = save_mem(target, &tsize);
        for (size_t cut = 0; cut < size; cut++) {
            kf_optimizer *made = NULL;
            unsigned char *now;
            size_t nsize;
            ok &= kf_optimizer_restore(target, good, cut) == KF_ERR_FORMAT;
            ok &= kf_optimizer_create_from_checkpoint(good, cut, NULL, &made) == KF_ERR_FORMAT;
            ok &= made == NULL;
            now = save_mem(target, &nsize);
            ok &= nsize == tsize && memcmp(now, before, tsize) == 0;
            free(now);
            refused += 2;
        }
        for (size_t at = 0; at < size; at++) {
            for (int v = 0; v < 3; v++) {
                kf_optimizer *made = NULL;
                unsigned char *now;
                size_t nsize;
                memcpy(bad, good, size);
                bad[at] ^= (unsigned char)(v == 0 ? 0x01 : v == 1 ? 0x80 : 0xff);
                ok &= kf_optimizer_restore(target, bad, size) == KF_ERR_FORMAT;
                ok &= kf_optimizer_create_from_checkpoint(bad, size, NULL, &made) == KF_ERR_FORMAT;
                ok &= made == NULL;
                now = save_mem(target, &nsize);
                ok &= nsize == tsize && memcmp(now, before, tsize) == 0;
                free(now);
                refused += 2;
            }
        }
        if (!ok) {
            wrong++;
            fprintf(stderr, "%s: a truncated or corrupted checkpoint was not refused cleanly\n",
                    kf_algorithm_name((kf_algorithm)a));
        }
        CHECK(ok);
        /* The good one still restores, and the error message was set on the way. */
        CHECK_STATUS(kf_optimizer_restore(target, good, size), KF_OK);
        free(good);
        free(bad);
        free(before);
        kf_optimizer_destroy(opt);
        kf_optimizer_destroy(target);
    }
    printf("test_crash_safety: %ld truncated or corrupted checkpoints refused with KF_ERR_FORMAT\n",
           refused);
    CHECK(wrong == 0);
}

/* Truncated files, an empty file, a missing file and a directory. */
static void test_files(void)
{
    kf_optimizer *opt = small_optimizer(KF_ALGO_KFAC), *made = NULL;
    size_t size;
    unsigned char *good = save_mem(opt, &size);
    const char *path = "test_crash_safety_trunc.kfck";
    for (size_t cut = 0; cut < size; cut += 1 + cut / 3) {
        FILE *f = fopen(path, "wb");
        CHECK(f != NULL);
        if (!f) {
            break;
        }
        fwrite(good, 1, cut, f);
        fclose(f);
        made = NULL;
        CHECK_STATUS(kf_optimizer_create_from_file(path, NULL, &made), KF_ERR_FORMAT);
        CHECK(made == NULL);
        CHECK_STATUS(kf_optimizer_restore_file(opt, path), KF_ERR_FORMAT);
    }
    remove(path);
    CHECK_STATUS(kf_optimizer_create_from_file("no/such/dir/x.kfck", NULL, &made), KF_ERR_IO);
    CHECK_STATUS(kf_optimizer_restore_file(opt, "no/such/dir/x.kfck"), KF_ERR_IO);
    CHECK_STATUS(kf_optimizer_save_file(opt, "no/such/dir/x.kfck"), KF_ERR_IO);
    /* A directory is not a checkpoint: a clear error, not a crash or a giant allocation (which
     * aborts under AddressSanitizer: hence a child process). */
    {
        pid_t pid = fork();
        int status = 0;
        if (pid == 0) {
            kf_status s = kf_optimizer_create_from_file(".", NULL, &made);
            if (!(s == KF_ERR_IO || s == KF_ERR_FORMAT)) {
                fprintf(stderr, "create_from_file(\".\") returned %s\n", kf_status_string(s));
            }
            _exit(s == KF_ERR_IO || s == KF_ERR_FORMAT ? 0 : 1);
        }
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    free(good);
    kf_optimizer_destroy(opt);
}

/* A checkpoint whose checksum is right but whose first layer claims to be 32000 x 31999: loading it
 * must be refused without asking for memory the file cannot describe (the library otherwise
 * allocates the layer's state, gigabytes, before noticing the file is 400 bytes long). The layer
 * record is found by calibration: it starts where an empty optimizer's checksum does, with u64
 * out and u64 in (the layout of checkpoint.c). */
typedef struct counting {
    size_t largest;
} counting;

static void *count_alloc(size_t size, void *ctx)
{
    counting *c = (counting *)ctx;
    if (size > c->largest) {
        c->largest = size;
    }
    return size > ((size_t)64 << 20) ? NULL : malloc(size); /* refuse, do not really take it */
}

static void count_free(void *p, size_t size, void *ctx)
{
    (void)size;
    (void)ctx;
    free(p);
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void test_hostile_header(void)
{
    kf_optimizer_params p;
    kf_optimizer *opt, *empty = NULL, *made = NULL;
    counting c = {0};
    kf_allocator al = {count_alloc, count_free, &c};
    size_t size, base = 0, at;
    unsigned char *ck;
    uint64_t out, in, sum;
    kf_status s;
    opt = small_optimizer(KF_ALGO_FOOF);
    ck = save_mem(opt, &size);
    kf_optimizer_get_params(opt, &p);
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &empty), KF_OK);
    kf_optimizer_checkpoint_size(empty, &base);
    at = base - 8;
    memcpy(&out, ck + at, 8);
    memcpy(&in, ck + at + 8, 8);
    CHECK(out == 3 && in == 4); /* the calibration found the first layer's shape */
    if (out == 3 && in == 4) {
        out = 32000;
        in = 31999;
        memcpy(ck + at, &out, 8);
        memcpy(ck + at + 8, &in, 8);
        sum = fnv1a(ck, size - 8);
        memcpy(ck + size - 8, &sum, 8);
        s = kf_optimizer_create_from_checkpoint(ck, size, &al, &made);
        CHECK(s == KF_ERR_FORMAT);
        CHECK(made == NULL);
        CHECK(c.largest <= 64 * size + ((size_t)1 << 20));
        if (c.largest > 64 * size + ((size_t)1 << 20)) {
            fprintf(stderr, "create_from_checkpoint of a %zu-byte checkpoint asked for %zu bytes at "
                    "once (and returned %s)\n", size, c.largest, kf_status_string(s));
        }
        kf_optimizer_destroy(made);
    }
    free(ck);
    kf_optimizer_destroy(empty);
    kf_optimizer_destroy(opt);
}

/* A checkpoint with a valid checksum whose state holds NaN (here the momentum of a 1 x 1 SGD layer,
 * its only buffer, the last float before the checksum) must be refused: restored, the next step
 * writes NaN into the parameters and returns KF_OK. */
static void test_non_finite_state(void)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL, *back = NULL;
    kf_layer_params lp;
    size_t idx, size;
    unsigned char *ck;
    float nan_value = NAN, w = 1.0f, g = 0.5f;
    kf_layer_tensors t = {&w, 1, NULL, &g, 1, NULL};
    uint64_t sum;
    kf_status s;
    kf_optimizer_params_init(&p, KF_ALGO_SGD); /* momentum 0.9 */
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
    kf_layer_params_init(&lp, 1, 1);
    lp.bias = 0;
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
    ck = save_mem(opt, &size);
    memcpy(ck + size - 12, &nan_value, 4);
    sum = fnv1a(ck, size - 8);
    memcpy(ck + size - 8, &sum, 8);
    s = kf_optimizer_create_from_checkpoint(ck, size, NULL, &back);
    CHECK(s == KF_ERR_FORMAT);
    if (s == KF_OK) {
        kf_status st = kf_optimizer_step(back, &t, 1);
        fprintf(stderr, "a checkpoint holding NaN momentum was accepted; the next step returned %s "
                "and left the weight %g\n", kf_status_string(st), (double)w);
        CHECK(st != KF_OK || isfinite(w));
    }
    CHECK_STATUS(kf_optimizer_restore(opt, ck, size), KF_ERR_FORMAT);
    kf_optimizer_destroy(back);
    kf_optimizer_destroy(opt);
    free(ck);
}

/* Factors are written symmetric (the optimizer keeps their lower triangles and writes both from
 * it): a checkpoint with a valid checksum whose factor is not exactly symmetric is a state the
 * library never writes, and is refused; the same change made to both triangles is accepted. The
 * layer is FOOF 1 x 2 without bias: momentum (2 floats), A (2 x 2), its inverse (2 x 2). */
static void test_asymmetric_factor(void)
{
    kf_optimizer_params p;
    kf_optimizer *opt = NULL, *back = NULL;
    kf_layer_params lp;
    size_t idx, size;
    unsigned char *ck;
    float v = 0.25f;
    uint64_t sum;
    kf_optimizer_params_init(&p, KF_ALGO_FOOF);
    CHECK_STATUS(kf_optimizer_create(&p, NULL, &opt), KF_OK);
    kf_layer_params_init(&lp, 1, 2);
    lp.bias = 0;
    CHECK_STATUS(kf_optimizer_add_layer(opt, &lp, &idx), KF_OK);
    ck = save_mem(opt, &size);
    memcpy(ck + size - 8 - 32 + 4, &v, 4); /* A[0][1] */
    sum = fnv1a(ck, size - 8);
    memcpy(ck + size - 8, &sum, 8);
    CHECK_STATUS(kf_optimizer_create_from_checkpoint(ck, size, NULL, &back), KF_ERR_FORMAT);
    CHECK_STATUS(kf_optimizer_restore(opt, ck, size), KF_ERR_FORMAT);
    CHECK(strstr(kf_optimizer_last_error(opt), "asymmetric") != NULL);
    memcpy(ck + size - 8 - 32 + 8, &v, 4); /* A[1][0] too */
    sum = fnv1a(ck, size - 8);
    memcpy(ck + size - 8, &sum, 8);
    CHECK_STATUS(kf_optimizer_restore(opt, ck, size), KF_OK);
    kf_optimizer_destroy(back);
    kf_optimizer_destroy(opt);
    free(ck);
}

int main(void)
{
    test_hostile_header();
    test_non_finite_state();
    test_asymmetric_factor();
    test_truncate_and_flip();
    test_files();
    test_kill_during_save();
    return kf_test_finish("test_crash_safety");
}
