/* The queue of CHAT_EVENTS checkpoints waiting for the broker's sync (wk_events_trust.h). */
#include "wk_events_trust.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_mem.h"

void wk_trust_init(wk_trust *t, int nparts)
{
    memset(t, 0, sizeof *t);
    t->nparts = nparts;
    for (int i = 0; i < WK_TRUST_MAX; i++)
        t->q[i].upto_us = chat_xcalloc((size_t)nparts, sizeof *t->q[i].upto_us);
}

void wk_trust_free(wk_trust *t)
{
    for (int i = 0; i < WK_TRUST_MAX; i++) {
        free(t->q[i].upto_us);
        t->q[i].upto_us = NULL;
    }
    t->n = 0;
}

void wk_trust_clear(wk_trust *t)
{
    t->head = 0;
    t->n = 0;
}

void wk_trust_push(wk_trust *t, int64_t trusted_ms, uint64_t seq, const char *tag, bool by_id,
                   const int64_t *upto_us)
{
    wk_trust_point *pt;
    bool merged = t->n == WK_TRUST_MAX;
    if (merged) {
        /* the newest absorbs it: every cursor as far as either moves it, trusted as late as this */
        pt = &t->q[(t->head + t->n - 1) % WK_TRUST_MAX];
        for (int p = 0; p < t->nparts; p++)
            if (upto_us[p] > pt->upto_us[p])
                pt->upto_us[p] = upto_us[p];
    } else {
        pt = &t->q[(t->head + t->n) % WK_TRUST_MAX];
        memcpy(pt->upto_us, upto_us, (size_t)t->nparts * sizeof *upto_us);
        t->n++;
    }
    pt->trusted_ms = trusted_ms;
    if (!merged || seq >= pt->seq) { /* the highest acknowledged only grows (wk_trust_clear aside) */
        pt->seq = seq;
        pt->by_id = by_id;
        snprintf(pt->tag, sizeof pt->tag, "%s", tag ? tag : "");
    }
}

int wk_trust_due(const wk_trust *t, int64_t now_ms)
{
    int n = 0;
    while (n < t->n && t->q[(t->head + n) % WK_TRUST_MAX].trusted_ms <= now_ms)
        n++;
    return n;
}

const wk_trust_point *wk_trust_at(const wk_trust *t, int i)
{
    return &t->q[(t->head + i) % WK_TRUST_MAX];
}

void wk_trust_pop(wk_trust *t, int n, int64_t *upto_us)
{
    for (; n > 0 && t->n > 0; n--) {
        const wk_trust_point *pt = &t->q[t->head];
        for (int p = 0; upto_us && p < t->nparts; p++)
            if (pt->upto_us[p] > upto_us[p])
                upto_us[p] = pt->upto_us[p];
        t->head = (t->head + 1) % WK_TRUST_MAX;
        t->n--;
    }
}

int wk_trust_check_run(const wk_trust *t, int n, wk_trust_verdict (*check)(const wk_trust_point *, void *),
                       void *arg, wk_trust_verdict *stop)
{
    int kept = 0;
    *stop = WK_TRUST_KEPT;
    for (; kept < n && kept < t->n; kept++)
        if ((*stop = check(wk_trust_at(t, kept), arg)) != WK_TRUST_KEPT)
            break;
    return kept;
}
