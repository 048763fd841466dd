/* Role `notify`. Threads: WK_NOTIFY_THREADS pullers, each owning its PGconn, inbox subscription and
 * CURL handle (and the messages of its batch); one monitor thread owning its PGconn and jsCtx. The
 * wk_notify struct is read-only after start apart from its atomics. */
#include "wk_notify.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "chat.pb-c.h"
#include "chat_buf.h"
#include "chat_egress_curl.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_pg.h"
#include "wk_streams.h"

#define IDLE_WAIT_MS 1000     /* long poll of an idle puller */
#define DUE_SLACK_MS 20       /* a redelivery this close to its due time counts as due */
#define KEEPALIVE_MS 10000    /* +WPI for the batch while it takes long (AckWait is 30 s) */
#define BATCH_BUDGET_MS 20000 /* no new POST after this; the rest of the batch is handed back */
#define RETRY_SOON_MS 1000    /* handed back, or another worker is pushing for that member now */
#define PENDING_POLL_MS 5000
#define BEHIND_POLL_MS 10000
#define CONNECT_TIMEOUT_MS 2000
#define POST_TIMEOUT_MS 5000

typedef struct puller {
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
} puller;

struct wk_notify {
    wk_app *app;
    char worker_id[40];
    char next_subject[160];
    atomic_bool consumer_ready;
    puller pullers[WK_NOTIFY_THREADS];
    pthread_t monitor;
    bool monitor_started;
    bool curl_global;
    chat_egress *egress; /* where the webhook may connect (CHAT_EGRESS_ALLOW) */
    atomic_uint_fast64_t *m_pushes, *m_failures, *m_given_up;
    atomic_uint_fast64_t *m_done, *m_no_webhook, *m_invalid, *m_skipped;
    atomic_int_fast64_t *m_pending, *m_behind;
    chat_histogram *h_webhook;
};

/* ------------------------------------------------------------------------------------------ */
/* Pure helpers                                                                                 */
/* ------------------------------------------------------------------------------------------ */

int64_t wk_notify_backoff_ms(uint64_t delivered)
{
    int shift = delivered <= 2 ? 0 : delivered - 2 > 16 ? 16 : (int)(delivered - 2);
    int64_t ms = 1000LL << shift;
    return ms > WK_NOTIFY_BACKOFF_MAX_MS ? WK_NOTIFY_BACKOFF_MAX_MS : ms;
}

bool wk_notify_parse_ack(const char *reply, uint64_t *delivered, int64_t *ts_ns)
{
    if (reply == NULL || strncmp(reply, "$JS.ACK.", 8) != 0)
        return false;
    const char *tok[16];
    int n = 0;
    for (const char *p = reply; p && n < 16; p = strchr(p, '.'), p = p ? p + 1 : NULL)
        tok[n++] = p;
    int base = n == 9 ? 2 : n >= 11 ? 4 : -1;
    if (base < 0)
        return false;
    char *end = NULL;
    unsigned long long dc = strtoull(tok[base + 2], &end, 10);
    if (end == tok[base + 2] || *end != '.' || dc == 0)
        return false;
    long long ts = strtoll(tok[base + 5], &end, 10);
    if (end == tok[base + 5] || ts <= 0)
        return false;
    *delivered = dc;
    *ts_ns = ts;
    return true;
}

wk_notify_kind wk_notify_classify(const char *chat_type, const void *data, size_t len, Chat__V1__Event **ev)
{
    *ev = NULL;
    /* membership changes, and whatever a later release may add, are none of the notifier's business */
    if (chat_type == NULL || strcmp(chat_type, "event") != 0)
        return WK_NOTIFY_SKIP;
    Chat__V1__Event *e = chat__v1__event__unpack(NULL, len, data);
    if (e == NULL || !chat_id_valid(e->conv) || !chat_id_valid(e->sender) || e->seq == 0) {
        if (e)
            chat__v1__event__free_unpacked(e, NULL);
        return WK_NOTIFY_INVALID;
    }
    /* edits, deletes and reactions change what is unread, never add to it: no push of their own */
    if (e->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT && e->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM) {
        chat__v1__event__free_unpacked(e, NULL);
        return WK_NOTIFY_SKIP;
    }
    *ev = e;
    return WK_NOTIFY_MESSAGE;
}

char *wk_notify_payload(const char *user, const wk_push_conv *convs, size_t n, const wk_push_msg *newest,
                        bool with_preview)
{
    json_t *o = json_object(), *list = json_array();
    json_int_t total = 0;
    bool ok = o && list && json_object_set_new(o, "user", json_string(user)) == 0;
    for (size_t i = 0; ok && i < n; i++) {
        json_t *c = json_pack("{s:s, s:I, s:I}", "conv", convs[i].conv, "unread", (json_int_t)convs[i].unread,
                              "last_seq", (json_int_t)convs[i].last_seq);
        ok = c && json_array_append_new(list, c) == 0;
        total += (json_int_t)convs[i].unread;
    }
    ok = ok && json_object_set(o, "conversations", list) == 0;
    ok = ok && json_object_set_new(o, "unread_total", json_integer(total)) == 0;
    if (ok && newest) {
        json_t *nw = json_pack("{s:s, s:I, s:s, s:I}", "conv", newest->conv, "seq", (json_int_t)newest->seq, "from",
                               newest->from, "ts", (json_int_t)newest->ts_ms);
        if (nw && with_preview && newest->preview) {
            json_t *pv = json_string(newest->preview);
            if (pv) /* not UTF-8 (cannot happen from a UTF8 database): no preview rather than no push */
                json_object_set_new(nw, "preview", pv);
        }
        ok = nw && json_object_set_new(o, "newest", nw) == 0;
    }
    char *text = ok ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(list);
    json_decref(o);
    return text;
}

