/* The output files of a prediction: one streaming TIFF writer per (head, stat).
 * Single-plane heads stream rows straight into their writer. Multi-plane heads (the
 * autoencoder) deliver rows of every plane at once while a TIFF is written page after
 * page, so their rows go to an unlinked scratch file in the output directory first (disk,
 * not memory: memory stays bounded for any image size) and are copied in at commit. */
#include "cli.h"
#include "tiff_io.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COPY_CHUNK_BYTES ((size_t)4 << 20)

typedef struct output_file {
    int head;
    isl_stat stat;
    int planes;
    char *path;
    isl_tiff_writer *writer; /* NULL once closed */
    int committed;           /* renamed into place */
    int spill_fd;            /* multi-plane heads: unlinked scratch file; else -1 */
    int64_t rows_received;   /* image rows (each covering every plane) */
} output_file;

struct cli_outputs {
    output_file *files;
    int count;
    int *index;        /* [model heads * ISL_STAT_COUNT]: file of (head, stat), or -1 */
    int model_heads;
    int height, width;
    char error[2048];
};

static void set_error(cli_outputs *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(cli_outputs *o, const char *fmt, ...)
{
    if (o->error[0])
        return; /* keep the first failure */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->error, sizeof(o->error), fmt, ap);
    va_end(ap);
}

static void set_tiff_error(cli_outputs *o, isl_status s)
{
    const char *msg = isl_tiff_last_error();
    set_error(o, "%s", msg[0] ? msg : isl_status_string(s));
}

cli_outputs *cli_outputs_new(void)
{
    return calloc(1, sizeof(cli_outputs));
}

/* An unlinked scratch file in dir: nothing is left behind whatever happens. */
static int open_spill(cli_outputs *o, const char *dir)
{
    char *templ = cli_path_join(dir, ".isl-spill.XXXXXX");
    if (!templ) {
        set_error(o, "out of memory");
        return -1;
    }
    int fd = mkstemp(templ);
    if (fd < 0)
        set_error(o, "cannot create a scratch file in %s: %s", dir, strerror(errno));
    else
        unlink(templ);
    free(templ);
    return fd;
}

static int open_file(cli_outputs *o, output_file *f, const isl_model *model, const char *dir,
                     int head, isl_stat stat)
{
    f->head = head;
    f->stat = stat;
    f->spill_fd = -1;
    f->planes = isl_model_head_channels(model, head) / ISL_NUM_CLASSES;
    const char *head_name = isl_model_head_name(model, head);
    const char *stat_name = isl_stat_name(stat);
    if (f->planes < 1 || !head_name || !stat_name) {
        set_error(o, "invalid head %d or statistic %d", head, (int)stat);
        return -1;
    }
    size_t len = strlen(head_name) + strlen(stat_name) + sizeof("_.tif");
    char *name = malloc(len);
    if (!name) {
        set_error(o, "out of memory");
        return -1;
    }
    snprintf(name, len, "%s_%s.tif", head_name, stat_name);
    f->path = cli_path_join(dir, name);
    free(name);
    if (!f->path) {
        set_error(o, "out of memory");
        return -1;
    }
    isl_status s = isl_tiff_writer_open(f->path, f->planes, o->height, o->width, &f->writer);
    if (s != ISL_OK) {
        f->writer = NULL;
        set_tiff_error(o, s);
        return -1;
    }
    if (f->planes > 1 && (f->spill_fd = open_spill(o, dir)) < 0)
        return -1;
    return 0;
}

