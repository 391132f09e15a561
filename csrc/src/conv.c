/* 2-D convolutions in NCHW as dense layers over patches (im2col), so that the factor functions and
 * the optimizer treat a conv layer as a dense layer shared over its output locations (KFC, Grosse &
 * Martens 2016). Every public function validates everything before its first write. */
#include "kf_internal.h"
#include "kf_mat.h"

#include <stdint.h>
#include <string.h>

/* Sizes derived from a validated kf_conv2d_shape. */
typedef struct conv_plan {
    size_t n, c, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw;
    size_t oh, ow;
    size_t r;      /* OH * OW, locations per example */
    size_t k;      /* C_in * KH * KW, the patch width */
    size_t rows;   /* N * R, rows of the patch matrix */
    size_t x_per;  /* C_in * H * W, input elements per example */
    size_t y_per;  /* C_out * R, output elements per example */
} conv_plan;

/* Every element count stays below this, so that byte offsets (and the double-sized scratch some
 * callers derive from them) cannot overflow; the same headroom as kf__check_mat. */
#define CONV_LIMIT (SIZE_MAX / sizeof(double))

static int mul_ok(size_t a, size_t b, size_t *out)
{
    return kf__mul_size(a, b, out) && *out <= CONV_LIMIT;
}

/* The output length along one axis, or 0 with a message when it would be < 1 or overflows. */
static size_t axis_out(kf_errbuf *e, const char *fn, size_t in, size_t kernel, size_t stride,
                       size_t pad, size_t dil, const char *axis, kf_status *st)
{
    size_t extent, padded;
    /* The kernel covers dil * (kernel - 1) + 1 input elements. */
    if (!mul_ok(dil, kernel - 1, &extent) || extent >= CONV_LIMIT) {
        *st = kf__fail(e, KF_ERR_SHAPE, "%s: the dilated kernel %s overflows", fn, axis);
        return 0;
    }
    extent += 1;
    if (in > CONV_LIMIT || pad > (CONV_LIMIT - in) / 2) {
        *st = kf__fail(e, KF_ERR_SHAPE, "%s: the padded input %s overflows", fn, axis);
        return 0;
    }
    padded = in + 2 * pad;
    if (padded < extent) {
        *st = kf__fail(e, KF_ERR_SHAPE,
                       "%s: the output %s would be < 1: the padded input (%zu) is smaller than "
                       "the dilated kernel (%zu)", fn, axis, padded, extent);
        return 0;
    }
    return (padded - extent) / stride + 1;
}

static kf_status plan_shape(kf_errbuf *e, const char *fn, const kf_conv2d_shape *s, conv_plan *p)
{
    kf_status st = KF_OK;
    size_t t;
    if (!s) {
        return kf__fail(e, KF_ERR_NULL_POINTER, "%s: shape is NULL", fn);
    }
    if (s->batch == 0 || s->in_channels == 0 || s->height == 0 || s->width == 0 ||
        s->out_channels == 0 || s->kernel_h == 0 || s->kernel_w == 0) {
        return kf__fail(e, KF_ERR_SHAPE,
                        "%s: batch (%zu), in_channels (%zu), height (%zu), width (%zu), "
                        "out_channels (%zu), kernel_h (%zu) and kernel_w (%zu) must be >= 1", fn,
                        s->batch, s->in_channels, s->height, s->width, s->out_channels,
                        s->kernel_h, s->kernel_w);
    }
    if (s->stride_h == 0 || s->stride_w == 0 || s->dilation_h == 0 || s->dilation_w == 0) {
        return kf__fail(e, KF_ERR_INVALID_ARGUMENT,
                        "%s: stride_h (%zu), stride_w (%zu), dilation_h (%zu) and dilation_w "
                        "(%zu) must be >= 1", fn, s->stride_h, s->stride_w, s->dilation_h,
                        s->dilation_w);
    }
    p->n = s->batch;
    p->c = s->in_channels;
    p->h = s->height;
    p->w = s->width;
    p->co = s->out_channels;
    p->kh = s->kernel_h;
    p->kw = s->kernel_w;
    p->sh = s->stride_h;
    p->sw = s->stride_w;
    p->ph = s->pad_h;
    p->pw = s->pad_w;
    p->dh = s->dilation_h;
    p->dw = s->dilation_w;
    if (!(p->oh = axis_out(e, fn, p->h, p->kh, p->sh, p->ph, p->dh, "height", &st)) ||
        !(p->ow = axis_out(e, fn, p->w, p->kw, p->sw, p->pw, p->dw, "width", &st))) {
        return st;
    }
    if (!mul_ok(p->oh, p->ow, &p->r) || !mul_ok(p->n, p->r, &p->rows) ||
        !mul_ok(p->c, p->kh, &t) || !mul_ok(t, p->kw, &p->k) || !mul_ok(p->rows, p->k, &t) ||
        !mul_ok(p->c, p->h, &t) || !mul_ok(t, p->w, &p->x_per) || !mul_ok(p->n, p->x_per, &t) ||
        !mul_ok(p->co, p->r, &p->y_per) || !mul_ok(p->n, p->y_per, &t) ||
        !mul_ok(p->co, p->k, &t)) {
        return kf__fail(e, KF_ERR_SHAPE, "%s: the tensors of this shape are too large to address",
                        fn);
    }
    return KF_OK;
}