/* ------------------------------------------------------------------------------------------ */
/* Replies to JetStream                                                                         */
/* ------------------------------------------------------------------------------------------ */

static void reply(puller *p, natsMsg *m, const char *what)
{
    const char *r = natsMsg_GetReply(m);
    if (r)
        natsConnection_PublishString(p->n->app->nc, r, what);
}

/* -NAK with a delay: the broker redelivers the message after delay_ms (to any notify worker). */
static void nak_after(puller *p, natsMsg *m, int64_t delay_ms)
{
    char text[64];
    snprintf(text, sizeof text, "-NAK {\"delay\":%lld}", (long long)(delay_ms < 1 ? 1 : delay_ms) * 1000000LL);
    reply(p, m, text);
}

/* ------------------------------------------------------------------------------------------ */
/* One batch                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* One text or system message of CHAT_EVENTS that has passed its grace. */
typedef struct req {
    natsMsg *msg;
    Chat__V1__Event *ev;
    uint64_t delivered;
} req;

enum { O_NONE, O_PUSHED, O_FAILED, O_DEFERRED };

/* A member found behind by the claim query; strings point into its PGresult. */
typedef struct pair {
    const char *conv, *user;
    uint64_t delivered, pushed, last_seq;
    bool mine;             /* claimed by this batch */
    int64_t claim_left_ms; /* not mine: how long the other claim still runs (0: unknown) */
    int64_t unread;
    bool has_newest;
    wk_push_msg newest;
    int outcome;
    uint64_t max_delivered; /* of the batch's requests that depend on this member */
} pair;

/* Rows of members behind the batch's messages: one INSERT makes sure each has a push_state row
 * (in key order, so two workers never deadlock), then one statement claims those not claimed by
 * anyone (SKIP LOCKED) and reads, for the claimed ones, the unread count and the newest message. */
static const char *SQL_ENSURE = "INSERT INTO push_state (conversation_id, user_id)"
                                " SELECT DISTINCT m.conversation_id, m.user_id"
                                " FROM unnest($1::text[], $2::bigint[], $3::text[]) AS r(conv, seq, sender)"
                                " JOIN conversations c ON c.id = r.conv AND c.deleted_at IS NULL"
                                " JOIN conversation_members m ON m.conversation_id = r.conv AND m.user_id <> r.sender"
                                " AND m.delivered_seq < r.seq"
                                " ORDER BY 1, 2 ON CONFLICT DO NOTHING";

/* A message x deleted by the time the push is built (within the grace, as a rule) neither counts
 * as unread nor is the newest: its text is in no push (docs/notifications.md). One probe of
 * messages_changes_target_idx per message, as history's tombstones. */
#define NOT_DELETED                                                                                                    \
    "NOT EXISTS (SELECT 1 FROM messages d WHERE d.conversation_id = x.conversation_id AND d.kind = 'delete'"           \
    " AND d.target_seq = x.seq)"

static const char *SQL_CLAIM =
    "WITH r AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS r(conv, seq, sender)),"
    " need AS (SELECT m.conversation_id AS conv, m.user_id AS usr, max(r.seq) AS req_seq,"
    "   min(m.delivered_seq) AS delivered, min(c.last_seq) AS last_seq"
    "   FROM r JOIN conversations c ON c.id = r.conv AND c.deleted_at IS NULL"
    "   JOIN conversation_members m ON m.conversation_id = r.conv AND m.user_id <> r.sender"
    "   AND m.delivered_seq < r.seq GROUP BY 1, 2),"
    " cand AS (SELECT n.*, p.pushed_seq, p.claimed_until FROM need n"
    "   JOIN push_state p ON p.conversation_id = n.conv AND p.user_id = n.usr WHERE p.pushed_seq < n.req_seq),"
    " lockable AS (SELECT p.conversation_id, p.user_id, k.last_seq FROM push_state p"
    "   JOIN cand k ON p.conversation_id = k.conv AND p.user_id = k.usr"
    "   WHERE p.pushed_seq < k.req_seq AND (p.claimed_until IS NULL OR p.claimed_until < now())"
    "   ORDER BY p.conversation_id, p.user_id FOR UPDATE OF p SKIP LOCKED),"
    " claimed AS (UPDATE push_state p SET claim_token = $4, claimed_seq = l.last_seq,"
    "   claimed_until = now() + $5::interval FROM lockable l"
    "   WHERE p.conversation_id = l.conversation_id AND p.user_id = l.user_id"
    "   RETURNING p.conversation_id, p.user_id)"
    " SELECT k.conv, k.usr, k.delivered, k.pushed_seq, k.last_seq, cl.user_id IS NOT NULL,"
    "   CASE WHEN k.claimed_until > now()"
    "   THEN (extract(epoch FROM k.claimed_until - now()) * 1000)::bigint ELSE 0 END,"
    "   coalesce(u.n, 0), nw.seq, nw.sender_id, nw.ts_ms, nw.preview"
    " FROM cand k LEFT JOIN claimed cl ON cl.conversation_id = k.conv AND cl.user_id = k.usr"
    " LEFT JOIN LATERAL (SELECT count(*) AS n FROM (SELECT 1 FROM messages x"
    "   WHERE cl.user_id IS NOT NULL AND x.conversation_id = k.conv AND x.seq > k.delivered"
    "   AND x.seq <= k.last_seq AND x.kind IN ('text', 'system') AND x.sender_id <> k.usr AND " NOT_DELETED
    "   LIMIT $6::int) s) u"
    "   ON true"
    " LEFT JOIN LATERAL (SELECT x.seq, x.sender_id, (extract(epoch FROM x.created_at) * 1000)::bigint AS ts_ms,"
    "   left(x.body, $7::int) AS preview FROM messages x"
    "   WHERE cl.user_id IS NOT NULL AND x.conversation_id = k.conv AND x.seq > k.delivered"
    "   AND x.seq <= k.last_seq AND x.kind IN ('text', 'system') AND x.sender_id <> k.usr AND " NOT_DELETED
    "   ORDER BY x.seq DESC LIMIT 1) nw ON true"
    " ORDER BY k.usr, k.conv";

