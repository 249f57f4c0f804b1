/* isl model info: a model file's hyperparameters, heads and size, as text or JSON. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char info_help[] =
    "Usage: isl model info [--json] MODEL.h5\n"
    "\n"
    "Loads and validates a model file and prints its format version, base depth, number of\n"
    "z planes, input normalization, heads (with output channels; the autoencoder marked),\n"
    "parameter count, file size and whether the file's checksum was verified (files\n"
    "written by isl >= 0.7 carry one; a damaged file is refused: \"damaged file\").\n"
    "\n"
    "Options:\n"
    "  --json       print one JSON object instead of text\n"
    "  -h, --help   show this help\n";

enum { OPT_JSON };

static const cli_option info_options[] = {{"json", 0, 0, OPT_JSON}, {NULL, 0, 0, 0}};

static int is_autoencoder(const char *name) { return !strcmp(name, ISL_AUTOENCODER_NAME); }

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(out, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(out, "\\u%04x", *c);
        else
            fputc(*c, out);
    }
    fputc('"', out);
}

static void print_json(FILE *out, const char *path, const isl_model *m, int64_t size)
{
    fputs("{\"path\": ", out);
    json_string(out, path);
    fprintf(out, ", \"format_version\": %d, \"base_depth\": %d, \"num_z\": %d, ",
            isl_model_format_version(), isl_model_base_depth(m), isl_model_num_z(m));
    fputs("\"input_normalization\": ", out);
    json_string(out, isl_model_input_normalization(m));
    if (isl_model_pixel_size(m) > 0)
        fprintf(out, ", \"pixel_size_um\": %.17g", isl_model_pixel_size(m));
    else
        fputs(", \"pixel_size_um\": null", out);
    fputs(", \"heads\": [", out);
    for (int h = 0; h < isl_model_num_heads(m); h++) {
        const char *name = isl_model_head_name(m, h);
        fputs(h ? ", {\"name\": " : "{\"name\": ", out);
        json_string(out, name);
        fprintf(out, ", \"channels\": %d, \"autoencoder\": %s}", isl_model_head_channels(m, h),
                is_autoencoder(name) ? "true" : "false");
    }
    fprintf(out, "], \"parameter_count\": %lld, \"file_size\": %lld, \"checksum\": ",
            (long long)isl_model_parameter_count(m), (long long)size);
    const char *sum = isl_model_checksum(m);
    if (sum[0])
        json_string(out, sum);
    else
        fputs("null", out);
    fputs("}\n", out);
}

static void print_text(FILE *out, const char *path, const isl_model *m, int64_t size)
{
    char buf[32];
    int heads = isl_model_num_heads(m), labels = 0;
    for (int h = 0; h < heads; h++)
        labels += !is_autoencoder(isl_model_head_name(m, h));
    fprintf(out, "model:               %s\n", path);
    fprintf(out, "format version:      %d\n", isl_model_format_version());
    fprintf(out, "base depth:          %d\n", isl_model_base_depth(m));
    fprintf(out, "num_z:               %d\n", isl_model_num_z(m));
    fprintf(out, "input normalization: %s\n", isl_model_input_normalization(m));
    if (isl_model_pixel_size(m) > 0)
        fprintf(out, "training pixel size: %g um\n", isl_model_pixel_size(m));
    else
        fputs("training pixel size: unknown\n", out);
    fprintf(out, "heads:               %d label head%s%s\n", labels, labels == 1 ? "" : "s",
            heads > labels ? " + autoencoder" : "");
    int width = 0;
    for (int h = 0; h < heads; h++) {
        int len = (int)strlen(isl_model_head_name(m, h));
        width = len > width ? len : width;
    }
    for (int h = 0; h < heads; h++) {
        const char *name = isl_model_head_name(m, h);
        fprintf(out, "  %-*s %6d channels%s\n", width, name, isl_model_head_channels(m, h),
                is_autoencoder(name) ? "  (autoencoder)" : "");
    }
    fprintf(out, "parameters:          %s\n",
            cli_thousands(isl_model_parameter_count(m), buf, sizeof(buf)));
    double mib = (double)size / (1024.0 * 1024.0);
    fprintf(out, "file size:           %s bytes (%.1f MiB)\n", cli_thousands(size, buf, sizeof(buf)),
            mib);
    const char *sum = isl_model_checksum(m);
    if (sum[0])
        fprintf(out, "checksum:            verified (%s)\n", sum);
    else
        fputs("checksum:            none (file not written by isl >= 0.7)\n", out);
}

int cli_cmd_model_info(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return CLI_EXIT_OK;
    }
    const char *path = NULL;
    int json = 0;
    cli_args p;
    cli_args_init(&p, argc, argv, "model info");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, info_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_OPTION)
            json = 1; /* the only option */
        else if (path)
            return cli_usage_error("unexpected argument '%s': give one model file", v);
        else
            path = v;
    }
    if (!path)
        return cli_usage_error("missing model file (see 'isl model info --help')");

    isl_model *model = NULL;
    isl_status s = isl_model_load(path, &model);
    if (s != ISL_OK)
        return cli_library_error(s);
    int64_t size = cli_file_size(path);
    if (json)
        print_json(stdout, path, model, size);
    else
        print_text(stdout, path, model, size);
    isl_model_free(model);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_runtime_error("cannot write to stdout");
}
