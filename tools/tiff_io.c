/* Reading transmitted-light stacks and writing float32 (or 8-bit RGB) images with
 * libtiff (>= 4.5).
 *
 * Part of the command-line program, not of libisl (as zstd keeps file I/O in programs/).
 * libtiff's messages are captured per open file (TIFFOpenOptions handlers with a
 * per-call log) and folded into this module's error message (isl_tiff_last_error);
 * nothing is printed. Writes go to a temporary file beside the target that is renamed
 * over it only once complete. */
#define _POSIX_C_SOURCE 200809L

#include "tiff_io.h"

#include "atomic_file.h"
#include "bounds.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tiffio.h>

/* Largest page we read or write, in samples: keeps every size computation far from
 * overflow and rejects absurd headers before allocating. Sides are also at most
 * ISL_MAX_IMAGE_SIDE, pages ISL_MAX_PAGES and a stack ISL_MAX_ARRAY_BYTES
 * (lib/common/bounds.h). */
#define MAX_PAGE_SAMPLES ((uint64_t)1 << 31)

/* Largest decoded-to-stored ratio of a compressed page: deflate stops near 1032:1 and
 * libtiff's LZW near 150:1, so a page claiming more is a forged header, and a small file
 * cannot make the reader allocate more than this many times its size. */
#define MAX_COMPRESSION_RATIO 2048

/* Files whose pixel data exceed this are written as BigTIFF (classic TIFF offsets are
 * 32-bit; the margin leaves room for directories and strip tables). */
#define BIGTIFF_THRESHOLD ((uint64_t)3900000000u)

/* Target size of one written strip. */
#define STRIP_BYTES 65536

/* ---------------------------------------------------------------------------------- */
/* Error messages                                                                      */
/* ---------------------------------------------------------------------------------- */

static _Thread_local char last_error[1024];

const char *isl_tiff_last_error(void) { return last_error; }

