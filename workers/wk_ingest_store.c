/* The ingest's store stage: a batch (wk_ingest_batch.c) stored in one transaction on the
 * committer's lease connection in two round trips (a libpq pipeline): dedupe by (conv, cmid),
 * members and targets of changes; then, after authorization here, next seq per conversation,
 * insert and COMMIT. Committer thread, under its pg_mu for everything that touches the connection. */
#include "wk_ingestp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_post.h"
#include "chat_time.h"
#include "wk_archive.h"
#include "wk_pg.h"

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

void wk_ingest_format_ts(char *buf, size_t size, int64_t us)
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

/* What a failed statement of the store means to the ingest (wk_pg's class, the ingest's policy). */
static int classify(PGconn *pg, const wk_pg_error *e, const char *what)
{
    if (PQstatus(pg) != CONNECTION_OK)
        return S_LEASE_LOST;
    if (strcmp(e->sqlstate, "23514") == 0 && strstr(e->detail, "no partition") != NULL)
        return S_NO_PARTITION;
    LOG_WARN("ingest", "event=store_failed step=%s sqlstate=%s detail=\"%s\"", what, e->sqlstate, e->detail);
    /* 57P01 admin shutdown, 08xxx connection: the session (and with it the lease) is gone */
    if (e->failure == WK_PG_GONE)
        return S_LEASE_LOST;
    /* only what the messages themselves cause is poison: 22 data exception (an encoding, a bad
     * value), 23 integrity constraint, 54 program limit (a row too large); anything else is the
     * database's state (53 disk full or out of memory, 40 deadlock, 25 read-only, 55, 57, 58,
     * XX) and dropping the batch for it would lose messages that a retry stores */
    if (e->failure == WK_PG_DATA)
        return S_DATA_ERROR;
    return S_RETRY;
}

/* A change whose target is beyond bigint (a seq never reaches it) is not looked up: no message
 * has that seq (PostgreSQL would refuse the whole read, 22003). */
static bool target_readable(const item *it)
{
    return it->state == I_NEW && chat_post_is_change(it->post->kind) && it->post->target <= (uint64_t)INT64_MAX;
}

/* 2c, sent: the target of every change of b (validated, not a repeat within b), whoever posted it:
 * nothing is answered from these rows before authorize(); *sent false when b has no change. */
static bool send_targets(PGconn *pg, batch *b, bool *sent, wk_pg_error *e)
{
    chat_buf convs = {0}, seqs = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&seqs);
    int n = 0;
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (!target_readable(it))
            continue;
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, it->post->target);
        chat_buf_pg_array_str(&convs, it->post->conv);
        chat_buf_pg_array_str(&seqs, seq);
        n++;
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&seqs);
    const char *params[] = {convs.data, seqs.data};
    bool ok = n == 0 || wk_ingest_pipe_send(pg, Q_TARGETS, params, e);
    *sent = n > 0;
    chat_buf_free(&convs);
    chat_buf_free(&seqs);
    return ok;
}

/* 2c, decided (after authorize): the target of every change still new must be a stored message,
 * not deleted, the sender's own unless a reaction. r: Q_TARGETS' rows (NULL: b had no change). */
static void apply_targets(batch *b, const PGresult *r)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_NEW || !chat_post_is_change(it->post->kind))
            continue;
        int row = -1;
        for (int k = 0; r != NULL && k < PQntuples(r) && row < 0; k++)
            if (strcmp(PQgetvalue(r, k, 0), it->post->conv) == 0 &&
                strtoull(PQgetvalue(r, k, 1), NULL, 10) == it->post->target)
                row = k;
        const char *kind = row >= 0 && !PQgetisnull(r, row, 3) ? PQgetvalue(r, row, 3) : NULL;
        if (kind == NULL || (strcmp(kind, "text") != 0 && strcmp(kind, "system") != 0))
            wk_ingest_reject(it, DROP_TARGET_MISSING);
        else if (strcmp(PQgetvalue(r, row, 4), "t") == 0)
            wk_ingest_reject(it, DROP_TARGET_DELETED);
        else if (it->post->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION &&
                 strcmp(PQgetvalue(r, row, 2), it->post->sender) != 0)
            wk_ingest_reject(it, DROP_TARGET_NOT_OWN);
    }
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
                wk_ingest_reject(it, DROP_ARCHIVING);
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
        members *m = it->state == I_DROP ? NULL : wk_ingest_find_conv(b, it->post->conv);
        if (m == NULL)
            continue;
        if (m->n == 0)
            wk_ingest_reject(it, DROP_NO_CONVERSATION);
        else if (!it->backend && !is_member(m, it->post->sender))
            wk_ingest_reject(it, DROP_NOT_MEMBER);
        else if (it->state == I_STORED &&
                 strcmp(PQgetvalue(b->stored, it->stored_row, D_SENDER), it->post->sender) != 0)
            wk_ingest_reject(it, DROP_CMID_TAKEN);
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
            wk_ingest_reject(it, first->drop);
        else if (first->state == I_DROP)
            wk_ingest_reject(it, DROP_FIRST_REFUSED);
        else if (strcmp(answer_sender(b, first), it->post->sender) != 0)
            wk_ingest_reject(it, DROP_CMID_TAKEN);
    }
}

