/* Role `ingest`: persist, then fan out. Each ordering partition has exactly one owner at a time:
 * a PostgreSQL advisory lock held by the owner's own connection, through which every write of
 * that partition goes (fencing: a lost session cannot write). A coordinator thread spreads the
 * partitions over the live ingest workers (ceil(partitions / workers) each) and takes over the
 * partitions of a dead one within a few seconds. Each owned partition has a thread that pulls
 * batches from its own JetStream consumer (ingest-<p>-<epoch>), stores them in one transaction
 * (dedupe by (conv, cmid), next seq per conversation, insert), publishes each event to its
 * members' delivery subjects and to CHAT_EVENTS, then acks the batch. docs/architecture.md. */
#ifndef WK_INGEST_H
#define WK_INGEST_H
#include "chat_status.h"
#include "wk_app.h"

typedef struct wk_ingest wk_ingest;

/* Ensures the streams and starts the coordinator. app must outlive the role. */
chat_status wk_ingest_start(wk_app *app, wk_ingest **out);
/* Finishes the batches in flight, releases every partition at once, frees. Call after
 * app->stopping is set. NULL-safe. */
void wk_ingest_destroy(wk_ingest *in);

#endif
