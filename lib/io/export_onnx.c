/* isl_model_export_onnx: the network as an ONNX model (opset 13, IR version 7).
 *
 * The graph is the spec's fully convolutional network without padding, as
 * isl_predict_tile runs it: input [N, num_z, H, W] (each side 250 + 16m, already scaled
 * and normalized), one output per label head, its 256 logits [N, 256, H - 242, W - 242].
 * Batch norm is folded for inference into Mul + Add with the constants of lib/layout.c.
 * Ops: Conv, ConvTranspose, MaxPool, AveragePool, Mul, Add, Relu, Tanh, Concat, Slice,
 * Pad (constant and edge) and Resize (nearest, 2x). Field numbers are onnx.proto's. */
#include "error.h"
#include "layout.h"
#include "model.h"
#include "model_io.h"
#include "pb_writer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ONNX_OPSET 13
#define ONNX_IR_VERSION 7
#define ONNX_FLOAT 1
#define ONNX_INT64 7

enum { ATTR_INT = 2, ATTR_STRING = 3, ATTR_INTS = 7 };

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ONNX raw_data is little-endian; this writer copies floats as they are in memory"
#endif

typedef struct tname { char s[ISL_MAX_NAME + 8]; } tname;

typedef struct onnx_graph {
    pb_buf body;          /* GraphProto fields: nodes and initializers as they come */
    int next_id;
    char consts[64][ISL_MAX_NAME + 8];/* names of the shared int64 constants already written */
    int num_consts;
} onnx_graph;

static tname fresh(onnx_graph *g, const char *hint)
{
    tname t;
    snprintf(t.s, sizeof(t.s), "%s_%d", hint, g->next_id++);
    return t;
}

/* TensorProto of floats (raw little-endian bytes) or int64s, as an initializer. */
static void initializer(onnx_graph *g, const char *name, int type, const int64_t *dims, int rank,
                        const void *data, size_t bytes)
{
    pb_buf t = {0};
    pb_packed_int64(&t, 1, dims, (size_t)rank);
    pb_varint_field(&t, 2, (uint64_t)type);
    pb_string_field(&t, 8, name);
    pb_bytes_field(&t, 9, data, bytes);
    pb_message(&g->body, 5, &t);
    pb_free(&t);
}

static tname float_const(onnx_graph *g, const char *hint, const int64_t *dims, int rank,
                         const float *data)
{
    size_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= (size_t)dims[i];
    tname t = fresh(g, hint);
    initializer(g, t.s, ONNX_FLOAT, dims, rank, data, n * sizeof(float));
    return t;
}

/* A 1-D int64 constant, written once per distinct name. */
static tname int64_const(onnx_graph *g, const char *name, const int64_t *v, int n)
{
    tname t;
    snprintf(t.s, sizeof(t.s), "%s", name);
    for (int i = 0; i < g->num_consts; i++)
        if (!strcmp(g->consts[i], t.s))
            return t;
    if (g->num_consts < (int)(sizeof(g->consts) / sizeof(g->consts[0])))
        snprintf(g->consts[g->num_consts++], sizeof(g->consts[0]), "%s", t.s);
    else
        t = fresh(g, name); /* table full: a private copy is as correct */
    int64_t dim = n;
    initializer(g, t.s, ONNX_INT64, &dim, 1, v, (size_t)n * sizeof(int64_t));
    return t;
}

static void attr_ints(pb_buf *attrs, const char *name, const int64_t *v, int n)
{
    pb_buf a = {0};
    pb_string_field(&a, 1, name);
    pb_packed_int64(&a, 8, v, (size_t)n);
    pb_varint_field(&a, 20, ATTR_INTS);
    pb_message(attrs, 5, &a);
    pb_free(&a);
}

static void attr_int(pb_buf *attrs, const char *name, int64_t v)
{
    pb_buf a = {0};
    pb_string_field(&a, 1, name);
    pb_varint_field(&a, 3, (uint64_t)v);
    pb_varint_field(&a, 20, ATTR_INT);
    pb_message(attrs, 5, &a);
    pb_free(&a);
}

static void attr_string(pb_buf *attrs, const char *name, const char *v)
{
    pb_buf a = {0};
    pb_string_field(&a, 1, name);
    pb_string_field(&a, 4, v);
    pb_varint_field(&a, 20, ATTR_STRING);
    pb_message(attrs, 5, &a);
    pb_free(&a);
}

/* A NodeProto with one output; attrs (may be NULL) holds encoded attribute fields. An
 * empty input name stands for an omitted optional input. */
