/* Scale augmentation of training crops (isl_sampler_set_scale_jitter; lib/train/rescale.c).
 * A well whose planes and labels are linear ramps of the column and the row tells, at
 * every crop pixel, which point of the well it shows: so the zoom factor of a crop is its
 * ramp's slope over the well's, a known target's position is its value, and inputs and
 * targets must show the same point (a label known in part: only where all four bilinear
 * neighbours are known). From that: inputs and targets stay aligned through
 * zoom and dihedral transforms, factors spread over [e^-a, e^a], the crop keeps its
 * centre, 0 turns it off, and no known target of a zoomed-out crop lies closer to a
 * held-out pixel than 121 (factor - 1) + 1. */
#include "isl.h"
#include "test_util.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NZ = 2, H = 300, W = 420, CROP = 266, OUT = CROP - 242, BATCH = 16, ROW_KNOWN = 200 };
static const size_t CROP_PLANE = (size_t)CROP * CROP, OUT_PLANE = (size_t)OUT * OUT;

static double ramp(int i, int n) { return 0.1 + 0.8 * i / (n - 1); }
static double col_slope(void) { return 0.8 / (W - 1); }

typedef struct world {
    float stack[NZ * H * W], col[H * W], row[H * W];
    uint8_t row_known[H * W]; /* "row": rows 0..ROW_KNOWN - 1, but for a lattice of holes */
    isl_dataset *d;
    isl_model *m;
    isl_sampler *s;
    float inputs[BATCH * NZ * CROP * CROP], targets[BATCH * 2 * OUT * OUT];
    uint8_t masks[BATCH * 2 * OUT * OUT];
} world;

/* Plane 0 and label "col" the column ramp, plane 1 and label "row" the row ramp. */
static world *world_open(void)
{
    world *w = calloc(1, sizeof(*w));
    ck_assert_ptr_nonnull(w);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            w->stack[y * W + x] = w->col[y * W + x] = (float)ramp(x, W);
            w->stack[H * W + y * W + x] = w->row[y * W + x] = (float)ramp(y, H);
            w->row_known[y * W + x] = y < ROW_KNOWN && (x * 7 + y * 13) % 29 != 0;
        }
    ck_assert_int_eq(isl_dataset_create(NZ, &w->d), ISL_OK);
    isl_stack st = {w->stack, ISL_DTYPE_F32, NZ, H, W};
    isl_stack col = {w->col, ISL_DTYPE_F32, 1, H, W}, row = {w->row, ISL_DTYPE_F32, 1, H, W};
    int index;
    ck_assert_msg(isl_dataset_add_well(w->d, "ramp", NULL, 0, &st, &index) == ISL_OK, "%s",
                  isl_last_error());
    ck_assert_int_eq(isl_dataset_add_target(w->d, 0, "col", 0, 0, &col, NULL), ISL_OK);
    ck_assert_int_eq(isl_dataset_add_target(w->d, 0, "row", 0, 0, &row, w->row_known), ISL_OK);
    static const char *const heads[2] = {"col", "row"};
    w->m = test_new_model(5, NZ, 2, heads, 0, "none");
    ck_assert_msg(isl_sampler_create(w->d, w->m, CROP, &w->s) == ISL_OK, "%s", isl_last_error());
    return w;
}

static void world_close(world *w)
{
    isl_sampler_free(w->s);
    isl_model_free(w->m);
    isl_dataset_free(w->d);
    free(w);
}

static void draw(world *w, uint64_t seed)
{
    ck_assert_msg(isl_sampler_draw(w->s, seed, BATCH, w->inputs, w->targets, w->masks) == ISL_OK,
                  "%s", isl_last_error());
}

static const float *input_plane(const world *w, int i, int z)
{
    return w->inputs + ((size_t)i * NZ + z) * CROP_PLANE;
}

/* Crop i's zoom factor: the column ramp's gradient at the crop's centre (inside the well
 * for every drawable window) over the well's slope, whatever the dihedral transform. */
static double factor_of(const world *w, int i)
{
    const float *p = input_plane(w, i, 0);
    const int c = CROP / 2;
    const double gx = p[c * CROP + c + 1] - p[c * CROP + c - 1];
    const double gy = p[(c + 1) * CROP + c] - p[(c - 1) * CROP + c];
    return 0.5 * sqrt(gx * gx + gy * gy) / col_slope();
}

