/* libFuzzer harness: the model loader (isl_model_load's parsing and validation,
 * lib/io/model_io.c, then the model built around the parameters) on arbitrary bytes read
 * as an HDF5 file image in memory (no disk I/O per input). */
#include "model.h"
#include "model_io.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    isl_params p;
    if (size == 0 || isl_model_read_h5_image("fuzz-model.h5", data, size, &p) != ISL_OK)
        return 0;
    isl_model *m = NULL;
    if (isl_model_from_params(&p, &m) != ISL_OK)
        return 0;
    for (int h = 0; h < isl_model_num_heads(m); h++)
        if (!isl_model_head_name(m, h) || isl_model_head_channels(m, h) <= 0)
            abort(); /* a loaded model must describe itself */
    isl_model_free(m);
    return 0;
}
