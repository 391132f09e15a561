/*
 * kronfac.h - the whole public C API of Kronfac.
 *
 * Kronecker-factored second-order optimizers (FOOF, K-FAC, K-FAC with exact damping, EKFAC) and
 * the primitives they are built from, in portable C99.
 *
 * Conventions (every function):
 *   - Matrices are row-major float arrays with an explicit leading dimension `ld` (the distance in
 *     elements between the starts of two consecutive rows); `ld` must be at least the row width.
 *     Arguments come in BLAS order: rows, cols, pointer, ld.
 *   - Every function validates every argument and returns a kf_status. On any error nothing the
 *     caller passed is written, and the handle's last-error message names the bad argument.
 *   - Nothing aborts, exits or prints.
 *   - Layers: a dense layer has weight W (out x in) and optional bias b (out). Internally the bias is
 *     the last column of W~ = [W b] and the input gains a constant 1: a~ = [a; 1]. Gradients and
 *     directions of the primitives below are shaped out x (in + bias).
 *   - Output gradients g are per-example gradients of the per-example loss term (not divided by the
 *     batch size); callers holding gradients of a batch-mean loss pass scale = N to undo it.
 *
 * Thread safety: a handle (kf_context, kf_optimizer) must be used by one thread at a time.
 * Separate handles are independent and may be used concurrently from different threads. The library
 * keeps no hidden global state; the one documented global is the BLAS thread count
 * (kf_blas_set_threads), which belongs to OpenBLAS and is shared by the whole process.
 */
#ifndef KRONFAC_H
#define KRONFAC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(KRONFAC_SHARED_BUILD)
#define KF_API __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define KF_API __attribute__((visibility("default")))
#else
#define KF_API
#endif

#define KF_VERSION_MAJOR 0
#define KF_VERSION_MINOR 1
#define KF_VERSION_PATCH 0

/* ------------------------------------------------------------------------------------------------
 * Status codes, version, build information
 * --------------------------------------------------------------------------------------------- */

/* Values are fixed forever; new codes are only appended. Argument errors are -1..-9, numerical
 * failures -10.., state and I/O errors -20.. */
typedef enum kf_status {
    KF_OK = 0,
    KF_ERR_NULL_POINTER = -1,          /* a required pointer argument was NULL */
    KF_ERR_INVALID_ARGUMENT = -2,      /* a value is out of its documented range */
    KF_ERR_SHAPE = -3,                 /* a size is zero, an ld is too small, or shapes disagree */
    KF_ERR_OUT_OF_MEMORY = -4,         /* the allocator returned NULL or a size overflowed */
    KF_ERR_NON_FINITE = -10,           /* NaN or Inf found in an input; nothing was changed */
    KF_ERR_NOT_POSITIVE_DEFINITE = -11,/* Cholesky failed after every jitter retry */
    KF_ERR_NO_CONVERGENCE = -12,       /* an iterative solver (eigendecomposition) did not converge */
    KF_ERR_STATE = -20,                /* the call is not allowed in the handle's current state */
    KF_ERR_FORMAT = -21,               /* a checkpoint is truncated, corrupt, of another version or
                                          does not match the optimizer */
    KF_ERR_IO = -22,                   /* a file could not be opened, read or written */
    KF_ERR_UNSUPPORTED = -23           /* not available in this build */
} kf_status;

/* A short, static, human-readable name of a status ("KF_ERR_SHAPE: ..."); never NULL. */
KF_API const char *kf_status_string(kf_status status);

/* "MAJOR.MINOR.PATCH"; static storage. */
KF_API const char *kf_version(void);
KF_API int kf_version_major(void);
KF_API int kf_version_minor(void);
KF_API int kf_version_patch(void);

/* What was compiled in, e.g. "kronfac 0.1.0; backend=openblas; simd=avx2+fma; inverse=lapack".
 * Static storage; never NULL. */
KF_API const char *kf_build_info(void);

/* 1 if this build uses OpenBLAS (CBLAS + LAPACK), 0 for the portable kernels. */
KF_API int kf_has_blas(void);

/* Sets OpenBLAS's process-wide thread count (the one documented global). threads >= 1.
 * KF_ERR_UNSUPPORTED in the portable build. */
KF_API kf_status kf_blas_set_threads(int threads);

/* ------------------------------------------------------------------------------------------------
 * Allocator hooks and the context handle of the primitives
 * --------------------------------------------------------------------------------------------- */

/* Optional per-handle allocator. alloc(size, ctx) returns memory aligned for any type (or NULL);
 * free(ptr, size, ctx) releases it (size is the size passed to alloc). Pass NULL to a _create
 * function for malloc/free. */
typedef struct kf_allocator {
    void *(*alloc)(size_t size, void *ctx);
    void (*free)(void *ptr, size_t size, void *ctx);
    void *ctx;
} kf_allocator;

/* A context holds what the stateless primitives need: the allocator, a scratch workspace that grows
 * when a primitive needs more (in particular double-precision buffers for inverses), the selected
 * kernels and the last-error message. One context per thread. */
typedef struct kf_context kf_context;

