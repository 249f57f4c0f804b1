/* Times isl on the benchmark job: a 1024 x 1024, 13-plane image, 3 label heads, base 400
 * (paper network), median images. Prints wall and CPU seconds, peak memory, achieved
 * GFLOP/s (the network's real work for one whole-image pass, so recomputed tile overlaps
 * count against us) and the fraction of the CPU's peak.
 *   bench_predict [--base 400] [--size 1024] [--heads 3] [--precision fp32|bf16]
 *                 [--threads 0] [--tile 0] [--memory-limit-mb 0 (the library default)] [--repeat 2]
 *                 [--peak-gflops 333] [--input STACK.tif] */
#include "isl.h"
#include "bench_util.h"
#include "tiff_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int discard_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                        const float *data)
{
    double *sum = user;
    (void)head, (void)stat, (void)y0;
    for (int i = 0; i < rows * width; i += 997)
        *sum += data[i]; /* touch the output so nothing is optimized away */
    return 0;
}

int main(int argc, char **argv)
{
    int base = 400, size = 1024, nheads = 3, threads = 0, tile = 0, repeat = 2;
    double peak = 333.0, mem_mb = 0;
    const char *precision = "fp32", *input = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--base")) base = atoi(v);
        else if (!strcmp(k, "--size")) size = atoi(v);
        else if (!strcmp(k, "--heads")) nheads = atoi(v);
        else if (!strcmp(k, "--threads")) threads = atoi(v);
        else if (!strcmp(k, "--tile")) tile = atoi(v);
        else if (!strcmp(k, "--repeat")) repeat = atoi(v);
        else if (!strcmp(k, "--precision")) precision = v;
        else if (!strcmp(k, "--peak-gflops")) peak = atof(v);
        else if (!strcmp(k, "--memory-limit-mb")) mem_mb = atof(v);
        else if (!strcmp(k, "--input")) input = v;
        else {
            fprintf(stderr, "bench_predict: unknown option %s\n", k);
            return 2;
        }
    }
    static const char *names[8] = {"dapi_confocal", "map2_confocal", "nfh_confocal", "h3",
                                   "h4", "h5", "h6", "h7"};
    isl_model_config c;
    isl_model_config_init(&c);
    c.base_depth = base;
    c.num_heads = nheads;
    c.head_names = names;
    c.seed = 1;
    isl_model *m;
    if (isl_model_create(&c, &m) != ISL_OK) {
        fprintf(stderr, "bench_predict: %s\n", isl_last_error());
        return 1;
    }

    isl_tiff_stack st = {0};
    uint16_t *synthetic = NULL;
    isl_stack in;
    if (input) {
        if (isl_tiff_read_stack(input, 13, &st) != ISL_OK) {
            fprintf(stderr, "bench_predict: %s\n", isl_last_error());
            return 1;
        }
        in = (isl_stack){st.data, st.dtype, st.num_z, st.height, st.width};
    } else {
        synthetic = malloc(sizeof(uint16_t) * 13 * size * size);
        uint64_t s = 1;
        for (size_t i = 0; i < (size_t)13 * size * size; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            synthetic[i] = (uint16_t)(20000 + (s >> 49));
        }
        in = (isl_stack){synthetic, ISL_DTYPE_U16, 13, size, size};
    }

    isl_predict_options *o;
    isl_predict_options_create(&o);
    isl_predict_options_set_threads(o, threads);
    isl_predict_options_set_tile_size(o, tile);
    isl_predict_options_set_memory_limit(o, (size_t)(mem_mb * 1048576));
    if (isl_predict_options_set_precision(o, strcmp(precision, "bf16") ? ISL_PRECISION_FP32
                                                                        : ISL_PRECISION_BF16)) {
        fprintf(stderr, "bench_predict: %s\n", isl_last_error());
        return 1;
    }

    /* Work of one whole-image pass (padded to 250 + 16M as the spec says). */
    int ph = ISL_TILE_MIN + ISL_TILE_STEP * ((in.height + ISL_TILE_CONTEXT - ISL_TILE_MIN +
                                              ISL_TILE_STEP - 1) / ISL_TILE_STEP);
    int pw = ISL_TILE_MIN + ISL_TILE_STEP * ((in.width + ISL_TILE_CONTEXT - ISL_TILE_MIN +
                                              ISL_TILE_STEP - 1) / ISL_TILE_STEP);
    int heads[8];
    for (int h = 0; h < nheads; h++)
        heads[h] = h;
    double flops = 2.0 * isl_model_macs(m, ph, pw, nheads, heads);

    double sum = 0;
    for (int r = 0; r < repeat; r++) {
        double w0 = wall_now(), c0 = cpu_now();
        if (isl_predict_image_rows(m, o, &in, discard_rows, &sum) != ISL_OK) {
            fprintf(stderr, "bench_predict: %s\n", isl_last_error());
            return 1;
        }
        double wall = wall_now() - w0, cpu = cpu_now() - c0;
        printf("isl_bench run=%d base=%d size=%dx%d heads=%d precision=%s seconds=%.2f "
               "cpu_seconds=%.2f peak_rss_mb=%ld gflops=%.1f peak_fraction=%.3f%s\n",
               r, base, in.height, in.width, nheads, precision, wall, cpu, peak_rss_mb(),
               flops / wall / 1e9, flops / wall / 1e9 / peak, r == 0 ? " (includes plan build)" : "");
        fflush(stdout);
    }
    isl_predict_options_free(o);
    isl_tiff_stack_free(&st);
    free(synthetic);
    isl_model_free(m);
    return sum == 12345.678; /* never true; keeps sum alive */
}