/* After the POSTs: a 2xx moves the watermark to what the claim covered; every claim is released.
 * A member whose push failed stays held (claimed_until, without a token) for the retry delay, so
 * the other requests of the same burst wait for it instead of each POSTing on its own. */
static const char *SQL_SETTLE =
    "UPDATE push_state p SET"
    " pushed_seq = CASE WHEN k.ok THEN GREATEST(p.pushed_seq, p.claimed_seq) ELSE p.pushed_seq END,"
    " pushed_at = CASE WHEN k.ok THEN now() ELSE p.pushed_at END,"
    " claim_token = NULL, claimed_seq = NULL,"
    " claimed_until = CASE WHEN k.hold_ms > 0 THEN now() + k.hold_ms * interval '1 millisecond' END"
    " FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[]) AS k(conv, usr, ok, hold_ms)"
    " WHERE p.conversation_id = k.conv AND p.user_id = k.usr AND p.claim_token = $5";

static const char *SQL_BEHIND = "SELECT count(*) FROM conversation_members m"
                                " JOIN conversations c ON c.id = m.conversation_id AND c.deleted_at IS NULL"
                                " WHERE m.delivered_seq < c.last_seq AND EXISTS (SELECT 1 FROM messages x"
                                " WHERE x.conversation_id = m.conversation_id AND x.seq = m.delivered_seq + 1"
                                " AND x.created_at < now() - $1::interval)";

static void flatten(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '"')
            *s = ' ';
}

static int64_t mono_ms(void)
{
    return chat_mono_ns() / 1000000;
}

/* Connects the puller's PGconn when it has none (at most once a second). */
static bool pg_ready(puller *p)
{
    if (p->pg && PQstatus(p->pg) == CONNECTION_OK)
        return true;
    PQfinish(p->pg);
    p->pg = NULL;
    int64_t now = mono_ms();
    if (now < p->pg_next_try_ms)
        return false;
    p->pg_next_try_ms = now + 1000;
    char name[32];
    snprintf(name, sizeof name, "chat-notify-%d", p->index);
    if (wk_pg_connect(p->n->app->cfg->pg_dsn, name, &p->pg) != CHAT_OK)
        p->pg = NULL;
    return p->pg != NULL;
}

static void keepalive(puller *p, req *rq, int n, int64_t *last_ms)
{
    int64_t now = mono_ms();
    if (now - *last_ms < KEEPALIVE_MS)
        return;
    for (int i = 0; i < n; i++)
        reply(p, rq[i].msg, "+WPI");
    *last_ms = now;
}

/* Runs the claim statements for the due requests. While PostgreSQL is unreachable the batch is
 * kept (+WPI) and the connection retried once a second. NULL when the worker stops (the batch is
 * handed back) or the database refused the statements three times (the batch was nak'ed). */