/* Records a formatted message for the calling thread and returns status. */
static isl_status tiff_fail(isl_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static isl_status tiff_fail(isl_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

#define TIFF_CHECK(expr)                      \
    do {                                      \
        isl_status tiff_check_s_ = (expr);    \
        if (tiff_check_s_ != ISL_OK)          \
            return tiff_check_s_;             \
    } while (0)

/* ---------------------------------------------------------------------------------- */
/* Capturing libtiff messages                                                          */
/* ---------------------------------------------------------------------------------- */

/* libtiff messages of one open file. The first error after tiff_log_reset is kept: later
 * ones are usually consequences of it. */
typedef struct tiff_log {
    int errors;
    char text[512];
} tiff_log;

static void tiff_log_reset(tiff_log *log)
{
    log->errors = 0;
    log->text[0] = '\0';
}

static int on_tiff_error(TIFF *tif, void *user_data, const char *module, const char *fmt,
                         va_list ap)
{
    (void)tif;
    tiff_log *log = user_data;
    if (log->errors++ == 0) {
        int n = 0;
        if (module && module[0])
            n = snprintf(log->text, sizeof(log->text), "%s: ", module);
        if (n < 0 || (size_t)n >= sizeof(log->text))
            n = 0;
        vsnprintf(log->text + n, sizeof(log->text) - (size_t)n, fmt, ap);
    }
    return 1; /* handled: do not call the global (stderr) handler */
}

/* Warnings (unknown tags, guessed photometric, ...) are harmless for us; drop them. */
static int on_tiff_warning(TIFF *tif, void *user_data, const char *module, const char *fmt,
                           va_list ap)
{
    (void)tif, (void)user_data, (void)module, (void)fmt, (void)ap;
    return 1;
}

/* tiff_fail with libtiff's own message, if it gave one, appended as " (libtiff: ...)". */
static isl_status fail_tiff(isl_status status, const tiff_log *log, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static isl_status fail_tiff(isl_status status, const tiff_log *log, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (log->errors > 0 && log->text[0])
        return tiff_fail(status, "%s (libtiff: %s)", msg, log->text);
    return tiff_fail(status, "%s", msg);
}

/* Opens fd with libtiff, routing its messages into log. Does not take fd on failure. */
static TIFF *tiff_fdopen(int fd, const char *name, const char *mode, tiff_log *log)
{
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts)
        return NULL;
    TIFFOpenOptionsSetErrorHandlerExtR(opts, on_tiff_error, log);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, on_tiff_warning, log);
    TIFF *tif = TIFFFdOpenExt(fd, name, mode, opts);
    TIFFOpenOptionsFree(opts); /* libtiff copies the handlers into tif */
    return tif;
}

/* ---------------------------------------------------------------------------------- */
/* Reading                                                                             */
/* ---------------------------------------------------------------------------------- */

/* Layout of one page (directory). */
typedef struct page_info {
    uint32_t width, height;
    isl_dtype dtype;
    int compressed;
    uint64_t stored; /* bytes of its strips or tiles, as the directory claims */
} page_info;

static size_t dtype_size(isl_dtype dtype)
{
    return dtype == ISL_DTYPE_U8 ? 1 : dtype == ISL_DTYPE_U16 ? 2 : 4;
}

static const char *dtype_name(isl_dtype dtype)
{
    return dtype == ISL_DTYPE_U8 ? "uint8" : dtype == ISL_DTYPE_U16 ? "uint16" : "float32";
}

/* Maps (bits, sample format) to a dtype, or explains why not. */
static isl_status sample_dtype(const char *path, int page, uint16_t bits, uint16_t format,
                               isl_dtype *out)
{
    if (format == SAMPLEFORMAT_UINT && (bits == 8 || bits == 16)) {
        *out = bits == 8 ? ISL_DTYPE_U8 : ISL_DTYPE_U16;
        return ISL_OK;
    }
    if (format == SAMPLEFORMAT_IEEEFP && bits == 32) {
        *out = ISL_DTYPE_F32;
        return ISL_OK;
    }
    const char *kind = format == SAMPLEFORMAT_UINT     ? "unsigned integer"
                       : format == SAMPLEFORMAT_INT    ? "signed integer"
                       : format == SAMPLEFORMAT_IEEEFP ? "floating-point"
                       : format == SAMPLEFORMAT_VOID   ? "untyped"
                                                       : "complex or unknown";
    return tiff_fail(ISL_ERROR_UNSUPPORTED,
                    "%s: page %d has %u-bit %s samples; supported are 8/16-bit unsigned "
                    "integers and 32-bit floats",
                    path, page, bits, kind);
}

/* Reads and checks the tags of the current directory (page is 1-based, for messages). */
static isl_status page_info_read(TIFF *tif, const char *path, int page, page_info *pi)
{
    uint32_t width = 0, height = 0;
    uint16_t spp = 1, bits = 1, format = SAMPLEFORMAT_UINT, photometric = PHOTOMETRIC_MINISBLACK;
    uint16_t compression = COMPRESSION_NONE;

    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &width) ||
        !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &height) || width == 0 || height == 0)
        return tiff_fail(ISL_ERROR_FORMAT, "%s: page %d has no valid image size", path, page);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bits);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &format);
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric); /* absent: grey assumed */

    if (spp != 1)
        return tiff_fail(ISL_ERROR_UNSUPPORTED,
                        "%s: page %d has %u samples per pixel; only single-channel (grey) "
                        "images are supported",
                        path, page, spp);
    if (photometric != PHOTOMETRIC_MINISBLACK)
        return tiff_fail(ISL_ERROR_UNSUPPORTED,
                        "%s: page %d has photometric interpretation %u%s; only min-is-black "
                        "grey images are supported",
                        path, page, photometric,
                        photometric == PHOTOMETRIC_PALETTE     ? " (palette)"
                        : photometric == PHOTOMETRIC_MINISWHITE ? " (min-is-white)"
                                                                : "");
    TIFF_CHECK(sample_dtype(path, page, bits, format, &pi->dtype));
    if (!TIFFIsCODECConfigured(compression))
        return tiff_fail(ISL_ERROR_UNSUPPORTED,
                        "%s: page %d uses compression scheme %u, which this libtiff cannot "
                        "decode",
                        path, page, compression);
    if ((uint64_t)width * height > MAX_PAGE_SAMPLES || width > ISL_MAX_IMAGE_SIDE ||
        height > ISL_MAX_IMAGE_SIDE)
        return tiff_fail(ISL_ERROR_UNSUPPORTED,
                        "%s: page %d is %" PRIu32 "x%" PRIu32 " pixels; supported are sides up to "
                        "%d and 2^31 pixels per page",
                        path, page, width, height, ISL_MAX_IMAGE_SIDE);
    pi->compressed = compression != COMPRESSION_NONE;
    pi->width = width;
    pi->height = height;
    return ISL_OK;
}

