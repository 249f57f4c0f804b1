/* Tests of tools/tiff_io.c (the CLI's TIFF I/O): reading stacks written by libtiff directly (an independent
 * writer), a real data file, error reporting, and atomic / streaming float32 and
 * 8-bit RGB writes.
 *
 * Environment: ISL_SHARED_DIR (default: ISL_SOURCE_ROOT/../shared) locates the data;
 * ISL_TEST_TMPDIR (default /tmp) holds a scratch directory made with mkdtemp and removed at the end. */
#define _XOPEN_SOURCE 700

#include "test_util.h"
#include "tiff_io.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tiffio.h>

static char scratch_root[PATH_MAX]; /* made once in main */
static char test_dir[PATH_MAX];     /* made per test by setup() */

static void setup(void)
{
    int n = snprintf(test_dir, sizeof(test_dir), "%s/tXXXXXX", scratch_root);
    ck_assert(n > 0 && (size_t)n < sizeof(test_dir));
    ck_assert_ptr_nonnull(mkdtemp(test_dir));
}

/* test_dir/name in a rotating static buffer (several paths live at once in a test). */
static const char *tpath(const char *name)
{
    static char bufs[4][PATH_MAX];
    static int next;
    char *b = bufs[next++ % 4];
    int n = snprintf(b, PATH_MAX, "%s/%s", test_dir, name);
    ck_assert(n > 0 && n < PATH_MAX);
    return b;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ISL_TEST_VERBOSE=1 prints each checked message, to review their wording. */
#define ck_assert_error_mentions(needle)                                                  \
    do {                                                                                  \
        if (getenv("ISL_TEST_VERBOSE"))                                                   \
            fprintf(stderr, "  message: %s\n", isl_tiff_last_error());                         \
        ck_assert_msg(strstr(isl_tiff_last_error(), (needle)) != NULL,                         \
                      "isl_tiff_last_error() = \"%s\" does not mention \"%s\"",                \
                      isl_tiff_last_error(), (needle));                                        \
    } while (0)

/* ---------------------------------------------------------------------------------- */
/* Fixtures written with libtiff directly                                              */
/* ---------------------------------------------------------------------------------- */

typedef struct fixture {
    const char *mode; /* "w", "wb" (big-endian), "w8" (BigTIFF) */
    int pages;
    uint32_t width, height;
    uint32_t other_width, other_height; /* size of pages after the first, if nonzero */
    uint16_t bits, other_bits;          /* bits of pages after the first, if nonzero */
    uint16_t format, spp, photometric, compression, predictor;
    uint32_t rows_per_strip; /* 0: whole page in one strip */
    uint32_t tile;           /* square tile side (multiple of 16); 0: strips */
} fixture;

static fixture fixture_make(int pages, uint32_t width, uint32_t height, uint16_t bits,
                            uint16_t format)
{
    fixture f = {.mode = "w", .pages = pages, .width = width, .height = height, .bits = bits,
                 .format = format, .spp = 1, .photometric = PHOTOMETRIC_MINISBLACK,
                 .compression = COMPRESSION_NONE, .predictor = PREDICTOR_NONE};
    return f;
}

/* The value of sample s at (z, y, x): distinct enough to catch misplaced rows, tiles,
 * pages and byte order (uint16 values use both bytes). */
static double sample_value(uint16_t bits, uint16_t format, int z, uint32_t y, uint32_t x, int s)
{
    if (format == SAMPLEFORMAT_IEEEFP)
        return z * 1.5 + y * 0.25 - x * 0.125 + s; /* exact in float */
    if (bits == 8)
        return (z * 31 + y * 7 + x * 3 + s) % 256;
    if (bits == 16 && format == SAMPLEFORMAT_INT)
        return (double)((z * 4099 + y * 263 + x * 37 + s) % 65536) - 32768;
    if (bits == 16)
        return (z * 4099 + y * 263 + x * 37 + s) % 65536;
    return (double)(z * 100003u + y * 1009u + x + (unsigned)s);
}

static void store_sample(uint8_t *dst, uint16_t bits, uint16_t format, double v)
{
    if (format == SAMPLEFORMAT_IEEEFP && bits == 32) {
        float f = (float)v;
        memcpy(dst, &f, 4);
    } else if (format == SAMPLEFORMAT_IEEEFP && bits == 64) {
        memcpy(dst, &v, 8);
    } else if (bits == 8) {
        *dst = (uint8_t)v;
    } else if (bits == 16 && format == SAMPLEFORMAT_INT) {
        int16_t i = (int16_t)v;
        memcpy(dst, &i, 2);
    } else if (bits == 16) {
        uint16_t u = (uint16_t)v;
        memcpy(dst, &u, 2);
    } else if (bits == 32) {
        uint32_t u = (uint32_t)v;
        memcpy(dst, &u, 4);
    }
}

/* Fills rows [y0, y0 + rows) x columns [x0, x0 + cols) of page z into buf, whose rows are
 * `stride` pixels apart; pixels outside the page stay zero (tile padding). */
static void fill_block(uint8_t *buf, const fixture *f, uint16_t bits, int z, uint32_t y0,
                       uint32_t rows, uint32_t x0, uint32_t cols, uint32_t stride,
                       uint32_t page_w, uint32_t page_h)
{
    size_t sample = bits / 8;
    if (bits == 1) { /* bilevel: any bit pattern */
        memset(buf, 0x5a, (size_t)rows * ((stride + 7) / 8));
        return;
    }
    for (uint32_t r = 0; r < rows && y0 + r < page_h; r++)
        for (uint32_t c = 0; c < cols && x0 + c < page_w; c++)
            for (int s = 0; s < f->spp; s++)
                store_sample(buf + (((size_t)r * stride + c) * f->spp + s) * sample, bits,
                             f->format, sample_value(bits, f->format, z, y0 + r, x0 + c, s));
}

static void write_fixture(const char *path, const fixture *f)
{
    TIFF *t = TIFFOpen(path, f->mode);
    ck_assert_ptr_nonnull(t);
    for (int z = 0; z < f->pages; z++) {
        uint32_t w = z && f->other_width ? f->other_width : f->width;
        uint32_t h = z && f->other_height ? f->other_height : f->height;
        uint16_t bits = z && f->other_bits ? f->other_bits : f->bits;
        ck_assert(TIFFSetField(t, TIFFTAG_IMAGEWIDTH, w));
        ck_assert(TIFFSetField(t, TIFFTAG_IMAGELENGTH, h));
        ck_assert(TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, bits));
        ck_assert(TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, f->spp));
        ck_assert(TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, f->format));
        ck_assert(TIFFSetField(t, TIFFTAG_PHOTOMETRIC, f->photometric));
        ck_assert(TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG));
        ck_assert(TIFFSetField(t, TIFFTAG_COMPRESSION, f->compression));
        if (f->predictor != PREDICTOR_NONE)
            ck_assert(TIFFSetField(t, TIFFTAG_PREDICTOR, f->predictor));
        if (f->photometric == PHOTOMETRIC_PALETTE) {
            static uint16_t map[256];
            ck_assert(TIFFSetField(t, TIFFTAG_COLORMAP, map, map, map));
        }
        size_t row_bytes = ((size_t)w * f->spp * bits + 7) / 8;
        if (f->tile) {
            uint32_t ts = f->tile;
            ck_assert(TIFFSetField(t, TIFFTAG_TILEWIDTH, ts));
            ck_assert(TIFFSetField(t, TIFFTAG_TILELENGTH, ts));
            tmsize_t size = TIFFTileSize(t);
            uint8_t *buf = malloc((size_t)size);
            ck_assert_ptr_nonnull(buf);
            for (uint32_t y = 0; y < h; y += ts)
                for (uint32_t x = 0; x < w; x += ts) {
                    memset(buf, 0, (size_t)size);
                    fill_block(buf, f, bits, z, y, ts, x, ts, ts, w, h);
                    ck_assert_int_eq(
                        TIFFWriteEncodedTile(t, TIFFComputeTile(t, x, y, 0, 0), buf, size), size);
                }
            free(buf);
        } else {
            uint32_t rps = f->rows_per_strip ? f->rows_per_strip : h;
            ck_assert(TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, rps));
            uint8_t *buf = malloc(rps * row_bytes);
            ck_assert_ptr_nonnull(buf);
            for (uint32_t y = 0, s = 0; y < h; y += rps, s++) {
                uint32_t rows = h - y < rps ? h - y : rps;
                fill_block(buf, f, bits, z, y, rows, 0, w, w, w, h);
                tmsize_t size = (tmsize_t)(rows * row_bytes);
                ck_assert_int_eq(TIFFWriteEncodedStrip(t, s, buf, size), size);
            }
            free(buf);
        }
        ck_assert(TIFFWriteDirectory(t));
    }
    TIFFClose(t);
}

