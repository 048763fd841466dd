/* Role `ingest`. Threads: one coordinator (leases and spreading) and CHAT_INGEST_COMMITTERS
 * committers. Partition p belongs to committer p mod N, which pulls it too: every partition of a
 * committer keeps a pull request open on its own consumer with the committer's one inbox
 * subscription as the reply (<inbox>.<p>.<epoch>), so messages stream in without a request per
 * batch. The committer takes everything that arrived for its partitions at that moment, stores it
 * in one transaction on its lease connection (whose session holds the advisory lock of each
 * partition), publishes it and acks it: one commit, one WAL flush and one round of PubAcks for all
 * of them, and no thread hand-off on the way (docs/architecture.md, "Ingest"). */
#include "wk_ingest.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "chat.pb-c.h"
#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_map.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"
#include "wk_archive.h"
#include "wk_pg.h"
#include "wk_streams.h"

#define LEASE_CLASS 727001   /* pg_try_advisory_lock(LEASE_CLASS, partition) */
#define BATCH_MAX 256
#define BODY_MAX (16 * 1024)
#define META_MAX (16 * 1024)
#define ACK_WAIT_NS (10LL * 1000000000LL)
#define MAX_DELIVER 50
#define PULL_EXPIRES_MS 5000 /* an open pull request ends after this (408) and is made again */
#define PULL_RETRY_MS 1000   /* after a pull request was refused */
#define WAIT_MS 100          /* the committer looks at its partitions' leases this often */
#define HEARTBEAT_MS 2000
/* A fanout attempt waits at most FLUSH_WAIT_MS for the worker's connection, then PUBACK_WAIT_MS for
 * CHAT_EVENTS in slices of PUBACK_SLICE_MS, heartbeating between: no wait may approach the lease
 * session's idle_session_timeout (10 s) */
#define FLUSH_WAIT_MS 3000
#define PUBACK_WAIT_MS 5000
#define PUBACK_SLICE_MS 1000
#define GROUP_MAX 2048 /* items in one commit of several partitions' batches */

/* Partition states: the coordinator moves IDLE -> RUNNING (lease taken) and RUNNING -> RELEASE
 * (too many owned); the committer moves RUNNING or RELEASE -> DONE (given up, or lost); the
 * coordinator gives the lease back and moves DONE -> IDLE. */
enum { P_IDLE, P_RUNNING, P_RELEASE, P_DONE };

enum { R_DONE, R_LOST };

enum { SETUP_NONE, SETUP_RUNNING, SETUP_OK, SETUP_FAILED };

struct batch;
struct committer;

typedef struct partition {
    struct wk_ingest *in;
    int index;
    atomic_int state;
    struct committer *com;      /* pulls, stores and acks this partition */
    uint64_t gen;               /* the lease connection's generation this lease was taken on */
    bool lost;                  /* given up because the lease was lost */
    int64_t epoch;
    /* the committer's alone (and its set-up thread's while setup is SETUP_RUNNING) */
    atomic_int setup;           /* SETUP_*: the consumer set-up of a partition just leased */
    pthread_t setup_tid;
    bool active;                /* its consumer is set up and pulled */
    char consumer[64];
    char ack_key[72];           /* ".<consumer>.", found in the ack subject of each of its messages */
    char next_subject[128];
    char reply[96];             /* <committer inbox>.<partition>: where its pulled messages arrive */
    int credit;                 /* messages its open pull requests may still bring */
    int64_t pull_deadline_ns;   /* with no word from its requests by then, they are taken as lost */
    int64_t retry_at_ns;        /* no pull request before this (after a refusal) */
    struct batch *buf;          /* messages arrived since the last commit, in consumer order */
    int64_t fetched_ns;         /* when the first of them arrived */
    jsCtx *js;                  /* consumer management and lag */
    int64_t lag_at_ms;          /* when the consumer's lag was last read */
    char label[32];             /* partition="N" */
    atomic_int_fast64_t *m_pending, *m_ack_pending;
} partition;

/* A committer, its partitions' pulls and its lease connection. `pg_mu` guards the connection,
 * which the coordinator also uses (lock, epoch, unlock) between commits. */
typedef struct committer {
    struct wk_ingest *in;
    int index;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    char inbox[64];             /* <inbox>.<p>.<epoch>: pull request ends of partition p */
    natsSubscription *sub;      /* <inbox>.* */
    pthread_mutex_t pg_mu;
    PGconn *pg;
    atomic_uint_fast64_t gen;   /* bumped whenever pg is given up: its leases are gone with it */
    int64_t last_pg_ms;
    /* its own connection for CHAT_EVENTS publishes: nats-server stores a JetStream publish inline
     * in the publishing connection's read loop (with CHAT_NATS_SYNC=always, an fsync each), and
     * the worker's acks, pulls and deliveries must not wait behind them */
    natsConnection *enc;
    jsCtx *js;                  /* CHAT_EVENTS publishes, on enc */
    atomic_int publish_errors;
} committer;

struct wk_ingest {
    wk_app *app;
    char worker_id[40];
    pthread_t coordinator;
    committer *com;             /* CHAT_INGEST_COMMITTERS of them; partition p goes to p % ncom */
    int ncom;
    partition *parts;
    int nparts;
    int owned;
    atomic_int_fast64_t *m_owned;
    atomic_uint_fast64_t *m_events, *m_redelivered, *m_batches, *m_store_retries;
    atomic_uint_fast64_t *m_drop_invalid, *m_drop_not_member, *m_drop_no_conv, *m_drop_poison, *m_drop_not_found;
    chat_histogram *h_commit, *h_fanout, *h_broker_to_commit;
};

/* ------------------------------------------------------------------------------------------ */
/* One message of a batch                                                                       */
/* ------------------------------------------------------------------------------------------ */

enum { I_NEW, I_STORED, I_DUP, I_DROP };

typedef struct item {
    natsMsg *msg;
    Chat__V1__Post *post;
    int part;            /* partition index */
    int state;
    int dup_of;          /* I_DUP: index of the first item with the same (conv, cmid) */
    int stored_row;      /* I_STORED: its row in the batch's `stored` result (the stored event) */
    int64_t ts_us;       /* broker timestamp */
    uint64_t seq;
    char id[32];
    int64_t created_us;  /* stored created_at */
    const char *drop_reason;
    const char *reject_code; /* told to the sending session: "bad_request", "not_member", "not_found" */
    bool backend;            /* posted on chat.in.<p>.<conv>.backend: a trusted post, any sender */
} item;

/* $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (v1), or with
 * <domain>.<account hash> after ACK and a trailing token (v2). */
static bool parse_ack_subject(const char *reply, int64_t *ts_ns, int64_t *pending)
{
    if (reply == NULL || strncmp(reply, "$JS.ACK.", 8) != 0)
        return false;
    const char *tok[16];
    int n = 0;
    for (const char *p = reply; p && n < 16; p = strchr(p, '.'), p = p ? p + 1 : NULL)
        tok[n++] = p;
    int base = n == 9 ? 2 : n >= 11 ? 4 : -1;
    if (base < 0)
        return false;
    *ts_ns = strtoll(tok[base + 5], NULL, 10);
    if (pending) /* messages of the consumer still waiting when this one was delivered */
        *pending = strtoll(tok[base + 6], NULL, 10);
    return *ts_ns > 0;
}

static bool is_change(Chat__V1__EventKind k)
{
    return k == CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT || k == CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE ||
           k == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION;
}

static void validate(item *it, const char *subject)
{
    Chat__V1__Post *p = it->post;
    it->drop_reason = NULL;
    if (p == NULL)
        it->drop_reason = "undecodable";
    else if (!chat_id_valid(p->conv) || !chat_id_valid(p->cmid) || !chat_id_valid(p->sender))
        it->drop_reason = "bad id";
    else if (chat_kind_name(p->kind) == NULL)
        it->drop_reason = "bad kind";
    else if (is_change(p->kind) && p->target == 0)
        it->drop_reason = "a change needs a target seq";
    else if (p->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION && (p->emoji[0] == '\0' || strlen(p->emoji) > 64))
        it->drop_reason = "a reaction needs an emoji of 1-64 bytes";
    else if (strlen(p->body) > BODY_MAX)
        it->drop_reason = "body too large";
    else if (strlen(p->meta_json) > META_MAX)
        it->drop_reason = "meta too large";
    else {
        const char *conv = NULL;
        size_t n = 0;
        if (!chat_subject_in_parse(subject, &conv, &n, &it->backend) || n != strlen(p->conv) ||
            memcmp(conv, p->conv, n) != 0)
            it->drop_reason = "subject does not match conversation";
    }
    if (it->drop_reason == NULL && p->meta_json[0]) {
        json_error_t err;
        json_t *j = json_loads(p->meta_json, JSON_REJECT_DUPLICATES, &err);
        if (j == NULL || !json_is_object(j))
            it->drop_reason = "meta is not a JSON object";
        json_decref(j);
    }
    if (it->drop_reason) {
        it->state = I_DROP;
        it->reject_code = "bad_request";
    }
}

static void reject(item *it, const char *code, const char *reason)
{
    it->state = I_DROP;
    it->reject_code = code;
    it->drop_reason = reason;
}

/* A 26-character ULID: 48 bits of milliseconds, 80 random bits, Crockford base32. */
static void make_id(char out[27], int64_t ms)
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    unsigned char r[10];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        for (size_t i = 0; i < sizeof r; i++)
            r[i] = (unsigned char)rand();
    uint64_t t = (uint64_t)ms;
    for (int i = 9; i >= 0; i--) {
        out[i] = b32[t & 31];
        t >>= 5;
    }
    /* 80 bits -> 16 chars */
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 5; i++)
        hi = hi << 8 | r[i];
    for (int i = 5; i < 10; i++)
        lo = lo << 8 | r[i];
    for (int i = 17; i >= 10; i--) {
        out[i] = b32[hi & 31];
        hi >>= 5;
    }
    for (int i = 25; i >= 18; i--) {
        out[i] = b32[lo & 31];
        lo >>= 5;
    }
    out[26] = '\0';
}