/* Decodes a stripped page straight into dst (height * width samples). */
static isl_status page_read_strips(TIFF *tif, tiff_log *log, const char *path, int page,
                                   const page_info *pi, uint8_t *dst)
{
    size_t row_bytes = (size_t)pi->width * dtype_size(pi->dtype);
    uint32_t rps = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rps);
    if (rps == 0 || rps > pi->height)
        rps = pi->height;
    uint32_t strips = TIFFNumberOfStrips(tif);
    uint32_t needed = (pi->height - 1) / rps + 1;
    if (strips < needed)
        return tiff_fail(ISL_ERROR_FORMAT, "%s: page %d has %" PRIu32 " strips, expected %" PRIu32,
                        path, page, strips, needed);

    for (uint32_t s = 0; s < needed; s++) {
        uint32_t y0 = s * rps;
        uint32_t rows = pi->height - y0 < rps ? pi->height - y0 : rps;
        tmsize_t want = (tmsize_t)(rows * row_bytes);
        tiff_log_reset(log);
        tmsize_t got = TIFFReadEncodedStrip(tif, s, dst + y0 * row_bytes, want);
        if (got != want)
            return fail_tiff(ISL_ERROR_FORMAT, log,
                             "%s: page %d: cannot decode strip %" PRIu32 " (rows %" PRIu32
                             "-%" PRIu32 "): file truncated or corrupt",
                             path, page, s, y0, y0 + rows - 1);
    }
    return ISL_OK;
}

/* Decodes a tiled page into dst, cropping the tiles that stick out of the image. */
static isl_status page_read_tiles(TIFF *tif, tiff_log *log, const char *path, int page,
                                  const page_info *pi, uint8_t *dst)
{
    size_t sample = dtype_size(pi->dtype);
    uint32_t tw = 0, th = 0;
    if (!TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw) || !TIFFGetField(tif, TIFFTAG_TILELENGTH, &th) ||
        tw == 0 || th == 0 || (uint64_t)tw * th > MAX_PAGE_SAMPLES)
        return tiff_fail(ISL_ERROR_FORMAT, "%s: page %d has an invalid tile size", path, page);
    tmsize_t tile_bytes = (tmsize_t)((uint64_t)tw * th * sample);
    if (TIFFTileSize(tif) != tile_bytes)
        return tiff_fail(ISL_ERROR_FORMAT, "%s: page %d has an inconsistent tile layout", path,
                        page);
    uint8_t *buf = malloc((size_t)tile_bytes);
    if (!buf)
        return tiff_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: page %d: cannot allocate a %" PRIu32
                        "x%" PRIu32 " tile", path, page, tw, th);

    isl_status status = ISL_OK;
    size_t row_bytes = (size_t)pi->width * sample;
    for (uint32_t y = 0; y < pi->height && status == ISL_OK; y += th) {
        for (uint32_t x = 0; x < pi->width; x += tw) {
            uint32_t tile = TIFFComputeTile(tif, x, y, 0, 0);
            tiff_log_reset(log);
            if (TIFFReadEncodedTile(tif, tile, buf, tile_bytes) != tile_bytes) {
                status = fail_tiff(ISL_ERROR_FORMAT, log,
                                   "%s: page %d: cannot decode tile %" PRIu32 " at x=%" PRIu32
                                   ", y=%" PRIu32 ": file truncated or corrupt",
                                   path, page, tile, x, y);
                break;
            }
            uint32_t rows = pi->height - y < th ? pi->height - y : th;
            size_t cols = pi->width - x < tw ? pi->width - x : tw;
            for (uint32_t r = 0; r < rows; r++)
                memcpy(dst + (y + r) * row_bytes + x * sample, buf + (size_t)r * tw * sample,
                       cols * sample);
        }
    }
    free(buf);
    return status;
}