/* alloc may be NULL (malloc/free). The allocator struct is copied. */
KF_API kf_status kf_context_create(const kf_allocator *alloc, kf_context **out);
/* Frees everything; accepts NULL. */
KF_API void kf_context_destroy(kf_context *ctx);
/* The message of the last failed call on ctx ("" if none); valid until the next call on ctx. */
KF_API const char *kf_context_last_error(const kf_context *ctx);
/* Bytes currently held by the context (the handle plus its workspace). */
KF_API kf_status kf_context_memory_bytes(const kf_context *ctx, size_t *bytes);
/* Grows the workspace up front so that later primitives on matrices of dimension up to max_dim
 * (factors and gradients with rows and columns <= max_dim, batches of up to max_rows rows) do not
 * allocate. Optional: primitives grow the workspace themselves when needed. The convolution
 * functions called with col = NULL need R * in floats, twice that for kf_conv2d_backward with dx
 * (R = OH * OW, in = C_in * KH * KW): max_dim = in with max_rows = 2 R covers them. */
KF_API kf_status kf_context_reserve(kf_context *ctx, size_t max_dim, size_t max_rows);

/* ------------------------------------------------------------------------------------------------
 * Dense kernels (row-major)
 * --------------------------------------------------------------------------------------------- */

typedef enum kf_transpose {
    KF_NO_TRANS = 0,
    KF_TRANS = 1
} kf_transpose;

/* C (m x n) = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T. op(A) is m x k, op(B) is k x n.
 * A is stored m x k (ta = KF_NO_TRANS) or k x m (KF_TRANS), likewise B. k may be 0 (then C = beta C).
 * With beta = 0, C is not read (NaN in C does not propagate). C must not overlap A or B. */
KF_API kf_status kf_gemm(kf_context *ctx, kf_transpose ta, kf_transpose tb,
                         size_t m, size_t n, size_t k,
                         float alpha, const float *a, size_t lda,
                         const float *b, size_t ldb,
                         float beta, float *c, size_t ldc);

/* The symmetric product C (n x n) = alpha * X^T X + beta * C, X stored k x n (k rows of width n);
 * the full matrix (both triangles) is written. k may be 0. With beta = 0, C is not read. */
KF_API kf_status kf_syrk(kf_context *ctx, size_t k, size_t n,
                         float alpha, const float *x, size_t ldx,
                         float beta, float *c, size_t ldc);

/* X (rows x cols) *= alpha. */
KF_API kf_status kf_scale(kf_context *ctx, size_t rows, size_t cols, float alpha,
                          float *x, size_t ldx);

/* Y (rows x cols) = alpha * X + beta * Y. With beta = 0, Y is not read. */
KF_API kf_status kf_axpby(kf_context *ctx, size_t rows, size_t cols,
                          float alpha, const float *x, size_t ldx,
                          float beta, float *y, size_t ldy);

/* *trace = sum of the diagonal of the n x n matrix A, accumulated in double. */
KF_API kf_status kf_trace(kf_context *ctx, size_t n, const float *a, size_t lda, double *trace);

/* ------------------------------------------------------------------------------------------------
 * Kronecker factor statistics (DESIGN.md section 2)
 * --------------------------------------------------------------------------------------------- */

/* How a layer with a shared axis (length R: tokens, positions, conv locations) is factored
 * (Eschenhagen et al., NeurIPS 2023). With R = 1 both give the same factors. */
typedef enum kf_shared_mode {
    KF_SHARED_EXPAND = 0, /* the shared axis is treated like the batch axis */
    KF_SHARED_REDUCE = 1  /* activations are averaged and gradients summed over the shared axis */
} kf_shared_mode;

/* The activation factor of a batch, dim = in + (bias ? 1 : 0):
 *   expand: A = (1/(N R)) sum_{n,r} a~ a~^T,
 *   reduce: abar_n = (1/R) sum_r a_{n,r}, then A = (1/N) sum_n abar~ abar~^T (the 1 appended after
 *           averaging, so the bias entry stays 1).
 * x holds N*R rows of width `in`, row (n*R + r) for example n and position r, rows ldx apart.
 * r = 1 for a plain dense layer. bias is 0 or 1. a is dim x dim, fully written. */
KF_API kf_status kf_activation_factor(kf_context *ctx, size_t n, size_t r, size_t in,
                                      const float *x, size_t ldx, int bias, kf_shared_mode mode,
                                      float *a, size_t lda);

/* The gradient factor of a batch, out x out, with each g multiplied by `scale` first:
 *   expand: G = (1/(N R')) sum_{n,r} g g^T,
 *   reduce: G = (1/(N R')) sum_n (sum_r g_{n,r}) (sum_r g_{n,r})^T,
 * where R' = loss_terms_per_example (R for a per-position loss, 1 when the shared axis is reduced
 * before the loss; >= 1). g holds N*R rows of width `out`, ordered as x above. */
KF_API kf_status kf_gradient_factor(kf_context *ctx, size_t n, size_t r, size_t out,
                                    const float *g, size_t ldg, kf_shared_mode mode,
                                    size_t loss_terms_per_example, float scale,
                                    float *gf, size_t ldgf);

