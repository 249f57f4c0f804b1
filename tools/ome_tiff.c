/* OME-TIFF for isl predict: reads the OME-XML of an input stack (pixel size, channel
 * names, z order) and writes the predictions as one OME-TIFF with named channels
 * (--format ome-tiff). OME-XML is parsed with libxml2; pixels go through libtiff. Kept
 * apart from the plain TIFF code (tiff_io) on purpose: it only adds metadata around it. */
#include "cli.h"

#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>
#include <unistd.h>

/* Above this many bytes of pixels the file is BigTIFF (classic TIFF offsets are 32-bit);
 * ISL_OME_BIGTIFF_BYTES overrides it (tests). */
#define BIGTIFF_BYTES ((uint64_t)3 << 30)

static int quiet_tiff(TIFF *t, void *user, const char *m, const char *f, va_list ap)
{
    (void)t, (void)user, (void)m, (void)f, (void)ap;
    return 1; /* handled: libtiff prints nothing */
}

/* TIFFOpen with this file's own (silent) message handlers: TIFFSetErrorHandler would
 * change them for the whole process, including a host program's own libtiff use. */
static TIFF *open_quiet(const char *path, const char *mode)
{
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts)
        return NULL;
    TIFFOpenOptionsSetErrorHandlerExtR(opts, quiet_tiff, NULL);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, quiet_tiff, NULL);
    TIFF *t = TIFFOpenExt(path, mode, opts);
    TIFFOpenOptionsFree(opts);
    return t;
}

static const xmlNode *child(const xmlNode *n, const char *name)
{
    for (const xmlNode *c = n ? n->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
            return c;
    return NULL;
}

static double attr_double(const xmlNode *n, const char *name, double fallback)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    double d = fallback;
    if (v) {
        char *end;
        d = strtod((const char *)v, &end);
        if (end == (char *)v)
            d = fallback;
        xmlFree(v);
    }
    return d;
}

static void attr_string(const xmlNode *n, const char *name, char *buf, size_t size)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    snprintf(buf, size, "%s", v ? (const char *)v : "");
    xmlFree(v);
}