/* Checks every pixel of a stack read from a single-sample fixture. */
static void check_stack(const isl_tiff_stack *s, const fixture *f)
{
    ck_assert_int_eq(s->num_z, f->pages);
    ck_assert_int_eq(s->height, (int)f->height);
    ck_assert_int_eq(s->width, (int)f->width);
    ck_assert_ptr_nonnull(s->data);
    isl_dtype want = f->format == SAMPLEFORMAT_IEEEFP ? ISL_DTYPE_F32
                     : f->bits == 8                   ? ISL_DTYPE_U8
                                                      : ISL_DTYPE_U16;
    ck_assert_int_eq(s->dtype, want);
    size_t i = 0;
    for (int z = 0; z < s->num_z; z++)
        for (uint32_t y = 0; y < f->height; y++)
            for (uint32_t x = 0; x < f->width; x++, i++) {
                double v = s->dtype == ISL_DTYPE_U8    ? ((const uint8_t *)s->data)[i]
                           : s->dtype == ISL_DTYPE_U16 ? ((const uint16_t *)s->data)[i]
                                                       : ((const float *)s->data)[i];
                double e = sample_value(f->bits, f->format, z, y, x, 0);
                if (v != e)
                    ck_abort_msg("pixel (z=%d, y=%u, x=%u) is %g, expected %g", z, y, x, v, e);
            }
}

static void read_and_check(const char *name, const fixture *f)
{
    const char *path = tpath(name);
    write_fixture(path, f);
    isl_tiff_stack s;
    isl_status st = isl_tiff_read_stack(path, f->pages, &s);
    ck_assert_msg(st == ISL_OK, "%s: status %d: %s", name, st, isl_tiff_last_error());
    check_stack(&s, f);
    isl_tiff_stack_free(&s);
    ck_assert_ptr_null(s.data);
}

