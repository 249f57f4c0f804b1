/*
 * predict_tiff: predicts fluorescence labels from a transmitted-light TIFF z-stack.
 *
 *   predict_tiff MODEL STACK.tif OUT_PREFIX
 *
 * Reads STACK.tif (one grayscale page per z plane: 8- or 16-bit unsigned, or 32-bit
 * float) with libtiff, predicts every label head of MODEL with isl's public API and
 * writes OUT_PREFIX_<head>_median.tif and OUT_PREFIX_<head>_mean.tif (32-bit float,
 * intensities in [0, 1]).
 *
 * Build: cc predict_tiff.c $(pkg-config --cflags --libs isl libtiff-4)
 */
#include <isl.h>
#include <tiffio.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads all pages of a TIFF into one plane-major buffer. Returns 0 on success. */
static int read_stack(const char *path, isl_stack *stack)
{
    TIFF *tif = TIFFOpen(path, "r");
    if (!tif)
        return -1;
    uint32_t width = 0, height = 0;
    uint16_t bits = 0, format = SAMPLEFORMAT_UINT, channels = 1;
    TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &width);
    TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &height);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bits);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &format);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &channels);
    if (bits == 8 && format == SAMPLEFORMAT_UINT)
        stack->dtype = ISL_DTYPE_U8;
    else if (bits == 16 && format == SAMPLEFORMAT_UINT)
        stack->dtype = ISL_DTYPE_U16;
    else if (bits == 32 && format == SAMPLEFORMAT_IEEEFP)
        stack->dtype = ISL_DTYPE_F32;
    else
        bits = 0;
    if (!bits || channels != 1 || TIFFIsTiled(tif) || !width || !height) {
        fprintf(stderr, "%s: need stripped grayscale 8/16-bit or float pages\n", path);
        TIFFClose(tif);
        return -1;
    }
    const size_t row_bytes = (size_t)width * bits / 8;
    const int planes = TIFFNumberOfDirectories(tif);
    unsigned char *data = malloc((size_t)planes * height * row_bytes);
    int ok = data != NULL;
    for (int z = 0; ok && z < planes; z++) {
        ok = TIFFSetDirectory(tif, (tdir_t)z);
        for (uint32_t y = 0; ok && y < height; y++)
            ok = TIFFReadScanline(tif, data + ((size_t)z * height + y) * row_bytes, y, 0) == 1;
    }
    TIFFClose(tif);
    if (!ok) {
        free(data);
        return -1;
    }
    stack->data = data;
    stack->num_z = planes;
    stack->height = (int)height;
    stack->width = (int)width;
    return 0;
}

/* Writes a height x width float image as a one-page 32-bit float TIFF. */
static int write_image(const char *path, const float *image, int height, int width)
{
    TIFF *tif = TIFFOpen(path, "w");
    if (!tif)
        return -1;
    TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, (uint32_t)width);
    TIFFSetField(tif, TIFFTAG_IMAGELENGTH, (uint32_t)height);
    TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, 32);
    TIFFSetField(tif, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_IEEEFP);
    TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(tif, TIFFTAG_COMPRESSION, COMPRESSION_ADOBE_DEFLATE);
    TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, 16);
    int ok = 1;
    for (int y = 0; ok && y < height; y++)
        ok = TIFFWriteScanline(tif, (void *)(image + (size_t)y * width), (uint32_t)y, 0) == 1;
    TIFFClose(tif);
    return ok ? 0 : -1;
}

/* Reports a failed isl call with the library's message. */
static int fail(const char *what, isl_status s)
{
    fprintf(stderr, "%s: %s: %s\n", what, isl_status_string(s), isl_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL STACK.tif OUT_PREFIX\n", argv[0]);
        return 2;
    }
    isl_model *model = NULL;
    isl_status s = isl_model_load(argv[1], &model);
    if (s != ISL_OK)
        return fail("loading the model", s);

    isl_stack stack;
    if (read_stack(argv[2], &stack) != 0) {
        fprintf(stderr, "cannot read the stack %s\n", argv[2]);
        isl_model_free(model);
        return 1;
    }

    /* One output image per label head and statistic: outputs[head * ISL_STAT_COUNT + stat]. */
    const isl_stat stats[] = {ISL_STAT_MEDIAN, ISL_STAT_MEAN};
    const int num_heads = isl_model_num_heads(model);
    const size_t pixels = (size_t)stack.height * stack.width;
    float **outputs = calloc((size_t)num_heads * ISL_STAT_COUNT, sizeof(float *));
    int label_heads[256], count = 0;
    for (int h = 0; h < num_heads && count < 256; h++)
        if (strcmp(isl_model_head_name(model, h), "autoencoder") != 0)
            label_heads[count++] = h;
    for (int i = 0; outputs && i < count; i++)
        for (int k = 0; k < 2; k++)
            outputs[label_heads[i] * ISL_STAT_COUNT + stats[k]] = malloc(pixels * sizeof(float));

    isl_predict_options *options = NULL;
    s = isl_predict_options_create(&options);
    if (s == ISL_OK)
        s = isl_predict_options_set_stats(options, 2, stats);
    if (s == ISL_OK)
        s = isl_predict_image(model, options, &stack, outputs);

    int status = 0;
    if (s != ISL_OK) {
        status = fail("predicting", s);
    } else {
        for (int i = 0; i < count && status == 0; i++) {
            for (int k = 0; k < 2 && status == 0; k++) {
                char path[4096];
                snprintf(path, sizeof(path), "%s_%s_%s.tif", argv[3],
                         isl_model_head_name(model, label_heads[i]), isl_stat_name(stats[k]));
                if (write_image(path, outputs[label_heads[i] * ISL_STAT_COUNT + stats[k]],
                                stack.height, stack.width) != 0) {
                    fprintf(stderr, "cannot write %s\n", path);
                    status = 1;
                } else {
                    printf("wrote %s\n", path);
                }
            }
        }
    }

    for (int i = 0; outputs && i < num_heads * ISL_STAT_COUNT; i++)
        free(outputs[i]);
    free(outputs);
    isl_predict_options_free(options);
    free((void *)stack.data);
    isl_model_free(model);
    return status;
}