static void format_ts(char *buf, size_t size, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(buf, size, "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (long long)(us % 1000000));
}

/* ------------------------------------------------------------------------------------------ */
/* The store transaction                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* store(): S_DATA_ERROR is the batch's data refused (split it, drop the poison); S_RETRY the database
 * refusing for now what it would take later (a full disk, out of memory, a deadlock, read-only):
 * nothing is dropped, the batch is kept and stored again */
enum { S_OK, S_NO_PARTITION, S_LEASE_LOST, S_DATA_ERROR, S_RETRY };

typedef struct members {
    char *conv;
    char **users;
    int n, cap;
} members;

/* A partition's batch owns its messages and posts; a view (the committer's group of several
 * batches, or a piece of a batch split to isolate a message the database refuses) only points at
 * the items of others. */
typedef struct batch {
    item *items;
    int n, cap;
    bool view;
    int part;          /* partition index for the logs, -1 when several */
    members *convs;    /* distinct conversations of the batch with their members */
    int nconvs;
    chat_map *conv_ix; /* conversation -> index + 1 in convs */
    PGresult *stored;  /* Q_DEDUPE rows of this attempt: the stored events its duplicates answer with */
} batch;

static members *find_conv(batch *b, const char *conv)
{
    intptr_t k = b->conv_ix ? (intptr_t)chat_map_get(b->conv_ix, conv) : 0;
    return k ? &b->convs[k - 1] : NULL;
}

/* Forgets what one attempt to store b found: its conversations with their members, and the
 * stored events of its duplicates (batch_prepare starts every attempt afresh). */
static void batch_clear_attempt(batch *b)
{
    PQclear(b->stored);
    b->stored = NULL;
    for (int i = 0; i < b->nconvs; i++) {
        for (int j = 0; j < b->convs[i].n; j++)
            free(b->convs[i].users[j]);
        free(b->convs[i].users);
        free(b->convs[i].conv);
    }
    free(b->convs);
    b->convs = NULL;
    b->nconvs = 0;
    chat_map_destroy(b->conv_ix);
    b->conv_ix = NULL;
}

static void batch_add(batch *b, const item *it)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->items = realloc(b->items, (size_t)b->cap * sizeof *b->items);
        if (b->items == NULL)
            abort();
    }
    b->items[b->n++] = *it;
}

static void view_free(batch *v)
{
    batch_clear_attempt(v);
    free(v->items);
    *v = (batch){0};
}

static int classify(PGconn *pg, PGresult *r, const char *what)
{
    if (PQstatus(pg) != CONNECTION_OK)
        return S_LEASE_LOST;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorMessage(r);
    if (state && strcmp(state, "23514") == 0 && strstr(msg, "no partition") != NULL)
        return S_NO_PARTITION;
    char line[512];
    snprintf(line, sizeof line, "%s", msg);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '"')
            *p = ' ';
    LOG_WARN("ingest", "event=store_failed step=%s sqlstate=%s detail=\"%s\"", what, state ? state : "", line);
    /* 57P01 admin shutdown, 08xxx connection: the session (and with it the lease) is gone */
    if (state && (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 || strcmp(state, "57P05") == 0))
        return S_LEASE_LOST;
    /* only what the messages themselves cause is poison: 22 data exception (an encoding, a bad
     * value), 23 integrity constraint, 54 program limit (a row too large); anything else is the
     * database's state (53 disk full or out of memory, 40 deadlock, 25 read-only, 55, 57, 58,
     * XX) and dropping the batch for it would lose messages that a retry stores */
    if (state && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 || strncmp(state, "54", 2) == 0))
        return S_DATA_ERROR;
    return S_RETRY;
}

/* One-off statements (the lease, a missing partition): planned at each call. */
static PGresult *exec_params(PGconn *pg, const char *sql, int n, const char *const *params)
{
    return PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
}

/* The statements of every batch, prepared once per lease connection (prepare_statements(), from
 * try_acquire, outside any transaction: a failed Parse there aborts nothing) and run with
 * PQexecPrepared. The connection uses generic plans (plan_cache_mode = force_generic_plan): with
 * array parameters PostgreSQL would otherwise keep choosing custom plans, i.e. plan every batch
 * again. So each statement is written for a good generic plan, whatever the tables' statistics:
 * conversations by `id = ANY($1)` (an index scan; a join with unnest() lets the planner pick a
 * sequential scan of a small table), the rest through primary keys. */
enum { Q_DEDUPE, Q_MEMBERS, Q_TARGETS, Q_WRITE, Q_COUNT };

/* Columns of Q_DEDUPE: the dedupe row, then the stored event (NULL when its row is no longer in
 * `messages`: archived), then whether it is deleted (a text or system message, or an edit of one,
 * whose delete event exists). */
enum { D_CONV, D_CMID, D_SEQ, D_ID, D_CREATED, D_SENDER, D_KIND, D_BODY, D_META, D_TARGET, D_EMOJI, D_ON, D_DELETED };

/* What a post whose cmid names another sender's message gets: not an ack of someone else's
 * message, and nothing of its content (docs/protocol.md, "What an ack means, and retries"). */
#define CMID_TAKEN "cmid already names another sender's message in this conversation; send with a new cmid"

static const struct {
    const char *name;
    int nparams;
    const char *sql;
} statements[Q_COUNT] = {
    [Q_DEDUPE] = {"ingest_dedupe", 2,
                  "SELECT d.conversation_id, d.client_msg_id, d.seq, d.id,"
                  " (extract(epoch FROM d.created_at) * 1000000)::bigint,"
                  " s.sender_id, s.kind, s.body, s.meta::text, s.target_seq, s.emoji, s.reaction_on,"
                  " s.kind IN ('text', 'system', 'edit') AND EXISTS (SELECT 1 FROM messages x"
                  " WHERE x.conversation_id = s.conversation_id AND x.kind = 'delete'"
                  " AND x.target_seq = CASE WHEN s.kind = 'edit' THEN s.target_seq ELSE s.seq END)"
                  " FROM message_dedupe d JOIN unnest($1::text[], $2::text[]) AS k(c, m)"
                  " ON d.conversation_id = k.c AND d.client_msg_id = k.m"
                  " LEFT JOIN messages s ON s.conversation_id = d.conversation_id AND s.seq = d.seq"
                  " AND s.created_at = d.created_at"},
    [Q_MEMBERS] = {"ingest_members", 1,
                   "SELECT m.conversation_id, m.user_id FROM conversations c"
                   " JOIN conversation_members m ON m.conversation_id = c.id"
                   " WHERE c.id = ANY($1::text[]) AND c.deleted_at IS NULL"},
    [Q_TARGETS] = {"ingest_targets", 2,
                   "SELECT k.c, k.s, m.sender_id, m.kind,"
                   " EXISTS (SELECT 1 FROM messages d WHERE d.conversation_id = k.c"
                   " AND d.kind = 'delete' AND d.target_seq = k.s)"
                   " FROM unnest($1::text[], $2::bigint[]) AS k(c, s)"
                   " LEFT JOIN messages m ON m.conversation_id = k.c AND m.seq = k.s"},
    [Q_WRITE] = {"ingest_write", 13,
                 "WITH b AS (UPDATE conversations c"
                 " SET last_seq = c.last_seq + ($2::int[])[array_position($1::text[], c.id)]"
                 " WHERE c.id = ANY($1::text[])"
                 " RETURNING c.id, c.last_seq - ($2::int[])[array_position($1::text[], c.id)] AS base),"
                 " k AS (SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
                 " $8::text[], $9::jsonb[], $10::bigint[], $11::text[], $12::bool[], $13::timestamptz[])"
                 " WITH ORDINALITY AS k(conv, id, cmid, sender, kind, body, meta, target, emoji, reaction_on,"
                 " created_at, ord)),"
                 " s AS (SELECT k.*, b.base + row_number() OVER (PARTITION BY k.conv ORDER BY k.ord) AS seq"
                 " FROM k JOIN b ON b.id = k.conv),"
                 " m AS (INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, kind, body,"
                 " meta, target_seq, emoji, reaction_on, created_at)"
                 " SELECT conv, seq, id, cmid, sender, kind, body, meta, target, emoji, reaction_on, created_at"
                 " FROM s),"
                 " d AS (INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)"
                 " SELECT conv, cmid, seq, id, created_at FROM s)"
                 " SELECT ord, seq FROM s"},
};

/* Prepares the batch statements on a fresh lease connection. False (logged) when PostgreSQL
 * refuses one or the connection is gone: the caller closes the connection, and with it the lease. */
static bool prepare_statements(PGconn *pg)
{
    if (!wk_pg_exec(pg, "SET plan_cache_mode = force_generic_plan", PGRES_COMMAND_OK, "plan_cache_mode"))
        return false;
    /* A generic plan is made once, at the first batch, from the statistics of that moment: on a
     * new database (empty tables) the planner took sequential scans of message_dedupe and
     * conversations with hash joins, and kept them while the tables grew, so every batch read
     * the whole dedupe table (docs/benchmarks.md). Every statement here reaches its rows through a
     * primary key: take the other paths off the table for this connection. */
    if (!wk_pg_exec(pg, "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
                    PGRES_COMMAND_OK, "plan_settings"))
        return false;
    for (int q = 0; q < Q_COUNT; q++) {
        PGresult *r = PQprepare(pg, statements[q].name, statements[q].sql, statements[q].nparams, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            LOG_WARN("ingest", "event=prepare_failed statement=%s detail=\"%s\"", statements[q].name,
                     PQresultErrorMessage(r));
        PQclear(r);
        if (!ok)
            return false;
    }
    return true;
}

/* Runs a prepared batch statement. A connection lost meanwhile gives an error result, which
 * classify() turns into S_LEASE_LOST: the partition ends and the next lease prepares anew. */
static PGresult *exec_prepared(PGconn *pg, int q, const char *const *params)
{
    return PQexecPrepared(pg, statements[q].name, statements[q].nparams, params, NULL, NULL, 0);
}

static int rollback(PGconn *pg, int rc)
{
    PGresult *r = PQexec(pg, "ROLLBACK");
    PQclear(r);
    return rc;
}

static int check_targets(PGconn *pg, batch *b, int *rc)
{
    chat_buf convs = {0}, seqs = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&seqs);
    int n = 0;
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_NEW || !is_change(it->post->kind))
            continue;
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, it->post->target);
        chat_buf_pg_array_str(&convs, it->post->conv);
        chat_buf_pg_array_str(&seqs, seq);
        n++;
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&seqs);
    if (n == 0) {
        chat_buf_free(&convs);
        chat_buf_free(&seqs);
        return 0;
    }
    const char *params[] = {convs.data, seqs.data};
    PGresult *r = exec_prepared(pg, Q_TARGETS, params);
    chat_buf_free(&convs);
    chat_buf_free(&seqs);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        *rc = classify(pg, r, "targets");
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_NEW || !is_change(it->post->kind))
            continue;
        int row = -1;
        for (int k = 0; k < PQntuples(r) && row < 0; k++)
            if (strcmp(PQgetvalue(r, k, 0), it->post->conv) == 0 &&
                strtoull(PQgetvalue(r, k, 1), NULL, 10) == it->post->target)
                row = k;
        const char *kind = row >= 0 && !PQgetisnull(r, row, 3) ? PQgetvalue(r, row, 3) : NULL;
        if (kind == NULL || (strcmp(kind, "text") != 0 && strcmp(kind, "system") != 0))
            reject(it, "not_found", "no such message to change");
        else if (strcmp(PQgetvalue(r, row, 4), "t") == 0)
            reject(it, "not_found", "the message was deleted");
        else if (it->post->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION &&
                 strcmp(PQgetvalue(r, row, 2), it->post->sender) != 0)
            reject(it, "bad_request", "only the sender edits or deletes a message");
    }
    PQclear(r);
    return 0;
}

