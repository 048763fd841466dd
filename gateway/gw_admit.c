/* Admission control (gw_admit.h). lws thread only. */
#include "gw_admit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "chat_id.h"
#include "chat_log.h"
#include "chat_map.h"
#include "chat_status.h"

/* A send in flight: in the map by "session/conv/cmid" and in a list, oldest first. */
typedef struct inflight {
    char key[2 * CHAT_ID_MAX + 48];
    char user[CHAT_ID_MAX + 1];
    int64_t since_ms;
    struct inflight *prev, *next;
} inflight;

struct gw_admit {
    size_t max;                   /* CHAT_WS_INFLIGHT_MAX; 0: off */
    chat_map *inflight;           /* "session/conv/cmid" -> inflight (sends published, not answered) */
    chat_map *inflight_users;     /* user -> how many of them are the user's (the value is the count) */
    inflight *first, *last;       /* oldest first */
    uint64_t shed;                /* sends refused since shedding started (0: not shedding) */
    int64_t shed_at_ms;           /* the last refusal */
    atomic_int_fast64_t *m_inflight;
    atomic_uint_fast64_t *m_shed;
};

gw_admit *gw_admit_create(size_t max, atomic_int_fast64_t *m_inflight, atomic_uint_fast64_t *m_shed)
{
    gw_admit *a = calloc(1, sizeof *a);
    if (a == NULL)
        CHAT_OOM();
    a->max = max;
    a->inflight = chat_map_create();
    a->inflight_users = chat_map_create();
    a->m_inflight = m_inflight;
    a->m_shed = m_shed;
    return a;
}

void gw_admit_destroy(gw_admit *a)
{
    if (a == NULL)
        return;
    for (inflight *f = a->first, *next; f; f = next) {
        next = f->next;
        free(f);
    }
    chat_map_destroy(a->inflight);
    chat_map_destroy(a->inflight_users);
    free(a);
}

static void inflight_forget(gw_admit *a, inflight *f)
{
    chat_map_remove(a->inflight, f->key);
    intptr_t n = (intptr_t)chat_map_get(a->inflight_users, f->user);
    if (n > 1)
        chat_map_put(a->inflight_users, f->user, (void *)(n - 1), NULL);
    else
        chat_map_remove(a->inflight_users, f->user);
    if (f->prev)
        f->prev->next = f->next;
    else
        a->first = f->next;
    if (f->next)
        f->next->prev = f->prev;
    else
        a->last = f->prev;
    free(f);
    atomic_store(a->m_inflight, (int_fast64_t)chat_map_size(a->inflight));
}

/* Sends whose answer never came here (the client left, a lost delivery) count for the TTL only. */
static void inflight_expire(gw_admit *a, int64_t now_ms)
{
    while (a->first && now_ms - a->first->since_ms >= GW_INFLIGHT_TTL_MS)
        inflight_forget(a, a->first);
}

static void inflight_key(char *key, size_t size, const char *session, const char *conv, const char *cmid)
{
    snprintf(key, size, "%s/%s/%s", session, conv, cmid);
}

bool gw_admit_take(gw_admit *a, const char *user, int64_t now, int *retry_after_ms)
{
    size_t max = a->max;
    if (max == 0)
        return true;
    inflight_expire(a, now);
    size_t n = chat_map_size(a->inflight);
    if (n < max)
        return true;
    size_t reserve = max / 4 ? max / 4 : 1;
    if (n < max + reserve && chat_map_get(a->inflight_users, user) == NULL)
        return true; /* the user has nothing in flight: the busy senders are the ones held back */
    /* the oldest send in flight has waited this long: about what a send taken now would wait */
    int64_t age = a->first ? now - a->first->since_ms : 0;
    *retry_after_ms = (int)(age < 250 ? 250 : age > GW_INFLIGHT_TTL_MS ? GW_INFLIGHT_TTL_MS : age);
    a->shed_at_ms = now;
    if (a->shed++ == 0)
        LOG_WARN("gateway", "event=shedding_started in_flight=%zu max=%zu oldest_ms=%lld", n, max, (long long)age);
    atomic_fetch_add(a->m_shed, 1);
    return false;
}

void gw_admit_add(gw_admit *a, const char *session, const char *user, const char *conv, const char *cmid,
                  int64_t now_ms)
{
    if (a->max == 0)
        return;
    inflight *f = calloc(1, sizeof *f);
    if (f == NULL)
        CHAT_OOM();
    inflight_key(f->key, sizeof f->key, session, conv, cmid);
    if (chat_map_get(a->inflight, f->key)) { /* the same send again while the first is in flight */
        free(f);
        return;
    }
    snprintf(f->user, sizeof f->user, "%s", user);
    f->since_ms = now_ms;
    chat_map_put(a->inflight, f->key, f, NULL);
    intptr_t n = (intptr_t)chat_map_get(a->inflight_users, user);
    chat_map_put(a->inflight_users, user, (void *)(n + 1), NULL);
    f->prev = a->last;
    if (a->last)
        a->last->next = f;
    else
        a->first = f;
    a->last = f;
    atomic_store(a->m_inflight, (int_fast64_t)chat_map_size(a->inflight));
}

void gw_admit_done(gw_admit *a, const char *session, const char *conv, const char *cmid)
{
    if (a->first == NULL || session == NULL || conv == NULL || cmid == NULL)
        return;
    char key[sizeof a->first->key];
    inflight_key(key, sizeof key, session, conv, cmid);
    inflight *f = chat_map_get(a->inflight, key);
    if (f)
        inflight_forget(a, f);
}

size_t gw_admit_inflight(const gw_admit *a)
{
    return chat_map_size(a->inflight);
}

void gw_admit_tick(gw_admit *a, int64_t now)
{
    inflight_expire(a, now);
    /* one pair of lines per episode: it ends after a second without a refusal */
    if (a->shed && now - a->shed_at_ms >= 1000) {
        LOG_INFO("gateway", "event=shedding_stopped in_flight=%zu refused=%" PRIu64, chat_map_size(a->inflight),
                 a->shed);
        a->shed = 0;
    }
}
