/* Content checksums of the HDF5 files isl writes (models, datasets, checkpoints), kept in
 * the file's HDF5 user block so that the file stays a plain HDF5 file for every other
 * reader (docs/security.md).
 *
 * The writer reserves a user block of ISL_SUM_BLOCK bytes (H5Pset_userblock); HDF5
 * itself starts at that offset and never reads the block. isl_sum_seal puts a record
 * there: magic "ISLSUM1", the algorithm, the length of the content after the block and
 * its XXH3-128 digest, protected by an XXH64 of the record itself; the record is stored
 * twice (offsets 0 and 256) so that damage to one copy is still told apart from a file
 * without a record, and the rest of the block is zero. The reader verifies the block and
 * the content before HDF5 opens the file: any changed byte is reported. */
#ifndef ISL_H5_CHECKSUM_H
#define ISL_H5_CHECKSUM_H

#include "isl.h"

#include <stddef.h>

#define ISL_SUM_BLOCK 512
#define ISL_SUM_ALGORITHM "xxh3-128"

/* Fills image[0, ISL_SUM_BLOCK) with the record of image[ISL_SUM_BLOCK, size). */
void isl_sum_seal(unsigned char *image, size_t size);

/* Checks the open file fd (path names it in messages) against its record before anything
 * parses it. ISL_OK with *verified = 1 when the record matches, or *verified = 0 when
 * the file has no record (written by another program or by isl < 0.7).
 * ISL_ERROR_DAMAGED when the length or the digest differs from the record, or the record
 * itself is damaged (the message names the file and gives expected and found values);
 * ISL_ERROR_IO when the file cannot be read. */
isl_status isl_sum_verify_fd(int fd, const char *path, int *verified);

#endif
