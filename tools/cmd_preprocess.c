/* isl preprocess: the paper's preprocessing of one raw stack (STAR Methods, "Preprocessing
 * pipeline"): median filter, 2x downscaling, flat-field and dust correction,
 * normalization, in that order. */
#include "cli.h"

#include "tiff_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char preprocess_help[] =
    "Usage: isl preprocess --input RAW.tif [options] -o STACK.tif\n"
    "\n"
    "Preprocesses a raw camera stack (multi-page TIFF, 8/16-bit unsigned or float32) as the\n"
    "paper did, page by page, and writes float32 pages in [0, 1] that 'isl predict', 'isl\n"
    "dataset build' and models without input normalization take as they are:\n"
    "  1. --median: 5 x 5 median filter until stable (at most 32 passes; default for\n"
    "     fluorescence), removes salt-and-pepper noise and specks\n"
    "  1b. --dust-artifact DUST.tif: subtract the fluorescence dust artifact ('isl\n"
    "     flat-field --fluorescence-dust OFFSET'; full size, before downscaling)\n"
    "  2. --downscale: bilinear 2x downscaling (the mean of each 2 x 2 block)\n"
    "  3. --flat-field FF.tif: divide by the flat field ('isl flat-field'), one page for\n"
    "     every page or one page per page of the input\n"
    "  4. --dust-field DUST.tif: divide by the transmitted-light dust field ('isl\n"
    "     flat-field --dust')\n"
    "  5. normalize each page: mean 0.5, sd 0.125 (transmitted light) or mean 0.25, sd\n"
    "     0.125 (fluorescence), clipped to [0, 1] (--no-normalize: skip)\n"
    "\n"
    "Options:\n"
    "  --input FILE          raw stack (required)\n"
    "  --light KIND          transmitted (default) or fluorescence\n"
    "  --median / --no-median   force the median filter on or off\n"
    "  --downscale           downscale 2x\n"
    "  --dust-artifact FILE  fluorescence dust artifact to subtract (the raw stack's size)\n"
    "  --flat-field FILE     flat field to divide by (its size: the stack's after downscaling)\n"
    "  --dust-field FILE     dust field to divide by (likewise)\n"
    "  --mean M, --sd S      normalize to this mean and standard deviation instead (e.g.\n"
    "                        to match a model's training stacks; docs/preprocessing.md)\n"
    "  --no-normalize        keep the corrected values (no normalization or clipping)\n"
    "  -o, --output PATH     stack to write (float32 TIFF, required)\n"
    "  -h, --help            show this help\n";

enum {
    OPT_INPUT = 1, OPT_LIGHT, OPT_MEDIAN, OPT_NO_MEDIAN, OPT_DOWNSCALE, OPT_FLAT, OPT_DUST,
    OPT_NO_NORMALIZE, OPT_MEAN, OPT_SD, OPT_OUTPUT, OPT_ARTIFACT
};

static const cli_option preprocess_options[] = {
    {"input", 0, 1, OPT_INPUT},           {"light", 0, 1, OPT_LIGHT},
    {"median", 0, 0, OPT_MEDIAN},         {"no-median", 0, 0, OPT_NO_MEDIAN},
    {"downscale", 0, 0, OPT_DOWNSCALE},   {"flat-field", 0, 1, OPT_FLAT},
    {"dust-field", 0, 1, OPT_DUST},       {"no-normalize", 0, 0, OPT_NO_NORMALIZE},
    {"mean", 0, 1, OPT_MEAN},             {"sd", 0, 1, OPT_SD},
    {"output", 'o', 1, OPT_OUTPUT},       {"dust-artifact", 0, 1, OPT_ARTIFACT},
    {NULL, 0, 0, 0}};

typedef struct preprocess_args {
    const char *input, *flat, *dust, *artifact, *output;
    isl_light light;
    int median; /* -1: by light */
    int downscale, normalize;
    double mean, sd; /* < 0: the light's */
} preprocess_args;

