/* The ingest's lease coordination: one advisory lock per owned partition, held by a committer's
 * lease connection, a new epoch in ingest_leases with each lease, and the coordinator thread that
 * spreads the partitions over the live ingest workers (a presence session each). The lease
 * connection is shared with its committer under pg_mu. */
#include "wk_ingestp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"
#include "wk_pg.h"
#include "wk_streams.h"

/* ------------------------------------------------------------------------------------------ */
/* The lease connection                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Gives up the lease connection of generation gen (a failed statement: its session, and with it
 * every lease of this worker, is gone or cannot be trusted). Caller holds pg_mu. */
void wk_ingest_lose_connection(committer *c, uint64_t gen)
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
bool wk_ingest_heartbeat(committer *c, uint64_t gen)
{
    pthread_mutex_lock(&c->pg_mu);
    bool ok = c->pg != NULL && atomic_load(&c->gen) == gen;
    int64_t now = chat_mono_ms();
    if (ok && now - c->last_pg_ms >= HEARTBEAT_MS) {
        PGresult *r = PQexec(c->pg, "SELECT 1");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        c->last_pg_ms = now;
        if (!ok)
            wk_ingest_lose_connection(c, gen);
    }
    pthread_mutex_unlock(&c->pg_mu);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Leases                                                                                       */
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
        !wk_ingest_prepare_statements(pg)) {
        PQfinish(pg);
        return false;
    }
    c->pg = pg;
    c->last_pg_ms = chat_mono_ms();
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
    PGresult *r = wk_ingest_exec_params(c->pg, "SELECT pg_try_advisory_lock(727001, $1::int)", 1, p1);
    bool answered = PQresultStatus(r) == PGRES_TUPLES_OK;
    bool locked = answered && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!answered)
        wk_ingest_lose_connection(c, gen);
    if (!locked)
        return false;
    const char *p2[] = {part, in->worker_id};
    r = wk_ingest_exec_params(c->pg,
                    "INSERT INTO ingest_leases (partition, epoch, owner) VALUES ($1::int, 1, $2)"
                    " ON CONFLICT (partition) DO UPDATE SET epoch = ingest_leases.epoch + 1,"
                    " owner = EXCLUDED.owner, acquired_at = now()"
                    " RETURNING epoch, (extract(epoch FROM events_upto) * 1000000)::bigint",
                    2, p2);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        LOG_WARN("ingest", "event=lease_epoch_failed partition=%d detail=\"%s\"", pt->index, PQresultErrorMessage(r));
        PQclear(r);
        wk_ingest_lose_connection(c, gen); /* gives the lock back with the session; the epoch was not bumped */
        return false;
    }
    pt->epoch = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    /* the committer arms the partition's repair from this cursor (wk_ingest_events_tick) */
    pt->events_leased_upto_us = PQgetisnull(r, 0, 1) ? 0 : strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    pt->events_leased = true;
    PQclear(r);
    pt->gen = gen;
    c->last_pg_ms = chat_mono_ms();
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
        PGresult *r = wk_ingest_exec_params(c->pg, "SELECT pg_advisory_unlock(727001, $1::int)", 1, p1);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            wk_ingest_lose_connection(c, pt->gen);
        PQclear(r);
        c->last_pg_ms = chat_mono_ms();
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

/* ------------------------------------------------------------------------------------------ */
/* The coordinator                                                                              */
/* ------------------------------------------------------------------------------------------ */

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

/* The presence session, (re)opened when it is gone; NULL when PostgreSQL cannot be reached. */
static PGconn *presence_connection(wk_ingest *in, PGconn *presence, const char *app_name)
{
    if (presence != NULL && PQstatus(presence) == CONNECTION_OK)
        return presence;
    PQfinish(presence);
    presence = NULL;
    if (wk_pg_connect(in->app->cfg->pg_dsn, app_name, &presence) != CHAT_OK)
        return NULL;
    /* A hung worker (SIGSTOP, a paused VM) must stop counting as live, or the others keep
     * their share of partitions and leave its partitions, whose leases PostgreSQL ended
     * after 10 s, without an owner. This session asks every second, so a live worker's
     * never idles that long. */
    if (!wk_pg_exec(presence, "SET idle_session_timeout = '10s'", PGRES_COMMAND_OK, "presence_timeout")) {
        PQfinish(presence);
        return NULL;
    }
    return presence;
}

/* Sets the streams up once NATS is there: true when they are. */
static bool ensure_streams(wk_ingest *in)
{
    bool streams_ok = false;
    jsCtx *js = NULL;
    if (natsConnection_JetStream(&js, in->app->nc, NULL) == NATS_OK)
        streams_ok = wk_streams_ensure(js, in->app->cfg->js_replicas, false) == CHAT_OK;
    /* once, not gating the ingest: the gateways refuse upgrades until the bucket exists */
    if (streams_ok)
        wk_streams_ensure_revoked(js, in->app->cfg->js_replicas, in->app->cfg->jwt_max_ttl_s, false);
    jsCtx_Destroy(js);
    return streams_ok;
}

/* Takes idle partitions up to this worker's share (ceil(partitions / workers)), starting at its
 * own offset, and asks the committers to give back what is over it, last ones first. */
static void spread(wk_ingest *in, int workers, int offset)
{
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

/* Stopping: each committer gives its partitions up (the batch in flight first), and each lease
 * goes back as soon as its partition is given up. */
static void release_all(wk_ingest *in)
{
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
}

void *wk_ingest_coordinator_thread(void *arg)
{
    wk_ingest *in = arg;
    PGconn *presence = NULL;
    char app_name[64];
    snprintf(app_name, sizeof app_name, "chat-ingest:%s", in->worker_id);
    int offset = (int)(chat_fnv1a32(in->worker_id) % (uint32_t)in->nparts);
    bool streams_ok = false;
    while (!atomic_load(&in->app->stopping)) {
        if (!streams_ok && chat_nats_connected(in->app->nc))
            streams_ok = ensure_streams(in);
        for (int p = 0; p < in->nparts; p++) {
            partition *pt = &in->parts[p];
            if (atomic_load(&pt->state) == P_DONE) {
                unlock_partition(pt);
                atomic_store(&pt->state, P_IDLE);
                in->owned--;
            }
        }
        presence = presence_connection(in, presence, app_name);
        int workers = presence ? live_workers(presence) : -1;
        if (streams_ok && workers > 0 && chat_nats_connected(in->app->nc))
            spread(in, workers, offset);
        atomic_store(in->m_owned, in->owned);
        /* a second between rounds, less when a committer gave a partition up: its lease goes back
         * at once, so another worker waiting for it takes it on its next round */
        for (int i = 0; i < 10 && !atomic_load(&in->app->stopping) && !any_done(in); i++)
            chat_sleep_ms(100);
    }
    release_all(in);
    PQfinish(presence);
    return NULL;
}