/* Marks the items whose (conv, cmid) is stored already (rows of Q_DEDUPE, which b keeps: their
 * answer is the stored event, never the incoming post). One whose event has left `messages`
 * (archived, its dedupe row not yet pruned) cannot be answered: the poster is told to retry. */
static void mark_stored(batch *b, PGresult *r)
{
    b->stored = r;
    for (int row = 0; row < PQntuples(r); row++)
        for (int i = 0; i < b->n; i++) {
            item *it = &b->items[i];
            if (it->state != I_NEW || strcmp(it->post->conv, PQgetvalue(r, row, D_CONV)) != 0 ||
                strcmp(it->post->cmid, PQgetvalue(r, row, D_CMID)) != 0)
                continue;
            if (PQgetisnull(r, row, D_SENDER)) {
                reject(it, "unavailable", "the stored message is being archived");
                continue;
            }
            it->state = I_STORED;
            it->stored_row = row;
            it->seq = strtoull(PQgetvalue(r, row, D_SEQ), NULL, 10);
            snprintf(it->id, sizeof it->id, "%s", PQgetvalue(r, row, D_ID));
            it->created_us = strtoll(PQgetvalue(r, row, D_CREATED), NULL, 10);
        }
}

static bool is_member(const members *m, const char *user)
{
    for (int u = 0; u < m->n; u++)
        if (strcmp(m->users[u], user) == 0)
            return true;
    return false;
}

/* Every post of b, a duplicate as much as a new one, is checked before anything about the
 * stored message is used: the conversation must exist, a user's post (chat.in.<p>.<conv>, the
 * only post subject a gateway may publish) must come from a member, whatever its `gateway` field
 * says (a backend's posts, on chat.in.<p>.<conv>.backend, may name any sender), and a stored duplicate must be the
 * poster's own (its sender is the poster; for an edit or delete that is the ownership the
 * stored change was checked for). A non-member gets not_member and nothing else. */
static void authorize(batch *b)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        members *m = it->state == I_DROP ? NULL : find_conv(b, it->post->conv);
        if (m == NULL)
            continue;
        if (m->n == 0)
            reject(it, "not_member", "no such conversation");
        else if (!it->backend && !is_member(m, it->post->sender))
            reject(it, "not_member", "sender not a member");
        else if (it->state == I_STORED &&
                 strcmp(PQgetvalue(b->stored, it->stored_row, D_SENDER), it->post->sender) != 0)
            reject(it, "bad_request", CMID_TAKEN);
    }
}

/* The sender of the event that answers it: the stored row's or the post's. */
static const char *answer_sender(const batch *b, const item *it)
{
    return it->state == I_STORED ? PQgetvalue(b->stored, it->stored_row, D_SENDER) : it->post->sender;
}

/* A repeat of a (conv, cmid) within the batch (I_DUP, authorized like any post) is answered with
 * its first copy's event, and only when it is the same sender's: once the first is stored, or
 * refused (the same refusal for the same sender; another sender is told to retry, and stores
 * it then if the first never was). */
static void settle_duplicates(batch *b)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_DUP)
            continue;
        const item *first = &b->items[it->dup_of];
        bool same = strcmp(first->post->sender, it->post->sender) == 0;
        if (first->state == I_DROP && same)
            reject(it, first->reject_code ? first->reject_code : "bad_request", first->drop_reason);
        else if (first->state == I_DROP)
            reject(it, "unavailable", "another post with this cmid was refused; send again");
        else if (strcmp(answer_sender(b, first), it->post->sender) != 0)
            reject(it, "bad_request", CMID_TAKEN);
    }
}

/* Runs the whole batch in one transaction on the lease connection (the caller holds pg_mu). Fills
 * seq/id of NEW items, marks STORED and DROP. */
static int store(committer *c, batch *b)
{
    PGconn *pg = c->pg;
    chat_buf a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0}, a8 = {0}, a9 = {0},
             a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    int rc = S_OK;
    PGresult *r = PQexec(pg, "BEGIN");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = classify(pg, r, "begin");
        PQclear(r);
        return rc;
    }
    PQclear(r);

    /* 1. already stored? (conv, cmid) */
    chat_buf_pg_array_begin(&a1);
    chat_buf_pg_array_begin(&a2);
    for (int i = 0; i < b->n; i++)
        if (b->items[i].state == I_NEW) {
            chat_buf_pg_array_str(&a1, b->items[i].post->conv);
            chat_buf_pg_array_str(&a2, b->items[i].post->cmid);
        }
    chat_buf_pg_array_end(&a1);
    chat_buf_pg_array_end(&a2);
    const char *p_dedupe[] = {a1.data, a2.data};
    r = exec_prepared(pg, Q_DEDUPE, p_dedupe);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = classify(pg, r, "dedupe");
        goto fail;
    }
    mark_stored(b, r);
    r = NULL; /* b->stored now */

    /* 2. members of every conversation of the batch (for the check and the fanout) */
    chat_buf_reset(&a1);
    chat_buf_pg_array_begin(&a1);
    for (int i = 0; i < b->nconvs; i++)
        chat_buf_pg_array_str(&a1, b->convs[i].conv);
    chat_buf_pg_array_end(&a1);
    const char *p_members[] = {a1.data};
    r = exec_prepared(pg, Q_MEMBERS, p_members);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = classify(pg, r, "members");
        goto fail;
    }
    for (int row = 0; row < PQntuples(r); row++) {
        members *m = find_conv(b, PQgetvalue(r, row, 0));
        if (m == NULL)
            continue;
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 4;
            m->users = realloc(m->users, (size_t)m->cap * sizeof *m->users);
        }
        m->users[m->n++] = strdup(PQgetvalue(r, row, 1));
    }
    PQclear(r);

    /* 2b. every post, duplicates included: the conversation must exist and a gateway's sender
     * be a member; a stored duplicate must be the poster's own message */
    authorize(b);

    /* 2c. changes (edit, delete, reaction): the target must be a stored message that is not
     * deleted; only its sender edits or deletes it (after 2b: a non-member learns nothing of
     * the conversation's seqs) */
    if (check_targets(pg, b, &rc) != 0)
        goto fail;

    /* 3. new events, counted per conversation */
    chat_buf_reset(&a1);
    chat_buf_reset(&a2);
    chat_buf_pg_array_begin(&a1);
    chat_buf_pg_array_begin(&a2);
    int nnew = 0;
    int *count = calloc((size_t)b->nconvs + 1, sizeof *count);
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        members *m = it->state == I_NEW ? find_conv(b, it->post->conv) : NULL;
        if (m != NULL)
            count[m - b->convs]++;
    }
    for (int k = 0; k < b->nconvs; k++)
        if (count[k]) {
            char n[16];
            snprintf(n, sizeof n, "%d", count[k]);
            chat_buf_pg_array_str(&a1, b->convs[k].conv);
            chat_buf_pg_array_str(&a2, n);
            nnew += count[k];
        }
    free(count);
    chat_buf_pg_array_end(&a1);
    chat_buf_pg_array_end(&a2);

    if (nnew > 0) {
        /* 4. one statement: the next seqs of every conversation of the batch (one UPDATE ...
         * RETURNING, a1/a2 above), the events numbered in batch order within each conversation,
         * and their dedupe rows; it returns the seq of each event by its place in the arrays */
        chat_buf *arrays[] = {&a3, &a4, &a5, &a6, &a7, &a8, &a9, &a10, &a11, &a12, &a13};
        for (int k = 0; k < 11; k++)
            chat_buf_pg_array_begin(arrays[k]);
        for (int i = 0; i < b->n; i++) {
            item *it = &b->items[i];
            if (it->state != I_NEW)
                continue;
            Chat__V1__Post *p = it->post;
            char target[24], ts[48];
            it->created_us = it->ts_us;
            make_id(it->id, it->ts_us / 1000);
            snprintf(target, sizeof target, "%" PRIu64, p->target);
            format_ts(ts, sizeof ts, it->created_us);
            chat_buf_pg_array_str(&a3, p->conv);
            chat_buf_pg_array_str(&a4, it->id);
            chat_buf_pg_array_str(&a5, p->cmid);
            chat_buf_pg_array_str(&a6, p->sender);
            chat_buf_pg_array_str(&a7, chat_kind_name(p->kind));
            chat_buf_pg_array_str(&a8, p->body);
            chat_buf_pg_array_str(&a9, p->meta_json[0] ? p->meta_json : NULL);
            chat_buf_pg_array_str(&a10, p->target ? target : NULL);
            chat_buf_pg_array_str(&a11, p->emoji[0] ? p->emoji : NULL);
            chat_buf_pg_array_str(&a12, p->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION
                                            ? (p->reaction_on ? "t" : "f")
                                            : NULL);
            chat_buf_pg_array_str(&a13, ts);
        }
        for (int k = 0; k < 11; k++)
            chat_buf_pg_array_end(arrays[k]);
        const char *p_write[] = {a1.data, a2.data, a3.data, a4.data, a5.data, a6.data, a7.data,
                                 a8.data, a9.data, a10.data, a11.data, a12.data, a13.data};
        r = exec_prepared(pg, Q_WRITE, p_write);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            rc = classify(pg, r, "write");
            goto fail;
        }
        int *seq_of = calloc((size_t)nnew, sizeof *seq_of); /* row of the nth new event, or -1 */
        for (int k = 0; k < nnew; k++)
            seq_of[k] = -1;
        for (int row = 0; row < PQntuples(r); row++) {
            long ord = strtol(PQgetvalue(r, row, 0), NULL, 10);
            if (ord >= 1 && ord <= nnew)
                seq_of[ord - 1] = row;
        }
        for (int i = 0, k = 0; i < b->n; i++) {
            item *it = &b->items[i];
            if (it->state != I_NEW)
                continue;
            if (seq_of[k] >= 0)
                it->seq = strtoull(PQgetvalue(r, seq_of[k], 1), NULL, 10);
            else /* the conversation's row went away after the members were read: nothing stored */
                reject(it, "not_member", "no such conversation");
            k++;
        }
        free(seq_of);
        PQclear(r);
    }
    settle_duplicates(b);

    r = PQexec(pg, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = classify(pg, r, "commit");
        PQclear(r);
        r = NULL;
        goto fail;
    }
    PQclear(r);
    r = NULL;
    goto done;
