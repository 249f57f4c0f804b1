/* What the CPU can run, as oneDNN sees it (its effective ISA honours ONEDNN_MAX_CPU_ISA)
 * and as the CPU reports it (for isl's own intrinsics kernels). */
#ifndef ISL_CPU_H
#define ISL_CPU_H

#include <oneapi/dnnl/dnnl.h>

/* 1 if oneDNN's effective ISA includes isa (e.g. dnnl_cpu_isa_avx512_core_amx). */
int isl_cpu_has(dnnl_cpu_isa_t isa);

/* 1 if the CPU executes AVX512-BF16 instructions. */
int isl_cpu_has_avx512_bf16(void);

#endif
