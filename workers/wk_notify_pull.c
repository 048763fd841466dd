/* The notify role's consumer and pull loop: pulling batches by hand, sorting each message (ack,
 * terminate, wait out the grace, or due), and for the due ones claim, push, settle, then ack or
 * hand back. Threads: the pullers, each with its own batch. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.pb-c.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_notifyp.h"

#define IDLE_WAIT_MS 1000    /* an idle puller looks at the role's state this often */
#define PULL_EXPIRES_MS 5000 /* a pull request's life: an idle puller renews it this often */
#define PULL_RETRY_MS 200
#define DUE_SLACK_MS 20    /* a redelivery this close to its due time counts as due */

/* ------------------------------------------------------------------------------------------ */
/* Pure helpers                                                                                 */
/* ------------------------------------------------------------------------------------------ */

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

/* ------------------------------------------------------------------------------------------ */
/* One batch                                                                                    */
/* ------------------------------------------------------------------------------------------ */

enum { D_DONE, D_BLOCKED, D_DEFERRED, D_FAILED };

/* Acks each request whose members are all pushed (or not behind); the others come back later. */
static void decide(ntf_puller *p, ntf_req *rq, int n, ntf_pair *pairs, int npairs)
{
    wk_notify *w = p->n;
    static const char *names[] = {"done", "blocked", "deferred", "failed"};
    for (int i = 0; i < n; i++) {
        const Chat__V1__Event *ev = rq[i].ev;
        int worst = D_DONE;
        int64_t wait_ms = NTF_RETRY_SOON_MS;
        for (int k = 0; k < npairs; k++) {
            const ntf_pair *q = &pairs[k];
            if (!ntf_depends(ev, q))
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
            ntf_reply(p, rq[i].msg, "+ACK");
            atomic_fetch_add(w->m_done, 1);
            continue;
        }
        if (rq[i].delivered >= WK_NOTIFY_MAX_DELIVER) {
            /* the broker would not deliver it again: say so, count it, and take it out */
            ntf_reply(p, rq[i].msg, "+TERM");
            atomic_fetch_add(w->m_given_up, 1);
            LOG_WARN("notify", "event=given_up conv=%s seq=%" PRIu64 " deliveries=%" PRIu64 " reason=%s", ev->conv,
                     ev->seq, rq[i].delivered, names[worst]);
            continue;
        }
        int64_t delay = worst == D_FAILED ? wk_notify_backoff_ms(rq[i].delivered) : wait_ms;
        ntf_nak_after(p, rq[i].msg, delay);
        LOG_DEBUG("notify", "event=retry_later conv=%s seq=%" PRIu64 " deliveries=%" PRIu64 " reason=%s delay_ms=%lld",
                  ev->conv, ev->seq, rq[i].delivered, names[worst], (long long)delay);
    }
}

/* Requests whose grace has passed: claim, push per user, settle, ack or hand back. */
static void process_due(ntf_puller *p, ntf_req *rq, int n)
{
    wk_notify *w = p->n;
    char token[96];
    snprintf(token, sizeof token, "%s-%d-%" PRIu64, w->worker_id, p->index, ++p->batches);
    int64_t last_keep = chat_mono_ms();
    PGresult *res = ntf_claim(p, rq, n, token, &last_keep);
    if (res == NULL)
        return;
    int npairs = PQntuples(res);
    ntf_pair *pairs = chat_xcalloc((size_t)(npairs ? npairs : 1), sizeof *pairs);
    ntf_read_pairs(res, pairs);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < npairs; k++)
            if (ntf_depends(rq[i].ev, &pairs[k]) && rq[i].delivered > pairs[k].max_delivered)
                pairs[k].max_delivered = rq[i].delivered;
    ntf_push_all(p, pairs, npairs, rq, n, &last_keep);
    ntf_settle(p, pairs, npairs, token);
    decide(p, rq, n, pairs, npairs);
    free(pairs);
    PQclear(res);
}

/* Sorts a fetched batch: what needs no push is acked, a malformed event is terminated, without a
 * webhook everything is acked, messages still inside their grace are nak'ed with the time left;
 * the rest is processed. */
static void handle_batch(ntf_puller *p, natsMsg **msgs, int n)
{
    wk_notify *w = p->n;
    const chat_cfg *cfg = w->app->cfg;
    ntf_req due[WK_NOTIFY_BATCH];
    int ndue = 0;
    int64_t now = chat_now_ms();
    for (int i = 0; i < n; i++) {
        natsMsg *m = msgs[i];
        chat_js_ack ack = {.delivered = 1};
        chat_js_ack_parse(natsMsg_GetReply(m), &ack);
        uint64_t dc = ack.delivered;
        const char *type = NULL;
        if (natsMsgHeader_Get(m, "Chat-Type", &type) != NATS_OK)
            type = NULL;
        Chat__V1__Event *ev = NULL;
        wk_notify_kind kind = wk_notify_classify(type, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &ev);
        if (kind == WK_NOTIFY_SKIP) {
            ntf_reply(p, m, "+ACK");
            atomic_fetch_add(w->m_skipped, 1);
        } else if (kind == WK_NOTIFY_INVALID) {
            LOG_WARN("notify", "event=dropped subject=%s reason=\"not a valid Event\"", natsMsg_GetSubject(m));
            ntf_reply(p, m, "+TERM");
            atomic_fetch_add(w->m_invalid, 1);
        } else if (cfg->push_webhook_url[0] == '\0') {
            ntf_reply(p, m, "+ACK");
            atomic_fetch_add(w->m_no_webhook, 1);
        } else {
            int64_t left = ev->ts_ms + cfg->push_grace_ms - now;
            if (left > DUE_SLACK_MS) {
                ntf_nak_after(p, m, left > cfg->push_grace_ms ? cfg->push_grace_ms : left);
            } else {
                due[ndue++] = (ntf_req){.msg = m, .ev = ev, .delivered = dc};
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

/* One message of the puller's inbox: an event (true) or the end of a pull request, which adjusts
 * the credit (chat_js_pull_took) and is destroyed (false). Pull requests are kept open as the
 * ingest does (chat_js_keep_pulling): asking per event (what is there now, then a wait for one)
 * cost two requests and a "no messages" answer for every event (bench/findings.md item 18). */
static bool take(ntf_puller *p, natsMsg *m)
{
    if (chat_js_pull_took(&p->pull, m, PULL_RETRY_MS) == 0)
        return true;
    natsMsg_Destroy(m);
    return false;
}

/* Up to WK_NOTIFY_BATCH events: waits up to IDLE_WAIT_MS for the first, then takes what has
 * arrived behind it. */
static int fetch(ntf_puller *p, natsMsg **msgs)
{
    chat_js_keep_pulling(&p->pull, p->n->app->nc, p->n->next_subject, p->inbox, WK_NOTIFY_BATCH, PULL_EXPIRES_MS,
                         PULL_RETRY_MS);
    int n = 0;
    natsMsg *m = NULL;
    if (natsSubscription_NextMsg(&m, p->sub, IDLE_WAIT_MS) != NATS_OK)
        return 0;
    if (take(p, m))
        msgs[n++] = m;
    while (n < WK_NOTIFY_BATCH) {
        int queued = 0;
        if (natsSubscription_GetPending(p->sub, &queued, NULL) != NATS_OK || queued == 0)
            break;
        m = NULL;
        if (natsSubscription_NextMsg(&m, p->sub, 100) != NATS_OK)
            break;
        if (take(p, m))
            msgs[n++] = m;
    }
    return n;
}

void *ntf_puller_thread(void *arg)
{
    ntf_puller *p = arg;
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
