/* A set of revocations (chat_revoke.h): a chat_map of key -> entry. One owner thread, or the
 * caller's lock. Only valid u. and j. keys are kept, so every key fits CHAT_REVOKE_KEY_MAX. */
#include "chat_revoke.h"

#include <stdio.h>
#include <stdlib.h>

#include "chat_map.h"
#include "chat_mem.h"

/* One key of the bucket as the set holds it. */
typedef struct revoke_entry {
    chat_revoke_kind kind;
    int64_t value;  /* not before (u.), the token's exp (j.) */
    uint32_t watch; /* the watch that last delivered it (a new watch drops what it did not) */
} revoke_entry;

struct chat_revoke_set {
    chat_map *entries; /* key -> revoke_entry */
    bool loaded;       /* some watch has delivered the whole bucket */
};

chat_revoke_set *chat_revoke_set_create(void)
{
    chat_revoke_set *s = chat_xcalloc(1, sizeof *s);
    s->entries = chat_map_create();
    return s;
}

static void free_entry(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

void chat_revoke_set_destroy(chat_revoke_set *s)
{
    if (s == NULL)
        return;
    chat_map_each(s->entries, free_entry, NULL);
    chat_map_destroy(s->entries);
    free(s);
}

chat_revoke_kind chat_revoke_set_put(chat_revoke_set *s, const char *key, int64_t value, uint32_t watch, char *user)
{
    chat_revoke_kind kind = chat_revoke_key_parse(key, user);
    if (kind == 0)
        return 0;
    revoke_entry *r = chat_map_get(s->entries, key);
    if (r == NULL) {
        r = chat_xmalloc(sizeof *r);
        chat_map_put(s->entries, key, r, NULL);
    }
    *r = (revoke_entry){.kind = kind, .value = value, .watch = watch};
    return kind;
}

void chat_revoke_set_delete(chat_revoke_set *s, const char *key)
{
    free(chat_map_remove(s->entries, key));
}

bool chat_revoke_set_refuses(const chat_revoke_set *s, const chat_jwt_claims *claims)
{
    char key[CHAT_REVOKE_KEY_MAX];
    const revoke_entry *r;
    if (chat_revoke_key_user(key, claims->user) && (r = chat_map_get(s->entries, key)) != NULL &&
        chat_revoke_user_refuses(r->value, claims->iat))
        return true;
    if (claims->jti[0] == '\0')
        return false;
    chat_revoke_key_token(key, claims->jti);
    return chat_map_get(s->entries, key) != NULL;
}

/* Keys chosen by a rule, gathered first: the map must not change while it is walked. */
typedef struct key_list {
    char (*keys)[CHAT_REVOKE_KEY_MAX];
    size_t n, cap;
    bool (*drop)(const revoke_entry *r, const void *arg);
    const void *arg;
} key_list;

static void gather(const char *key, void *value, void *ctx)
{
    key_list *l = ctx;
    if (!l->drop(value, l->arg))
        return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->keys = chat_xrealloc(l->keys, l->cap * sizeof *l->keys);
    }
    snprintf(l->keys[l->n++], CHAT_REVOKE_KEY_MAX, "%s", key);
}

static size_t drop_where(chat_revoke_set *s, bool (*drop)(const revoke_entry *, const void *), const void *arg)
{
    key_list l = {.drop = drop, .arg = arg};
    chat_map_each(s->entries, gather, &l);
    for (size_t i = 0; i < l.n; i++)
        free(chat_map_remove(s->entries, l.keys[i]));
    free(l.keys);
    return l.n;
}

static bool from_older_watch(const revoke_entry *r, const void *arg)
{
    return r->watch != *(const uint32_t *)arg;
}

size_t chat_revoke_set_loaded(chat_revoke_set *s, uint32_t watch)
{
    /* what an older watch left and this one did not deliver was deleted meanwhile */
    size_t gone = drop_where(s, from_older_watch, &watch);
    s->loaded = true;
    return gone;
}

bool chat_revoke_set_is_loaded(const chat_revoke_set *s)
{
    return s->loaded;
}

typedef struct trim_arg {
    int64_t now_s, max_ttl_s;
} trim_arg;

static bool expired(const revoke_entry *r, const void *arg)
{
    const trim_arg *t = arg;
    return chat_revoke_entry_until(r->kind, r->value, t->max_ttl_s) < t->now_s;
}

size_t chat_revoke_set_trim(chat_revoke_set *s, int64_t now_s, int64_t max_ttl_s)
{
    trim_arg t = {now_s, max_ttl_s};
    return drop_where(s, expired, &t);
}

size_t chat_revoke_set_size(const chat_revoke_set *s)
{
    return chat_map_size(s->entries);
}
