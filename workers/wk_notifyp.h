/* The notify role's private header: the role's state and a puller's, a due request and a
 * claimed member, and the jobs the pull loop (wk_notify_pull.c) runs a batch through: claims
 * (wk_notify_claim.c), coalescing (wk_notify_push.c), the webhook (wk_notify_webhook.c).
 * Threads: as wk_notify.c says; what takes an ntf_puller runs on that puller's thread, with the
 * batch it owns. Not for other roles. */
#ifndef WK_NOTIFYP_H
#define WK_NOTIFYP_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_egress.h"
#include "chat_metrics.h"
#include "chat_nats.h"
#include "wk_notify.h"

#define NTF_RETRY_SOON_MS 1000 /* handed back, or another worker is pushing for that member now */

typedef struct ntf_puller {
    struct wk_notify *n;
    int index;
    pthread_t thread;
    bool started;
    PGconn *pg;
    int64_t pg_next_try_ms;
    CURL *curl;
    natsSubscription *sub;
    char inbox[64];
    uint64_t batches;
    chat_js_puller pull;      /* its open pull requests */
} ntf_puller;

struct wk_notify {
    wk_app *app;
    char worker_id[40];
    char next_subject[160];
    atomic_bool consumer_ready;
    ntf_puller pullers[WK_NOTIFY_THREADS];
    pthread_t monitor;
    bool monitor_started;
    bool curl_global;
    chat_egress *egress; /* where the webhook may connect (CHAT_EGRESS_ALLOW) */
    atomic_uint_fast64_t *m_pushes, *m_failures, *m_given_up;
    atomic_uint_fast64_t *m_done, *m_no_webhook, *m_invalid, *m_skipped;
    atomic_int_fast64_t *m_pending, *m_behind;
    chat_histogram *h_webhook;
};

/* One text or system message of CHAT_EVENTS that has passed its grace. */
typedef struct ntf_req {
    natsMsg *msg;
    Chat__V1__Event *ev;
    uint64_t delivered;
} ntf_req;

enum { O_NONE, O_PUSHED, O_FAILED, O_DEFERRED };

/* A member found behind by the claim query; strings point into its PGresult. */
typedef struct ntf_pair {
    const char *conv, *user;
    uint64_t delivered, pushed, last_seq;
    bool mine;             /* claimed by this batch */
    int64_t claim_left_ms; /* not mine: how long the other claim still runs (0: unknown) */
    int64_t unread;
    bool has_newest;
    wk_push_msg newest;
    int outcome;
    uint64_t max_delivered; /* of the batch's requests that depend on this member */
} ntf_pair;

/* ------------------------------------------------------------------------------------------ */
/* The pull loop (wk_notify_pull.c)                                                             */
/* ------------------------------------------------------------------------------------------ */

/* A puller's thread (arg: its ntf_puller): pulls and handles batches until the role stops, then
 * frees what the puller owns. */
void *ntf_puller_thread(void *arg);

/* ------------------------------------------------------------------------------------------ */
/* Replies to JetStream (wk_notify_js.c): below the pull loop, the claims and the pushes          */
/* ------------------------------------------------------------------------------------------ */

/* Publishes `what` (+ACK, +TERM, +WPI, -NAK ...) to m's reply subject. */
void ntf_reply(ntf_puller *p, natsMsg *m, const char *what);
/* -NAK with a delay: the broker redelivers the message after delay_ms (to any notify worker). */
void ntf_nak_after(ntf_puller *p, natsMsg *m, int64_t delay_ms);
/* +WPI for the n requests of the batch when the last one (*last_ms) is old enough. */
void ntf_keepalive(ntf_puller *p, ntf_req *rq, int n, int64_t *last_ms);

/* ------------------------------------------------------------------------------------------ */
/* Claims (wk_notify_claim.c)                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Runs the claim statements for the due requests (claim token `token`); the rows of the members
 * behind them (caller PQclears). NULL when the worker stops (the batch is handed back) or the
 * database refused the statements three times (the batch was nak'ed). */
PGresult *ntf_claim(ntf_puller *p, ntf_req *rq, int n, const char *token, int64_t *last_keep);
/* pairs[i] from row i of the claim's result (its strings point into r). */
void ntf_read_pairs(PGresult *r, ntf_pair *pairs);
/* Moves the watermarks of the pushed pairs, holds the failed ones for their retry delay and
 * releases every other claim of this batch. */
void ntf_settle(ntf_puller *p, ntf_pair *pairs, int npairs, const char *token);
/* Whether message ev waits on member q: q is behind it and no push covered it yet. */
bool ntf_depends(const Chat__V1__Event *ev, const ntf_pair *q);

/* ------------------------------------------------------------------------------------------ */
/* Coalescing (wk_notify_push.c) and the webhook (wk_notify_webhook.c)                          */
/* ------------------------------------------------------------------------------------------ */

/* One POST per user over the claimed pairs (the rows come ordered by user); sets each claimed
 * pair's outcome. */
void ntf_push_all(ntf_puller *p, ntf_pair *pairs, int npairs, ntf_req *rq, int nreq, int64_t *last_keep);
/* POSTs one push; true on a 2xx. One log line either way. */
bool ntf_post(ntf_puller *p, const char *user, const char *body, int nconvs, int64_t unread);

#endif
