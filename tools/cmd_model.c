/* isl model: dispatch, and "isl model init". */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char model_help[] =
    "Usage: isl model <command> [options]\n"
    "\n"
    "Commands:\n"
    "  init   create a model with random weights and save it\n"
    "  info   describe a model file\n"
    "\n"
    "Run 'isl model <command> --help' for the options of a command.\n";

static const char init_help[] =
    "Usage: isl model init --heads NAME[,NAME...] -o MODEL.h5 [options]\n"
    "\n"
    "Creates a model with random weights (He initialisation, identity batch norm), with one\n"
    "label head per NAME plus the autoencoder head, and saves it atomically.\n"
    "\n"
    "Options:\n"
    "  --heads LIST            label heads, comma-separated (required),\n"
    "                          e.g. dapi_confocal,map2_confocal,nfh_confocal\n"
    "  -o, --output PATH       model file to write (required)\n"
    "  --base-depth B          base depth (default 400, the paper's; 5..4096)\n"
    "  --num-z N               transmitted-light planes per input (default 13)\n"
    "  --seed S                seed of the random weights (default 0)\n"
    "  --normalization MODE    input normalization: none (default) or global\n"
    "  --pixel-size UM         pixel size of the training stacks in micrometres (recorded;\n"
    "                          isl predict warns about OME-TIFF inputs of another size)\n"
    "  -h, --help              show this help\n";

enum { OPT_HEADS, OPT_OUTPUT, OPT_BASE, OPT_NUM_Z, OPT_SEED, OPT_NORM, OPT_PIXEL };

static const cli_option init_options[] = {
    {"heads", 0, 1, OPT_HEADS},     {"output", 'o', 1, OPT_OUTPUT}, {"base-depth", 0, 1, OPT_BASE},
    {"num-z", 0, 1, OPT_NUM_Z},     {"seed", 0, 1, OPT_SEED},       {"normalization", 0, 1, OPT_NORM},
    {"pixel-size", 0, 1, OPT_PIXEL},
    {NULL, 0, 0, 0},
};

typedef struct init_args {
    const char *heads, *output, *normalization;
    long long base_depth, num_z;
    uint64_t seed;
    double pixel_size_um; /* 0: not given */
} init_args;

static int parse_init(int argc, char **argv, init_args *a)
{
    a->heads = a->output = NULL;
    a->normalization = "none";
    a->base_depth = 400;
    a->num_z = 13;
    a->seed = 0;
    a->pixel_size_um = 0;
    cli_args p;
    cli_args_init(&p, argc, argv, "model init");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, init_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("unexpected argument '%s' (see 'isl model init --help')", v);
        int bad = 0;
        switch (id) {
        case OPT_HEADS: a->heads = v; break;
        case OPT_OUTPUT: a->output = v; break;
        case OPT_NORM: a->normalization = v; break;
        case OPT_BASE: bad = cli_parse_int("--base-depth", v, 1, 1 << 30, &a->base_depth); break;
        case OPT_NUM_Z: bad = cli_parse_int("--num-z", v, 1, 1 << 30, &a->num_z); break;
        case OPT_SEED: bad = cli_parse_u64("--seed", v, &a->seed); break;
        case OPT_PIXEL: bad = cli_parse_double("--pixel-size", v, 1e-6, 1e4, &a->pixel_size_um); break;
        }
        if (bad)
            return CLI_EXIT_USAGE;
    }
    if (!a->heads)
        return cli_usage_error("missing --heads (see 'isl model init --help')");
    if (!a->output)
        return cli_usage_error("missing -o/--output (see 'isl model init --help')");
    if (strcmp(a->normalization, "none") && strcmp(a->normalization, "global"))
        return cli_usage_error("--normalization: '%s' is not one of: none, global",
                               a->normalization);
    return CLI_EXIT_OK;
}

int cli_cmd_model_init(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(init_help, stdout);
        return CLI_EXIT_OK;
    }
    init_args a;
    int rc = parse_init(argc, argv, &a);
    if (rc != CLI_EXIT_OK)
        return rc;
    cli_list heads;
    if ((rc = cli_split_list("--heads", a.heads, &heads)) != 0)
        return rc;

    isl_model_config config;
    isl_model_config_init(&config);
    config.base_depth = (int)a.base_depth;
    config.num_z = (int)a.num_z;
    config.num_heads = heads.count;
    config.head_names = (const char *const *)heads.items;
    config.seed = a.seed;
    config.input_normalization = a.normalization;
    isl_model *model = NULL;
    isl_status s = isl_model_create(&config, &model);
    cli_list_free(&heads);
    if (s == ISL_OK && a.pixel_size_um > 0 && (s = isl_model_set_pixel_size(model, a.pixel_size_um)) != ISL_OK)
        isl_model_free(model);
    if (s != ISL_OK) {
        /* Everything in the config came from the command line. */
        rc = cli_library_error(s);
        return s == ISL_ERROR_INVALID_ARGUMENT ? CLI_EXIT_USAGE : rc;
    }
    s = isl_model_save(model, a.output);
    if (s != ISL_OK) {
        rc = cli_library_error(s);
        isl_model_free(model);
        return rc;
    }
    char count[32];
    printf("wrote %s (%s parameters)\n", a.output,
           cli_thousands(isl_model_parameter_count(model), count, sizeof(count)));
    isl_model_free(model);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_runtime_error("cannot write to stdout");
}

int cli_cmd_model(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error("missing command: isl model init|info (see 'isl model --help')");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        fputs(model_help, stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(cmd, "init"))
        return cli_cmd_model_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cli_cmd_model_info(argc - 1, argv + 1);
    return cli_usage_error("unknown command 'isl model %s' (commands: init, info)", cmd);
}