/* Normalised exponential moving average of a dim x dim factor (unbiased from the first update):
 *   w <- decay * w + 1;  F <- (1 - 1/w) F + (1/w) B.
 * *weight is the caller's state, 0 before the first update (then F is not read: F = B).
 * decay in [0, 1). A NaN/Inf in B returns KF_ERR_NON_FINITE and changes neither F nor *weight. */
KF_API kf_status kf_factor_ema_update(kf_context *ctx, size_t dim, float decay,
                                      const float *batch, size_t ldb,
                                      float *avg, size_t ld_avg, double *weight);

/* ------------------------------------------------------------------------------------------------
 * Damping, inverses, eigendecompositions
 * --------------------------------------------------------------------------------------------- */

typedef enum kf_precision {
    KF_PRECISION_DOUBLE = 0, /* factorise in double (default) */
    KF_PRECISION_FLOAT = 1   /* factorise in float; a failure retries in double before jitter */
} kf_precision;

/* Trace-norm pi (Martens & Grosse 2015, section 6.3):
 *   pi = sqrt((tr A / dim_a) / (tr G / dim_g)), and pi = 1 when either trace is <= 0 or not finite. */
KF_API kf_status kf_pi(kf_context *ctx, size_t dim_a, const float *a, size_t lda,
                       size_t dim_g, const float *g, size_t ldg, float *pi);

/* inv = (sym(F) + damping I)^{-1} with sym(F) = (F + F^T)/2, through Cholesky. damping >= 0.
 * If the factorisation fails, it is retried (float precision: first in double) with jitter
 * added to the diagonal, growing from 1e-6 to 1e-1 times (mean diagonal or 1) by factors of 10.
 * *jitter_used (may be NULL) receives the jitter that was added (0 if none).
 * Errors: KF_ERR_NON_FINITE for NaN/Inf in F; KF_ERR_NOT_POSITIVE_DEFINITE when every retry failed.
 * On error inv is untouched. inv may not overlap f. */
KF_API kf_status kf_damped_inverse(kf_context *ctx, size_t n, const float *f, size_t ldf,
                                   float damping, kf_precision precision,
                                   float *inv, size_t ldinv, float *jitter_used);

/* Symmetric eigendecomposition sym(F) = Q diag(w) Q^T in double: eigenvalues ascending in w (n),
 * eigenvectors in the columns of Q (n x n). Negative eigenvalues are returned as they are.
 * Errors: KF_ERR_NON_FINITE, KF_ERR_NO_CONVERGENCE; on error w and Q are untouched. */
KF_API kf_status kf_sym_eig(kf_context *ctx, size_t n, const float *f, size_t ldf,
                            float *w, float *q, size_t ldq);

/* ------------------------------------------------------------------------------------------------
 * Preconditioned directions of one layer; V is out x dim_a, dim_a = in + bias.
 * --------------------------------------------------------------------------------------------- */

/* D = G_inv * V * A_inv with cached inverses; g_inv may be NULL (identity, as FOOF).
 * a_inv is dim_a x dim_a, g_inv out x out. D must not overlap V. */
KF_API kf_status kf_kronecker_apply(kf_context *ctx, size_t out, size_t dim_a,
                                    const float *v, size_t ldv,
                                    const float *g_inv, size_t ld_ginv,
                                    const float *a_inv, size_t ld_ainv,
                                    float *d, size_t ldd);

/* FOOF (Benzing 2022): D = V (A + damping I)^{-1}. damping >= 0. */
KF_API kf_status kf_foof_direction(kf_context *ctx, size_t out, size_t dim_a,
                                   const float *v, size_t ldv,
                                   const float *a, size_t lda, float damping,
                                   float *d, size_t ldd);

/* K-FAC with pi-factored damping (Martens & Grosse 2015, section 6.3), gamma = sqrt(damping):
 *   D = (G + (gamma/pi) I)^{-1} V (A + pi gamma I)^{-1}. damping > 0.
 * *pi_used (may be NULL) receives pi. */
KF_API kf_status kf_kfac_direction(kf_context *ctx, size_t out, size_t dim_a,
                                   const float *v, size_t ldv,
                                   const float *a, size_t lda,
                                   const float *g, size_t ldg, float damping,
                                   float *d, size_t ldd, float *pi_used);

/* Eigenbasis preconditioning with exact damping (George et al. 2018; SPEC.md 2.6.1):
 *   D = Q_G [ (Q_G^T V Q_A) / (S + damping) ] Q_A^T   (elementwise division),
 * with S = beta alpha^T (K-FAC) when s is NULL, or the given out x dim_a scaling s (EKFAC).
 * Negative eigenvalues are clipped to 0. damping > 0, or >= 0 when every S + damping > 0. */
KF_API kf_status kf_eigenbasis_apply(kf_context *ctx, size_t out, size_t dim_a,
                                     const float *v, size_t ldv,
                                     const float *q_g, size_t ldqg, const float *eig_g,
                                     const float *q_a, size_t ldqa, const float *eig_a,
                                     const float *s, size_t lds, float damping,
                                     float *d, size_t ldd);