/* A stored rows x cols matrix (rows ld apart): non-NULL, ld >= cols, addressable. */
static kf_status check_rows(kf_errbuf *e, const char *fn, const void *p, size_t rows, size_t cols,
                            size_t ld, const char *name)
{
    kf_status s = kf__check_mat(e, p, rows, cols, ld, name);
    return s == KF_OK ? s : kf__prefix(e, s, fn);
}

static kf_status check_ptr(kf_errbuf *e, const char *fn, const void *p, const char *name)
{
    kf_status s = kf__check_ptr(e, p, name);
    return s == KF_OK ? s : kf__prefix(e, s, fn);
}

/* A memory region for the overlap checks: a matrix, or a contiguous tensor as one row. */
typedef struct region {
    const float *p;
    size_t rows, cols, ld;
    const char *name;
} region;

static region reg_mat(const float *p, size_t rows, size_t cols, size_t ld, const char *name)
{
    region g;
    g.p = p;
    g.rows = rows;
    g.cols = cols;
    g.ld = ld;
    g.name = name;
    return g;
}

static region reg_vec(const float *p, size_t len, const char *name)
{
    return reg_mat(p, 1, len, len, name);
}

/* Fails when the output region shares memory with any of the others (NULL ones are skipped). */
static kf_status check_disjoint(kf_errbuf *e, const char *fn, region out, const region *others,
                                size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const region *o = &others[i];
        if (o->p && kf__overlap(out.p, out.rows, out.ld, out.cols, o->p, o->rows, o->ld, o->cols)) {
            return kf__fail(e, KF_ERR_INVALID_ARGUMENT, "%s: %s overlaps %s in memory", fn,
                            out.name, o->name);
        }
    }
    return KF_OK;
}

#define CONV_TRY(expr)               \
    do {                             \
        kf_status conv_s_ = (expr);  \
        if (conv_s_ != KF_OK) {      \
            return conv_s_;          \
        }                            \
    } while (0)

/* The R patch rows of one example: x_n is (C_in, H, W), col_n holds R rows ld apart. Positions are
 * computed in padded coordinates (unsigned), so that a tap is inside the input exactly when
 * pad <= position < pad + size. */
static void im2col_one(const conv_plan *p, const float *x_n, float *col_n, size_t ld)
{
    for (size_t oh = 0; oh < p->oh; oh++) {
        for (size_t ow = 0; ow < p->ow; ow++) {
            float *row = col_n + (oh * p->ow + ow) * ld;
            const size_t h0 = oh * p->sh, w0 = ow * p->sw;
            for (size_t c = 0; c < p->c; c++) {
                const float *xc = x_n + c * p->h * p->w;
                for (size_t i = 0; i < p->kh; i++) {
                    float *dst = row + (c * p->kh + i) * p->kw;
                    const size_t hp = h0 + i * p->dh;
                    if (hp < p->ph || hp - p->ph >= p->h) {
                        for (size_t j = 0; j < p->kw; j++) {
                            dst[j] = 0.0f;
                        }
                        continue;
                    }
                    const float *xr = xc + (hp - p->ph) * p->w;
                    for (size_t j = 0; j < p->kw; j++) {
                        const size_t wp = w0 + j * p->dw;
                        dst[j] = (wp < p->pw || wp - p->pw >= p->w) ? 0.0f : xr[wp - p->pw];
                    }
                }
            }
        }
    }
}

