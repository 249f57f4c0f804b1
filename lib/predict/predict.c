/* Prediction: options, single tiles, and whole images streamed through aligned tiles. */
#include "error.h"
#include "flip.h"
#include "model.h"
#include "input.h"
#include "stats.h"
#include "threads.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAD_BEFORE ISL_INPUT_PAD
#define DEFAULT_MEMORY_LIMIT ((size_t)7 << 28) /* 1.75 GiB: 762 x 762 FP32 tiles at base 400 */

struct isl_predict_options {
    int tile_side;
    size_t memory_limit;
    int threads;
    isl_precision precision;
    int num_heads; /* 0: all label heads */
    int *heads;
    unsigned stat_mask;
    isl_progress_fn progress;
    void *progress_user;
    int probabilities;
    const volatile int *cancel_flag;
    int num_members;                 /* ensemble: models besides the predicting one */
    const isl_model **members;       /* not owned */
    int flip_average;                /* also average the input's three mirror images */
};

static const isl_predict_options default_options = {
    .memory_limit = DEFAULT_MEMORY_LIMIT, .stat_mask = 1u << ISL_STAT_MEDIAN};

isl_status isl_predict_options_create(isl_predict_options **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_predict_options_create: out is NULL");
    *out = malloc(sizeof(**out));
    if (!*out)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    **out = default_options;
    return ISL_OK;
}

void isl_predict_options_free(isl_predict_options *o)
{
    if (!o)
        return;
    free(o->heads);
    free(o->members);
    free(o);
}

#define NEED_OPTIONS(o)                                                                      \
    do {                                                                                     \
        if (!(o))                                                                            \
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: options is NULL", __func__);   \
    } while (0)

isl_status isl_predict_options_set_tile_size(isl_predict_options *o, int input_side)
{
    NEED_OPTIONS(o);
    if (input_side != 0 && (isl_arch_output_side(input_side) < 0 || input_side < 266))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "tile size %d is not 266 + 16m (266, 282, ..., 506, ..., 1018)",
                        input_side);
    o->tile_side = input_side;
    return ISL_OK;
}

isl_status isl_predict_options_set_memory_limit(isl_predict_options *o, size_t bytes)
{
    NEED_OPTIONS(o);
    o->memory_limit = bytes ? bytes : DEFAULT_MEMORY_LIMIT;
    return ISL_OK;
}

/* NULL reads the defaults (for help texts and bindings: they live only here). */
size_t isl_predict_options_get_memory_limit(const isl_predict_options *o)
{
    return (o ? o : &default_options)->memory_limit;
}

int isl_predict_options_get_threads(const isl_predict_options *o)
{
    return (o ? o : &default_options)->threads;
}

isl_status isl_predict_options_set_threads(isl_predict_options *o, int threads)
{
    NEED_OPTIONS(o);
    if (threads < 0 || threads > 4096)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "thread count %d is out of range", threads);
    o->threads = threads;
    return ISL_OK;
}

isl_status isl_predict_options_set_precision(isl_predict_options *o, isl_precision p)
{
    NEED_OPTIONS(o);
    if (p != ISL_PRECISION_FP32 && p != ISL_PRECISION_BF16)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "unknown precision %d", (int)p);
    o->precision = p;
    return ISL_OK;
}

isl_status isl_predict_options_set_heads(isl_predict_options *o, int count, const int *heads)
{
    NEED_OPTIONS(o);
    if (count < 0 || (count > 0 && !heads))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid head list");
    int *copy = NULL;
    if (count > 0) {
        copy = malloc(sizeof(int) * (size_t)count);
        if (!copy)
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
        memcpy(copy, heads, sizeof(int) * (size_t)count);
    }
    free(o->heads);
    o->heads = copy;
    o->num_heads = count;
    return ISL_OK;
}

isl_status isl_predict_options_set_stats(isl_predict_options *o, int count, const isl_stat *stats)
{
    NEED_OPTIONS(o);
    if (count < 1 || !stats)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "select at least one statistic");
    unsigned mask = 0;
    for (int i = 0; i < count; i++) {
        if ((unsigned)stats[i] >= ISL_STAT_COUNT)
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "unknown statistic %d", (int)stats[i]);
        mask |= 1u << stats[i];
    }
    o->stat_mask = mask;
    return ISL_OK;
}

