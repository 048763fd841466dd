/* A hash map from string keys to pointers (open chaining, grows at load 1). The map copies keys;
 * values are the caller's. Not thread-safe: one owner thread (the gateway's lws thread). Keys are
 * often a client's choice (conversation and user ids), so the hash is keyed: SipHash-1-3 with a
 * random key per process, and no one can pick keys that all land in one chain. */
#ifndef CHAT_MAP_H
#define CHAT_MAP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct chat_map chat_map;

chat_map *chat_map_create(void);
/* Frees the map and its keys, not the values. NULL-safe. */
void chat_map_destroy(chat_map *m);
void *chat_map_get(const chat_map *m, const char *key);
/* Sets key to value (replacing any old value, which is returned through *old if old != NULL). */
void chat_map_put(chat_map *m, const char *key, void *value, void **old);
/* Removes key; returns its value or NULL. */
void *chat_map_remove(chat_map *m, const char *key);
size_t chat_map_size(const chat_map *m);
/* The longest chain of one bucket (tests: a flood of chosen keys stays spread). */
size_t chat_map_longest_chain(const chat_map *m);

/* The map's keyed hash of key: SipHash-1-3 under a key drawn from getrandom(2) once per process,
 * so equal within a process and unpredictable from outside. Any thread. */
uint64_t chat_map_hash(const char *key);

/* Calls fn for each entry; fn must not change the map. */
void chat_map_each(const chat_map *m, void (*fn)(const char *key, void *value, void *ctx), void *ctx);

#endif