/* The adjoint of im2col_one: dx_n (C_in, H, W) is overwritten with the accumulated patch entries. */
static void col2im_one(const conv_plan *p, const float *col_n, size_t ld, float *dx_n)
{
    for (size_t i = 0; i < p->x_per; i++) {
        dx_n[i] = 0.0f;
    }
    for (size_t oh = 0; oh < p->oh; oh++) {
        for (size_t ow = 0; ow < p->ow; ow++) {
            const float *row = col_n + (oh * p->ow + ow) * ld;
            const size_t h0 = oh * p->sh, w0 = ow * p->sw;
            for (size_t c = 0; c < p->c; c++) {
                float *xc = dx_n + c * p->h * p->w;
                for (size_t i = 0; i < p->kh; i++) {
                    const size_t hp = h0 + i * p->dh;
                    if (hp < p->ph || hp - p->ph >= p->h) {
                        continue;
                    }
                    const float *src = row + (c * p->kh + i) * p->kw;
                    float *xr = xc + (hp - p->ph) * p->w;
                    for (size_t j = 0; j < p->kw; j++) {
                        const size_t wp = w0 + j * p->dw;
                        if (wp >= p->pw && wp - p->pw < p->w) {
                            xr[wp - p->pw] += src[j];
                        }
                    }
                }
            }
        }
    }
}

kf_status kf_conv2d_shape_init(kf_conv2d_shape *s, size_t batch, size_t in_channels,
                               size_t height, size_t width, size_t out_channels, size_t kernel_h,
                               size_t kernel_w)
{
    if (!s) {
        return KF_ERR_NULL_POINTER;
    }
    memset(s, 0, sizeof *s);
    s->batch = batch;
    s->in_channels = in_channels;
    s->height = height;
    s->width = width;
    s->out_channels = out_channels;
    s->kernel_h = kernel_h;
    s->kernel_w = kernel_w;
    s->stride_h = 1;
    s->stride_w = 1;
    s->pad_h = 0;
    s->pad_w = 0;
    s->dilation_h = 1;
    s->dilation_w = 1;
    return KF_OK;
}

kf_status kf_conv2d_output_size(kf_context *ctx, const kf_conv2d_shape *s, size_t *out_h,
                                size_t *out_w)
{
    static const char fn[] = "kf_conv2d_output_size";
    conv_plan p;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    CONV_TRY(check_ptr(&ctx->err, fn, out_h, "out_h"));
    CONV_TRY(check_ptr(&ctx->err, fn, out_w, "out_w"));
    CONV_TRY(plan_shape(&ctx->err, fn, s, &p));
    *out_h = p.oh;
    *out_w = p.ow;
    kf__clear(&ctx->err);
    return KF_OK;
}

kf_status kf_im2col(kf_context *ctx, const kf_conv2d_shape *s, const float *x, float *col,
                    size_t ldcol)
{
    static const char fn[] = "kf_im2col";
    conv_plan p;
    region in[1];
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    CONV_TRY(plan_shape(e, fn, s, &p));
    CONV_TRY(check_ptr(e, fn, x, "x"));
    CONV_TRY(check_rows(e, fn, col, p.rows, p.k, ldcol, "col"));
    in[0] = reg_vec(x, p.n * p.x_per, "x");
    CONV_TRY(check_disjoint(e, fn, reg_mat(col, p.rows, p.k, ldcol, "col"), in, 1));
    for (size_t i = 0; i < p.n; i++) {
        im2col_one(&p, x + i * p.x_per, col + i * p.r * ldcol, ldcol);
    }
    kf__clear(e);
    return KF_OK;
}

