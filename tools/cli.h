/* Shared declarations of the isl command-line tool. */
#ifndef ISL_CLI_H
#define ISL_CLI_H

#include "isl.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_RUNTIME = 1,     /* the work failed (library error, I/O, ...) */
    CLI_EXIT_USAGE = 2,       /* bad command line */
    CLI_EXIT_INTERRUPTED = 130 /* SIGINT or SIGTERM: 128 + SIGINT, as shells report it */
};

/* ---- Commands (cmd_*.c). argv[0] is the command name. ------------------------------ */
int cli_cmd_dataset(int argc, char **argv);
int cli_cmd_export(int argc, char **argv);
int cli_cmd_flat_field(int argc, char **argv);
int cli_cmd_preprocess(int argc, char **argv);
int cli_cmd_stitch(int argc, char **argv);
int cli_cmd_model(int argc, char **argv);
int cli_cmd_model_init(int argc, char **argv);
int cli_cmd_model_info(int argc, char **argv);
int cli_cmd_predict(int argc, char **argv);
int cli_cmd_train(int argc, char **argv);
int cli_cmd_evaluate(int argc, char **argv);
int cli_cmd_report(int argc, char **argv);

/* ---- Preprocessing inputs (cmd_flat_field.c). -------------------------------------- */
/* A TIFF stack as float32 raw values (integers not scaled). */
typedef struct cli_float_stack {
    float *data;
    int num_z, height, width;
} cli_float_stack;
/* Reads path (expect_pages > 0 checks the page count), each page downscaled 2x if asked.
 * Returns 0, or the exit code of an error it reported. Free data with free(). */
int cli_read_float_stack(const char *path, int expect_pages, int downscale, cli_float_stack *out);
/* "transmitted" or "fluorescence"; 0, or the exit code of a reported usage error. */
int cli_parse_light(const char *text, isl_light *out);

/* ---- Diagnostics (diag.c). Each prints exactly one line to stderr. ----------------- */
/* "isl: error: <message>"; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "isl: error: <message>"; returns CLI_EXIT_RUNTIME. */
int cli_runtime_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "isl: error: <isl_last_error()>" (or the status text if there is no message). */
int cli_library_error(isl_status status);
/* "isl: error: <isl_tiff_last_error()>": the failures of tools/tiff_io.c. */
int cli_tiff_error(isl_status status);
/* Formats v with thousands separators ("8,212,345") into buf; returns buf. */
const char *cli_thousands(int64_t v, char *buf, size_t size);

/* ---- Command-line parsing (args.c). ------------------------------------------------ */
typedef struct cli_option {
    const char *name; /* long name without "--" */
    char short_name;  /* 0: none */
    int takes_value;
    int id;
} cli_option;

typedef struct cli_args {
    int argc;
    char **argv;
    int next;              /* index of the next argument */
    int only_positional;   /* after "--" */
    const char *command;   /* "predict", "model init": for messages */
} cli_args;

enum { CLI_ARG_ERROR = -1, CLI_ARG_END = 0, CLI_ARG_OPTION = 1, CLI_ARG_POSITIONAL = 2 };

/* Starts parsing argv[1..argc). */
void cli_args_init(cli_args *a, int argc, char **argv, const char *command);
/* Next argument: an option of opts (table ends with name == NULL; *id and *value set,
 * value NULL for flags), a positional (*value), the end, or an error (already reported). */
int cli_args_next(cli_args *a, const cli_option *opts, int *id, const char **value);
/* 1 if "-h" or "--help" appears among argv[1..argc) before any "--". */
int cli_wants_help(int argc, char **argv);

/* Strict integer parsing: the whole text, in [min, max]. Reports a usage error and returns
 * -1 on failure, 0 on success. */
int cli_parse_int(const char *option, const char *text, long long min, long long max,
                  long long *out);
int cli_parse_u64(const char *option, const char *text, uint64_t *out);
/* A finite number in [min, max]; same reporting as cli_parse_int. */
int cli_parse_double(const char *option, const char *text, double min, double max,
                     double *out);

/* A comma-separated list: items point into one allocated copy of the text. Returns 0, or
 * the exit code of a reported error (an empty item is a usage error). Free with
 * cli_list_free. */
typedef struct cli_list {
    char *buffer;
    char **items;
    int count;
} cli_list;
int cli_split_list(const char *option, const char *text, cli_list *out);
void cli_list_free(cli_list *l);
/* NAME=FILE, with allow_offset an optional ":X0,Y0" after FILE (`--target`, `--truth`).
 * *label and *file are allocated (free them). Returns 0 or the exit code of a reported
 * error. */
