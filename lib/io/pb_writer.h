/* A minimal Protocol Buffers encoder: just what writing an ONNX model needs (varints,
 * length-delimited fields, packed int64 and float arrays, nested messages).
 *
 * Why not libprotobuf-c: it needs C code generated from onnx.proto at build time (the
 * .proto vendored, protoc-c run by the build) to write one message type once; the wire
 * format used here is five rules and the output is checked by onnx's checker in tests.
 *
 * Nested messages are written into their own pb_buf and appended with pb_message, since
 * a length prefix precedes its bytes. Errors (out of memory) are sticky: every call after
 * the first failure does nothing, and pb_ok reports it once at the end. */
#ifndef ISL_PB_WRITER_H
#define ISL_PB_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef struct pb_buf {
    uint8_t *data;
    size_t size, cap;
    int failed;
} pb_buf;

void pb_free(pb_buf *b);
/* 1 if no append has failed (out of memory). */
int pb_ok(const pb_buf *b);

void pb_varint_field(pb_buf *b, int field, uint64_t value);   /* int32/int64/enum */
void pb_float_field(pb_buf *b, int field, float value);       /* fixed32 */
void pb_bytes_field(pb_buf *b, int field, const void *data, size_t size);
void pb_string_field(pb_buf *b, int field, const char *s);
/* Appends msg as a length-delimited field (a failed msg fails b). */
void pb_message(pb_buf *b, int field, const pb_buf *msg);
/* Appends fields already encoded in `fields` (a failed buffer fails b). */
void pb_append(pb_buf *b, const pb_buf *fields);
/* Packed repeated int64. */
void pb_packed_int64(pb_buf *b, int field, const int64_t *v, size_t count);

#endif
