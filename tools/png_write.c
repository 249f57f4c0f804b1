/* PNG pictures with libpng: encoded in memory (for files and for inline HTML images). */
#include "png_write.h"

#include "cli.h"

#include <stdio.h>


#include <png.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_buffer {
    uint8_t *data;
    size_t size, capacity;
    int failed;
} png_buffer;

static void append(png_structp png, png_bytep bytes, png_size_t n)
{
    png_buffer *b = png_get_io_ptr(png);
    if (b->failed)
        return;
    if (b->size + n > b->capacity) {
        size_t cap = b->capacity ? b->capacity : 4096;
        while (cap < b->size + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->capacity = cap;
    }
    memcpy(b->data + b->size, bytes, n);
    b->size += n;
}

static void flush(png_structp png)
{
    (void)png;
}

int cli_png_encode(const uint8_t *pixels, int height, int width, int channels, uint8_t **out,
                   size_t *size)
{
    *out = NULL;
    *size = 0;
    if (height < 1 || width < 1 || (channels != 1 && channels != 3))
        return -1;
    png_buffer b = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return -1;
    }
    /* libpng reports errors by longjmp. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(b.data);
        return -1;
    }
    png_set_write_fn(png, &b, append, flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, (png_const_bytep)(pixels + (size_t)y * width * channels));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (b.failed) {
        free(b.data);
        return -1;
    }
    *out = b.data;
    *size = b.size;
    return 0;
}

int cli_png_write(const char *path, const uint8_t *pixels, int height, int width, int channels)
{
    uint8_t *data;
    size_t size;
    if (cli_png_encode(pixels, height, width, channels, &data, &size) != 0)
        return cli_runtime_error("%s: cannot encode the PNG picture", path);
    int rc = cli_write_file_atomic(path, data, size);
    free(data);
    return rc;
}

int cli_png_write_rgb8(const char *path, const uint8_t *rgb, int height, int width,
                       char *error, size_t error_size)
{
    uint8_t *data;
    size_t size;
    if (cli_png_encode(rgb, height, width, 3, &data, &size) != 0) {
        snprintf(error, error_size, "%s: cannot encode the PNG picture", path);
        return -1;
    }
    int rc = cli_write_file_atomic_quiet(path, data, size, error, error_size);
    free(data);
    return rc;
}