static isl_status page_read(TIFF *tif, tiff_log *log, const char *path, int page,
                            const page_info *pi, uint8_t *dst)
{
    return TIFFIsTiled(tif) ? page_read_tiles(tif, log, path, page, pi, dst)
                            : page_read_strips(tif, log, path, page, pi, dst);
}

/* Explains why libtiff could not open a file we could open: not a TIFF at all, or a TIFF
 * whose first directory is damaged. */
static isl_status open_failure(int fd, const char *path, const tiff_log *log)
{
    unsigned char magic[4] = {0};
    ssize_t n = pread(fd, magic, sizeof(magic), 0);
    int tiff_magic = n == 4 && ((magic[0] == 'I' && magic[1] == 'I' && magic[3] == 0 &&
                                 (magic[2] == 42 || magic[2] == 43)) ||
                                (magic[0] == 'M' && magic[1] == 'M' && magic[2] == 0 &&
                                 (magic[3] == 42 || magic[3] == 43)));
    if (!tiff_magic)
        return fail_tiff(ISL_ERROR_FORMAT, log, "%s: not a TIFF file", path);
    return fail_tiff(ISL_ERROR_FORMAT, log,
                     "%s: page 1: cannot read the TIFF directory: file truncated or corrupt",
                     path);
}

/* Opens path for reading. We open the descriptor ourselves to tell a missing file (I/O)
 * from a bad one (format) and to look at the header when libtiff rejects it. */
static isl_status reader_open(const char *path, tiff_log *log, TIFF **out, uint64_t *file_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tiff_fail(ISL_ERROR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int err = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (err) {
        close(fd);
        return tiff_fail(ISL_ERROR_IO, "%s: cannot read: %s", path, strerror(err));
    }
    *file_size = (uint64_t)st.st_size;
    /* "m": no memory mapping, so a file shrinking under us is a read error, not SIGBUS. */
    TIFF *tif = tiff_fdopen(fd, path, "rm", log);
    if (!tif) {
        isl_status s = log->errors ? open_failure(fd, path, log)
                                   : tiff_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: cannot open with "
                                              "libtiff (out of memory?)", path);
        close(fd);
        return s;
    }
    *out = tif;
    return ISL_OK;
}

/* Counts pages, complaining when the directory chain is broken: libtiff stops counting
 * at a damaged link, which would otherwise silently drop the remaining pages. */
static isl_status count_pages(TIFF *tif, tiff_log *log, const char *path, int *out)
{
    tiff_log_reset(log);
    tdir_t n = TIFFNumberOfDirectories(tif);
    if (log->errors)
        return fail_tiff(ISL_ERROR_FORMAT, log,
                         "%s: page %u: cannot read the TIFF directory: file truncated or "
                         "corrupt",
                         path, (unsigned)n + 1);
    if (n == 0)
        return tiff_fail(ISL_ERROR_FORMAT, "%s: invalid number of pages (%u)", path, (unsigned)n);
    if (n > ISL_MAX_PAGES)
        return tiff_fail(ISL_ERROR_UNSUPPORTED, "%s: has %u pages; at most %d are supported",
                         path, (unsigned)n, ISL_MAX_PAGES);
    *out = (int)n;
    return ISL_OK;
}

static isl_status check_same_layout(const char *path, int page, const page_info *pi,
                                    const page_info *first)
{
    if (pi->width != first->width || pi->height != first->height)
        return tiff_fail(ISL_ERROR_SHAPE, "%s: page %d is %" PRIu32 "x%" PRIu32
                        " but page 1 is %" PRIu32 "x%" PRIu32 " (width x height)",
                        path, page, pi->width, pi->height, first->width, first->height);
    if (pi->dtype != first->dtype)
        return tiff_fail(ISL_ERROR_SHAPE, "%s: page %d holds %s samples but page 1 holds %s",
                        path, page, dtype_name(pi->dtype), dtype_name(first->dtype));
    return ISL_OK;
}

/* Sums the byte counts of the current page's strips or tiles (what the directory
 * claims; libtiff checks them against the file when decoding) and checks that they can
 * hold the page: all of it uncompressed, 1/MAX_COMPRESSION_RATIO of it compressed. */