/* Expects reading `path` to fail with `status` and a message naming the file. */
static void expect_read_failure(const char *path, int expect_pages, isl_status status)
{
    isl_tiff_stack s;
    isl_status st = isl_tiff_read_stack(path, expect_pages, &s);
    ck_assert_msg(st == status, "%s: status %d (expected %d): %s", path, st, status,
                  isl_tiff_last_error());
    ck_assert_ptr_null(s.data);
    ck_assert_int_eq(s.num_z, 0);
    const char *base = strrchr(path, '/');
    ck_assert_error_mentions(base ? base + 1 : path);
}

/* ---------------------------------------------------------------------------------- */
/* Writing and round trips                                                             */
/* ---------------------------------------------------------------------------------- */

static float *float_image(int pages, int height, int width)
{
    float *d = malloc(sizeof(float) * (size_t)pages * height * width);
    ck_assert_ptr_nonnull(d);
    for (size_t i = 0; i < (size_t)pages * height * width; i++)
        d[i] = (float)((double)(i % 9973) * 0.37 - 1000.0 + 1e-3 * (double)(i / 9973));
    return d;
}

static void check_float_file(const char *path, const float *want, int pages, int height,
                             int width)
{
    isl_tiff_stack s;
    isl_status st = isl_tiff_read_stack(path, pages, &s);
    ck_assert_msg(st == ISL_OK, "%s", isl_tiff_last_error());
    ck_assert_int_eq(s.dtype, ISL_DTYPE_F32);
    ck_assert_int_eq(s.num_z, pages);
    ck_assert_int_eq(s.height, height);
    ck_assert_int_eq(s.width, width);
    ck_assert(memcmp(s.data, want, sizeof(float) * (size_t)pages * height * width) == 0);
    isl_tiff_stack_free(&s);
}

START_TEST(test_roundtrip_float_one_page)
{
    const char *path = tpath("one.tif");
    float *d = float_image(1, 53, 37);
    /* Special values survive bit for bit. */
    d[0] = -0.0f;
    d[1] = INFINITY;
    d[2] = -INFINITY;
    d[3] = NAN;
    d[4] = 1e-42f; /* subnormal */
    ck_assert_int_eq(isl_tiff_write_float(path, d, 1, 53, 37), ISL_OK);
    check_float_file(path, d, 1, 53, 37);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);

    /* The file gets the usual permissions (umask applies), not mkstemp's 0600. */
    mode_t mask = umask(022);
    umask(mask);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0666 & ~mask);

    /* libtiff sees the layout we promised. */
    TIFF *t = TIFFOpen(path, "r");
    ck_assert_ptr_nonnull(t);
    uint16_t bits = 0, format = 0, compression = 0, photometric = 0;
    ck_assert(TIFFGetField(t, TIFFTAG_BITSPERSAMPLE, &bits));
    ck_assert(TIFFGetField(t, TIFFTAG_SAMPLEFORMAT, &format));
    ck_assert(TIFFGetField(t, TIFFTAG_COMPRESSION, &compression));
    ck_assert(TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &photometric));
    ck_assert_int_eq(bits, 32);
    ck_assert_int_eq(format, SAMPLEFORMAT_IEEEFP);
    ck_assert_int_eq(compression, COMPRESSION_NONE);
    ck_assert_int_eq(photometric, PHOTOMETRIC_MINISBLACK);
    ck_assert(!TIFFIsBigTIFF(t));
    TIFFClose(t);
    free(d);
}
END_TEST

START_TEST(test_roundtrip_float_multi_page)
{
    /* 200 columns: 81 rows per strip, so pages of 300 rows span several strips. */
    const char *path = tpath("multi.tif");
    float *d = float_image(4, 300, 200);
    ck_assert_int_eq(isl_tiff_write_float(path, d, 4, 300, 200), ISL_OK);
    check_float_file(path, d, 4, 300, 200);
    free(d);

    /* Rows wider than a strip target (64 KB): one row per strip. */
    path = tpath("wide.tif");
    d = float_image(2, 3, 17000);
    ck_assert_int_eq(isl_tiff_write_float(path, d, 2, 3, 17000), ISL_OK);
    check_float_file(path, d, 2, 3, 17000);
    free(d);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
}
END_TEST

START_TEST(test_write_replaces_existing_file)
{
    const char *path = tpath("replace.tif");
    float *a = float_image(2, 10, 10), *b = float_image(1, 20, 30);
    ck_assert_int_eq(isl_tiff_write_float(path, a, 2, 10, 10), ISL_OK);
    ck_assert_int_eq(isl_tiff_write_float(path, b, 1, 20, 30), ISL_OK);
    check_float_file(path, b, 1, 20, 30);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_write_into_missing_directory)
{
    const char *path = tpath("no/such/dir/out.tif");
    float d[4] = {1, 2, 3, 4};
    ck_assert_int_eq(isl_tiff_write_float(path, d, 1, 2, 2), ISL_ERROR_IO);
    ck_assert_error_mentions("out.tif");
    ck_assert(!file_exists(path));
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);

    isl_tiff_writer *w = (isl_tiff_writer *)&w; /* must be reset to NULL */
    ck_assert_int_eq(isl_tiff_writer_open(path, 1, 2, 2, &w), ISL_ERROR_IO);
    ck_assert_ptr_null(w);
    ck_assert_error_mentions("out.tif");
}
END_TEST

/* A file size limit makes write() fail with EFBIG, as a full disk fails with ENOSPC. */
/* An 8-bit RGB picture (isl predict --preview): libtiff reads back the tags and every byte
 * of a pattern whose strips (65,536 bytes) end mid-image; the write is atomic. */
