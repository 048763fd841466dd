/* The membership cache (gw_membership.h). lws thread only. */
#include "gw_membership.h"

#include <stdlib.h>
#include <string.h>

#include "chat_map.h"
#include "chat_status.h"

/* One conversation's cached answers. Entries live in the map and, oldest first, in a list (every
 * entry has the same TTL, so the order they came is the order they expire): the TTL trim and the
 * CHAT_WS_MEMBERSHIP_CACHE bound both take from its head. */
typedef struct conv_entry {
    chat_map *users; /* user -> (void *)(intptr_t)gw_member: GW_MEMBER or GW_NOT_MEMBER */
    int64_t expires_ms;
    char **list;     /* every member, once members.list answered (typing fanout); else NULL */
    size_t nlist;
    struct conv_entry *older, *newer;
    char conv[];     /* the key in the map */
} conv_entry;

struct gw_membership {
    chat_map *convs; /* conv -> conv_entry */
    conv_entry *oldest, *newest;
    size_t max_convs;
    int64_t ttl_ms;
};

gw_membership *gw_membership_create(size_t max_convs, int64_t ttl_ms)
{
    gw_membership *c = calloc(1, sizeof *c);
    if (c == NULL)
        CHAT_OOM();
    c->convs = chat_map_create();
    c->max_convs = max_convs;
    c->ttl_ms = ttl_ms;
    return c;
}

static void entry_free(conv_entry *m)
{
    for (size_t i = 0; i < m->nlist; i++)
        free(m->list[i]);
    free(m->list);
    chat_map_destroy(m->users);
    free(m);
}

void gw_membership_destroy(gw_membership *c)
{
    if (c == NULL)
        return;
    for (conv_entry *m = c->oldest, *next; m; m = next) {
        next = m->newer;
        entry_free(m);
    }
    chat_map_destroy(c->convs);
    free(c);
}

static void entry_unlink(gw_membership *c, conv_entry *m)
{
    if (m->older)
        m->older->newer = m->newer;
    else
        c->oldest = m->newer;
    if (m->newer)
        m->newer->older = m->older;
    else
        c->newest = m->older;
    m->older = m->newer = NULL;
}

void gw_membership_invalidate(gw_membership *c, const char *conv)
{
    conv_entry *m = chat_map_remove(c->convs, conv);
    if (m) {
        entry_unlink(c, m);
        entry_free(m);
    }
}

gw_member gw_membership_get(gw_membership *c, const char *conv, const char *user, int64_t now_ms)
{
    conv_entry *m = chat_map_get(c->convs, conv);
    if (m == NULL)
        return GW_MEMBER_UNKNOWN;
    if (m->expires_ms < now_ms) {
        gw_membership_invalidate(c, conv);
        return GW_MEMBER_UNKNOWN;
    }
    return (gw_member)(intptr_t)chat_map_get(m->users, user);
}

void gw_membership_put(gw_membership *c, const char *conv, const char *user, bool member, int64_t now_ms)
{
    conv_entry *m = chat_map_get(c->convs, conv);
    if (m == NULL) {
        /* full: the oldest entry goes (asked again when next needed) */
        while (c->oldest && chat_map_size(c->convs) >= c->max_convs)
            gw_membership_invalidate(c, c->oldest->conv);
        size_t len = strlen(conv);
        if ((m = calloc(1, sizeof *m + len + 1)) == NULL)
            CHAT_OOM();
        memcpy(m->conv, conv, len + 1);
        m->users = chat_map_create();
        m->expires_ms = now_ms + c->ttl_ms;
        chat_map_put(c->convs, conv, m, NULL);
        m->older = c->newest;
        if (m->older)
            m->older->newer = m;
        else
            c->oldest = m;
        c->newest = m;
    }
    chat_map_put(m->users, user, (void *)(intptr_t)(member ? GW_MEMBER : GW_NOT_MEMBER), NULL);
}

void gw_membership_put_list(gw_membership *c, const char *conv, char *const *users, size_t n, int64_t now_ms)
{
    gw_membership_invalidate(c, conv); /* replace whatever was cached */
    for (size_t i = 0; i < n; i++)
        gw_membership_put(c, conv, users[i], true, now_ms);
    conv_entry *m = chat_map_get(c->convs, conv);
    if (m == NULL)
        return; /* an empty list (the caller is a member: not reached) */
    m->list = calloc(n ? n : 1, sizeof *m->list);
    if (m->list == NULL)
        CHAT_OOM();
    for (size_t i = 0; i < n; i++)
        if ((m->list[i] = strdup(users[i])) == NULL)
            CHAT_OOM();
    m->nlist = n;
}

bool gw_membership_has_list(const gw_membership *c, const char *conv)
{
    const conv_entry *m = chat_map_get(c->convs, conv);
    return m && m->list;
}

void gw_membership_trim(gw_membership *c, int64_t now_ms)
{
    while (c->oldest && c->oldest->expires_ms < now_ms)
        gw_membership_invalidate(c, c->oldest->conv);
}

size_t gw_membership_size(const gw_membership *c)
{
    return chat_map_size(c->convs);
}
