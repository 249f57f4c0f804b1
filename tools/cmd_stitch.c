/* isl stitch: montage a plate's grid of overlapping tiles (STAR Methods, "Image
 * stitching"): NCC offsets between neighbours on one z plane, least-squares positions,
 * every plane composed with the same positions and streamed to the output. */
#include "cli.h"

#include "tiff_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char stitch_help[] =
    "Usage: isl stitch --grid ROWSxCOLS --overlap PIXELS --input TILE.tif ... -o OUT.tif\n"
    "\n"
    "Stitches a grid of overlapping tiles (multi-page TIFFs of one size and page count,\n"
    "given row by row) into one float32 stack: the offset of each tile to its right and\n"
    "lower neighbour is the maximum of the normalized cross-correlation near the nominal\n"
    "overlap, tile positions fit all offsets by least squares, and overlaps are blended\n"
    "(feathered). Offsets come from one plane and serve every plane. Large outputs are\n"
    "written as BigTIFF, row band by row band.\n"
    "\n"
    "Options:\n"
    "  --grid ROWSxCOLS     tiles per column and per row (e.g. 3x3)\n"
    "  --overlap PIXELS     nominal overlap of neighbours (Y,X if they differ, e.g. 300,350)\n"
    "  --search PIXELS      how far from the nominal offset to look (default 5% of the tile)\n"
    "  --plane Z            plane whose offsets serve all (default: the middle one)\n"
    "  --input FILE ...     the tiles, row by row; several files may follow one --input\n"
    "  -o, --output PATH    stack to write (float32 TIFF, required)\n"
    "  -h, --help           show this help\n";

enum { OPT_GRID = 1, OPT_OVERLAP, OPT_SEARCH, OPT_PLANE, OPT_INPUT, OPT_OUTPUT };

static const cli_option stitch_options[] = {
    {"grid", 0, 1, OPT_GRID},     {"overlap", 0, 1, OPT_OVERLAP}, {"search", 0, 1, OPT_SEARCH},
    {"plane", 0, 1, OPT_PLANE},   {"input", 0, 1, OPT_INPUT},     {"output", 'o', 1, OPT_OUTPUT},
    {NULL, 0, 0, 0}};

typedef struct stitch_args {
    const char **inputs, *output;
    int count, rows, cols, overlap_y, overlap_x, search, plane;
} stitch_args;

static int parse_pair(const char *option, const char *text, char sep, int *a, int *b)
{
    char tail;
    if (sscanf(text, sep == 'x' ? "%d x %d%c" : "%d , %d%c", a, b, &tail) == 2)
        return 0;
    if (sep == ',' && sscanf(text, "%d%c", a, &tail) == 1) {
        *b = *a;
        return 0;
    }
    return cli_usage_error("%s: '%s' is not %s", option, text,
                           sep == 'x' ? "ROWSxCOLS" : "PIXELS or Y,X");
}

