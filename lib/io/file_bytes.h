/* Reading a file's bytes directly, for the checks isl makes before or beside HDF5 (the
 * checksum record, the global heap of variable-length strings): exact reads at an
 * offset and the little-endian integers HDF5 and the record store. */
#ifndef ISL_FILE_BYTES_H
#define ISL_FILE_BYTES_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

/* Reads exactly n bytes at offset (0), or fails (-1, errno; EIO for a short file). */
static inline int isl_read_exact_at(int fd, void *buf, size_t n, off_t offset)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, offset);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EIO;
            return -1;
        }
        p += got;
        n -= (size_t)got;
        offset += got;
    }
    return 0;
}

/* The n-byte (n <= 8) little-endian unsigned integer at p. */
static inline uint64_t isl_load_le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

#endif
