/* Role `ingest`: persist, then fan out. Each ordering partition has one owner at a time: a
 * PostgreSQL advisory lock held by a lease connection, through which every write of that partition
 * goes (fencing). A coordinator thread spreads the partitions over the live ingest workers; each of
 * CHAT_INGEST_COMMITTERS committer threads pulls its partitions, stores what arrived in one
 * transaction, publishes it and acks it (docs/architecture.md, "Ingest: one owner per partition"). */
#ifndef WK_INGEST_H
#define WK_INGEST_H
#include "chat_status.h"
#include "wk_app.h"

typedef struct wk_ingest wk_ingest;

/* Starts the committers and the coordinator (which ensures the streams). app must outlive the
 * role; on CHAT_OK *out is the role, the caller's (wk_ingest_destroy). Main thread. */
chat_status wk_ingest_start(wk_app *app, wk_ingest **out);
/* Finishes the batches in flight, releases every partition at once, frees. Call after
 * app->stopping is set. NULL-safe. */
void wk_ingest_destroy(wk_ingest *in);

#endif
