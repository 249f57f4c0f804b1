/* isl: command-line front end of the In Silico Labeling library. Dispatches commands. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char main_help[] =
    "Usage: isl <command> [options]\n"
    "\n"
    "In Silico Labeling (Christiansen et al., Cell 2018): predicts fluorescence images from\n"
    "a transmitted-light z-stack.\n"
    "\n"
    "Commands:\n"
    "  dataset build  make a training dataset from TIFF stacks and label images\n"
    "  dataset info   describe a dataset file\n"
    "  evaluate       compare predicted with true images (metrics, heat maps, pictures)\n"
    "  export         write a model as ONNX or as a bioimage.io package\n"
    "  flat-field     estimate a flat field from a plate's tiles\n"
    "  model init     create a model with random weights\n"
    "  model info     describe a model file\n"
    "  predict        predict fluorescence images from a z-stack\n"
    "  preprocess     flat-field, clean and normalize a raw stack as the paper did\n"
    "  report         the evaluation as one self-contained HTML page\n"
    "  stitch         montage a grid of overlapping tiles\n"
    "  train          train a model on a dataset file\n"
    "\n"
    "Options:\n"
    "  -h, --help      show this help ('isl <command> --help' for a command)\n"
    "  -V, --version   show the library version\n"
    "\n"
    "Exit status: 0 success, 1 runtime error, 2 usage error, 130 interrupted.\n";

int main(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(
            "missing command: isl dataset|evaluate|export|flat-field|model|predict|preprocess|"
            "report|stitch|train (see 'isl --help')");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(main_help, stdout);
        return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_RUNTIME;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        printf("isl %s\n", isl_version_string());
        return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_RUNTIME;
    }
    if (!strcmp(cmd, "dataset"))
        return cli_cmd_dataset(argc - 1, argv + 1);
    if (!strcmp(cmd, "export"))
        return cli_cmd_export(argc - 1, argv + 1);
    if (!strcmp(cmd, "flat-field"))
        return cli_cmd_flat_field(argc - 1, argv + 1);
    if (!strcmp(cmd, "preprocess"))
        return cli_cmd_preprocess(argc - 1, argv + 1);
    if (!strcmp(cmd, "model"))
        return cli_cmd_model(argc - 1, argv + 1);
    if (!strcmp(cmd, "predict"))
        return cli_cmd_predict(argc - 1, argv + 1);
    if (!strcmp(cmd, "stitch"))
        return cli_cmd_stitch(argc - 1, argv + 1);
    if (!strcmp(cmd, "train"))
        return cli_cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "evaluate"))
        return cli_cmd_evaluate(argc - 1, argv + 1);
    if (!strcmp(cmd, "report"))
        return cli_cmd_report(argc - 1, argv + 1);
    if (cmd[0] == '-')
        return cli_usage_error("unknown option '%s' (see 'isl --help')", cmd);
    return cli_usage_error(
        "unknown command '%s' (commands: dataset, evaluate, export, flat-field, model, predict, "
        "preprocess, report, stitch, train; see 'isl --help')", cmd);
}
