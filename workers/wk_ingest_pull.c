/* The ingest's pull stage: each owned partition's consumer set up and kept pulled (an open pull
 * request whose messages stream into the committer's inbox), the inbox's messages sorted to their
 * partitions, ack subjects read for timestamps and lag. Runs on the committer thread (a consumer's
 * set-up on a short thread of its own, which owns nothing else of the partition meanwhile). */
#include "wk_ingestp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chat_log.h"
#include "chat_nats.h"
#include "chat_time.h"

/* ------------------------------------------------------------------------------------------ */
/* Pulling                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Creates lane k's consumer of the partition on its stream (its filter, its limits). */
static chat_status add_consumer(partition *pt, int k)
{
    lane *l = &pt->lanes[k];
    l->on = false;
    const char *stream = k == LANE_BULK ? CHAT_STREAM_BULK : CHAT_STREAM_IN;
    l->stream = stream;
    char name[48];
    snprintf(name, sizeof name, "ingest-%d-%lld", pt->index, (long long)pt->epoch);
    snprintf(l->consumer, sizeof l->consumer, "%s", name);
    /* the ack subject names the stream and the consumer: $JS.ACK.<stream>.<consumer>. */
    snprintf(l->ack_key, sizeof l->ack_key, ".%s.%s.", stream, name);
    char filter[64];
    if (k == LANE_BULK)
        chat_subject_bulk_partition(filter, sizeof filter, pt->index);
    else
        chat_subject_in_partition(filter, sizeof filter, pt->index); /* users' and backends' posts, in order */
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = l->consumer;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = ACK_WAIT_NS;
    cc.MaxDeliver = MAX_DELIVER;
    cc.MaxAckPending = k == LANE_BULK ? BULK_ACK_PENDING : 4 * BATCH_MAX;
    cc.DeliverPolicy = js_DeliverAll;
    /* Its state in the broker's memory, not in a file: on a work-queue stream the unacked messages
     * are the stream, so a consumer lost with a broker restart (this one is made again on the
     * reconnect, DeliverAll) misses nothing. A file consumer writes its state file (open, write,
     * close) up to ten times a second for every partition that moved: at 100 msg/s that was 45 %
     * of nats-server's CPU (bench/findings.md item 18). */
    cc.MemoryStorage = true;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, pt->js, l->stream, &cc, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        LOG_WARN("ingest", "event=consumer_setup_failed partition=%d consumer=%s status=\"%s\" jerr=%d", pt->index,
                 l->consumer, natsStatus_GetText(s), (int)jerr);
        return CHAT_ERR_UNAVAILABLE;
    }
    chat_subject_js_next(l->next_subject, sizeof l->next_subject, l->stream, l->consumer);
    snprintf(l->reply, sizeof l->reply, "%s.%d.%lld%s", pt->com->inbox, pt->index, (long long)pt->epoch,
             k == LANE_BULK ? ".b" : "");
    l->on = true;
    return CHAT_OK;
}

