/* isl export --bioimageio DIR: a bioimage.io model package (model spec 0.5): rdf.yaml, the
 * ONNX weights with their SHA-256, test tensors as .npy, a README and a cover picture.
 *
 * The test input is a 266 x 266 window from the middle of a sample stack, scaled to
 * [0, 1] (mirrored beyond the borders of smaller samples, as prediction pads); the test outputs are the network's logits on it after the package's
 * preprocessing (isl_predict_tile), so that a consumer re-running the package checks the
 * whole chain. The cover is `isl predict --preview` of the whole sample, as PNG. */
#include "cli.h"
#include "error.h"
#include "input.h"
#include "tiff_io.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_SIDE 266                   /* the smallest whole-image tile side */
#define HALO 242                        /* input side - output side */
#define PAPER_DOI "10.1016/j.cell.2018.03.040"

/* The preprocessing that prediction applies for the model's input normalization
 * (docs/model-format.md; predict.c, isl_input_transform_init), as bioimage.io ops. The
 * one place that maps the model file's record to the package's. */
static void write_preprocessing(FILE *f, const char *normalization)
{
    fputs("    preprocessing:\n"
          "      - id: ensure_dtype\n"
          "        kwargs: {dtype: float32}\n", f);
    if (strcmp(normalization, "global") != 0)
        return; /* "none": the input is the stack scaled to [0, 1] */
    /* Per plane: mean 0.5, standard deviation 0.125, clipped to [0, 1]. */
    fputs("      - id: zero_mean_unit_variance\n"
          "        kwargs: {axes: [y, x], eps: 1.0e-12}\n"
          "      - id: scale_linear\n"
          "        kwargs: {gain: 0.125, offset: 0.5}\n"
          "      - id: clip\n"
          "        kwargs: {min: 0.0, max: 1.0}\n", f);
}

/* The same on the test window, in place ([num_z][side * side]). */
static int apply_preprocessing(float *x, int num_z, size_t plane, const char *normalization)
{
    if (strcmp(normalization, "global") != 0)
        return 0;
    for (int z = 0; z < num_z; z++) {
        float *p = x + (size_t)z * plane;
        double sum = 0, sum2 = 0;
        for (size_t i = 0; i < plane; i++) {
            sum += p[i];
            sum2 += (double)p[i] * p[i];
        }
        double mean = sum / plane, var = sum2 / plane - mean * mean;
        double sd = var > 0 ? sqrt(var) : 0;
        if (!(sd > 0))
            return -1;
        for (size_t i = 0; i < plane; i++) {
            double v = 0.125 * (p[i] - mean) / sd + 0.5;
            p[i] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
        }
    }
    return 0;
}

/* A float32 .npy file (format 1.0, C order). 0 or the exit code of the error printed. */
static int write_npy(const char *path, const float *data, const int64_t *shape, int rank)
{
    char header[256];
    int n = snprintf(header, sizeof(header), "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t count = 1;
    for (int i = 0; i < rank; i++) {
        n += snprintf(header + n, sizeof(header) - (size_t)n, "%lld, ", (long long)shape[i]);
        count *= (size_t)shape[i];
    }
    n += snprintf(header + n, sizeof(header) - (size_t)n, "), }");
    /* magic (6) + version (2) + length (2) + header, padded with spaces to 64, then '\n' */
    int total = (10 + n + 1 + 63) / 64 * 64, hlen = total - 10;
    size_t bytes = (size_t)total + count * sizeof(float);
    char *buf = malloc(bytes);
    if (!buf)
        return cli_runtime_error("%s: out of memory", path);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8);
    memset(buf + 10, ' ', (size_t)hlen);
    memcpy(buf + 10, header, (size_t)n);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, count * sizeof(float)); /* x86/ARM: little-endian like '<f4' */
    int rc = cli_write_file_atomic(path, buf, bytes);
    free(buf);
    return rc;
}