/* A known "row" target of value v at the point whose column ramp reads c: its four
 * bilinear neighbours are known (points within 1e-3 of a pixel row or column skipped:
 * which neighbours they have is a matter of rounding). */
static void check_neighbours(const world *w, double v, double c)
{
    const double py = (v - 0.1) / 0.8 * (H - 1), px = (c - 0.1) / 0.8 * (W - 1);
    if (fabs(py - round(py)) < 1e-3 || fabs(px - round(px)) < 1e-3)
        return;
    const int y0 = (int)py, x0 = (int)px;
    for (int y = y0; y <= y0 + 1; y++)
        for (int x = x0; x <= x0 + 1; x++)
            ck_assert_msg(w->row_known[y * W + x], "a known target at (%.3f, %.3f) has the "
                          "unknown neighbour (%d, %d)", py, px, y, x);
}

START_TEST(inputs_and_targets_show_the_same_point)
{
    world *w = world_open();
    const double amount = 0.4;
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, amount), ISL_OK);
    size_t known = 0;
    double worst = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        draw(w, seed);
        for (int i = 0; i < BATCH; i++)
            for (int l = 0; l < 2; l++) {
                const float *in = input_plane(w, i, l);
                const float *t = w->targets + ((size_t)i * 2 + l) * OUT_PLANE;
                const uint8_t *m = w->masks + ((size_t)i * 2 + l) * OUT_PLANE;
                for (int y = 0; y < OUT; y++)
                    for (int x = 0; x < OUT; x++) {
                        if (!m[y * OUT + x]) {
                            ck_assert_float_eq(t[y * OUT + x], 0.0f);
                            continue;
                        }
                        known++;
                        if (l == 1)
                            check_neighbours(w, t[y * OUT + x],
                                             input_plane(w, i, 0)[(y + 121) * CROP + x + 121]);
                        double d = fabs(t[y * OUT + x] - in[(y + 121) * CROP + x + 121]);
                        worst = d > worst ? d : worst;
                    }
            }
    }
    ck_assert_msg(worst < 2e-6, "a target differs from its input pixel by %g", worst);
    ck_assert_msg(known > (size_t)4 * BATCH * OUT_PLANE, "only %zu targets known", known);
    world_close(w);
}
END_TEST

START_TEST(factors_spread_over_the_range_and_crops_keep_their_centre)
{
    world *w = world_open();
    const double amount = 0.3;
    static float plain_targets[BATCH * 2 * OUT * OUT];
    static uint8_t plain_masks[BATCH * 2 * OUT * OUT];
    double lo = 1e9, hi = -1e9;
    int centred = 0;
    for (uint64_t seed = 10; seed < 14; seed++) {
        ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, 0), ISL_OK);
        draw(w, seed);
        memcpy(plain_targets, w->targets, sizeof(plain_targets));
        memcpy(plain_masks, w->masks, sizeof(plain_masks));
        for (int i = 0; i < BATCH; i++)
            ck_assert_double_eq_tol(factor_of(w, i), 1.0, 1e-3);
        ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, amount), ISL_OK);
        draw(w, seed);
        for (int i = 0; i < BATCH; i++) {
            const double f = factor_of(w, i), u = log(f);
            ck_assert_msg(fabs(u) <= amount + 1e-3, "factor %g outside [e^-%g, e^%g]", f,
                          amount, amount);
            lo = u < lo ? u : lo;
            hi = u > hi ? u : hi;
            /* The targets' own slope is the same factor (along a row or a column). */
            const float *t = w->targets + (size_t)i * 2 * OUT_PLANE;
            const uint8_t *m = w->masks + (size_t)i * 2 * OUT_PLANE;
            const int c = OUT / 2;
            if (m[c * OUT + c] && m[c * OUT + c + 1] && m[(c + 1) * OUT + c]) {
                double gx = t[c * OUT + c + 1] - t[c * OUT + c], gy = t[(c + 1) * OUT + c] - t[c * OUT + c];
                ck_assert_double_eq_tol(sqrt(gx * gx + gy * gy) / col_slope(), f, 1e-3);
            }
            /* Same window and transform: over a fully known window the mean of a linear
             * ramp is its value at the centre, with or without zoom. */
            for (int l = 0; l < 2; l++) {
                const size_t o = ((size_t)i * 2 + l) * OUT_PLANE;
                double a = 0, b = 0;
                int full = 1;
                for (size_t k = 0; k < OUT_PLANE; k++) {
                    full &= w->masks[o + k] && plain_masks[o + k];
                    a += w->targets[o + k];
                    b += plain_targets[o + k];
                }
                if (full) {
                    ck_assert_double_eq_tol(a / OUT_PLANE, b / OUT_PLANE, 1e-5);
                    centred++;
                }
            }
        }
    }
    ck_assert_msg(lo < -amount / 2 && hi > amount / 2, "log factors only in [%g, %g]", lo, hi);
    ck_assert_msg(centred > 40, "only %d windows fully known both ways", centred);
    world_close(w);
}
END_TEST

