/* The per-gateway delivery batches of one fanout (chat.v1.DeliveryBatch on chat.deliver.g.<gateway>):
 * each event once per gateway, with the indexes of its recipients there. Pure (no NATS, no Redis);
 * one owner thread (the ingest's committer). docs/architecture.md, "The hot path", step 4. */
#ifndef WK_ROUTE_BATCH_H
#define WK_ROUTE_BATCH_H
#include <stddef.h>
#include <stdint.h>

#include "chat.pb-c.h"

/* Past this many bytes of events pending for one gateway, the caller flushes (a NATS message stays
 * well under the server's 1 MiB max_payload: an event is at most ~12 KiB). */
#define WK_ROUTE_BATCH_BYTES (256 * 1024)

typedef struct wk_route_batches wk_route_batches;

/* An empty set of batches; wk_route_batches_destroy frees it. Never NULL (out of memory ends the
 * process, chat_mem.h). */
wk_route_batches *wk_route_batches_create(void);
/* NULL-safe. */
void wk_route_batches_destroy(wk_route_batches *rb);

/* Adds user as a recipient of event e on gateway `gateway`. e and user are borrowed until the next
 * flush. Add every recipient of one event before the next event: a gateway's events keep the order
 * they were first added in, and e is told apart from the gateway's last event by its address. A
 * user added twice to one event on one gateway is listed once. */
void wk_route_batches_add(wk_route_batches *rb, const char *gateway, const Chat__V1__Event *e, const char *user);

/* The most bytes of events pending for one gateway (compare with WK_ROUTE_BATCH_BYTES). */
size_t wk_route_batches_bytes(const wk_route_batches *rb);

/* What wk_route_batches_flush hands out: one packed DeliveryBatch (data borrowed for the call). */
typedef void (*wk_route_batch_fn)(const char *gateway, const uint8_t *data, size_t len, int events, int recipients,
                                  void *ctx);

/* Calls fn for the batch of every gateway with something pending, in the order the gateways were
 * first added, then empties the set (its memory is kept for the next fanout). Returns how many
 * batches went out. */
int wk_route_batches_flush(wk_route_batches *rb, wk_route_batch_fn fn, void *ctx);

#endif