static PGresult *claim(puller *p, req *rq, int n, const char *token, int64_t *last_keep)
{
    wk_notify *w = p->n;
    chat_buf convs = {0}, seqs = {0}, senders = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&seqs);
    chat_buf_pg_array_begin(&senders);
    for (int i = 0; i < n; i++) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, rq[i].ev->seq);
        chat_buf_pg_array_str(&convs, rq[i].ev->conv);
        chat_buf_pg_array_str(&seqs, seq);
        chat_buf_pg_array_str(&senders, rq[i].ev->sender);
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&seqs);
    chat_buf_pg_array_end(&senders);
    char claim_s[32], unread_max[16], preview_chars[16];
    snprintf(claim_s, sizeof claim_s, "%d seconds", WK_NOTIFY_CLAIM_S);
    snprintf(unread_max, sizeof unread_max, "%d", WK_NOTIFY_UNREAD_MAX);
    snprintf(preview_chars, sizeof preview_chars, "%d", WK_NOTIFY_PREVIEW_CHARS);
    const char *params[] = {convs.data, seqs.data, senders.data, token, claim_s, unread_max, preview_chars};
    PGresult *out = NULL;
    int refused = 0;
    bool logged_down = false;
    while (out == NULL) {
        if (atomic_load(&w->app->stopping)) {
            for (int i = 0; i < n; i++)
                nak_after(p, rq[i].msg, RETRY_SOON_MS);
            break;
        }
        if (!pg_ready(p)) {
            if (!logged_down)
                LOG_WARN("notify", "event=batch_waiting thread=%d reason=postgres_down size=%d", p->index, n);
            logged_down = true;
            keepalive(p, rq, n, last_keep);
            chat_sleep_ms(200);
            continue;
        }
        PGresult *r = PQexecParams(p->pg, SQL_ENSURE, 3, NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (ok) {
            PQclear(r);
            r = PQexecParams(p->pg, SQL_CLAIM, 7, NULL, params, NULL, NULL, 0);
            ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        }
        if (ok) {
            out = r;
            break;
        }
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        flatten(err);
        PQclear(r);
        if (PQstatus(p->pg) != CONNECTION_OK)
            continue; /* reconnects above */
        LOG_WARN("notify", "event=claim_failed thread=%d attempt=%d detail=\"%s\"", p->index, refused + 1, err);
        if (++refused >= 3) {
            for (int i = 0; i < n; i++)
                nak_after(p, rq[i].msg, wk_notify_backoff_ms(rq[i].delivered));
            break;
        }
        chat_sleep_ms(200 * refused);
    }
    chat_buf_free(&convs);
    chat_buf_free(&seqs);
    chat_buf_free(&senders);
    return out;
}

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *ctx)
{
    (void)ptr;
    (void)ctx;
    return size * nmemb;
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* POSTs one push; true on a 2xx. One log line either way. */
static bool post(puller *p, const char *user, const char *body, int nconvs, int64_t unread)
{
    wk_notify *w = p->n;
    if (p->curl == NULL && (p->curl = curl_easy_init()) == NULL) {
        LOG_ERROR("notify", "event=push_failed user=%s reason=curl_init", user);
        atomic_fetch_add(w->m_failures, 1);
        return false;
    }
    CURL *c = p->curl;
    char push_id[64];
    snprintf(push_id, sizeof push_id, "Chat-Push-Id: %016" PRIx64, fnv1a64(body));
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    headers = curl_slist_append(headers, push_id);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, w->app->cfg->push_webhook_url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "chat-notify/1");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)POST_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
    /* the webhook's address is someone else's choice: public addresses only, checked on the
     * address each connection goes to, no redirects, no proxy (chat_egress_curl.h) */
    chat_egress_guard guard = {.policy = w->egress};
    chat_egress_curl_guard(c, &guard);
    int64_t t0 = chat_mono_ns();
    CURLcode rc = curl_easy_perform(c);
    int64_t us = (chat_mono_ns() - t0) / 1000;
    chat_histogram_observe_us(w->h_webhook, us);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    bool ok = rc == CURLE_OK && status >= 200 && status < 300;
    if (ok) {
        atomic_fetch_add(w->m_pushes, 1);
        LOG_INFO("notify", "event=pushed user=%s conversations=%d unread=%lld status=%ld ms=%lld", user, nconvs,
                 (long long)unread, status, (long long)(us / 1000));
    } else {
        atomic_fetch_add(w->m_failures, 1);
        char error[160];
        if (guard.refused[0])
            snprintf(error, sizeof error, "egress refused: %s is not a public address (CHAT_EGRESS_ALLOW)", guard.refused);
        else
            snprintf(error, sizeof error, "%s", rc == CURLE_OK ? "not 2xx" : curl_easy_strerror(rc));
        LOG_WARN("notify", "event=push_failed user=%s status=%ld error=\"%s\" ms=%lld", user, status, error,
                 (long long)(us / 1000));
    }
    return ok;
}

static uint64_t u64(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoull(PQgetvalue(r, row, col), NULL, 10);
}

