/* The ingest's CHAT_EVENTS stage, off the ack path: each committed event published (async, on the
 * committer's own connection), the PubAcks confirmed about once a second and each partition's
 * cursor (ingest_leases.events_upto) moved on, and what may be missing republished from
 * PostgreSQL by the same Nats-Msg-Id. Runs on the committer thread (the error handler on nats.c's). */
#include "wk_ingestp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"

/* ------------------------------------------------------------------------------------------ */
/* Publishing                                                                                   */
/* ------------------------------------------------------------------------------------------ */

void wk_ingest_on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    committer *c = closure;
    if (pae != NULL) {
        atomic_fetch_add(&c->publish_errors, 1);
        LOG_WARN("ingest", "event=events_publish_failed status=\"%s\" detail=\"%s\"", natsStatus_GetText(pae->Err),
                 pae->ErrText ? pae->ErrText : "");
    } else if (pa != NULL && pa->Duplicate && pa->Sequence == 0) {
        /* "duplicate" of nothing: nats-server 2.10 answers so for a write it lost in a leader
         * change (docs/reliability.md, finding 5); the repair publishes it again */
        atomic_fetch_add(&c->publish_errors, 1);
        LOG_WARN("ingest", "event=events_publish_failed status=\"duplicate of sequence 0\"");
    } else if (pa != NULL) {
        pthread_mutex_lock(&c->acked_mu);
        /* a duplicate wrote nothing: its sequence holds the earlier write of the same Nats-Msg-Id,
         * under that write's tag */
        const char *tag = NULL;
        const char *header = pa->Duplicate ? "Nats-Msg-Id" : "Chat-Publish";
        if (pa->Sequence > c->acked_seq && natsMsgHeader_Get(msg, header, &tag) == NATS_OK && tag) {
            c->acked_seq = pa->Sequence;
            c->acked_by_id = pa->Duplicate;
            snprintf(c->acked_tag, sizeof c->acked_tag, "%s", tag);
        }
        pthread_mutex_unlock(&c->acked_mu);
    }
    natsMsg_Destroy(msg);
}

/* Event e to CHAT_EVENTS; a publish refused at once counts as an error like a refused PubAck. */
static void publish(committer *c, const Chat__V1__Event *e)
{
    size_t len = chat__v1__event__get_packed_size(e);
    uint8_t *buf = chat_xmalloc(len ? len : 1);
    chat__v1__event__pack(e, buf);
    char subject[128], msgid[160], tag[96];
    chat_subject_event(subject, sizeof subject, e->conv);
    snprintf(msgid, sizeof msgid, "%s:%" PRIu64, e->conv, e->seq);
    snprintf(tag, sizeof tag, "%s/%d/%" PRIu64, c->in->worker_id, c->index, ++c->publishes);
    natsMsg *msg = NULL;
    natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
    natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    natsMsgHeader_Set(msg, "Chat-Type", "event");
    natsMsgHeader_Set(msg, "Chat-Publish", tag); /* this publish: what the trust check reads back */
    free(buf);
    if (js_PublishMsgAsync(c->js, &msg, NULL) != NATS_OK)
        atomic_fetch_add(&c->publish_errors, 1);
    natsMsg_Destroy(msg);
}

void wk_ingest_publish_event(committer *c, partition *pt, const Chat__V1__Event *e, int64_t created_us)
{
    publish(c, e);
    pt->events_dirty = true;
    if (created_us > pt->events_newest_us)
        pt->events_newest_us = created_us;
    c->events_dirty = true;
}

/* Forgets the publishes still waiting for a PubAck and returns how many there were. A PubAck lost
 * with a NATS node (or a connection that died silently) never comes: left in the context, such a
 * publish would make every later js_PublishAsyncComplete time out. What they carried is repaired
 * from PostgreSQL. */
static int drop_pending(committer *c)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, c->js) != NATS_OK)
        return 0; /* NATS_NOT_FOUND: nothing pending */
    int n = pending.Count;
    natsMsgList_Destroy(&pending);
    return n;
}

