/* The api role's events as history and sync read them: a hot row or an archived event made a
 * reply's Event, archived chunks held for one request, and the tombstones of deleted messages in
 * either tier (docs/storage.md). Runs on a lane's delivery thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "wk_apip.h"

/* Fills e from a row of API_EVENT_COLUMNS; its strings point into the result (and to conv). */
void api_event_from_row(Chat__V1__Event *e, PGresult *rows, int i, char *conv)
{
    chat__v1__event__init(e);
    e->conv = conv;
    e->seq = strtoull(PQgetvalue(rows, i, H_SEQ), NULL, 10);
    e->id = PQgetvalue(rows, i, H_ID);
    e->cmid = PQgetvalue(rows, i, H_CMID);
    e->sender = PQgetvalue(rows, i, H_SENDER);
    e->kind = chat_kind_parse(PQgetvalue(rows, i, H_KIND));
    e->body = PQgetvalue(rows, i, H_BODY);      /* "" when NULL */
    e->meta_json = PQgetvalue(rows, i, H_META); /* "" when NULL */
    e->target = PQgetisnull(rows, i, H_TARGET) ? 0 : strtoull(PQgetvalue(rows, i, H_TARGET), NULL, 10);
    e->emoji = PQgetvalue(rows, i, H_EMOJI);
    e->reaction_on = strcmp(PQgetvalue(rows, i, H_ON), "t") == 0;
    e->ts_ms = strtoll(PQgetvalue(rows, i, H_TS), NULL, 10);
}

void api_cold_release(api_call *c, api_cold_set *cs)
{
    for (int i = 0; i < cs->n; i++)
        wk_cold_release(c->lane->api->cold, cs->chunk[i]);
    cs->n = 0;
}

/* Reads the chunk of row i of r (API_CHUNK_COLUMNS) into cs; NULL with the call failed
 * ("unavailable" while storage does not answer, "internal" for a damaged chunk). */
const wk_cold_chunk *api_cold_read(api_call *c, api_cold_set *cs, PGresult *r, int i)
{
    if (cs->n == API_COLD_CHUNKS_MAX) {
        api_fail(c, "internal", "too many archived chunks for one request");
        return NULL;
    }
    wk_cold_ref ref = {.url = PQgetvalue(r, i, K_URL),
                       .offset = strtoull(PQgetvalue(r, i, K_OFFSET), NULL, 10),
                       .length = strtoull(PQgetvalue(r, i, K_LENGTH), NULL, 10),
                       .conv = PQgetvalue(r, i, K_CONV),
                       .seq_lo = strtoull(PQgetvalue(r, i, K_SEQ_LO), NULL, 10),
                       .seq_hi = strtoull(PQgetvalue(r, i, K_SEQ_HI), NULL, 10),
                       .rows = (uint32_t)strtoul(PQgetvalue(r, i, K_ROWS), NULL, 10)};
    char err[512];
    const wk_cold_chunk *ch = NULL;
    chat_status st = wk_cold_read(c->lane->api->cold, &ref, &ch, err, sizeof err);
    if (st != CHAT_OK) {
        snprintf(c->detail, sizeof c->detail, "cold: %.240s", err);
        chat_log_clean(c->detail);
        if (st == CHAT_ERR_UNAVAILABLE)
            api_fail(c, "unavailable", "archive storage unavailable");
        else
            api_fail(c, "internal", "archived chunk unreadable");
        return NULL;
    }
    cs->chunk[cs->n++] = ch;
    return ch;
}

/* A reply's copy of an archived event: conv set, the chunk's extra fields left out. */
void api_event_from_cold(Chat__V1__Event *e, const Chat__V1__Event *src, char *conv)
{
    *e = *src;
    e->base.n_unknown_fields = 0;
    e->base.unknown_fields = NULL;
    e->conv = conv;
}

/* How every reader (history, sync, hot or archived) shows a deleted message, and an edit of one
 * (it carries the deleted text too): deleted, without body and meta; sender, kind, ts, id, cmid
 * and target stay, so a client draws "message deleted" in place. */
void api_tombstone(Chat__V1__Event *e)
{
    e->deleted = true;
    e->body = "";
    e->meta_json = "";
}

/* The seq whose delete would tombstone e (text and system: its own; edit: its target); 0 none. */
static uint64_t tombstone_key(const Chat__V1__Event *e)
{
    if (e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT || e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM)
        return e->seq;
    return e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT ? e->target : 0;
}

/* Tombstones the archived events (cold[i]) of a history or sync page whose message was deleted
 * (by a delete event that is hot, or archived: archive_tombstones); events[i].conv names each
 * one's conversation. */
bool api_cold_tombstones(api_call *c, Chat__V1__Event *events, const bool *cold, size_t n)
{
    chat_buf convs = {0}, keys = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&keys);
    int nkeys = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = cold[i] ? tombstone_key(&events[i]) : 0;
        if (key == 0)
            continue;
        char v[24];
        snprintf(v, sizeof v, "%" PRIu64, key);
        chat_buf_pg_array_str(&convs, events[i].conv);
        chat_buf_pg_array_str(&keys, v);
        nkeys++;
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&keys);
    PGresult *r = NULL;
    if (nkeys > 0) {
        const char *p[] = {convs.data, keys.data};
        r = api_run(
            c, "cold_tombstones",
            "SELECT k.c, k.s FROM unnest($1::text[], $2::bigint[]) AS k(c, s)"
            " WHERE EXISTS (SELECT 1 FROM messages d WHERE d.conversation_id = k.c AND d.kind = 'delete'"
            " AND d.target_seq = k.s)"
            " OR EXISTS (SELECT 1 FROM archive_tombstones t WHERE t.conversation_id = k.c AND t.target_seq = k.s)",
            2, p, PGRES_TUPLES_OK);
    }
    chat_buf_free(&convs);
    chat_buf_free(&keys);
    if (nkeys > 0 && r == NULL)
        return false;
    for (int k = 0; r && k < PQntuples(r); k++) {
        const char *conv = PQgetvalue(r, k, 0);
        uint64_t s = strtoull(PQgetvalue(r, k, 1), NULL, 10);
        for (size_t i = 0; i < n; i++)
            if (cold[i] && tombstone_key(&events[i]) == s && strcmp(events[i].conv, conv) == 0)
                api_tombstone(&events[i]);
    }
    PQclear(r);
    return true;
}
