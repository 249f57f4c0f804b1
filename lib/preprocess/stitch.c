/* The paper's image stitching (STAR Methods, "Image stitching"): offsets between
 * neighbouring tiles by normalized cross-correlation, tile positions that fit all offsets
 * in the least-squares sense (the "spring system"), and a feathered composite. */
#include "preprocess.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* NCC of b placed at (dy, dx) in a's coordinates, over their overlap; -2 if the overlap is
 * smaller than min_area pixels or flat. */
static double ncc_at(const float *a, const float *b, int h, int w, int dy, int dx,
                     long long min_area)
{
    const int y0 = dy > 0 ? dy : 0, y1 = dy + h < h ? dy + h : h;
    const int x0 = dx > 0 ? dx : 0, x1 = dx + w < w ? dx + w : w;
    if (y1 <= y0 || x1 <= x0 || (long long)(y1 - y0) * (x1 - x0) < min_area)
        return -2.0;
    double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    for (int y = y0; y < y1; y++) {
        const float *ra = a + (size_t)y * w, *rb = b + (size_t)(y - dy) * w - dx;
        for (int x = x0; x < x1; x++) {
            const double u = ra[x], v = rb[x];
            sa += u, sb += v, saa += u * u, sbb += v * v, sab += u * v;
        }
    }
    const double n = (double)(y1 - y0) * (x1 - x0);
    const double cov = sab - sa * sb / n, va = saa - sa * sa / n, vb = sbb - sb * sb / n;
    if (!(va > 0 && vb > 0))
        return -2.0;
    return cov / sqrt(va * vb);
}

/* Best integer offset within +-search of (cy, cx). */
static double best_offset(const float *a, const float *b, int h, int w, int cy, int cx,
                          int search, long long min_area, int *by, int *bx)
{
    double best = -3.0;
    *by = cy, *bx = cx;
    for (int dy = cy - search; dy <= cy + search; dy++)
        for (int dx = cx - search; dx <= cx + search; dx++) {
            double c = ncc_at(a, b, h, w, dy, dx, min_area);
            if (c > best)
                best = c, *by = dy, *bx = dx;
        }
    return best;
}

/* Vertex of the parabola through (-1, l), (0, c), (1, r), within [-0.5, 0.5]. */
static double parabola_peak(double l, double c, double r)
{
    const double den = l - 2.0 * c + r;
    if (l < -1.5 || r < -1.5 || !(den < 0.0))
        return 0.0;
    double d = 0.5 * (l - r) / den;
    return d < -0.5 ? -0.5 : d > 0.5 ? 0.5 : d;
}

/* Coarse to fine: a wide search on 2x downscaled tiles, then +-2 pixels here. */
static isl_status search_offset(const float *a, const float *b, int h, int w, double ny,
                                double nx, int search, long long min_area, int *by, int *bx,
                                double *ncc)
{
    if (search > 4 && h >= 64 && w >= 64) {
        const int h2 = h / 2, w2 = w / 2;
        float *a2 = malloc(sizeof(float) * (size_t)h2 * w2 * 2);
        if (!a2)
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "stitch: out of memory");
        float *b2 = a2 + (size_t)h2 * w2;
        isl_downscale2(a, h, w, a2);
        isl_downscale2(b, h, w, b2);
        int cy, cx;
        isl_status s = search_offset(a2, b2, h2, w2, ny / 2, nx / 2, (search + 1) / 2,
                                     min_area / 4, &cy, &cx, ncc);
        free(a2);
        ISL_CHECK(s);
        *ncc = best_offset(a, b, h, w, 2 * cy, 2 * cx, 2, min_area, by, bx);
        return ISL_OK;
    }
    *ncc = best_offset(a, b, h, w, (int)lround(ny), (int)lround(nx), search, min_area, by, bx);
    return ISL_OK;
}

