/* Cold chunks: encoding (archive role), decoding and the cached reader (api role).
 * Writers and decoded chunks belong to one thread; the reader's cache is guarded by its mutex,
 * cached chunks are reference-counted so an evicted chunk lives on until its last reader is done. */
#include "wk_cold.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "chat_log.h"
#include "chat_map.h"
#include "chat_mem.h"

/* ------------------------------------------------------------------------------------------ */
/* Little helpers                                                                               */
/* ------------------------------------------------------------------------------------------ */

static chat_status failf(char *err, size_t errsz, chat_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static chat_status failf(char *err, size_t errsz, chat_status st, const char *fmt, ...)
{
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return st;
}

static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* Reads a varint at *p (< end); false when malformed or cut. */
static bool get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false;
}

static void put_le(uint8_t *out, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        out[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *in, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)in[i] << (8 * i);
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                       */
/* ------------------------------------------------------------------------------------------ */

void wk_cold_writer_begin(wk_cold_writer *w, const char *conv, int64_t from_us, int64_t until_us)
{
    memset(&w->h, 0, sizeof w->h);
    snprintf(w->h.conv, sizeof w->h.conv, "%s", conv);
    w->h.from_us = from_us;
    w->h.until_us = until_us;
    if (w->records.data)
        chat_buf_reset(&w->records);
}

bool wk_cold_writer_add(wk_cold_writer *w, const Chat__V1__Event *e, int64_t created_us, unsigned nulls)
{
    if (w->h.count > 0 && e->seq <= w->h.seq_hi)
        return false;
    Chat__V1__Event copy = *e;
    copy.conv = "";
    copy.deleted = false;
    copy.committed_ms = 0;
    copy.session = "";
    uint8_t v1[10], v2[10];
    ProtobufCMessageUnknownField extra[2] = {
        {.tag = WK_COLD_FIELD_CREATED_US,
         .wire_type = PROTOBUF_C_WIRE_TYPE_VARINT,
         .len = put_varint(v1, (uint64_t)created_us),
         .data = v1},
        {.tag = WK_COLD_FIELD_NULLS,
         .wire_type = PROTOBUF_C_WIRE_TYPE_VARINT,
         .len = put_varint(v2, nulls),
         .data = v2},
    };
    copy.base.n_unknown_fields = 2;
    copy.base.unknown_fields = extra;
    size_t len = chat__v1__event__get_packed_size(&copy);
    uint8_t prefix[10];
    size_t plen = put_varint(prefix, len);
    chat_buf_reserve(&w->records, plen + len);
    chat_buf_append(&w->records, (const char *)prefix, plen);
    chat__v1__event__pack(&copy, (uint8_t *)w->records.data + w->records.len);
    w->records.len += len;
    w->records.data[w->records.len] = '\0';
    if (w->h.count == 0)
        w->h.seq_lo = e->seq;
    w->h.seq_hi = e->seq;
    w->h.count++;
    return true;
}

size_t wk_cold_writer_raw_size(const wk_cold_writer *w)
{
    return WK_COLD_HEADER_FIXED + strlen(w->h.conv) + w->records.len;
}

chat_status wk_cold_writer_finish(wk_cold_writer *w, chat_buf *out, size_t *raw_len)
{
    size_t clen = strlen(w->h.conv);
    size_t raw = WK_COLD_HEADER_FIXED + clen + w->records.len;
    uint8_t *buf = malloc(raw);
    if (buf == NULL)
        return CHAT_ERR_NOMEM;
    memcpy(buf, WK_COLD_MAGIC, 8);
    put_le(buf + 8, WK_COLD_VERSION, 4);
    put_le(buf + 12, w->h.count, 4);
    put_le(buf + 16, w->h.seq_lo, 8);
    put_le(buf + 24, w->h.seq_hi, 8);
    put_le(buf + 32, (uint64_t)w->h.from_us, 8);
    put_le(buf + 40, (uint64_t)w->h.until_us, 8);
    put_le(buf + 48, clen, 2);
    memcpy(buf + WK_COLD_HEADER_FIXED, w->h.conv, clen);
    if (w->records.len)
        memcpy(buf + WK_COLD_HEADER_FIXED + clen, w->records.data, w->records.len);

    ZSTD_CCtx *cc = ZSTD_createCCtx();
    size_t bound = ZSTD_compressBound(raw);
    chat_buf_reserve(out, bound);
    size_t n = 0;
    if (cc) {
        ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, WK_COLD_ZSTD_LEVEL);
        ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
        ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1);
        n = ZSTD_compress2(cc, out->data + out->len, bound, buf, raw);
        ZSTD_freeCCtx(cc);
    }
    free(buf);
    if (cc == NULL || ZSTD_isError(n)) {
        LOG_ERROR("cold", "event=compress_failed conv=%s detail=\"%s\"", w->h.conv,
                  cc ? ZSTD_getErrorName(n) : "no context");
        return CHAT_ERR_INTERNAL;
    }
    out->len += n;
    out->data[out->len] = '\0';
    if (raw_len)
        *raw_len = raw;
    return CHAT_OK;
}