/* Lower-case hex SHA-256 of a file (65 bytes with the NUL). */
static int file_sha256(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    unsigned char buf[1 << 16], md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    size_t got;
    while (ok && (got = fread(buf, 1, sizeof(buf), f)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, got);
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &len) && len == 32;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    for (unsigned i = 0; ok && i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return ok ? 0 : -1;
}

/* bioimage.io ids: lower-case letters, digits and '_' (head names are checked here). */
static int valid_id(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

/* The physical size of a pixel (spec 0.5: a space axis' `scale` in its `unit`), when the
 * model knows the pixel size of its training stacks; nothing when unknown (scale 1, no unit). */
static void write_space_scale(FILE *f, double pixel_size_um)
{
    if (pixel_size_um > 0)
        fprintf(f, ", unit: micrometer, scale: %.17g", pixel_size_um);
}

/* y and x: the input's sizes are 266 + 16m, each output's follows the input's minus the halo. */
static void write_space_axes(FILE *f, int output, double pixel_size_um)
{
    for (int i = 0; i < 2; i++) {
        const char *id = i ? "x" : "y";
        fprintf(f, "      - {type: space, id: %s, size: ", id);
        if (output)
            fprintf(f, "{tensor_id: input, axis_id: %s, offset: -%d}", id, HALO);
        else
            fprintf(f, "{min: %d, step: 16}", TEST_SIDE);
        write_space_scale(f, pixel_size_um);
        fputs("}\n", f);
    }
}

static int write_rdf(const char *dir, const isl_model *m, const char *model_path,
                     const char *sha256, const int *labels, int num_labels)
{
    char *path = cli_path_join(dir, "rdf.yaml.tmp");
    char *final = cli_path_join(dir, "rdf.yaml");
    FILE *f = path && final ? fopen(path, "w") : NULL;
    if (!f) {
        int rc = cli_runtime_error("%s: cannot write: %s", path ? path : dir, strerror(errno));
        free(path);
        free(final);
        return rc;
    }
    /* The name: the model file's name without its extension, in the characters the spec
     * allows (letters, digits, ' ', '_', '-', '(', ')'). */
    const char *base = strrchr(model_path, '/');
    char name[64];
    snprintf(name, sizeof(name), "%s", base ? base + 1 : model_path);
    char *dot = strrchr(name, '.');
    if (dot && dot != name)
        *dot = '\0';
    for (char *c = name; *c; c++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-()", *c))
            *c = '-';
    fprintf(f, "# bioimage.io model package written by isl %s (isl export --bioimageio)\n",
            isl_version_string());
    fputs("format_version: 0.5.3\ntype: model\n", f);
    fprintf(f, "name: In Silico Labeling %s\n", name);
    fprintf(f, "description: >-\n  Predicts fluorescence labels (");
    for (int k = 0; k < num_labels; k++)
        fprintf(f, "%s%s", k ? ", " : "", isl_model_head_name(m, labels[k]));
    fprintf(f, ") from a transmitted-light z-stack of %d planes, as 256-bin intensity\n"
               "  distributions per pixel (Christiansen et al., Cell 2018).\n",
            isl_model_num_z(m));
    fputs("authors:\n  - {name: isl contributors}\n", f);
    fputs("cite:\n  - text: >-\n      Christiansen et al., In Silico Labeling: Predicting Fluorescent Labels in\n"
          "      Unlabeled Images, Cell 173(3), 2018\n", f);
    fprintf(f, "    doi: %s\n", PAPER_DOI);
    fputs("license: Apache-2.0\ndocumentation: README.md\ncovers: [cover.png]\n", f);
    fputs("tags: [in-silico-labeling, fluorescence, transmitted-light, onnx]\n", f);
    fputs("inputs:\n  - id: input\n"
          "    description: \"z-stack scaled to [0, 1] (uint8 / 255, uint16 / 65535)\"\n"
          "    axes:\n      - {type: batch}\n      - type: channel\n        channel_names: [",
          f);
    for (int z = 0; z < isl_model_num_z(m); z++)
        fprintf(f, "%sz%02d", z ? ", " : "", z);
    fputs("]\n", f);
    write_space_axes(f, 0, isl_model_pixel_size(m));
    fputs("    test_tensor: {source: test_input.npy}\n", f);
    write_preprocessing(f, isl_model_input_normalization(m));
    fputs("outputs:\n", f);
    for (int k = 0; k < num_labels; k++) {
        const char *name = isl_model_head_name(m, labels[k]);
        fprintf(f, "  - id: %s\n    description: \"logits of 256 intensity bins; their softmax is "
                   "the distribution of the intensity k / 255\"\n", name);
        fputs("    axes:\n      - {type: batch}\n      - type: channel\n        channel_names: [", f);
        for (int b = 0; b < 256; b++)
            fprintf(f, "%sbin%03d", b ? ", " : "", b);
        fputs("]\n", f);
        write_space_axes(f, 1, isl_model_pixel_size(m));
        fprintf(f, "    test_tensor: {source: test_output_%s.npy}\n", name);
    }
    fprintf(f, "weights:\n  onnx:\n    source: weights.onnx\n    sha256: %s\n"
               "    opset_version: 13\n", sha256);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    int rc = CLI_EXIT_OK;
    if (bad || rename(path, final) != 0) {
        rc = cli_runtime_error("%s: cannot write: %s", final, strerror(errno));
        unlink(path);
    }
    free(path);
    free(final);
    return rc;
}

static int write_readme(const char *dir, const isl_model *m)
{
    char text[2048];
    int n = snprintf(text, sizeof(text),
        "# In Silico Labeling (isl)\n\n"
        "Predicts fluorescence labels from a transmitted-light z-stack of %d planes\n"
        "(Christiansen et al., Cell 2018, doi:%s). Exported by isl %s.\n\n"
        "- Input `input` [batch, %d, y, x]: the stack scaled to [0, 1], y and x each\n"
        "  266 + 16m. Input normalization of the model: `%s` (the package's preprocessing).\n"
        "- One output per label head: logits of 256 intensity bins for the center\n"
        "  (y - 242) x (x - 242). The softmax over the channels is the distribution of the\n"
        "  label's intensity k / 255; its median is the paper's image.\n"
        "- Whole images: mirror-pad by 121 pixels per side (plus up to 15 more at the\n"
        "  bottom and right), predict in overlapping tiles, crop back (see the isl docs,\n"
        "  docs/interop.md).\n",
        isl_model_num_z(m), PAPER_DOI, isl_version_string(), isl_model_num_z(m),
        isl_model_input_normalization(m));
    char *path = cli_path_join(dir, "README.md");
    if (!path)
        return cli_runtime_error("out of memory");
    int rc = cli_write_file_atomic(path, text, (size_t)n);
    free(path);
    return rc;
}

/* isl_rows_fn: medians to the preview. */
static int cover_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                      const float *data)
{
    (void)width;
    if (cli_preview_wants(user, head, stat))
        cli_preview_rows(user, head, stat, y0, rows, data);
    return 0;
}

static int write_cover(const char *dir, const isl_model *m, const isl_tiff_stack *stack,
                       const int *labels, int num_labels)
{
    cli_preview *pv = cli_preview_open(dir, stack, labels, num_labels);
    char *path = cli_path_join(dir, "cover.png");
    isl_predict_options *o = NULL;
    isl_stat median = ISL_STAT_MEDIAN;
    isl_stack in = {stack->data, stack->dtype, stack->num_z, stack->height, stack->width};
    int rc = CLI_EXIT_OK;
    if (!pv || !path || cli_preview_as_png(pv, path) != 0) {
        rc = cli_runtime_error("out of memory");
    } else {
        isl_status s = isl_predict_options_create(&o);
        if (s == ISL_OK)
            s = isl_predict_options_set_heads(o, num_labels, labels);
        if (s == ISL_OK)
            s = isl_predict_options_set_stats(o, 1, &median);
        if (s == ISL_OK)
            s = isl_predict_image_rows(m, o, &in, cover_rows, pv);
        if (s != ISL_OK)
            rc = cli_library_error(s);
        else if (cli_preview_commit(pv) != 0)
            rc = cli_runtime_error("%s", cli_preview_error(pv));
    }
    isl_predict_options_free(o);
    cli_preview_free(pv);
    free(path);
    return rc;
}

/* Test window (the middle 266 x 266 of the sample, scaled) and its outputs. */
static int write_test_tensors(const char *dir, const isl_model *m, const isl_tiff_stack *st,
                              const int *labels, int num_labels)
{
    const int nz = st->num_z, side = TEST_SIDE, out = TEST_SIDE - HALO;
    const int y0 = (st->height - side) / 2, x0 = (st->width - side) / 2;
    const size_t plane = (size_t)side * side, src_plane = (size_t)st->height * st->width;
    const int heads = isl_model_num_heads(m);
    float *x = malloc(sizeof(float) * plane * (size_t)nz);
    float *y = malloc(sizeof(float) * (size_t)num_labels * 256 * out * out);
    float **outputs = calloc((size_t)heads, sizeof(float *));
    int rc = CLI_EXIT_OK;
    if (!x || !y || !outputs) {
        rc = cli_runtime_error("out of memory");
        goto done;
    }
    /* Samples smaller than the window are mirrored as prediction pads them. */
    for (int z = 0; z < nz; z++)
        for (int r = 0; r < side; r++)
            for (int c = 0; c < side; c++)
                x[(size_t)z * plane + (size_t)r * side + c] = (float)isl_tiff_stack_scaled(
                    st, (size_t)z * src_plane +
                            (size_t)isl_reflect_index(y0 + r, st->height) * st->width +
                            (size_t)isl_reflect_index(x0 + c, st->width));
    const int64_t in_shape[4] = {1, nz, side, side}, out_shape[4] = {1, 256, out, out};
    char *path = cli_path_join(dir, "test_input.npy");
    rc = path ? write_npy(path, x, in_shape, 4) : cli_runtime_error("out of memory");
    free(path);
    if (rc != CLI_EXIT_OK)
        goto done;
    if (apply_preprocessing(x, nz, plane, isl_model_input_normalization(m)) != 0) {
        rc = cli_runtime_error("--sample: a plane of the test window is constant; it cannot "
                               "be normalized");
        goto done;
    }
    for (int k = 0; k < num_labels; k++)
        outputs[labels[k]] = y + (size_t)k * 256 * out * out;
    isl_status s = isl_predict_tile(m, NULL, x, side, side, outputs);
    if (s != ISL_OK)
        rc = cli_library_error(s);
    for (int k = 0; rc == CLI_EXIT_OK && k < num_labels; k++) {
        char name[128];
        snprintf(name, sizeof(name), "test_output_%s.npy", isl_model_head_name(m, labels[k]));
        path = cli_path_join(dir, name);
        rc = path ? write_npy(path, outputs[labels[k]], out_shape, 4)
                  : cli_runtime_error("out of memory");
        free(path);
    }
done:
    free(x);
    free(y);
    free(outputs);
    return rc;
}

int cli_export_bioimageio(const isl_model *m, const char *model_path, const char *dir,
                          const char *sample)
{
    int heads = isl_model_num_heads(m), labels[64], n = 0;
    for (int h = 0; h < heads && n < 64; h++) {
        const char *name = isl_model_head_name(m, h);
        if (!strcmp(name, "autoencoder"))
            continue;
        if (!valid_id(name))
            return cli_runtime_error("head '%s': bioimage.io tensor ids take only a-z, 0-9 and "
                                     "'_'", name);
        labels[n++] = h;
    }
    if (!n)
        return cli_runtime_error("%s: no label head to export", model_path);
    isl_tiff_stack stack = {0};
    isl_status s = isl_tiff_read_stack(sample, isl_model_num_z(m), &stack);
    if (s != ISL_OK)
        return cli_tiff_error(s);
    int rc = CLI_EXIT_OK;
    cli_dirs created = {0};
    if (cli_mkdir_p(dir, &created) != 0) {
        rc = CLI_EXIT_RUNTIME;
        cli_dirs_free(&created);
        goto done;
    }
    cli_dirs_free(&created);
    char *weights = cli_path_join(dir, "weights.onnx");
    char sha[65];
    if (!weights)
        rc = cli_runtime_error("out of memory");
    else if ((s = isl_model_export_onnx(m, weights)) != ISL_OK)
        rc = cli_library_error(s);
    else if (file_sha256(weights, sha) != 0)
        rc = cli_runtime_error("%s: cannot compute its SHA-256", weights);
    free(weights);
    if (rc == CLI_EXIT_OK)
        rc = write_test_tensors(dir, m, &stack, labels, n);
    if (rc == CLI_EXIT_OK)
        rc = write_cover(dir, m, &stack, labels, n);
    if (rc == CLI_EXIT_OK)
        rc = write_readme(dir, m);
    if (rc == CLI_EXIT_OK)
        rc = write_rdf(dir, m, model_path, sha, labels, n);
done:
    isl_tiff_stack_free(&stack);
    return rc;
}