START_TEST(test_write_rgb8)
{
    enum { H = 70, W = 401 }; /* 54 rows per strip: two strips */
    const char *path = tpath("rgb.tif");
    uint8_t *rgb = malloc((size_t)H * W * 3);
    ck_assert_ptr_nonnull(rgb);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                rgb[((size_t)y * W + x) * 3 + c] = (uint8_t)(y * 7 + x * 3 + c * 101);
    ck_assert_int_eq(isl_tiff_write_rgb8(path, rgb, H, W), ISL_OK);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);

    TIFF *t = TIFFOpen(path, "r");
    ck_assert_ptr_nonnull(t);
    uint32_t width = 0, height = 0;
    uint16_t samples = 0, bits = 0, photometric = 0, planar = 0;
    ck_assert(TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &width));
    ck_assert(TIFFGetField(t, TIFFTAG_IMAGELENGTH, &height));
    ck_assert(TIFFGetField(t, TIFFTAG_SAMPLESPERPIXEL, &samples));
    ck_assert(TIFFGetField(t, TIFFTAG_BITSPERSAMPLE, &bits));
    ck_assert(TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &photometric));
    ck_assert(TIFFGetField(t, TIFFTAG_PLANARCONFIG, &planar));
    ck_assert_uint_eq(width, W);
    ck_assert_uint_eq(height, H);
    ck_assert_uint_eq(samples, 3);
    ck_assert_uint_eq(bits, 8);
    ck_assert_uint_eq(photometric, PHOTOMETRIC_RGB);
    ck_assert_uint_eq(planar, PLANARCONFIG_CONTIG);
    ck_assert_int_eq(TIFFScanlineSize(t), W * 3);
    uint8_t *row = malloc((size_t)W * 3);
    ck_assert_ptr_nonnull(row);
    for (int y = 0; y < H; y++) {
        ck_assert_int_eq(TIFFReadScanline(t, row, (uint32_t)y, 0), 1);
        ck_assert_msg(memcmp(row, rgb + (size_t)y * W * 3, (size_t)W * 3) == 0, "row %d", y);
    }
    ck_assert(!TIFFReadDirectory(t)); /* one page */
    TIFFClose(t);
    free(row);

    ck_assert_int_eq(isl_tiff_write_rgb8(tpath("no/dir/rgb.tif"), rgb, H, W), ISL_ERROR_IO);
    ck_assert_error_mentions("rgb.tif");
    ck_assert_int_eq(isl_tiff_write_rgb8(path, NULL, H, W), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_tiff_write_rgb8(path, rgb, 0, W), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    free(rgb);
}
END_TEST

START_TEST(test_write_fails_when_disk_full)
{
    const char *path = tpath("full.tif");
    float *old = float_image(1, 8, 8);
    ck_assert_int_eq(isl_tiff_write_float(path, old, 1, 8, 8), ISL_OK);

    struct rlimit saved, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = 100000;
    void (*saved_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

    float *big = float_image(3, 256, 256); /* 768 KB */
    isl_status st = isl_tiff_write_float(path, big, 3, 256, 256);

    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, saved_handler);
    ck_assert_msg(st == ISL_ERROR_IO, "status %d: %s", st, isl_tiff_last_error());
    ck_assert_error_mentions("full.tif");
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    check_float_file(path, old, 1, 8, 8); /* the old file is untouched */

    /* The streaming writer reports the failure from append, then close refuses. */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    signal(SIGXFSZ, SIG_IGN);
    isl_tiff_writer *w;
    ck_assert_int_eq(isl_tiff_writer_open(path, 3, 256, 256, &w), ISL_OK);
    isl_status first = ISL_OK;
    for (int p = 0; p < 3 && first == ISL_OK; p++)
        first = isl_tiff_writer_append(w, big + (size_t)p * 256 * 256, 256);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, saved_handler);
    ck_assert_int_eq(first, ISL_ERROR_IO);
    ck_assert_error_mentions("full.tif");
    ck_assert_int_eq(isl_tiff_writer_append(w, big, 1), ISL_ERROR_IO);
    ck_assert_int_eq(isl_tiff_writer_close(w), ISL_ERROR_IO);
    ck_assert_error_mentions("full.tif");
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    check_float_file(path, old, 1, 8, 8);
    free(big);
    free(old);
}
END_TEST