kf_status kf_col2im(kf_context *ctx, const kf_conv2d_shape *s, const float *col, size_t ldcol,
                    float *dx)
{
    static const char fn[] = "kf_col2im";
    conv_plan p;
    region in[1];
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    CONV_TRY(plan_shape(e, fn, s, &p));
    CONV_TRY(check_rows(e, fn, col, p.rows, p.k, ldcol, "col"));
    CONV_TRY(check_ptr(e, fn, dx, "dx"));
    in[0] = reg_mat(col, p.rows, p.k, ldcol, "col");
    CONV_TRY(check_disjoint(e, fn, reg_vec(dx, p.n * p.x_per, "dx"), in, 1));
    for (size_t i = 0; i < p.n; i++) {
        col2im_one(&p, col + i * p.r * ldcol, ldcol, dx + i * p.x_per);
    }
    kf__clear(e);
    return KF_OK;
}

kf_status kf_conv2d_forward(kf_context *ctx, const kf_conv2d_shape *s, const float *x,
                            const float *w, size_t ldw, const float *bias, float *col,
                            size_t ldcol, float *y)
{
    static const char fn[] = "kf_conv2d_forward";
    conv_plan p;
    region in[4];
    float *ws = NULL;
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    CONV_TRY(plan_shape(e, fn, s, &p));
    CONV_TRY(check_ptr(e, fn, x, "x"));
    CONV_TRY(check_rows(e, fn, w, p.co, p.k, ldw, "w"));
    CONV_TRY(check_ptr(e, fn, y, "y"));
    if (col) {
        CONV_TRY(check_rows(e, fn, col, p.rows, p.k, ldcol, "col"));
    }
    in[0] = reg_vec(x, p.n * p.x_per, "x");
    in[1] = reg_mat(w, p.co, p.k, ldw, "w");
    in[2] = reg_vec(bias, p.co, "bias");
    in[3] = reg_mat(col, p.rows, p.k, ldcol, "col");
    CONV_TRY(check_disjoint(e, fn, reg_vec(y, p.n * p.y_per, "y"), in, 4));
    if (col) {
        CONV_TRY(check_disjoint(e, fn, in[3], in, 3));
    } else if (!(ws = (float *)kf__ctx_work(ctx, p.r * p.k * sizeof(float)))) {
        return kf__prefix(e, KF_ERR_OUT_OF_MEMORY, fn);
    }
    for (size_t i = 0; i < p.n; i++) {
        float *patches = col ? col + i * p.r * ldcol : ws;
        size_t ld = col ? ldcol : p.k;
        float *yn = y + i * p.y_per;
        im2col_one(&p, x + i * p.x_per, patches, ld);
        /* Y_n (C_out x R) = W P_n^T: channel-major output straight from one product. */
        kf__gemm(0, 1, p.co, p.r, p.k, 1.0f, w, ldw, patches, ld, 0.0f, yn, p.r);
        if (bias) {
            for (size_t o = 0; o < p.co; o++) {
                float *yo = yn + o * p.r;
                for (size_t t = 0; t < p.r; t++) {
                    yo[t] += bias[o];
                }
            }
        }
    }
    kf__clear(e);
    return KF_OK;
}