fail:
    PQclear(r);
    if (rc != S_LEASE_LOST)
        rollback(pg, rc);
done:;
    chat_buf *all[] = {&a1, &a2, &a3, &a4, &a5, &a6, &a7, &a8, &a9, &a10, &a11, &a12, &a13};
    for (int k = 0; k < 13; k++)
        chat_buf_free(all[k]);
    c->last_pg_ms = chat_mono_ns() / 1000000;
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Fanout and acks                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* The content of e from the stored row `row` of b->stored (a duplicate's answer): deleted since,
 * it comes as history shows it, without body and meta. */
static void fill_from_stored(Chat__V1__Event *e, const batch *b, int row)
{
    PGresult *r = b->stored;
    e->sender = PQgetvalue(r, row, D_SENDER);
    e->kind = chat_kind_parse(PQgetvalue(r, row, D_KIND));
    e->body = PQgetvalue(r, row, D_BODY);
    e->meta_json = PQgetvalue(r, row, D_META);
    e->target = PQgetisnull(r, row, D_TARGET) ? 0 : strtoull(PQgetvalue(r, row, D_TARGET), NULL, 10);
    e->emoji = PQgetvalue(r, row, D_EMOJI);
    e->reaction_on = strcmp(PQgetvalue(r, row, D_ON), "t") == 0;
    e->deleted = strcmp(PQgetvalue(r, row, D_DELETED), "t") == 0;
    if (e->deleted) {
        e->body = "";
        e->meta_json = "";
    }
}

/* The event that answers it: a new post's own; a duplicate's (stored before, or repeated in the
 * batch) is the stored event, whatever the duplicate carries. Only the session is its own, so
 * the ack goes to the connection that sent it. */
static void fill_event(Chat__V1__Event *e, const batch *b, const item *it, int64_t committed_ms)
{
    const item *src = it->state == I_DUP ? &b->items[it->dup_of] : it;
    const Chat__V1__Post *p = src->post;
    e->conv = p->conv;
    e->seq = src->seq;
    e->id = (char *)src->id;
    e->cmid = p->cmid;
    e->ts_ms = src->created_us / 1000;
    if (src->state == I_STORED) {
        fill_from_stored(e, b, src->stored_row);
    } else {
        e->sender = p->sender;
        e->kind = p->kind;
        e->body = p->body;
        e->meta_json = p->meta_json;
        e->target = p->target;
        e->emoji = p->emoji;
        e->reaction_on = p->reaction_on;
    }
    e->committed_ms = committed_ms;
    e->session = it->post->session;
}

static void on_publish_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    committer *c = closure;
    atomic_fetch_add(&c->publish_errors, 1);
    LOG_WARN("ingest", "event=events_publish_failed status=\"%s\" detail=\"%s\"", natsStatus_GetText(pae->Err),
             pae->ErrText ? pae->ErrText : "");
}

static void reply_all(natsConnection *nc, batch *b, const char *what)
{
    for (int i = 0; i < b->n; i++) {
        const char *reply = natsMsg_GetReply(b->items[i].msg);
        if (reply)
            natsConnection_PublishString(nc, reply, what);
    }
}

/* How many times the connection reconnected (nats.c counts every new socket). */
static uint64_t reconnects(natsConnection *nc)
{
    natsStatistics *st = NULL;
    uint64_t n = 0;
    if (natsStatistics_Create(&st) == NATS_OK && natsConnection_GetStats(nc, st) == NATS_OK)
        natsStatistics_GetCounts(st, NULL, NULL, NULL, NULL, &n);
    natsStatistics_Destroy(st);
    return n;
}

/* Forgets the publishes still waiting for a PubAck and returns how many there were. A PubAck lost
 * with a NATS node (or a connection that died silently) never comes: left in the context, such a
 * publish would make every later js_PublishAsyncComplete time out and stall the partition for
 * good. CHAT_EVENTS drops repeats by Nats-Msg-Id, so the caller simply publishes again. */
static int drop_pending(committer *c)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, c->js) != NATS_OK)
        return 0; /* NATS_NOT_FOUND: nothing pending */
    int n = pending.Count;
    natsMsgList_Destroy(&pending);
    return n;
}

static bool heartbeat(committer *c, uint64_t gen);

enum { F_DONE, F_STOPPING, F_LEASE_LOST };

/* Publishes every stored event of the batch to its members (on the worker's connection) and to
 * CHAT_EVENTS (on the committer's); returns F_DONE when CHAT_EVENTS has acknowledged all of them and
 * a flush says the server took the deliveries (retrying while the broker refuses); the notify role
 * reads its offline pushes from CHAT_EVENTS too. A retry publishes the events again, and the live
 * deliveries too when the worker's connection changed since they went out or its flush failed
 * (they may have died with the old socket); devices drop repeats by id. While it retries it keeps
 * the lease session from idling out (idle_session_timeout). */
static int fanout(committer *c, batch *b, uint64_t gen, int64_t committed_ms)
{
    wk_ingest *in = c->in;
    natsConnection *nc = in->app->nc;
    bool deliver = true;
    uint64_t delivered_on = 0; /* reconnects() when the deliveries were published */
    for (int attempt = 0;; attempt++) {
        atomic_store(&c->publish_errors, 0);
        if (deliver)
            delivered_on = reconnects(nc);
        for (int i = 0; i < b->n; i++) {
            item *it = &b->items[i];
            if (it->state == I_DROP)
                continue;
            const item *first = it->state == I_DUP ? &b->items[it->dup_of] : it;
            if (first->state == I_DROP)
                continue;
            Chat__V1__Event e = CHAT__V1__EVENT__INIT;
            fill_event(&e, b, it, committed_ms);
            if (deliver) {
                Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
                d.item_case = CHAT__V1__DELIVERY__ITEM_EVENT;
                d.event = &e;
                size_t len = chat__v1__delivery__get_packed_size(&d);
                uint8_t stackbuf[4096], *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
                chat__v1__delivery__pack(&d, buf);
                members *m = find_conv(b, it->post->conv);
                for (int u = 0; m && u < m->n; u++) {
                    char subject[128];
                    if (chat_subject_deliver(subject, sizeof subject, m->users[u]))
                        natsConnection_Publish(nc, subject, buf, (int)len);
                }
                if (buf != stackbuf)
                    free(buf);
            }
            size_t len = chat__v1__event__get_packed_size(&e);
            uint8_t *buf = malloc(len ? len : 1);
            chat__v1__event__pack(&e, buf);
            char subject[128], msgid[160];
            chat_subject_event(subject, sizeof subject, e.conv);
            snprintf(msgid, sizeof msgid, "%s:%" PRIu64, e.conv, e.seq);
            natsMsg *msg = NULL;
            natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
            natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
            natsMsgHeader_Set(msg, "Chat-Type", "event");
            free(buf);
            if (js_PublishMsgAsync(c->js, &msg, NULL) != NATS_OK)
                atomic_fetch_add(&c->publish_errors, 1);
            natsMsg_Destroy(msg);
        }
        int64_t waited = chat_mono_ns();
        /* the deliveries went out on the worker's connection, the events on the committer's own: a
         * PubAck says nothing of the deliveries, a PONG on the worker's connection does (the
         * server had taken them before it; a node killed with them in its socket is not) */
        natsStatus fs = deliver ? natsConnection_FlushTimeout(nc, FLUSH_WAIT_MS) : NATS_OK;
        /* the PubAcks are awaited a slice at a time with a heartbeat between: a broker that stays
         * silent must not let the lease session idle out (its timeout, 10 s, was once the sum of
         * the two waits, and a cut-off NATS node cost every lease of the committer) */
        natsStatus s = NATS_TIMEOUT;
        for (int64_t left = PUBACK_WAIT_MS; left > 0 && s == NATS_TIMEOUT;) {
            if (!heartbeat(c, gen))
                return F_LEASE_LOST;
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = left < PUBACK_SLICE_MS ? left : PUBACK_SLICE_MS;
            s = js_PublishAsyncComplete(c->js, &po);
            left -= po.MaxWait;
        }
        waited = (chat_mono_ns() - waited) / 1000000;
        bool same = reconnects(nc) == delivered_on;
        if (s == NATS_OK && fs == NATS_OK && same && atomic_load(&c->publish_errors) == 0)
            return F_DONE;
        int dropped = drop_pending(c);
        deliver = fs != NATS_OK || !same;
        if (atomic_load(&in->app->stopping) && attempt > 2)
            return F_STOPPING;
        if (!heartbeat(c, gen))
            return F_LEASE_LOST;
        LOG_WARN("ingest",
                 "event=events_publish_retry partition=%d attempt=%d status=\"%s\" flush=\"%s\" errors=%d"
                 " dropped=%d redeliver=%d",
                 b->part, attempt + 1, natsStatus_GetText(s), natsStatus_GetText(fs),
                 atomic_load(&c->publish_errors), dropped, deliver ? 1 : 0);
        reply_all(nc, b, "+WPI"); /* keep the batch ours while the broker recovers */
        /* back off when the broker refused at once; a wait that timed out has waited already */
        int64_t pause = attempt < 10 ? 200 * (attempt + 1) : 2000;
        if (waited < pause)
            chat_sleep_ms(pause - waited);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Batches                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Empties a partition's batch (which owns its messages and posts). */
static void batch_reset(batch *b)
{
    for (int i = 0; i < b->n; i++) {
        if (b->items[i].post)
            chat__v1__post__free_unpacked(b->items[i].post, NULL);
        natsMsg_Destroy(b->items[i].msg);
    }
    b->n = 0;
    batch_clear_attempt(b);
}

/* Decodes the posts of a partition's fetched batch (undecodable ones stay NULL: validate drops them). */
static void batch_decode(batch *b, int part)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        it->part = part;
        it->post = chat__v1__post__unpack(NULL, (size_t)natsMsg_GetDataLength(it->msg),
                                          (const uint8_t *)natsMsg_GetData(it->msg));
    }
}