/* Waits up to wait_ms for the PubAcks of every publish so far, a slice at a time with a heartbeat
 * before each: a broker that stays silent must not let the lease session idle out. *acked is
 * js_PublishAsyncComplete's answer; false when the lease is lost meanwhile. nats.c runs the error
 * handler of a publish before it counts the publish done, so after NATS_OK publish_errors has
 * every error of them. */
static bool await_pubacks(committer *c, uint64_t gen, int64_t wait_ms, natsStatus *acked)
{
    natsStatus s = NATS_TIMEOUT;
    for (int64_t left = wait_ms; left > 0 && s == NATS_TIMEOUT;) {
        if (!wk_ingest_heartbeat(c, gen))
            return false;
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = left < PUBACK_SLICE_MS ? left : PUBACK_SLICE_MS;
        s = js_PublishAsyncComplete(c->js, &po);
        left -= po.MaxWait;
    }
    *acked = s;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* The cursor                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A lease just taken (its cursor upto_us, 0: none): a repair from the cursor goes before the
 * partition's first batch. */
static void arm_leased(partition *pt, int64_t upto_us)
{
    pt->events_upto_us = upto_us;
    pt->events_newest_us = upto_us;
    pt->created_floor_us = upto_us; /* nothing is stored before the cursor: a repair reads from it */
    pt->events_dirty = false;
    pt->events_repair = true;
    pt->events_repair_tried = false;
    pt->events_from_us = upto_us > 0 ? upto_us - EVENTS_SLACK_US : chat_now_ms() * 1000 - EVENTS_FIRST_REPAIR_US;
}

/* A repair is due from the cursor (less the slack), or from where one pending already starts. */
static void repair_due(partition *pt)
{
    int64_t from = pt->events_upto_us > 0 ? pt->events_upto_us - EVENTS_SLACK_US : pt->events_from_us;
    if (!pt->events_repair || from < pt->events_from_us)
        pt->events_from_us = from;
    pt->events_repair = true;
}

/* The partitions of c leased on connection generation gen, its own to write. */
static bool owned(const committer *c, const partition *pt, uint64_t gen)
{
    return pt->com == c && pt->active && pt->gen == gen;
}

/* Moves the cursor of every partition p of c with upto_us[p] past its cursor to upto_us[p], in one
 * UPDATE on the lease connection. A cursor that could not be written stays where it was (a later
 * repair then republishes more than it needs; the broker drops the repeats). */
static void persist_cursors(committer *c, uint64_t gen, const int64_t *upto_us)
{
    wk_ingest *in = c->in;
    chat_buf parts = {0}, uptos = {0};
    chat_buf_pg_array_begin(&parts);
    chat_buf_pg_array_begin(&uptos);
    int n = 0;
    for (int p = c->index; p < in->nparts; p += in->ncom) {
        if (!owned(c, &in->parts[p], gen) || upto_us[p] <= in->parts[p].events_upto_us)
            continue;
        char part[16], ts[48];
        snprintf(part, sizeof part, "%d", p);
        wk_ingest_format_ts(ts, sizeof ts, upto_us[p]);
        chat_buf_pg_array_str(&parts, part);
        chat_buf_pg_array_str(&uptos, ts);
        n++;
    }
    chat_buf_pg_array_end(&parts);
    chat_buf_pg_array_end(&uptos);
    bool ok = false;
    if (n > 0) {
        pthread_mutex_lock(&c->pg_mu);
        if (c->pg != NULL && atomic_load(&c->gen) == gen) {
            const char *params[] = {parts.data, uptos.data};
            PGresult *r = wk_ingest_exec_params(c->pg,
                                                "UPDATE ingest_leases l SET events_upto = v.upto"
                                                " FROM unnest($1::int[], $2::timestamptz[]) AS v(p, upto)"
                                                " WHERE l.partition = v.p",
                                                2, params);
            ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            if (!ok) {
                LOG_WARN("ingest", "event=events_cursor_failed detail=\"%s\"", PQresultErrorMessage(r));
                if (PQstatus(c->pg) != CONNECTION_OK)
                    wk_ingest_lose_connection(c, gen);
            }
            PQclear(r);
            c->last_pg_ms = chat_mono_ms();
        }
        pthread_mutex_unlock(&c->pg_mu);
    }
    chat_buf_free(&parts);
    chat_buf_free(&uptos);
    for (int p = c->index; ok && p < in->nparts; p += in->ncom)
        if (owned(c, &in->parts[p], gen) && upto_us[p] > in->parts[p].events_upto_us)
            in->parts[p].events_upto_us = upto_us[p];
}

/* Queues a checkpoint of c's publishes so far (all acknowledged): partition p's cursor may move to
 * upto_us[p] once the broker has synced them and the newest acknowledged write is still there. */
static void trust_later(committer *c, uint64_t gen, const int64_t *upto_us)
{
    if (c->trust.gen != gen) {
        wk_trust_clear(&c->trust);
        c->trust.gen = gen;
    }
    pthread_mutex_lock(&c->acked_mu);
    uint64_t seq = c->acked_seq;
    bool by_id = c->acked_by_id;
    char tag[sizeof c->acked_tag];
    memcpy(tag, c->acked_tag, sizeof tag);
    pthread_mutex_unlock(&c->acked_mu);
    int64_t at = chat_mono_ms() + chat_nats_synced_after_ms(c->in->app->cfg->nats_sync_ms);
    wk_trust_push(&c->trust, at, seq, tag, by_id, upto_us);
}

/* Confirms c's publishes since the last confirmation: when every PubAck came and none was an
 * error, every event published so far is in CHAT_EVENTS, and the cursors of the partitions that
 * published may move to their newest event once the broker has synced it (trust_later; not those
 * with a repair pending: what came before their lease, or before a failed confirmation, is not
 * known to be there). Otherwise the publishes still waiting are forgotten and those partitions
 * are repaired from their cursors. */
static void confirm(committer *c, uint64_t gen)
{
    wk_ingest *in = c->in;
    if (!c->events_dirty)
        return;
    natsStatus s;
    if (!await_pubacks(c, gen, EVENTS_CONFIRM_WAIT_MS, &s))
        return; /* the lease is lost: tend() gives the partitions up */
    int errors = atomic_exchange(&c->publish_errors, 0);
    c->events_dirty = false;
    bool ok = s == NATS_OK && errors == 0;
    if (!ok) {
        int dropped = drop_pending(c);
        atomic_fetch_add(in->m_events_unconfirmed, 1);
        LOG_WARN("ingest", "event=events_unconfirmed committer=%d status=\"%s\" errors=%d dropped=%d", c->index,
                 natsStatus_GetText(s), errors, dropped);
    }
    int64_t *upto = chat_xcalloc((size_t)in->nparts, sizeof *upto);
    bool any = false;
    for (int p = c->index; p < in->nparts; p += in->ncom) {
        partition *pt = &in->parts[p];
        if (!owned(c, pt, gen) || !pt->events_dirty)
            continue;
        pt->events_dirty = false;
        if (!ok)
            repair_due(pt);
        else if (!pt->events_repair && pt->events_newest_us > pt->events_upto_us) {
            upto[p] = pt->events_newest_us;
            any = true;
        }
    }
    if (any)
        trust_later(c, gen, upto);
    free(upto);
}

/* ------------------------------------------------------------------------------------------ */
/* Trust: what the broker acknowledged is still there once synced                              */
/* ------------------------------------------------------------------------------------------ */


/* Whether CHAT_EVENTS still holds the publish tagged `tag` at `seq` (by_id: the write of that
 * Nats-Msg-Id, which a duplicate's PubAck named): lost when the sequence is gone or holds another
 * write (a broker that lost its unsynced suffix reuses its sequences, and the same event published
 * again carries another tag); unknown when the broker does not answer. */
static wk_trust_verdict check_kept(committer *c, uint64_t seq, const char *tag, bool by_id)
{
    if (seq == 0)
        return WK_TRUST_KEPT; /* nothing new was acknowledged: nothing to lose */
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = EVENTS_CHECK_WAIT_MS;
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(&m, c->js, CHAT_STREAM_EVENTS, seq, &o, &jerr);
    if (s == NATS_OK) {
        const char *id = NULL;
        bool same = natsMsgHeader_Get(m, by_id ? "Nats-Msg-Id" : "Chat-Publish", &id) == NATS_OK && id != NULL &&
                    strcmp(id, tag) == 0;
        natsMsg_Destroy(m);
        return same ? WK_TRUST_KEPT : WK_TRUST_LOST;
    }
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
        return WK_TRUST_LOST;
    return WK_TRUST_UNKNOWN;
}

static wk_trust_verdict check_point(const wk_trust_point *pt, void *arg)
{
    return check_kept(arg, pt->seq, pt->tag, pt->by_id);
}

/* Checks c's checkpoints the broker has had time to sync, oldest first, one read each (normally
 * one is due a tick), and moves the cursors of those still there. A write that is there vouches
 * for the earlier writes of the same life of the broker only: a broker that lost its unsynced
 * suffix and came back takes new writes, which can be there while the lost ones before them are
 * not, so reading only the newest due checkpoint trusted lost events once both were due (the
 * fault suite's nats_power_loss, 2026-12-07). A write missing means the broker lost what it had
 * acknowledged: no cursor moved past it (none moves before its check), so every partition of c is
 * repaired from its cursor. A broker that does not answer is asked again at the next tick. */
static void check_trusted(committer *c, uint64_t gen)
{
    wk_ingest *in = c->in;
    if (c->trust.gen != gen) {
        wk_trust_clear(&c->trust);
        c->trust.gen = gen;
    }
    int due = wk_trust_due(&c->trust, chat_mono_ms());
    if (due == 0 || !wk_ingest_heartbeat(c, gen))
        return;
    wk_trust_verdict v;
    int kept = wk_trust_check_run(&c->trust, due, check_point, c, &v);
    const wk_trust_point *pt = wk_trust_at(&c->trust, kept < due ? kept : due - 1);
    uint64_t lost_seq = pt->seq; /* the point that stopped the run, read before the pops below */
    char lost_tag[sizeof pt->tag];
    memcpy(lost_tag, pt->tag, sizeof lost_tag);
    if (kept > 0) {
        int64_t *upto = chat_xcalloc((size_t)in->nparts, sizeof *upto);
        wk_trust_pop(&c->trust, kept, upto);
        persist_cursors(c, gen, upto);
        free(upto);
    }
    if (v != WK_TRUST_LOST)
        return;
    atomic_fetch_add(in->m_events_lost, 1);
    LOG_WARN("ingest", "event=events_lost committer=%d seq=%" PRIu64 " tag=\"%s\" detail=\"acknowledged, then not in "
             "CHAT_EVENTS: the broker lost writes it had not synced; repairing from the cursors\"",
             c->index, lost_seq, lost_tag);
    wk_trust_clear(&c->trust);
    pthread_mutex_lock(&c->acked_mu);
    c->acked_seq = 0;
    c->acked_tag[0] = '\0';
    c->acked_by_id = false;
    pthread_mutex_unlock(&c->acked_mu);
    for (int p = c->index; p < in->nparts; p += in->ncom)
        if (owned(c, &in->parts[p], gen))
            repair_due(&in->parts[p]);
}

/* ------------------------------------------------------------------------------------------ */
/* Repair                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Columns of the repair's rows: the stored event as history shows it (R_DELETED: a text or system
 * message, or an edit of one, whose delete event exists: a tombstone, without body and meta). */
enum { R_CONV, R_SEQ, R_ID, R_CMID, R_SENDER, R_KIND, R_BODY, R_META, R_TARGET, R_EMOJI, R_ON, R_CREATED, R_DELETED };

/* Rows of `messages` created in [start, end) after the key (created, conv, seq), in that order, at
 * most EVENTS_REPAIR_PAGE of them (all partitions: the caller keeps its own). created_at is read
 * through the BRIN index of migration 0007. */
static const char repair_sql[] =
    "SELECT m.conversation_id, m.seq, m.id, m.client_msg_id, m.sender_id, m.kind, m.body, m.meta::text,"
    " m.target_seq, m.emoji, m.reaction_on, (extract(epoch FROM m.created_at) * 1000000)::bigint,"
    " m.kind IN ('text', 'system', 'edit') AND EXISTS (SELECT 1 FROM messages x"
    " WHERE x.conversation_id = m.conversation_id AND x.kind = 'delete'"
    " AND x.target_seq = CASE WHEN m.kind = 'edit' THEN m.target_seq ELSE m.seq END)"
    " FROM messages m WHERE m.created_at >= $1::timestamptz AND m.created_at < $2::timestamptz"
    " AND (m.created_at, m.conversation_id, m.seq) > ($3::timestamptz, $4::text, $5::bigint)"
    " ORDER BY m.created_at, m.conversation_id, m.seq LIMIT 1000";

/* One page of repair_sql on the lease connection; NULL when it failed (logged; a lost connection
 * is given up). */
static PGresult *repair_page(committer *c, uint64_t gen, int64_t start_us, int64_t end_us, int64_t key_us,
                             const char *key_conv, uint64_t key_seq)
{
    char start[48], end[48], key[48], seq[24];
    wk_ingest_format_ts(start, sizeof start, start_us);
    wk_ingest_format_ts(end, sizeof end, end_us);
    wk_ingest_format_ts(key, sizeof key, key_us);
    snprintf(seq, sizeof seq, "%" PRIu64, key_seq);
    const char *params[] = {start, end, key, key_conv, seq};
    PGresult *r = NULL;
    pthread_mutex_lock(&c->pg_mu);
    if (c->pg != NULL && atomic_load(&c->gen) == gen) {
        r = wk_ingest_exec_params(c->pg, repair_sql, 5, params);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            LOG_WARN("ingest", "event=events_repair_failed step=read detail=\"%s\"", PQresultErrorMessage(r));
            if (PQstatus(c->pg) != CONNECTION_OK)
                wk_ingest_lose_connection(c, gen);
            PQclear(r);
            r = NULL;
        }
        c->last_pg_ms = chat_mono_ms();
    }
    pthread_mutex_unlock(&c->pg_mu);
    return r;
}