/* K-FAC with exact damping: D = mat((A (x) G + damping I)^{-1} vec(V)) through the
 * eigendecompositions of A and G. damping > 0. */
KF_API kf_status kf_kfac_exact_direction(kf_context *ctx, size_t out, size_t dim_a,
                                         const float *v, size_t ldv,
                                         const float *a, size_t lda,
                                         const float *g, size_t ldg, float damping,
                                         float *d, size_t ldd);

/* ------------------------------------------------------------------------------------------------
 * Element-wise activations
 *
 * The nonlinearities between layers, in branch-free loops the compiler vectorises (libm's tanhf
 * and expf are scalar calls, about 10 ns per element here); on x86-64 the loops are also compiled
 * for AVX2/FMA and AVX-512, and each call runs the best one the CPU has (results may differ from
 * the baseline loops by rounding: fused multiply-adds). tanh and the logistic sigmoid come
 * from an own exp/expm1 (Cody-Waite reduction by ln 2, Taylor polynomial of degree 7): within
 * 3e-7 relative (tanh; sigmoid for x >= -87) of the exact value, exact at 0, +-1 (tanh) and 0/1
 * (sigmoid) in the limits, odd (tanh) and with sigmoid(-x) = 1 - sigmoid(x) up to rounding. NaN
 * stays NaN; nothing is rejected (as in kf_gemm).
 * --------------------------------------------------------------------------------------------- */

typedef enum kf_activation {
    KF_ACTIVATION_IDENTITY = 0,
    KF_ACTIVATION_RELU = 1,    /* max(0, x); NaN stays NaN */
    KF_ACTIVATION_TANH = 2,
    KF_ACTIVATION_SIGMOID = 3  /* 1 / (1 + e^-x) */
} kf_activation;

/* y[i] = f(x[i]) for i < n (n may be 0). y may be x (in place), but must not overlap it otherwise. */
KF_API kf_status kf_activation_forward(kf_context *ctx, kf_activation f, size_t n, const float *x,
                                       float *y);

/* dx[i] = f'(x[i]) dy[i] from the outputs y[i] = f(x[i]) (ReLU: y > 0; tanh: 1 - y^2; sigmoid:
 * y (1 - y); identity: 1). dx may be dy (in place), but must not overlap y or partly overlap dy. */
KF_API kf_status kf_activation_backward(kf_context *ctx, kf_activation f, size_t n, const float *y,
                                        const float *dy, float *dx);

/* ------------------------------------------------------------------------------------------------
 * Convolutions (2-D, NCHW)
 *
 * A convolution is a dense layer shared over its R = OH * OW output locations (KFC, Grosse &
 * Martens 2016): with the patch matrix of kf_im2col (one row per example and location, of width
 * in = C_in * KH * KW) and the weight W (C_out x in, row-major, W[o][c*KH*KW + kh*KW + kw]), the
 * output of example n at location r is W patch_{n,r} + b. A conv layer is therefore registered
 * with the optimizer and the factor functions as a dense layer with out = C_out,
 * in = C_in * KH * KW and shared = R:
 *   activations      the patch matrix (kf_im2col, or the col output of kf_conv2d_forward);
 *   output gradients kf_conv2d_output_rows of the (N, C_out, OH, OW) gradient;
 *   weight gradient  kf_conv2d_backward (dw and db are the layer's grad_weight and grad_bias; with
 *                    kf_optimizer_step_batch, x = the patch matrix and gs = the output rows).
 * K-FAC-expand is KFC when loss_terms_per_example = 1 (one loss term per example, as in a
 * classifier; the automatic value R is for a loss at every location). K-FAC-reduce is exact for a
 * linear conv whose output is pooled over its locations before the loss (SPEC.md 4.3).
 *
 * Tensors are contiguous float arrays in NCHW order: x and dx (N, C_in, H, W), y and dy
 * (N, C_out, OH, OW), with
 *   OH = (H + 2 pad_h - dilation_h (KH - 1) - 1) / stride_h + 1   (integer division; OW alike).
 * Every function validates the whole shape (every size >= 1 except the paddings, OH and OW >= 1,
 * no size overflows); out_channels is checked even by the functions that do not use it.
 * Values are not inspected (as in kf_gemm): NaN and Inf propagate to the outputs, and the factor
 * functions and the optimizer reject them. Outputs are overwritten, never read.
 * --------------------------------------------------------------------------------------------- */

typedef struct kf_conv2d_shape {
    size_t batch;        /* N */
    size_t in_channels;  /* C_in */
    size_t height;       /* H of the input */
    size_t width;        /* W of the input */
    size_t out_channels; /* C_out */
    size_t kernel_h;     /* KH */
    size_t kernel_w;     /* KW */
    size_t stride_h;     /* >= 1 (default 1) */
    size_t stride_w;
    size_t pad_h;        /* zeros added above and below the input (default 0) */
    size_t pad_w;        /* zeros added left and right */
    size_t dilation_h;   /* >= 1 (default 1): kernel taps dilation_h rows apart */
    size_t dilation_w;
} kf_conv2d_shape;

