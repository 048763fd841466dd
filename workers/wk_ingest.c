/* Role `ingest`: start, stop and the committer loop. Threads: one coordinator (wk_ingest_lease.c)
 * and CHAT_INGEST_COMMITTERS committers; partition p belongs to committer p mod N, which pulls it
 * (wk_ingest_pull.c), stores what arrived for all its partitions in one transaction on its lease
 * connection (wk_ingest_store.c), delivers it (wk_ingest_fanout.c) and acks it: one commit, one WAL
 * flush, one flush of the deliveries, no thread hand-off; CHAT_EVENTS is confirmed and repaired
 * between batches (wk_ingest_events.c; docs/architecture.md, "Ingest"). */
#include "wk_ingestp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_route_batch.h"

static bool process_batch(committer *c, batch *b, uint64_t gen, int64_t fetched_ns);

/* Isolates the message the database refuses: a group is split into its partitions' batches, a
 * batch into one transaction per message (in order: a partition's messages are stored in the
 * order they came). False when the lease is lost. */
static bool process_pieces(committer *c, batch *b, uint64_t gen, int64_t fetched_ns)
{
    bool several = false;
    for (int i = 1; i < b->n && !several; i++)
        several = b->items[i].part != b->items[0].part;
    LOG_WARN("ingest", "event=batch_split partition=%d size=%d into=%s", b->part, b->n,
             several ? "partitions" : "messages");
    bool *taken = chat_xcalloc((unsigned)b->n, sizeof *taken);
    bool ok = true;
    for (int i = 0; i < b->n && ok; i++) {
        if (taken[i])
            continue;
        batch piece = {.view = true, .part = b->items[i].part};
        for (int j = i; j < b->n; j++)
            if (!taken[j] && (several ? b->items[j].part == b->items[i].part : j == i)) {
                wk_ingest_batch_add(&piece, &b->items[j]);
                taken[j] = true;
            }
        ok = process_batch(c, &piece, gen, fetched_ns);
        wk_ingest_view_free(&piece);
    }
    free(taken);
    return ok;
}

/* The metrics and logs of a committed batch. */
static void count_committed(wk_ingest *in, batch *b, int64_t committed_ms)
{
    wk_ingest_count_drops(in, b);
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
}

/* Stores, fans out and acks b (a group of batches, or one). Returns false when the lease is lost:
 * nothing of b is acked then, and the next owners get it again. */