isl_status isl_predict_options_set_progress(isl_predict_options *o, isl_progress_fn fn,
                                            void *user_data)
{
    NEED_OPTIONS(o);
    o->progress = fn;
    o->progress_user = user_data;
    return ISL_OK;
}

isl_status isl_predict_options_set_probabilities(isl_predict_options *o, int enable)
{
    NEED_OPTIONS(o);
    o->probabilities = enable != 0;
    return ISL_OK;
}

isl_status isl_predict_options_set_cancel_flag(isl_predict_options *o, const volatile int *flag)
{
    NEED_OPTIONS(o);
    o->cancel_flag = flag;
    return ISL_OK;
}

isl_status isl_predict_options_set_ensemble(isl_predict_options *o, int count,
                                            const isl_model *const *models)
{
    NEED_OPTIONS(o);
    if (count < 0 || count > ISL_MAX_ENSEMBLE - 1 || (count > 0 && !models))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "an ensemble takes 0 to %d models besides the predicting one, not %d",
                        ISL_MAX_ENSEMBLE - 1, count);
    for (int i = 0; i < count; i++)
        if (!models[i])
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "ensemble model %d is NULL", i);
    const isl_model **copy = NULL;
    if (count > 0) {
        copy = malloc(sizeof(*copy) * (size_t)count);
        if (!copy)
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
        memcpy(copy, models, sizeof(*copy) * (size_t)count);
    }
    free(o->members);
    o->members = copy;
    o->num_members = count;
    return ISL_OK;
}

isl_status isl_predict_options_set_flip_average(isl_predict_options *o, int enable)
{
    NEED_OPTIONS(o);
    o->flip_average = enable != 0;
    return ISL_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Shared helpers                                                                       */
/* ------------------------------------------------------------------------------------ */

/* Head h's output for the whole tile, [out_ch, out_h, out_w], from the plan's row chunks. */
static isl_status run_whole_head(isl_exec *exec, const isl_plan *plan, int h, int probabilities,
                                 int out_ch, int out_h, int out_w, float *out)
{
    const int rows = isl_plan_head_rows(plan);
    if (rows == out_h)
        return isl_exec_run_head(exec, h, probabilities, 0, out);
    const size_t chunk_plane = (size_t)rows * out_w;
    float *chunk = malloc(sizeof(float) * out_ch * chunk_plane);
    if (!chunk)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for a head's rows");
    isl_status s = ISL_OK;
    for (int r = 0; s == ISL_OK && r < out_h; r += rows) {
        const int r0 = isl_head_chunk_start(r, rows, out_h);
        s = isl_exec_run_head(exec, h, probabilities, r0, chunk);
        for (int c = 0; s == ISL_OK && c < out_ch; c++)
            memcpy(out + ((size_t)c * out_h + r0) * out_w, chunk + c * chunk_plane,
                   sizeof(float) * chunk_plane);
    }
    free(chunk);
    return s;
}

static isl_status check_model(const isl_model *m, const char *fn)
{
    if (!m)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    return ISL_OK;
}

/* The models whose distributions a prediction averages: the predicting model first, then
 * the options' ensemble, with the index in each model of every requested head. Each model
 * sees `flips` views of the input (1, or ISL_FLIP_COUNT mirror images): view v is model
 * v / flips on flip v % flips, and view 0 is the predicting model on the input itself. */
typedef struct ensemble {
    int count;
    int flips, views;
    const isl_model *models[ISL_MAX_ENSEMBLE];
    int heads[ISL_MAX_ENSEMBLE][257]; /* 256 label heads and the autoencoder */
} ensemble;

/* Members must read the same input and have the requested heads, matched by name. */
static isl_status resolve_ensemble(const isl_model *m, const isl_predict_options *o, int count,
                                   const int *heads, ensemble *e)
{
    e->count = 1 + o->num_members;
    e->flips = o->flip_average ? ISL_FLIP_COUNT : 1;
    e->views = e->count * e->flips;
    e->models[0] = m;
    memcpy(e->heads[0], heads, sizeof(int) * (size_t)count);
    for (int k = 1; k < e->count; k++) {
        const isl_model *x = o->members[k - 1];
        e->models[k] = x;
        if (x->params.arch.num_z != m->params.arch.num_z)
            return isl_fail(ISL_ERROR_SHAPE,
                            "ensemble model %d reads %d z planes but the predicting model %d",
                            k - 1, x->params.arch.num_z, m->params.arch.num_z);
        if (strcmp(x->params.input_normalization, m->params.input_normalization))
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                            "ensemble model %d normalizes its input \"%s\" but the predicting "
                            "model \"%s\"",
                            k - 1, x->params.input_normalization, m->params.input_normalization);
        for (int i = 0; i < count; i++) {
            const isl_head_params *want = &m->params.heads[heads[i]];
            int j = 0;
            while (j < x->params.num_heads && strcmp(x->params.heads[j].name, want->name))
                j++;
            if (j == x->params.num_heads)
                return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "ensemble model %d has no head '%s'",
                                k - 1, want->name);
            if (x->params.heads[j].out_ch != want->out_ch)
                return isl_fail(ISL_ERROR_SHAPE,
                                "head '%s' has %d channels in ensemble model %d, %d in the "
                                "predicting model",
                                want->name, x->params.heads[j].out_ch, k - 1, want->out_ch);
            e->heads[k][i] = j;
        }
    }
    return ISL_OK;
}

