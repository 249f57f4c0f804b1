/* numpy.pad's 'reflect' index, the mirror padding of the network's input (the spec): a
 * header so that the CLI's own input writer (tools/bioimageio.c) pads as prediction does. */
#ifndef ISL_REFLECT_H
#define ISL_REFLECT_H

/* Index i mirrored into [0, n) without repeating the edge (d c b | a b c d | c b a), for
 * any distance outside [0, n). */
static inline int isl_reflect_index(int i, int n)
{
    if (n == 1)
        return 0;
    int period = 2 * (n - 1);
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - i;
}

#endif