START_TEST(test_streaming_writer_round_trip)
{
    /* 1000 columns: 16 rows per strip; chunks straddle strips and pages. */
    enum { PAGES = 3, H = 50, W = 1000 };
    const char *path = tpath("stream.tif");
    float *d = float_image(PAGES, H, W);
    isl_tiff_writer *w;
    ck_assert_int_eq(isl_tiff_writer_open(path, PAGES, H, W, &w), ISL_OK);
    const int chunks[] = {1, 7, 0, 30, 5, 60, 16, 31};
    int done = 0;
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        ck_assert_msg(isl_tiff_writer_append(w, d + (size_t)done * W, chunks[i]) == ISL_OK,
                      "%s", isl_tiff_last_error());
        done += chunks[i];
        ck_assert(!file_exists(path)); /* appears only on close */
    }
    ck_assert_int_eq(done, PAGES * H);
    /* No rows left: appending more is an argument error that leaves the writer intact. */
    ck_assert_int_eq(isl_tiff_writer_append(w, d, 1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_error_mentions("stream.tif");
    ck_assert_int_eq(isl_tiff_writer_close(w), ISL_OK);
    check_float_file(path, d, PAGES, H, W);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    free(d);
}
END_TEST

START_TEST(test_streaming_writer_discard)
{
    const char *path = tpath("discard.tif");
    float *d = float_image(2, 40, 500);
    isl_tiff_writer *w;
    ck_assert_int_eq(isl_tiff_writer_open(path, 2, 40, 500, &w), ISL_OK);
    ck_assert_int_eq(test_count_temp_files(test_dir), 1);
    ck_assert_int_eq(isl_tiff_writer_append(w, d, 45), ISL_OK);
    isl_tiff_writer_discard(w);
    isl_tiff_writer_discard(NULL);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    ck_assert(!file_exists(path));

    /* Closing before all rows arrived is an error and also removes the temp file. */
    ck_assert_int_eq(isl_tiff_writer_open(path, 2, 40, 500, &w), ISL_OK);
    ck_assert_int_eq(isl_tiff_writer_append(w, d, 39), ISL_OK);
    ck_assert_int_eq(isl_tiff_writer_close(w), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_error_mentions("discard.tif");
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    ck_assert(!file_exists(path));
    free(d);
}
END_TEST

START_TEST(test_writer_invalid_arguments)
{
    const char *path = tpath("bad.tif");
    isl_tiff_writer *w;
    ck_assert_int_eq(isl_tiff_writer_open(path, 0, 10, 10, &w), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_error_mentions("bad.tif");
    ck_assert_int_eq(isl_tiff_writer_open(path, 1, 65536, 65536, &w),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_error_mentions("bad.tif");
    ck_assert_int_eq(isl_tiff_write_float(path, NULL, 1, 1, 1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_tiff_writer_open(path, 1, 4, 4, &w), ISL_OK);
    ck_assert_int_eq(isl_tiff_writer_append(w, NULL, 1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_tiff_writer_append(w, NULL, -1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_error_mentions("bad.tif");
    isl_tiff_writer_discard(w);
    ck_assert_int_eq(test_count_temp_files(test_dir), 0);
    ck_assert_int_eq(isl_tiff_writer_close(NULL), ISL_ERROR_INVALID_ARGUMENT);
    isl_tiff_stack_free(NULL);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Reading fixtures of an independent writer                                           */
/* ---------------------------------------------------------------------------------- */

START_TEST(test_read_uint8_stack)
{
    fixture f = fixture_make(3, 41, 33, 8, SAMPLEFORMAT_UINT);
    f.rows_per_strip = 7;
    read_and_check("u8_raw.tif", &f);
    f.compression = COMPRESSION_LZW;
    f.predictor = PREDICTOR_HORIZONTAL;
    read_and_check("u8_lzw.tif", &f);
    f.compression = COMPRESSION_PACKBITS;
    f.predictor = PREDICTOR_NONE;
    read_and_check("u8_packbits.tif", &f);
}
END_TEST

START_TEST(test_read_uint16_stack)
{
    fixture f = fixture_make(5, 64, 50, 16, SAMPLEFORMAT_UINT);
    f.rows_per_strip = 16;
    read_and_check("u16_raw.tif", &f);
    f.compression = COMPRESSION_ADOBE_DEFLATE;
    f.predictor = PREDICTOR_HORIZONTAL;
    read_and_check("u16_zlib.tif", &f);
    f.mode = "wb"; /* big-endian: libtiff must swap */
    read_and_check("u16_big_endian.tif", &f);
    f.mode = "w8";
    f.tile = 32;
    read_and_check("u16_bigtiff_tiled.tif", &f);
}
END_TEST

START_TEST(test_read_uint16_without_sample_format_tag)
{
    /* SampleFormat is optional; absent means unsigned integers. */
    const char *path = tpath("u16_no_format.tif");
    TIFF *t = TIFFOpen(path, "w");
    ck_assert_ptr_nonnull(t);
    uint16_t row[3] = {1, 60000, 3};
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 3);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 1);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 16);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    ck_assert_int_eq(TIFFWriteScanline(t, row, 0, 0), 1);
    TIFFClose(t);
    isl_tiff_stack s;
    ck_assert_int_eq(isl_tiff_read_stack(path, 0, &s), ISL_OK);
    ck_assert_int_eq(s.dtype, ISL_DTYPE_U16);
    ck_assert(memcmp(s.data, row, sizeof(row)) == 0);
    isl_tiff_stack_free(&s);
}
END_TEST

START_TEST(test_read_float32_stack)
{
    fixture f = fixture_make(2, 70, 45, 32, SAMPLEFORMAT_IEEEFP);
    f.rows_per_strip = 4;
    read_and_check("f32_raw.tif", &f);
    f.tile = 16; /* partial tiles at the right and bottom edges */
    f.compression = COMPRESSION_ADOBE_DEFLATE;
    f.predictor = PREDICTOR_FLOATINGPOINT;
    read_and_check("f32_tiled_zlib.tif", &f);
    /* Big-endian without the float predictor: libtiff 4.5.0 writes big-endian files with
     * predictor 3 with byte-swapped values (checked against a by-hand decoding per
     * TIFF Tech Note 3), so such a fixture would test libtiff's writer, not our reader. */
    f.mode = "wb";
    f.predictor = PREDICTOR_NONE;
    read_and_check("f32_tiled_big_endian.tif", &f);
    f.tile = 0;
    f.rows_per_strip = 0;
    read_and_check("f32_one_strip_big_endian.tif", &f);
}
END_TEST

/* Known pixels of the real stack, obtained once with
 *   /usr/bin/python3 -c "import tifffile; a = tifffile.imread('phase_contrast_z13.tif'); \
 *       print(a.shape, a.dtype, a[0,0,0], a[0,0,1], a[0,511,512], a[6,100,200], \
 *             a[12,1023,1023], a[12,0,1023], a[3,1023,0], a[9,777,333], \
 *             [int(a[z].astype('u8').sum()) for z in (0, 6, 12)])"
 * (tifffile 2023.2.3, in <shared>/data/condition_b_well_a4). */
START_TEST(test_read_real_phase_contrast_stack)
{
    char path[PATH_MAX];
    test_shared_path(path, sizeof(path), "data/condition_b_well_a4/phase_contrast_z13.tif");
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "test_read_real_phase_contrast_stack: SKIPPED: %s not found\n", path);
        return;
    }
    isl_tiff_stack s;
    ck_assert_msg(isl_tiff_read_stack(path, 13, &s) == ISL_OK, "%s", isl_tiff_last_error());
    ck_assert_int_eq(s.dtype, ISL_DTYPE_U16);
    ck_assert_int_eq(s.num_z, 13);
    ck_assert_int_eq(s.height, 1024);
    ck_assert_int_eq(s.width, 1024);
    const uint16_t *a = s.data;
#define AT(z, y, x) a[((size_t)(z) * 1024 + (y)) * 1024 + (x)]
    ck_assert_uint_eq(AT(0, 0, 0), 31782);
    ck_assert_uint_eq(AT(0, 0, 1), 24633);
    ck_assert_uint_eq(AT(0, 511, 512), 35378);
    ck_assert_uint_eq(AT(6, 100, 200), 39418);
    ck_assert_uint_eq(AT(12, 1023, 1023), 36824);
    ck_assert_uint_eq(AT(12, 0, 1023), 32561);
    ck_assert_uint_eq(AT(3, 1023, 0), 29788);
    ck_assert_uint_eq(AT(9, 777, 333), 33129);
#undef AT
    const int planes[3] = {0, 6, 12};
    const uint64_t sums[3] = {34333313457u, 34405329224u, 34435319511u};
    for (int i = 0; i < 3; i++) {
        uint64_t sum = 0;
        for (size_t k = 0; k < 1024 * 1024; k++)
            sum += a[(size_t)planes[i] * 1024 * 1024 + k];
        ck_assert_msg(sum == sums[i], "plane %d sums to %llu, expected %llu", planes[i],
                      (unsigned long long)sum, (unsigned long long)sums[i]);
    }
    isl_tiff_stack_free(&s);

    expect_read_failure(path, 12, ISL_ERROR_SHAPE);
    ck_assert_error_mentions("13 pages");
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Errors                                                                              */
/* ---------------------------------------------------------------------------------- */

START_TEST(test_wrong_page_count)
{
    fixture f = fixture_make(3, 16, 16, 16, SAMPLEFORMAT_UINT);
    const char *path = tpath("three_pages.tif");
    write_fixture(path, &f);
    expect_read_failure(path, 13, ISL_ERROR_SHAPE);
    ck_assert_error_mentions("3 pages, expected 13");
    expect_read_failure(path, 1, ISL_ERROR_SHAPE);
    expect_read_failure(path, -1, ISL_ERROR_INVALID_ARGUMENT);
    isl_tiff_stack s;
    ck_assert_int_eq(isl_tiff_read_stack(path, 0, &s), ISL_OK); /* 0: any count */
    ck_assert_int_eq(s.num_z, 3);
    isl_tiff_stack_free(&s);
}
END_TEST

START_TEST(test_mismatched_pages)
{
    fixture f = fixture_make(3, 64, 64, 16, SAMPLEFORMAT_UINT);
    f.other_width = 32;
    const char *path = tpath("mixed_sizes.tif");
    write_fixture(path, &f);
    expect_read_failure(path, 0, ISL_ERROR_SHAPE);
    ck_assert_error_mentions("page 2 is 32x64 but page 1 is 64x64");

    f = fixture_make(2, 8, 8, 8, SAMPLEFORMAT_UINT);
    f.other_bits = 16;
    path = tpath("mixed_formats.tif");
    write_fixture(path, &f);
    expect_read_failure(path, 2, ISL_ERROR_SHAPE);
    ck_assert_error_mentions("page 2 holds uint16 samples but page 1 holds uint8");
}
END_TEST

START_TEST(test_unsupported_formats)
{
    fixture f = fixture_make(1, 8, 8, 16, SAMPLEFORMAT_INT);
    write_fixture(tpath("int16.tif"), &f);
    expect_read_failure(tpath("int16.tif"), 0, ISL_ERROR_UNSUPPORTED);
    ck_assert_error_mentions("signed");

    f = fixture_make(1, 8, 8, 8, SAMPLEFORMAT_UINT);
    f.spp = 2;
    write_fixture(tpath("two_samples.tif"), &f);
    expect_read_failure(tpath("two_samples.tif"), 0, ISL_ERROR_UNSUPPORTED);
    ck_assert_error_mentions("2 samples per pixel");

    f = fixture_make(1, 8, 8, 64, SAMPLEFORMAT_IEEEFP);
    write_fixture(tpath("float64.tif"), &f);
    expect_read_failure(tpath("float64.tif"), 0, ISL_ERROR_UNSUPPORTED);
    ck_assert_error_mentions("64-bit");

    f = fixture_make(1, 8, 8, 32, SAMPLEFORMAT_UINT);
    write_fixture(tpath("uint32.tif"), &f);
    expect_read_failure(tpath("uint32.tif"), 0, ISL_ERROR_UNSUPPORTED);

    f = fixture_make(1, 8, 8, 1, SAMPLEFORMAT_UINT);
    write_fixture(tpath("bilevel.tif"), &f);
    expect_read_failure(tpath("bilevel.tif"), 0, ISL_ERROR_UNSUPPORTED);

    f = fixture_make(1, 8, 8, 8, SAMPLEFORMAT_UINT);
    f.photometric = PHOTOMETRIC_PALETTE;
    write_fixture(tpath("palette.tif"), &f);
    expect_read_failure(tpath("palette.tif"), 0, ISL_ERROR_UNSUPPORTED);
    ck_assert_error_mentions("palette");

    /* Pages after the first are checked too. */
    f = fixture_make(3, 8, 8, 16, SAMPLEFORMAT_UINT);
    f.other_bits = 32;
    write_fixture(tpath("later_uint32.tif"), &f);
    expect_read_failure(tpath("later_uint32.tif"), 0, ISL_ERROR_UNSUPPORTED);
    ck_assert_error_mentions("page 2");
}
END_TEST

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

/* A little-endian TIFF with one uncompressed strip, built by hand so that its directory
 * precedes the pixel data (which libtiff never does) and its header can claim anything.
 * Only data_bytes of the strip are written. */
static void write_handmade_tiff(const char *path, uint32_t width, uint32_t height,
                                uint16_t bits, size_t data_bytes)
{
    enum { ENTRIES = 8, DATA = 8 + 2 + ENTRIES * 12 + 4 };
    const struct { uint16_t tag, type; uint32_t value; } e[ENTRIES] = {
        {TIFFTAG_IMAGEWIDTH, TIFF_LONG, width},
        {TIFFTAG_IMAGELENGTH, TIFF_LONG, height},
        {TIFFTAG_BITSPERSAMPLE, TIFF_SHORT, bits},
        {TIFFTAG_COMPRESSION, TIFF_SHORT, COMPRESSION_NONE},
        {TIFFTAG_PHOTOMETRIC, TIFF_SHORT, PHOTOMETRIC_MINISBLACK},
        {TIFFTAG_STRIPOFFSETS, TIFF_LONG, DATA},
        {TIFFTAG_ROWSPERSTRIP, TIFF_LONG, height},
        {TIFFTAG_STRIPBYTECOUNTS, TIFF_LONG, (uint32_t)((uint64_t)width * height * bits / 8)},
    };
    uint8_t head[DATA] = {'I', 'I', 42, 0};
    put32(head + 4, 8);
    put16(head + 8, ENTRIES);
    for (int i = 0; i < ENTRIES; i++) {
        uint8_t *p = head + 10 + 12 * i;
        put16(p, e[i].tag);
        put16(p + 2, e[i].type);
        put32(p + 4, 1);
        if (e[i].type == TIFF_SHORT)
            put16(p + 8, (uint16_t)e[i].value);
        else
            put32(p + 8, e[i].value);
    }
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(head, 1, sizeof(head), fp), sizeof(head));
    for (size_t i = 0; i < data_bytes; i++)
        ck_assert_int_ne(fputc((int)(i % 251), fp), EOF);
    ck_assert_int_eq(fclose(fp), 0);
}

static void truncate_to_half(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(truncate(path, st.st_size / 2), 0);
}

START_TEST(test_truncated_file)
{
    /* One page: the directory at the end of the file is lost. */
    fixture f = fixture_make(1, 64, 64, 16, SAMPLEFORMAT_UINT);
    const char *path = tpath("truncated_one.tif");
    write_fixture(path, &f);
    truncate_to_half(path);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);
    ck_assert_error_mentions("page 1");

    /* Several pages: the chain of directories breaks in the middle. */
    f = fixture_make(4, 64, 64, 16, SAMPLEFORMAT_UINT);
    path = tpath("truncated_four.tif");
    write_fixture(path, &f);
    truncate_to_half(path);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);
    ck_assert_error_mentions("page 2");

    /* Directory intact (it precedes the data) but the strip cut short. */
    path = tpath("truncated_strip.tif");
    write_handmade_tiff(path, 64, 64, 16, 64 * 64 * 2 / 2);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);
    ck_assert_error_mentions("page 1");

    /* Compressed data cut short. */
    f = fixture_make(2, 128, 128, 16, SAMPLEFORMAT_UINT);
    f.compression = COMPRESSION_ADOBE_DEFLATE;
    f.rows_per_strip = 32;
    path = tpath("truncated_zlib.tif");
    write_fixture(path, &f);
    truncate_to_half(path);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);

    /* Compressed data overwritten with garbage: the decoder fails on page 2. */
    path = tpath("corrupt_zlib.tif");
    write_fixture(path, &f);
    TIFF *t = TIFFOpen(path, "r");
    ck_assert_ptr_nonnull(t);
    ck_assert(TIFFSetDirectory(t, 1));
    uint64_t *offsets = NULL;
    ck_assert(TIFFGetField(t, TIFFTAG_STRIPOFFSETS, &offsets));
    long where = (long)offsets[1];
    TIFFClose(t);
    FILE *fp = fopen(path, "r+b");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(fseek(fp, where, SEEK_SET), 0);
    for (int i = 0; i < 64; i++)
        ck_assert_int_ne(fputc(0xff, fp), EOF);
    ck_assert_int_eq(fclose(fp), 0);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);
    ck_assert_error_mentions("page 2");
}
END_TEST

