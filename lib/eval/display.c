/* Pictures of images for people: the paper's display transform, error composites and
 * colour maps. */
#include "eval_check.h"

double isl_eval_display(double x)
{
    double v = (x - 0.2) / 0.6;
    return v < 0 ? 0 : v > 1 ? 1 : v;
}

static uint8_t to_byte(double v)
{
    return (uint8_t)(v <= 0 ? 0 : v >= 1 ? 255 : v * 255.0 + 0.5);
}

isl_status isl_eval_error_image(const float *predicted, const float *truth, int64_t count,
                                uint8_t *rgb)
{
    if (!truth || !rgb)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_error_image: %s is NULL",
                        truth ? "rgb" : "truth");
    ISL_CHECK(isl_eval_check_pixels("isl_eval_error_image", predicted, truth, NULL, count));
    for (int64_t i = 0; i < count; i++) {
        double t = isl_eval_display(truth[i]), p = isl_eval_display(predicted[i]);
        double common = t < p ? t : p, over = p > t ? p - t : 0, under = t > p ? t - p : 0;
        /* Magenta = red + blue, teal = green + blue at half strength of the blue. */
        rgb[3 * i + 0] = to_byte(common + over);
        rgb[3 * i + 1] = to_byte(common + under * 0.8);
        rgb[3 * i + 2] = to_byte(common + over + under * 0.8);
    }
    return ISL_OK;
}

/* Viridis at five stops (dark blue, blue, teal, green, yellow), linearly interpolated. */
static const double scale[5][3] = {{0.267, 0.005, 0.329}, {0.231, 0.322, 0.545},
                                   {0.129, 0.569, 0.549}, {0.369, 0.788, 0.384},
                                   {0.993, 0.906, 0.144}};

isl_status isl_eval_map_image(const float *values, int64_t count, double lo, double hi,
                              uint8_t *rgb)
{
    if (!rgb)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_map_image: rgb is NULL");
    if (!(hi > lo) || !isfinite(lo) || !isfinite(hi))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_map_image: need lo < hi, got %g, %g",
                        lo, hi);
    ISL_CHECK(isl_eval_check_pixels("isl_eval_map_image", values, NULL, NULL, count));
    for (int64_t i = 0; i < count; i++) {
        double v = (values[i] - lo) / (hi - lo);
        v = (v < 0 ? 0 : v > 1 ? 1 : v) * 4.0;
        int k = v >= 4 ? 3 : (int)v;
        double f = v - k;
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = to_byte(scale[k][c] * (1 - f) + scale[k + 1][c] * f);
    }
    return ISL_OK;
}
