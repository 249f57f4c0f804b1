/* isl flat-field: a flat field (or transmitted-light dust field) from a plate's tiles. */
#include "cli.h"

#include "tiff_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char flat_field_help[] =
    "Usage: isl flat-field --input TILE.tif [TILE.tif ...] [options] -o FF.tif\n"
    "\n"
    "Estimates the flat field of a microscope from many tiles of one plate (STAR Methods,\n"
    "\"Flat field correction\"): the per-pixel median over every page of every tile, blurred\n"
    "by a Gaussian of standard deviation H/32 (transmitted light) or H/16 (fluorescence),\n"
    "scaled to mean 1. Writes one float32 page; 'isl preprocess --flat-field' divides by it.\n"
    "\n"
    "Options:\n"
    "  --input FILE ...         tiles: multi-page TIFFs (8/16-bit unsigned or float32), all\n"
    "                           of one size; several files may follow one --input\n"
    "  --light KIND             transmitted (default) or fluorescence: the blur's sigma\n"
    "  --sigma PIXELS           blur of this standard deviation instead\n"
    "  --dust                   no blur: the paper's transmitted-light dust field (give the\n"
    "                           tiles already flat-field corrected, or use it alone)\n"
    "  --downscale              downscale each page 2x first (as 'isl preprocess --downscale')\n"
    "  --fluorescence-dust OFFSET  instead: the paper's fluorescence dust artifact (additive\n"
    "                           disks at the same place in every image) from fluorescence\n"
    "                           images, with OFFSET the camera's sensor offset (its reading\n"
    "                           in the dark, e.g. 100); 'isl preprocess --dust-artifact'\n"
    "                           subtracts it. --sigma: the background blur (default H/16)\n"
    "  --dust-threshold T       dust where the smoothed mean image exceeds its background\n"
    "                           by more than T times the background (default 0.1)\n"
    "  -o, --output PATH        flat field to write (float32 TIFF, required)\n"
    "  -h, --help               show this help\n";

enum { OPT_INPUT = 1, OPT_LIGHT, OPT_SIGMA, OPT_DUST, OPT_DOWNSCALE, OPT_OUTPUT, OPT_FL_DUST,
       OPT_DUST_THRESHOLD };

static const cli_option flat_field_options[] = {
    {"input", 0, 1, OPT_INPUT},         {"light", 0, 1, OPT_LIGHT},   {"sigma", 0, 1, OPT_SIGMA},
    {"dust", 0, 0, OPT_DUST},           {"downscale", 0, 0, OPT_DOWNSCALE},
    {"output", 'o', 1, OPT_OUTPUT},     {"fluorescence-dust", 0, 1, OPT_FL_DUST},
    {"dust-threshold", 0, 1, OPT_DUST_THRESHOLD}, {NULL, 0, 0, 0}};

int cli_parse_light(const char *text, isl_light *out)
{
    if (!strcmp(text, "transmitted"))
        *out = ISL_LIGHT_TRANSMITTED;
    else if (!strcmp(text, "fluorescence"))
        *out = ISL_LIGHT_FLUORESCENCE;
    else
        return cli_usage_error("--light: '%s' is not one of: transmitted, fluorescence", text);
    return 0;
}

int cli_read_float_stack(const char *path, int expect_pages, int downscale, cli_float_stack *out)
{
    isl_tiff_stack s;
    isl_status st = isl_tiff_read_stack(path, expect_pages, &s);
    if (st != ISL_OK)
        return cli_tiff_error(st);
    const size_t plane = (size_t)s.height * s.width, n = plane * s.num_z;
    float *data = malloc(sizeof(float) * (n + 1));
    if (!data) {
        isl_tiff_stack_free(&s);
        return cli_runtime_error("%s: out of memory for %d pages of %d x %d", path, s.num_z,
                                 s.height, s.width);
    }
    /* Raw values (not scaled to [0, 1]): flat fields and normalization do not need it. */
    for (size_t i = 0; i < n; i++)
        data[i] = s.dtype == ISL_DTYPE_U8    ? ((const uint8_t *)s.data)[i]
                  : s.dtype == ISL_DTYPE_U16 ? ((const uint16_t *)s.data)[i]
                                             : ((const float *)s.data)[i];
    *out = (cli_float_stack){data, s.num_z, s.height, s.width};
    isl_tiff_stack_free(&s);
    if (!downscale)
        return 0;
    const int h = out->height / 2, w = out->width / 2;
    for (int z = 0; z < out->num_z; z++) {
        /* In place: page z of the result ends before page z of the input starts. */
        float *tmp = malloc(sizeof(float) * ((size_t)h * w + 1));
        if (!tmp)
            return free(data), cli_runtime_error("%s: out of memory", path);
        st = isl_downscale2(data + (size_t)z * plane, out->height, out->width, tmp);
        if (st == ISL_OK)
            memcpy(data + (size_t)z * h * w, tmp, sizeof(float) * (size_t)h * w);
        free(tmp);
        if (st != ISL_OK) {
            free(data);
            fprintf(stderr, "isl: error: %s: %s\n", path, isl_last_error());
            return CLI_EXIT_RUNTIME;
        }
    }
    out->height = h, out->width = w;
    return 0;
}