/* 1, sent: already stored? (conv, cmid) of every new post, to q: Q_SEEN (how many) or Q_DEDUPE
 * (their stored rows). */
static bool send_dedupe(PGconn *pg, batch *b, int q, wk_pg_error *e)
{
    chat_buf convs = {0}, cmids = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&cmids);
    for (int i = 0; i < b->n; i++)
        if (b->items[i].state == I_NEW) {
            chat_buf_pg_array_str(&convs, b->items[i].post->conv);
            chat_buf_pg_array_str(&cmids, b->items[i].post->cmid);
        }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&cmids);
    const char *params[] = {convs.data, cmids.data};
    bool ok = wk_ingest_pipe_send(pg, q, params, e);
    chat_buf_free(&convs);
    chat_buf_free(&cmids);
    return ok;
}

/* 2, sent: the members of every conversation of the batch (for the check and the fanout). */
static bool send_members(PGconn *pg, batch *b, wk_pg_error *e)
{
    chat_buf convs = {0};
    chat_buf_pg_array_begin(&convs);
    for (int i = 0; i < b->nconvs; i++)
        chat_buf_pg_array_str(&convs, b->convs[i].conv);
    chat_buf_pg_array_end(&convs);
    const char *params[] = {convs.data};
    bool ok = wk_ingest_pipe_send(pg, Q_MEMBERS, params, e);
    chat_buf_free(&convs);
    return ok;
}

/* 2, read: Q_MEMBERS' rows r into b's conversations (r is cleared). */
static void read_members(batch *b, PGresult *r)
{
    for (int row = 0; row < PQntuples(r); row++) {
        members *m = wk_ingest_find_conv(b, PQgetvalue(r, row, 0));
        if (m == NULL)
            continue;
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 4;
            m->users = chat_xrealloc(m->users, (size_t)m->cap * sizeof *m->users);
        }
        m->users[m->n++] = chat_xstrdup(PQgetvalue(r, row, 1));
    }
    PQclear(r);
}

/* The parameters of Q_WRITE by name: $1, $2 the new events counted per conversation, $3..$13 the
 * columns of each new event, in batch order. */
typedef struct write_columns {
    chat_buf convs, counts;
    chat_buf conv, id, cmid, sender, kind, body, meta, target, emoji, reaction_on, created_at;
} write_columns;

#define WRITE_COLUMNS 13

/* The columns of w in parameter order ($1 first). */
static void write_columns_list(write_columns *w, chat_buf *all[WRITE_COLUMNS])
{
    chat_buf *list[WRITE_COLUMNS] = {&w->convs,  &w->counts, &w->conv, &w->id,     &w->cmid,
                                     &w->sender, &w->kind,   &w->body, &w->meta,   &w->target,
                                     &w->emoji,  &w->reaction_on,      &w->created_at};
    memcpy(all, list, sizeof list);
}

/* $1, $2: the new events of b counted per conversation; how many there are in all. */
static int write_counts(batch *b, write_columns *w)
{
    int nnew = 0;
    int *count = chat_xcalloc((size_t)b->nconvs + 1, sizeof *count);
    for (int i = 0; i < b->n; i++) {
        const item *it = &b->items[i];
        members *m = it->state == I_NEW ? wk_ingest_find_conv(b, it->post->conv) : NULL;
        if (m != NULL)
            count[m - b->convs]++;
    }
    for (int k = 0; k < b->nconvs; k++)
        if (count[k]) {
            char n[16];
            snprintf(n, sizeof n, "%d", count[k]);
            chat_buf_pg_array_str(&w->convs, b->convs[k].conv);
            chat_buf_pg_array_str(&w->counts, n);
            nnew += count[k];
        }
    free(count);
    return nnew;
}