static isl_status page_stored(TIFF *tif, const char *path, int page, page_info *pi)
{
    uint32_t n = TIFFIsTiled(tif) ? TIFFNumberOfTiles(tif) : TIFFNumberOfStrips(tif);
    uint64_t stored = 0, plane = (uint64_t)pi->width * pi->height * dtype_size(pi->dtype);
    for (uint32_t i = 0; i < n; i++) {
        int err = 0;
        stored += TIFFGetStrileByteCountWithErr(tif, i, &err);
        if (err || stored > ((uint64_t)1 << 62))
            return tiff_fail(ISL_ERROR_FORMAT, "%s: page %d has invalid strip or tile sizes",
                             path, page);
    }
    if (pi->compressed ? plane / MAX_COMPRESSION_RATIO > stored : stored < plane)
        return tiff_fail(ISL_ERROR_FORMAT,
                         "%s: page %d: %" PRIu64 " stored bytes cannot hold a %" PRIu32 "x%" PRIu32
                         " page of %" PRIu64 " bytes (truncated, or a forged header)",
                         path, page, stored, pi->width, pi->height, plane);
    pi->stored = stored;
    return ISL_OK;
}

/* Allocates the whole stack once every page's layout is known and checked. */
static isl_status stack_alloc(const char *path, int pages, const page_info *pi, void **out)
{
    uint64_t bytes64, factors[4] = {(uint64_t)pages, pi->width, pi->height, dtype_size(pi->dtype)};
    if (isl_mul_u64_capped(&bytes64, factors, 4, ISL_MAX_ARRAY_BYTES) != 0 || bytes64 > SIZE_MAX)
        return tiff_fail(ISL_ERROR_UNSUPPORTED, "%s: %d pages of %" PRIu32 "x%" PRIu32
                        " need more than the supported %llu GiB", path, pages, pi->width,
                        pi->height, (unsigned long long)(ISL_MAX_ARRAY_BYTES >> 30));
    size_t bytes = (size_t)bytes64;
    *out = malloc(bytes);
    if (!*out)
        return tiff_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for %d pages "
                        "of %" PRIu32 "x%" PRIu32, path, bytes, pages, pi->width, pi->height);
    return ISL_OK;
}

/* Makes page i (0-based) the current directory: the next one, or page 1 again. */
static isl_status goto_page(TIFF *tif, tiff_log *log, const char *path, int i)
{
    tiff_log_reset(log);
    if (i == 0 ? TIFFCurrentDirectory(tif) == 0 || TIFFSetDirectory(tif, 0) : TIFFReadDirectory(tif))
        return ISL_OK;
    return fail_tiff(ISL_ERROR_FORMAT, log,
                     "%s: page %d: cannot read the TIFF directory: file truncated or corrupt",
                     path, i + 1);
}

/* Two passes: every directory is read and checked (sizes, layout, stored bytes within
 * the file) before the stack is allocated; then the pages are decoded into it. */
static isl_status read_pages(TIFF *tif, tiff_log *log, const char *path, uint64_t file_size,
                             int expect_pages, isl_tiff_stack *out)
{
    int pages = 0;
    TIFF_CHECK(count_pages(tif, log, path, &pages));
    if (expect_pages > 0 && pages != expect_pages)
        return tiff_fail(ISL_ERROR_SHAPE, "%s: has %d page%s, expected %d", path, pages,
                        pages == 1 ? "" : "s", expect_pages);

    page_info first = {0};
    uint64_t stored = 0;
    for (int i = 0; i < pages; i++) {
        page_info pi = {0};
        TIFF_CHECK(goto_page(tif, log, path, i));
        TIFF_CHECK(page_info_read(tif, path, i + 1, &pi));
        if (i == 0)
            first = pi;
        TIFF_CHECK(check_same_layout(path, i + 1, &pi, &first));
        TIFF_CHECK(page_stored(tif, path, i + 1, &pi));
        stored += pi.stored;
        if (stored > file_size)
            return tiff_fail(ISL_ERROR_FORMAT,
                             "%s: page %d: pages 1-%d claim %" PRIu64 " bytes of image data; "
                             "the file has %" PRIu64 " (truncated, or a forged header)",
                             path, i + 1, i + 1, stored, file_size);
    }
    size_t plane = (size_t)first.width * first.height * dtype_size(first.dtype);
    TIFF_CHECK(stack_alloc(path, pages, &first, &out->data));
    for (int i = 0; i < pages; i++) {
        TIFF_CHECK(goto_page(tif, log, path, i));
        TIFF_CHECK(page_read(tif, log, path, i + 1, &first, (uint8_t *)out->data + i * plane));
    }
    out->dtype = first.dtype;
    out->num_z = pages;
    out->height = (int)first.height;
    out->width = (int)first.width;
    return ISL_OK;
}

