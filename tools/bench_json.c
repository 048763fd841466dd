/* chat-bench: flat JSON object scanner (see bench_json.h). Strict enough to refuse what is not
 * JSON (so a broken frame is counted, not misread), lenient about nothing else. */
#include "bench_json.h"

#include <string.h>

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at the opening quote; returns the position after the closing quote, or NULL. */
static const char *scan_string(const char *p, const char *end, bool *escaped)
{
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c == '\\') {
            *escaped = true;
            if (p + 1 >= end)
                return NULL;
            p += 2;
            continue;
        }
        p++;
    }
    return NULL;
}

static const char *scan_number(const char *p, const char *end)
{
    const char *start = p;
    if (p < end && *p == '-')
        p++;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    if (p == digits)
        return NULL;
    if (p < end && *p == '.') {
        p++;
        const char *frac = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == frac)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *exp = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == exp)
            return NULL;
    }
    return p > start ? p : NULL;
}

static const char *scan_value(const char *p, const char *end, int depth, bench_json_kind *kind, bool *escaped);

/* p at '{' or '['; returns the position after the matching bracket. */
static const char *scan_container(const char *p, const char *end, int depth)
{
    if (depth > 64)
        return NULL;
    bool object = *p == '{';
    char close = object ? '}' : ']';
    p = skip_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        bench_json_kind k;
        bool esc = false;
        if (object) {
            if (p >= end || *p != '"')
                return NULL;
            p = scan_string(p, end, &esc);
            if (p == NULL)
                return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = skip_ws(p + 1, end);
        }
        p = scan_value(p, end, depth + 1, &k, &esc);
        if (p == NULL)
            return NULL;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == close)
            return p + 1;
        return NULL;
    }
}

static const char *scan_value(const char *p, const char *end, int depth, bench_json_kind *kind, bool *escaped)
{
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"': *kind = BENCH_JSON_STRING; return scan_string(p, end, escaped);
    case '{': *kind = BENCH_JSON_OBJECT; return scan_container(p, end, depth);
    case '[': *kind = BENCH_JSON_ARRAY; return scan_container(p, end, depth);
    case 't': *kind = BENCH_JSON_TRUE; return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f': *kind = BENCH_JSON_FALSE; return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n': *kind = BENCH_JSON_NULL; return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default: *kind = BENCH_JSON_NUMBER; return scan_number(p, end);
    }
}

int bench_json_scan(const char *text, size_t len, bench_json_member *out, int max)
{
    const char *end = text + len;
    const char *p = skip_ws(text, end);
    if (p >= end || *p != '{')
        return -1;
    p = skip_ws(p + 1, end);
    int n = 0;
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            bool kesc = false, vesc = false;
            if (p >= end || *p != '"')
                return -1;
            const char *key = p + 1;
            p = scan_string(p, end, &kesc);
            if (p == NULL)
                return -1;
            size_t key_len = (size_t)(p - 1 - key);
            p = skip_ws(p, end);
            if (p >= end || *p != ':')
                return -1;
            p = skip_ws(p + 1, end);
            const char *val = p;
            bench_json_kind kind;
            p = scan_value(p, end, 1, &kind, &vesc);
            if (p == NULL)
                return -1;
            if (n < max) {
                bench_json_member *m = &out[n++];
                m->key = key;
                m->key_len = key_len;
                m->kind = kind;
                m->escaped = vesc;
                if (kind == BENCH_JSON_STRING) {
                    m->val = val + 1;
                    m->val_len = (size_t)(p - val - 2);
                } else {
                    m->val = val;
                    m->val_len = (size_t)(p - val);
                }
            }
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            return -1;
        }
    }
    p = skip_ws(p, end);
    return p == end ? n : -1;
}

const bench_json_member *bench_json_get(const bench_json_member *m, int n, const char *key)
{
    size_t kl = strlen(key);
    for (int i = 0; i < n; i++)
        if (m[i].key_len == kl && memcmp(m[i].key, key, kl) == 0)
            return &m[i];
    return NULL;
}

bool bench_json_str_is(const bench_json_member *m, const char *s)
{
    size_t l = strlen(s);
    return m && m->kind == BENCH_JSON_STRING && m->val_len == l && memcmp(m->val, s, l) == 0;
}

bool bench_json_u64(const bench_json_member *m, uint64_t *out)
{
    if (m == NULL || m->kind != BENCH_JSON_NUMBER || m->val_len == 0 || m->val_len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < m->val_len; i++) {
        char c = m->val[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (uint64_t)(c - '0');
    }
    *out = v;
    return true;
}