/* Republishes row i of r (repair_sql's columns). */
static void republish_row(committer *c, PGresult *r, int i, int64_t created_us)
{
    Chat__V1__Event e = CHAT__V1__EVENT__INIT;
    e.conv = PQgetvalue(r, i, R_CONV);
    e.seq = strtoull(PQgetvalue(r, i, R_SEQ), NULL, 10);
    e.id = PQgetvalue(r, i, R_ID);
    e.cmid = PQgetvalue(r, i, R_CMID);
    e.sender = PQgetvalue(r, i, R_SENDER);
    e.kind = chat_kind_parse(PQgetvalue(r, i, R_KIND));
    e.body = PQgetvalue(r, i, R_BODY);
    e.meta_json = PQgetvalue(r, i, R_META);
    e.target = PQgetisnull(r, i, R_TARGET) ? 0 : strtoull(PQgetvalue(r, i, R_TARGET), NULL, 10);
    e.emoji = PQgetvalue(r, i, R_EMOJI);
    e.reaction_on = strcmp(PQgetvalue(r, i, R_ON), "t") == 0;
    e.deleted = strcmp(PQgetvalue(r, i, R_DELETED), "t") == 0;
    if (e.deleted) {
        e.body = "";
        e.meta_json = "";
    }
    e.ts_ms = created_us / 1000;
    e.committed_ms = e.ts_ms; /* the commit time is not stored */
    publish(c, &e);
}