static int parse(int argc, char **argv, preprocess_args *a)
{
    *a = (preprocess_args){
        .light = ISL_LIGHT_TRANSMITTED, .median = -1, .normalize = 1, .mean = -1, .sd = -1};
    cli_args p;
    cli_args_init(&p, argc, argv, "preprocess");
    int kind, id, rc;
    const char *v;
    while ((kind = cli_args_next(&p, preprocess_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("unexpected argument '%s'", v);
        switch (id) {
        case OPT_INPUT: a->input = v; break;
        case OPT_LIGHT:
            if ((rc = cli_parse_light(v, &a->light)))
                return rc;
            break;
        case OPT_MEDIAN: a->median = 1; break;
        case OPT_NO_MEDIAN: a->median = 0; break;
        case OPT_DOWNSCALE: a->downscale = 1; break;
        case OPT_FLAT: a->flat = v; break;
        case OPT_DUST: a->dust = v; break;
        case OPT_ARTIFACT: a->artifact = v; break;
        case OPT_NO_NORMALIZE: a->normalize = 0; break;
        case OPT_MEAN:
            if (cli_parse_double("--mean", v, 0.0, 1.0, &a->mean))
                return CLI_EXIT_USAGE;
            break;
        case OPT_SD:
            if (cli_parse_double("--sd", v, 1e-6, 1.0, &a->sd))
                return CLI_EXIT_USAGE;
            break;
        case OPT_OUTPUT: a->output = v; break;
        }
    }
    if (!a->input || !a->output)
        return cli_usage_error("missing --input or -o (see 'isl preprocess --help')");
    if (a->median < 0)
        a->median = a->light == ISL_LIGHT_FLUORESCENCE;
    if (a->mean < 0)
        a->mean = a->light == ISL_LIGHT_FLUORESCENCE ? 0.25 : 0.5;
    if (a->sd < 0)
        a->sd = 0.125;
    return 0;
}

/* A field for a stack: one page for all, or one per page, of the stack's page size. */
static int read_field(const char *path, const char *option, const cli_float_stack *s,
                      cli_float_stack *f)
{
    int rc = cli_read_float_stack(path, 0, 0, f);
    if (rc)
        return rc;
    if (f->height != s->height || f->width != s->width)
        rc = cli_runtime_error("%s: %s is %d x %d but the stack's pages are %d x %d", path,
                               option, f->height, f->width, s->height, s->width);
    else if (f->num_z != 1 && f->num_z != s->num_z)
        rc = cli_runtime_error("%s: %s has %d pages; give 1 or the stack's %d", path, option,
                               f->num_z, s->num_z);
    if (rc) {
        free(f->data);
        f->data = NULL;
    }
    return rc;
}

static int page_error(const preprocess_args *a, int z)
{
    return cli_runtime_error("%s: page %d: %s", a->input, z, isl_last_error());
}

int cli_cmd_preprocess(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(preprocess_help, stdout);
        return CLI_EXIT_OK;
    }
    preprocess_args a;
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc;
    cli_float_stack s = {0}, flat = {0}, dust = {0}, artifact = {0};
    /* The median filter runs before downscaling, so the stack is read at full size. */
    if ((rc = cli_read_float_stack(a.input, 0, 0, &s)))
        return rc;
    size_t plane = (size_t)s.height * s.width;
    for (int z = 0; z < s.num_z && a.median; z++) {
        int passes;
        if (isl_median5_until_stable(s.data + z * plane, s.height, s.width, 32, &passes) != ISL_OK) {
            rc = page_error(&a, z);
            goto done;
        }
    }
    if (a.artifact && (rc = read_field(a.artifact, "the dust artifact", &s, &artifact)))
        goto done;
    for (int z = 0; z < s.num_z && artifact.data; z++)
        if (isl_dust_fluorescence_remove(s.data + z * plane,
                                         artifact.data + (artifact.num_z > 1 ? z * plane : 0),
                                         s.height, s.width) != ISL_OK) {
            rc = page_error(&a, z);
            goto done;
        }
    if (a.downscale) {
        const int h = s.height / 2, w = s.width / 2;
        float *small = malloc(sizeof(float) * ((size_t)h * w * s.num_z + 1));
        if (!small) {
            rc = cli_runtime_error("out of memory");
            goto done;
        }
        for (int z = 0; z < s.num_z; z++)
            if (isl_downscale2(s.data + z * plane, s.height, s.width, small + (size_t)z * h * w) !=
                ISL_OK) {
                free(small);
                rc = page_error(&a, z);
                goto done;
            }
        free(s.data);
        s.data = small, s.height = h, s.width = w;
        plane = (size_t)h * w;
    }
    if ((a.flat && (rc = read_field(a.flat, "the flat field", &s, &flat))) ||
        (a.dust && (rc = read_field(a.dust, "the dust field", &s, &dust))))
        goto done;
    for (int z = 0; z < s.num_z; z++) {
        float *page = s.data + z * plane;
        if ((flat.data && isl_flat_field_apply(page, flat.data + (flat.num_z > 1 ? z * plane : 0),
                                               s.height, s.width) != ISL_OK) ||
            (dust.data && isl_flat_field_apply(page, dust.data + (dust.num_z > 1 ? z * plane : 0),
                                               s.height, s.width) != ISL_OK) ||
            (a.normalize && isl_normalize(page, (int64_t)plane, a.mean, a.sd) != ISL_OK)) {
            rc = page_error(&a, z);
            goto done;
        }
    }
    isl_status st = isl_tiff_write_float(a.output, s.data, s.num_z, s.height, s.width);
    if (st != ISL_OK)
        rc = cli_tiff_error(st);
done:
    free(s.data), free(flat.data), free(dust.data), free(artifact.data);
    return rc;
}