isl_status isl_tiff_read_stack(const char *path, int expect_pages, isl_tiff_stack *out)
{
    if (!out)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_read_stack: out is NULL");
    memset(out, 0, sizeof(*out));
    if (!path)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_read_stack: path is NULL");
    if (expect_pages < 0)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: invalid expected page count %d",
                        path, expect_pages);

    tiff_log log;
    tiff_log_reset(&log);
    TIFF *tif = NULL;
    uint64_t file_size = 0;
    TIFF_CHECK(reader_open(path, &log, &tif, &file_size));
    isl_status status = read_pages(tif, &log, path, file_size, expect_pages, out);
    TIFFClose(tif);
    if (status != ISL_OK)
        isl_tiff_stack_free(out);
    return status;
}

void isl_tiff_stack_free(isl_tiff_stack *s)
{
    if (!s)
        return;
    free(s->data);
    memset(s, 0, sizeof(*s));
}

/* ---------------------------------------------------------------------------------- */
/* Writing                                                                             */
/* ---------------------------------------------------------------------------------- */

struct isl_tiff_writer {
    TIFF *tif;
    isl_atomic_file out;  /* the temp file; libtiff owns a dup of its descriptor */
    char *path;
    tiff_log log;
    int pages, height, width;
    int rgb8;             /* 8-bit RGB pixels instead of one float32 sample */
    size_t row_bytes;
    uint32_t rows_per_strip;
    int page, row;        /* where the next appended row goes */
    unsigned char *strip; /* rows of the strip being assembled */
    uint32_t strip_rows;
    isl_status failed;    /* first I/O failure; the writer is then unusable */
};

/* Sets the tags of the page about to be written. */
static isl_status writer_begin_page(isl_tiff_writer *w)
{
    TIFF *t = w->tif;
    if (!TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w->width) ||
        !TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)w->height) ||
        !TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)(w->rgb8 ? 3 : 1)) ||
        !TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)(w->rgb8 ? 8 : 32)) ||
        !TIFFSetField(t, TIFFTAG_SAMPLEFORMAT,
                      (uint16_t)(w->rgb8 ? SAMPLEFORMAT_UINT : SAMPLEFORMAT_IEEEFP)) ||
        !TIFFSetField(t, TIFFTAG_PHOTOMETRIC,
                      (uint16_t)(w->rgb8 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK)) ||
        !TIFFSetField(t, TIFFTAG_PLANARCONFIG, (uint16_t)PLANARCONFIG_CONTIG) ||
        !TIFFSetField(t, TIFFTAG_COMPRESSION, (uint16_t)COMPRESSION_NONE) ||
        !TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, w->rows_per_strip) ||
        !TIFFSetField(t, TIFFTAG_SOFTWARE, "isl " ISL_VERSION_STRING)) {
        return fail_tiff(ISL_ERROR_BACKEND, &w->log, "%s: cannot set the TIFF tags of page %d",
                         w->path, w->page + 1);
    }
    return ISL_OK;
}

/* Records the first failure so that later calls report it again instead of writing on. */
static isl_status writer_fail(isl_tiff_writer *w, isl_status status)
{
    if (w->failed == ISL_OK)
        w->failed = status;
    return status;
}

static isl_status writer_io_error(isl_tiff_writer *w, const char *what)
{
    return writer_fail(w, fail_tiff(ISL_ERROR_IO, &w->log,
                                    "%s: cannot write %s of page %d (disk full?)", w->path,
                                    what, w->page + 1));
}

