/* isl dataset: "build" a training dataset from TIFF files, "info" about a dataset file. */
#include "cli.h"

#include "tiff_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char dataset_help[] =
    "Usage: isl dataset <command> [options]\n"
    "\n"
    "Commands:\n"
    "  build   make a training dataset file from TIFF stacks and label images\n"
    "  info    describe a dataset file\n"
    "\n"
    "Run 'isl dataset <command> --help' for the options of a command.\n";

static const char build_help[] =
    "Usage: isl dataset build --input STACK.tif [well options] [--input ...] -o DATA.h5\n"
    "\n"
    "Builds a training dataset (HDF5, docs/training.md) and writes it atomically. Each\n"
    "--input starts a well: a multi-page TIFF whose pages are the transmitted-light z planes\n"
    "(8/16-bit unsigned or 32-bit float; float values must lie in [0, 1]). The options\n"
    "after it, up to the next --input, describe that well.\n"
    "\n"
    "Well options:\n"
    "  --target NAME=FILE[:X0,Y0]  label NAME of the well: a single-page TIFF whose top-left\n"
    "                              pixel lies at (X0, Y0) of the well (default 0,0); it may\n"
    "                              cover part of the well, the rest is unknown\n"
    "  --mask NAME=FILE            where label NAME is known: a single-page TIFF of the\n"
    "                              target's size, nonzero = known (default: all of it)\n"
    "  --well NAME                 well name (default: the input file name without .tif)\n"
    "  --condition TEXT            condition of the well (e.g. \"B\"; default none)\n"
    "  --pixel-size UM             pixel size in micrometres (default 0: unknown)\n"
    "\n"
    "Options:\n"
    "  -o, --output PATH           dataset file to write (required)\n"
    "  -h, --help                  show this help\n";

static const char info_help[] =
    "Usage: isl dataset info DATA.h5\n"
    "\n"
    "Loads and validates a dataset file and prints its wells (size, condition, pixel size,\n"
    "labels with their known pixels) and the known pixels of each label over all wells.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n";

/* ---------------------------------------------------------------------------------- */
/* Summary (build and info)                                                            */
/* ---------------------------------------------------------------------------------- */

static int64_t count_known(const uint8_t *mask, size_t n)
{
    int64_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += mask[i] != 0;
    return k;
}

static void print_summary(FILE *out, const isl_dataset *ds)
{
    char buf[32];
    int wells = isl_dataset_num_wells(ds), labels = isl_dataset_num_labels(ds), width = 0;
    for (int l = 0; l < labels; l++) {
        int len = (int)strlen(isl_dataset_label_name(ds, l));
        width = len > width ? len : width;
    }
    int64_t *totals = calloc((size_t)(labels ? labels : 1), sizeof(int64_t));
    int *in_wells = calloc((size_t)(labels ? labels : 1), sizeof(int));
    fprintf(out, "z planes:  %d\n", isl_dataset_num_z(ds));
    fprintf(out, "wells:     %d\n", wells);
    for (int i = 0; i < wells; i++) {
        int h = 0, w = 0;
        isl_dataset_well_size(ds, i, &h, &w);
        const char *condition = isl_dataset_well_condition(ds, i);
        double pixel = isl_dataset_well_pixel_size(ds, i);
        fprintf(out, "  %s: %d x %d (width x height)", isl_dataset_well_name(ds, i), w, h);
        if (condition[0])
            fprintf(out, ", condition %s", condition);
        if (pixel > 0)
            fprintf(out, ", %g um/pixel", pixel);
        fputc('\n', out);
        for (int l = 0; l < labels; l++) {
            const uint8_t *mask;
            if (isl_dataset_well_target(ds, i, isl_dataset_label_name(ds, l), NULL, &mask) !=
                ISL_OK)
                continue;
            int64_t known = count_known(mask, (size_t)h * (size_t)w);
            if (totals) {
                totals[l] += known;
                in_wells[l]++;
            }
            fprintf(out, "    %-*s %s known pixels (%.1f%%)\n", width,
                    isl_dataset_label_name(ds, l), cli_thousands(known, buf, sizeof(buf)),
                    100.0 * (double)known / ((double)h * w));
        }
    }
    fprintf(out, "labels:    %d\n", labels);
    for (int l = 0; totals && in_wells && l < labels; l++)
        fprintf(out, "  %-*s %s known pixels in %d well%s\n", width,
                isl_dataset_label_name(ds, l), cli_thousands(totals[l], buf, sizeof(buf)),
                in_wells[l], in_wells[l] == 1 ? "" : "s");
    free(totals);
    free(in_wells);
}

