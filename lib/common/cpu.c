#include "cpu.h"

/* oneDNN's ISA values are bit sets: an ISA includes another when it has all its bits. */
int isl_cpu_has(dnnl_cpu_isa_t isa)
{
    return ((unsigned)dnnl_get_effective_cpu_isa() & (unsigned)isa) == (unsigned)isa;
}

int isl_cpu_block_channels(void)
{
    return isl_cpu_has(dnnl_cpu_isa_avx512_core) || isl_cpu_has(dnnl_cpu_isa_avx512_mic) ? 16 : 8;
}

int isl_cpu_has_avx512_bf16(void)
{
    __builtin_cpu_init(); /* idempotent; needed if called before libgcc's constructor */
    return __builtin_cpu_supports("avx512bf16") != 0;
}
