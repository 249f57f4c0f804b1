/* Reading transmitted-light stacks and writing float32 images with libtiff: the
 * command-line program's file I/O (tools/tiff_io.c), not part of libisl's API. Functions
 * return isl_status codes; the message of a failure is isl_tiff_last_error(), not
 * isl_last_error(). */
#ifndef ISL_TIFF_IO_H
#define ISL_TIFF_IO_H

#include "isl.h"

#include <stddef.h>
#include <stdint.h>

/* A stack read from a multi-page TIFF: pages are z planes, all of one size and one
 * sample format (8/16-bit unsigned or 32-bit float, one sample per pixel). data holds
 * num_z * height * width samples of dtype, plane-major. Free with isl_tiff_stack_free. */
typedef struct isl_tiff_stack {
    void *data;
    isl_dtype dtype;
    int num_z, height, width;
} isl_tiff_stack;

/* Reads every page of path. Clear errors (with the path and page number) for: missing
 * file, not a TIFF, truncated or corrupt data, pages of different sizes or sample
 * formats, unsupported formats (signed, 32-bit int, RGB, tiled + planar combinations
 * libtiff cannot decode). expect_pages > 0 also checks the page count. Returns ISL_OK. */
isl_status isl_tiff_read_stack(const char *path, int expect_pages, isl_tiff_stack *out);
void isl_tiff_stack_free(isl_tiff_stack *s);

/* Sample i of s scaled as prediction scales a model's input without normalization:
 * 8-bit by 1/255, 16-bit by 1/65535, float32 as is. */
static inline double isl_tiff_stack_scaled(const isl_tiff_stack *s, size_t i)
{
    switch (s->dtype) {
    case ISL_DTYPE_U8: return ((const uint8_t *)s->data)[i] / 255.0;
    case ISL_DTYPE_U16: return ((const uint16_t *)s->data)[i] / 65535.0;
    default: return ((const float *)s->data)[i];
    }
}

/* Writes a float32 image (or stack of `pages` planes) atomically: temp file + rename.
 * Compression: none (fast, readable everywhere). */
isl_status isl_tiff_write_float(const char *path, const float *data, int pages, int height,
                                int width);

/* Writes an 8-bit RGB image (height x width x 3 bytes, interleaved) atomically, as
 * isl_tiff_write_float: a picture any viewer shows (`isl predict --preview`). */
isl_status isl_tiff_write_rgb8(const char *path, const uint8_t *rgb, int height, int width);

/* Streaming writer for images too large to hold: rows are appended in order. The file
 * appears at path (atomically) only when isl_tiff_writer_close succeeds. */
typedef struct isl_tiff_writer isl_tiff_writer;
isl_status isl_tiff_writer_open(const char *path, int pages, int height, int width,
                                isl_tiff_writer **out);
/* Appends `rows` rows (rows * width floats) to the current page, moving to the next page
 * after height rows. */
isl_status isl_tiff_writer_append(isl_tiff_writer *w, const float *data, int rows);
/* Finishes and renames into place (ISL_OK), or on failure removes the temp file. */
isl_status isl_tiff_writer_close(isl_tiff_writer *w);
/* Abandons the file: removes the temp file. NULL is a no-op. */
void isl_tiff_writer_discard(isl_tiff_writer *w);

/* The calling thread's message of the last failed isl_tiff_* call ("" if none). */
const char *isl_tiff_last_error(void);

#endif
