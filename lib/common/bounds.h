/* Overflow-safe size arithmetic and the caps on sizes read from files (docs/security.md):
 * every count, dimension or byte size a file claims goes through these before isl
 * allocates for it. Header-only, so that the command-line program's TIFF reader
 * (tools/tiff_io.c) shares it. */
#ifndef ISL_BOUNDS_H
#define ISL_BOUNDS_H

#include <stddef.h>
#include <stdint.h>

/* Side of an image (TIFF page, dataset well) in pixels. */
#define ISL_MAX_IMAGE_SIDE 65536
/* Pages of a TIFF stack (z planes). */
#define ISL_MAX_PAGES 4096
/* Bytes of one array decoded from a file (a whole stack, a well's stack as float32). */
#define ISL_MAX_ARRAY_BYTES ((uint64_t)16 << 30)

/* *out = a * b; returns -1 (and leaves *out alone) on overflow. */
static inline int isl_mul_u64(uint64_t *out, uint64_t a, uint64_t b)
{
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return -1;
    *out = r;
    return 0;
}

/* *out = product of n factors, or -1 on overflow or if it exceeds limit. */
static inline int isl_mul_u64_capped(uint64_t *out, const uint64_t *factors, int n, uint64_t limit)
{
    uint64_t r = 1;
    for (int i = 0; i < n; i++)
        if (isl_mul_u64(&r, r, factors[i]) != 0 || r > limit)
            return -1;
    *out = r;
    return 0;
}

#endif