/* Mean of `count` summed distributions; log of it for logits (softmax(log p) = p). */
static void finish_mean(float *p, size_t n, int count, int logits)
{
    const float inv = 1.0f / (float)count;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = p[i] * inv;
        p[i] = logits ? logf(v > FLT_MIN ? v : FLT_MIN) : v;
    }
}

/* ------------------------------------------------------------------------------------ */
/* One tile                                                                             */
/* ------------------------------------------------------------------------------------ */

isl_status isl_predict_tile(const isl_model *m, const isl_predict_options *o, const float *input,
                            int height, int width, float *const *outputs)
{
    ISL_CHECK(check_model(m, "isl_predict_tile"));
    if (!o)
        o = &default_options;
    if (!input || !outputs)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_predict_tile: input or outputs is NULL");
    if (isl_arch_output_side(height) < 0 || isl_arch_output_side(width) < 0)
        return isl_fail(ISL_ERROR_SHAPE,
                        "tile of %dx%d: each side must be 250 + 16m (250, 266, 282, ...)", height,
                        width);
    const int nz = m->params.arch.num_z;
    const size_t n = (size_t)nz * height * width;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(input[i]))
            return isl_fail(ISL_ERROR_VALUE, "input value %zu (plane %zu) is not finite", i,
                            i / ((size_t)height * width));

    int requested[257], count = 0;
    for (int h = 0; h < m->params.num_heads && count < 257; h++)
        if (outputs[h])
            requested[count++] = h;
    ensemble e;
    ISL_CHECK(resolve_ensemble(m, o, count, requested, &e));
    const int out_h = isl_arch_output_side(height), out_w = isl_arch_output_side(width);
    const size_t out_px = (size_t)out_h * out_w;
    float *scratch = NULL; /* a view's probabilities, added to the first view's */
    if (e.views > 1) {
        int max_ch = 0;
        for (int i = 0; i < count; i++)
            if (m->params.heads[requested[i]].out_ch > max_ch)
                max_ch = m->params.heads[requested[i]].out_ch;
        if (count && !(scratch = malloc(sizeof(float) * max_ch * out_px)))
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for averaged outputs");
    }
    /* Views run one after another, so averaging needs no more working memory. */
    const int probabilities = e.views > 1 || o->probabilities;
    int saved_threads = isl_threads_begin(o->threads);
    isl_status s = ISL_OK;
    for (int v = 0; s == ISL_OK && v < e.views; v++) {
        const int k = v / e.flips, flip = v % e.flips;
        const isl_model *x = e.models[k];
        isl_plan *plan;
        isl_exec *exec;
        s = isl_model_acquire(x, height, width, o->precision, &plan, &exec);
        if (s != ISL_OK)
            break;
        isl_flip_copy(isl_exec_input(exec), input, (size_t)nz, height, width, flip);
        s = isl_exec_run_trunk(exec);
        for (int i = 0; s == ISL_OK && i < count; i++) {
            const int h = requested[i], ch = m->params.heads[h].out_ch;
            s = run_whole_head(exec, plan, e.heads[k][i], probabilities, ch, out_h, out_w,
                               v == 0 ? outputs[h] : scratch);
            if (s == ISL_OK && v > 0)
                isl_flip_accumulate(outputs[h], scratch, (size_t)ch, out_h, out_w, flip);
        }
        isl_model_release(x, plan, exec);
    }
    for (int i = 0; s == ISL_OK && e.views > 1 && i < count; i++)
        finish_mean(outputs[requested[i]], (size_t)m->params.heads[requested[i]].out_ch * out_px,
                    e.views, !o->probabilities);
    isl_threads_end(saved_threads);
    free(scratch);
    return s;
}