START_TEST(off_is_the_plain_crop_and_bad_amounts_are_refused)
{
    world *w = world_open();
    static float plain[BATCH * NZ * CROP * CROP];
    draw(w, 5);
    memcpy(plain, w->inputs, sizeof(plain));
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, 0.2), ISL_OK);
    draw(w, 5);
    ck_assert(memcmp(plain, w->inputs, sizeof(plain)) != 0);
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, 0), ISL_OK);
    draw(w, 5);
    ck_assert_mem_eq(plain, w->inputs, sizeof(plain));
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, 0.6), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "outside [0, 0.5]"));
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, NAN), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, -0.1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_sampler_set_scale_jitter(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT);
    world_close(w);
}
END_TEST

/* A held-out band of columns 200..239: every known target's column (its value) is at
 * least 1 pixel away, and, zoomed out, at least 121 (factor - 1) + 1; the bound is not
 * loose by more than the documented rounding (floor, +1, and the bilinear neighbour). */
static void check_held_out_band(int hold_first)
{
    world *w = world_open();
    const isl_region band = {0, 200, 0, 40, H};
    if (hold_first)
        ck_assert_int_eq(isl_sampler_hold_out(w->s, &band), ISL_OK);
    ck_assert_int_eq(isl_sampler_set_scale_jitter(w->s, 0.5), ISL_OK);
    if (!hold_first)
        ck_assert_int_eq(isl_sampler_hold_out(w->s, &band), ISL_OK);
    double tightest = 1e9;
    size_t near = 0;
    for (uint64_t seed = 20; seed < 28; seed++) {
        draw(w, seed);
        for (int i = 0; i < BATCH; i++) {
            const double f = factor_of(w, i), need = f > 1 ? 121 * (f - 1) + 1 : 1;
            const float *t = w->targets + (size_t)i * 2 * OUT_PLANE;
            const uint8_t *m = w->masks + (size_t)i * 2 * OUT_PLANE;
            for (size_t k = 0; k < OUT_PLANE; k++) {
                if (!m[k])
                    continue;
                const double x = (t[k] - 0.1) / 0.8 * (W - 1);
                const double gap = x < 200 ? 200 - x : x - 239;
                ck_assert_msg(gap > need - 0.01, "a target at column %.2f, factor %.3f, is %.2f "
                              "from the held-out band (needs %.2f)", x, f, gap, need);
                if (f > 1.05 && gap - need < tightest)
                    tightest = gap - need;
                near += gap < need + 3;
            }
        }
    }
    ck_assert_msg(near > 0 && tightest < 3, "no zoomed-out target within 3 pixels of its "
                  "bound (tightest %.2f): the mask is looser than documented", tightest);
    world_close(w);
}

START_TEST(held_out_pixels_stay_out_of_reach)
{
    check_held_out_band(1);
    check_held_out_band(0); /* the same whichever is set first */
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"aligned", inputs_and_targets_show_the_same_point},
        {"factors", factors_spread_over_the_range_and_crops_keep_their_centre},
        {"off", off_is_the_plain_crop_and_bad_amounts_are_refused},
        {"held_out", held_out_pixels_stay_out_of_reach},
    };
    return test_run_cases("scale_jitter", cases, sizeof(cases) / sizeof(cases[0]), 120);
}