/* Validates and groups the items of b (again, when b is retried): a repeated (conv, cmid) points
 * at its first copy, every conversation is listed once. */
static void batch_prepare(batch *b)
{
    batch_clear_attempt(b);
    b->conv_ix = chat_map_create();
    chat_map *first = chat_map_create(); /* "conv/cmid" -> index + 1 */
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        it->state = I_NEW;
        it->dup_of = -1;
        it->stored_row = -1;
        it->seq = 0;
        it->id[0] = '\0';
        it->reject_code = NULL;
        int64_t ts_ns = 0;
        if (!parse_ack_subject(natsMsg_GetReply(it->msg), &ts_ns, NULL))
            ts_ns = chat_now_ms() * 1000000;
        it->ts_us = ts_ns / 1000;
        validate(it, natsMsg_GetSubject(it->msg));
        if (it->state == I_DROP)
            continue;
        char key[2 * CHAT_ID_MAX + 4];
        snprintf(key, sizeof key, "%s/%s", it->post->conv, it->post->cmid);
        intptr_t k = (intptr_t)chat_map_get(first, key);
        if (k) {
            it->state = I_DUP;
            it->dup_of = (int)k - 1;
        } else {
            chat_map_put(first, key, (void *)(intptr_t)(i + 1), NULL);
        }
        if (find_conv(b, it->post->conv) == NULL) {
            b->convs = realloc(b->convs, (size_t)(b->nconvs + 1) * sizeof *b->convs);
            b->convs[b->nconvs++] = (members){.conv = strdup(it->post->conv)};
            chat_map_put(b->conv_ix, it->post->conv, (void *)(intptr_t)b->nconvs, NULL);
        }
    }
    chat_map_destroy(first);
}

/* Tells the sending session why its post was not stored (through the sender's delivery subject). */
static void send_rejection(natsConnection *nc, const item *it, const char *why)
{
    Chat__V1__Rejection rj = CHAT__V1__REJECTION__INIT;
    rj.conv = it->post->conv;
    rj.cmid = it->post->cmid;
    rj.session = it->post->session;
    rj.code = (char *)it->reject_code;
    rj.message = (char *)why;
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_REJECTION;
    d.rejection = &rj;
    uint8_t buf[1024];
    if (chat__v1__delivery__get_packed_size(&d) > sizeof buf)
        return;
    size_t len = chat__v1__delivery__pack(&d, buf);
    char subject[128];
    if (chat_subject_deliver(subject, sizeof subject, it->post->sender))
        natsConnection_Publish(nc, subject, buf, (int)len);
}

static void count_drops(wk_ingest *in, batch *b)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_DROP)
            continue;
        const char *why = it->drop_reason ? it->drop_reason : "invalid";
        atomic_uint_fast64_t *c = strcmp(why, "sender not a member") == 0    ? in->m_drop_not_member
                                  : strcmp(why, "no such conversation") == 0 ? in->m_drop_no_conv
                                  : strcmp(why, "poison") == 0               ? in->m_drop_poison
                                  : it->reject_code && strcmp(it->reject_code, "not_found") == 0
                                      ? in->m_drop_not_found
                                      : in->m_drop_invalid;
        atomic_fetch_add(c, 1);
        LOG_WARN("ingest", "event=dropped partition=%d conv=%s cmid=%s reason=\"%s\"", it->part,
                 it->post ? it->post->conv : "?", it->post ? it->post->cmid : "?", why);
        /* a non-member is told the same whether the conversation exists or not (the gateway's
         * wording): the log and the metric above keep the difference */
        if (it->reject_code && it->post && it->post->session[0])
            send_rejection(in->app->nc, it,
                           strcmp(it->reject_code, "not_member") == 0 ? "not a member of this conversation" : why);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The committer                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Gives up the lease connection of generation gen (a failed statement: its session, and with it
 * every lease of this worker, is gone or cannot be trusted). Caller holds pg_mu. */
static void lose_connection(committer *c, uint64_t gen)
{
    if (atomic_load(&c->gen) != gen)
        return;
    PQfinish(c->pg); /* closing the session releases every advisory lock at once */
    c->pg = NULL;
    atomic_fetch_add(&c->gen, 1);
    LOG_WARN("ingest", "event=lease_connection_lost gen=%" PRIu64, gen);
}

/* Keeps the lease session from idling out (idle_session_timeout) and finds out when it is gone.
 * False when generation gen is no longer the live one. */
static bool heartbeat(committer *c, uint64_t gen)
{
    pthread_mutex_lock(&c->pg_mu);
    bool ok = c->pg != NULL && atomic_load(&c->gen) == gen;
    int64_t now = chat_mono_ns() / 1000000;
    if (ok && now - c->last_pg_ms >= HEARTBEAT_MS) {
        PGresult *r = PQexec(c->pg, "SELECT 1");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        c->last_pg_ms = now;
        if (!ok)
            lose_connection(c, gen);
    }
    pthread_mutex_unlock(&c->pg_mu);
    return ok;
}

/* store() under pg_mu, creating a missing `messages` partition on the way; S_LEASE_LOST when the
 * connection of generation gen is gone (nothing of a lost lease is ever written). */
static int store_locked(committer *c, batch *b, uint64_t gen)
{
    wk_ingest *in = c->in;
    pthread_mutex_lock(&c->pg_mu);
    int rc = S_LEASE_LOST;
    for (int attempt = 0; attempt < 5 && c->pg != NULL && atomic_load(&c->gen) == gen; attempt++) {
        batch_prepare(b); /* every attempt from the start: members and stored rows are read again */
        rc = store(c, b);
        if (rc != S_NO_PARTITION)
            break;
        int n = wk_archive_ensure_partitions(c->pg, in->app->cfg->partition_span_ms);
        LOG_WARN("ingest", "event=partition_missing partition=%d created=%d", b->part, n);
        /* a batch whose timestamps are older than now - span still has no partition: widen */
        int64_t oldest = b->items[0].ts_us;
        for (int i = 1; i < b->n; i++)
            if (b->items[i].ts_us < oldest)
                oldest = b->items[i].ts_us;
        char from[48], span[48], params_sql[] =
            "SELECT chat_ensure_partitions($1::timestamptz - $2::interval, now() + $2::interval, $2::interval)";
        format_ts(from, sizeof from, oldest);
        snprintf(span, sizeof span, "%lld milliseconds", (long long)in->app->cfg->partition_span_ms);
        const char *params[] = {from, span};
        PGresult *r = exec_params(c->pg, params_sql, 2, params);
        PQclear(r);
    }
    if (rc == S_LEASE_LOST)
        lose_connection(c, gen);
    pthread_mutex_unlock(&c->pg_mu);
    return rc;
}

/* Stores, fans out and acks b (a group of batches, or one). Returns false when the lease is lost:
 * nothing of b is acked then, and the next owners get it again. */
static bool process(committer *c, batch *b, uint64_t gen, int64_t fetched_ns)
{
    wk_ingest *in = c->in;
    int rc = store_locked(c, b, gen);
    /* the database refuses for now: keep the batch ours (+WPI) and the lease session alive, and
     * store it again, backing off up to 5 s; the clients get no answer meanwhile and resend the
     * same cmids, which the broker and message_dedupe make one message */
    for (int attempt = 0; rc == S_RETRY; attempt++) {
        atomic_fetch_add(in->m_store_retries, 1);
        int64_t pause = attempt < 4 ? 500LL << attempt : 5000;
        for (int64_t waited = 0; waited < pause; waited += 1000) {
            reply_all(in->app->nc, b, "+WPI");
            if (atomic_load(&in->app->stopping))
                return true; /* not acked, like a fanout cut short by a stop: the next owner stores it */
            if (!heartbeat(c, gen))
                return false;
            chat_sleep_ms(pause - waited < 1000 ? pause - waited : 1000);
        }
        rc = store_locked(c, b, gen);
    }
    if (rc == S_LEASE_LOST)
        return false;
    if (rc == S_DATA_ERROR || rc == S_NO_PARTITION) {
        if (b->n == 1) {
            b->items[0].state = I_DROP;
            b->items[0].drop_reason = "poison";
        } else {
            /* isolate the message the database refuses: a group is split into its partitions'
             * batches, a batch into one transaction per message (in order: a partition's messages
             * are stored in the order they came) */
            bool several = false;
            for (int i = 1; i < b->n && !several; i++)
                several = b->items[i].part != b->items[0].part;
            LOG_WARN("ingest", "event=batch_split partition=%d size=%d into=%s", b->part, b->n,
                     several ? "partitions" : "messages");
            bool *taken = calloc((unsigned)b->n, sizeof *taken);
            bool ok = true;
            for (int i = 0; i < b->n && ok; i++) {
                if (taken[i])
                    continue;
                batch piece = {.view = true, .part = b->items[i].part};
                for (int j = i; j < b->n; j++)
                    if (!taken[j] && (several ? b->items[j].part == b->items[i].part : j == i)) {
                        batch_add(&piece, &b->items[j]);
                        taken[j] = true;
                    }
                ok = process(c, &piece, gen, fetched_ns);
                view_free(&piece);
            }
            free(taken);
            return ok;
        }
    }
    int64_t committed_ms = chat_now_ms();
    int64_t committed_ns = chat_mono_ns();
    chat_histogram_observe_us(in->h_commit, (committed_ns - fetched_ns) / 1000);
    count_drops(in, b);
    int stored = 0, redelivered = 0;
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state == I_NEW) {
            stored++;
            chat_histogram_observe_us(in->h_broker_to_commit, committed_ms * 1000 - it->ts_us);
            LOG_DEBUG("ingest", "event=stored conv=%s cmid=%s seq=%" PRIu64 " id=%s", it->post->conv,
                      it->post->cmid, it->seq, it->id);
        } else if (it->state == I_STORED || it->state == I_DUP) {
            redelivered++;
        }
    }
    atomic_fetch_add(in->m_events, (uint64_t)stored);
    atomic_fetch_add(in->m_redelivered, (uint64_t)redelivered);
    atomic_fetch_add(in->m_batches, 1);
    int f = fanout(c, b, gen, committed_ms);
    if (f != F_DONE) /* not acked: redelivered to the next owner, found stored and published again */
        return f == F_STOPPING;
    chat_histogram_observe_us(in->h_fanout, (chat_mono_ns() - committed_ns) / 1000);
    for (int i = 0; i < b->n; i++) {
        const char *reply = natsMsg_GetReply(b->items[i].msg);
        if (reply)
            natsConnection_PublishString(in->app->nc, reply,
                                         b->items[i].state == I_DROP ? "+TERM" : "+ACK");
    }
    return true;
}

