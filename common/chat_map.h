/* A hash map from string keys to pointers (open chaining, grows at load 1). The map copies keys;
 * values are the caller's. Not thread-safe: one owner thread (the gateway's lws thread). */
#ifndef CHAT_MAP_H
#define CHAT_MAP_H
#include <stdbool.h>
#include <stddef.h>

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

/* Calls fn for each entry; fn must not change the map. */
void chat_map_each(const chat_map *m, void (*fn)(const char *key, void *value, void *ctx), void *ctx);

#endif
