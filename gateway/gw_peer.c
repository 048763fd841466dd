/* Connections per client address (gw_peer.h). lws thread only. */
#include "gw_peer.h"

#include <stdlib.h>
#include <string.h>

#include "chat_map.h"
#include "chat_status.h"

struct gw_peer {
    int count;
    char addr[]; /* the key in the table */
};

struct gw_peers {
    chat_map *by_addr; /* client address -> gw_peer */
};

static void free_peer(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

gw_peers *gw_peer_create(void)
{
    gw_peers *t = calloc(1, sizeof *t);
    if (t == NULL || (t->by_addr = chat_map_create()) == NULL)
        CHAT_OOM();
    return t;
}

void gw_peer_destroy(gw_peers *t)
{
    if (t == NULL)
        return;
    chat_map_each(t->by_addr, free_peer, NULL);
    chat_map_destroy(t->by_addr);
    free(t);
}

int gw_peer_count(const gw_peers *t, const char *addr)
{
    const gw_peer *p = chat_map_get(t->by_addr, addr);
    return p ? p->count : 0;
}

gw_peer *gw_peer_join(gw_peers *t, const char *addr)
{
    gw_peer *p = chat_map_get(t->by_addr, addr);
    if (p == NULL) {
        size_t n = strlen(addr);
        if ((p = calloc(1, sizeof *p + n + 1)) == NULL)
            CHAT_OOM();
        memcpy(p->addr, addr, n + 1);
        chat_map_put(t->by_addr, addr, p, NULL);
    }
    p->count++;
    return p;
}

void gw_peer_leave(gw_peers *t, gw_peer *p)
{
    if (p && --p->count == 0) {
        chat_map_remove(t->by_addr, p->addr);
        free(p);
    }
}