static tname node_named(onnx_graph *g, const char *op, int nin, const tname *in, pb_buf *attrs,
                        tname out)
{
    pb_buf n = {0};
    for (int i = 0; i < nin; i++)
        pb_string_field(&n, 1, in[i].s);
    pb_string_field(&n, 2, out.s);
    pb_string_field(&n, 3, out.s);
    pb_string_field(&n, 4, op);
    if (attrs) {
        pb_append(&n, attrs); /* AttributeProto fields, already tagged 5 */
        pb_free(attrs);
    }
    pb_message(&g->body, 1, &n);
    pb_free(&n);
    return out;
}

static tname node(onnx_graph *g, const char *op, int nin, const tname *in, pb_buf *attrs)
{
    char hint[24];
    snprintf(hint, sizeof(hint), "%s", op);
    return node_named(g, op, nin, in, attrs, fresh(g, hint));
}

static tname unary(onnx_graph *g, const char *op, tname x) { return node(g, op, 1, &x, NULL); }

static tname binary(onnx_graph *g, const char *op, tname a, tname b)
{
    tname in[2] = {a, b};
    return node(g, op, 2, in, NULL);
}

static tname concat2(onnx_graph *g, tname a, tname b)
{
    pb_buf at = {0};
    attr_int(&at, "axis", 1);
    tname in[2] = {a, b};
    return node(g, "Concat", 2, in, &at);
}

/* x[:, :, o:-o, o:-o] */
static tname crop(onnx_graph *g, tname x, int o)
{
    char name[32];
    const int64_t starts[2] = {o, o}, ends[2] = {-o, -o}, axes[2] = {2, 3};
    snprintf(name, sizeof(name), "crop%d_starts", o);
    tname s = int64_const(g, name, starts, 2);
    snprintf(name, sizeof(name), "crop%d_ends", o);
    tname in[4] = {x, s, int64_const(g, name, ends, 2), int64_const(g, "axes_hw", axes, 2)};
    return node(g, "Slice", 4, in, NULL);
}

/* x[:, :k] */
static tname first_channels(onnx_graph *g, tname x, int k)
{
    char name[32];
    const int64_t zero = 0, end = k, axis = 1;
    snprintf(name, sizeof(name), "channels%d", k);
    tname in[4] = {x, int64_const(g, "zero", &zero, 1), int64_const(g, name, &end, 1),
                   int64_const(g, "axis_c", &axis, 1)};
    return node(g, "Slice", 4, in, NULL);
}

/* x with `extra` zero channels appended. */
static tname pad_channels(onnx_graph *g, tname x, int extra)
{
    char name[32];
    const int64_t pads[8] = {0, 0, 0, 0, 0, extra, 0, 0};
    snprintf(name, sizeof(name), "pad_channels%d", extra);
    tname in[2] = {x, int64_const(g, name, pads, 8)};
    return node(g, "Pad", 2, in, NULL);
}

/* BNAct(x) = [relu(y), tanh(y)], y = scale * x + shift (batch norm folded). */
static tname bn_act(onnx_graph *g, tname x, const isl_bn_params *bn, float *tmp)
{
    const int c = bn->channels;
    const int64_t dims[4] = {1, c, 1, 1};
    for (int i = 0; i < c; i++)
        isl_bn_fold(bn, i, &tmp[i], &tmp[c + i]);
    tname y = binary(g, "Mul", x, float_const(g, "bn_scale", dims, 4, tmp));
    y = binary(g, "Add", y, float_const(g, "bn_shift", dims, 4, tmp + c));
    return concat2(g, unary(g, "Relu", y), unary(g, "Tanh", y));
}

static tname conv(onnx_graph *g, const char *op, tname x, const float *w, const int64_t wdims[4],
                  int stride, const float *bias)
{
    pb_buf at = {0};
    const int64_t k[2] = {wdims[2], wdims[3]}, s[2] = {stride, stride};
    attr_ints(&at, "kernel_shape", k, 2);
    attr_ints(&at, "strides", s, 2);
    tname in[3] = {x, float_const(g, "weight", wdims, 4, w)};
    if (bias)
        in[2] = float_const(g, "bias", &wdims[!strcmp(op, "Conv") ? 0 : 1], 1, bias);
    return node(g, op, bias ? 3 : 2, in, &at);
}

static tname pool(onnx_graph *g, const char *op, tname x, int kernel, int stride)
{
    pb_buf at = {0};
    const int64_t k[2] = {kernel, kernel}, s[2] = {stride, stride};
    attr_ints(&at, "kernel_shape", k, 2);
    attr_ints(&at, "strides", s, 2);
    return node(g, op, 1, &x, &at);
}