int cli_cmd_flat_field(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(flat_field_help, stdout);
        return CLI_EXIT_OK;
    }
    const char **inputs = calloc((size_t)argc, sizeof(char *));
    const char *output = NULL;
    int count = 0, dust = 0, downscale = 0, in_inputs = 0, rc;
    isl_light light = ISL_LIGHT_TRANSMITTED;
    double sigma = -1.0, offset = NAN, threshold = 0.1;
    if (!inputs)
        return cli_runtime_error("out of memory");
    cli_args p;
    cli_args_init(&p, argc, argv, "flat-field");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, flat_field_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return free(inputs), CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL) {
            if (!in_inputs)
                return free(inputs), cli_usage_error("unexpected argument '%s'", v);
            inputs[count++] = v;
            continue;
        }
        in_inputs = id == OPT_INPUT;
        switch (id) {
        case OPT_INPUT: inputs[count++] = v; break;
        case OPT_LIGHT:
            if ((rc = cli_parse_light(v, &light)))
                return free(inputs), rc;
            break;
        case OPT_SIGMA:
            if (cli_parse_double("--sigma", v, 0.0, 1e5, &sigma))
                return free(inputs), CLI_EXIT_USAGE;
            break;
        case OPT_DUST: dust = 1; break;
        case OPT_DOWNSCALE: downscale = 1; break;
        case OPT_OUTPUT: output = v; break;
        case OPT_FL_DUST:
            if (cli_parse_double("--fluorescence-dust", v, -1e9, 1e9, &offset))
                return free(inputs), CLI_EXIT_USAGE;
            break;
        case OPT_DUST_THRESHOLD:
            if (cli_parse_double("--dust-threshold", v, 1e-6, 100, &threshold))
                return free(inputs), CLI_EXIT_USAGE;
            break;
        }
    }
    if (!count || !output)
        return free(inputs), cli_usage_error("missing --input or -o (see 'isl flat-field --help')");
    if (dust && sigma >= 0.0)
        return free(inputs), cli_usage_error("--dust and --sigma exclude each other");
    const int fluorescence_dust = !isnan(offset);
    if (fluorescence_dust && dust)
        return free(inputs), cli_usage_error("--dust and --fluorescence-dust exclude each other");

    cli_float_stack *tiles = calloc((size_t)count, sizeof(*tiles));
    const float **pages = NULL;
    float *field = NULL;
    int total = 0;
    rc = tiles ? 0 : cli_runtime_error("out of memory");
    for (int i = 0; i < count && !rc; i++) {
        if ((rc = cli_read_float_stack(inputs[i], 0, downscale, &tiles[i])))
            break;
        if (i && (tiles[i].height != tiles[0].height || tiles[i].width != tiles[0].width))
            rc = cli_runtime_error("%s: tile size %d x %d differs from %s's %d x %d", inputs[i],
                                   tiles[i].height, tiles[i].width, inputs[0], tiles[0].height,
                                   tiles[0].width);
        total += tiles[i].num_z;
    }
    if (!rc && total < 3)
        rc = cli_runtime_error("a flat field needs at least 3 pages, the tiles have %d", total);
    if (!rc && (!(pages = malloc(sizeof(*pages) * (size_t)total)) ||
                !(field = malloc(sizeof(float) * (size_t)tiles[0].height * tiles[0].width))))
        rc = cli_runtime_error("out of memory");
    if (!rc) {
        const int h = tiles[0].height, w = tiles[0].width;
        int k = 0;
        for (int i = 0; i < count; i++)
            for (int z = 0; z < tiles[i].num_z; z++)
                pages[k++] = tiles[i].data + (size_t)z * h * w;
        int64_t dust_pixels = 0;
        isl_status st;
        if (fluorescence_dust) {
            if (sigma < 0.0)
                sigma = isl_flat_field_sigma(ISL_LIGHT_FLUORESCENCE, h);
            st = isl_dust_fluorescence_estimate(pages, total, h, w, offset, threshold, sigma,
                                                field, &dust_pixels);
        } else {
            if (dust)
                sigma = 0.0;
            else if (sigma < 0.0)
                sigma = isl_flat_field_sigma(light, h);
            st = isl_flat_field_estimate(pages, total, h, w, sigma, field);
        }
        if (st != ISL_OK)
            rc = cli_library_error(st);
        else if ((st = isl_tiff_write_float(output, field, 1, h, w)) != ISL_OK)
            rc = cli_tiff_error(st);
        if (!rc && fluorescence_dust)
            fprintf(stderr, "isl: %s: fluorescence dust artifact of %d pages of %d tiles "
                            "(%d x %d, sensor offset %g, threshold %g, sigma %g): %.2f%% of "
                            "the pixels are dust\n", output, total, count, h, w, offset,
                    threshold, sigma, 100.0 * (double)dust_pixels / ((double)h * w));
        else if (!rc)
            fprintf(stderr, "isl: %s: %s of %d pages of %d tiles (%d x %d, sigma %g)\n", output,
                    dust ? "dust field" : "flat field", total, count, h, w, sigma);
    }
    for (int i = 0; tiles && i < count; i++)
        free(tiles[i].data);
    free(tiles), free(pages), free(field), free(inputs);
    return rc;
}