static chat_status setup_consumer(partition *pt)
{
    wk_ingest *in = pt->in;
    natsConnection *nc = in->app->nc;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    jsCtx_Destroy(pt->js); /* a reset's: the one of the consumer made before */
    pt->js = NULL;
    if (natsConnection_JetStream(&pt->js, nc, &jo) != NATS_OK)
        return CHAT_ERR_UNAVAILABLE;
    /* delete the consumers of earlier leases of this partition on both streams: a stale owner
     * pulls from nothing (a reset deletes its own alone: a newer lease's may exist by now) */
    char prefix[32];
    snprintf(prefix, sizeof prefix, "ingest-%d-", pt->index);
    static const char *const streams[LANES] = {[LANE_LIVE] = CHAT_STREAM_IN, [LANE_BULK] = CHAT_STREAM_BULK};
    for (int k = 0; k < LANES; k++) {
        jsConsumerNamesList *names = NULL;
        jsErrCode jerr = 0;
        if (pt->active) {
            js_DeleteConsumer(pt->js, streams[k], pt->lanes[k].consumer, NULL, &jerr);
        } else if (js_ConsumerNames(&names, pt->js, streams[k], NULL, &jerr) == NATS_OK && names) {
            for (int i = 0; i < names->Count; i++)
                if (strncmp(names->List[i], prefix, strlen(prefix)) == 0)
                    js_DeleteConsumer(pt->js, streams[k], names->List[i], NULL, &jerr);
            jsConsumerNamesList_Destroy(names);
        }
    }
    /* the live lane, without which the partition is not run; then the bulk lane, without which it
     * is (CHAT_BULK missing, or a NATS user not yet allowed it after an upgrade: imports wait in
     * CHAT_BULK, or are refused there, until the next lease or reconnect sets the lane up) */
    if (add_consumer(pt, LANE_LIVE) != CHAT_OK)
        return CHAT_ERR_UNAVAILABLE;
    if (add_consumer(pt, LANE_BULK) != CHAT_OK)
        LOG_WARN("ingest", "event=bulk_lane_unavailable partition=%d stream=%s", pt->index, CHAT_STREAM_BULK);
    return CHAT_OK;
}

/* Asks for the broker lag of this partition's consumer every 5 s (messages waiting and delivered
 * unacked; every pulled message also says how many wait behind it, which take_message() keeps, so the lag
 * is exact while messages flow and this request covers the quiet times). The answer comes to the
 * committer's inbox (<inbox>.<p>.<epoch>.lag) and take_message() reads it: a consumer whose leader is cut off never answers,
 * and a blocking request (5 s, for each partition in turn) once held a committer past its lease session's
 * idle_session_timeout. */
static void ask_lag(partition *pt, natsConnection *nc)
{
    int64_t now = chat_mono_ms();
    if (now - pt->lag_at_ms < 5000)
        return;
    pt->lag_at_ms = now;
    for (int k = 0; k < LANES; k++) {
        if (!pt->lanes[k].on)
            continue;
        char subject[160], reply[112];
        chat_subject_js_info(subject, sizeof subject, pt->lanes[k].stream, pt->lanes[k].consumer);
        snprintf(reply, sizeof reply, "%s.lag", pt->lanes[k].reply);
        natsConnection_PublishRequest(nc, subject, reply, NULL, 0);
    }
}

/* The partition's lag, a gauge per lane: the live lane's is what the lag alerts watch; an import
 * waiting in the bulk lane is no fault. */
static void show_pending(partition *pt)
{
    atomic_store(pt->m_pending, (int_fast64_t)pt->lanes[LANE_LIVE].pending);
    atomic_store(pt->m_bulk_pending, (int_fast64_t)pt->lanes[LANE_BULK].pending);
}

/* The consumer info that ask_lag() asked for; anything else (an error, a 503) is ignored. The
 * gauge of messages delivered unacked follows the live lane (the bulk lane holds up to
 * BULK_ACK_PENDING by design). */