static int parse(int argc, char **argv, stitch_args *a)
{
    cli_args p;
    cli_args_init(&p, argc, argv, "stitch");
    int kind, id, in_inputs = 0;
    long long n;
    const char *v;
    while ((kind = cli_args_next(&p, stitch_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL) {
            if (!in_inputs)
                return cli_usage_error("unexpected argument '%s'", v);
            a->inputs[a->count++] = v;
            continue;
        }
        in_inputs = id == OPT_INPUT;
        switch (id) {
        case OPT_GRID:
            if (parse_pair("--grid", v, 'x', &a->rows, &a->cols))
                return CLI_EXIT_USAGE;
            break;
        case OPT_OVERLAP:
            if (parse_pair("--overlap", v, ',', &a->overlap_y, &a->overlap_x))
                return CLI_EXIT_USAGE;
            break;
        case OPT_SEARCH:
            if (cli_parse_int("--search", v, 0, 4096, &n))
                return CLI_EXIT_USAGE;
            a->search = (int)n;
            break;
        case OPT_PLANE:
            if (cli_parse_int("--plane", v, 0, 1 << 20, &n))
                return CLI_EXIT_USAGE;
            a->plane = (int)n;
            break;
        case OPT_INPUT: a->inputs[a->count++] = v; break;
        case OPT_OUTPUT: a->output = v; break;
        }
    }
    if (!a->count || !a->output || !a->rows)
        return cli_usage_error("missing --grid, --input or -o (see 'isl stitch --help')");
    if (a->rows < 1 || a->cols < 1 || a->rows * a->cols != a->count)
        return cli_usage_error("--grid %dx%d needs %d tiles, %d given", a->rows, a->cols,
                               a->rows * a->cols, a->count);
    if (a->overlap_y < 1 || a->overlap_x < 1)
        return cli_usage_error("--overlap must be positive");
    return 0;
}

static int load_tiles(const stitch_args *a, cli_float_stack *tiles)
{
    for (int i = 0; i < a->count; i++) {
        int rc = cli_read_float_stack(a->inputs[i], 0, 0, &tiles[i]);
        if (rc)
            return rc;
        const cli_float_stack *t = &tiles[i], *f = &tiles[0];
        const size_t n = (size_t)t->num_z * t->height * t->width;
        for (size_t k = 0; k < n; k++)
            if (!isfinite(t->data[k]))
                return cli_runtime_error("%s: page %zu, pixel (%zu, %zu) is not finite",
                                         a->inputs[i], k / ((size_t)t->height * t->width),
                                         k / t->width % t->height, k % t->width);
        if (t->height != f->height || t->width != f->width || t->num_z != f->num_z)
            return cli_runtime_error("%s: %d pages of %d x %d differ from %s's %d of %d x %d",
                                     a->inputs[i], t->num_z, t->height, t->width, a->inputs[0],
                                     f->num_z, f->height, f->width);
    }
    const cli_float_stack *f = &tiles[0];
    if (a->overlap_y >= f->height || a->overlap_x >= f->width)
        return cli_runtime_error("--overlap %d,%d does not fit tiles of %d x %d", a->overlap_y,
                                 a->overlap_x, f->height, f->width);
    if (a->plane >= f->num_z)
        return cli_runtime_error("--plane %d: the tiles have %d pages", a->plane, f->num_z);
    return 0;
}

/* Offsets of every right and lower neighbour, then positions. */
static int find_positions(const stitch_args *a, const cli_float_stack *tiles, double *pos)
{
    const int h = tiles[0].height, w = tiles[0].width, n = a->count;
    const size_t plane = (size_t)h * w * a->plane;
    int *pt = malloc(sizeof(int) * 4 * (size_t)n), pairs = 0, weak = 0;
    double *off = malloc(sizeof(double) * 4 * (size_t)n);
    if (!pt || !off)
        return free(pt), free(off), cli_runtime_error("out of memory");
    for (int i = 0; i < n; i++)
        for (int down = 0; down < 2; down++) {
            const int j = down ? i + a->cols : i + 1;
            if (down ? j >= n : (i % a->cols == a->cols - 1))
                continue;
            const double ny = down ? h - a->overlap_y : 0, nx = down ? 0 : w - a->overlap_x;
            double oy, ox, ncc = 0;
            isl_status s = isl_stitch_pair_offset(tiles[i].data + plane, tiles[j].data + plane, h,
                                                  w, ny, nx, a->search, &oy, &ox, &ncc);
            if (s == ISL_ERROR_VALUE || (s == ISL_OK && ncc < 0.2)) {
                /* An empty overlap says nothing: keep the stage's nominal offset. */
                oy = ny, ox = nx;
                weak++;
            } else if (s != ISL_OK) {
                free(pt), free(off);
                return cli_library_error(s);
            }
            pt[2 * pairs] = i, pt[2 * pairs + 1] = j;
            off[2 * pairs] = oy, off[2 * pairs + 1] = ox;
            pairs++;
        }
    isl_status s = isl_stitch_solve(n, pairs, pt, off, pos);
    free(pt), free(off);
    if (s != ISL_OK)
        return cli_library_error(s);
    if (weak)
        fprintf(stderr,
                "isl: warning: %d of %d overlaps had too little texture (NCC < 0.2): nominal "
                "offsets used for them\n",
                weak, pairs);
    return 0;
}

static int compose(const stitch_args *a, const cli_float_stack *tiles, const double *pos)
{
    const int h = tiles[0].height, w = tiles[0].width, nz = tiles[0].num_z, band = 256;
    int ch, cw;
    isl_status s = isl_stitch_canvas_size(a->count, pos, h, w, &ch, &cw);
    if (s != ISL_OK)
        return cli_library_error(s);
    const float **planes = malloc(sizeof(float *) * (size_t)a->count);
    float *rows = malloc(sizeof(float) * (size_t)band * cw);
    isl_tiff_writer *wr = NULL;
    int tiff_failed = 0; /* the writer's messages are isl_tiff_last_error()'s */
    if (!planes || !rows)
        s = ISL_ERROR_OUT_OF_MEMORY;
    else
        tiff_failed = (s = isl_tiff_writer_open(a->output, nz, ch, cw, &wr)) != ISL_OK;
    for (int z = 0; z < nz && s == ISL_OK; z++) {
        for (int i = 0; i < a->count; i++)
            planes[i] = tiles[i].data + (size_t)z * h * w;
        for (int y = 0; y < ch && s == ISL_OK; y += band) {
            const int n = ch - y < band ? ch - y : band;
            s = isl_stitch_blend(planes, a->count, pos, h, w, y, n, cw, rows);
            if (s == ISL_OK)
                tiff_failed = (s = isl_tiff_writer_append(wr, rows, n)) != ISL_OK;
        }
    }
    free(planes), free(rows);
    if (s == ISL_OK)
        tiff_failed = (s = isl_tiff_writer_close(wr)) != ISL_OK;
    else
        isl_tiff_writer_discard(wr);
    if (s == ISL_ERROR_OUT_OF_MEMORY && !wr)
        return cli_runtime_error("out of memory");
    if (s != ISL_OK)
        return tiff_failed ? cli_tiff_error(s) : cli_library_error(s);
    fprintf(stderr, "isl: %s: %d tiles (%dx%d) stitched into %d pages of %d x %d\n", a->output,
            a->count, a->rows, a->cols, nz, ch, cw);
    return 0;
}

int cli_cmd_stitch(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(stitch_help, stdout);
        return CLI_EXIT_OK;
    }
    stitch_args a = {.plane = -1, .search = -1};
    a.inputs = calloc((size_t)argc, sizeof(char *));
    if (!a.inputs)
        return cli_runtime_error("out of memory");
    int rc = parse(argc, argv, &a);
    cli_float_stack *tiles = rc ? NULL : calloc((size_t)a.count, sizeof(*tiles));
    double *pos = rc ? NULL : malloc(sizeof(double) * 2 * (size_t)a.count);
    if (!rc && (!tiles || !pos))
        rc = cli_runtime_error("out of memory");
    if (!rc && a.plane < 0) {
        /* The middle plane once the page count is known. */
        a.plane = 0;
        if (!(rc = load_tiles(&a, tiles)))
            a.plane = tiles[0].num_z / 2;
    } else if (!rc) {
        rc = load_tiles(&a, tiles);
    }
    if (!rc && a.search < 0) {
        const int side = tiles[0].height > tiles[0].width ? tiles[0].height : tiles[0].width;
        a.search = side / 20 > 2 ? side / 20 : 2;
    }
    if (!rc)
        rc = find_positions(&a, tiles, pos);
    if (!rc)
        rc = compose(&a, tiles, pos);
    for (int i = 0; tiles && i < a.count; i++)
        free(tiles[i].data);
    free(tiles), free(pos), free(a.inputs);
    return rc;
}