/* Nearest 2x upsampling, then one replicated pixel on each side (the up module's path). */
static tname upsample_pad(onnx_graph *g, tname x)
{
    pb_buf at = {0};
    attr_string(&at, "mode", "nearest");
    attr_string(&at, "coordinate_transformation_mode", "asymmetric");
    attr_string(&at, "nearest_mode", "floor");
    const float scales[4] = {1, 1, 2, 2};
    const int64_t four = 4;
    tname in[3] = {x, {""}, float_const(g, "scales", &four, 1, scales)};
    tname up = node(g, "Resize", 3, in, &at);
    pb_buf pa = {0};
    attr_string(&pa, "mode", "edge");
    const int64_t pads[8] = {0, 0, 1, 1, 0, 0, 1, 1};
    tname pin[2] = {up, int64_const(g, "pad_hw1", pads, 8)};
    return node(g, "Pad", 2, pin, &pa);
}

static tname module(onnx_graph *g, tname x, const isl_module_arch *m, const isl_module_params *mp,
                    float *tmp)
{
    tname a = bn_act(g, x, &mp->bn1, tmp), e, p;
    const int k = m->kernel;
    if (m->kind == ISL_MODULE_UP) {
        const int64_t w[4] = {2 * m->in_ch, m->expand_ch, 4, 4};
        e = conv(g, "ConvTranspose", a, mp->expand_weight, w, 2, NULL);
        p = upsample_pad(g, x);
    } else {
        const int stride = m->kind == ISL_MODULE_DOWN ? 2 : 1;
        const int64_t w[4] = {m->expand_ch, 2 * m->in_ch, k, k};
        e = concat2(g, conv(g, "Conv", a, mp->expand_weight, w, stride, NULL),
                    pool(g, "MaxPool", x, k, stride));
        p = crop(g, x, 1);
        if (m->kind == ISL_MODULE_DOWN)
            p = pool(g, "AveragePool", p, 2, 2);
    }
    const int64_t rw[4] = {m->reduce_ch, 2 * m->e_ch, 1, 1};
    tname r = conv(g, "Conv", bn_act(g, e, &mp->bn2, tmp), mp->reduce_weight, rw, 1, NULL);
    const int rc = m->reduce_ch, pc = m->in_ch;
    if (m->kind == ISL_MODULE_UP) { /* the shared channels only */
        if (rc > m->out_ch)
            r = first_channels(g, r, m->out_ch);
        if (pc > m->out_ch)
            p = first_channels(g, p, m->out_ch);
    } else if (rc > pc) { /* R >= C by the spec's rules: the residual fills the first C */
        p = pad_channels(g, p, rc - pc);
    }
    return binary(g, "Add", r, p);
}

/* ValueInfoProto of a float tensor [dims]; a dim <= 0 is symbolic, named by params. */
static void value_info(pb_buf *graph, int field, const char *name, const int64_t dims[4],
                       const char *const params[4])
{
    pb_buf shape = {0}, tensor = {0}, type = {0}, vi = {0};
    for (int i = 0; i < 4; i++) {
        pb_buf d = {0};
        if (dims[i] > 0)
            pb_varint_field(&d, 1, (uint64_t)dims[i]);
        else
            pb_string_field(&d, 2, params[i]);
        pb_message(&shape, 1, &d);
        pb_free(&d);
    }
    pb_varint_field(&tensor, 1, ONNX_FLOAT);
    pb_message(&tensor, 2, &shape);
    pb_message(&type, 1, &tensor);
    pb_string_field(&vi, 1, name);
    pb_message(&vi, 2, &type);
    pb_message(graph, field, &vi);
    pb_free(&shape);
    pb_free(&tensor);
    pb_free(&type);
    pb_free(&vi);
}

static void metadata(pb_buf *model, const char *key, const char *value)
{
    pb_buf e = {0};
    pb_string_field(&e, 1, key);
    pb_string_field(&e, 2, value);
    pb_message(model, 14, &e);
    pb_free(&e);
}

static int is_label_head(const isl_head_params *h) { return strcmp(h->name, ISL_AUTOENCODER_NAME) != 0; }