/* $3..$13: the columns of a new event (created_at from stamp_created()); it gets its id here. */
static void write_event(write_columns *w, item *it)
{
    Chat__V1__Post *p = it->post;
    char target[24], ts[48];
    make_id(it->id, it->ts_us / 1000);
    snprintf(target, sizeof target, "%" PRIu64, p->target);
    wk_ingest_format_ts(ts, sizeof ts, it->created_us);
    chat_buf_pg_array_str(&w->conv, p->conv);
    chat_buf_pg_array_str(&w->id, it->id);
    chat_buf_pg_array_str(&w->cmid, p->cmid);
    chat_buf_pg_array_str(&w->sender, p->sender);
    chat_buf_pg_array_str(&w->kind, chat_kind_name(p->kind));
    chat_buf_pg_array_str(&w->body, p->body);
    chat_buf_pg_array_str(&w->meta, p->meta_json[0] ? p->meta_json : NULL);
    chat_buf_pg_array_str(&w->target, p->target ? target : NULL);
    chat_buf_pg_array_str(&w->emoji, p->emoji[0] ? p->emoji : NULL);
    chat_buf_pg_array_str(&w->reaction_on, p->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION
                                               ? (p->reaction_on ? "t" : "f")
                                               : NULL);
    chat_buf_pg_array_str(&w->created_at, ts);
}

/* The seq of each new event, from Q_WRITE's rows (ord, seq) by its place in the arrays. */
static void read_seqs(batch *b, PGresult *r, int nnew)
{
    int *seq_of = chat_xcalloc((size_t)nnew, sizeof *seq_of); /* row of the nth new event, or -1 */
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
            wk_ingest_reject(it, DROP_NO_CONVERSATION);
        k++;
    }
    free(seq_of);
}

/* 3 and 4, sent: one statement: the next seqs of every conversation of the batch (one UPDATE ...
 * RETURNING, with the new events counted per conversation), the events numbered in batch order
 * within each conversation, and their dedupe rows; it returns the seq of each event by its place
 * in the arrays. *nnew: the new events (none: nothing is sent). */
static bool send_write(PGconn *pg, batch *b, int *nnew, wk_pg_error *e)
{
    write_columns w = {0};
    chat_buf *all[WRITE_COLUMNS];
    write_columns_list(&w, all);
    for (int k = 0; k < WRITE_COLUMNS; k++)
        chat_buf_pg_array_begin(all[k]);
    *nnew = write_counts(b, &w);
    bool ok = true;
    if (*nnew > 0) {
        for (int i = 0; i < b->n; i++)
            if (b->items[i].state == I_NEW)
                write_event(&w, &b->items[i]);
        const char *params[WRITE_COLUMNS];
        for (int k = 0; k < WRITE_COLUMNS; k++) {
            chat_buf_pg_array_end(all[k]);
            params[k] = all[k]->data;
        }
        ok = wk_ingest_pipe_send(pg, Q_WRITE, params, e);
    }
    for (int k = 0; k < WRITE_COLUMNS; k++)
        chat_buf_free(all[k]);
    return ok;
}

/* Round trip 1: BEGIN, how many posts are stored already, members and (when b has changes)
 * targets, sent together with a sync, their answers read in order: b's members filled, *targets
 * Q_TARGETS' rows (or NULL). When some posts are stored already, round trip 1b reads their stored
 * rows into b. *synced while the sync's answer is still due. False with *step and *e when one
 * failed. */
static bool store_reads(PGconn *pg, batch *b, PGresult **targets, bool *synced, const char **step, wk_pg_error *e)
{
    bool has_targets = false;
    *step = "send";
    if (!wk_ingest_pipe_begin(pg, e) || !send_dedupe(pg, b, Q_SEEN, e) || !send_members(pg, b, e) ||
        !send_targets(pg, b, &has_targets, e) || !(*synced = wk_ingest_pipe_sync(pg, e)))
        return false;
    *step = "begin";
    PGresult *r = wk_ingest_pipe_result(pg, PGRES_COMMAND_OK, e);
    if (r == NULL)
        return false;
    PQclear(r);
    *step = "dedupe";
    if ((r = wk_ingest_pipe_result(pg, PGRES_TUPLES_OK, e)) == NULL)
        return false;
    bool seen = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    *step = "members";
    if ((r = wk_ingest_pipe_result(pg, PGRES_TUPLES_OK, e)) == NULL)
        return false;
    read_members(b, r);
    *step = "targets";
    if (has_targets && (*targets = wk_ingest_pipe_result(pg, PGRES_TUPLES_OK, e)) == NULL)
        return false;
    *step = "sync";
    if (!wk_ingest_pipe_synced(pg, e))
        return false;
    *synced = false;
    if (!seen)
        return true;
    *step = "send";
    if (!send_dedupe(pg, b, Q_DEDUPE, e) || !(*synced = wk_ingest_pipe_sync(pg, e)))
        return false;
    *step = "dedupe";
    if ((r = wk_ingest_pipe_result(pg, PGRES_TUPLES_OK, e)) == NULL)
        return false;
    mark_stored(b, r); /* b->stored now */
    *step = "sync";
    if (!wk_ingest_pipe_synced(pg, e))
        return false;
    *synced = false;
    return true;
}

