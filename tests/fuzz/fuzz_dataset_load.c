/* libFuzzer harness: the dataset loader (isl_dataset_load's parsing and validation,
 * lib/train/dataset_io.c) on arbitrary bytes read as an HDF5 file image in memory (no
 * disk I/O per input); a loaded dataset is read back through the public accessors. */
#include "dataset.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    isl_dataset *d = NULL;
    if (size == 0 || isl_dataset_load_image("fuzz-dataset.h5", data, size, &d) != ISL_OK)
        return 0;
    int nz = isl_dataset_num_z(d);
    volatile double sum = 0;
    for (int w = 0; w < isl_dataset_num_wells(d); w++) {
        int h = 0, wd = 0;
        if (isl_dataset_well_size(d, w, &h, &wd) != ISL_OK)
            abort(); /* a loaded well must have a size */
        const float *stack = isl_dataset_well_stack(d, w);
        for (size_t i = 0; i < (size_t)nz * h * wd; i++)
            sum += stack[i];
        for (int l = 0; l < isl_dataset_num_labels(d); l++) {
            const float *values;
            const uint8_t *mask;
            if (isl_dataset_well_target(d, w, isl_dataset_label_name(d, l), &values, &mask) !=
                ISL_OK)
                continue; /* this well lacks the label */
            for (size_t i = 0; i < (size_t)h * wd; i++)
                sum += mask[i] ? values[i] : 0;
        }
    }
    (void)sum;
    isl_dataset_free(d);
    return 0;
}
