/* Private helpers shared by the core's source files: never installed, never in a module map. */
#ifndef KF_INTERNAL_H
#define KF_INTERNAL_H

#include "kronfac.h"

#include <stddef.h>

#define KF_MSG_CAP 256

/* A last-error message buffer, embedded in every handle. */
typedef struct kf_errbuf {
    char msg[KF_MSG_CAP];
} kf_errbuf;

/* Formats the message into e (when e is not NULL) and returns status, so that validation reads
 * `return kf__fail(&ctx->err, KF_ERR_SHAPE, "lda (%zu) < k (%zu)", lda, k);`. */
kf_status kf__fail(kf_errbuf *e, kf_status status, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void kf__clear(kf_errbuf *e);
/* Prefixes the message in e with "fn: " and returns status (for messages set by the checks). */
kf_status kf__prefix(kf_errbuf *e, kf_status status, const char *fn);

/* Allocation through a (possibly default) allocator; sizes are tracked by the caller. */
void *kf__alloc(const kf_allocator *a, size_t size);
void kf__free(const kf_allocator *a, void *p, size_t size);
/* *out = x * y (and + z); 0 on overflow. */
int kf__mul_size(size_t x, size_t y, size_t *out);

struct kf_context {
    kf_allocator alloc;
    kf_errbuf err;
    void *work;        /* scratch workspace, 64-byte aligned by the allocator's guarantee */
    size_t work_bytes;
};

/* Returns scratch of at least `bytes` (grown through the allocator) or NULL after setting
 * KF_ERR_OUT_OF_MEMORY in ctx->err. The contents are not preserved across calls. */
void *kf__ctx_work(kf_context *ctx, size_t bytes);

/* Carves `bytes` from a scratch cursor, keeping 64-byte alignment for the next piece. */
void *kf__carve(unsigned char **cursor, size_t bytes);
#define KF_ALIGN_UP(x) (((x) + (size_t)63) & ~(size_t)63)

/* Workspace-taking versions of the numerical primitives, shared by the public functions and the
 * optimizer (which plans its memory up front). They validate nothing but the numbers: NaN/Inf,
 * positive definiteness, convergence. Scratch must hold the bytes the _scratch function returns,
 * 64-byte aligned. On error the outputs are untouched. */
size_t kf__inverse_scratch(size_t n);
kf_status kf__damped_inverse_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float damping,
                                kf_precision precision, float *inv, size_t ldinv,
                                float *jitter_used, void *scratch);
/* The same from f's lower triangle only (the optimizer's factors: see kf__activation_factor_ws). */
kf_status kf__damped_inverse_lower_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf,
                                      float damping, kf_precision precision, float *inv,
                                      size_t ldinv, float *jitter_used, void *scratch);
/* The damped factor's Cholesky factor L (F + damping I = L L^T, same jitter chain and precision
 * rules as the inverse; scratch of kf__cholesky_scratch(n)) in the blocked form the solves below
 * use: with Bd the KF_CHOL_NB x KF_CHOL_NB diagonal blocks of L and U = L Bd^{-1}, the blocks
 * below the diagonal hold those of U, the diagonal blocks hold (Bd_J^T Bd_J)^{-1} (symmetric), and
 * the blocks above are zero. Factor + two solves cost n^3/3 + 2 m n^2 flops against
 * n^3 + 2 m n^2 for the explicit inverse and a product, and the solves run as GEMMs. Unlike the
 * other primitives it works in place in lb, whose contents are unspecified after an error. */
#define KF_CHOL_NB 128
size_t kf__cholesky_scratch(size_t n);
kf_status kf__damped_cholesky_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float damping,
                                 kf_precision precision, float *lb, size_t ldl, float *jitter_used,
                                 void *scratch);
/* X (m x d) <- X U^{-T} on the columns of blocks [b0, b1) (KF_CHOL_NB wide), U the unit
 * block-lower part of such a factor; inverse.c's factorisation uses it too. */
void kf__unit_solve_rt(size_t m, size_t d, const float *lb, size_t ldl, float *x, size_t ldx,
                       size_t b0, size_t b1);
/* X (m x d) <- X (L L^T)^{-1}, in place; tmp holds m * min(d, KF_CHOL_NB) floats. */
void kf__chol_solve_right(size_t m, size_t d, const float *lb, size_t ldl, float *x, size_t ldx,
                          float *tmp);
/* X (d x m) <- (L L^T)^{-1} X, in place; tmp holds min(d, KF_CHOL_NB) * m floats. */
void kf__chol_solve_left(size_t d, size_t m, const float *lb, size_t ldl, float *x, size_t ldx,
                         float *tmp);
