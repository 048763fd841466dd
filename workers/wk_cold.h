/* The cold tier's chunks: the format (one zstd frame per conversation and partition, a header and
 * chat.v1.Event records, below and in docs/storage.md), the writer (archive role) and the cached
 * reader (api role: range GET, decode, check against the index row, LRU of CHAT_ARCHIVE_CACHE_MB).
 * The reader is shared by every api lane (any thread); writers and decoded chunks belong to one
 * thread. */
#ifndef WK_COLD_H
#define WK_COLD_H
#include <stddef.h>
#include <stdint.h>

#include "chat.pb-c.h"
#include "chat_buf.h"
#include "chat_config.h"
#include "chat_id.h"
#include "chat_metrics.h"
#include "chat_status.h"
#include "wk_objstore.h"

/* Chunk format. One zstd frame (content size and checksum flags set) that decompresses to:
 *
 *   offset  size  field (integers little-endian)
 *   0       8     magic "CHATCHK1"
 *   8       4     version (1)
 *   12      4     count: number of events
 *   16      8     seq_lo: seq of the first event
 *   24      8     seq_hi: seq of the last event
 *   32      8     from_us: start of the partition's span, microseconds since the Unix epoch
 *   40      8     until_us: end of the span (exclusive)
 *   48      2     L: length of the conversation id
 *   50      L     the conversation id
 *   then count times: a varint length N, then N bytes of a chat.v1.Event (schema/chat.proto)
 *   without conv (it is in the header), with two fields chat.proto does not define, which
 *   protobuf readers skip: 100 created_us (varint: created_at to the microsecond) and 101 nulls
 *   (varint bit set: WK_COLD_NULL_*), so a restore gives back every column exactly. */

#define WK_COLD_MAGIC "CHATCHK1"
#define WK_COLD_VERSION 1
#define WK_COLD_HEADER_FIXED 50
#define WK_COLD_CHUNK_MAX_ROWS 5000             /* a conversation's events of one partition are split past this */
#define WK_COLD_CHUNK_MAX_RAW (2 * 1024 * 1024) /* ... or past this many bytes before compression */
#define WK_COLD_RAW_LIMIT (64 * 1024 * 1024)    /* a chunk that claims to decompress larger is refused */
#define WK_COLD_ZSTD_LEVEL 6
#define WK_COLD_FIELD_CREATED_US 100
#define WK_COLD_FIELD_NULLS 101

/* Columns of `messages` that are SQL NULL in a row (the Event has "" or 0 there). */
enum {
    WK_COLD_NULL_META = 1 << 0,
    WK_COLD_NULL_TARGET = 1 << 1,
    WK_COLD_NULL_EMOJI = 1 << 2,
    WK_COLD_NULL_REACTION_ON = 1 << 3,
};

typedef struct wk_cold_header {
    char conv[CHAT_ID_MAX + 1];
    uint32_t count;
    uint64_t seq_lo, seq_hi;
    int64_t from_us, until_us;
} wk_cold_header;

/* ------------------------------------------------------------------------------------------ */
/* Writing (the archive role)                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Builds one chunk. Zero-initialise, then begin, add events in ascending seq, finish, free. */
typedef struct wk_cold_writer {
    wk_cold_header h;
    chat_buf records; /* varint-prefixed Event records */
} wk_cold_writer;

void wk_cold_writer_begin(wk_cold_writer *w, const char *conv, int64_t from_us, int64_t until_us);
/* Appends one event (e->conv, deleted, committed_ms and session are not stored). False (nothing
 * added) when seq is not above the last one. */
bool wk_cold_writer_add(wk_cold_writer *w, const Chat__V1__Event *e, int64_t created_us, unsigned nulls);
/* Bytes of the chunk before compression so far (header included). */
size_t wk_cold_writer_raw_size(const wk_cold_writer *w);
/* Compresses header + records into one zstd frame appended to out; *raw_len gets the size
 * before compression. The writer can begin again afterwards. */
chat_status wk_cold_writer_finish(wk_cold_writer *w, chat_buf *out, size_t *raw_len);
void wk_cold_writer_free(wk_cold_writer *w);

/* ------------------------------------------------------------------------------------------ */
/* Reading                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* A decoded chunk. events[i] are protobuf-c messages owned by the chunk: their conv is "" (take
 * h.conv) and they carry the two extra fields as unknown fields, so copy an event before putting
 * it into a reply and clear base.n_unknown_fields / base.unknown_fields in the copy. */
typedef struct wk_cold_chunk {
    wk_cold_header h;
    size_t n;
    Chat__V1__Event **events; /* seq ascending */
    int64_t *created_us;
    unsigned *nulls;
    size_t mem;                  /* approximate bytes held, for the cache */
    struct wk_cold_entry *entry; /* private: the cache entry that holds it (NULL: not cached) */
} wk_cold_chunk;

/* Decodes one chunk (exactly one zstd frame of len bytes) and checks it: magic, version, sizes,
 * the zstd checksum, count and seq range against the events, seqs strictly ascending.
 * *out set only on CHAT_OK (free with wk_cold_chunk_free); CHAT_ERR_INVALID and a line in err
 * otherwise. */
chat_status wk_cold_chunk_decode(const void *data, size_t len, wk_cold_chunk **out, char *err, size_t errsz);
/* NULL-safe; only for chunks from wk_cold_chunk_decode (cached ones go back with wk_cold_release). */
void wk_cold_chunk_free(wk_cold_chunk *c);

/* Where a chunk is and what its index row says about it (archive_chunks + archive_objects). */
typedef struct wk_cold_ref {
    const char *url;
    uint64_t offset, length;
    const char *conv;
    uint64_t seq_lo, seq_hi;
    uint32_t rows;
} wk_cold_ref;

/* True when the decoded chunk is the one ref describes (conversation, seq range, rows). */
bool wk_cold_chunk_matches(const wk_cold_chunk *c, const wk_cold_ref *ref, char *err, size_t errsz);

typedef struct wk_cold wk_cold;

/* A reader with its own object store (cfg's S3 settings) and a cache of cache_bytes of decoded
 * chunks (0: none). Counters chat_cold_chunk_reads_total{cache="hit"|"miss"} and
 * chat_cold_chunk_errors_total go to metrics when not NULL. Main thread, at start. */
chat_status wk_cold_create(const chat_cfg *cfg, size_t cache_bytes, chat_metrics *metrics, wk_cold **out);
/* NULL-safe; every chunk must have been released. */
void wk_cold_destroy(wk_cold *c);

/* The chunk ref points at, from the cache or from storage (range GET, decode, match). The chunk
 * stays valid until wk_cold_release. CHAT_ERR_UNAVAILABLE (storage down), CHAT_ERR_NOT_FOUND,
 * CHAT_ERR_INVALID (damaged: it does not decode or match) with a line in err. Any thread. */
chat_status wk_cold_read(wk_cold *c, const wk_cold_ref *ref, const wk_cold_chunk **out, char *err, size_t errsz);
void wk_cold_release(wk_cold *c, const wk_cold_chunk *chunk);

/* Cache counters since creation (tests, logs). */
void wk_cold_stats(wk_cold *c, uint64_t *hits, uint64_t *misses, size_t *bytes, size_t *entries);

#endif