/* Commits the buffered messages of group[0..n) together; the verdict of each partition goes to
 * results[]. A partition whose lease was taken on an earlier connection is lost without touching
 * the database. */
static void commit_group(committer *c, partition **group, int n, int *results)
{
    uint64_t gen = atomic_load(&c->gen);
    batch all = {.view = true, .part = -1};
    int live = 0, last = -1;
    int64_t fetched = 0;
    for (int i = 0; i < n; i++) {
        partition *pt = group[i];
        if (pt->gen != gen) {
            results[i] = R_LOST;
            continue;
        }
        results[i] = R_DONE;
        batch_decode(pt->buf, pt->index);
        for (int k = 0; k < pt->buf->n; k++)
            batch_add(&all, &pt->buf->items[k]);
        if (live++ == 0 || pt->fetched_ns < fetched)
            fetched = pt->fetched_ns;
        last = pt->index;
    }
    if (live == 1)
        all.part = last;
    if (all.n > 0 && !process(c, &all, gen, fetched)) {
        pthread_mutex_lock(&c->pg_mu);
        lose_connection(c, gen);
        pthread_mutex_unlock(&c->pg_mu);
        for (int i = 0; i < n; i++)
            results[i] = R_LOST;
    }
    view_free(&all);
}

/* ------------------------------------------------------------------------------------------ */
/* Pulling                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static chat_status setup_consumer(partition *pt)
{
    wk_ingest *in = pt->in;
    natsConnection *nc = in->app->nc;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    if (natsConnection_JetStream(&pt->js, nc, &jo) != NATS_OK)
        return CHAT_ERR_UNAVAILABLE;
    /* delete the consumers of earlier leases of this partition: a stale owner pulls from nothing */
    char prefix[32];
    snprintf(prefix, sizeof prefix, "ingest-%d-", pt->index);
    jsConsumerNamesList *names = NULL;
    jsErrCode jerr = 0;
    if (js_ConsumerNames(&names, pt->js, CHAT_STREAM_IN, NULL, &jerr) == NATS_OK && names) {
        for (int i = 0; i < names->Count; i++)
            if (strncmp(names->List[i], prefix, strlen(prefix)) == 0)
                js_DeleteConsumer(pt->js, CHAT_STREAM_IN, names->List[i], NULL, &jerr);
        jsConsumerNamesList_Destroy(names);
    }
    snprintf(pt->consumer, sizeof pt->consumer, "ingest-%d-%lld", pt->index, (long long)pt->epoch);
    snprintf(pt->ack_key, sizeof pt->ack_key, ".%s.", pt->consumer);
    char filter[64];
    snprintf(filter, sizeof filter, "chat.in.%d.>", pt->index); /* users' and backends' posts, in order */
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = pt->consumer;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = ACK_WAIT_NS;
    cc.MaxDeliver = MAX_DELIVER;
    cc.MaxAckPending = 4 * BATCH_MAX;
    cc.DeliverPolicy = js_DeliverAll;
    jsConsumerInfo *ci = NULL;
    natsStatus s = js_AddConsumer(&ci, pt->js, CHAT_STREAM_IN, &cc, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        LOG_WARN("ingest", "event=consumer_setup_failed partition=%d status=\"%s\" jerr=%d", pt->index,
                 natsStatus_GetText(s), (int)jerr);
        return CHAT_ERR_UNAVAILABLE;
    }
    snprintf(pt->next_subject, sizeof pt->next_subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", CHAT_STREAM_IN,
             pt->consumer);
    snprintf(pt->reply, sizeof pt->reply, "%s.%d.%lld", pt->com->inbox, pt->index, (long long)pt->epoch);
    return CHAT_OK;
}

/* Asks for the broker lag of this partition's consumer every 5 s (messages waiting and delivered
 * unacked; every pulled message also says how many wait behind it, which take() keeps, so the lag
 * is exact while messages flow and this request covers the quiet times). The answer comes to the
 * committer's inbox (<inbox>.<p>.<epoch>.lag) and take() reads it: a consumer whose leader is cut off never answers,
 * and a blocking request (5 s, for each partition in turn) once held a committer past its lease session's
 * idle_session_timeout. */
static void ask_lag(partition *pt, natsConnection *nc)
{
    int64_t now = chat_mono_ns() / 1000000;
    if (now - pt->lag_at_ms < 5000)
        return;
    pt->lag_at_ms = now;
    char subject[160], reply[112];
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.INFO.%s.%s", CHAT_STREAM_IN, pt->consumer);
    snprintf(reply, sizeof reply, "%s.lag", pt->reply);
    natsConnection_PublishRequest(nc, subject, reply, NULL, 0);
}

/* The consumer info that ask_lag() asked for; anything else (an error, a 503) is ignored. */
static void take_lag(partition *pt, natsMsg *m)
{
    json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *pending = json_object_get(j, "num_pending"), *ack_pending = json_object_get(j, "num_ack_pending");
    if (json_is_integer(pending) && json_is_integer(ack_pending)) {
        atomic_store(pt->m_pending, (int_fast64_t)json_integer_value(pending));
        atomic_store(pt->m_ack_pending, (int_fast64_t)json_integer_value(ack_pending));
    }
    json_decref(j);
}

/* Sets up a newly leased partition's consumer (JetStream API round trips, replicated in a cluster):
 * one short thread per partition, so that a worker taking over many partitions at once sets them
 * up side by side while its committers go on committing the others. */
static void *setup_thread(void *arg)
{
    partition *pt = arg;
    atomic_store(&pt->setup, setup_consumer(pt) == CHAT_OK ? SETUP_OK : SETUP_FAILED);
    return NULL;
}

/* Starts the set-up of a partition just leased, or takes its result: the partition is pulled from
 * now on, or given up (set-up failed, or released, lost or stopping meanwhile). */
static void partition_begin(partition *pt, bool keep)
{
    int su = atomic_load(&pt->setup);
    if (su == SETUP_NONE) {
        if (!keep || pt->com->sub == NULL) {
            pt->lost = keep;
            atomic_store(&pt->state, P_DONE);
            return;
        }
        atomic_store(&pt->setup, SETUP_RUNNING);
        if (pthread_create(&pt->setup_tid, NULL, setup_thread, pt) != 0)
            atomic_store(&pt->setup, SETUP_NONE);
        return;
    }
    if (su == SETUP_RUNNING)
        return;
    pthread_join(pt->setup_tid, NULL);
    atomic_store(&pt->setup, SETUP_NONE);
    if (su != SETUP_OK || !keep) {
        jsCtx_Destroy(pt->js);
        pt->js = NULL;
        pt->lost = su != SETUP_OK;
        atomic_store(&pt->state, P_DONE);
        return;
    }
    pt->active = true;
    pt->credit = 0;
    pt->retry_at_ns = 0;
    LOG_INFO("ingest", "event=partition_acquired partition=%d epoch=%lld consumer=%s", pt->index,
             (long long)pt->epoch, pt->consumer);
}

/* Gives the partition up: what arrived and was not committed is dropped unacked (its next owner
 * deletes this consumer and gets it all again from its own), as is what still comes. */
static void partition_end(partition *pt, bool lost)
{
    batch_reset(pt->buf);
    jsCtx_Destroy(pt->js);
    pt->js = NULL;
    atomic_store(pt->m_pending, 0); /* reported by the next owner */
    atomic_store(pt->m_ack_pending, 0);
    pt->active = false;
    pt->lost = lost;
    LOG_INFO("ingest", "event=partition_released partition=%d reason=%s", pt->index, lost ? "lease_lost" : "released");
    atomic_store(&pt->state, P_DONE);
}

/* Keeps a pull request open: a new one for BATCH_MAX messages as soon as the open ones may bring
 * no more than half that, so that a busy partition never waits for a request to reach the broker.
 * Each expires after PULL_EXPIRES_MS (a 408 says how many it did not bring); requests that died
 * with a connection are forgotten on a reconnect or after their expiry and a second. */
static void pull(partition *pt, natsConnection *nc)
{
    int64_t now = chat_mono_ns();
    if (now < pt->retry_at_ns)
        return;
    if (pt->credit > 0 && now > pt->pull_deadline_ns)
        pt->credit = 0;
    if (pt->credit > BATCH_MAX / 2)
        return;
    char req[96];
    snprintf(req, sizeof req, "{\"batch\":%d,\"expires\":%lld}", BATCH_MAX, (long long)PULL_EXPIRES_MS * 1000000LL);
    if (natsConnection_PublishRequestString(nc, pt->next_subject, pt->reply, req) != NATS_OK) {
        pt->retry_at_ns = now + PULL_RETRY_MS * 1000000LL;
        return;
    }
    pt->credit += BATCH_MAX;
    pt->pull_deadline_ns = now + (PULL_EXPIRES_MS + 1000) * 1000000LL;
}

/* The partition a message of the committer's inbox is about: a pulled message keeps its own
 * subject (chat.in.<p>.<conv>; take() checks its consumer), a pull request's end comes on the
 * request's reply (<inbox>.<p>.<epoch>): the end of a request of an earlier lease of the partition
 * (its consumer deleted, 409) must not touch the requests of the current one. */
static partition *partition_of(committer *c, const char *subject)
{
    size_t il = strlen(c->inbox);
    bool pulled = strncmp(subject, "chat.in.", 8) == 0;
    const char *tok = NULL;
    if (pulled)
        tok = subject + 8;
    else if (strncmp(subject, c->inbox, il) == 0 && subject[il] == '.')
        tok = subject + il + 1;
    if (tok == NULL)
        return NULL;
    char *end = NULL;
    long p = strtol(tok, &end, 10);
    if (end == tok || *end != '.' || p < 0 || p >= c->in->nparts)
        return NULL;
    partition *pt = &c->in->parts[p];
    if (pt->com != c || !pt->active)
        return NULL;
    if (!pulled && strtoll(end + 1, NULL, 10) != pt->epoch)
        return NULL;
    return pt;
}

