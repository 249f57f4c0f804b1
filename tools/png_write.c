/* 8-bit RGB pictures as PNG (bioimage.io covers take PNG, not TIFF), with libpng's
 * simplified API, written atomically by the library's writer. */
#include "cli.h"
#include "model_io.h"

#include <png.h>
#include <stdlib.h>
#include <string.h>

int cli_png_write_rgb8(const char *path, const uint8_t *rgb, int height, int width,
                       char *error, size_t error_size)
{
    png_image image;
    memset(&image, 0, sizeof(image));
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)width;
    image.height = (png_uint_32)height;
    image.format = PNG_FORMAT_RGB;
    png_alloc_size_t size = 0;
    if (!png_image_write_to_memory(&image, NULL, &size, 0, rgb, 0, NULL)) {
        snprintf(error, error_size, "%s: cannot encode the PNG: %s", path, image.message);
        return -1;
    }
    void *buf = malloc(size);
    if (!buf) {
        snprintf(error, error_size, "%s: out of memory", path);
        return -1;
    }
    int rc = 0;
    if (!png_image_write_to_memory(&image, buf, &size, 0, rgb, 0, NULL)) {
        snprintf(error, error_size, "%s: cannot encode the PNG: %s", path, image.message);
        rc = -1;
    } else if (isl_write_bytes_atomic(path, buf, size) != ISL_OK) {
        snprintf(error, error_size, "%s", isl_last_error());
        rc = -1;
    }
    png_image_free(&image);
    free(buf);
    return rc;
}
