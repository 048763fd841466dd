/* Admission control (CHAT_WS_INFLIGHT_MAX, docs/operations.md). A send is in flight from its
 * publish until its answer reaches this gateway (the committed event with the ack, a refusal, an
 * error) or for at most GW_INFLIGHT_TTL_MS. That count is the work this gateway has put into the
 * pipeline (broker, ingest, PostgreSQL) and not seen come out: past the bound the pipeline is
 * behind, and a send taken now would only wait in CHAT_IN, past the clients' patience, and come
 * back as a resend. So it is refused at once (`rate_limited` with a retry hint) and the client
 * sends it again later with the same cmid. A user with nothing in flight may go a quarter over the
 * bound: one busy sender does not lock out the others. All lws thread. */
#ifndef GW_ADMIT_H
#define GW_ADMIT_H
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_INFLIGHT_TTL_MS 5000

typedef struct gw_admit gw_admit;

/* max: CHAT_WS_INFLIGHT_MAX (0: every send taken, none counted). m_inflight and m_shed are the
 * gauge and counter kept up to date (borrowed: they outlive it). The caller owns the result. */
gw_admit *gw_admit_create(size_t max, atomic_int_fast64_t *m_inflight, atomic_uint_fast64_t *m_shed);
/* NULL-safe. */
void gw_admit_destroy(gw_admit *a);
/* true: take the send of user. false: refuse it; *retry_after_ms says when to try again. */
bool gw_admit_take(gw_admit *a, const char *user, int64_t now_ms, int *retry_after_ms);
/* The send (session id text, conv, cmid) of user was published: it counts until gw_admit_done or
 * the TTL. */
void gw_admit_add(gw_admit *a, const char *session, const char *user, const char *conv, const char *cmid,
                  int64_t now_ms);
/* Its answer came (or it failed): it no longer counts. Unknown sends (and NULL fields) are ignored. */
void gw_admit_done(gw_admit *a, const char *session, const char *conv, const char *cmid);
/* Sends in flight now. */
size_t gw_admit_inflight(const gw_admit *a);
/* From the tick (~100 ms): sends past the TTL stop counting; a shedding episode ends (and is
 * logged) after a second without a refusal. */
void gw_admit_tick(gw_admit *a, int64_t now_ms);

#endif