/* ------------------------------------------------------------------------------------ */
/* Whole images                                                                         */
/* ------------------------------------------------------------------------------------ */

static isl_status check_stack(const isl_model *m, const isl_stack *in)
{
    if (!in || !in->data)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "input stack or its data is NULL");
    if (in->dtype != ISL_DTYPE_U8 && in->dtype != ISL_DTYPE_U16 && in->dtype != ISL_DTYPE_F32)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "unknown input sample type %d", (int)in->dtype);
    if (in->num_z != m->params.arch.num_z)
        return isl_fail(ISL_ERROR_SHAPE, "the input has %d z planes but the model needs %d",
                        in->num_z, m->params.arch.num_z);
    if (in->height < 1 || in->width < 1 || in->height > (1 << 20) || in->width > (1 << 20))
        return isl_fail(ISL_ERROR_SHAPE, "input size %dx%d is out of range", in->height,
                        in->width);
    return ISL_OK;
}

/* Tiling of one dimension: the padded image has 250 + 16M pixels (output 8 + 16M, which
 * covers the image); tiles of 250 + 16m step by 16m, the last one moved back to fit. */
typedef struct axis {
    int size;       /* image pixels */
    int out_total;  /* 8 + 16M >= size */
    int tile_out;   /* 8 + 16m */
    int count;      /* tiles */
} axis;

static axis make_axis(int size, int m)
{
    axis a;
    int pad_extra = ((ISL_PATCH_INPUT - (size + 2 * PAD_BEFORE)) % ISL_STRIDE + ISL_STRIDE) %
                    ISL_STRIDE;
    a.size = size;
    a.out_total = size + pad_extra;
    int max_m = (a.out_total - ISL_PATCH_OUTPUT) / ISL_STRIDE;
    if (m < 1)
        m = 1;
    if (m > max_m)
        m = max_m;
    /* m = 0 (output 8 of every 16 pixels) only covers an image that one tile holds. */
    a.tile_out = ISL_PATCH_OUTPUT + ISL_STRIDE * m;
    a.count = m == 0 ? 1 : (a.out_total - a.tile_out + ISL_STRIDE * m - 1) / (ISL_STRIDE * m) + 1;
    return a;
}

static int tile_origin(const axis *a, int i)
{
    int step = a->tile_out - ISL_PATCH_OUTPUT;
    int o = step ? i * step : i * ISL_STRIDE;
    return o + a->tile_out > a->out_total ? a->out_total - a->tile_out : o;
}

typedef struct selection {
    int count;
    int heads[256];
    unsigned stat_mask;
    int max_ch;
} selection;