int cli_ome_read(const char *path, cli_ome_info *info)
{
    memset(info, 0, sizeof(*info));
    TIFF *t = open_quiet(path, "r");
    char *desc = NULL;
    if (t && TIFFGetField(t, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc && strstr(desc, "<OME"))
        desc = strdup(desc);
    else
        desc = NULL;
    if (t)
        TIFFClose(t);
    if (!desc)
        return 0; /* not OME: nothing to read */
    xmlDoc *doc = xmlReadMemory(desc, (int)strlen(desc), "ome.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    free(desc);
    const xmlNode *pixels = doc ? child(child(xmlDocGetRootElement(doc), "Image"), "Pixels") : NULL;
    if (!pixels) {
        xmlFreeDoc(doc);
        return -1; /* OME-XML without Image/Pixels */
    }
    info->present = 1;
    info->pixel_x_um = attr_double(pixels, "PhysicalSizeX", 0);
    info->pixel_y_um = attr_double(pixels, "PhysicalSizeY", 0);
    char unit[16];
    attr_string(pixels, "PhysicalSizeXUnit", unit, sizeof(unit));
    if (unit[0] && strcmp(unit, "\xc2\xb5m") && strcmp(unit, "um")) {
        double to_um = !strcmp(unit, "nm") ? 1e-3 : !strcmp(unit, "mm") ? 1e3 : 0;
        info->pixel_x_um *= to_um;
        info->pixel_y_um *= to_um;
    }
    info->size_z = (int)attr_double(pixels, "SizeZ", 1);
    info->size_c = (int)attr_double(pixels, "SizeC", 1);
    info->size_t = (int)attr_double(pixels, "SizeT", 1);
    attr_string(pixels, "DimensionOrder", info->order, sizeof(info->order));
    for (const xmlNode *c = pixels->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, "Channel") &&
            info->num_channels < CLI_OME_MAX_CHANNELS)
            attr_string(c, "Name", info->channel[info->num_channels++], sizeof(info->channel[0]));
    xmlFreeDoc(doc);
    return 0;
}

/* 1% tolerates metadata rounded to 3 digits; real mismatches (objectives, binning,
 * downscaling) are factors of 1.25 and more. */
#define PIXEL_SIZE_TOLERANCE 0.01

static int pixel_size_differs(double input_um, double model_um)
{
    return input_um > 0 && model_um > 0 &&
           fabs(input_um - model_um) > PIXEL_SIZE_TOLERANCE * model_um;
}

int cli_ome_check_input(const char *path, int num_z, double model_pixel_um)
{
    cli_ome_info o;
    if (cli_ome_read(path, &o) != 0)
        return cli_runtime_error("%s: its OME-XML has no Image/Pixels element", path);
    if (!o.present)
        return CLI_EXIT_OK;
    if (o.size_c * o.size_t > 1)
        return cli_runtime_error("%s: OME-TIFF with %d channels x %d time points; isl reads a "
                                 "single transmitted-light z-stack (extract it first)",
                                 path, o.size_c, o.size_t);
    if (o.size_z != num_z)
        return cli_runtime_error("%s: its OME-XML says SizeZ=%d, the model needs %d z planes",
                                 path, o.size_z, num_z);
    fprintf(stderr, "isl: input: OME-TIFF, %d z planes", o.size_z);
    if (o.pixel_x_um > 0)
        fprintf(stderr, ", pixel size %g x %g um", o.pixel_x_um, o.pixel_y_um);
    if (o.num_channels && o.channel[0][0])
        fprintf(stderr, ", channel '%s'", o.channel[0]);
    fputc('\n', stderr);
    if (pixel_size_differs(o.pixel_x_um, model_pixel_um) ||
        pixel_size_differs(o.pixel_y_um, model_pixel_um))
        fprintf(stderr, "isl: warning: %s has pixels of %g x %g um, but the model was trained "
                        "on %g um pixels: it sees every structure %.2f times %s and predicts "
                        "worse; resample the input to the model's pixel size (isl preprocess "
                        "--downscale halves it) or use a model trained at this size\n",
                path, o.pixel_x_um, o.pixel_y_um, model_pixel_um,
                o.pixel_x_um > model_pixel_um ? o.pixel_x_um / model_pixel_um
                                              : model_pixel_um / o.pixel_x_um,
                o.pixel_x_um > model_pixel_um ? "smaller" : "larger");
    return CLI_EXIT_OK;
}

/* OME-XML for n float planes of height x width, one channel each (order XYCZT). */
static char *ome_xml(int n, char (*names)[CLI_OME_NAME], int height, int width, double pixel_um)
{
    size_t cap = 1024 + (size_t)n * (CLI_OME_NAME + 96);
    char *x = malloc(cap);
    if (!x)
        return NULL;
    size_t k = (size_t)snprintf(x, cap,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\" Creator=\"isl %s\">"
        "<Image ID=\"Image:0\" Name=\"isl prediction\">"
        "<Pixels ID=\"Pixels:0\" DimensionOrder=\"XYCZT\" Type=\"float\" BigEndian=\"false\" "
        "SizeX=\"%d\" SizeY=\"%d\" SizeC=\"%d\" SizeZ=\"1\" SizeT=\"1\"",
        isl_version_string(), width, height, n);
    if (pixel_um > 0)
        k += (size_t)snprintf(x + k, cap - k,
                              " PhysicalSizeX=\"%g\" PhysicalSizeXUnit=\"\xc2\xb5m\" "
                              "PhysicalSizeY=\"%g\" PhysicalSizeYUnit=\"\xc2\xb5m\"",
                              pixel_um, pixel_um);
    k += (size_t)snprintf(x + k, cap - k, ">");
    for (int c = 0; c < n; c++) /* names are head names + stats: no XML specials */
        k += (size_t)snprintf(x + k, cap - k,
                              "<Channel ID=\"Channel:0:%d\" Name=\"%s\" SamplesPerPixel=\"1\"/>", c,
                              names[c]);
    snprintf(x + k, cap - k, "<TiffData IFD=\"0\" PlaneCount=\"%d\"/></Pixels></Image></OME>", n);
    return x;
}

/* Copies every page of the float32 TIFF src into out, scanline by scanline. */
static int copy_pages(TIFF *out, const char *src, int height, int width, const char *xml,
                      int *page, int pages_total, char *err, size_t err_size)
{
    TIFF *in = TIFFOpen(src, "r");
    if (!in) {
        snprintf(err, err_size, "%s: cannot reopen", src);
        return -1;
    }
    float *row = malloc(sizeof(float) * (size_t)width);
    int rc = row ? 0 : -1;
    do {
        TIFFSetField(out, TIFFTAG_IMAGEWIDTH, (uint32_t)width);
        TIFFSetField(out, TIFFTAG_IMAGELENGTH, (uint32_t)height);
        TIFFSetField(out, TIFFTAG_BITSPERSAMPLE, 32);
        TIFFSetField(out, TIFFTAG_SAMPLESPERPIXEL, 1);
        TIFFSetField(out, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_IEEEFP);
        TIFFSetField(out, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
        TIFFSetField(out, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
        TIFFSetField(out, TIFFTAG_COMPRESSION, COMPRESSION_NONE);
        TIFFSetField(out, TIFFTAG_ROWSPERSTRIP, TIFFDefaultStripSize(out, 0));
        if (*page == 0)
            TIFFSetField(out, TIFFTAG_IMAGEDESCRIPTION, xml);
        TIFFSetField(out, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
        TIFFSetField(out, TIFFTAG_PAGENUMBER, (uint16_t)*page, (uint16_t)pages_total);
        for (int y = 0; rc == 0 && y < height; y++)
            if (TIFFReadScanline(in, row, (uint32_t)y, 0) < 0 ||
                TIFFWriteScanline(out, row, (uint32_t)y, 0) < 0)
                rc = -1;
        if (rc == 0 && !TIFFWriteDirectory(out))
            rc = -1;
        (*page)++;
    } while (rc == 0 && TIFFReadDirectory(in));
    if (rc != 0)
        snprintf(err, err_size, "%s: cannot copy its pixels into the OME-TIFF", src);
    free(row);
    TIFFClose(in);
    return rc;
}

int cli_ome_write(const char *path, int num_files, const char *const *files,
                  char (*names)[CLI_OME_NAME], int num_planes, int height, int width,
                  double pixel_um, char *err, size_t err_size)
{
    uint64_t bytes = (uint64_t)num_planes * (uint64_t)height * (uint64_t)width * 4;
    const char *env = getenv("ISL_OME_BIGTIFF_BYTES");
    uint64_t limit = env ? strtoull(env, NULL, 10) : BIGTIFF_BYTES;
    char *xml = ome_xml(num_planes, names, height, width, pixel_um);
    size_t len = strlen(path);
    char *tmp = malloc(len + 16);
    if (!xml || !tmp) {
        snprintf(err, err_size, "out of memory");
        free(xml);
        free(tmp);
        return -1;
    }
    snprintf(tmp, len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    TIFF *out = fd < 0 ? NULL : TIFFFdOpen(fd, tmp, bytes > limit ? "w8" : "w");
    int rc = out ? 0 : -1;
    if (!out)
        snprintf(err, err_size, "%s: cannot create %s: %s", path, tmp, strerror(errno));
    for (int f = 0, page = 0; rc == 0 && f < num_files; f++)
        rc = copy_pages(out, files[f], height, width, xml, &page, num_planes, err, err_size);
    if (out) {
        if (rc == 0 && (!TIFFFlush(out) || fsync(fd) != 0)) {
            snprintf(err, err_size, "%s: cannot write %s", path, tmp);
            rc = -1;
        }
        TIFFClose(out); /* closes fd */
    } else if (fd >= 0) {
        close(fd);
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        snprintf(err, err_size, "%s: cannot rename %s: %s", path, tmp, strerror(errno));
        rc = -1;
    }
    if (rc != 0 && fd >= 0)
        unlink(tmp);
    free(tmp);
    free(xml);
    return rc;
}