/* Writes the assembled strip, and the page's directory after its last row. */
static isl_status writer_flush_strip(isl_tiff_writer *w)
{
    uint32_t strip = (uint32_t)(w->row - 1) / w->rows_per_strip;
    tmsize_t bytes = (tmsize_t)((size_t)w->strip_rows * w->row_bytes);
    tiff_log_reset(&w->log);
    if (TIFFWriteEncodedStrip(w->tif, strip, w->strip, bytes) != bytes)
        return writer_io_error(w, "a strip");
    w->strip_rows = 0;
    if (w->row < w->height)
        return ISL_OK;
    tiff_log_reset(&w->log);
    if (!TIFFWriteDirectory(w->tif))
        return writer_io_error(w, "the directory");
    w->row = 0;
    w->page++;
    if (w->page < w->pages)
        return writer_fail(w, writer_begin_page(w));
    return ISL_OK;
}

static isl_status writer_open(const char *path, int pages, int height, int width, int rgb8,
                              isl_tiff_writer **out)
{
    if (!out)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_writer_open: out is NULL");
    *out = NULL;
    if (!path || !path[0])
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_writer_open: empty path");
    if (pages < 1 || height < 1 || width < 1 ||
        (uint64_t)height * (uint64_t)width > MAX_PAGE_SAMPLES)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "%s: cannot write %d pages of %dx%d (need at least one page and at "
                        "most 2^31 pixels per page)",
                        path, pages, width, height);

    isl_tiff_writer *w = calloc(1, sizeof(*w));
    size_t len = strlen(path) + 1;
    if (w)
        w->path = malloc(len);
    if (!w || !w->path) {
        free(w);
        return tiff_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    memcpy(w->path, path, len);
    w->out.fd = -1;
    w->pages = pages;
    w->height = height;
    w->width = width;
    w->rgb8 = rgb8;
    size_t row_bytes = (size_t)width * (rgb8 ? 3 : sizeof(float));
    w->row_bytes = row_bytes;
    w->rows_per_strip = row_bytes >= STRIP_BYTES ? 1 : (uint32_t)(STRIP_BYTES / row_bytes);
    if (w->rows_per_strip > (uint32_t)height)
        w->rows_per_strip = (uint32_t)height;
    tiff_log_reset(&w->log);

    isl_status status = ISL_OK;
    w->strip = malloc(w->rows_per_strip * row_bytes);
    if (!w->strip)
        status = tiff_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory", path);
    if (status == ISL_OK)
        status = isl_atomic_open(&w->out, path) == 0
                     ? ISL_OK
                     : tiff_fail(ISL_ERROR_IO, "%s: cannot create a temporary file beside it: %s",
                                 path, strerror(errno));

    if (status == ISL_OK) {
        /* libtiff closes its descriptor in TIFFClose (which returns nothing); keeping our
         * own lets us fsync and check close(). */
        int tiff_fd = fcntl(w->out.fd, F_DUPFD_CLOEXEC, 0);
        uint64_t data_bytes = (uint64_t)pages * (uint64_t)height * row_bytes;
        const char *mode = data_bytes > BIGTIFF_THRESHOLD ? "w8" : "w";
        if (tiff_fd < 0)
            status = tiff_fail(ISL_ERROR_IO, "%s: %s", w->out.tmp, strerror(errno));
        else if (!(w->tif = tiff_fdopen(tiff_fd, w->out.tmp, mode, &w->log))) {
            close(tiff_fd);
            status = fail_tiff(ISL_ERROR_IO, &w->log, "%s: cannot start the TIFF file", path);
        }
    }
    if (status == ISL_OK)
        status = writer_begin_page(w);
    if (status != ISL_OK) {
        isl_tiff_writer_discard(w);
        return status;
    }
    *out = w;
    return ISL_OK;
}

isl_status isl_tiff_writer_open(const char *path, int pages, int height, int width,
                                isl_tiff_writer **out)
{
    return writer_open(path, pages, height, width, 0, out);
}

