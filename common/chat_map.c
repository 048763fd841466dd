/* String-keyed hash map (SipHash-1-3 keyed per process, chaining). Any thread may hash; a map
 * belongs to one thread. */
#include "chat_map.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "chat_status.h"

/* ---- SipHash-1-3 (Aumasson and Bernstein; the variant Rust and Python use for their tables) ---- */

static uint64_t sip_key[2];
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_key_init(void)
{
    if (getrandom(sip_key, sizeof sip_key, 0) == (ssize_t)sizeof sip_key)
        return;
    /* no entropy yet (early boot): still unknown to a client, if weaker */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sip_key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    sip_key[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&ts;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                                       \
    do {                                                                                                               \
        v0 += v1;                                                                                                      \
        v1 = ROTL(v1, 13);                                                                                             \
        v1 ^= v0;                                                                                                      \
        v0 = ROTL(v0, 32);                                                                                             \
        v2 += v3;                                                                                                      \
        v3 = ROTL(v3, 16);                                                                                             \
        v3 ^= v2;                                                                                                      \
        v0 += v3;                                                                                                      \
        v3 = ROTL(v3, 21);                                                                                             \
        v3 ^= v0;                                                                                                      \
        v2 += v1;                                                                                                      \
        v1 = ROTL(v1, 17);                                                                                             \
        v1 ^= v2;                                                                                                      \
        v2 = ROTL(v2, 32);                                                                                             \
    } while (0)

static uint64_t siphash13(const unsigned char *in, size_t len, const uint64_t k[2])
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ k[0], v3 = 0x7465646279746573ull ^ k[1];
    uint64_t b = (uint64_t)len << 56;
    const unsigned char *end = in + (len - len % 8);
    for (; in != end; in += 8) {
        uint64_t m;
        memcpy(&m, in, 8); /* little-endian hosts only (x86-64, arm64), as the rest of the project */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t chat_map_hash(const char *key)
{
    pthread_once(&sip_once, sip_key_init);
    return siphash13((const unsigned char *)key, strlen(key), sip_key);
}

static uint32_t map_hash(const char *key)
{
    return (uint32_t)chat_map_hash(key);
}

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
        CHAT_OOM();
    m->nbuckets = 64;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (m->buckets == NULL)
        CHAT_OOM();
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
    entry *e = *find(m, key, map_hash(key));
    return e ? e->value : NULL;
}

static void grow(chat_map *m)
{
    size_t n = m->nbuckets * 2;
    entry **b = calloc(n, sizeof *b);
    if (b == NULL)
        CHAT_OOM();
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
    uint32_t h = map_hash(key);
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
        CHAT_OOM();
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
    entry **pe = find(m, key, map_hash(key));
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

size_t chat_map_longest_chain(const chat_map *m)
{
    size_t longest = 0;
    for (size_t i = 0; i < m->nbuckets; i++) {
        size_t n = 0;
        for (entry *e = m->buckets[i]; e; e = e->next)
            n++;
        longest = n > longest ? n : longest;
    }
    return longest;
}

void chat_map_each(const chat_map *m, void (*fn)(const char *key, void *value, void *ctx), void *ctx)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry *e = m->buckets[i]; e; e = e->next)
            fn(e->key, e->value, ctx);
}