/* One message of the committer's inbox: a pulled message goes to its partition's buffer (1), a
 * pull request's end adjusts the credit, anything not of a live consumer of this committer is
 * dropped (0). */
static int take(committer *c, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m);
    partition *pt = partition_of(c, subject);
    if (pt == NULL) {
        natsMsg_Destroy(m);
        return 0;
    }
    size_t sl = strlen(subject);
    if (strncmp(subject, "chat.in.", 8) != 0 && sl > 4 && strcmp(subject + sl - 4, ".lag") == 0) {
        take_lag(pt, m);
        natsMsg_Destroy(m);
        return 0;
    }
    const char *status = NULL;
    if (natsMsg_GetDataLength(m) == 0 && natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status) {
        /* 408: a request expired; 409 and others: it ended otherwise (a consumer deleted by a newer
         * owner, a leader change): ask again, but not at once */
        const char *left = NULL;
        if (natsMsgHeader_Get(m, "Nats-Pending-Messages", &left) == NATS_OK && left)
            pt->credit -= atoi(left);
        else
            pt->credit = 0;
        if (pt->credit < 0)
            pt->credit = 0;
        if (strcmp(status, "408") != 0) {
            LOG_DEBUG("ingest", "event=pull_ended partition=%d status=%s", pt->index, status);
            pt->retry_at_ns = chat_mono_ns() + PULL_RETRY_MS * 1000000LL;
        }
        natsMsg_Destroy(m);
        return 0;
    }
    const char *reply = natsMsg_GetReply(m);
    if (reply == NULL || strstr(reply, pt->ack_key) == NULL) { /* an earlier consumer's: not ours to store */
        natsMsg_Destroy(m);
        return 0;
    }
    if (pt->credit > 0)
        pt->credit--;
    int64_t ts_ns = 0, pending = -1;
    if (parse_ack_subject(reply, &ts_ns, &pending) && pending >= 0) /* the lag, exact and free */
        atomic_store(pt->m_pending, (int_fast64_t)pending);
    if (pt->buf->n == 0)
        pt->fetched_ns = chat_mono_ns();
    batch_add(pt->buf, &(item){.msg = m});
    return 1;
}

/* Waits up to wait_ms for the first message, then takes whatever else is there (GROUP_MAX pulled
 * messages at most). Returns how many pulled messages it buffered. */
static int collect(committer *c, int64_t wait_ms)
{
    natsMsg *m = NULL;
    if (c->sub == NULL) {
        chat_sleep_ms(200);
        return 0;
    }
    if (natsSubscription_NextMsg(&m, c->sub, wait_ms) != NATS_OK)
        return 0;
    int got = take(c, m);
    while (got < GROUP_MAX) {
        int queued = 0;
        if (natsSubscription_GetPending(c->sub, &queued, NULL) != NATS_OK || queued <= 0)
            break;
        if (natsSubscription_NextMsg(&m, c->sub, 1000) != NATS_OK)
            break;
        got += take(c, m);
    }
    return got;
}

/* Follows the coordinator's decisions for this committer's partitions: sets up the consumer of a
 * partition just leased, gives up one released, lost (its lease connection is gone) or stopping. */
static void tend(committer *c, bool stopping, bool reconnected)
{
    wk_ingest *in = c->in;
    uint64_t gen = atomic_load(&c->gen);
    for (int p = c->index; p < in->nparts; p += in->ncom) {
        partition *pt = &in->parts[p];
        int st = atomic_load(&pt->state);
        if (pt->active) {
            if (pt->gen != gen)
                partition_end(pt, true);
            else if (st != P_RUNNING || stopping)
                partition_end(pt, false);
        } else if (st == P_RUNNING || st == P_RELEASE) {
            partition_begin(pt, st == P_RUNNING && !stopping && pt->gen == gen);
        }
        if (pt->active) {
            if (reconnected) /* the broker forgot the requests of the old connection */
                pt->credit = 0;
            ask_lag(pt, in->app->nc);
            pull(pt, in->app->nc);
        }
    }
}

static void subscribe_inbox(committer *c)
{
    char subject[80];
    snprintf(subject, sizeof subject, "%s.>", c->inbox);
    if (natsConnection_SubscribeSync(&c->sub, c->in->app->nc, subject) != NATS_OK) {
        c->sub = NULL;
        return;
    }
    natsSubscription_SetPendingLimits(c->sub, -1, -1);
}

static void *committer_thread(void *arg)
{
    committer *c = arg;
    wk_ingest *in = c->in;
    natsConnection *nc = in->app->nc;
    partition **group = calloc((size_t)in->nparts, sizeof *group);
    int *results = calloc((size_t)in->nparts, sizeof *results);
    uint64_t seen = reconnects(nc);
    while (!atomic_load(&c->stop)) {
        if (c->sub == NULL && chat_nats_connected(nc))
            subscribe_inbox(c);
        uint64_t now = reconnects(nc);
        tend(c, atomic_load(&in->app->stopping), now != seen);
        seen = now;
        if (collect(c, WAIT_MS) == 0) {
            heartbeat(c, atomic_load(&c->gen));
            continue;
        }
        int n = 0;
        for (int p = c->index; p < in->nparts; p += in->ncom)
            if (in->parts[p].active && in->parts[p].buf->n > 0)
                group[n++] = &in->parts[p];
        commit_group(c, group, n, results); /* a lost lease bumped gen: tend() gives the partitions up */
        for (int i = 0; i < n; i++)
            batch_reset(group[i]->buf);
    }
    for (;;) { /* give everything up, waiting for set-ups under way */
        tend(c, true, false);
        bool busy = false;
        for (int p = c->index; p < in->nparts; p += in->ncom)
            busy = busy || atomic_load(&in->parts[p].setup) != SETUP_NONE;
        if (!busy)
            break;
        chat_sleep_ms(10);
    }
    free(group);
    free(results);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The coordinator                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Opens the lease connection when there is none (caller holds pg_mu): a paused owner loses its
 * session, and with it every lease, after 10 s without a word; the batch statements are prepared
 * here, outside any transaction. */
static bool lease_connection(committer *c)
{
    wk_ingest *in = c->in;
    if (c->pg != NULL)
        return true;
    char app_name[64];
    snprintf(app_name, sizeof app_name, "chat-ingest-lease:%s/%d", in->worker_id, c->index);
    PGconn *pg = NULL;
    if (wk_pg_connect(in->app->cfg->pg_dsn, app_name, &pg) != CHAT_OK)
        return false;
    if (!wk_pg_exec(pg, "SET idle_session_timeout = '10s'", PGRES_COMMAND_OK, "lease_timeout") ||
        !wk_pg_exec(pg, "SET idle_in_transaction_session_timeout = '10s'", PGRES_COMMAND_OK, "lease_timeout") ||
        !prepare_statements(pg)) {
        PQfinish(pg);
        return false;
    }
    c->pg = pg;
    c->last_pg_ms = chat_mono_ns() / 1000000;
    return true;
}

/* Takes the lease of pt on the lease connection: its advisory lock and a new epoch. */
static bool lock_partition(wk_ingest *in, partition *pt)
{
    committer *c = pt->com;
    uint64_t gen = atomic_load(&c->gen);
    char part[16];
    snprintf(part, sizeof part, "%d", pt->index);
    const char *p1[] = {part};
    PGresult *r = exec_params(c->pg, "SELECT pg_try_advisory_lock(727001, $1::int)", 1, p1);
    bool answered = PQresultStatus(r) == PGRES_TUPLES_OK;
    bool locked = answered && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!answered)
        lose_connection(c, gen);
    if (!locked)
        return false;
    const char *p2[] = {part, in->worker_id};
    r = exec_params(c->pg,
                    "INSERT INTO ingest_leases (partition, epoch, owner) VALUES ($1::int, 1, $2)"
                    " ON CONFLICT (partition) DO UPDATE SET epoch = ingest_leases.epoch + 1,"
                    " owner = EXCLUDED.owner, acquired_at = now() RETURNING epoch",
                    2, p2);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        LOG_WARN("ingest", "event=lease_epoch_failed partition=%d detail=\"%s\"", pt->index, PQresultErrorMessage(r));
        PQclear(r);
        lose_connection(c, gen); /* gives the lock back with the session; the epoch was not bumped */
        return false;
    }
    pt->epoch = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    pt->gen = gen;
    c->last_pg_ms = chat_mono_ns() / 1000000;
    return true;
}

/* Gives the lease of a partition whose thread ended back (its lock, if its connection lives on). */
static void unlock_partition(partition *pt)
{
    committer *c = pt->com;
    pthread_mutex_lock(&c->pg_mu);
    if (c->pg != NULL && atomic_load(&c->gen) == pt->gen) {
        char part[16];
        snprintf(part, sizeof part, "%d", pt->index);
        const char *p1[] = {part};
        PGresult *r = exec_params(c->pg, "SELECT pg_advisory_unlock(727001, $1::int)", 1, p1);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            lose_connection(c, pt->gen);
        PQclear(r);
        c->last_pg_ms = chat_mono_ns() / 1000000;
    }
    pthread_mutex_unlock(&c->pg_mu);
}

static bool try_acquire(wk_ingest *in, partition *pt)
{
    committer *c = pt->com;
    pthread_mutex_lock(&c->pg_mu);
    bool ok = lease_connection(c) && lock_partition(in, pt);
    pthread_mutex_unlock(&c->pg_mu);
    if (!ok)
        return false;
    atomic_store(&pt->state, P_RUNNING);
    return true;
}

/* Live ingest workers: one presence session each, named chat-ingest:<worker id>. */
static int live_workers(PGconn *pg)
{
    PGresult *r = PQexec(pg, "SELECT count(DISTINCT application_name) FROM pg_stat_activity"
                             " WHERE application_name LIKE 'chat-ingest:%' AND datname = current_database()");
    int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return n;
}

static bool any_done(wk_ingest *in)
{
    for (int p = 0; p < in->nparts; p++)
        if (atomic_load(&in->parts[p].state) == P_DONE)
            return true;
    return false;
}