static isl_status select_heads(const isl_model *m, const isl_predict_options *o, selection *sel)
{
    const isl_params *p = &m->params;
    sel->count = 0;
    sel->max_ch = 0;
    sel->stat_mask = o->stat_mask;
    if (o->num_heads == 0) {
        for (int h = 0; h < p->num_heads && sel->count < 256; h++)
            if (strcmp(p->heads[h].name, ISL_AUTOENCODER_NAME))
                sel->heads[sel->count++] = h;
    } else {
        if (o->num_heads > 256)
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "too many heads selected");
        for (int i = 0; i < o->num_heads; i++) {
            if (o->heads[i] < 0 || o->heads[i] >= p->num_heads)
                return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "head %d does not exist (the model has %d)",
                                o->heads[i], p->num_heads);
            sel->heads[sel->count++] = o->heads[i];
        }
    }
    if (sel->count == 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "no head selected (the model has no label heads)");
    for (int i = 0; i < sel->count; i++)
        if (p->heads[sel->heads[i]].out_ch > sel->max_ch)
            sel->max_ch = p->heads[sel->heads[i]].out_ch;
    return ISL_OK;
}

/* Working memory of a tile shape, with the row bands of every output. */
static size_t tile_bytes(const ensemble *e, const selection *sel, isl_precision precision,
                         int my, int mx, int image_w, int stat_count)
{
    int th = ISL_PATCH_INPUT + ISL_STRIDE * my, tw = ISL_PATCH_INPUT + ISL_STRIDE * mx;
    size_t bytes = 0;
    for (int k = 0; k < e->count; k++) /* every view keeps its tile's trunk output */
        bytes += e->flips * isl_plan_estimate_bytes(&e->models[k]->params, &e->models[k]->layout,
                                                    th, tw, sel->max_ch, precision);
    size_t out_h = (size_t)ISL_PATCH_OUTPUT + ISL_STRIDE * my;
    size_t out_w = (size_t)ISL_PATCH_OUTPUT + ISL_STRIDE * mx;
    size_t planes = (size_t)sel->max_ch / ISL_NUM_CLASSES;
    const size_t chunk_px = ISL_HEAD_CHUNK_DEFAULT_PIXELS;
    if (e->views > 1) /* the other views' probabilities of a head chunk */
        bytes += sizeof(float) * sel->max_ch * (out_h * out_w < chunk_px ? out_h * out_w : chunk_px);
    return bytes + out_h * (size_t)image_w * sizeof(float) * stat_count * sel->count * planes;
}

/* The tile shape that predicts the image with the least arithmetic within the memory
 * limit. Bigger tiles recompute less context, but a tile only slightly too small for the
 * image costs a whole extra row or column of tiles: so weigh tiles x work per tile. */
static void choose_tile(const ensemble *e, const isl_predict_options *o, const selection *sel,
                        int height, int width, int stat_count, int *my_out, int *mx_out)
{
    if (o->tile_side) {
        *my_out = *mx_out = (o->tile_side - ISL_PATCH_INPUT) / ISL_STRIDE;
        return;
    }
    /* Beyond the sizes that cover the image in one tile, nothing is gained. */
    const int max_y = make_axis(height, 1 << 20).tile_out / ISL_STRIDE;
    const int max_x = make_axis(width, 1 << 20).tile_out / ISL_STRIDE;
    const isl_model *m = e->models[0];
    int head_ch[256];
    for (int i = 0; i < sel->count; i++)
        head_ch[i] = m->params.heads[sel->heads[i]].out_ch;
    double best = -1;
    *my_out = *mx_out = 1; /* ~100 MB: always allowed */
    for (int my = 1; my <= max_y; my++) {
        for (int mx = 1; mx <= max_x; mx++) {
            if (tile_bytes(e, sel, o->precision, my, mx, width, stat_count) > o->memory_limit)
                break; /* larger mx only needs more */
            axis ay = make_axis(height, my), ax = make_axis(width, mx);
            double work = (double)ay.count * ax.count *
                          isl_arch_macs(&m->params.arch, ISL_PATCH_INPUT + ISL_STRIDE * my,
                                        ISL_PATCH_INPUT + ISL_STRIDE * mx, sel->count, head_ch);
            if (best < 0 || work < best * 0.999) {
                best = work;
                *my_out = my;
                *mx_out = mx;
            }
        }
    }
}