/* Fills s with the sizes given, stride 1, no padding, dilation 1. Nothing is validated here; the
 * functions below validate the shape. */
KF_API kf_status kf_conv2d_shape_init(kf_conv2d_shape *s, size_t batch, size_t in_channels,
                                      size_t height, size_t width, size_t out_channels,
                                      size_t kernel_h, size_t kernel_w);

/* *out_h = OH and *out_w = OW of the shape (both written only when the shape is valid). The patch
 * matrix has N * OH * OW rows of C_in * KH * KW columns. */
KF_API kf_status kf_conv2d_output_size(kf_context *ctx, const kf_conv2d_shape *s,
                                       size_t *out_h, size_t *out_w);

/* The patch matrix of x: N * R rows (row n*R + oh*OW + ow) of in = C_in * KH * KW columns (column
 * c*KH*KW + kh*KW + kw), rows ldcol >= in apart, holding x[n][c][oh*stride_h - pad_h +
 * kh*dilation_h][ow*stride_w - pad_w + kw*dilation_w], or 0 where that falls in the padding. This
 * is the batch layout of kf_activation_factor and kf_optimizer_observe_activations (r = R).
 * col must not overlap x. */
KF_API kf_status kf_im2col(kf_context *ctx, const kf_conv2d_shape *s, const float *x,
                           float *col, size_t ldcol);

/* The adjoint of kf_im2col: dx (N, C_in, H, W) = the sum, over the patch entries that read each
 * input element, of those entries of col (overlapping patches accumulate; padding entries are
 * dropped). <kf_im2col(x), col> = <x, kf_col2im(col)>. dx must not overlap col. */
KF_API kf_status kf_col2im(kf_context *ctx, const kf_conv2d_shape *s, const float *col,
                           size_t ldcol, float *dx);

/* y (N, C_out, OH, OW) = the convolution of x with w (C_out x in, rows ldw >= in apart) plus the
 * bias (length C_out, or NULL for none): y[n][o][r] = sum_j w[o][j] patch_{n,r}[j] + bias[o].
 * col: where the patch matrix is built, N * R rows ldcol >= in apart, so that the caller keeps it
 * for kf_optimizer_observe_activations and kf_conv2d_backward; or NULL (ldcol ignored), and then
 * each example's patches are built in turn in the context's workspace (R * in floats, grown as
 * needed) and not kept. y must not overlap x, w, bias or col, nor col overlap x, w or bias. */
KF_API kf_status kf_conv2d_forward(kf_context *ctx, const kf_conv2d_shape *s, const float *x,
                                   const float *w, size_t ldw, const float *bias,
                                   float *col, size_t ldcol, float *y);

/* Gradients of a loss L from dy = dL/dy (N, C_out, OH, OW):
 *   dw (C_out x in, rows lddw >= in apart) = sum_{n,r} dy_{n,r} patch_{n,r}^T,
 *   db (C_out, or NULL for none)           = sum_{n,r} dy_{n,r},
 *   dx (N, C_in, H, W, or NULL for none)   = kf_col2im of the rows dy_{n,r}^T w.
 * The patches come from col (the patch matrix of x, N * R rows ldcol apart, as kf_im2col or
 * kf_conv2d_forward wrote it; x is then not read and may be NULL) or, when col is NULL, are
 * rebuilt from x one example at a time. Workspace from the context: R * in floats when col is
 * NULL, plus R * in floats when dx is wanted. No output may overlap another or an input read. */
KF_API kf_status kf_conv2d_backward(kf_context *ctx, const kf_conv2d_shape *s, const float *x,
                                    const float *col, size_t ldcol, const float *dy,
                                    const float *w, size_t ldw, float *dw, size_t lddw,
                                    float *db, float *dx);

/* The rows layout of an output-side tensor dy (N, C_out, OH, OW): g[n*R + r][o] = dy[n][o][r],
 * N * R rows of width C_out, ldg >= C_out apart: the layout of kf_gradient_factor and
 * kf_optimizer_observe_gradients (r = R). g must not overlap dy. */
KF_API kf_status kf_conv2d_output_rows(kf_context *ctx, const kf_conv2d_shape *s,
                                       const float *dy, float *g, size_t ldg);