static int64_t i64(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static void read_pairs(PGresult *r, pair *pairs)
{
    for (int i = 0; i < PQntuples(r); i++) {
        pair *q = &pairs[i];
        *q = (pair){.conv = PQgetvalue(r, i, 0), .user = PQgetvalue(r, i, 1)};
        q->delivered = u64(r, i, 2);
        q->pushed = u64(r, i, 3);
        q->last_seq = u64(r, i, 4);
        q->mine = strcmp(PQgetvalue(r, i, 5), "t") == 0;
        q->claim_left_ms = i64(r, i, 6);
        q->unread = i64(r, i, 7);
        q->has_newest = !PQgetisnull(r, i, 8);
        if (q->has_newest)
            q->newest = (wk_push_msg){.conv = q->conv,
                                      .seq = u64(r, i, 8),
                                      .from = PQgetvalue(r, i, 9),
                                      .ts_ms = i64(r, i, 10),
                                      .preview = PQgetisnull(r, i, 11) ? NULL : PQgetvalue(r, i, 11)};
    }
}

/* One POST per user over the claimed pairs (grouped: the rows come ordered by user). */
static void push_all(puller *p, pair *pairs, int npairs, req *rq, int nreq, int64_t *last_keep)
{
    wk_notify *w = p->n;
    int64_t started = mono_ms();
    wk_push_conv *convs = calloc((size_t)(npairs ? npairs : 1), sizeof *convs);
    for (int i = 0; i < npairs;) {
        int j = i;
        while (j < npairs && strcmp(pairs[j].user, pairs[i].user) == 0)
            j++;
        size_t nc = 0;
        int64_t unread = 0;
        bool any = false;
        const wk_push_msg *newest = NULL;
        for (int k = i; k < j; k++) {
            pair *q = &pairs[k];
            if (!q->mine)
                continue;
            any = true;
            if (q->unread <= 0)
                continue;
            convs[nc++] = (wk_push_conv){.conv = q->conv, .unread = q->unread, .last_seq = q->last_seq};
            unread += q->unread;
            if (q->has_newest && (newest == NULL || q->newest.ts_ms > newest->ts_ms ||
                                  (q->newest.ts_ms == newest->ts_ms && q->newest.seq > newest->seq)))
                newest = &q->newest;
        }
        int outcome = O_NONE;
        if (!any) {
            outcome = O_NONE;
        } else if (atomic_load(&w->app->stopping) || mono_ms() - started > BATCH_BUDGET_MS) {
            outcome = O_DEFERRED;
        } else if (nc == 0) {
            outcome = O_PUSHED; /* nothing unread from others (changes only): the watermark moves */
        } else {
            keepalive(p, rq, nreq, last_keep);
            char *body = wk_notify_payload(pairs[i].user, convs, nc, newest, w->app->cfg->push_preview);
            if (body == NULL) {
                LOG_ERROR("notify", "event=push_failed user=%s reason=payload", pairs[i].user);
                outcome = O_FAILED;
            } else {
                outcome = post(p, pairs[i].user, body, (int)nc, unread) ? O_PUSHED : O_FAILED;
            }
            free(body);
        }
        for (int k = i; k < j; k++)
            if (pairs[k].mine)
                pairs[k].outcome = outcome;
        i = j;
    }
    free(convs);
}

/* Moves the watermarks of the pushed pairs, holds the failed ones for their retry delay and
 * releases every other claim of this batch. */
static void settle(puller *p, pair *pairs, int npairs, const char *token)
{
    chat_buf convs = {0}, users = {0}, oks = {0}, holds = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&users);
    chat_buf_pg_array_begin(&oks);
    chat_buf_pg_array_begin(&holds);
    int n = 0;
    for (int i = 0; i < npairs; i++) {
        if (!pairs[i].mine)
            continue;
        char hold[24];
        snprintf(hold, sizeof hold, "%lld",
                 pairs[i].outcome == O_FAILED ? (long long)wk_notify_backoff_ms(pairs[i].max_delivered) : 0LL);
        chat_buf_pg_array_str(&convs, pairs[i].conv);
        chat_buf_pg_array_str(&users, pairs[i].user);
        chat_buf_pg_array_str(&oks, pairs[i].outcome == O_PUSHED ? "t" : "f");
        chat_buf_pg_array_str(&holds, hold);
        n++;
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&users);
    chat_buf_pg_array_end(&oks);
    chat_buf_pg_array_end(&holds);
    if (n > 0) {
        const char *params[] = {convs.data, users.data, oks.data, holds.data, token};
        bool done = false;
        for (int attempt = 0; attempt < 3 && !done; attempt++) {
            if (!pg_ready(p)) {
                chat_sleep_ms(1000);
                continue;
            }
            PGresult *r = PQexecParams(p->pg, SQL_SETTLE, 5, NULL, params, NULL, NULL, 0);
            done = PQresultStatus(r) == PGRES_COMMAND_OK;
            if (!done) {
                char err[512];
                snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
                flatten(err);
                LOG_WARN("notify", "event=settle_failed thread=%d attempt=%d detail=\"%s\"", p->index, attempt + 1,
                         err);
            }
            PQclear(r);
        }
        /* not settled: the claims run out after WK_NOTIFY_CLAIM_S; a push already sent may be sent
         * again then (at least once) */
    }
    chat_buf_free(&convs);
    chat_buf_free(&users);
    chat_buf_free(&oks);
    chat_buf_free(&holds);
}

/* Whether message ev waits on member q: q is behind it and no push covered it yet. */
static bool depends(const Chat__V1__Event *ev, const pair *q)
{
    return strcmp(q->conv, ev->conv) == 0 && strcmp(q->user, ev->sender) != 0 && q->delivered < ev->seq &&
           q->pushed < ev->seq;
}

enum { D_DONE, D_BLOCKED, D_DEFERRED, D_FAILED };

/* Acks each request whose members are all pushed (or not behind); the others come back later. */
static void decide(puller *p, req *rq, int n, pair *pairs, int npairs)
{
    wk_notify *w = p->n;
    static const char *names[] = {"done", "blocked", "deferred", "failed"};
    for (int i = 0; i < n; i++) {
        const Chat__V1__Event *ev = rq[i].ev;
        int worst = D_DONE;
        int64_t wait_ms = RETRY_SOON_MS;
        for (int k = 0; k < npairs; k++) {
            const pair *q = &pairs[k];
            if (!depends(ev, q))
                continue;
            int d = D_DONE;
            if (!q->mine) {
                d = D_BLOCKED;
                int64_t left = q->claim_left_ms + 500;
                if (left > wait_ms)
                    wait_ms = left > WK_NOTIFY_BACKOFF_MAX_MS ? WK_NOTIFY_BACKOFF_MAX_MS : left;
            } else if (q->outcome == O_FAILED) {
                d = D_FAILED;
            } else if (q->outcome == O_DEFERRED) {
                d = D_DEFERRED;
            }
            if (d > worst)
                worst = d;
        }
        if (worst == D_DONE) {
            reply(p, rq[i].msg, "+ACK");
            atomic_fetch_add(w->m_done, 1);
            continue;
        }
        if (rq[i].delivered >= WK_NOTIFY_MAX_DELIVER) {
            /* the broker would not deliver it again: say so, count it, and take it out */
            reply(p, rq[i].msg, "+TERM");
            atomic_fetch_add(w->m_given_up, 1);
            LOG_WARN("notify", "event=given_up conv=%s seq=%" PRIu64 " deliveries=%" PRIu64 " reason=%s", ev->conv,
                     ev->seq, rq[i].delivered, names[worst]);
            continue;
        }
        int64_t delay = worst == D_FAILED ? wk_notify_backoff_ms(rq[i].delivered) : wait_ms;
        nak_after(p, rq[i].msg, delay);
        LOG_DEBUG("notify", "event=retry_later conv=%s seq=%" PRIu64 " deliveries=%" PRIu64 " reason=%s delay_ms=%lld",
                  ev->conv, ev->seq, rq[i].delivered, names[worst], (long long)delay);
    }
}

