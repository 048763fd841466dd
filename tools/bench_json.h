/* chat-bench: a scanner for the flat JSON objects the gateway sends. It finds the top-level
 * members of one object without building a tree or copying: each value is a slice of the input
 * (strings without their quotes and with escapes left as they are; objects and arrays whole).
 * Enough for ids, numbers and bodies the bench wrote itself. Any thread, no state. */
#ifndef BENCH_JSON_H
#define BENCH_JSON_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum bench_json_kind {
    BENCH_JSON_STRING = 's',
    BENCH_JSON_NUMBER = 'n',
    BENCH_JSON_OBJECT = 'o',
    BENCH_JSON_ARRAY = 'a',
    BENCH_JSON_TRUE = 't',
    BENCH_JSON_FALSE = 'f',
    BENCH_JSON_NULL = 'z',
} bench_json_kind;

typedef struct bench_json_member {
    const char *key; /* not NUL-terminated */
    size_t key_len;
    const char *val; /* not NUL-terminated; a string without its quotes */
    size_t val_len;
    bench_json_kind kind;
    bool escaped; /* a string value holding a backslash escape */
} bench_json_member;

/* Scans the object text[0..len) into out (at most max members; further members are checked and
 * skipped). Returns the number of members stored, or -1 when the text is not one JSON object. */
int bench_json_scan(const char *text, size_t len, bench_json_member *out, int max);

/* The member named key, or NULL. */
const bench_json_member *bench_json_get(const bench_json_member *m, int n, const char *key);

/* True when member m is a string equal to s. */
bool bench_json_str_is(const bench_json_member *m, const char *s);

/* A non-negative integer value (a number without sign, fraction or exponent); false otherwise. */
bool bench_json_u64(const bench_json_member *m, uint64_t *out);

#endif