int cli_outputs_open(cli_outputs *o, const isl_model *model, const char *dir, const int *heads,
                     int num_heads, const isl_stat *stats, int num_stats, int height, int width)
{
    o->model_heads = isl_model_num_heads(model);
    o->height = height;
    o->width = width;
    o->files = calloc((size_t)num_heads * (size_t)num_stats, sizeof(output_file));
    o->index = malloc(sizeof(int) * (size_t)o->model_heads * ISL_STAT_COUNT);
    if (!o->files || !o->index) {
        set_error(o, "out of memory");
        return -1;
    }
    for (int i = 0; i < o->model_heads * ISL_STAT_COUNT; i++)
        o->index[i] = -1;
    for (int h = 0; h < num_heads; h++) {
        for (int s = 0; s < num_stats; s++) {
            if (heads[h] < 0 || heads[h] >= o->model_heads) {
                set_error(o, "head %d does not exist", heads[h]);
                return -1;
            }
            output_file *f = &o->files[o->count++];
            if (open_file(o, f, model, dir, heads[h], stats[s]) != 0)
                return -1;
            o->index[heads[h] * ISL_STAT_COUNT + (int)stats[s]] = o->count - 1;
        }
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t bytes, off_t offset)
{
    const char *p = buf;
    errno = 0;
    while (bytes > 0) {
        ssize_t n = pwrite(fd, p, bytes, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        bytes -= (size_t)n;
        offset += n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t bytes, off_t offset)
{
    char *p = buf;
    errno = 0;
    while (bytes > 0) {
        ssize_t n = pread(fd, p, bytes, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        bytes -= (size_t)n;
        offset += n;
    }
    return 0;
}

static int spill_rows(cli_outputs *o, output_file *f, int y0, int rows, const float *data)
{
    const size_t row_bytes = sizeof(float) * (size_t)o->width;
    for (int z = 0; z < f->planes; z++) {
        off_t offset = (off_t)(((int64_t)z * o->height + y0) * (int64_t)row_bytes);
        const float *src = data + (size_t)z * rows * o->width;
        if (write_all(f->spill_fd, src, row_bytes * (size_t)rows, offset) != 0) {
            set_error(o, "%s: cannot write the scratch file: %s", f->path,
                      errno ? strerror(errno) : "short write");
            return -1;
        }
    }
    return 0;
}

int cli_outputs_wants(const cli_outputs *o, int head, isl_stat stat)
{
    return head >= 0 && head < o->model_heads && (unsigned)stat < ISL_STAT_COUNT &&
           o->index[head * ISL_STAT_COUNT + (int)stat] >= 0;
}

int cli_outputs_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                     const float *data)
{
    cli_outputs *o = user;
    if (cli_interrupted()) {
        set_error(o, "interrupted");
        return 1;
    }
    int i = head >= 0 && head < o->model_heads && (unsigned)stat < ISL_STAT_COUNT
                ? o->index[head * ISL_STAT_COUNT + (int)stat]
                : -1;
    if (i < 0 || width != o->width || y0 < 0 || rows < 0 || y0 + rows > o->height) {
        set_error(o, "unexpected output rows (head %d, statistic %d, rows %d..%d, width %d)",
                  head, (int)stat, y0, y0 + rows, width);
        return 1;
    }
    output_file *f = &o->files[i];
    if (f->planes > 1) {
        if (spill_rows(o, f, y0, rows, data) != 0)
            return 1;
    } else {
        isl_status s = isl_tiff_writer_append(f->writer, data, rows);
        if (s != ISL_OK) {
            set_tiff_error(o, s);
            return 1;
        }
    }
    f->rows_received += rows;
    return 0;
}

/* Copies a multi-plane file's scratch data into its writer, page by page. */
static int copy_spill(cli_outputs *o, output_file *f)
{
    const size_t row_bytes = sizeof(float) * (size_t)o->width;
    int chunk_rows = (int)(COPY_CHUNK_BYTES / row_bytes);
    if (chunk_rows < 1)
        chunk_rows = 1;
    if (chunk_rows > o->height)
        chunk_rows = o->height;
    float *buf = malloc(row_bytes * (size_t)chunk_rows);
    if (!buf) {
        set_error(o, "out of memory");
        return -1;
    }
    int rc = 0;
    for (int z = 0; rc == 0 && z < f->planes; z++) {
        for (int y = 0; rc == 0 && y < o->height; y += chunk_rows) {
            int rows = y + chunk_rows > o->height ? o->height - y : chunk_rows;
            off_t offset = (off_t)(((int64_t)z * o->height + y) * (int64_t)row_bytes);
            if (read_all(f->spill_fd, buf, row_bytes * (size_t)rows, offset) != 0) {
                set_error(o, "%s: cannot read the scratch file back: %s", f->path,
                          errno ? strerror(errno) : "short read");
                rc = -1;
            } else {
                isl_status s = isl_tiff_writer_append(f->writer, buf, rows);
                if (s != ISL_OK) {
                    set_tiff_error(o, s);
                    rc = -1;
                }
            }
            if (rc == 0 && cli_interrupted()) {
                set_error(o, "interrupted");
                rc = -1;
            }
        }
    }
    free(buf);
    return rc;
}

static int commit_file(cli_outputs *o, output_file *f)
{
    if (f->rows_received != o->height) {
        set_error(o, "%s: received %lld of %d rows", f->path, (long long)f->rows_received,
                  o->height);
        return -1;
    }
    if (f->planes > 1 && copy_spill(o, f) != 0)
        return -1;
    isl_tiff_writer *w = f->writer;
    f->writer = NULL; /* close frees it, success or not */
    isl_status s = isl_tiff_writer_close(w);
    if (s != ISL_OK) {
        set_tiff_error(o, s);
        return -1;
    }
    f->committed = 1;
    return 0;
}

int cli_outputs_commit(cli_outputs *o)
{
    for (int i = 0; i < o->count; i++) {
        if (commit_file(o, &o->files[i]) != 0) {
            /* All or nothing: take back the files already in place. */
            for (int j = 0; j < i; j++) {
                unlink(o->files[j].path);
                o->files[j].committed = 0;
            }
            return -1;
        }
    }
    return 0;
}

const char *cli_outputs_error(const cli_outputs *o) { return o->error; }

int cli_outputs_count(const cli_outputs *o) { return o->count; }

const char *cli_outputs_path(const cli_outputs *o, int i)
{
    return i >= 0 && i < o->count ? o->files[i].path : NULL;
}

void cli_outputs_free(cli_outputs *o)
{
    if (!o)
        return;
    for (int i = 0; i < o->count; i++) {
        output_file *f = &o->files[i];
        isl_tiff_writer_discard(f->writer);
        if (f->spill_fd >= 0)
            close(f->spill_fd);
        free(f->path);
    }
    free(o->files);
    free(o->index);
    free(o);
}
