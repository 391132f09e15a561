/* Allocation and the context handle of the primitives. */
#include "kf_internal.h"

#include <stdlib.h>

static void *kf__default_alloc(size_t size, void *ctx)
{
    (void)ctx;
    return malloc(size);
}

static void kf__default_free(void *p, size_t size, void *ctx)
{
    (void)size;
    (void)ctx;
    free(p);
}

void *kf__alloc(const kf_allocator *a, size_t size)
{
    if (size == 0) {
        size = 1;
    }
    if (size > ((size_t)1 << 40)) {
        /* Beyond a terabyte a request is a size gone wrong; some allocators abort on it. */
        return NULL;
    }
    return (a && a->alloc) ? a->alloc(size, a->ctx) : kf__default_alloc(size, NULL);
}

void kf__free(const kf_allocator *a, void *p, size_t size)
{
    if (!p) {
        return;
    }
    if (size == 0) {
        size = 1;
    }
    if (a && a->free) {
        a->free(p, size, a->ctx);
    } else {
        kf__default_free(p, size, NULL);
    }
}

kf_status kf_context_create(const kf_allocator *alloc, kf_context **out)
{
    kf_context *ctx;
    kf_allocator use = {kf__default_alloc, kf__default_free, NULL};
    if (!out) {
        return KF_ERR_NULL_POINTER;
    }
    if (alloc) {
        /* Half an allocator cannot work: memory from one would be returned to the other. */
        if (!alloc->alloc || !alloc->free) {
            return KF_ERR_INVALID_ARGUMENT;
        }
        use = *alloc;
    }
    ctx = (kf_context *)kf__alloc(&use, sizeof *ctx);
    if (!ctx) {
        return KF_ERR_OUT_OF_MEMORY;
    }
    ctx->alloc = use;
    ctx->err.msg[0] = '\0';
    ctx->work = NULL;
    ctx->work_bytes = 0;
    *out = ctx;
    return KF_OK;
}

void kf_context_destroy(kf_context *ctx)
{
    if (!ctx) {
        return;
    }
    kf_allocator a = ctx->alloc;
    kf__free(&a, ctx->work, ctx->work_bytes);
    kf__free(&a, ctx, sizeof *ctx);
}

const char *kf_context_last_error(const kf_context *ctx)
{
    return ctx ? ctx->err.msg : "kf_context_last_error: ctx is NULL";
}

kf_status kf_context_memory_bytes(const kf_context *ctx, size_t *bytes)
{
    if (!ctx) {
        return KF_ERR_NULL_POINTER;
    }
    if (!bytes) {
        return kf__fail((kf_errbuf *)&((kf_context *)ctx)->err, KF_ERR_NULL_POINTER,
                        "kf_context_memory_bytes: bytes is NULL");
    }
    *bytes = sizeof *ctx + ctx->work_bytes;
    return KF_OK;
}

void *kf__ctx_work(kf_context *ctx, size_t bytes)
{
    void *p;
    if (bytes <= ctx->work_bytes) {
        return ctx->work;
    }
    p = kf__alloc(&ctx->alloc, bytes);
    if (!p) {
        kf__fail(&ctx->err, KF_ERR_OUT_OF_MEMORY, "could not allocate %zu bytes of workspace", bytes);
        return NULL;
    }
    kf__free(&ctx->alloc, ctx->work, ctx->work_bytes);
    ctx->work = p;
    ctx->work_bytes = bytes;
    return p;
}

void *kf__carve(unsigned char **cursor, size_t bytes)
{
    void *p = *cursor;
    *cursor += KF_ALIGN_UP(bytes);
    return p;
}