/* What one repair covers: the partitions in it (a bool each), their earliest start, and what it
 * republished of each. */
typedef struct repair_run {
    bool *in;
    int64_t from_us, until_us;
    int *count;
    int64_t *newest_us;
    int total;
} repair_run;

/* Republishes the rows of page r that belong to the run (their partition in it, created at or
 * after its own start) in the page's order; their PubAcks are awaited by the caller. */
static void republish_page(committer *c, repair_run *run, PGresult *r)
{
    wk_ingest *in = c->in;
    for (int i = 0; i < PQntuples(r); i++) {
        int p = (int)chat_partition_of(PQgetvalue(r, i, R_CONV), (uint32_t)in->nparts);
        int64_t created_us = strtoll(PQgetvalue(r, i, R_CREATED), NULL, 10);
        if (!run->in[p] || created_us < in->parts[p].events_from_us)
            continue;
        republish_row(c, r, i, created_us);
        run->count[p]++;
        run->total++;
        if (created_us > run->newest_us[p])
            run->newest_us[p] = created_us;
    }
}

/* Reads `messages` from run->from_us to run->until_us in windows of time, each in pages of
 * EVENTS_REPAIR_PAGE rows ordered by (created_at, conv, seq), republishes what belongs to the run
 * and waits for each page's PubAcks. A window grows while it holds little and shrinks when it
 * took several pages, so that a long quiet gap costs few statements and a busy one never sorts
 * much more than a page. True when every row was republished and acknowledged. */