kf_status kf_conv2d_backward(kf_context *ctx, const kf_conv2d_shape *s, const float *x,
                             const float *col, size_t ldcol, const float *dy, const float *w,
                             size_t ldw, float *dw, size_t lddw, float *db, float *dx)
{
    static const char fn[] = "kf_conv2d_backward";
    conv_plan p;
    region in[6];
    size_t piece, bytes = 0;
    unsigned char *cursor;
    float *ws_col = NULL, *ws_dcol = NULL;
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    CONV_TRY(plan_shape(e, fn, s, &p));
    if (col) {
        CONV_TRY(check_rows(e, fn, col, p.rows, p.k, ldcol, "col"));
    } else if (!x) {
        return kf__fail(e, KF_ERR_NULL_POINTER, "%s: x and col are both NULL; one is needed for "
                        "the patches", fn);
    }
    CONV_TRY(check_ptr(e, fn, dy, "dy"));
    CONV_TRY(check_rows(e, fn, w, p.co, p.k, ldw, "w"));
    CONV_TRY(check_rows(e, fn, dw, p.co, p.k, lddw, "dw"));
    /* Inputs that are read (x only without col) and the outputs, for the overlap checks. */
    in[0] = reg_vec(col ? NULL : x, p.n * p.x_per, "x");
    in[1] = reg_mat(col, p.rows, p.k, ldcol, "col");
    in[2] = reg_vec(dy, p.n * p.y_per, "dy");
    in[3] = reg_mat(w, p.co, p.k, ldw, "w");
    in[4] = reg_mat(dw, p.co, p.k, lddw, "dw");
    in[5] = reg_vec(db, p.co, "db");
    CONV_TRY(check_disjoint(e, fn, in[4], in, 4));
    if (db) {
        CONV_TRY(check_disjoint(e, fn, in[5], in, 5));
    }
    if (dx) {
        CONV_TRY(check_disjoint(e, fn, reg_vec(dx, p.n * p.x_per, "dx"), in, 6));
    }
    /* Scratch: one example's patches (without col) and one example's input-gradient rows (with
     * dx); R * in floats each, at most the size of the patch matrix, so no overflow. */
    piece = KF_ALIGN_UP(p.r * p.k * sizeof(float));
    bytes = (col ? 0 : piece) + (dx ? piece : 0);
    if (bytes) {
        if (!(cursor = (unsigned char *)kf__ctx_work(ctx, bytes))) {
            return kf__prefix(e, KF_ERR_OUT_OF_MEMORY, fn);
        }
        ws_col = col ? NULL : (float *)kf__carve(&cursor, piece);
        ws_dcol = dx ? (float *)kf__carve(&cursor, piece) : NULL;
    }
    for (size_t i = 0; i < p.n; i++) {
        const float *dyn = dy + i * p.y_per;
        const float *patches;
        size_t ld;
        if (col) {
            patches = col + i * p.r * ldcol;
            ld = ldcol;
        } else {
            im2col_one(&p, x + i * p.x_per, ws_col, p.k);
            patches = ws_col;
            ld = p.k;
        }
        /* dW += dY_n P_n (C_out x R times R x in); the first example overwrites dw. */
        kf__gemm(0, 0, p.co, p.k, p.r, 1.0f, dyn, p.r, patches, ld, i == 0 ? 0.0f : 1.0f, dw,
                 lddw);
        if (dx) {
            /* The gradient of the patch rows, dP_n = dY_n^T W (R x in), folded back onto dx. */
            kf__gemm(1, 0, p.r, p.k, p.co, 1.0f, dyn, p.r, w, ldw, 0.0f, ws_dcol, p.k);
            col2im_one(&p, ws_dcol, p.k, dx + i * p.x_per);
        }
    }
    if (db) {
        for (size_t o = 0; o < p.co; o++) {
            double sum = 0.0;
            for (size_t i = 0; i < p.n; i++) {
                const float *d = dy + i * p.y_per + o * p.r;
                for (size_t t = 0; t < p.r; t++) {
                    sum += d[t];
                }
            }
            db[o] = (float)sum;
        }
    }
    kf__clear(e);
    return KF_OK;
}

kf_status kf_conv2d_output_rows(kf_context *ctx, const kf_conv2d_shape *s, const float *dy,
                                float *g, size_t ldg)
{
    static const char fn[] = "kf_conv2d_output_rows";
    conv_plan p;
    region in[1];
    kf_errbuf *e;
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    e = &ctx->err;
    CONV_TRY(plan_shape(e, fn, s, &p));
    CONV_TRY(check_ptr(e, fn, dy, "dy"));
    CONV_TRY(check_rows(e, fn, g, p.rows, p.co, ldg, "g"));
    in[0] = reg_vec(dy, p.n * p.y_per, "dy");
    CONV_TRY(check_disjoint(e, fn, reg_mat(g, p.rows, p.co, ldg, "g"), in, 1));
    for (size_t i = 0; i < p.n; i++) {
        const float *dyn = dy + i * p.y_per;
        float *gn = g + i * p.r * ldg;
        /* A transpose per example: channel-major (C_out x R) to location-major (R x C_out). */
        for (size_t o = 0; o < p.co; o++) {
            const float *src = dyn + o * p.r;
            for (size_t t = 0; t < p.r; t++) {
                gn[t * ldg + o] = src[t];
            }
        }
    }
    kf__clear(e);
    return KF_OK;
}
