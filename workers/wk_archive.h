/* Role `archive`: partition upkeep. Creates the `messages` partitions of CHAT_PARTITION_SPAN
 * ahead of time (now to now + 3 spans, at least an hour) every minute; cold storage comes later. */
#ifndef WK_ARCHIVE_H
#define WK_ARCHIVE_H
#include "chat_status.h"
#include "wk_app.h"

typedef struct wk_archive wk_archive;

chat_status wk_archive_start(wk_app *app, wk_archive **out);
/* Creates missing partitions around now on the given connection; returns how many (-1: error). */
int wk_archive_ensure_partitions(void *pgconn, int64_t span_ms);
void wk_archive_destroy(wk_archive *a);

#endif
