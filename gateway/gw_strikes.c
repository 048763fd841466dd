/* Refused upgrades per client address: a token bucket per address in a capped map. */
#include "gw_strikes.h"

#include <stdlib.h>
#include <string.h>

#include "chat_map.h"
#include "chat_mem.h"

typedef struct bucket {
    double tokens;   /* refusals the address may still get before it is refused at once */
    int64_t at_ms;   /* when tokens was last brought up to date */
} bucket;

struct gw_strikes {
    chat_map *addrs; /* client address -> bucket */
    double per_ms, cap;
    size_t max_addrs;
};

gw_strikes *gw_strikes_create(int per_s, size_t max_addrs)
{
    gw_strikes *t = chat_xcalloc(1, sizeof *t);
    t->addrs = chat_map_create();
    t->per_ms = per_s / 1000.0;
    t->cap = (double)per_s * GW_STRIKES_BURST;
    t->max_addrs = max_addrs;
    return t;
}

static void free_bucket(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

void gw_strikes_destroy(gw_strikes *t)
{
    if (t == NULL)
        return;
    chat_map_each(t->addrs, free_bucket, NULL);
    chat_map_destroy(t->addrs);
    free(t);
}

/* b's tokens brought up to now. */
static void refill(const gw_strikes *t, bucket *b, int64_t now_ms)
{
    if (now_ms > b->at_ms) {
        b->tokens += (double)(now_ms - b->at_ms) * t->per_ms;
        if (b->tokens > t->cap)
            b->tokens = t->cap;
        b->at_ms = now_ms;
    }
}

bool gw_strikes_exhausted(gw_strikes *t, const char *addr, int64_t now_ms)
{
    if (t->cap <= 0)
        return false;
    bucket *b = chat_map_get(t->addrs, addr);
    if (b == NULL)
        return false;
    refill(t, b, now_ms);
    return b->tokens < 1.0;
}

void gw_strikes_add(gw_strikes *t, const char *addr, int64_t now_ms)
{
    if (t->cap <= 0)
        return;
    bucket *b = chat_map_get(t->addrs, addr);
    if (b == NULL) {
        if (chat_map_size(t->addrs) >= t->max_addrs && gw_strikes_sweep(t, now_ms) >= t->max_addrs)
            return; /* every followed address is still being refused: a new one is not limited */
        b = chat_xmalloc(sizeof *b);
        b->tokens = t->cap;
        b->at_ms = now_ms;
        chat_map_put(t->addrs, addr, b, NULL);
    }
    refill(t, b, now_ms);
    b->tokens = b->tokens >= 1.0 ? b->tokens - 1.0 : 0.0;
}

typedef struct sweep_ctx {
    gw_strikes *t;
    int64_t now_ms;
    char **full; /* addresses to forget */
    size_t n;
} sweep_ctx;

static void find_full(const char *key, void *value, void *ctx)
{
    sweep_ctx *s = ctx;
    bucket *b = value;
    refill(s->t, b, s->now_ms);
    if (b->tokens >= s->t->cap)
        s->full[s->n++] = (char *)key;
}

size_t gw_strikes_sweep(gw_strikes *t, int64_t now_ms)
{
    size_t n = chat_map_size(t->addrs);
    if (n == 0)
        return 0;
    sweep_ctx s = {.t = t, .now_ms = now_ms, .full = chat_xcalloc(n, sizeof(char *))};
    chat_map_each(t->addrs, find_full, &s);
    for (size_t i = 0; i < s.n; i++) {
        char key[128];
        strncpy(key, s.full[i], sizeof key - 1); /* the key's memory goes with its entry */
        key[sizeof key - 1] = '\0';
        free(chat_map_remove(t->addrs, key));
    }
    free(s.full);
    return chat_map_size(t->addrs);
}