size_t kf__eig_scratch(size_t n);
kf_status kf__sym_eig_ws(kf_errbuf *e, size_t n, const float *f, size_t ldf, float *w, float *q,
                         size_t ldq, void *scratch);
/* Trace-norm pi; 1 when a trace is <= 0 or not finite. */
float kf__pi(size_t dim_a, const float *a, size_t lda, size_t dim_g, const float *g, size_t ldg);
size_t kf__eigenbasis_scratch(size_t out, size_t dim_a);
kf_status kf__eigenbasis_apply_ws(kf_errbuf *e, size_t out, size_t dim_a, const float *v,
                                  size_t ldv, const float *q_g, size_t ldqg, const float *eig_g,
                                  const float *q_a, size_t ldqa, const float *eig_a,
                                  const float *s, size_t lds, float damping, float *d, size_t ldd,
                                  void *scratch);
/* Workspace bytes for every primitive on factors up to d and batches up to `rows` rows. */
size_t kf__context_reserve_bytes(size_t d, size_t rows);
/* The factor computations without validation. work: n * in (activations) or n * out (gradients)
 * floats, used only in reduce mode with r > 1. alpha = scale^2 / (n R'). With prev (the moving
 * average, dim x dim contiguous, of which only the lower triangle is read) the factor comes out
 * folded, keep * prev + c * (this batch's factor), in the same pass, and only in its lower
 * triangle (no mirror pass: the optimizer reads factors' lower triangles only); prev == NULL:
 * the batch's factor alone, both triangles (keep is ignored, c should be 1). The gradient factor
 * takes c inside alpha. */
void kf__activation_factor_ws(size_t n, size_t r, size_t in, const float *x, size_t ldx, int bias,
                              kf_shared_mode mode, const float *prev, float keep, float c, float *a,
                              size_t lda, float *work);
void kf__gradient_factor_ws(size_t n, size_t r, size_t out, const float *g, size_t ldg,
                            kf_shared_mode mode, float alpha, const float *prev, float keep,
                            float *gf, size_t ldgf, float *work);
/* out[i][j] = scale * sum_k x[i*r + k][j]: the shared axis collapsed (rows `width` apart). */
void kf__collapse_shared(size_t n, size_t r, size_t width, const float *x, size_t ldx, float scale,
                         float *out);
/* The normalised moving-average update without validation (see kf_factor_ema_update). */
void kf__ema_fold(size_t dim, float decay, const float *batch, size_t ldb, float *avg,
                  size_t ld_avg, double *weight);
/* D = G_inv V A_inv (g_inv may be NULL); scratch: out * dim_a floats when g_inv is given. */
void kf__kronecker_apply_ws(size_t out, size_t dim_a, const float *v, size_t ldv,
                            const float *g_inv, size_t ld_ginv, const float *a_inv,
                            size_t ld_ainv, float *d, size_t ldd, float *scratch);

/* Argument checks. Each returns KF_OK or fails with a message naming the argument. */
kf_status kf__check_ptr(kf_errbuf *e, const void *p, const char *name);
/* rows, cols >= 1 and ld >= cols; name is the matrix's name. */
kf_status kf__check_mat(kf_errbuf *e, const void *p, size_t rows, size_t cols, size_t ld,
                        const char *name);
/* 1 if the rows x cols matrix has only finite entries. */
int kf__all_finite(size_t rows, size_t cols, const float *x, size_t ldx);
int kf__all_finite_d(size_t rows, size_t cols, const double *x, size_t ldx);
/* 1 if the memory ranges of two matrices (first element to last element) overlap. */
int kf__overlap(const float *a, size_t rows_a, size_t ld_a, size_t cols_a,
                const float *b, size_t rows_b, size_t ld_b, size_t cols_b);

/* The element-wise activation loops per instruction set (activation.c); the public functions use
 * the best path this CPU runs. Test hooks: an unavailable path falls back to the generic one. */
enum { KF__ACT_PATH_GENERIC, KF__ACT_PATH_AVX2, KF__ACT_PATH_AVX512, KF__ACT_PATHS };
/* 1 if `path` is compiled in and this CPU runs it. */
int kf__activation_path_available(int path);
/* kf_activation_forward / _backward without validation, on `path`. */
void kf__activation_forward_on(int path, kf_activation f, size_t n, const float *x, float *y);
void kf__activation_backward_on(int path, kf_activation f, size_t n, const float *y,
                                const float *dy, float *dx);

#endif /* KF_INTERNAL_H */