static void *coordinator_thread(void *arg)
{
    wk_ingest *in = arg;
    PGconn *presence = NULL;
    char app_name[64];
    snprintf(app_name, sizeof app_name, "chat-ingest:%s", in->worker_id);
    int offset = (int)(chat_fnv1a32(in->worker_id) % (uint32_t)in->nparts);
    bool streams_ok = false;
    while (!atomic_load(&in->app->stopping)) {
        if (!streams_ok && chat_nats_connected(in->app->nc)) {
            jsCtx *js = NULL;
            if (natsConnection_JetStream(&js, in->app->nc, NULL) == NATS_OK)
                streams_ok = wk_streams_ensure(js, in->app->cfg->js_replicas, false) == CHAT_OK;
            /* once, not gating the ingest: the gateways refuse upgrades until the bucket exists */
            if (streams_ok)
                wk_streams_ensure_revoked(js, in->app->cfg->js_replicas, in->app->cfg->jwt_max_ttl_s, false);
            jsCtx_Destroy(js);
        }
        for (int p = 0; p < in->nparts; p++) {
            partition *pt = &in->parts[p];
            if (atomic_load(&pt->state) == P_DONE) {
                unlock_partition(pt);
                atomic_store(&pt->state, P_IDLE);
                in->owned--;
            }
        }
        if (presence == NULL || PQstatus(presence) != CONNECTION_OK) {
            PQfinish(presence);
            presence = NULL;
            if (wk_pg_connect(in->app->cfg->pg_dsn, app_name, &presence) != CHAT_OK)
                presence = NULL;
            /* A hung worker (SIGSTOP, a paused VM) must stop counting as live, or the others keep
             * their share of partitions and leave its partitions, whose leases PostgreSQL ended
             * after 10 s, without an owner. This session asks every second, so a live worker's
             * never idles that long. */
            else if (!wk_pg_exec(presence, "SET idle_session_timeout = '10s'", PGRES_COMMAND_OK, "presence_timeout")) {
                PQfinish(presence);
                presence = NULL;
            }
        }
        int workers = presence ? live_workers(presence) : -1;
        if (streams_ok && workers > 0 && chat_nats_connected(in->app->nc)) {
            int target = (in->nparts + workers - 1) / workers;
            for (int k = 0; k < in->nparts && in->owned < target; k++) {
                partition *pt = &in->parts[(offset + k) % in->nparts];
                if (atomic_load(&pt->state) == P_IDLE && try_acquire(in, pt))
                    in->owned++;
            }
            int releasing = 0;
            for (int p = 0; p < in->nparts; p++)
                releasing += atomic_load(&in->parts[p].state) == P_RELEASE;
            for (int k = in->nparts - 1; k >= 0 && in->owned - releasing > target; k--) {
                partition *pt = &in->parts[(offset + k) % in->nparts];
                int expect = P_RUNNING;
                if (atomic_compare_exchange_strong(&pt->state, &expect, P_RELEASE))
                    releasing++;
            }
        }
        atomic_store(in->m_owned, in->owned);
        /* a second between rounds, less when a committer gave a partition up: its lease goes back
         * at once, so another worker waiting for it takes it on its next round */
        for (int i = 0; i < 10 && !atomic_load(&in->app->stopping) && !any_done(in); i++)
            chat_sleep_ms(100);
    }
    /* stopping: each committer gives its partitions up (the batch in flight first) */
    for (int p = 0; p < in->nparts; p++) {
        partition *pt = &in->parts[p];
        int expect = P_RUNNING;
        atomic_compare_exchange_strong(&pt->state, &expect, P_RELEASE);
    }
    for (int p = 0; p < in->nparts; p++) {
        partition *pt = &in->parts[p];
        if (atomic_load(&pt->state) == P_IDLE)
            continue;
        while (atomic_load(&pt->state) != P_DONE)
            chat_sleep_ms(10);
        unlock_partition(pt);
        atomic_store(&pt->state, P_IDLE);
    }
    PQfinish(presence);
    return NULL;
}

static chat_status committer_start(wk_ingest *in, committer *c, int index)
{
    c->in = in;
    c->index = index;
    pthread_mutex_init(&c->pg_mu, NULL);
    natsInbox *inbox = NULL;
    if (natsInbox_Create(&inbox) != NATS_OK)
        return CHAT_ERR_INTERNAL;
    snprintf(c->inbox, sizeof c->inbox, "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 8 * GROUP_MAX;
    jo.PublishAsync.ErrHandler = on_publish_error;
    jo.PublishAsync.ErrHandlerClosure = c;
    jo.Wait = 5000;
    if (chat_nats_connect(in->app->cfg, "worker-events", false, &c->enc) != CHAT_OK)
        return CHAT_ERR_UNAVAILABLE;
    if (natsConnection_JetStream(&c->js, c->enc, &jo) != NATS_OK)
        return CHAT_ERR_INTERNAL;
    if (pthread_create(&c->thread, NULL, committer_thread, c) != 0)
        return CHAT_ERR_INTERNAL;
    c->started = true;
    return CHAT_OK;
}

/* After the coordinator has ended (every partition given up and its lease given back). */
static void committer_stop(committer *c)
{
    if (c->started) {
        atomic_store(&c->stop, true);
        pthread_join(c->thread, NULL);
    }
    natsSubscription_Destroy(c->sub);
    c->sub = NULL;
    PQfinish(c->pg);
    c->pg = NULL;
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->enc);
    pthread_mutex_destroy(&c->pg_mu);
}

static void committers_stop(wk_ingest *in)
{
    for (int k = 0; in->com && k < in->ncom; k++)
        committer_stop(&in->com[k]);
    free(in->com);
    in->com = NULL;
}

static void parts_free(wk_ingest *in)
{
    for (int p = 0; p < in->nparts; p++) {
        batch_reset(in->parts[p].buf);
        free(in->parts[p].buf->items);
        free(in->parts[p].buf);
    }
    free(in->parts);
}

chat_status wk_ingest_start(wk_app *app, wk_ingest **out)
{
    wk_ingest *in = calloc(1, sizeof *in);
    if (in == NULL)
        return CHAT_ERR_NOMEM;
    in->app = app;
    unsigned char r[8];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        memset(r, 0, sizeof r);
    snprintf(in->worker_id, sizeof in->worker_id, "%d-%02x%02x%02x%02x", (int)getpid(), r[0], r[1], r[2], r[3]);
    in->nparts = app->cfg->partitions;
    in->parts = calloc((size_t)in->nparts, sizeof *in->parts);
    for (int p = 0; p < in->nparts; p++) {
        in->parts[p].in = in;
        in->parts[p].index = p;
        in->parts[p].buf = calloc(1, sizeof(batch));
        if (in->parts[p].buf == NULL)
            abort();
    }
    chat_metrics *m = app->metrics;
    for (int p = 0; p < in->nparts; p++) {
        snprintf(in->parts[p].label, sizeof in->parts[p].label, "partition=\"%d\"", p);
        in->parts[p].m_pending = chat_metrics_gauge(m, "chat_ingest_consumer_pending", in->parts[p].label,
                                                    "Messages waiting in CHAT_IN for an owned partition (broker lag).");
    }
    for (int p = 0; p < in->nparts; p++)
        in->parts[p].m_ack_pending = chat_metrics_gauge(m, "chat_ingest_consumer_ack_pending", in->parts[p].label,
                                                        "Messages delivered to the partition's owner, not yet acked.");
    in->m_owned = chat_metrics_gauge(m, "chat_ingest_partitions_owned", NULL, "Ordering partitions this worker owns.");
    in->m_events = chat_metrics_counter(m, "chat_ingest_events_total", NULL, "Events committed to PostgreSQL.");
    in->m_redelivered = chat_metrics_counter(m, "chat_ingest_redelivered_total", NULL,
                                             "Messages found already stored and published again.");
    in->m_batches = chat_metrics_counter(m, "chat_ingest_batches_total", NULL, "Batches committed.");
    in->m_store_retries = chat_metrics_counter(m, "chat_ingest_store_retries_total", NULL,
                                               "Stores of a batch PostgreSQL refused for now (disk full, out of "
                                               "memory, deadlock, read-only): kept, tried again.");
    in->m_drop_invalid = chat_metrics_counter(m, "chat_ingest_dropped_total", "reason=\"invalid\"",
                                              "Messages dropped (acked without storing), by reason.");
    in->m_drop_not_member = chat_metrics_counter(m, "chat_ingest_dropped_total", "reason=\"not_member\"",
                                                 "Messages dropped (acked without storing), by reason.");
    in->m_drop_no_conv = chat_metrics_counter(m, "chat_ingest_dropped_total", "reason=\"no_conversation\"",
                                              "Messages dropped (acked without storing), by reason.");
    in->m_drop_poison = chat_metrics_counter(m, "chat_ingest_dropped_total", "reason=\"poison\"",
                                             "Messages dropped (acked without storing), by reason.");
    in->m_drop_not_found = chat_metrics_counter(m, "chat_ingest_dropped_total", "reason=\"no_target\"",
                                                "Messages dropped (acked without storing), by reason.");
    in->h_commit = chat_metrics_histogram(m, "chat_ingest_fetch_to_commit_seconds", NULL,
                                          "From a batch's fetch to its commit.");
    in->h_fanout = chat_metrics_histogram(m, "chat_ingest_commit_to_fanout_seconds", NULL,
                                          "From a batch's commit to its fanout published and CHAT_EVENTS acked.");
    in->h_broker_to_commit = chat_metrics_histogram(m, "chat_ingest_broker_to_commit_seconds", NULL,
                                                    "From the broker timestamp of a message to its commit.");
    in->ncom = app->cfg->ingest_committers < in->nparts ? app->cfg->ingest_committers : in->nparts;
    in->com = calloc((size_t)in->ncom, sizeof *in->com);
    bool started = in->com != NULL;
    for (int k = 0; started && k < in->ncom; k++)
        started = committer_start(in, &in->com[k], k) == CHAT_OK;
    if (!started) {
        committers_stop(in);
        parts_free(in);
        free(in);
        return CHAT_ERR_INTERNAL;
    }
    for (int p = 0; p < in->nparts; p++)
        in->parts[p].com = &in->com[p % in->ncom];
    *out = in;
    if (pthread_create(&in->coordinator, NULL, coordinator_thread, in) != 0) {
        committers_stop(in);
        parts_free(in);
        free(in);
        *out = NULL;
        return CHAT_ERR_INTERNAL;
    }
    LOG_INFO("ingest", "event=role_started worker=%s partitions=%d", in->worker_id, in->nparts);
    return CHAT_OK;
}

void wk_ingest_destroy(wk_ingest *in)
{
    if (in == NULL)
        return;
    pthread_join(in->coordinator, NULL); /* every partition was given up and its lease given back */
    committers_stop(in);
    parts_free(in);
    free(in);
}