typedef struct band {
    float *data[256][ISL_STAT_COUNT]; /* [planes][tile_out_h][width] per head and stat */
    float *tile_stats[ISL_STAT_COUNT];
    float *probs;
    float *view_probs; /* averages: another view's probabilities of the chunk */
    int *col_index;
} band;

static void free_band(band *b, const selection *sel)
{
    for (int i = 0; i < sel->count; i++)
        for (int s = 0; s < ISL_STAT_COUNT; s++)
            free(b->data[i][s]);
    for (int s = 0; s < ISL_STAT_COUNT; s++)
        free(b->tile_stats[s]);
    free(b->probs);
    free(b->view_probs);
    free(b->col_index);
}

static isl_status alloc_band(band *b, const isl_model *m, const selection *sel, const axis *ay,
                             const axis *ax, int head_rows, int views)
{
    memset(b, 0, sizeof(*b));
    const size_t tile_px = (size_t)head_rows * ax->tile_out; /* a head's chunk of rows */
    for (int i = 0; i < sel->count; i++) {
        size_t planes = (size_t)m->params.heads[sel->heads[i]].out_ch / ISL_NUM_CLASSES;
        for (int s = 0; s < ISL_STAT_COUNT; s++)
            if (sel->stat_mask & (1u << s))
                if (!(b->data[i][s] = malloc(sizeof(float) * planes * ay->tile_out * ax->size)))
                    return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for output rows");
    }
    for (int s = 0; s < ISL_STAT_COUNT; s++)
        if (sel->stat_mask & (1u << s))
            if (!(b->tile_stats[s] = malloc(sizeof(float) * tile_px)))
                return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    b->probs = malloc(sizeof(float) * tile_px * sel->max_ch);
    b->col_index = malloc(sizeof(int) * (size_t)(ax->tile_out + ISL_PATCH_INPUT));
    if (views > 1 && !(b->view_probs = malloc(sizeof(float) * tile_px * sel->max_ch)))
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for averaged probabilities");
    if (!b->probs || !b->col_index)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for %zu MB of probabilities",
                        (sizeof(float) * tile_px * sel->max_ch) >> 20);
    return ISL_OK;
}

/* Statistics of a head's output for rows [r0, r0 + rows) of a tile into the same band rows. */
static void tile_stats_to_band(band *b, int sel_index, int planes, const axis *ay, const axis *ax,
                               int ox, int r0, int rows, unsigned stat_mask)
{
    const size_t tile_px = (size_t)rows * ax->tile_out;
    const int cols = ox + ax->tile_out > ax->size ? ax->size - ox : ax->tile_out;
    float *outs[ISL_STAT_COUNT];
    for (int z = 0; z < planes; z++) {
        for (int s = 0; s < ISL_STAT_COUNT; s++)
            outs[s] = (stat_mask & (1u << s)) ? b->tile_stats[s] : NULL;
        isl_stats_from_probabilities(b->probs + (size_t)z * ISL_NUM_CLASSES * tile_px,
                                     ISL_NUM_CLASSES, (int64_t)tile_px, (int64_t)tile_px, outs);
        for (int s = 0; s < ISL_STAT_COUNT; s++) {
            if (!outs[s])
                continue;
            float *dst = b->data[sel_index][s] + ((size_t)z * ay->tile_out + r0) * ax->size;
            for (int y = 0; y < rows; y++)
                memcpy(dst + (size_t)y * ax->size + ox, outs[s] + (size_t)y * ax->tile_out,
                       sizeof(float) * (size_t)cols);
        }
    }
}

/* Hands rows [r0, r1) of the band (band row 0 = image row oy) to the sink. */
static isl_status deliver_rows(const isl_model *m, const selection *sel, band *b, const axis *ay,
                               const axis *ax, int oy, int r0, int r1, isl_rows_fn fn, void *user)
{
    const int rows = r1 - r0, width = ax->size;
    for (int i = 0; i < sel->count; i++) {
        const int planes = m->params.heads[sel->heads[i]].out_ch / ISL_NUM_CLASSES;
        for (int s = 0; s < ISL_STAT_COUNT; s++) {
            if (!(sel->stat_mask & (1u << s)))
                continue;
            float *data = b->data[i][s];
            /* Pack planes so the sink gets [planes][rows][width]. */
            for (int z = 0; z < planes; z++)
                memmove(data + (size_t)z * rows * width,
                        data + ((size_t)z * ay->tile_out + (r0 - oy)) * width,
                        sizeof(float) * (size_t)rows * width);
            if (fn(user, sel->heads[i], (isl_stat)s, r0, rows, width, data))
                return isl_fail(ISL_ERROR_CANCELLED, "prediction cancelled by the output callback");
        }
    }
    return ISL_OK;
}