/* ---------------------------------------------------------------------------------- */
/* isl dataset build                                                                   */
/* ---------------------------------------------------------------------------------- */

typedef struct target_spec {
    char *label, *file; /* allocated */
    int x0, y0;
    char *mask;         /* allocated; NULL: known everywhere */
} target_spec;

typedef struct well_spec {
    const char *input, *name, *condition;
    double pixel_size;
    int has_pixel_size;
    target_spec *targets; /* room for every argument */
    int num_targets;
} well_spec;

typedef struct build_args {
    well_spec *wells; /* room for every argument */
    int num_wells;
    const char *output;
} build_args;

enum { OPT_INPUT, OPT_TARGET, OPT_MASK, OPT_WELL, OPT_CONDITION, OPT_PIXEL, OPT_OUTPUT };

static const cli_option build_options[] = {
    {"input", 0, 1, OPT_INPUT},         {"target", 0, 1, OPT_TARGET},
    {"mask", 0, 1, OPT_MASK},           {"well", 0, 1, OPT_WELL},
    {"condition", 0, 1, OPT_CONDITION}, {"pixel-size", 0, 1, OPT_PIXEL},
    {"output", 'o', 1, OPT_OUTPUT},     {NULL, 0, 0, 0},
};

static void free_build_args(build_args *a)
{
    for (int i = 0; a->wells && i < a->num_wells; i++) {
        for (int t = 0; t < a->wells[i].num_targets; t++) {
            free(a->wells[i].targets[t].label);
            free(a->wells[i].targets[t].file);
            free(a->wells[i].targets[t].mask);
        }
        free(a->wells[i].targets);
    }
    free(a->wells);
}

static char *copy_n(const char *s, size_t n)
{
    char *c = malloc(n + 1);
    if (c) {
        memcpy(c, s, n);
        c[n] = '\0';
    }
    return c;
}

static target_spec *find_target(well_spec *w, const char *label)
{
    for (int t = 0; t < w->num_targets; t++)
        if (!strcmp(w->targets[t].label, label))
            return &w->targets[t];
    return NULL;
}

static int add_target_arg(well_spec *w, const char *text)
{
    target_spec t = {0};
    int rc = cli_parse_named_file("--target", text, 1, &t.label, &t.file, &t.x0, &t.y0);
    if (rc == CLI_EXIT_OK && find_target(w, t.label))
        rc = cli_usage_error("--target %s is given twice for input %s", t.label, w->input);
    if (rc != CLI_EXIT_OK) {
        free(t.label);
        free(t.file);
        return rc;
    }
    w->targets[w->num_targets++] = t;
    return CLI_EXIT_OK;
}

/* Masks are matched to the well's targets once all its options are read (either order). */
static int attach_masks(well_spec *w, char **labels, char **files, int count)
{
    for (int m = 0; m < count; m++) {
        target_spec *t = find_target(w, labels[m]);
        if (!t)
            return cli_usage_error("--mask %s: input %s has no --target %s", labels[m], w->input,
                                   labels[m]);
        if (t->mask)
            return cli_usage_error("--mask %s is given twice for input %s", labels[m], w->input);
        t->mask = files[m];
        files[m] = NULL;
    }
    return CLI_EXIT_OK;
}

/* Per-well settings given twice are mistakes, not overrides. */
static int set_once(const char *option, const well_spec *w, const char **field, const char *v)
{
    if (*field)
        return cli_usage_error("%s is given twice for input %s", option, w->input);
    *field = v;
    return CLI_EXIT_OK;
}

typedef struct pending_masks {
    char **labels, **files;
    int count;
} pending_masks;

static void clear_masks(pending_masks *m)
{
    for (int i = 0; i < m->count; i++) {
        free(m->labels[i]);
        free(m->files[i]);
    }
    m->count = 0;
}