/* Round trip 2: the write (when there is something new) and COMMIT, sent together with the sync
 * (*synced then). False with *step and *e when one failed. */
static bool store_writes(PGconn *pg, batch *b, bool *synced, const char **step, wk_pg_error *e)
{
    int nnew = 0;
    *step = "send";
    if (!send_write(pg, b, &nnew, e) || !(*synced = wk_ingest_pipe_commit(pg, e)))
        return false;
    *step = "write";
    if (nnew > 0) {
        PGresult *r = wk_ingest_pipe_result(pg, PGRES_TUPLES_OK, e);
        if (r == NULL)
            return false;
        read_seqs(b, r, nnew);
        PQclear(r);
    }
    settle_duplicates(b);
    *step = "commit";
    PGresult *r = wk_ingest_pipe_result(pg, PGRES_COMMAND_OK, e);
    PQclear(r);
    return r != NULL;
}

/* Runs the whole batch in one transaction on the lease connection (the caller holds pg_mu), in two
 * round trips, each ending with a sync (wk_ingest_pipe_sync says why): the reads, then (after authorization, here) the write and the commit. Fills
 * seq/id of NEW items, marks STORED and DROP. A statement that fails leaves the rest of the
 * pipeline skipped by the server; the transaction is rolled back as it was when each statement
 * was a round trip of its own, and the failure classified the same way. */
/* The created_at of b's new events: the broker timestamp, but never earlier than what the
 * partition stored or published before (created_floor_us, events_newest_us). A partition's events
 * are then stored in created_at order, which the CHAT_EVENTS cursor relies on (a repair reads from
 * it), although the backend lane's posts may be committed after later users' posts
 * (wk_ingestp.h, lanes). A floor raised by a transaction that then fails only makes later
 * created_at values a little later. */
static void stamp_created(committer *c, batch *b)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_NEW)
            continue;
        partition *pt = &c->in->parts[it->part];
        int64_t floor = pt->created_floor_us > pt->events_newest_us ? pt->created_floor_us : pt->events_newest_us;
        it->created_us = it->ts_us > floor ? it->ts_us : floor;
        pt->created_floor_us = it->created_us;
    }
}

static int store_batch(committer *c, batch *b)
{
    PGconn *pg = c->pg;
    wk_pg_error e;
    const char *step = "send";
    PGresult *targets = NULL;
    bool synced = false;
    bool ok = store_reads(pg, b, &targets, &synced, &step, &e);
    if (ok) {
        /* 2b. every post, duplicates included: the conversation must exist and a gateway's sender
         * be a member; a stored duplicate must be the poster's own message */
        authorize(b);
        /* 2c. changes (edit, delete, reaction): the target must be a stored message that is not
         * deleted; only its sender edits or deletes it (after 2b: a non-member learns nothing of
         * the conversation's seqs) */
        apply_targets(b, targets);
        stamp_created(c, b);
        ok = store_writes(pg, b, &synced, &step, &e);
    }
    PQclear(targets);
    int rc = ok ? S_OK : classify(pg, &e, step);
    if (!wk_ingest_pipe_end(pg, synced))
        rc = S_LEASE_LOST; /* a connection in an unknown state is given up, and its leases with it */
    else if (rc != S_OK && rc != S_LEASE_LOST)
        wk_pg_rollback(pg);
    c->last_pg_ms = chat_mono_ms();
    return rc;
}

/* store_batch() under pg_mu, creating a missing `messages` partition on the way; S_LEASE_LOST when the
 * connection of generation gen is gone (nothing of a lost lease is ever written). */
int wk_ingest_store_locked(committer *c, batch *b, uint64_t gen)
{
    wk_ingest *in = c->in;
    pthread_mutex_lock(&c->pg_mu);
    int rc = S_LEASE_LOST;
    for (int attempt = 0; attempt < 5 && c->pg != NULL && atomic_load(&c->gen) == gen; attempt++) {
        wk_ingest_batch_prepare(b); /* every attempt from the start: members and stored rows are read again */
        rc = store_batch(c, b);
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
        wk_ingest_format_ts(from, sizeof from, oldest);
        snprintf(span, sizeof span, "%lld milliseconds", (long long)in->app->cfg->partition_span_ms);
        const char *params[] = {from, span};
        PGresult *r = wk_ingest_exec_params(c->pg, params_sql, 2, params);
        PQclear(r);
    }
    if (rc == S_LEASE_LOST)
        wk_ingest_lose_connection(c, gen);
    pthread_mutex_unlock(&c->pg_mu);
    return rc;
}