/* Requests whose grace has passed: claim, push per user, settle, ack or hand back. */
static void process_due(puller *p, req *rq, int n)
{
    wk_notify *w = p->n;
    char token[96];
    snprintf(token, sizeof token, "%s-%d-%" PRIu64, w->worker_id, p->index, ++p->batches);
    int64_t last_keep = mono_ms();
    PGresult *res = claim(p, rq, n, token, &last_keep);
    if (res == NULL)
        return;
    int npairs = PQntuples(res);
    pair *pairs = calloc((size_t)(npairs ? npairs : 1), sizeof *pairs);
    read_pairs(res, pairs);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < npairs; k++)
            if (depends(rq[i].ev, &pairs[k]) && rq[i].delivered > pairs[k].max_delivered)
                pairs[k].max_delivered = rq[i].delivered;
    push_all(p, pairs, npairs, rq, n, &last_keep);
    settle(p, pairs, npairs, token);
    decide(p, rq, n, pairs, npairs);
    free(pairs);
    PQclear(res);
}

/* Sorts a fetched batch: what needs no push is acked, a malformed event is terminated, without a
 * webhook everything is acked, messages still inside their grace are nak'ed with the time left;
 * the rest is processed. */
static void handle_batch(puller *p, natsMsg **msgs, int n)
{
    wk_notify *w = p->n;
    const chat_cfg *cfg = w->app->cfg;
    req due[WK_NOTIFY_BATCH];
    int ndue = 0;
    int64_t now = chat_now_ms();
    for (int i = 0; i < n; i++) {
        natsMsg *m = msgs[i];
        uint64_t dc = 1;
        int64_t ts_ns = 0;
        wk_notify_parse_ack(natsMsg_GetReply(m), &dc, &ts_ns);
        const char *type = NULL;
        if (natsMsgHeader_Get(m, "Chat-Type", &type) != NATS_OK)
            type = NULL;
        Chat__V1__Event *ev = NULL;
        wk_notify_kind kind = wk_notify_classify(type, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &ev);
        if (kind == WK_NOTIFY_SKIP) {
            reply(p, m, "+ACK");
            atomic_fetch_add(w->m_skipped, 1);
        } else if (kind == WK_NOTIFY_INVALID) {
            LOG_WARN("notify", "event=dropped subject=%s reason=\"not a valid Event\"", natsMsg_GetSubject(m));
            reply(p, m, "+TERM");
            atomic_fetch_add(w->m_invalid, 1);
        } else if (cfg->push_webhook_url[0] == '\0') {
            reply(p, m, "+ACK");
            atomic_fetch_add(w->m_no_webhook, 1);
        } else {
            int64_t left = ev->ts_ms + cfg->push_grace_ms - now;
            if (left > DUE_SLACK_MS) {
                nak_after(p, m, left > cfg->push_grace_ms ? cfg->push_grace_ms : left);
            } else {
                due[ndue++] = (req){.msg = m, .ev = ev, .delivered = dc};
                continue; /* owned by due[] now */
            }
        }
        if (ev)
            chat__v1__event__free_unpacked(ev, NULL);
        natsMsg_Destroy(m);
    }
    if (ndue > 0)
        process_due(p, due, ndue);
    for (int i = 0; i < ndue; i++) {
        chat__v1__event__free_unpacked(due[i].ev, NULL);
        natsMsg_Destroy(due[i].msg);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Pulling (by hand, as the ingest does: nats.c 3.4.1's Fetch has known bugs)                   */
/* ------------------------------------------------------------------------------------------ */

/* Up to WK_NOTIFY_BATCH messages: what is there now, or waits up to IDLE_WAIT_MS for one. */
static int fetch(puller *p, natsMsg **msgs)
{
    natsConnection *nc = p->n->app->nc;
    int n = 0;
    char rq[96];
    for (int round = 0; round < 2 && n == 0; round++) {
        if (round == 0)
            snprintf(rq, sizeof rq, "{\"batch\":%d,\"no_wait\":true}", WK_NOTIFY_BATCH);
        else
            snprintf(rq, sizeof rq, "{\"batch\":1,\"expires\":%lld}", (long long)IDLE_WAIT_MS * 1000000LL);
        if (natsConnection_PublishRequestString(nc, p->n->next_subject, p->inbox, rq) != NATS_OK) {
            chat_sleep_ms(200);
            return 0;
        }
        int64_t wait_ms = round == 0 ? 2000 : IDLE_WAIT_MS + 1000;
        for (;;) {
            natsMsg *m = NULL;
            if (natsSubscription_NextMsg(&m, p->sub, wait_ms) != NATS_OK)
                break;
            const char *status = NULL;
            if (natsMsg_GetDataLength(m) == 0 && natsMsgHeader_Get(m, "Status", &status) == NATS_OK) {
                natsMsg_Destroy(m);
                break; /* 404 no messages, 408 request done, 409 consumer gone */
            }
            msgs[n++] = m;
            if (n == WK_NOTIFY_BATCH || (round == 1 && n == 1))
                break;
        }
    }
    return n;
}

static void *puller_thread(void *arg)
{
    puller *p = arg;
    wk_notify *w = p->n;
    natsMsg *msgs[WK_NOTIFY_BATCH];
    while (!atomic_load(&w->app->stopping)) {
        if (!atomic_load(&w->consumer_ready)) {
            chat_sleep_ms(200);
            continue;
        }
        if (p->sub == NULL) {
            natsInbox *inbox = NULL;
            if (natsInbox_Create(&inbox) != NATS_OK) {
                chat_sleep_ms(1000);
                continue;
            }
            snprintf(p->inbox, sizeof p->inbox, "%s", (const char *)inbox);
            natsInbox_Destroy(inbox);
            if (natsConnection_SubscribeSync(&p->sub, w->app->nc, p->inbox) != NATS_OK) {
                p->sub = NULL;
                chat_sleep_ms(1000);
                continue;
            }
            natsSubscription_SetPendingLimits(p->sub, -1, -1);
        }
        int n = fetch(p, msgs);
        if (n > 0)
            handle_batch(p, msgs, n);
    }
    natsSubscription_Destroy(p->sub);
    p->sub = NULL;
    curl_easy_cleanup(p->curl);
    p->curl = NULL;
    PQfinish(p->pg);
    p->pg = NULL;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The monitor: consumer set-up, pending, members behind                                        */
/* ------------------------------------------------------------------------------------------ */

/* Creates the shared consumer, or brings an existing one to this configuration (an update keeps
 * its position). DeliverPolicy new only matters the first time: CHAT_EVENTS is not a work queue
 * but 7 days of history, and a new notifier starts with what is posted from now on. The policy
 * cannot be changed by an update, so every release must create it with the same one. */
static bool setup_consumer(jsCtx *js, int replicas)
{
    if (wk_streams_ensure(js, replicas, false) != CHAT_OK)
        return false;
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = WK_NOTIFY_CONSUMER;
    cc.FilterSubject = WK_NOTIFY_FILTER;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = (int64_t)WK_NOTIFY_ACK_WAIT_MS * 1000000LL;
    cc.MaxDeliver = WK_NOTIFY_MAX_DELIVER;
    cc.MaxAckPending = WK_NOTIFY_MAX_ACK_PENDING;
    cc.DeliverPolicy = js_DeliverNew;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, js, CHAT_STREAM_EVENTS, &cc, NULL, &jerr);
    if (s != NATS_OK && jerr != 0) { /* exists with another configuration (an older release) */
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        jerr = 0;
        s = js_UpdateConsumer(&ci, js, CHAT_STREAM_EVENTS, &cc, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        LOG_WARN("notify", "event=consumer_setup_failed status=\"%s\" jerr=%d", natsStatus_GetText(s), (int)jerr);
        return false;
    }
    LOG_INFO("notify", "event=consumer_ready stream=%s consumer=%s", CHAT_STREAM_EVENTS, WK_NOTIFY_CONSUMER);
    return true;
}

static void poll_pending(wk_notify *w, jsCtx *js)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, CHAT_STREAM_EVENTS, WK_NOTIFY_CONSUMER, NULL, &jerr);
    if (s == NATS_OK && ci) {
        atomic_store(w->m_pending, (int_fast64_t)ci->NumPending + ci->NumAckPending);
    } else if (jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr) {
        LOG_WARN("notify", "event=consumer_missing jerr=%d", (int)jerr);
        /* set up again; a consumer created anew starts at the stream's end: what was posted while
         * it was missing gets no push */
        atomic_store(&w->consumer_ready, false);
    }
    jsConsumerInfo_Destroy(ci);
}

static void poll_behind(wk_notify *w, PGconn **pg)
{
    if (*pg == NULL || PQstatus(*pg) != CONNECTION_OK) {
        PQfinish(*pg);
        *pg = NULL;
        if (wk_pg_connect(w->app->cfg->pg_dsn, "chat-notify-monitor", pg) != CHAT_OK) {
            *pg = NULL;
            return;
        }
        wk_pg_exec(*pg, "SET statement_timeout = '5s'", PGRES_COMMAND_OK, "notify_timeout");
    }
    char grace[48];
    snprintf(grace, sizeof grace, "%lld milliseconds", (long long)w->app->cfg->push_grace_ms);
    const char *params[] = {grace};
    PGresult *r = PQexecParams(*pg, SQL_BEHIND, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        atomic_store(w->m_behind, (int_fast64_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10));
    } else {
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        flatten(err);
        LOG_WARN("notify", "event=members_behind_failed detail=\"%s\"", err);
    }
    PQclear(r);
}

static void *monitor_thread(void *arg)
{
    wk_notify *w = arg;
    jsCtx *js = NULL;
    PGconn *pg = NULL;
    int64_t next_setup = 0, next_pending = 0, next_behind = 0;
    while (!atomic_load(&w->app->stopping)) {
        int64_t now = mono_ms();
        bool connected = chat_nats_connected(w->app->nc);
        if (js == NULL && connected) {
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Wait = 5000;
            if (natsConnection_JetStream(&js, w->app->nc, &jo) != NATS_OK)
                js = NULL;
        }
        if (js && connected && !atomic_load(&w->consumer_ready) && now >= next_setup) {
            if (setup_consumer(js, w->app->cfg->js_replicas)) {
                atomic_store(&w->consumer_ready, true);
                next_pending = now;
            } else {
                next_setup = now + 1000;
            }
        }
        if (js && connected && atomic_load(&w->consumer_ready) && now >= next_pending) {
            poll_pending(w, js);
            next_pending = now + PENDING_POLL_MS;
        }
        if (now >= next_behind) {
            poll_behind(w, &pg);
            next_behind = now + BEHIND_POLL_MS;
        }
        chat_sleep_ms(100);
    }
    jsCtx_Destroy(js);
    PQfinish(pg);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Start and stop                                                                               */
/* ------------------------------------------------------------------------------------------ */

chat_status wk_notify_start(wk_app *app, wk_notify **out)
{
    wk_notify *w = calloc(1, sizeof *w);
    if (w == NULL)
        return CHAT_ERR_NOMEM;
    w->app = app;
    unsigned char r[4];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        memset(r, 0, sizeof r);
    snprintf(w->worker_id, sizeof w->worker_id, "%d-%02x%02x%02x%02x", (int)getpid(), r[0], r[1], r[2], r[3]);
    snprintf(w->next_subject, sizeof w->next_subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", CHAT_STREAM_EVENTS,
             WK_NOTIFY_CONSUMER);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(w);
        LOG_ERROR("notify", "event=start_failed reason=curl_global_init");
        return CHAT_ERR_INTERNAL;
    }
    w->curl_global = true;
    char why[160];
    if (chat_egress_create(app->cfg->egress_allow, &w->egress, why, sizeof why) != CHAT_OK) {
        LOG_ERROR("notify", "event=start_failed setting=CHAT_EGRESS_ALLOW reason=\"%s\"", why);
        wk_notify_destroy(w);
        return CHAT_ERR_INVALID;
    }
    chat_metrics *m = app->metrics;
    w->m_pushes = chat_metrics_counter(m, "chat_notify_pushes_total", NULL, "Pushes the webhook answered with a 2xx.");
    w->m_failures = chat_metrics_counter(m, "chat_notify_push_failures_total", NULL,
                                         "Pushes that failed (no answer in time, or not a 2xx); retried.");
    w->m_given_up = chat_metrics_counter(m, "chat_notify_given_up_total", NULL,
                                         "Messages whose push was given up after the last delivery failed.");
    static const char *help_req = "Events of CHAT_EVENTS the notify role acked, by result.";
    w->m_done = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"done\"", help_req);
    w->m_no_webhook = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"no_webhook\"", help_req);
    w->m_invalid = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"invalid\"", help_req);
    w->m_skipped = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"skipped\"", help_req);
    w->m_pending = chat_metrics_gauge(m, "chat_notify_pending", NULL,
                                      "Events in the notify consumer of CHAT_EVENTS: not yet delivered plus "
                                      "awaiting ack (inside the grace, or being retried).");
    w->m_behind = chat_metrics_gauge(m, "chat_notify_members_behind", NULL,
                                     "Members whose seen cursor is behind a message older than CHAT_PUSH_GRACE.");
    w->h_webhook = chat_metrics_histogram(m, "chat_notify_webhook_seconds", NULL, "Duration of webhook POSTs.");
    *out = w;
    if (pthread_create(&w->monitor, NULL, monitor_thread, w) != 0) {
        wk_notify_destroy(w);
        *out = NULL;
        return CHAT_ERR_INTERNAL;
    }
    w->monitor_started = true;
    for (int i = 0; i < WK_NOTIFY_THREADS; i++) {
        puller *p = &w->pullers[i];
        p->n = w;
        p->index = i;
        if (pthread_create(&p->thread, NULL, puller_thread, p) != 0) {
            atomic_store(&app->stopping, true);
            wk_notify_destroy(w);
            *out = NULL;
            return CHAT_ERR_INTERNAL;
        }
        p->started = true;
    }
    LOG_INFO("notify", "event=role_started worker=%s threads=%d webhook=%s grace_ms=%lld preview=%d egress_allow=\"%s\"",
             w->worker_id, WK_NOTIFY_THREADS, app->cfg->push_webhook_url[0] ? "set" : "none",
             (long long)app->cfg->push_grace_ms, app->cfg->push_preview ? 1 : 0, app->cfg->egress_allow);
    return CHAT_OK;
}

void wk_notify_destroy(wk_notify *w)
{
    if (w == NULL)
        return;
    for (int i = 0; i < WK_NOTIFY_THREADS; i++)
        if (w->pullers[i].started)
            pthread_join(w->pullers[i].thread, NULL);
    if (w->monitor_started)
        pthread_join(w->monitor, NULL);
    if (w->curl_global)
        curl_global_cleanup();
    chat_egress_destroy(w->egress);
    free(w);
}