static bool repair_read(committer *c, uint64_t gen, repair_run *run)
{
    int64_t window_us = 10LL * 1000000;
    for (int64_t start = run->from_us; start < run->until_us;) {
        int64_t end = start + window_us < run->until_us ? start + window_us : run->until_us;
        int64_t key_us = start;
        char key_conv[256] = "";
        uint64_t key_seq = 0;
        int pages = 0, rows = 0;
        for (;;) {
            PGresult *r = repair_page(c, gen, start, end, key_us, key_conv, key_seq);
            if (r == NULL)
                return false;
            int n = PQntuples(r);
            republish_page(c, run, r);
            if (n > 0) {
                key_us = strtoll(PQgetvalue(r, n - 1, R_CREATED), NULL, 10);
                snprintf(key_conv, sizeof key_conv, "%s", PQgetvalue(r, n - 1, R_CONV));
                key_seq = strtoull(PQgetvalue(r, n - 1, R_SEQ), NULL, 10);
            }
            PQclear(r);
            pages++;
            rows += n;
            natsStatus s;
            if (!await_pubacks(c, gen, EVENTS_REPAIR_WAIT_MS, &s))
                return false;
            int errors = atomic_exchange(&c->publish_errors, 0);
            if (s != NATS_OK || errors > 0) {
                int dropped = drop_pending(c);
                LOG_WARN("ingest", "event=events_repair_failed step=publish status=\"%s\" errors=%d dropped=%d",
                         natsStatus_GetText(s), errors, dropped);
                return false;
            }
            if (n < EVENTS_REPAIR_PAGE)
                break;
        }
        if (pages > 4 && window_us > 1000000)
            window_us /= 2;
        else if (rows < EVENTS_REPAIR_PAGE / 4 && window_us < 3600LL * 1000000)
            window_us *= 2;
        start = end;
    }
    return true;
}