/* ------------------------------------------------------------------------------------------------
 * The optimizer: a stateful handle that keeps factors, inverses, momentum and counters per layer.
 *
 * Lifecycle (error handling omitted; every call returns a kf_status):
 *
 *     kf_optimizer_params p;
 *     kf_optimizer_params_init(&p, KF_ALGO_FOOF);            // per-algorithm defaults
 *     p.learning_rate = 0.3f;
 *     kf_optimizer *opt;
 *     kf_optimizer_create(&p, NULL, &opt);                   // NULL: malloc/free
 *     kf_layer_params lp;
 *     kf_layer_params_init(&lp, 10, 784);                    // out, in; bias on by default
 *     size_t layer;
 *     kf_optimizer_add_layer(opt, &lp, &layer);              // all memory planned here
 *     for (each batch of n examples) {
 *         int stats;
 *         kf_optimizer_needs_statistics(opt, &stats);
 *         // forward pass; when stats: hand over the layer's inputs (n x 784)
 *         if (stats) kf_optimizer_observe_activations(opt, layer, n, x, 784);
 *         // backward pass; K-FAC/EKFAC layers also take output gradients of the curvature
 *         // backward pass (sampled targets), scaled by n if they are batch-mean gradients:
 *         if (stats) kf_optimizer_observe_gradients(opt, layer, n, g, 10, (float)n);
 *         kf_layer_tensors t = {w, 784, b, grad_w, 784, grad_b};
 *         kf_optimizer_step(opt, &t, 1);                     // updates w and b in place
 *     }
 *     kf_optimizer_save_file(opt, "run.kfck");               // resume bit-exactly later
 *     kf_optimizer_destroy(opt);
 *
 * Gradients handed to kf_optimizer_step are those of the mean loss over the batch. The update is
 *     d = preconditioned gradient (FOOF, K-FAC, ...; the gradient itself for SGD),
 *     d <- nu d with the KL-clip factor nu (second-order layers, kl_clip > 0),
 *     v <- momentum v + d,   W <- W - lr (v + weight_decay W)   (weight decay skips the bias),
 * and Adam (decoupled weight decay, as AdamW) for ADAM layers.
 * Atomicity: a step or observation that fails changes nothing: not the parameters, momentum,
 * factors, inverses or counters. (A step that fails while refreshing an inverse has used up the
 * observations made for it; observe again before retrying.)
 * --------------------------------------------------------------------------------------------- */

typedef enum kf_algorithm {
    KF_ALGO_SGD = 0,                /* heavy-ball SGD on the gradient */
    KF_ALGO_ADAM = 1,               /* Adam with decoupled weight decay (AdamW) */
    KF_ALGO_FOOF = 2,               /* Benzing 2022: grad (A + damping I)^{-1} */
    KF_ALGO_KFAC = 3,               /* Martens & Grosse 2015 with pi-factored damping */
    KF_ALGO_KFAC_EXACT_DAMPING = 4, /* K-FAC with (A (x) G + damping I)^{-1} via eigenbases */
    KF_ALGO_EKFAC = 5,              /* George et al. 2018: re-estimated eigenbasis diagonal */
    KF_ALGO_DEFAULT = -1            /* in kf_layer_params: use the optimizer's algorithm */
} kf_algorithm;

/* Name of an algorithm ("foof", "kfac", ...) or NULL for an unknown value. */
KF_API const char *kf_algorithm_name(kf_algorithm algorithm);

typedef struct kf_optimizer_params {
    kf_algorithm algorithm;          /* default algorithm of the layers */
    float learning_rate;             /* > 0 */
    float momentum;                  /* [0, 1) */
    float weight_decay;              /* >= 0, decoupled */
    float damping;                   /* lambda > 0 (FOOF may use 0) */
    float factor_decay;              /* moving-average decay of the factors, [0, 1) */
    uint32_t stats_interval;         /* T_stats >= 1: statistics on steps t with t % T_stats == 0 */
    uint32_t inverse_interval;       /* T_inv >= 1: inverses on steps t with t % T_inv == 0, and on
                                        the first step that has statistics */
    kf_precision inverse_precision;  /* precision of the factorisations */
    float kl_clip;                   /* kappa >= 0 of the KL-clip (Ba et al. 2017); 0 = off */
    float adam_beta1;                /* [0, 1) */
    float adam_beta2;                /* [0, 1) */
    float adam_epsilon;              /* > 0 */
    uint32_t stats_subsample;        /* S: when 0 < S < inverse_interval, statistics are taken only
                                        on step 0 and the S steps before each refresh (Benzing
                                        2022, section 4.1), and stats_interval is not used.
                                        0 = off (default) */
} kf_optimizer_params;

/* Fills p with the defaults of `algorithm` (see the table in README.md): common to all:
 * factor_decay 0.95, stats_interval 1, inverse_interval 20, double inverses, no KL-clip, no weight
 * decay, Adam betas 0.9/0.999 and epsilon 1e-8. Per algorithm (learning rate, damping, momentum):
 * SGD 0.03/-/0.9; ADAM 1e-3/-/0; FOOF 0.3/0.3/0; KFAC, KFAC_EXACT_DAMPING, EKFAC 0.1/0.1/0. */
KF_API kf_status kf_optimizer_params_init(kf_optimizer_params *p, kf_algorithm algorithm);

/* Checks p as kf_optimizer_create does; on error writes a message naming the bad field into
 * message (capacity bytes, may be NULL with capacity 0), since no handle exists yet to hold it. */
KF_API kf_status kf_optimizer_params_validate(const kf_optimizer_params *p, char *message,
                                              size_t capacity);

typedef struct kf_optimizer kf_optimizer;

/* Validates p (copied) and creates an optimizer with no layers. alloc may be NULL. */
KF_API kf_status kf_optimizer_create(const kf_optimizer_params *p, const kf_allocator *alloc,
                                     kf_optimizer **out);
