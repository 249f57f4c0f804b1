/* Memory descriptors that the inference and training engines both describe. */
#ifndef ISL_DNNL_MD_H
#define ISL_DNNL_MD_H

#include <oneapi/dnnl/dnnl.h>

/* A 4-D f32 tensor [a, b, c, d] in the given format. */
static inline dnnl_memory_desc_t isl_md4(int a, int b, int c, int d, dnnl_format_tag_t tag)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {a, b, c, d};
    dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, tag);
    return md;
}

/* A 1-D f32 vector (biases, per-channel parameters). */
static inline dnnl_memory_desc_t isl_md_vec(int n)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {n};
    dnnl_memory_desc_init_by_tag(&md, 1, dims, dnnl_f32, dnnl_x);
    return md;
}

#endif