/* Repairs the partitions of c whose repair is due (all of them at once, one read of `messages`;
 * `leased`: only those of leases just taken, whatever the back-off after a failed repair):
 * republishes from PostgreSQL every event of theirs created at or after each one's start, by the
 * same Nats-Msg-Id (what CHAT_EVENTS has already, within its duplicate window, it drops), and on
 * success moves their cursors past the newest. No batch of c is committed meanwhile, so no event
 * of theirs is stored while it reads. */
static void repair(committer *c, uint64_t gen, bool leased)
{
    wk_ingest *in = c->in;
    int64_t now_ms = chat_mono_ms();
    if (!leased && now_ms < c->repair_at_ms)
        return;
    repair_run run = {.from_us = INT64_MAX};
    run.in = chat_xcalloc((size_t)in->nparts, sizeof *run.in);
    run.count = chat_xcalloc((size_t)in->nparts, sizeof *run.count);
    run.newest_us = chat_xcalloc((size_t)in->nparts, sizeof *run.newest_us);
    int64_t newest = 0;
    bool any = false;
    for (int p = c->index; p < in->nparts; p += in->ncom) {
        partition *pt = &in->parts[p];
        if (!owned(c, pt, gen) || !pt->events_repair || (leased && pt->events_repair_tried))
            continue;
        any = run.in[p] = true;
        pt->events_repair_tried = true;
        if (pt->events_from_us < run.from_us)
            run.from_us = pt->events_from_us;
        if (pt->events_newest_us > newest)
            newest = pt->events_newest_us;
    }
    int64_t now_us = chat_now_ms() * 1000;
    run.until_us = (newest > now_us ? newest : now_us) + EVENTS_SLACK_US;
    if (any && repair_read(c, gen, &run)) {
        for (int p = c->index; p < in->nparts; p += in->ncom) {
            partition *pt = &in->parts[p];
            if (!run.in[p])
                continue;
            char from[48];
            wk_ingest_format_ts(from, sizeof from, pt->events_from_us);
            LOG_INFO("ingest", "event=events_repaired partition=%d from=\"%s\" republished=%d", p, from, run.count[p]);
            pt->events_repair = false;
            if (run.newest_us[p] > pt->events_newest_us)
                pt->events_newest_us = run.newest_us[p];
            run.newest_us[p] = pt->events_newest_us;
        }
        atomic_fetch_add(in->m_events_republished, (uint64_t)run.total);
        trust_later(c, gen, run.newest_us);
        c->repair_backoff_ms = 0;
    } else if (any) {
        atomic_fetch_add(in->m_events_republished, (uint64_t)run.total);
        c->repair_backoff_ms = c->repair_backoff_ms == 0 ? 1000 : c->repair_backoff_ms * 2;
        if (c->repair_backoff_ms > EVENTS_REPAIR_BACKOFF_MS)
            c->repair_backoff_ms = EVENTS_REPAIR_BACKOFF_MS;
        c->repair_at_ms = chat_mono_ms() + c->repair_backoff_ms;
        LOG_WARN("ingest", "event=events_repair_deferred committer=%d republished=%d retry_ms=%lld", c->index,
                 run.total, (long long)c->repair_backoff_ms);
    }
    free(run.in);
    free(run.count);
    free(run.newest_us);
}

