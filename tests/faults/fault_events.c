/* The fault suite's check of CHAT_EVENTS against PostgreSQL: every message stored in a
 * conversation whose id starts with one of the prefixes is in CHAT_EVENTS exactly once (an event,
 * Chat-Type: event, under Nats-Msg-Id <conv>:<seq>), and CHAT_EVENTS has no event of those
 * conversations that is not stored. Reads the whole stream with an ordered consumer (headers only)
 * up to its last sequence at the start.
 *
 *   fault_events --nats URL --pg-dsn DSN PREFIX...
 * Exit 0: it holds; 1: it does not (the first differences are printed); 2: bad input or a
 * service that does not answer. */
#include <inttypes.h>
#include <libpq-fe.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_map.h"

#define SHOWN 5

static bool wanted(const char *conv, char **prefixes, int n)
{
    for (int i = 0; i < n; i++)
        if (strncmp(conv, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

/* Counts every event of the wanted conversations in CHAT_EVENTS by its Nats-Msg-Id: the map's
 * values are counts (as pointers). False when the stream could not be read to its end. */
static bool read_events(const char *url, chat_map *seen, char **prefixes, int n, uint64_t *read)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    bool ok = false;
    if (natsConnection_ConnectTo(&nc, url) != NATS_OK || natsConnection_JetStream(&js, nc, NULL) != NATS_OK ||
        js_GetStreamInfo(&si, js, "CHAT_EVENTS", NULL, &jerr) != NATS_OK) {
        fprintf(stderr, "fault_events: CHAT_EVENTS at %s: %s\n", url, nats_GetLastError(NULL));
        goto out;
    }
    uint64_t last = si->State.LastSeq;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "CHAT_EVENTS";
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    so.Config.HeadersOnly = true;
    if (last > 0 && js_SubscribeSync(&sub, js, "chat.evt.>", NULL, &so, &jerr) != NATS_OK) {
        fprintf(stderr, "fault_events: ordered consumer: %s (jerr %d)\n", nats_GetLastError(NULL), (int)jerr);
        goto out;
    }
    for (uint64_t at = 0; at < last;) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, 5000) != NATS_OK) {
            fprintf(stderr, "fault_events: CHAT_EVENTS stopped at sequence %" PRIu64 " of %" PRIu64 "\n", at, last);
            goto out;
        }
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            at = meta->Sequence.Stream;
            jsMsgMetaData_Destroy(meta);
        }
        const char *type = NULL, *id = NULL;
        (*read)++;
        if (natsMsgHeader_Get(m, "Chat-Type", &type) == NATS_OK && strcmp(type, "event") == 0 &&
            natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && wanted(id, prefixes, n)) {
            uintptr_t c = (uintptr_t)chat_map_get(seen, id);
            chat_map_put(seen, id, (void *)(c + 1), NULL);
        }
        natsMsg_Destroy(m);
    }
    ok = true;
out:
    natsSubscription_Destroy(sub);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return ok;
}

typedef struct extra_ctx {
    int count;
} extra_ctx;

/* Reports an event left in the map (not matched by a stored message). */
static void report_extra(const char *key, void *value, void *ctx)
{
    extra_ctx *x = ctx;
    if (x->count++ < SHOWN)
        printf("  VIOLATION: CHAT_EVENTS has %s (%u time(s)) but PostgreSQL does not\n", key,
               (unsigned)(uintptr_t)value);
}

int main(int argc, char **argv)
{
    const char *url = NULL, *dsn = NULL;
    char *prefixes[64];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--nats") == 0 && i + 1 < argc)
            url = argv[++i];
        else if (strcmp(argv[i], "--pg-dsn") == 0 && i + 1 < argc)
            dsn = argv[++i];
        else if (n < 64)
            prefixes[n++] = argv[i];
    }
    if (url == NULL || dsn == NULL || n == 0) {
        fprintf(stderr, "usage: fault_events --nats URL --pg-dsn DSN PREFIX...\n");
        return 2;
    }
    chat_map *seen = chat_map_create();
    uint64_t read = 0;
    if (!read_events(url, seen, prefixes, n, &read))
        return 2;
    PGconn *pg = PQconnectdb(dsn);
    PGresult *r = PQexec(pg, "SELECT conversation_id || ':' || seq FROM messages ORDER BY 1");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "fault_events: %s\n", PQerrorMessage(pg));
        return 2;
    }
    int stored = 0, missing = 0, twice = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *key = PQgetvalue(r, i, 0);
        if (!wanted(key, prefixes, n))
            continue;
        stored++;
        uintptr_t c = (uintptr_t)chat_map_remove(seen, key);
        if (c == 0 && missing++ < SHOWN)
            printf("  VIOLATION: %s is stored but not in CHAT_EVENTS\n", key);
        if (c > 1 && twice++ < SHOWN)
            printf("  VIOLATION: %s is in CHAT_EVENTS %u times\n", key, (unsigned)c);
    }
    extra_ctx x = {0};
    chat_map_each(seen, report_extra, &x);
    PQclear(r);
    PQfinish(pg);
    chat_map_destroy(seen);
    printf("  CHAT_EVENTS (%" PRIu64 " entries read): %d stored messages, %d missing, %d more than once, %d not stored\n",
           read, stored, missing, twice, x.count);
    return missing || twice || x.count ? 1 : 0;
}