/* Frees everything; accepts NULL. */
KF_API void kf_optimizer_destroy(kf_optimizer *opt);
/* The message of the last failed call on opt ("" after a success). */
KF_API const char *kf_optimizer_last_error(const kf_optimizer *opt);
/* The parameters in force (after kf_optimizer_set_* or a restore). */
KF_API kf_status kf_optimizer_get_params(const kf_optimizer *opt, kf_optimizer_params *p);

typedef struct kf_layer_params {
    size_t out;                      /* rows of W, >= 1 */
    size_t in;                       /* columns of W, >= 1 */
    int bias;                        /* 1: the layer has a bias vector of length out (default) */
    size_t shared;                   /* R, the length of the shared axis; 1 = none (default) */
    kf_shared_mode shared_mode;      /* expand (default) or reduce */
    size_t loss_terms_per_example;   /* R' (see kf_gradient_factor); 0 = automatic: R for
                                        expand, 1 for reduce (default) */
    kf_algorithm algorithm;          /* KF_ALGO_DEFAULT (default) or an override for this layer */
    size_t uses;                     /* how often the weight is applied in one forward pass (weight
                                        tying), >= 1 (default 1). With U > 1 each statistics step
                                        takes exactly U observations of activations (and of
                                        gradients), one per application, each of the same n; they
                                        enter as U times as many shared positions (K-FAC-expand).
                                        That is exact for parallel uses that each carry loss terms,
                                        an approximation for uses along one path. U > 1 needs the
                                        expand mode and is not available for EKFAC. */
} kf_layer_params;

/* Defaults for a dense layer out x in: bias, no shared axis, the optimizer's algorithm. */
KF_API kf_status kf_layer_params_init(kf_layer_params *p, size_t out, size_t in);

/* Registers a layer (before the first step) and allocates all its state. *index receives its
 * number, 0, 1, ... in the order of registration. KF_ERR_STATE after the first step. */
KF_API kf_status kf_optimizer_add_layer(kf_optimizer *opt, const kf_layer_params *p,
                                        size_t *index);

/* *needed = 1 if the next step is a statistics step (observations are used), else 0. */
KF_API kf_status kf_optimizer_needs_statistics(const kf_optimizer *opt, int *needed);

/* Hands over the inputs of a layer for the next step: n examples, n * R rows of width `in`
 * (row n*R + r for example n, position r), ldx apart. Ignored (KF_OK) when the next step is not a
 * statistics step or the layer's algorithm uses no statistics (SGD, Adam). For a layer with
 * uses = 1 a second call before the step replaces the first; with uses = U > 1 the U calls of a
 * step accumulate (see kf_layer_params.uses). The first batch larger than any before grows the workspace once
 * (kf_optimizer_reserve_batch plans it up front); the step never allocates. */
KF_API kf_status kf_optimizer_observe_activations(kf_optimizer *opt, size_t layer, size_t n,
                                                  const float *x, size_t ldx);

/* Hands over the output gradients of the curvature backward pass (K-FAC, K-FAC exact, EKFAC):
 * n * R rows of width `out`, each multiplied by `scale` (pass n for gradients of a batch-mean
 * loss). Ignored for FOOF, SGD and Adam layers and on non-statistics steps. For EKFAC the
 * activations of the same step must be observed first (the per-example pairs enter the diagonal). */
KF_API kf_status kf_optimizer_observe_gradients(kf_optimizer *opt, size_t layer, size_t n,
                                                const float *g, size_t ldg, float scale);

/* Grows the workspace for batches of up to n examples now, so that observations do not allocate. */
KF_API kf_status kf_optimizer_reserve_batch(kf_optimizer *opt, size_t n);

/* One layer's parameters (updated in place) and gradients for kf_optimizer_step. W and dW are
 * out x in with their own leading dimensions; b and db have length out, and are NULL exactly when
 * the layer has no bias. */
typedef struct kf_layer_tensors {
    float *weight;
    size_t ld_weight;
    float *bias;
    const float *grad_weight;
    size_t ld_grad_weight;
    const float *grad_bias;
} kf_layer_tensors;

/* One optimization step over all layers (num_layers = the number registered, in order).
 * On a statistics step every preconditioned layer uses what was observed since the last step
 * (a layer with no observation keeps its old factors; one that never had any fails with
 * KF_ERR_STATE). Errors: argument errors; KF_ERR_NON_FINITE for NaN/Inf in parameters or
 * gradients; KF_ERR_NOT_POSITIVE_DEFINITE / KF_ERR_NO_CONVERGENCE when a refresh fails. */
KF_API kf_status kf_optimizer_step(kf_optimizer *opt, const kf_layer_tensors *layers,
                                   size_t num_layers);

/* One layer's parameters (updated in place) and its batch for kf_optimizer_step_batch: the layer's
 * inputs x (n * R rows of width `in`, ldx apart) and the gradients of the batch-MEAN loss with
 * respect to its outputs gs (n * R rows of width `out`), so that the weight gradient is gs^T [x 1].
 * bias is NULL exactly when the layer has no bias. */
