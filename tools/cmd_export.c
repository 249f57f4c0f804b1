/* isl export: a model in formats other tools load (ONNX; docs/interop.md). */
#include "cli.h"

#include <stdio.h>

static const char export_help[] =
    "Usage: isl export --model MODEL.h5 --onnx OUT.onnx\n"
    "       isl export --model MODEL.h5 --bioimageio DIR --sample STACK.tif\n"
    "\n"
    "Writes the network as an ONNX model (opset 13, batch norm folded), atomically: input\n"
    "\"input\" [N, num_z, H, W] with each side 250 + 16m (266 + 16m for tiled whole images),\n"
    "scaled to [0, 1] and normalized as the model's input normalization says; one output\n"
    "per label head, named after it, with 256 logits per pixel [N, 256, H - 242, W - 242].\n"
    "The autoencoder head is not exported.\n"
    "\n"
    "--bioimageio writes a bioimage.io model package (model spec 0.5) into DIR: rdf.yaml,\n"
    "weights.onnx, README.md, test_input.npy (the middle 266 x 266 of the sample, scaled to\n"
    "[0, 1]), test_output_<head>.npy (the logits on it) and cover.png (the prediction preview\n"
    "of the whole sample). See docs/interop.md.\n"
    "\n"
    "Options:\n"
    "  --model FILE   the model to export\n"
    "  --onnx FILE    where to write the ONNX model\n"
    "  --bioimageio DIR  where to write a bioimage.io package\n"
    "  --sample FILE  z-stack (TIFF) for the package's test tensors and cover\n"
    "  -h, --help     show this help\n";

enum { OPT_MODEL, OPT_ONNX, OPT_BIOIMAGEIO, OPT_SAMPLE };

static const cli_option export_options[] = {
    {"model", 'm', 1, OPT_MODEL}, {"onnx", 0, 1, OPT_ONNX},
    {"bioimageio", 0, 1, OPT_BIOIMAGEIO}, {"sample", 0, 1, OPT_SAMPLE}, {NULL, 0, 0, 0}};

int cli_cmd_export(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(export_help, stdout);
        return CLI_EXIT_OK;
    }
    const char *model_path = NULL, *onnx_path = NULL, *package = NULL, *sample = NULL;
    cli_args p;
    cli_args_init(&p, argc, argv, "export");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, export_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("unexpected argument '%s' (see 'isl export --help')", v);
        switch (id) {
        case OPT_MODEL: model_path = v; break;
        case OPT_ONNX: onnx_path = v; break;
        case OPT_BIOIMAGEIO: package = v; break;
        default: sample = v; break;
        }
    }
    if (!model_path)
        return cli_usage_error("missing --model (see 'isl export --help')");
    if (!onnx_path && !package)
        return cli_usage_error(
            "nothing to export: give --onnx FILE or --bioimageio DIR (see 'isl export --help')");
    if (package && !sample)
        return cli_usage_error("--bioimageio needs --sample STACK.tif for its test tensors");
    if (sample && !package)
        return cli_usage_error("--sample is for --bioimageio");

    isl_model *model = NULL;
    isl_status s = isl_model_load(model_path, &model);
    if (s == ISL_OK && onnx_path)
        s = isl_model_export_onnx(model, onnx_path);
    if (s != ISL_OK) {
        isl_model_free(model);
        return cli_library_error(s);
    }
    if (onnx_path)
        printf("wrote %s\n", onnx_path);
    int rc = package ? cli_export_bioimageio(model, model_path, package, sample) : CLI_EXIT_OK;
    isl_model_free(model);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (package)
        printf("wrote %s/rdf.yaml\n", package);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_runtime_error("cannot write to stdout");
}