START_TEST(test_absurd_dimensions)
{
    /* The handmade writer itself is right: a complete small file reads. */
    const char *path = tpath("handmade.tif");
    write_handmade_tiff(path, 5, 3, 8, 15);
    isl_tiff_stack s;
    ck_assert_msg(isl_tiff_read_stack(path, 1, &s) == ISL_OK, "%s", isl_tiff_last_error());
    ck_assert_int_eq(((const uint8_t *)s.data)[14], 14);
    isl_tiff_stack_free(&s);

    /* 100000 x 100000 x 16 bits claimed by a tiny file: rejected before allocating. */
    path = tpath("huge.tif");
    write_handmade_tiff(path, 100000, 100000, 16, 100);
    isl_status st = isl_tiff_read_stack(path, 0, &s);
    ck_assert_msg(st == ISL_ERROR_UNSUPPORTED || st == ISL_ERROR_FORMAT, "status %d: %s", st,
                  isl_tiff_last_error());
    ck_assert_error_mentions("huge.tif");
    ck_assert_ptr_null(s.data);
}
END_TEST

START_TEST(test_not_a_tiff)
{
    const char *path = tpath("notes.txt");
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fputs("these are not the pixels you are looking for\n", fp);
    fclose(fp);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);
    ck_assert_error_mentions("not a TIFF");

    path = tpath("empty.tif");
    fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fclose(fp);
    expect_read_failure(path, 0, ISL_ERROR_FORMAT);
}
END_TEST

