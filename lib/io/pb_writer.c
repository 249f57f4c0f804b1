#include "pb_writer.h"

#include <stdlib.h>
#include <string.h>

enum { WIRE_VARINT = 0, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

void pb_free(pb_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int pb_ok(const pb_buf *b) { return !b->failed; }

static int reserve(pb_buf *b, size_t more)
{
    if (b->failed)
        return 0;
    if (more > SIZE_MAX - b->size) {
        b->failed = 1;
        return 0;
    }
    if (b->size + more <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->size + more)
        cap = cap > SIZE_MAX / 2 ? b->size + more : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

static void append(pb_buf *b, const void *data, size_t size)
{
    if (size && reserve(b, size)) {
        memcpy(b->data + b->size, data, size);
        b->size += size;
    }
}

static void varint(pb_buf *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            tmp[n] |= 0x80;
        n++;
    } while (v);
    append(b, tmp, n);
}

static void tag(pb_buf *b, int field, int wire) { varint(b, ((uint64_t)field << 3) | (unsigned)wire); }

void pb_varint_field(pb_buf *b, int field, uint64_t value)
{
    tag(b, field, WIRE_VARINT);
    varint(b, value);
}

void pb_float_field(pb_buf *b, int field, float value)
{
    uint32_t u;
    memcpy(&u, &value, sizeof(u));
    uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    tag(b, field, WIRE_FIXED32);
    append(b, le, sizeof(le));
}

void pb_bytes_field(pb_buf *b, int field, const void *data, size_t size)
{
    tag(b, field, WIRE_LEN);
    varint(b, size);
    append(b, data, size);
}

void pb_string_field(pb_buf *b, int field, const char *s) { pb_bytes_field(b, field, s, strlen(s)); }

void pb_message(pb_buf *b, int field, const pb_buf *msg)
{
    if (msg->failed)
        b->failed = 1;
    else
        pb_bytes_field(b, field, msg->data, msg->size);
}

void pb_append(pb_buf *b, const pb_buf *fields)
{
    if (fields->failed)
        b->failed = 1;
    else
        append(b, fields->data, fields->size);
}

void pb_packed_int64(pb_buf *b, int field, const int64_t *v, size_t count)
{
    pb_buf body = {0};
    for (size_t i = 0; i < count; i++)
        varint(&body, (uint64_t)v[i]); /* negative int64: ten bytes, two's complement */
    pb_message(b, field, &body);
    pb_free(&body);
}
