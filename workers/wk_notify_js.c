/* The notify role's replies to JetStream (ack, nak with a delay, in-progress) and its redelivery
 * backoff: below the pull loop, the claims and the pushes, which all answer the broker. Threads:
 * the pullers, each answering for its own batch. */
#include <stdio.h>

#include "chat_time.h"
#include "wk_notifyp.h"

#define KEEPALIVE_MS 10000 /* +WPI for the batch while it takes long (AckWait is 30 s) */

int64_t wk_notify_backoff_ms(uint64_t delivered)
{
    int shift = delivered <= 2 ? 0 : delivered - 2 > 16 ? 16 : (int)(delivered - 2);
    int64_t ms = 1000LL << shift;
    return ms > WK_NOTIFY_BACKOFF_MAX_MS ? WK_NOTIFY_BACKOFF_MAX_MS : ms;
}

/* ------------------------------------------------------------------------------------------ */
/* Replies to JetStream                                                                         */
/* ------------------------------------------------------------------------------------------ */

void ntf_reply(ntf_puller *p, natsMsg *m, const char *what)
{
    const char *r = natsMsg_GetReply(m);
    if (r)
        natsConnection_PublishString(p->n->app->nc, r, what);
}

/* -NAK with a delay: the broker redelivers the message after delay_ms (to any notify worker). */
void ntf_nak_after(ntf_puller *p, natsMsg *m, int64_t delay_ms)
{
    char text[64];
    snprintf(text, sizeof text, "-NAK {\"delay\":%lld}", (long long)(delay_ms < 1 ? 1 : delay_ms) * 1000000LL);
    ntf_reply(p, m, text);
}

void ntf_keepalive(ntf_puller *p, ntf_req *rq, int n, int64_t *last_ms)
{
    int64_t now = chat_mono_ms();
    if (now - *last_ms < KEEPALIVE_MS)
        return;
    for (int i = 0; i < n; i++)
        ntf_reply(p, rq[i].msg, "+WPI");
    *last_ms = now;
}
