/* The checksum record in the HDF5 user block (lib/io/h5_checksum.h). */
#define _XOPEN_SOURCE 700 /* pread */

#include "h5_checksum.h"

#include "error.h"
#include "file_bytes.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* One copy of the record, little-endian:
 *   0  magic "ISLSUM1\0"       8 bytes
 *   8  algorithm, NUL-padded  16 bytes ("xxh3-128")
 *  24  content offset          8 bytes (ISL_SUM_BLOCK)
 *  32  content length          8 bytes (file size - ISL_SUM_BLOCK)
 *  40  digest                 16 bytes (XXH128 canonical form, big-endian)
 *  56  XXH64 of bytes 0..55    8 bytes (the record's own check)
 * The rest of the block is zero. */
#define RECORD_BYTES 64
#define RECORD_SELF 56
#define COPY_OFFSET 256 /* second copy */
#define READ_CHUNK (1 << 20)

static const char magic[8] = "ISLSUM1";
static const unsigned char hdf5_signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

typedef struct sum_record {
    uint64_t offset, length;
    unsigned char digest[16];
} sum_record;

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void encode(unsigned char *p, const sum_record *r)
{
    memset(p, 0, RECORD_BYTES);
    memcpy(p, magic, sizeof(magic));
    memcpy(p + 8, ISL_SUM_ALGORITHM, sizeof(ISL_SUM_ALGORITHM) - 1);
    put_u64(p + 24, r->offset);
    put_u64(p + 32, r->length);
    memcpy(p + 40, r->digest, 16);
    put_u64(p + RECORD_SELF, XXH64(p, RECORD_SELF, 0));
}

/* 1: a valid record; 0: no magic here; -1: the magic, but the record is damaged. */
static int decode(const unsigned char *p, sum_record *r)
{
    if (memcmp(p, magic, sizeof(magic)) != 0)
        return 0;
    if (isl_load_le(p + RECORD_SELF, 8) != XXH64(p, RECORD_SELF, 0))
        return -1;
    char algorithm[17] = {0};
    memcpy(algorithm, p + 8, 16);
    if (strcmp(algorithm, ISL_SUM_ALGORITHM) != 0)
        return -1;
    r->offset = isl_load_le(p + 24, 8);
    r->length = isl_load_le(p + 32, 8);
    memcpy(r->digest, p + 40, 16);
    return r->offset == ISL_SUM_BLOCK ? 1 : -1;
}

static void digest_of(XXH128_hash_t h, unsigned char out[16])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    memcpy(out, c.digest, 16);
}

static void hex(const unsigned char *d, char out[33])
{
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

void isl_sum_seal(unsigned char *image, size_t size)
{
    sum_record r = {.offset = ISL_SUM_BLOCK, .length = size - ISL_SUM_BLOCK};
    digest_of(XXH3_128bits(image + ISL_SUM_BLOCK, size - ISL_SUM_BLOCK), r.digest);
    memset(image, 0, ISL_SUM_BLOCK);
    encode(image, &r);
    encode(image + COPY_OFFSET, &r);
}

/* XXH3-128 of length bytes of fd from offset, read in chunks. */
static isl_status hash_content(int fd, const char *path, uint64_t offset, uint64_t length,
                               unsigned char digest[16])
{
    unsigned char *buf = malloc(READ_CHUNK);
    XXH3_state_t *state = XXH3_createState();
    isl_status st = ISL_OK;
    if (!buf || !state || XXH3_128bits_reset(state) != XXH_OK) {
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory verifying the checksum", path);
        goto cleanup;
    }
    while (length > 0) {
        size_t n = length < READ_CHUNK ? (size_t)length : READ_CHUNK;
        if (isl_read_exact_at(fd, buf, n, (off_t)offset) != 0) {
            st = isl_fail(ISL_ERROR_IO, "%s: cannot read: %s", path, strerror(errno));
            goto cleanup;
        }
        XXH3_128bits_update(state, buf, n);
        offset += n;
        length -= n;
    }
    digest_of(XXH3_128bits_digest(state), digest);
cleanup:
    XXH3_freeState(state);
    free(buf);
    return st;
}

isl_status isl_sum_verify_fd(int fd, const char *path, int *verified)
{
    unsigned char block[ISL_SUM_BLOCK];
    struct stat sb;
    *verified = 0;
    if (fstat(fd, &sb) != 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot stat: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size < ISL_SUM_BLOCK)
        return ISL_OK; /* too short for a record; HDF5 will say what it is */
    if (isl_read_exact_at(fd, block, sizeof(block), 0) != 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot read: %s", path, strerror(errno));
    if (memcmp(block, hdf5_signature, sizeof(hdf5_signature)) == 0)
        return ISL_OK; /* HDF5 at offset 0: no user block, no record */

    /* Both copies intact and equal, the rest of the block zero: any flipped bit in the
     * block is reported too, and a damaged magic in one copy is not mistaken for a file
     * without a record. */
    sum_record r, copy;
    int first = decode(block, &r), second = decode(block + COPY_OFFSET, &copy);
    if (first == 0 && second == 0)
        return ISL_OK; /* a user block of some other program */
    int padding_zero = 1;
    for (size_t i = 0; i < ISL_SUM_BLOCK; i++)
        if ((i % COPY_OFFSET) >= RECORD_BYTES && block[i])
            padding_zero = 0;
    if (first != 1 || second != 1 || memcmp(block, block + COPY_OFFSET, RECORD_BYTES) != 0 ||
        !padding_zero)
        return isl_fail(ISL_ERROR_DAMAGED,
                        "%s: damaged file: its checksum record (first %d bytes) is corrupt",
                        path, ISL_SUM_BLOCK);
    uint64_t have = (uint64_t)sb.st_size - ISL_SUM_BLOCK;
    if (have != r.length)
        return isl_fail(ISL_ERROR_DAMAGED,
                        "%s: damaged file: expected %" PRIu64 " bytes after the checksum record, "
                        "found %" PRIu64 " (%s)",
                        path, r.length, have, have < r.length ? "truncated" : "extended");
    unsigned char digest[16];
    ISL_CHECK(hash_content(fd, path, ISL_SUM_BLOCK, have, digest));
    if (memcmp(digest, r.digest, sizeof(digest)) != 0) {
        char want[33], got[33];
        hex(r.digest, want);
        hex(digest, got);
        return isl_fail(ISL_ERROR_DAMAGED,
                        "%s: damaged file: %s checksum mismatch (expected %s, found %s)", path,
                        ISL_SUM_ALGORITHM, want, got);
    }
    *verified = 1;
    return ISL_OK;
}