int cli_parse_named_file(const char *option, const char *text, int allow_offset, char **label,
                         char **file, int *x0, int *y0);

/* ---- Files (fsutil.c). -------------------------------------------------------------- */
/* mkdir -p. Directories it creates are recorded in *created (deepest last) so that they
 * can be removed again with cli_remove_created_dirs. Reports runtime errors itself. */
typedef struct cli_dirs {
    char **paths;
    int count;
} cli_dirs;
int cli_mkdir_p(const char *path, cli_dirs *created);
/* Removes the recorded directories if they are empty (deepest first) and frees the list. */
void cli_remove_created_dirs(cli_dirs *created);
void cli_dirs_free(cli_dirs *created);
/* dir + "/" + name (no doubled slash). NULL if out of memory. */
char *cli_path_join(const char *dir, const char *name);
/* File size in bytes, or -1. */
int64_t cli_file_size(const char *path);
/* Writes size bytes to path atomically (temporary file beside it, synced, renamed, the
 * directory synced: lib/common/atomic_file.h, the library's own writer). 0, or the exit
 * code of the one-line error it printed. */
int cli_write_file_atomic(const char *path, const void *data, size_t size);
/* The same, printing nothing: 0, or -1 with the message in error. */
int cli_write_file_atomic_quiet(const char *path, const void *data, size_t size, char *error,
                                size_t error_size);

/* ---- Field lists (field_list.c): `isl predict --input-list`. ------------------------- */
typedef struct cli_field_list {
    char **paths; /* input stacks */
    char **names; /* their output directories' names: file names without .tif etc. */
    int count;
} cli_field_list;
/* Reads FILE: one path a line, blank lines and # comments skipped; two fields with one
 * name are a usage error. 0 or the exit code of a reported error. */
int cli_field_list_read(const char *path, cli_field_list *l);
void cli_field_list_free(cli_field_list *l);

/* ---- Interruption (interrupt.c). ----------------------------------------------------- */
/* Installs SIGINT/SIGTERM handlers that set a flag (a second signal kills as usual). */
int cli_interrupt_install(void);
int cli_interrupted(void);

/* ---- Progress (progress.c). ---------------------------------------------------------- */
double cli_now(void); /* monotonic seconds */
/* "h:mm:ss" or "m:ss"; "--:--" for negative or huge values. */
void cli_format_duration(double seconds, char *buf, size_t size);

typedef struct cli_progress {
    int enabled;       /* draw a bar (stderr is a terminal) */
    double start;      /* cli_now() at creation */
    double last_draw;
    int drawn;         /* a bar is on the screen */
} cli_progress;

void cli_progress_init(cli_progress *p);
/* isl_progress_fn: draws the bar; returns non-zero once interrupted. */
int cli_progress_update(void *user, int64_t done, int64_t total);
/* Erases the bar (if drawn) so that the next stderr line starts clean. */
void cli_progress_clear(cli_progress *p);

/* ---- Prediction outputs (outputs.c). --------------------------------------------------- */
/* One float32 TIFF per selected (head, stat): dir/<head>_<stat>.tif, with as many pages as
 * the head has planes. Files are written to temporaries and appear at their final paths
 * only in cli_outputs_commit. Failures keep a message for cli_outputs_error. */
typedef struct cli_outputs cli_outputs;

/* NULL only when out of memory. */
cli_outputs *cli_outputs_new(void);
/* Opens every file (so that errors surface before the work). 0, or -1 on failure. */
int cli_outputs_open(cli_outputs *o, const isl_model *model, const char *dir, const int *heads,
                     int num_heads, const isl_stat *stats, int num_stats, int height, int width);
/* isl_rows_fn (user = the cli_outputs): routes rows to their file; non-zero on failure or
 * once interrupted. */
int cli_outputs_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                     const float *data);
/* Finishes every file and moves them into place; on any failure removes every file of the
 * set, including ones already moved into place. 0, or -1 on failure. */
int cli_outputs_commit(cli_outputs *o);
/* Message of the first failure ("" if none). */
const char *cli_outputs_error(const cli_outputs *o);
/* Number of files and the final path of file i, in head-major order. */
int cli_outputs_count(const cli_outputs *o);
const char *cli_outputs_path(const cli_outputs *o, int i);
/* 1 if a file takes the rows of (head, stat). */
int cli_outputs_wants(const cli_outputs *o, int head, isl_stat stat);
/* Removes whatever was not committed and frees. NULL is a no-op. */
void cli_outputs_free(cli_outputs *o);