void wk_ingest_events_tick(committer *c)
{
    wk_ingest *in = c->in;
    uint64_t gen = atomic_load(&c->gen);
    for (int p = c->index; p < in->nparts; p += in->ncom) {
        partition *pt = &in->parts[p];
        if (pt->events_leased && owned(c, pt, gen)) {
            arm_leased(pt, pt->events_leased_upto_us);
            pt->events_leased = false;
        }
    }
    /* The events connection came back: the broker may be one that restarted on less than it had
     * acknowledged. A checkpoint vouches only for earlier writes of the same life of the broker,
     * and writes acknowledged after the last checkpoint before the loss belong to none: the first
     * checkpoint after it would name a write of the new life, there, and trust them (the fault
     * suite's nats_power_loss lost 62 events so on 2026-12-08, once in about ten runs). So every
     * partition is repaired from its cursor, which nothing unchecked moved; the broker drops
     * what it still has by Nats-Msg-Id. */
    uint64_t reconnects = chat_nats_reconnects(c->enc);
    if (reconnects != c->enc_reconnects) {
        c->enc_reconnects = reconnects;
        LOG_INFO("ingest", "event=events_reconnected committer=%d detail=\"repairing from the cursors\"", c->index);
        for (int p = c->index; p < in->nparts; p += in->ncom)
            if (owned(c, &in->parts[p], gen))
                repair_due(&in->parts[p]);
    }
    bool leased = false; /* a partition just leased: its repair goes before its first batch */
    for (int p = c->index; p < in->nparts && !leased; p += in->ncom)
        leased = owned(c, &in->parts[p], gen) && in->parts[p].events_repair && !in->parts[p].events_repair_tried;
    int64_t now = chat_mono_ms();
    if (!leased && now - c->events_tick_ms < EVENTS_CONFIRM_MS)
        return;
    c->events_tick_ms = now;
    confirm(c, gen);
    check_trusted(c, gen);
    repair(c, gen, leased);
}