isl_status isl_stitch_pair_offset(const float *a, const float *b, int height, int width,
                                  double nominal_y, double nominal_x, int search,
                                  double *offset_y, double *offset_x, double *ncc)
{
    if (!a || !b || !offset_y || !offset_x)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "stitch: a tile or an output is NULL");
    ISL_CHECK(isl_pp_check_size("stitch", height, width));
    if (search < 0 || search > 4096 || !(fabs(nominal_y) < height) || !(fabs(nominal_x) < width))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "stitch: nominal offset (%g, %g) must lie inside the %d x %d tile and "
                        "search %d in [0, 4096]",
                        nominal_y, nominal_x, height, width, search);
    ISL_CHECK(isl_pp_check_finite("stitch: first tile", a, height, width));
    ISL_CHECK(isl_pp_check_finite("stitch: second tile", b, height, width));
    /* Candidates must keep at least a quarter of the nominal overlap (and 16 pixels): a
     * sliver of overlap correlates by chance. */
    long long area = (long long)(height - (int)fabs(nominal_y)) * (width - (int)fabs(nominal_x));
    long long min_area = area / 4 > 16 ? area / 4 : 16;
    int by, bx;
    double c;
    ISL_CHECK(search_offset(a, b, height, width, nominal_y, nominal_x, search, min_area, &by,
                            &bx, &c));
    if (c < -1.5)
        return isl_fail(ISL_ERROR_VALUE,
                        "stitch: no offset near (%g, %g) overlaps enough of a textured region",
                        nominal_y, nominal_x);
    *offset_y = by + parabola_peak(ncc_at(a, b, height, width, by - 1, bx, min_area), c,
                                   ncc_at(a, b, height, width, by + 1, bx, min_area));
    *offset_x = bx + parabola_peak(ncc_at(a, b, height, width, by, bx - 1, min_area), c,
                                   ncc_at(a, b, height, width, by, bx + 1, min_area));
    if (ncc)
        *ncc = c;
    return ISL_OK;
}

/* Solves the n x n system m x = v in place (partial pivoting); 0 if singular. */
static int solve_dense(double *m, double *v, int n)
{
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(m[(size_t)r * n + c]) > fabs(m[(size_t)p * n + c]))
                p = r;
        if (fabs(m[(size_t)p * n + c]) < 1e-9)
            return 0;
        if (p != c) {
            for (int k = 0; k < n; k++) {
                double t = m[(size_t)c * n + k];
                m[(size_t)c * n + k] = m[(size_t)p * n + k];
                m[(size_t)p * n + k] = t;
            }
            double t = v[c];
            v[c] = v[p], v[p] = t;
        }
        for (int r = c + 1; r < n; r++) {
            const double f = m[(size_t)r * n + c] / m[(size_t)c * n + c];
            if (f == 0.0)
                continue;
            for (int k = c; k < n; k++)
                m[(size_t)r * n + k] -= f * m[(size_t)c * n + k];
            v[r] -= f * v[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double s = v[r];
        for (int k = r + 1; k < n; k++)
            s -= m[(size_t)r * n + k] * v[k];
        v[r] = s / m[(size_t)r * n + r];
    }
    return 1;
}

isl_status isl_stitch_solve(int tiles, int pairs, const int *pair_tiles, const double *offsets,
                            double *positions)
{
    if (tiles < 1 || tiles > 4096 || pairs < 0 || (pairs && (!pair_tiles || !offsets)) ||
        !positions)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "stitch: %d tiles (1 to 4096) and %d pairs, or NULL arrays", tiles, pairs);
    for (int k = 0; k < pairs; k++) {
        const int i = pair_tiles[2 * k], j = pair_tiles[2 * k + 1];
        if (i < 0 || j < 0 || i >= tiles || j >= tiles || i == j)
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "stitch: pair %d joins tiles %d and %d",
                            k, i, j);
        if (!isfinite(offsets[2 * k]) || !isfinite(offsets[2 * k + 1]))
            return isl_fail(ISL_ERROR_VALUE, "stitch: offset of pair %d is not finite", k);
    }
    const size_t n = (size_t)tiles;
    double *m = malloc(sizeof(double) * n * n), *v = malloc(sizeof(double) * n);
    if (!m || !v) {
        free(m), free(v);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "stitch: out of memory");
    }
    isl_status st = ISL_OK;
    /* Per axis: minimize sum (p_j - p_i - o_ij)^2 with tile 0 at the origin. */
    for (int axis = 0; axis < 2 && st == ISL_OK; axis++) {
        memset(m, 0, sizeof(double) * n * n);
        memset(v, 0, sizeof(double) * n);
        for (int k = 0; k < pairs; k++) {
            const int i = pair_tiles[2 * k], j = pair_tiles[2 * k + 1];
            const double o = offsets[2 * k + axis];
            m[i * n + i] += 1, m[j * n + j] += 1, m[i * n + j] -= 1, m[j * n + i] -= 1;
            v[j] += o, v[i] -= o;
        }
        for (size_t k = 0; k < n; k++)
            m[k] = k == 0;
        v[0] = 0;
        if (!solve_dense(m, v, tiles))
            st = isl_fail(ISL_ERROR_VALUE,
                          "stitch: the pairs do not connect all %d tiles", tiles);
        for (size_t k = 0; k < n && st == ISL_OK; k++)
            positions[2 * k + axis] = v[k];
    }
    free(m), free(v);
    return st;
}