/* Appends rows of w->row_bytes bytes each. */
static isl_status writer_append(isl_tiff_writer *w, const unsigned char *data, int rows)
{
    if (!w)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_writer_append: writer is NULL");
    if (w->failed != ISL_OK)
        return tiff_fail(w->failed, "%s: an earlier write failed", w->path);
    int64_t left = (int64_t)(w->pages - w->page) * w->height - w->row;
    if (rows < 0 || rows > left || (rows > 0 && !data))
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "%s: cannot append %d rows (%lld of %d pages x %d rows remain)",
                        w->path, rows, (long long)left, w->pages, w->height);

    while (rows > 0) {
        uint32_t room = w->rows_per_strip - w->strip_rows;
        uint32_t page_left = (uint32_t)(w->height - w->row);
        uint32_t n = (uint32_t)rows;
        if (n > room)
            n = room;
        if (n > page_left)
            n = page_left;
        memcpy(w->strip + w->strip_rows * w->row_bytes, data, n * w->row_bytes);
        data += n * w->row_bytes;
        rows -= (int)n;
        w->strip_rows += n;
        w->row += (int)n;
        if (w->strip_rows == w->rows_per_strip || w->row == w->height)
            TIFF_CHECK(writer_flush_strip(w));
    }
    return ISL_OK;
}

isl_status isl_tiff_writer_append(isl_tiff_writer *w, const float *data, int rows)
{
    return writer_append(w, (const unsigned char *)data, rows);
}

/* Closes libtiff's handle and our descriptor, reporting any failure on the way. */
static isl_status writer_finish(isl_tiff_writer *w)
{
    tiff_log_reset(&w->log);
    TIFFClose(w->tif); /* flushes; errors arrive through the log */
    w->tif = NULL;
    if (w->log.errors)
        return fail_tiff(ISL_ERROR_IO, &w->log, "%s: cannot finish the TIFF file", w->path);
    const char *step;
    if (isl_atomic_commit(&w->out, w->path, &step) != 0) {
        if (strcmp(step, "rename") == 0)
            return tiff_fail(ISL_ERROR_IO, "%s: cannot rename %s into place: %s", w->path,
                             w->out.tmp, strerror(errno));
        return tiff_fail(ISL_ERROR_IO, "%s: cannot %s %s: %s", w->path, step, w->out.tmp,
                         strerror(errno));
    }
    /* Durability of the rename across a crash; not worth failing a completed write. */
    (void)isl_atomic_sync_dir(w->path);
    return ISL_OK;
}

isl_status isl_tiff_writer_close(isl_tiff_writer *w)
{
    if (!w)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_writer_close: writer is NULL");
    isl_status status;
    if (w->failed != ISL_OK)
        status = tiff_fail(w->failed, "%s: an earlier write failed; file not written", w->path);
    else if (w->page < w->pages)
        status = tiff_fail(ISL_ERROR_INVALID_ARGUMENT,
                          "%s: closed after %lld of %lld rows; file not written", w->path,
                          (long long)w->page * w->height + w->row,
                          (long long)w->pages * w->height);
    else
        status = writer_finish(w);
    isl_tiff_writer_discard(w); /* removes the temp file unless it was renamed */
    return status;
}

void isl_tiff_writer_discard(isl_tiff_writer *w)
{
    if (!w)
        return;
    if (w->tif)
        TIFFClose(w->tif);
    isl_atomic_discard(&w->out); /* removes the temp file unless it was renamed */
    free(w->path);
    free(w->strip);
    free(w);
}

isl_status isl_tiff_write_float(const char *path, const float *data, int pages, int height,
                                int width)
{
    if (!data)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_write_float: data is NULL");
    isl_tiff_writer *w;
    TIFF_CHECK(isl_tiff_writer_open(path, pages, height, width, &w));
    /* Page by page keeps each count within int. */
    for (int p = 0; p < pages; p++) {
        isl_status s = isl_tiff_writer_append(w, data + (size_t)p * height * width, height);
        if (s != ISL_OK) {
            isl_tiff_writer_discard(w);
            return s;
        }
    }
    return isl_tiff_writer_close(w);
}

isl_status isl_tiff_write_rgb8(const char *path, const uint8_t *rgb, int height, int width)
{
    if (!rgb)
        return tiff_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_tiff_write_rgb8: data is NULL");
    isl_tiff_writer *w;
    TIFF_CHECK(writer_open(path, 1, height, width, 1, &w));
    isl_status s = writer_append(w, rgb, height);
    if (s != ISL_OK) {
        isl_tiff_writer_discard(w);
        return s;
    }
    return isl_tiff_writer_close(w);
}