START_TEST(test_missing_file)
{
    expect_read_failure(tpath("does_not_exist.tif"), 0, ISL_ERROR_IO);
    expect_read_failure(test_dir, 0, ISL_ERROR_IO); /* a directory */
}
END_TEST

/* libtiff messages are captured per file and isl messages per thread: concurrent readers
 * each see their own file's error. */
typedef struct reader_job {
    char good[PATH_MAX], bad[PATH_MAX];
    int ok;
} reader_job;

static void *reader_thread(void *arg)
{
    reader_job *job = arg;
    job->ok = 1;
    for (int i = 0; i < 20; i++) {
        isl_tiff_stack s;
        if (isl_tiff_read_stack(job->good, 2, &s) != ISL_OK)
            job->ok = 0;
        isl_tiff_stack_free(&s);
        if (isl_tiff_read_stack(job->bad, 0, &s) != ISL_ERROR_FORMAT ||
            strstr(isl_tiff_last_error(), job->bad) == NULL)
            job->ok = 0;
    }
    return NULL;
}

START_TEST(test_concurrent_reads)
{
    enum { THREADS = 4 };
    reader_job jobs[THREADS];
    pthread_t threads[THREADS];
    fixture f = fixture_make(2, 64, 64, 16, SAMPLEFORMAT_UINT);
    f.compression = COMPRESSION_ADOBE_DEFLATE;
    for (int i = 0; i < THREADS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "good%d.tif", i);
        snprintf(jobs[i].good, PATH_MAX, "%s", tpath(name));
        write_fixture(jobs[i].good, &f);
        snprintf(name, sizeof(name), "bad%d.tif", i);
        snprintf(jobs[i].bad, PATH_MAX, "%s", tpath(name));
        FILE *fp = fopen(jobs[i].bad, "w");
        ck_assert_ptr_nonnull(fp);
        fprintf(fp, "not a tiff %d\n", i);
        fclose(fp);
    }
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&threads[i], NULL, reader_thread, &jobs[i]), 0);
    for (int i = 0; i < THREADS; i++) {
        ck_assert_int_eq(pthread_join(threads[i], NULL), 0);
        ck_assert_msg(jobs[i].ok, "thread %d saw a wrong result or message", i);
    }
}
END_TEST

