/* Per-connection budgets: token buckets and counters, allocated on first use. lws thread only. */
#include "gw_budget.h"

#include <stdlib.h>

#include "chat_map.h"
#include "chat_status.h"

struct gw_budget {
    uint64_t typing_conv[GW_TYPING_CONVS]; /* keyed hash of a conversation typed in (0: free) */
    int64_t typing_at_ms[GW_TYPING_CONVS];
    double typing_tokens, presence_tokens, lookup_tokens, poll_tokens;
    int64_t typing_refill_ms, presence_refill_ms, lookup_refill_ms, poll_refill_ms;
    int presence_inflight, lookups_inflight, waiting, status_chains;
};

bool gw_bucket_take(double *tokens, int64_t *refill_ms, int rate, int64_t now_ms)
{
    if (*refill_ms == 0) {
        *tokens = 2.0 * rate;
        *refill_ms = now_ms;
    }
    *tokens += (double)(now_ms - *refill_ms) * rate / 1000.0;
    if (*tokens > 2.0 * rate)
        *tokens = 2.0 * rate;
    *refill_ms = now_ms;
    if (*tokens < 1.0)
        return false;
    *tokens -= 1.0;
    return true;
}

static gw_budget *budget_of(gw_budget **b)
{
    if (*b == NULL && (*b = calloc(1, sizeof **b)) == NULL)
        CHAT_OOM();
    return *b;
}

/* The slot of conv in the typing table: its own, else the one typed in longest ago. Entries
 * younger than GW_TYPING_CONV_MS are never more than a second of GW_TYPING_RATE (burst
 * included), fewer than GW_TYPING_CONVS, so the oldest is always free to reuse. */
static int typing_slot(const gw_budget *b, uint64_t h)
{
    int oldest = 0;
    for (int i = 0; i < GW_TYPING_CONVS; i++) {
        if (b->typing_conv[i] == h)
            return i;
        if (b->typing_at_ms[i] < b->typing_at_ms[oldest])
            oldest = i;
    }
    return oldest;
}

bool gw_budget_typing(gw_budget **bp, const char *conv, int64_t now_ms)
{
    gw_budget *b = budget_of(bp);
    uint64_t h = chat_map_hash(conv) | 1; /* never 0, the free mark */
    int i = typing_slot(b, h);
    if (b->typing_conv[i] == h && now_ms - b->typing_at_ms[i] < GW_TYPING_CONV_MS)
        return false;
    if (!gw_bucket_take(&b->typing_tokens, &b->typing_refill_ms, GW_TYPING_RATE, now_ms))
        return false;
    b->typing_conv[i] = h;
    b->typing_at_ms[i] = now_ms;
    return true;
}

bool gw_budget_presence(gw_budget **bp, int64_t now_ms)
{
    gw_budget *b = budget_of(bp);
    if (b->presence_inflight >= GW_PRESENCE_INFLIGHT ||
        !gw_bucket_take(&b->presence_tokens, &b->presence_refill_ms, GW_PRESENCE_RATE, now_ms))
        return false;
    b->presence_inflight++;
    return true;
}

void gw_budget_presence_done(gw_budget *b)
{
    if (b && b->presence_inflight > 0)
        b->presence_inflight--;
}

bool gw_budget_lookup(gw_budget **bp, int64_t now_ms)
{
    gw_budget *b = budget_of(bp);
    if (b->lookups_inflight >= GW_LOOKUPS_INFLIGHT ||
        !gw_bucket_take(&b->lookup_tokens, &b->lookup_refill_ms, GW_LOOKUP_RATE, now_ms))
        return false;
    b->lookups_inflight++;
    return true;
}

void gw_budget_lookup_done(gw_budget *b)
{
    if (b && b->lookups_inflight > 0)
        b->lookups_inflight--;
}

bool gw_budget_lookup_left(gw_budget **bp, int64_t now_ms)
{
    gw_budget *b = budget_of(bp);
    if (!gw_bucket_take(&b->lookup_tokens, &b->lookup_refill_ms, GW_LOOKUP_RATE, now_ms))
        return false;
    b->lookup_tokens += 1.0; /* only looked: the not_member answer pays */
    return true;
}

void gw_budget_lookup_charge(gw_budget *b, int64_t now_ms)
{
    if (b == NULL)
        return;
    /* posts published before their answers came may take it below zero: a debt of at most a
     * burst's worth, paid back by the refill before the next unknown conversation */
    if (!gw_bucket_take(&b->lookup_tokens, &b->lookup_refill_ms, GW_LOOKUP_RATE, now_ms))
        b->lookup_tokens -= 1.0;
    if (b->lookup_tokens < -2.0 * GW_LOOKUP_RATE)
        b->lookup_tokens = -2.0 * GW_LOOKUP_RATE;
}

bool gw_budget_waiting(gw_budget **bp)
{
    gw_budget *b = budget_of(bp);
    if (b->waiting >= GW_WAITING_MAX)
        return false;
    b->waiting++;
    return true;
}

void gw_budget_waiting_done(gw_budget *b)
{
    if (b && b->waiting > 0)
        b->waiting--;
}

bool gw_budget_status_start(gw_budget **bp)
{
    gw_budget *b = budget_of(bp);
    if (b->status_chains >= GW_STATUS_CHAINS)
        return false;
    b->status_chains++;
    return true;
}

void gw_budget_status_done(gw_budget *b)
{
    if (b && b->status_chains > 0)
        b->status_chains--;
}

bool gw_budget_status_poll(gw_budget **bp, int64_t now_ms)
{
    gw_budget *b = budget_of(bp);
    return gw_bucket_take(&b->poll_tokens, &b->poll_refill_ms, GW_STATUS_POLL_RATE, now_ms);
}

void gw_budget_free(gw_budget **b)
{
    free(*b);
    *b = NULL;
}