/* The views' working state for one tile shape. */
typedef struct view_exec {
    isl_plan *plan;
    isl_exec *exec;
} view_exec;

static void release_views(const ensemble *e, view_exec *x)
{
    for (int v = 0; v < e->views; v++)
        if (x[v].plan)
            isl_model_release(e->models[v / e->flips], x[v].plan, x[v].exec);
}

/* Probabilities of selected head i for chunk rows [r0, r0 + rows) of a tile with out_h x
 * out_w outputs: the model's, or the mean of all views', in b->probs. A view of the
 * up-down mirror image has these rows at the other end of its tile, in reverse. */
static isl_status head_chunk_probabilities(const ensemble *e, view_exec *x, band *b, int i,
                                           int out_ch, int r0, int rows, int out_h, int out_w)
{
    ISL_CHECK(isl_exec_run_head(x[0].exec, e->heads[0][i], 1, r0, b->probs));
    for (int v = 1; v < e->views; v++) {
        const int flip = v % e->flips, vr0 = (flip & ISL_FLIP_Y) ? out_h - r0 - rows : r0;
        ISL_CHECK(isl_exec_run_head(x[v].exec, e->heads[v / e->flips][i], 1, vr0,
                                    b->view_probs));
        isl_flip_accumulate(b->probs, b->view_probs, (size_t)out_ch, rows, out_w, flip);
    }
    if (e->views > 1)
        finish_mean(b->probs, (size_t)out_ch * rows * out_w, e->views, 0);
    return ISL_OK;
}