/* ---------------------------------------------------------------------------------- */

static Suite *tiff_io_suite(void)
{
    Suite *s = suite_create("tiff_io");
    TCase *tc = tcase_create("tiff_io");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_roundtrip_float_one_page);
    tcase_add_test(tc, test_roundtrip_float_multi_page);
    tcase_add_test(tc, test_write_replaces_existing_file);
    tcase_add_test(tc, test_write_into_missing_directory);
    tcase_add_test(tc, test_write_fails_when_disk_full);
    tcase_add_test(tc, test_write_rgb8);
    tcase_add_test(tc, test_streaming_writer_round_trip);
    tcase_add_test(tc, test_streaming_writer_discard);
    tcase_add_test(tc, test_writer_invalid_arguments);
    tcase_add_test(tc, test_read_uint8_stack);
    tcase_add_test(tc, test_read_uint16_stack);
    tcase_add_test(tc, test_read_uint16_without_sample_format_tag);
    tcase_add_test(tc, test_read_float32_stack);
    tcase_add_test(tc, test_read_real_phase_contrast_stack);
    tcase_add_test(tc, test_wrong_page_count);
    tcase_add_test(tc, test_mismatched_pages);
    tcase_add_test(tc, test_unsupported_formats);
    tcase_add_test(tc, test_truncated_file);
    tcase_add_test(tc, test_absurd_dimensions);
    tcase_add_test(tc, test_not_a_tiff);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_concurrent_reads);
    suite_add_tcase(s, tc);
    return s;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int main(void)
{
    const char *tmp = getenv("ISL_TEST_TMPDIR");
    snprintf(scratch_root, sizeof(scratch_root), "%s/isl_test_tiff_io.XXXXXX",
             tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(scratch_root)) {
        fprintf(stderr, "cannot create a scratch directory %s: %s\n", scratch_root,
                strerror(errno));
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(tiff_io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(scratch_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