void wk_cold_writer_free(wk_cold_writer *w)
{
    chat_buf_free(&w->records);
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                     */
/* ------------------------------------------------------------------------------------------ */

void wk_cold_chunk_free(wk_cold_chunk *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        chat__v1__event__free_unpacked(c->events[i], NULL);
    free(c->events);
    free(c->created_us);
    free(c->nulls);
    free(c);
}

/* The chunk's bytes out of their one zstd frame (*raw, malloc'd, *raw_len bytes). */
static chat_status decompress_chunk(const void *data, size_t len, uint8_t **raw, size_t *raw_len, char *err,
                                    size_t errsz)
{
    if (len == 0 || ZSTD_findFrameCompressedSize(data, len) != len)
        return failf(err, errsz, CHAT_ERR_INVALID, "not exactly one zstd frame (%zu bytes)", len);
    unsigned long long n = ZSTD_getFrameContentSize(data, len);
    if (n == ZSTD_CONTENTSIZE_UNKNOWN || n == ZSTD_CONTENTSIZE_ERROR || n < WK_COLD_HEADER_FIXED ||
        n > WK_COLD_RAW_LIMIT)
        return failf(err, errsz, CHAT_ERR_INVALID, "zstd frame without a usable content size");
    uint8_t *buf = malloc((size_t)n);
    if (buf == NULL)
        return failf(err, errsz, CHAT_ERR_NOMEM, "out of memory (%llu bytes)", n);
    size_t got = ZSTD_decompress(buf, (size_t)n, data, len);
    if (ZSTD_isError(got) || got != n) {
        free(buf);
        return failf(err, errsz, CHAT_ERR_INVALID, "zstd: %s", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
    }
    *raw = buf;
    *raw_len = (size_t)n;
    return CHAT_OK;
}

/* The fixed header and the conversation id into c->h; *records points past them. */
static chat_status decode_header(const uint8_t *buf, size_t raw, wk_cold_chunk *c, const uint8_t **records, char *err,
                                 size_t errsz)
{
    if (memcmp(buf, WK_COLD_MAGIC, 8) != 0)
        return failf(err, errsz, CHAT_ERR_INVALID, "bad magic");
    if (get_le(buf + 8, 4) != WK_COLD_VERSION)
        return failf(err, errsz, CHAT_ERR_INVALID, "unknown chunk version %" PRIu64, get_le(buf + 8, 4));
    c->h.count = (uint32_t)get_le(buf + 12, 4);
    c->h.seq_lo = get_le(buf + 16, 8);
    c->h.seq_hi = get_le(buf + 24, 8);
    c->h.from_us = (int64_t)get_le(buf + 32, 8);
    c->h.until_us = (int64_t)get_le(buf + 40, 8);
    size_t clen = (size_t)get_le(buf + 48, 2);
    if (clen == 0 || clen > CHAT_ID_MAX || WK_COLD_HEADER_FIXED + clen > raw ||
        !chat_id_valid_n((const char *)buf + WK_COLD_HEADER_FIXED, clen))
        return failf(err, errsz, CHAT_ERR_INVALID, "bad conversation id in the header");
    memcpy(c->h.conv, buf + WK_COLD_HEADER_FIXED, clen);
    c->h.conv[clen] = '\0';
    if (c->h.count == 0 || c->h.count > raw || c->h.seq_lo > c->h.seq_hi)
        return failf(err, errsz, CHAT_ERR_INVALID, "bad count or seq range in the header");
    *records = buf + WK_COLD_HEADER_FIXED + clen;
    return CHAT_OK;
}

/* Record i at *p (advanced past it) into c: the event and its created_us and nulls fields, in
 * seq order within the header's range. */
static chat_status decode_record(wk_cold_chunk *c, uint32_t i, const uint8_t **p, const uint8_t *end, char *err,
                                 size_t errsz)
{
    uint64_t rlen;
    if (!get_varint(p, end, &rlen) || rlen > (uint64_t)(end - *p))
        return failf(err, errsz, CHAT_ERR_INVALID, "record %u is cut", i);
    Chat__V1__Event *e = chat__v1__event__unpack(NULL, (size_t)rlen, *p);
    if (e == NULL)
        return failf(err, errsz, CHAT_ERR_INVALID, "record %u does not decode", i);
    c->events[c->n++] = e;
    *p += rlen;
    bool have_created = false;
    for (unsigned k = 0; k < e->base.n_unknown_fields; k++) {
        const ProtobufCMessageUnknownField *f = &e->base.unknown_fields[k];
        const uint8_t *fp = f->data;
        uint64_t v;
        if (f->wire_type != PROTOBUF_C_WIRE_TYPE_VARINT || !get_varint(&fp, f->data + f->len, &v))
            continue;
        if (f->tag == WK_COLD_FIELD_CREATED_US) {
            c->created_us[i] = (int64_t)v;
            have_created = true;
        } else if (f->tag == WK_COLD_FIELD_NULLS) {
            c->nulls[i] = (unsigned)v;
        }
    }
    if (!have_created)
        return failf(err, errsz, CHAT_ERR_INVALID, "record %u has no created_us", i);
    if ((i == 0 && e->seq != c->h.seq_lo) || (i > 0 && e->seq <= c->events[i - 1]->seq) || e->seq > c->h.seq_hi)
        return failf(err, errsz, CHAT_ERR_INVALID, "record %u: seq %" PRIu64 " out of order or outside the header's range",
                     i, e->seq);
    return CHAT_OK;
}

chat_status wk_cold_chunk_decode(const void *data, size_t len, wk_cold_chunk **out, char *err, size_t errsz)
{
    uint8_t *buf = NULL;
    size_t raw = 0;
    chat_status st = decompress_chunk(data, len, &buf, &raw, err, errsz);
    if (st != CHAT_OK)
        return st;
    wk_cold_chunk *c = calloc(1, sizeof *c);
    if (c == NULL) {
        free(buf);
        return failf(err, errsz, CHAT_ERR_NOMEM, "out of memory");
    }
    const uint8_t *p = NULL, *end = buf + raw;
    st = decode_header(buf, raw, c, &p, err, errsz);
    if (st == CHAT_OK) {
        c->events = calloc(c->h.count, sizeof *c->events);
        c->created_us = calloc(c->h.count, sizeof *c->created_us);
        c->nulls = calloc(c->h.count, sizeof *c->nulls);
        if (!c->events || !c->created_us || !c->nulls)
            st = failf(err, errsz, CHAT_ERR_NOMEM, "out of memory");
    }
    for (uint32_t i = 0; st == CHAT_OK && i < c->h.count; i++)
        st = decode_record(c, i, &p, end, err, errsz);
    if (st == CHAT_OK && (p != end || c->events[c->n - 1]->seq != c->h.seq_hi))
        st = failf(err, errsz, CHAT_ERR_INVALID, "trailing bytes or last seq differs from the header");
    if (st != CHAT_OK) {
        free(buf);
        wk_cold_chunk_free(c);
        return st;
    }
    c->mem = sizeof *c + raw * 2 + c->n * (sizeof(Chat__V1__Event) + sizeof(void *) + 64);
    free(buf);
    *out = c;
    return CHAT_OK;
}

bool wk_cold_chunk_matches(const wk_cold_chunk *c, const wk_cold_ref *ref, char *err, size_t errsz)
{
    if (strcmp(c->h.conv, ref->conv) != 0 || c->h.seq_lo != ref->seq_lo || c->h.seq_hi != ref->seq_hi ||
        c->n != ref->rows) {
        failf(err, errsz, CHAT_ERR_INVALID,
              "chunk %s@%" PRIu64 " holds %s seq %" PRIu64 "-%" PRIu64 " (%zu events), the index says %s %" PRIu64
              "-%" PRIu64 " (%u)",
              ref->url, ref->offset, c->h.conv, c->h.seq_lo, c->h.seq_hi, c->n, ref->conv, ref->seq_lo, ref->seq_hi,
              ref->rows);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Cached reader                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct wk_cold_entry {
    char *key; /* url#offset */
    wk_cold_chunk *chunk;
    int refs;
    bool cached; /* in the map and the LRU list */
    struct wk_cold_entry *prev, *next;
} wk_cold_entry;

struct wk_cold {
    wk_objstore *store;
    size_t cap;
    pthread_mutex_t lock;
    chat_map *map;
    wk_cold_entry *head, *tail; /* most recently used first */
    size_t bytes, entries;
    uint64_t hits, misses;
    atomic_uint_fast64_t *m_hit, *m_miss, *m_err;
};

chat_status wk_cold_create(const chat_cfg *cfg, size_t cache_bytes, chat_metrics *metrics, wk_cold **out)
{
    wk_cold *c = calloc(1, sizeof *c);
    if (c == NULL)
        return CHAT_ERR_NOMEM;
    chat_status st = wk_objstore_create(cfg, &c->store);
    if (st != CHAT_OK) {
        free(c);
        return st;
    }
    c->cap = cache_bytes;
    c->map = chat_map_create();
    pthread_mutex_init(&c->lock, NULL);
    if (metrics) {
        const char *help = "Cold chunks read by history and sync, by whether the cache had them.";
        c->m_hit = chat_metrics_counter(metrics, "chat_cold_chunk_reads_total", "cache=\"hit\"", help);
        c->m_miss = chat_metrics_counter(metrics, "chat_cold_chunk_reads_total", "cache=\"miss\"", help);
        c->m_err = chat_metrics_counter(metrics, "chat_cold_chunk_errors_total", NULL,
                                        "Cold chunk reads that failed (storage unavailable, missing or damaged).");
    }
    *out = c;
    return CHAT_OK;
}

static void unlink_entry(wk_cold *c, wk_cold_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(wk_cold *c, wk_cold_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

static void free_entry(wk_cold_entry *e)
{
    wk_cold_chunk_free(e->chunk);
    free(e->key);
    free(e);
}

/* Takes e out of the cache (caller holds the lock); frees it when nobody reads it. */
static void evict(wk_cold *c, wk_cold_entry *e)
{
    unlink_entry(c, e);
    chat_map_remove(c->map, e->key);
    e->cached = false;
    c->bytes -= e->chunk->mem;
    c->entries--;
    if (e->refs == 0)
        free_entry(e);
}

void wk_cold_destroy(wk_cold *c)
{
    if (c == NULL)
        return;
    while (c->head)
        evict(c, c->head);
    chat_map_destroy(c->map);
    pthread_mutex_destroy(&c->lock);
    wk_objstore_destroy(c->store);
    free(c);
}

chat_status wk_cold_read(wk_cold *c, const wk_cold_ref *ref, const wk_cold_chunk **out, char *err, size_t errsz)
{
    char key[WK_OBJSTORE_URL_MAX + 32];
    snprintf(key, sizeof key, "%s#%" PRIu64, ref->url, ref->offset);
    pthread_mutex_lock(&c->lock);
    wk_cold_entry *e = chat_map_get(c->map, key);
    if (e) {
        e->refs++;
        unlink_entry(c, e);
        push_front(c, e);
        c->hits++;
        pthread_mutex_unlock(&c->lock);
        if (c->m_hit)
            atomic_fetch_add(c->m_hit, 1);
        *out = e->chunk;
        return CHAT_OK;
    }
    c->misses++;
    pthread_mutex_unlock(&c->lock);
    if (c->m_miss)
        atomic_fetch_add(c->m_miss, 1);

    /* outside the lock: other lanes read other chunks meanwhile */
    chat_buf bytes = {0};
    wk_cold_chunk *chunk = NULL;
    chat_status st = wk_objstore_get(c->store, ref->url, ref->offset, ref->length, &bytes, err, errsz);
    if (st == CHAT_OK) {
        char why[256];
        st = wk_cold_chunk_decode(bytes.data, bytes.len, &chunk, why, sizeof why);
        if (st != CHAT_OK)
            failf(err, errsz, st, "chunk %s@%" PRIu64 " is damaged: %s", ref->url, ref->offset, why);
        else if (!wk_cold_chunk_matches(chunk, ref, err, errsz))
            st = CHAT_ERR_INVALID;
    }
    chat_buf_free(&bytes);
    if (st != CHAT_OK) {
        wk_cold_chunk_free(chunk);
        if (c->m_err)
            atomic_fetch_add(c->m_err, 1);
        return st;
    }

    e = chat_xcalloc(1, sizeof *e);
    e->key = chat_xstrdup(key);
    e->chunk = chunk;
    e->refs = 1;
    chunk->entry = e;
    pthread_mutex_lock(&c->lock);
    wk_cold_entry *other = chat_map_get(c->map, key);
    if (other) {
        /* another lane read it meanwhile: use that one */
        other->refs++;
        pthread_mutex_unlock(&c->lock);
        free_entry(e);
        *out = other->chunk;
        return CHAT_OK;
    }
    if (chunk->mem <= c->cap) {
        e->cached = true;
        chat_map_put(c->map, e->key, e, NULL);
        push_front(c, e);
        c->bytes += chunk->mem;
        c->entries++;
        while (c->bytes > c->cap && c->tail && c->tail != e)
            evict(c, c->tail);
    }
    pthread_mutex_unlock(&c->lock);
    *out = chunk;
    return CHAT_OK;
}

void wk_cold_release(wk_cold *c, const wk_cold_chunk *chunk)
{
    if (chunk == NULL)
        return;
    wk_cold_entry *e = chunk->entry;
    pthread_mutex_lock(&c->lock);
    bool drop = --e->refs == 0 && !e->cached;
    pthread_mutex_unlock(&c->lock);
    if (drop)
        free_entry(e);
}

void wk_cold_stats(wk_cold *c, uint64_t *hits, uint64_t *misses, size_t *bytes, size_t *entries)
{
    pthread_mutex_lock(&c->lock);
    if (hits)
        *hits = c->hits;
    if (misses)
        *misses = c->misses;
    if (bytes)
        *bytes = c->bytes;
    if (entries)
        *entries = c->entries;
    pthread_mutex_unlock(&c->lock);
}