static bool process_batch(committer *c, batch *b, uint64_t gen, int64_t fetched_ns)
{
    wk_ingest *in = c->in;
    int rc = wk_ingest_store_locked(c, b, gen);
    /* the database refuses for now: keep the batch ours (+WPI) and the lease session alive, and
     * store it again, backing off up to 5 s; the clients get no answer meanwhile and resend the
     * same cmids, which the broker and message_dedupe make one message */
    for (int attempt = 0; rc == S_RETRY; attempt++) {
        atomic_fetch_add(in->m_store_retries, 1);
        int64_t pause = attempt < 4 ? 500LL << attempt : 5000;
        for (int64_t waited = 0; waited < pause; waited += 1000) {
            wk_ingest_reply_all(in->app->nc, b, "+WPI");
            if (atomic_load(&in->app->stopping))
                return true; /* not acked, like a fanout cut short by a stop: the next owner stores it */
            if (!wk_ingest_heartbeat(c, gen))
                return false;
            chat_sleep_ms(pause - waited < 1000 ? pause - waited : 1000);
        }
        rc = wk_ingest_store_locked(c, b, gen);
    }
    if (rc == S_LEASE_LOST)
        return false;
    if (rc == S_DATA_ERROR || rc == S_NO_PARTITION) {
        if (b->n > 1)
            return process_pieces(c, b, gen, fetched_ns);
        wk_ingest_reject(&b->items[0], DROP_POISON);
    }
    int64_t committed_ms = chat_now_ms();
    int64_t committed_ns = chat_mono_ns();
    chat_histogram_observe_us(in->h_commit, (committed_ns - fetched_ns) / 1000);
    count_committed(in, b, committed_ms);
    int f = wk_ingest_fanout(c, b, gen, committed_ms);
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

/* Commits together, of each partition of group[0..n), every buffered live post and the first
 * bulk[i] buffered bulk posts. A partition whose lease was taken on an earlier connection is
 * left out without touching the database; a lease lost on the way gives the connection up (tend()
 * then gives up every partition of that generation). */
static void commit_group(committer *c, partition **group, const int *bulk, int n)
{
    uint64_t gen = atomic_load(&c->gen);
    batch all = {.view = true, .part = -1};
    int parts = 0, last = -1;
    int64_t fetched = 0;
    bool any = false;
    for (int i = 0; i < n; i++) {
        partition *pt = group[i];
        if (pt->gen != gen)
            continue;
        for (int k = 0; k < LANES; k++) {
            lane *l = &pt->lanes[k];
            int take = k == LANE_BULK ? bulk[i] : l->buf->n;
            if (take == 0)
                continue;
            wk_ingest_batch_decode(l->buf, pt->index);
            for (int j = 0; j < take; j++)
                wk_ingest_batch_add(&all, &l->buf->items[j]);
            if (!any || l->fetched_ns < fetched)
                fetched = l->fetched_ns;
            any = true;
        }
        parts++;
        last = pt->index;
    }
    if (parts == 1)
        all.part = last;
    if (all.n > 0 && !process_batch(c, &all, gen, fetched)) {
        pthread_mutex_lock(&c->pg_mu);
        wk_ingest_lose_connection(c, gen);
        pthread_mutex_unlock(&c->pg_mu);
    }
    wk_ingest_view_free(&all);
}

static void *committer_thread(void *arg)
{
    committer *c = arg;
    wk_ingest *in = c->in;
    natsConnection *nc = in->app->nc;
    partition **group = chat_xcalloc((size_t)in->nparts, sizeof *group);
    int *bulk = chat_xcalloc((size_t)in->nparts, sizeof *bulk);
    uint64_t seen = chat_nats_reconnects(nc);
    int turn = 0; /* which partition's bulk posts go first, in turn */
    bool left = false; /* bulk posts wait from the last commit: commit again without waiting */
    /* the bulk lane's rate (CHAT_INGEST_BULK_RATE, this committer's share): a bucket of at most a
     * commit's worth of posts, filled at that rate */
    double rate = in->app->cfg->ingest_bulk_rate > 0 ? (double)in->app->cfg->ingest_bulk_rate / in->ncom : 0;
    double tokens = BULK_PER_COMMIT;
    int64_t filled_ns = chat_mono_ns(), kept_ms = chat_mono_ms();
    while (!atomic_load(&c->stop)) {
        if (c->sub == NULL && chat_nats_connected(nc))
            wk_ingest_subscribe_inbox(c);
        uint64_t now = chat_nats_reconnects(nc);
        wk_ingest_tend(c, atomic_load(&in->app->stopping), now != seen);
        seen = now;
        wk_ingest_events_tick(c); /* a partition just leased is repaired before its first batch */
        int64_t wait = WAIT_MS;
        if (rate > 0) {
            int64_t t = chat_mono_ns();
            tokens += rate * (double)(t - filled_ns) / 1e9;
            if (tokens > BULK_PER_COMMIT)
                tokens = BULK_PER_COMMIT;
            filled_ns = t;
        }
        if (left) /* until a token is there for the posts waiting */
            wait = rate > 0 && tokens < 1 ? 1 + (int64_t)((1 - tokens) * 1000 / rate) : 1;
        if (wait > WAIT_MS)
            wait = WAIT_MS;
        if (wk_ingest_collect(c, wait) == 0 && !(left && (rate == 0 || tokens >= 1))) {
            wk_ingest_heartbeat(c, atomic_load(&c->gen));
            continue;
        }
        /* every live post that arrived; bulk posts up to BULK_PER_COMMIT and the bucket,
         * partitions in turn */
        int budget = rate > 0 && tokens < BULK_PER_COMMIT ? (int)tokens : BULK_PER_COMMIT;
        int n = 0, taken = 0, mine = (in->nparts - c->index + in->ncom - 1) / in->ncom;
        turn = mine > 0 ? (turn + 1) % mine : 0;
        for (int j = 0; j < mine; j++) {
            partition *pt = &in->parts[c->index + ((turn + j) % mine) * in->ncom];
            int waiting = pt->lanes[LANE_BULK].buf->n;
            int take = pt->active ? (waiting < budget ? waiting : budget) : 0;
            if (!pt->active || (pt->lanes[LANE_LIVE].buf->n == 0 && take == 0))
                continue;
            budget -= take;
            taken += take;
            bulk[n] = take;
            group[n++] = pt;
        }
        tokens -= taken;
        commit_group(c, group, bulk, n); /* a lost lease bumped gen: tend() gives the partitions up */
        left = false;
        for (int i = 0; i < n; i++) {
            wk_ingest_batch_reset(group[i]->lanes[LANE_LIVE].buf);
            wk_ingest_batch_drop_front(group[i]->lanes[LANE_BULK].buf, bulk[i]);
            left = left || group[i]->lanes[LANE_BULK].buf->n > 0;
        }
        for (int p = c->index; p < in->nparts && !left; p += in->ncom)
            left = in->parts[p].active && in->parts[p].lanes[LANE_BULK].buf->n > 0;
        if (left && chat_mono_ms() - kept_ms >= BULK_KEEP_MS) { /* bulk posts waiting their turn: not redelivered */
            kept_ms = chat_mono_ms();
            for (int p = c->index; p < in->nparts; p += in->ncom)
                if (in->parts[p].active)
                    wk_ingest_reply_all(nc, in->parts[p].lanes[LANE_BULK].buf, "+WPI");
        }
    }
    for (;;) { /* give everything up, waiting for set-ups under way */
        wk_ingest_tend(c, true, false);
        bool busy = false;
        for (int p = c->index; p < in->nparts; p += in->ncom)
            busy = busy || atomic_load(&in->parts[p].setup) != SETUP_NONE;
        if (!busy)
            break;
        chat_sleep_ms(10);
    }
    free(bulk);
    free(group);
    return NULL;
}

static chat_status committer_start(wk_ingest *in, committer *c, int index)
{
    c->in = in;
    c->index = index;
    char label[32];
    snprintf(label, sizeof label, "committer=%d", index);
    wk_redis_link_init(&c->redis, in->app->cfg, "ingest", label, in->m_route_errors);
    pthread_mutex_init(&c->pg_mu, NULL);
    pthread_mutex_init(&c->acked_mu, NULL);
    wk_trust_init(&c->trust, in->nparts);
    natsInbox *inbox = NULL;
    if (natsInbox_Create(&inbox) != NATS_OK)
        return CHAT_ERR_INTERNAL;
    snprintf(c->inbox, sizeof c->inbox, "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    jsOptions jo;
    jsOptions_Init(&jo);
    /* CHAT_EVENTS publishes are confirmed about once a second (wk_ingest_events.c), so a second of
     * them may be pending; past that (a broker that stopped answering) a publish fails at once
     * instead of stalling the committer, and is repaired from PostgreSQL */
    jo.PublishAsync.MaxPending = 8 * GROUP_MAX;
    jo.PublishAsync.StallWait = 1;
    jo.PublishAsync.AckHandler = wk_ingest_on_puback;
    jo.PublishAsync.AckHandlerClosure = c;
    jo.Wait = 5000;
    if (chat_nats_connect(in->app->cfg, "worker-events", false, &c->enc) != CHAT_OK)
        return CHAT_ERR_UNAVAILABLE;
    if (natsConnection_JetStream(&c->js, c->enc, &jo) != NATS_OK)
        return CHAT_ERR_INTERNAL;
    c->enc_reconnects = chat_nats_reconnects(c->enc);
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
    wk_ingest_routes_close(c);
    wk_route_batches_destroy(c->routed);
    c->routed = NULL;
    pthread_mutex_destroy(&c->pg_mu);
    pthread_mutex_destroy(&c->acked_mu);
    wk_trust_free(&c->trust);
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
    for (int p = 0; p < in->nparts; p++)
        for (int k = 0; k < LANES; k++) {
            batch *b = in->parts[p].lanes[k].buf;
            wk_ingest_batch_reset(b);
            free(b->items);
            free(b);
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
    in->parts = chat_xcalloc((size_t)in->nparts, sizeof *in->parts);
    for (int p = 0; p < in->nparts; p++) {
        in->parts[p].in = in;
        in->parts[p].index = p;
        for (int k = 0; k < LANES; k++)
            in->parts[p].lanes[k].buf = chat_xcalloc(1, sizeof(batch));
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
    for (int p = 0; p < in->nparts; p++)
        in->parts[p].m_bulk_pending = chat_metrics_gauge(m, "chat_ingest_bulk_pending", in->parts[p].label,
                                                         "Bulk-import posts waiting in CHAT_BULK for an owned partition.");
    in->m_owned = chat_metrics_gauge(m, "chat_ingest_partitions_owned", NULL, "Ordering partitions this worker owns.");
    in->m_events = chat_metrics_counter(m, "chat_ingest_events_total", NULL, "Events committed to PostgreSQL.");
    in->m_redelivered = chat_metrics_counter(m, "chat_ingest_redelivered_total", NULL,
                                             "Messages found already stored and published again.");
    in->m_batches = chat_metrics_counter(m, "chat_ingest_batches_total", NULL, "Batches committed.");
    in->m_events_republished = chat_metrics_counter(m, "chat_ingest_events_republished_total", NULL,
                                                    "Events republished to CHAT_EVENTS from PostgreSQL by a repair "
                                                    "(the broker drops those it has by Nats-Msg-Id).");
    in->m_events_unconfirmed = chat_metrics_counter(m, "chat_ingest_events_unconfirmed_total", NULL,
                                                    "Confirmations of CHAT_EVENTS publishes that failed (a PubAck "
                                                    "refused or missing): a repair from PostgreSQL follows.");
    in->m_events_lost = chat_metrics_counter(m, "chat_ingest_events_lost_total", NULL,
                                             "Checks that found CHAT_EVENTS without a write the broker had "
                                             "acknowledged (lost before its fsync): a repair from PostgreSQL follows.");
    in->m_store_retries = chat_metrics_counter(m, "chat_ingest_store_retries_total", NULL,
                                               "Stores of a batch PostgreSQL refused for now (disk full, out of "
                                               "memory, deadlock, read-only): kept, tried again.");
    static const char *const drop_labels[DM_COUNT] = {
        [DM_INVALID] = "reason=\"invalid\"",
        [DM_NOT_MEMBER] = "reason=\"not_member\"",
        [DM_NO_CONVERSATION] = "reason=\"no_conversation\"",
        [DM_POISON] = "reason=\"poison\"",
        [DM_NO_TARGET] = "reason=\"no_target\"",
    };
    for (int k = 0; k < DM_COUNT; k++)
        in->m_drop[k] = chat_metrics_counter(m, "chat_ingest_dropped_total", drop_labels[k],
                                             "Messages dropped (acked without storing), by reason.");
    in->m_deliveries_gateway = chat_metrics_counter(m, "chat_ingest_deliveries_total", "path=\"gateway\"",
                                                    "Deliveries of an event to a member's gateways, in one "
                                                    "DeliveryBatch per gateway (the only path).");
    in->m_route_errors = chat_metrics_counter(m, "chat_ingest_route_errors_total", NULL,
                                              "Reads of delivery routes from Redis that failed or timed out (the "
                                              "batch waited and asked again).");
    in->h_commit = chat_metrics_histogram(m, "chat_ingest_fetch_to_commit_seconds", NULL,
                                          "From a batch's fetch to its commit.");
    in->h_fanout = chat_metrics_histogram(m, "chat_ingest_commit_to_fanout_seconds", NULL,
                                          "From a batch's commit to its deliveries taken by the NATS server.");
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
    if (pthread_create(&in->coordinator, NULL, wk_ingest_coordinator_thread, in) != 0) {
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