/* The GraphProto body: initializers, nodes, input and outputs. */
static void build_graph(onnx_graph *g, const isl_params *p, float *tmp)
{
    const isl_arch *a = &p->arch;
    pb_string_field(&g->body, 2, "isl");
    const char *const in_params[4] = {"batch", "", "height", "width"};
    const char *const out_params[4] = {"batch", "", "height_out", "width_out"};
    const int64_t in_dims[4] = {0, a->num_z, 0, 0};
    value_info(&g->body, 11, "input", in_dims, in_params);

    const int64_t pw[4] = {ISL_PROJECTION_DEPTH, a->num_z, 1, 1};
    tname input = {"input"};
    tname proj = conv(g, "Conv", input, p->projection_weight, pw, 1, p->projection_bias);
    tname towers[ISL_NUM_TOWERS];
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        const int o = (ISL_PATCH_INPUT - isl_tower_start_size[s]) / 2;
        tname t = o ? crop(g, proj, o) : proj;
        for (int i = a->tower_first[s]; i < a->tower_first[s] + a->tower_count[s]; i++) {
            t = module(g, t, &a->modules[i], &p->modules[i], tmp);
            if (a->modules[i].crop_after)
                t = crop(g, t, 2);
        }
        towers[s] = t;
    }
    pb_buf at = {0};
    attr_int(&at, "axis", 1);
    tname t = node(g, "Concat", ISL_NUM_TOWERS, towers, &at);
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++)
        t = module(g, t, &a->modules[i], &p->modules[i], tmp);

    for (int h = 0; h < p->num_heads; h++) {
        const isl_head_params *hp = &p->heads[h];
        if (!is_label_head(hp))
            continue;
        const int64_t w[4] = {hp->out_ch, 2 * a->trunk_ch, 1, 1};
        pb_buf hat = {0};
        attr_ints(&hat, "kernel_shape", (const int64_t[]){1, 1}, 2);
        tname in[3] = {bn_act(g, t, &hp->bn, tmp), float_const(g, "weight", w, 4, hp->weight),
                       float_const(g, "bias", w, 1, hp->bias)};
        tname out;
        snprintf(out.s, sizeof(out.s), "%s", hp->name);
        node_named(g, "Conv", 3, in, &hat, out);
        const int64_t out_dims[4] = {0, hp->out_ch, 0, 0};
        value_info(&g->body, 12, hp->name, out_dims, out_params);
    }
}

static void build_model(pb_buf *model, const isl_params *p, const pb_buf *graph)
{
    pb_varint_field(model, 1, ONNX_IR_VERSION);
    pb_string_field(model, 2, "isl");
    pb_string_field(model, 3, isl_version_string());
    pb_string_field(model, 6,
                    "In Silico Labeling (Christiansen et al., Cell 2018). Input: num_z "
                    "transmitted-light planes, scaled to [0, 1] and normalized as the "
                    "model's input_normalization says, each side 250 + 16m (266 + 16m for "
                    "whole images in tiles); outputs: per label head, 256 logits per pixel "
                    "of the (H - 242) x (W - 242) center.");
    pb_message(model, 7, graph);
    pb_buf opset = {0};
    pb_string_field(&opset, 1, "");
    pb_varint_field(&opset, 2, ONNX_OPSET);
    pb_message(model, 8, &opset);
    pb_free(&opset);
    char num[32];
    snprintf(num, sizeof(num), "%d", p->arch.num_z);
    metadata(model, "isl.num_z", num);
    snprintf(num, sizeof(num), "%d", p->arch.base_depth);
    metadata(model, "isl.base_depth", num);
    metadata(model, "isl.input_normalization", p->input_normalization);
    metadata(model, "isl.input_side", "250 + 16m");
    metadata(model, "isl.output_side", "input side - 242");
    /* Only when known: a missing key says "unknown" better than 0 would. */
    if (p->pixel_size_um > 0) {
        snprintf(num, sizeof(num), "%.17g", p->pixel_size_um);
        metadata(model, "isl.pixel_size_um", num);
    }
}

/* Largest channel count a folded batch norm needs (scale and shift side by side). */
static int max_bn_channels(const isl_params *p)
{
    int c = p->arch.trunk_ch;
    for (int i = 0; i < p->arch.num_modules; i++) {
        c = p->modules[i].bn1.channels > c ? p->modules[i].bn1.channels : c;
        c = p->modules[i].bn2.channels > c ? p->modules[i].bn2.channels : c;
    }
    return c;
}

isl_status isl_model_export_onnx(const isl_model *model, const char *path)
{
    if (!model || !path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_export_onnx: %s is NULL",
                        model ? "path" : "model");
    const isl_params *p = &model->params;
    int labels = 0;
    for (int h = 0; h < p->num_heads; h++)
        labels += is_label_head(&p->heads[h]);
    if (!labels)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "%s: the model has no label head to export (only an autoencoder)", path);
    float *tmp = malloc(2 * sizeof(float) * (size_t)max_bn_channels(p));
    onnx_graph *g = calloc(1, sizeof(*g));
    pb_buf out = {0};
    isl_status st = ISL_ERROR_OUT_OF_MEMORY;
    if (tmp && g) {
        build_graph(g, p, tmp);
        build_model(&out, p, &g->body);
        if (pb_ok(&out))
            st = isl_write_file_atomic(path, out.data, out.size);
    }
    if (st == ISL_ERROR_OUT_OF_MEMORY)
        isl_fail(st, "%s: out of memory while encoding the ONNX model", path);
    if (g)
        pb_free(&g->body);
    pb_free(&out);
    free(g);
    free(tmp);
    return st;
}
