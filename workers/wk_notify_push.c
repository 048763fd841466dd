/* The notify role's coalescing: what goes into one push (one per user, over every conversation
 * claimed for it: unread counts and the newest message) and its JSON body. Threads: the pullers;
 * wk_notify_payload any thread. */
#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_time.h"
#include "wk_notifyp.h"

#define BATCH_BUDGET_MS 20000 /* no new POST after this; the rest of the batch is handed back */

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

/* One POST per user over the claimed pairs (grouped: the rows come ordered by user). */
void ntf_push_all(ntf_puller *p, ntf_pair *pairs, int npairs, ntf_req *rq, int nreq, int64_t *last_keep)
{
    wk_notify *w = p->n;
    int64_t started = chat_mono_ms();
    wk_push_conv *convs = chat_xcalloc((size_t)(npairs ? npairs : 1), sizeof *convs);
    for (int i = 0; i < npairs;) {
        int j = i;
        while (j < npairs && strcmp(pairs[j].user, pairs[i].user) == 0)
            j++;
        size_t nc = 0;
        int64_t unread = 0;
        bool any = false;
        const wk_push_msg *newest = NULL;
        for (int k = i; k < j; k++) {
            ntf_pair *q = &pairs[k];
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
        } else if (atomic_load(&w->app->stopping) || chat_mono_ms() - started > BATCH_BUDGET_MS) {
            outcome = O_DEFERRED;
        } else if (nc == 0) {
            outcome = O_PUSHED; /* nothing unread from others (changes only): the watermark moves */
        } else {
            ntf_keepalive(p, rq, nreq, last_keep);
            char *body = wk_notify_payload(pairs[i].user, convs, nc, newest, w->app->cfg->push_preview);
            if (body == NULL) {
                LOG_ERROR("notify", "event=push_failed user=%s reason=payload", pairs[i].user);
                outcome = O_FAILED;
            } else {
                outcome = ntf_post(p, pairs[i].user, body, (int)nc, unread) ? O_PUSHED : O_FAILED;
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
