/* String-keyed hash map (FNV-1a, chaining). */
#include "chat_map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_partition.h"

typedef struct entry {
    struct entry *next;
    void *value;
    uint32_t hash;
    char key[]; /* one allocation per entry, key included */
} entry;

struct chat_map {
    entry **buckets;
    size_t nbuckets, size;
};

chat_map *chat_map_create(void)
{
    chat_map *m = calloc(1, sizeof *m);
    if (m == NULL)
        abort();
    m->nbuckets = 64;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (m->buckets == NULL)
        abort();
    return m;
}

void chat_map_destroy(chat_map *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry *e = m->buckets[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    free(m->buckets);
    free(m);
}

static entry **find(const chat_map *m, const char *key, uint32_t h)
{
    entry **pe = &m->buckets[h & (m->nbuckets - 1)];
    while (*pe && ((*pe)->hash != h || strcmp((*pe)->key, key) != 0))
        pe = &(*pe)->next;
    return pe;
}

void *chat_map_get(const chat_map *m, const char *key)
{
    entry *e = *find(m, key, chat_fnv1a32(key));
    return e ? e->value : NULL;
}

static void grow(chat_map *m)
{
    size_t n = m->nbuckets * 2;
    entry **b = calloc(n, sizeof *b);
    if (b == NULL)
        abort();
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry *e = m->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void chat_map_put(chat_map *m, const char *key, void *value, void **old)
{
    uint32_t h = chat_fnv1a32(key);
    entry **pe = find(m, key, h);
    if (*pe) {
        if (old)
            *old = (*pe)->value;
        (*pe)->value = value;
        return;
    }
    if (old)
        *old = NULL;
    size_t len = strlen(key);
    entry *e = malloc(sizeof *e + len + 1);
    if (e == NULL)
        abort();
    memcpy(e->key, key, len + 1);
    e->value = value;
    e->hash = h;
    e->next = NULL;
    *pe = e;
    if (++m->size > m->nbuckets)
        grow(m);
}

void *chat_map_remove(chat_map *m, const char *key)
{
    entry **pe = find(m, key, chat_fnv1a32(key));
    entry *e = *pe;
    if (e == NULL)
        return NULL;
    *pe = e->next;
    void *v = e->value;
    free(e);
    m->size--;
    return v;
}

size_t chat_map_size(const chat_map *m)
{
    return m->size;
}

void chat_map_each(const chat_map *m, void (*fn)(const char *key, void *value, void *ctx), void *ctx)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry *e = m->buckets[i]; e; e = e->next)
            fn(e->key, e->value, ctx);
}