static void take_lag(partition *pt, int k, natsMsg *m)
{
    json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *pending = json_object_get(j, "num_pending"), *ack_pending = json_object_get(j, "num_ack_pending");
    if (json_is_integer(pending) && json_is_integer(ack_pending)) {
        pt->lanes[k].pending = (int64_t)json_integer_value(pending);
        show_pending(pt);
        if (k == LANE_LIVE)
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

/* The partition's consumer set-up in a thread of its own, a step per call: starts it or finds it
 * still running (SETUP_RUNNING), or takes its result once done (SETUP_OK or SETUP_FAILED; the
 * partition's setup is SETUP_NONE again after). SETUP_NONE: the thread could not start. */
static int setup_step(partition *pt)
{
    int su = atomic_load(&pt->setup);
    if (su == SETUP_NONE) {
        atomic_store(&pt->setup, SETUP_RUNNING);
        if (pthread_create(&pt->setup_tid, NULL, setup_thread, pt) != 0) {
            atomic_store(&pt->setup, SETUP_NONE);
            return SETUP_NONE;
        }
        return SETUP_RUNNING;
    }
    if (su == SETUP_RUNNING)
        return su;
    pthread_join(pt->setup_tid, NULL);
    atomic_store(&pt->setup, SETUP_NONE);
    return su;
}

/* Starts the set-up of a partition just leased, or takes its result: the partition is pulled from
 * now on, or given up (set-up failed, or released, lost or stopping meanwhile). */
static void partition_begin(partition *pt, bool keep)
{
    if (atomic_load(&pt->setup) == SETUP_NONE && (!keep || pt->com->sub == NULL)) {
        pt->lost = keep;
        atomic_store(&pt->state, P_DONE);
        return;
    }
    int su = setup_step(pt);
    if (su == SETUP_NONE || su == SETUP_RUNNING)
        return;
    if (su != SETUP_OK || !keep) {
        jsCtx_Destroy(pt->js);
        pt->js = NULL;
        pt->lost = su != SETUP_OK;
        atomic_store(&pt->state, P_DONE);
        return;
    }
    pt->active = true;
    for (int k = 0; k < LANES; k++)
        pt->lanes[k].pull = (chat_js_puller){0};
    LOG_INFO("ingest", "event=partition_acquired partition=%d epoch=%lld consumer=%s", pt->index,
             (long long)pt->epoch, pt->lanes[LANE_LIVE].consumer);
}

/* After a reconnect the broker may be one that restarted on less than it had acknowledged (a
 * power loss with CHAT_NATS_SYNC of an interval): the stream lost its unsynced suffix but the
 * consumer's own state may not have, and nats-server 2.10 then never delivers the messages
 * published since at the sequences it had handed out before (nats-server issue 7693: a consumer
 * ahead of its stream). So an active partition's consumer is made again after every reconnect,
 * deleted and created with DeliverAll: CHAT_IN is a work queue, so what is left in it is exactly
 * what no one acked. What was pulled from the old one and not committed comes again (stored
 * once: dedupe). Pulls wait while it runs; a failed reset is tried again a second later and the
 * old consumer is pulled meanwhile. */
static void reset_consumer(partition *pt)
{
    if (atomic_load(&pt->setup) == SETUP_NONE && chat_mono_ms() < pt->reset_at_ms)
        return;
    int su = setup_step(pt);
    if (su == SETUP_NONE || su == SETUP_RUNNING)
        return;
    for (int k = 0; k < LANES; k++)
        pt->lanes[k].pull = (chat_js_puller){0};
    if (su == SETUP_OK) {
        pt->reset_due = false;
        LOG_INFO("ingest", "event=consumer_reset partition=%d consumer=%s", pt->index, pt->lanes[LANE_LIVE].consumer);
    } else {
        pt->reset_at_ms = chat_mono_ms() + 1000;
        LOG_WARN("ingest", "event=consumer_reset_failed partition=%d consumer=%s", pt->index,
                 pt->lanes[LANE_LIVE].consumer);
    }
}

/* Gives the partition up: what arrived and was not committed is dropped unacked (its next owner
 * deletes this consumer and gets it all again from its own), as is what still comes. */
static void partition_end(partition *pt, bool lost)
{
    for (int k = 0; k < LANES; k++) {
        wk_ingest_batch_reset(pt->lanes[k].buf);
        pt->lanes[k].pending = 0;
    }
    jsCtx_Destroy(pt->js);
    pt->js = NULL;
    atomic_store(pt->m_pending, 0); /* reported by the next owner */
    atomic_store(pt->m_bulk_pending, 0);
    atomic_store(pt->m_ack_pending, 0);
    pt->active = false;
    pt->lost = lost;
    LOG_INFO("ingest", "event=partition_released partition=%d reason=%s", pt->index, lost ? "lease_lost" : "released");
    atomic_store(&pt->state, P_DONE);
}

/* Keeps a pull request open on each lane (chat_js_keep_pulling): BATCH_MAX messages, renewed at
 * half, each expiring after PULL_EXPIRES_MS; requests that died with a connection are forgotten on
 * a reconnect or after their expiry and a second. The bulk lane asks for BULK_PER_COMMIT, and only
 * while fewer than that of its messages wait here. */
static void keep_pulling(partition *pt, natsConnection *nc)
{
    for (int k = 0; k < LANES; k++) {
        lane *l = &pt->lanes[k];
        if (!l->on || (k == LANE_BULK && l->buf->n >= BULK_PER_COMMIT))
            continue;
        chat_js_keep_pulling(&l->pull, nc, l->next_subject, l->reply, k == LANE_BULK ? BULK_PER_COMMIT : BATCH_MAX,
                             PULL_EXPIRES_MS, PULL_RETRY_MS);
    }
}

bool wk_ingest_inbox_subject(const char *inbox, int nparts, const char *subject, inbox_subject *out)
{
    size_t il = strlen(inbox);
    bool bulk = strncmp(subject, "chat.bulk.", 10) == 0;
    bool pulled = bulk || strncmp(subject, "chat.in.", 8) == 0;
    const char *tok = NULL;
    if (pulled)
        tok = subject + (bulk ? 10 : 8);
    else if (strncmp(subject, inbox, il) == 0 && subject[il] == '.')
        tok = subject + il + 1;
    if (tok == NULL)
        return false;
    char *end = NULL;
    long p = strtol(tok, &end, 10);
    if (end == tok || *end != '.' || p < 0 || p >= nparts)
        return false;
    size_t sl = strlen(subject);
    *out = (inbox_subject){.part = (int)p, .pulled = pulled};
    if (pulled) {
        out->lane = bulk ? LANE_BULK : LANE_LIVE;
        return true;
    }
    char *rest = NULL;
    out->epoch = strtoll(end + 1, &rest, 10);
    out->lane = strncmp(rest, ".b", 2) == 0 && (rest[2] == '\0' || rest[2] == '.') ? LANE_BULK : LANE_LIVE;
    out->lag = sl > 4 && strcmp(subject + sl - 4, ".lag") == 0;
    return true;
}

/* The partition a message of the committer's inbox is about: a pulled message keeps its own
 * subject (chat.in.<p>.<conv>; take_message() checks its consumer), a pull request's end comes on the
 * request's reply (<inbox>.<p>.<epoch>): the end of a request of an earlier lease of the partition
 * (its consumer deleted, 409) must not touch the requests of the current one. */
static partition *partition_of(committer *c, const char *subject, inbox_subject *is)
{
    if (!wk_ingest_inbox_subject(c->inbox, c->in->nparts, subject, is))
        return NULL;
    partition *pt = &c->in->parts[is->part];
    if (pt->com != c || !pt->active)
        return NULL;
    if (!is->pulled && is->epoch != pt->epoch)
        return NULL;
    return pt;
}

/* One message of the committer's inbox: a pulled message goes to its partition's buffer (1), a
 * pull request's end adjusts the credit, anything not of a live consumer of this committer is
 * dropped (0). */
static int take_message(committer *c, natsMsg *m)
{
    inbox_subject is;
    partition *pt = partition_of(c, natsMsg_GetSubject(m), &is);
    if (pt == NULL) {
        natsMsg_Destroy(m);
        return 0;
    }
    lane *l = &pt->lanes[is.lane];
    if (!l->on) { /* a lane not set up: nothing of it is ours */
        natsMsg_Destroy(m);
        return 0;
    }
    if (is.lag) {
        take_lag(pt, is.lane, m);
        natsMsg_Destroy(m);
        return 0;
    }
    /* 408: a request expired; 409 and others: it ended otherwise (a consumer deleted by a newer
     * owner, a leader change): asked again, but not at once */
    int status = chat_js_pull_took(&l->pull, m, PULL_RETRY_MS);
    if (status != 0) {
        if (status != 408)
            LOG_DEBUG("ingest", "event=pull_ended partition=%d status=%d", pt->index, status);
        natsMsg_Destroy(m);
        return 0;
    }
    const char *reply = natsMsg_GetReply(m);
    if (reply == NULL || strstr(reply, l->ack_key) == NULL) { /* an earlier consumer's: not ours to store */
        natsMsg_Destroy(m);
        return 0;
    }
    chat_js_ack ack;
    if (chat_js_ack_parse(reply, &ack) && ack.pending >= 0) { /* the lag, exact and free */
        l->pending = ack.pending;
        show_pending(pt);
    }
    if (l->buf->n == 0)
        l->fetched_ns = chat_mono_ns();
    wk_ingest_batch_add(l->buf, &(item){.msg = m});
    return 1;
}

/* Waits up to wait_ms for the first message, then takes whatever else is there (GROUP_MAX pulled
 * messages at most). Returns how many pulled messages it buffered. */
int wk_ingest_collect(committer *c, int64_t wait_ms)
{
    natsMsg *m = NULL;
    if (c->sub == NULL) {
        chat_sleep_ms(200);
        return 0;
    }
    if (natsSubscription_NextMsg(&m, c->sub, wait_ms) != NATS_OK)
        return 0;
    int got = take_message(c, m);
    while (got < GROUP_MAX) {
        int queued = 0;
        if (natsSubscription_GetPending(c->sub, &queued, NULL) != NATS_OK || queued <= 0)
            break;
        if (natsSubscription_NextMsg(&m, c->sub, 1000) != NATS_OK)
            break;
        got += take_message(c, m);
    }
    return got;
}

/* Follows the coordinator's decisions for this committer's partitions: sets up the consumer of a
 * partition just leased, gives up one released, lost (its lease connection is gone) or stopping. */
void wk_ingest_tend(committer *c, bool stopping, bool reconnected)
{
    wk_ingest *in = c->in;
    uint64_t gen = atomic_load(&c->gen);
    for (int p = c->index; p < in->nparts; p += in->ncom) {
        partition *pt = &in->parts[p];
        int st = atomic_load(&pt->state);
        if (pt->active && atomic_load(&pt->setup) == SETUP_RUNNING) {
            reset_consumer(pt); /* its thread uses pt->js: nothing else until it is done */
            continue;
        }
        if (pt->active) {
            if (pt->gen != gen)
                partition_end(pt, true);
            else if (st != P_RUNNING || stopping)
                partition_end(pt, false);
        } else if (st == P_RUNNING || st == P_RELEASE) {
            partition_begin(pt, st == P_RUNNING && !stopping && pt->gen == gen);
        }
        if (pt->active) {
            if (reconnected) { /* the broker forgot the requests of the old connection */
                for (int k = 0; k < LANES; k++)
                    pt->lanes[k].pull.credit = 0;
                pt->reset_due = true;
                pt->reset_at_ms = 0;
            }
            if (pt->reset_due && !stopping) {
                reset_consumer(pt);
                if (atomic_load(&pt->setup) == SETUP_RUNNING)
                    continue;
            }
            ask_lag(pt, in->app->nc);
            keep_pulling(pt, in->app->nc);
        }
    }
}

void wk_ingest_subscribe_inbox(committer *c)
{
    char subject[80];
    snprintf(subject, sizeof subject, "%s.>", c->inbox);
    if (natsConnection_SubscribeSync(&c->sub, c->in->app->nc, subject) != NATS_OK) {
        c->sub = NULL;
        return;
    }
    natsSubscription_SetPendingLimits(c->sub, -1, -1);
}