static int parse_build_args(int argc, char **argv, build_args *a, pending_masks *pm)
{
    cli_args p;
    cli_args_init(&p, argc, argv, "dataset build");
    int kind, id, rc = CLI_EXIT_OK;
    const char *v;
    well_spec *w = NULL;
    while (rc == CLI_EXIT_OK && (kind = cli_args_next(&p, build_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("unexpected argument '%s' (see 'isl dataset build --help')", v);
        if (id == OPT_OUTPUT) {
            if (a->output)
                return cli_usage_error("-o/--output is given twice");
            a->output = v;
            continue;
        }
        if (id == OPT_INPUT) {
            if (w && (rc = attach_masks(w, pm->labels, pm->files, pm->count)) != CLI_EXIT_OK)
                return rc;
            clear_masks(pm);
            w = &a->wells[a->num_wells++];
            w->input = v;
            if (!(w->targets = calloc((size_t)argc, sizeof(target_spec))))
                return cli_runtime_error("out of memory");
            continue;
        }
        if (!w)
            return cli_usage_error("--%s must follow the --input it belongs to",
                                   build_options[id].name);
        switch (id) {
        case OPT_TARGET: rc = add_target_arg(w, v); break;
        case OPT_MASK: {
            int x0, y0;
            rc = cli_parse_named_file("--mask", v, 0, &pm->labels[pm->count], &pm->files[pm->count],
                                  &x0, &y0);
            pm->count++;
            break;
        }
        case OPT_WELL: rc = set_once("--well", w, &w->name, v); break;
        case OPT_CONDITION: rc = set_once("--condition", w, &w->condition, v); break;
        case OPT_PIXEL:
            if (w->has_pixel_size)
                return cli_usage_error("--pixel-size is given twice for input %s", w->input);
            w->has_pixel_size = 1;
            if (cli_parse_double("--pixel-size", v, 0, 1e6, &w->pixel_size) != 0)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    if (rc != CLI_EXIT_OK)
        return rc;
    if (w && (rc = attach_masks(w, pm->labels, pm->files, pm->count)) != CLI_EXIT_OK)
        return rc;
    if (!w)
        return cli_usage_error("missing --input (see 'isl dataset build --help')");
    if (!a->output)
        return cli_usage_error("missing -o/--output (see 'isl dataset build --help')");
    return CLI_EXIT_OK;
}

/* The input's file name without directory and .tif/.tiff: the default well name. */
static char *default_well_name(const char *input)
{
    const char *base = strrchr(input, '/');
    base = base ? base + 1 : input;
    size_t n = strlen(base);
    static const char *const exts[] = {".tif", ".tiff", ".TIF", ".TIFF"};
    for (size_t e = 0; e < sizeof(exts) / sizeof(exts[0]); e++) {
        size_t k = strlen(exts[e]);
        if (n > k && !strcmp(base + n - k, exts[e])) {
            n -= k;
            break;
        }
    }
    return copy_n(base, n);
}

/* A mask TIFF as bytes, 1 where nonzero; it must have the target's size. */
static int read_mask(const char *path, const isl_tiff_stack *target, const char *target_file,
                     uint8_t **out)
{
    isl_tiff_stack m;
    isl_status s = isl_tiff_read_stack(path, 1, &m);
    if (s != ISL_OK)
        return cli_tiff_error(s);
    int rc = CLI_EXIT_OK;
    size_t n = (size_t)m.height * (size_t)m.width;
    if (m.height != target->height || m.width != target->width)
        rc = cli_runtime_error("%s: the mask is %d x %d but the target %s is %d x %d", path,
                               m.width, m.height, target_file, target->width, target->height);
    else if (!(*out = malloc(n)))
        rc = cli_runtime_error("out of memory");
    for (size_t i = 0; rc == CLI_EXIT_OK && i < n; i++)
        (*out)[i] = m.dtype == ISL_DTYPE_U8    ? ((const uint8_t *)m.data)[i] != 0
                    : m.dtype == ISL_DTYPE_U16 ? ((const uint16_t *)m.data)[i] != 0
                                               : ((const float *)m.data)[i] != 0.0f;
    isl_tiff_stack_free(&m);
    return rc;
}

static int add_targets(isl_dataset *ds, int well, const well_spec *w)
{
    for (int t = 0; t < w->num_targets; t++) {
        const target_spec *ts = &w->targets[t];
        isl_tiff_stack image;
        uint8_t *mask = NULL;
        isl_status s = isl_tiff_read_stack(ts->file, 1, &image);
        if (s != ISL_OK)
            return cli_tiff_error(s);
        int rc = ts->mask ? read_mask(ts->mask, &image, ts->file, &mask) : CLI_EXIT_OK;
        if (rc == CLI_EXIT_OK) {
            isl_stack st = {image.data, image.dtype, image.num_z, image.height, image.width};
            s = isl_dataset_add_target(ds, well, ts->label, ts->x0, ts->y0, &st, mask);
            if (s != ISL_OK)
                rc = cli_library_error(s);
        }
        free(mask);
        isl_tiff_stack_free(&image);
        if (rc != CLI_EXIT_OK)
            return rc;
    }
    return CLI_EXIT_OK;
}

/* Reads one well's files into the dataset (created with the first stack's page count). */
static int add_well(isl_dataset **ds, const well_spec *w)
{
    isl_tiff_stack stack;
    isl_status s = isl_tiff_read_stack(w->input, 0, &stack);
    if (s != ISL_OK)
        return cli_tiff_error(s);
    char *fallback = w->name ? NULL : default_well_name(w->input);
    int well = -1, rc = CLI_EXIT_OK;
    if (!w->name && !fallback)
        rc = cli_runtime_error("out of memory");
    else if (!*ds && (s = isl_dataset_create(stack.num_z, ds)) != ISL_OK)
        rc = cli_library_error(s);
    if (rc == CLI_EXIT_OK) {
        isl_stack st = {stack.data, stack.dtype, stack.num_z, stack.height, stack.width};
        s = isl_dataset_add_well(*ds, w->name ? w->name : fallback, w->condition, w->pixel_size,
                                 &st, &well);
        if (s != ISL_OK)
            rc = cli_library_error(s);
    }
    free(fallback);
    isl_tiff_stack_free(&stack);
    return rc == CLI_EXIT_OK ? add_targets(*ds, well, w) : rc;
}

int cli_cmd_dataset_build(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(build_help, stdout);
        return CLI_EXIT_OK;
    }
    build_args a = {0};
    pending_masks pm = {0};
    a.wells = calloc((size_t)argc, sizeof(well_spec));
    pm.labels = calloc((size_t)argc, sizeof(char *));
    pm.files = calloc((size_t)argc, sizeof(char *));
    int rc = a.wells && pm.labels && pm.files ? parse_build_args(argc, argv, &a, &pm)
                                              : cli_runtime_error("out of memory");
    clear_masks(&pm);
    free(pm.labels);
    free(pm.files);
    isl_dataset *ds = NULL;
    for (int i = 0; rc == CLI_EXIT_OK && i < a.num_wells; i++)
        rc = add_well(&ds, &a.wells[i]);
    if (rc == CLI_EXIT_OK) {
        /* Written atomically: on failure no file (or the previous one) is at the path. */
        isl_status s = isl_dataset_save(ds, a.output);
        if (s != ISL_OK)
            rc = cli_library_error(s);
    }
    if (rc == CLI_EXIT_OK) {
        printf("wrote %s\n", a.output);
        print_summary(stdout, ds);
        if (fflush(stdout) != 0)
            rc = cli_runtime_error("cannot write to stdout");
    }
    isl_dataset_free(ds);
    free_build_args(&a);
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* isl dataset info                                                                    */
/* ---------------------------------------------------------------------------------- */

static const cli_option info_options[] = {{NULL, 0, 0, 0}};

int cli_cmd_dataset_info(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return CLI_EXIT_OK;
    }
    const char *path = NULL;
    cli_args p;
    cli_args_init(&p, argc, argv, "dataset info");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, info_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (path)
            return cli_usage_error("unexpected argument '%s': give one dataset file", v);
        path = v;
    }
    if (!path)
        return cli_usage_error("missing dataset file (see 'isl dataset info --help')");
    isl_dataset *ds = NULL;
    isl_status s = isl_dataset_load(path, &ds);
    if (s != ISL_OK)
        return cli_library_error(s);
    char buf[32];
    printf("dataset:   %s\n", path);
    printf("file size: %s bytes\n", cli_thousands(cli_file_size(path), buf, sizeof(buf)));
    print_summary(stdout, ds);
    isl_dataset_free(ds);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_runtime_error("cannot write to stdout");
}

int cli_cmd_dataset(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(
            "missing command: isl dataset build|info (see 'isl dataset --help')");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        fputs(dataset_help, stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(cmd, "build"))
        return cli_cmd_dataset_build(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cli_cmd_dataset_info(argc - 1, argv + 1);
    return cli_usage_error("unknown command 'isl dataset %s' (commands: build, info)", cmd);
}
