/* Role `archive`: partition upkeep and cold storage (docs/storage.md). Its thread runs a pass a
 * minute (15 s after a failed one); `chatctl archive run` runs the same pass in its own process,
 * one pass at a time (advisory lock). Each step of a partition is a committed state of its
 * archive_partitions row (migration 0006), so a pass killed anywhere is finished by the next. */
#ifndef WK_ARCHIVE_H
#define WK_ARCHIVE_H
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "chat_config.h"
#include "chat_status.h"
#include "wk_app.h"
#include "wk_objstore.h"

#define WK_ARCHIVE_INTERVAL_MS 60000             /* between passes of the role */
#define WK_ARCHIVE_RETRY_MS 15000                /* after a pass that failed */
#define WK_ARCHIVE_LOCK_CLASS 727002             /* pg_advisory_lock(727002, 0): one pass at a time */
#define WK_ARCHIVE_OBJECT_MAX (64 * 1024 * 1024) /* a partition's chunks go into a new object past this */
#define WK_ARCHIVE_FETCH_ROWS 2000               /* rows per FETCH while reading a partition */

/* Steps after which a pass can be made to stop (the crash tests): the state is committed, except
 * after "put", where the objects are uploaded and the state still says planned. */
#define WK_ARCHIVE_STEPS "planned, put, uploaded, verified, detached, dropped"

typedef struct wk_archive_options {
    /* Test hook (`chatctl archive run --pause-at STEP`): right after STEP of the first partition
     * that reaches it, print "archive: paused after STEP of PARTITION" to stderr and sleep until
     * killed. NULL: never. */
    const char *pause_at;
    /* Checked between partitions: a pass stops early once it is true. May be NULL. */
    const atomic_bool *stopping;
    /* Wait up to this long for another pass to finish (0: give up at once with CHAT_ERR_CONFLICT). */
    int64_t lock_wait_ms;
} wk_archive_options;

/* What one pass (or restore) did. */
typedef struct wk_archive_report {
    int partitions_created;  /* by chat_ensure_partitions */
    int partitions_reshaped; /* empty partitions of another span replaced */
    int archived;            /* partitions that reached `dropped` in this pass */
    int resumed;             /* partitions found part-way (an earlier pass was stopped) */
    int abandoned;           /* part-way archivings undone (objects deleted) to be planned again */
    int failed;              /* partitions that stopped at an error (they stay hot, or where they were) */
    int64_t rows;            /* events archived (or restored) */
    int64_t bytes, raw_bytes;
    int64_t archive_ms; /* wall time spent archiving, from planning to dropped */
    char error[512];    /* the first failure, one line ("" when none) */
} wk_archive_report;

/* One pass on pg (a connection of its own: the pass opens transactions and cursors on it) with
 * os for the objects. CHAT_OK when every step it tried succeeded; otherwise the failures are in
 * report->failed and report->error, recorded in archive_partitions.last_error, and the status is
 * the first one (CHAT_ERR_CONFLICT: another pass holds the lock). Any thread (one pass per pg). */
chat_status wk_archive_pass(const chat_cfg *cfg, PGconn *pg, wk_objstore *os, const wk_archive_options *opt,
                            wk_archive_report *report);

/* Puts the events of an archived partition (archive_partitions.partition_name, e.g.
 * messages_p1732752000) back into `messages` (creating the partition) and their message_dedupe
 * rows, takes its chunks out of service, then deletes its objects. Verifies every object and
 * chunk first. CHAT_ERR_NOT_FOUND when no archived partition has that name. A restore that was
 * stopped is finished by running it again (or by the next pass). */
chat_status wk_archive_restore(const chat_cfg *cfg, PGconn *pg, wk_objstore *os, const char *partition,
                               const wk_archive_options *opt, wk_archive_report *report);

/* Creates missing partitions around now on the given connection (now - span to now + max(3
 * spans, 1 hour)); returns how many (-1: error). Used by the ingest when a batch finds no
 * partition, so ingest never depends on the archive role having run. */
int wk_archive_ensure_partitions(void *pgconn, int64_t span_ms);

typedef struct wk_archive wk_archive;

/* Starts the role's thread (main thread, at start). app must outlive it. *out set on CHAT_OK. */
chat_status wk_archive_start(wk_app *app, wk_archive **out);
/* Waits for the thread (a pass in progress stops after its current partition step). NULL-safe. */
void wk_archive_destroy(wk_archive *a);

#endif
