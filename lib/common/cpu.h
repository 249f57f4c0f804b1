/* What the CPU can run, as oneDNN sees it (its effective ISA honours ONEDNN_MAX_CPU_ISA)
 * and as the CPU reports it (for isl's own intrinsics kernels). */
#ifndef ISL_CPU_H
#define ISL_CPU_H

#include <oneapi/dnnl/dnnl.h>

/* 1 if oneDNN's effective ISA includes isa (e.g. dnnl_cpu_isa_avx512_core_amx). */
int isl_cpu_has(dnnl_cpu_isa_t isa);

/* Channels per block of the blocked layout oneDNN has JIT kernels for on this ISA: 16
 * (nChw16c) with AVX-512; 8 (nChw8c) below it, where oneDNN 2.6 runs nChw16c
 * convolutions and poolings with its reference kernels, ~20x slower. */
int isl_cpu_block_channels(void);

/* 1 if the CPU executes AVX512-BF16 instructions. */
int isl_cpu_has_avx512_bf16(void);

#endif
