/* Long test (meson -Dlong_tests=true): a 10,000 x 10,000 image streams through
 * isl_predict_image_rows within a fixed memory budget. A small model keeps it to minutes;
 * memory depends on the tile plan and the image width, not on the model's depth. */
#include "isl.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

enum { SIDE = 10000 };

static long peak_rss_mb(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024;
}

typedef struct sink {
    int next_row;
    double sum;
} sink;

static int take_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                     const float *data)
{
    sink *s = user;
    ck_assert_int_eq(head, 0);
    ck_assert_int_eq(stat, ISL_STAT_MEDIAN);
    ck_assert_int_eq(width, SIDE);
    ck_assert_int_eq(y0, s->next_row); /* in order, each row once */
    s->next_row += rows;
    for (int i = 0; i < rows * width; i++) {
        ck_assert(data[i] >= 0.0f && data[i] <= 1.0f);
        s->sum += data[i];
    }
    return 0;
}

static int report(void *user, int64_t done, int64_t total)
{
    (void)user;
    if (done % 8 == 0 || done == total) {
        printf("  %lld / %lld tiles, peak RSS %ld MB\n", (long long)done, (long long)total,
               peak_rss_mb());
        fflush(stdout);
    }
    return 0;
}

START_TEST(ten_thousand_squared_in_bounded_memory)
{
    const char *names[1] = {"dapi_confocal"};
    isl_model_config c;
    isl_model_config_init(&c);
    c.base_depth = 8;
    c.num_z = 1;
    c.num_heads = 1;
    c.head_names = names;
    isl_model *m;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_OK);
    uint8_t *img = malloc((size_t)SIDE * SIDE);
    for (size_t i = 0; i < (size_t)SIDE * SIDE; i++)
        img[i] = (uint8_t)((i * 2654435761u) >> 24);
    long before = peak_rss_mb();
    const size_t budget = (size_t)600 << 20;
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_memory_limit(o, budget), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_progress(o, report, NULL), ISL_OK);
    isl_stack in = {img, ISL_DTYPE_U8, 1, SIDE, SIDE};
    sink s = {0, 0};
    ck_assert_msg(isl_predict_image_rows(m, o, &in, take_rows, &s) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(s.next_row, SIDE);
    long grown = peak_rss_mb() - before;
    printf("10000 x 10000: working memory %ld MB (budget %zu MB; all logits would be %zu GB)\n",
           grown, budget >> 20, ((size_t)SIDE * SIDE * 256 * 4) >> 30);
    ck_assert(grown < (long)(budget >> 20) + 200); /* + oneDNN's code and caches */
    isl_predict_options_free(o);
    free(img);
    isl_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("large");
    TCase *tc = tcase_create("large");
    tcase_set_timeout(tc, 7200);
    tcase_add_test(tc, ten_thousand_squared_in_bounded_memory);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* measure this process's memory */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
