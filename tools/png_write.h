/* PNG pictures of 8-bit gray or RGB pixels (libpng). */
#ifndef ISL_CLI_PNG_WRITE_H
#define ISL_CLI_PNG_WRITE_H

#include "cli.h"

#include <stddef.h>
#include <stdint.h>

/* Encodes height x width pixels of `channels` (1 gray, 3 RGB) bytes into a new buffer
 * (*out, free it). 0, or -1 on failure (bad size, out of memory). */
int cli_png_encode(const uint8_t *pixels, int height, int width, int channels, uint8_t **out,
                   size_t *size);
/* Writes the PNG to path atomically. 0, or the exit code of a reported error. */
int cli_png_write(const char *path, const uint8_t *pixels, int height, int width, int channels);

#endif
