/* Per-connection budgets (docs/security.md, "Budgets"): what one connection may make the gateway
 * do beyond its frame rate (CHAT_WS_RATE), each a number enforced here. A connection that needs
 * none of them carries one NULL pointer; the state is allocated at its first use and freed with
 * the session (gw_budget_free). lws thread only. */
#ifndef GW_BUDGET_H
#define GW_BUDGET_H
#include <stdbool.h>
#include <stdint.h>

/* typing: one per conversation per second, at most GW_TYPING_RATE a second in all (burst twice);
 * each is a publish per member of the conversation on the lws thread */
#define GW_TYPING_CONV_MS 1000
#define GW_TYPING_RATE 2
#define GW_TYPING_CONVS 8 /* conversations remembered: more than a second's worth of GW_TYPING_RATE */
/* presence: queries (each up to 100 users, two Redis commands a user) per second (burst twice),
 * and queued for the presence thread at once */
#define GW_PRESENCE_RATE 2
#define GW_PRESENCE_INFLIGHT 4
/* membership lookups: frames naming a conversation the gateway's cache does not know the user in
 * (members.check for seen/read, members.list for typing, a not_member answer to a post), per
 * second (burst twice); checks and member lists in flight at once; frames queued behind checks */
#define GW_LOOKUP_RATE 10
#define GW_LOOKUPS_INFLIGHT 8
#define GW_WAITING_MAX 64
/* post.status polls after a duplicate PubAck: sends waiting for theirs at once, polls per second
 * (burst twice) */
#define GW_STATUS_CHAINS 4
#define GW_STATUS_POLL_RATE 8

typedef struct gw_budget gw_budget;

/* Token bucket: refills `rate` per second up to 2 * rate; takes one token if it can. */
bool gw_bucket_take(double *tokens, int64_t *refill_ms, int rate, int64_t now_ms);

/* *b is allocated at the first call that needs it (aborts when out of memory). */
/* A typing frame for conv (keyed hash): true when it may be fanned out now. */
bool gw_budget_typing(gw_budget **b, const char *conv, int64_t now_ms);
/* A presence query: true when it may be queued (then gw_budget_presence_done when answered). */
bool gw_budget_presence(gw_budget **b, int64_t now_ms);
void gw_budget_presence_done(gw_budget *b);
/* A membership lookup that sends a request: true when it may (then gw_budget_lookup_done when
 * answered or failed). */
bool gw_budget_lookup(gw_budget **b, int64_t now_ms);
void gw_budget_lookup_done(gw_budget *b);
/* A post to a conversation of unknown membership is published unchecked (the ingest checks it);
 * true while the lookup bucket has a token. A not_member answer then costs one (charge). */
bool gw_budget_lookup_left(gw_budget **b, int64_t now_ms);
void gw_budget_lookup_charge(gw_budget *b, int64_t now_ms);
/* A frame queued behind a membership check: true when it may be (then waiting_done). */
bool gw_budget_waiting(gw_budget **b);
void gw_budget_waiting_done(gw_budget *b);
/* A send starts polling post.status: true when it may (then status_done at its end). */
bool gw_budget_status_start(gw_budget **b);
void gw_budget_status_done(gw_budget *b);
/* One post.status request: true when the poll may go now (else wait and ask again). */
bool gw_budget_status_poll(gw_budget **b, int64_t now_ms);
/* NULL-safe; *b becomes NULL. */
void gw_budget_free(gw_budget **b);

#endif