isl_status isl_predict_image_rows(const isl_model *m, const isl_predict_options *o,
                                  const isl_stack *in, isl_rows_fn fn, void *user)
{
    ISL_CHECK(check_model(m, "isl_predict_image_rows"));
    if (!o)
        o = &default_options;
    if (!fn)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_predict_image_rows: callback is NULL");
    ISL_CHECK(check_stack(m, in));
    selection sel;
    ISL_CHECK(select_heads(m, o, &sel));
    ensemble e;
    ISL_CHECK(resolve_ensemble(m, o, sel.count, sel.heads, &e));
    int stat_count = __builtin_popcount(sel.stat_mask);
    int my, mx;
    choose_tile(&e, o, &sel, in->height, in->width, stat_count, &my, &mx);
    axis ay = make_axis(in->height, my), ax = make_axis(in->width, mx);
    const int th = ay.tile_out + ISL_PATCH_INPUT - ISL_PATCH_OUTPUT;
    const int tw = ax.tile_out + ISL_PATCH_INPUT - ISL_PATCH_OUTPUT;

    isl_input_transform t = {0};
    band b;
    view_exec x[ISL_MAX_ENSEMBLE * ISL_FLIP_COUNT];
    memset(x, 0, sizeof(x));
    int saved_threads = isl_threads_begin(o->threads);
    memset(&b, 0, sizeof(b));
    isl_status s = isl_input_transform_init(m->params.input_normalization, in, &t);
    for (int v = 0; s == ISL_OK && v < e.views; v++)
        s = isl_model_acquire(e.models[v / e.flips], th, tw, o->precision, &x[v].plan,
                              &x[v].exec);
    /* Head chunks depend on the tile shape only, so every view cuts the same rows. */
    const int head_rows = s == ISL_OK ? isl_plan_head_rows(x[0].plan) : 0;
    for (int v = 1; s == ISL_OK && v < e.views; v++)
        if (isl_plan_head_rows(x[v].plan) != head_rows)
            s = isl_fail(ISL_ERROR_BACKEND, "ensemble members cut a tile's rows differently");
    if (s == ISL_OK)
        s = alloc_band(&b, m, &sel, &ay, &ax, head_rows, e.views);

    const int64_t total = (int64_t)ay.count * ax.count;
    int delivered = 0;
    for (int ty = 0; s == ISL_OK && ty < ay.count; ty++) {
        const int oy = tile_origin(&ay, ty);
        for (int tx = 0; s == ISL_OK && tx < ax.count; tx++) {
            const int ox = tile_origin(&ax, tx);
            float *input = isl_exec_input(x[0].exec);
            isl_input_fill(input, in, &t, oy, ox, th, tw, b.col_index);
            for (int v = 0; s == ISL_OK && v < e.views; v++) {
                if (v > 0)
                    isl_flip_copy(isl_exec_input(x[v].exec), input, (size_t)in->num_z, th, tw,
                                  v % e.flips);
                s = isl_exec_run_trunk(x[v].exec);
            }
            for (int i = 0; s == ISL_OK && i < sel.count; i++) {
                const int out_ch = m->params.heads[sel.heads[i]].out_ch;
                for (int r = 0; s == ISL_OK && r < ay.tile_out; r += head_rows) {
                    const int r0 = isl_head_chunk_start(r, head_rows, ay.tile_out);
                    s = head_chunk_probabilities(&e, x, &b, i, out_ch, r0, head_rows,
                                                 ay.tile_out, ax.tile_out);
                    if (s == ISL_OK)
                        tile_stats_to_band(&b, i, out_ch / ISL_NUM_CLASSES, &ay, &ax, ox, r0,
                                           head_rows, sel.stat_mask);
                }
            }
            if (s == ISL_OK && o->progress &&
                o->progress(o->progress_user, (int64_t)ty * ax.count + tx + 1, total))
                s = isl_fail(ISL_ERROR_CANCELLED, "prediction cancelled by the progress callback");
            if (s == ISL_OK && o->cancel_flag && *o->cancel_flag)
                s = isl_fail(ISL_ERROR_CANCELLED, "prediction cancelled");
        }
        int r1 = oy + ay.tile_out < in->height ? oy + ay.tile_out : in->height;
        if (s == ISL_OK && r1 > delivered) {
            s = deliver_rows(m, &sel, &b, &ay, &ax, oy, delivered, r1, fn, user);
            delivered = r1;
        }
    }
    release_views(&e, x);
    isl_threads_end(saved_threads);
    free_band(&b, &sel);
    isl_input_transform_free(&t);
    return s;
}

typedef struct image_sink {
    const isl_model *model;
    float *const *outputs;
    int height;
} image_sink;

static int copy_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                     const float *data)
{
    image_sink *is = user;
    float *dst = is->outputs[head * ISL_STAT_COUNT + stat];
    int planes = is->model->params.heads[head].out_ch / ISL_NUM_CLASSES;
    for (int z = 0; z < planes; z++)
        memcpy(dst + ((size_t)z * is->height + y0) * width, data + (size_t)z * rows * width,
               sizeof(float) * (size_t)rows * width);
    return 0;
}

isl_status isl_predict_image(const isl_model *m, const isl_predict_options *o, const isl_stack *in,
                             float *const *outputs)
{
    ISL_CHECK(check_model(m, "isl_predict_image"));
    if (!o)
        o = &default_options;
    if (!outputs)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_predict_image: outputs is NULL");
    ISL_CHECK(check_stack(m, in));
    selection sel;
    ISL_CHECK(select_heads(m, o, &sel));
    for (int i = 0; i < sel.count; i++)
        for (int s = 0; s < ISL_STAT_COUNT; s++)
            if ((sel.stat_mask & (1u << s)) && !outputs[sel.heads[i] * ISL_STAT_COUNT + s])
                return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                                "no output array for head '%s', statistic '%s'",
                                m->params.heads[sel.heads[i]].name, isl_stat_name((isl_stat)s));
    image_sink sink = {m, outputs, in->height};
    return isl_predict_image_rows(m, o, in, copy_rows, &sink);
}
