/* The library's one seeded generator: splitmix64 (Steele, Lea and Flood 2014), tiny and
 * the same on every platform. Initial weights, training crops and isl_trainer_random
 * all draw from it (the CLI's crop seeds and the Pearson sample too), so a seed means the
 * same everywhere. */
#ifndef ISL_RNG_H
#define ISL_RNG_H

#include <stdint.h>

/* The step by which each draw advances the state (2^64 / golden ratio). */
#define ISL_SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ULL

/* Advances *state and returns the next 64 random bits. */
static inline uint64_t isl_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += ISL_SPLITMIX64_GAMMA);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Draw i (0-based) of the stream seeded with seed, without drawing the ones before it:
 * splitmix64's state only advances by the constant. */
static inline uint64_t isl_splitmix64_draw(uint64_t seed, uint64_t i)
{
    uint64_t state = seed + i * ISL_SPLITMIX64_GAMMA;
    return isl_splitmix64(&state);
}

/* A uniform value in [0, 1) from the top 53 of 64 random bits. */
static inline double isl_uniform53(uint64_t bits)
{
    return (double)(bits >> 11) * 0x1.0p-53;
}

#endif