/* ---- The preview picture (preview.c). ---------------------------------------------- */
/* dir/preview.tif, 8-bit RGB: the input's middle z plane (gray) beside the medians of up
 * to three label heads (first blue, second green, third red; one head alone: gray), each
 * channel stretched between its 0.5th and 99.5th percentiles, shrunk by an integer factor
 * to at most 1024 pixels per side. */
struct isl_tiff_stack; /* tiff_io.h */
typedef struct cli_preview cli_preview;

/* Takes the first min(3, num_heads) heads (label heads). NULL only when out of memory. */
cli_preview *cli_preview_open(const char *dir, const struct isl_tiff_stack *stack,
                              const int *heads, int num_heads);
/* Adds the third panel, where the prediction cannot be trusted: the preview then also
 * takes its heads' standard deviations. 0, or -1 (memory). */
int cli_preview_show_uncertainty(cli_preview *p);
/* 1 if the preview takes the rows of (head, stat): the median of one of its heads, or with
 * the uncertainty panel their standard deviation. */
int cli_preview_wants(const cli_preview *p, int head, isl_stat stat);
/* Adds rows y0 .. y0 + rows - 1 of head's stat (rows x the image width). */
void cli_preview_rows(cli_preview *p, int head, isl_stat stat, int y0, int rows,
                      const float *data);
/* Writes the picture to path as PNG instead (a bioimage.io cover). 0, or -1 (memory). */
int cli_preview_as_png(cli_preview *p, const char *path);
/* Writes the picture atomically. 0, or -1 with cli_preview_error set. */
int cli_preview_commit(cli_preview *p);
const char *cli_preview_path(const cli_preview *p);
const char *cli_preview_error(const cli_preview *p);
/* "dapi_confocal blue, map2_confocal green, nfh_confocal red" into buf. */
void cli_preview_legend(const cli_preview *p, const isl_model *model, char *buf, size_t size);
/* The line of each head's share of uncertain pixels (isl_uncertainty_summary with
 * ISL_UNCERTAIN_STD), after the rows were added with the uncertainty panel. 0, or -1 when
 * buf is too small (isl_last_error says). */
int cli_preview_uncertainty(const cli_preview *p, const isl_model *model, char *buf,
                            size_t size);
/* Frees (a committed picture stays). NULL is a no-op. */
void cli_preview_free(cli_preview *p);

/* ---- PNG (png_write.c). ------------------------------------------------------------ */
/* Writes an 8-bit RGB picture (interleaved) atomically. 0, or -1 with a message in error. */
int cli_png_write_rgb8(const char *path, const uint8_t *rgb, int height, int width,
                       char *error, size_t error_size);

/* ---- bioimage.io model packages (bioimageio.c). ------------------------------------- */
/* Writes dir/{rdf.yaml, README.md, weights.onnx, test_input.npy, test_output_<head>.npy,
 * cover.png} from the model and a sample z-stack. Returns an exit code. */
int cli_export_bioimageio(const isl_model *model, const char *model_path, const char *dir,
                          const char *sample);

/* ---- OME-TIFF (ome_tiff.c). --------------------------------------------------------- */
#define CLI_OME_MAX_CHANNELS 16
#define CLI_OME_NAME 96
typedef struct cli_ome_info {
    int present;                 /* the first page's description is OME-XML */
    double pixel_x_um, pixel_y_um; /* PhysicalSizeX/Y in micrometres; 0 if not given */
    int size_z, size_c, size_t;
    char order[8];               /* DimensionOrder, e.g. "XYZCT" */
    int num_channels;
    char channel[CLI_OME_MAX_CHANNELS][64];
} cli_ome_info;
/* Reads path's OME-XML, if any (info->present). 0, or -1 if it is OME-XML without
 * Image/Pixels. */
int cli_ome_read(const char *path, cli_ome_info *info);
/* For an input stack: refuses OME-TIFFs that are not one z-stack of num_z planes, prints
 * the metadata found (stderr) and warns when their pixel size differs by more than 1% from
 * model_pixel_um (the model's training pixel size; 0: unknown). Returns an exit code. */
int cli_ome_check_input(const char *path, int num_z, double model_pixel_um);
/* Writes the float32 TIFFs files (num_planes pages in all) as one OME-TIFF with a named
 * channel per page (names[num_planes]), atomically; BigTIFF when large. 0, or -1 with a
 * message in err. */
int cli_ome_write(const char *path, int num_files, const char *const *files,
                  char (*names)[CLI_OME_NAME], int num_planes, int height, int width,
                  double pixel_um, char *err, size_t err_size);

#endif