isl_status isl_stitch_canvas_size(int tiles, const double *positions, int height, int width,
                                  int *canvas_height, int *canvas_width)
{
    if (tiles < 1 || !positions || !canvas_height || !canvas_width)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "stitch: no tiles or NULL arrays");
    ISL_CHECK(isl_pp_check_size("stitch", height, width));
    double y0 = INFINITY, x0 = INFINITY, y1 = -INFINITY, x1 = -INFINITY;
    for (int t = 0; t < tiles; t++) {
        const double y = round(positions[2 * t]), x = round(positions[2 * t + 1]);
        if (!isfinite(y) || !isfinite(x))
            return isl_fail(ISL_ERROR_VALUE, "stitch: position of tile %d is not finite", t);
        y0 = fmin(y0, y), x0 = fmin(x0, x), y1 = fmax(y1, y + height), x1 = fmax(x1, x + width);
    }
    if (y1 - y0 > (1 << 20) || x1 - x0 > (1 << 20))
        return isl_fail(ISL_ERROR_SHAPE, "stitch: the canvas (%.0f x %.0f) is too large",
                        y1 - y0, x1 - x0);
    *canvas_height = (int)(y1 - y0), *canvas_width = (int)(x1 - x0);
    return ISL_OK;
}

isl_status isl_stitch_blend(const float *const *tiles, int count, const double *positions,
                            int height, int width, int y0, int rows, int canvas_width,
                            float *out)
{
    int ch, cw;
    if (!tiles || !out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "stitch: tiles or output is NULL");
    ISL_CHECK(isl_stitch_canvas_size(count, positions, height, width, &ch, &cw));
    if (canvas_width != cw || y0 < 0 || rows < 0 || y0 + rows > ch)
        return isl_fail(ISL_ERROR_SHAPE,
                        "stitch: rows %d..%d of width %d do not fit the %d x %d canvas", y0,
                        y0 + rows, canvas_width, ch, cw);
    double oy = INFINITY, ox = INFINITY;
    for (int t = 0; t < count; t++)
        oy = fmin(oy, round(positions[2 * t])), ox = fmin(ox, round(positions[2 * t + 1]));
    float *weight = calloc((size_t)rows * cw + 1, sizeof(float));
    if (!weight)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "stitch: out of memory");
    memset(out, 0, sizeof(float) * (size_t)rows * cw);
    /* Feathering: a pixel weighs its distance (in pixels, >= 1) to its tile's nearest
     * edge, so overlaps fade from one tile into the other. */
    for (int t = 0; t < count; t++) {
        if (!tiles[t]) {
            free(weight);
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "stitch: tile %d is NULL", t);
        }
        const int ty = (int)(round(positions[2 * t]) - oy), tx = (int)(round(positions[2 * t + 1]) - ox);
        for (int y = y0 > ty ? y0 : ty; y < y0 + rows && y < ty + height; y++) {
            const int sy = y - ty, dy = sy + 1 < height - sy ? sy + 1 : height - sy;
            const float *src = tiles[t] + (size_t)sy * width;
            float *o = out + (size_t)(y - y0) * cw + tx, *wt = weight + (size_t)(y - y0) * cw + tx;
            for (int x = 0; x < width; x++) {
                const int dx = x + 1 < width - x ? x + 1 : width - x;
                const float w = (float)(dy < dx ? dy : dx);
                o[x] += w * src[x];
                wt[x] += w;
            }
        }
    }
    for (size_t i = 0; i < (size_t)rows * cw; i++)
        out[i] = weight[i] > 0 ? out[i] / weight[i] : 0.0f;
    free(weight);
    return ISL_OK;
}