typedef struct kf_layer_batch {
    float *weight;
    size_t ld_weight;
    float *bias;
    const float *x;
    size_t ldx;
    const float *gs;
    size_t ldgs;
} kf_layer_batch;

/* The same step as kf_optimizer_step, for callers whose weight gradient is exactly gs^T [x 1]
 * (no accumulation over several batches, no coupled L2 term). The gradient need not be formed:
 * FOOF and K-FAC layers use gs^T ([x 1] P) or (gs Q)^T ([x 1] P) when that is cheaper, as it is
 * whenever n * R is smaller than the layer's width (DESIGN.md section 8); with the KL-clip on, the
 * gradient is formed as usual.
 * The first call with a batch larger than any before grows the workspace once (before any change);
 * kf_optimizer_reserve_batch plans it up front. */
KF_API kf_status kf_optimizer_step_batch(kf_optimizer *opt, size_t n, const kf_layer_batch *layers,
                                         size_t num_layers);

/* Schedules: change the learning rate or damping between steps. A new damping refreshes the
 * inverses on the next step. */
KF_API kf_status kf_optimizer_set_learning_rate(kf_optimizer *opt, float learning_rate);
KF_API kf_status kf_optimizer_set_damping(kf_optimizer *opt, float damping);

/* Queries. */
KF_API kf_status kf_optimizer_layer_count(const kf_optimizer *opt, size_t *count);
KF_API kf_status kf_optimizer_step_count(const kf_optimizer *opt, uint64_t *steps);
/* Number of steps on which this layer's inverses (or eigenbases) were recomputed. */
KF_API kf_status kf_optimizer_inverse_count(const kf_optimizer *opt, size_t layer,
                                            uint64_t *count);
/* The pi of the layer's last refresh (1 for layers without pi). */
KF_API kf_status kf_optimizer_layer_pi(const kf_optimizer *opt, size_t layer, float *pi);
/* The damping used by the layer's current inverses (the optimizer's damping before the first). */
KF_API kf_status kf_optimizer_layer_damping(const kf_optimizer *opt, size_t layer, float *damping);
/* The layer's registration, with algorithm and loss_terms_per_example resolved (useful after
 * kf_optimizer_create_from_checkpoint). */
KF_API kf_status kf_optimizer_layer_params(const kf_optimizer *opt, size_t layer,
                                           kf_layer_params *p);
/* The layer's algorithm after resolving KF_ALGO_DEFAULT. */
KF_API kf_status kf_optimizer_layer_algorithm(const kf_optimizer *opt, size_t layer,
                                              kf_algorithm *algorithm);
typedef enum kf_factor_kind {
    KF_FACTOR_A = 0, /* the activation factor, dim_a x dim_a (dim_a = in + bias) */
    KF_FACTOR_G = 1  /* the gradient factor, out x out */
} kf_factor_kind;
/* Copies the layer's current (moving-average) factor into f; KF_ERR_STATE before the first
 * statistics, KF_ERR_INVALID_ARGUMENT for a layer without that factor. */
KF_API kf_status kf_optimizer_layer_factor(const kf_optimizer *opt, size_t layer,
                                           kf_factor_kind which, float *f, size_t ldf);
/* Total bytes held by the optimizer (state, planned workspace). */
KF_API kf_status kf_optimizer_memory_bytes(const kf_optimizer *opt, size_t *bytes);

/* Checkpoints: a versioned, checksummed binary image of the parameters, layers and all state
 * (observations pending for the next step are not included). Restoring validates everything
 * before touching the optimizer and refuses anything else with KF_ERR_FORMAT, leaving it
 * unchanged; resuming from a checkpoint continues bit-exactly. */
KF_API kf_status kf_optimizer_checkpoint_size(const kf_optimizer *opt, size_t *bytes);
/* Writes the checkpoint into buf (capacity bytes); *written receives its size. */
KF_API kf_status kf_optimizer_save(const kf_optimizer *opt, void *buf, size_t capacity,
                                   size_t *written);
/* Restores into an optimizer whose registered layers have the same shapes and settings; the
 * hyperparameters and all state are taken from the checkpoint. */
KF_API kf_status kf_optimizer_restore(kf_optimizer *opt, const void *buf, size_t size);
/* Creates a new optimizer (layers included) from a checkpoint. */
KF_API kf_status kf_optimizer_create_from_checkpoint(const void *buf, size_t size,
                                                     const kf_allocator *alloc,
                                                     kf_optimizer **out);
/* The same through files. Saving writes PATH.tmp, flushes it and renames it over PATH, so a
 * crash leaves either the old or the new checkpoint. */
KF_API kf_status kf_optimizer_save_file(const kf_optimizer *opt, const char *path);
KF_API kf_status kf_optimizer_restore_file(kf_optimizer *opt, const char *path);
KF_API kf_status kf_optimizer_create_from_file(const char *path, const kf_allocator *alloc,
                                               kf_optimizer **out);

#ifdef __cplusplus
}
#endif

#endif /* KRONFAC_H */
