/* The archive's private header: the state of one pass (or restore) and of the partition it is
 * working on, the pass's plumbing (wk_archive.c), partition upkeep (wk_archive_upkeep.c),
 * verification (wk_archive_verify.c) and restore (wk_archive_restore.c) as the pass
 * (wk_archive_pass.c) calls them. Threads: everything here that takes an arc_pass runs on the
 * thread of that pass, on its own PGconn. Not for other roles. */
#ifndef WK_ARCHIVEP_H
#define WK_ARCHIVEP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "chat_status.h"
#include "wk_archive.h"
#include "wk_cold.h"

typedef struct arc_pass {
    const chat_cfg *cfg;
    PGconn *pg;
    wk_objstore *os;
    const wk_archive_options *opt;
    wk_archive_report *rep;
    char err[512]; /* the current step's failure */
} arc_pass;

/* A partition being archived (or restored). */
typedef struct arc_part {
    int64_t id; /* archive_partitions.id; 0 before planning */
    char name[128];
    int64_t from_us, until_us;
    char state[16];
    int64_t rows;
} arc_part;

/* ------------------------------------------------------------------------------------------ */
/* The pass's plumbing (wk_archive.c)                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Sets ps->err (one line) from fmt; returns st. */
chat_status arc_stepfail(arc_pass *ps, chat_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Runs one statement; the result when it has status `expect` (caller PQclears), else NULL with
 * ps->err set to "<what>: <server message>". */
PGresult *arc_sql(arc_pass *ps, const char *what, const char *text, int n, const char *const *params,
                  ExecStatusType expect);
/* A statement that returns no rows; false with ps->err set. */
bool arc_exec_ok(arc_pass *ps, const char *what, const char *text, int n, const char *const *params);
/* BEGIN and COMMIT (wk_pg_begin, wk_pg_commit); false with ps->err set to "begin: ..." or
 * "commit: ...". */
bool arc_begin(arc_pass *ps);
bool arc_commit(arc_pass *ps);
/* Ends an open transaction (after a failure); a no-op otherwise. */
void arc_rollback(arc_pass *ps);
/* Counts p's failure in the report (the first one's text too) and keeps it in its row. */
void arc_record_failure(arc_pass *ps, arc_part *p, chat_status st);
/* The crash tests' hook: stop right after `step` and wait to be killed. */
void arc_pause_point(arc_pass *ps, const char *step, const arc_part *p);
/* True once the pass was asked to stop (checked between partitions). */
bool arc_stopping(const arc_pass *ps);
/* name quoted as an SQL identifier; caller frees with PQfreemem. NULL with ps->err set. */
char *arc_ident(arc_pass *ps, const char *name);
/* Records p's new state (and its time in stamp_column, one of our own column names). */
bool arc_set_state(arc_pass *ps, arc_part *p, const char *state, const char *stamp_column);
/* The one-pass lock (pg_advisory_lock(727002, 0)), waited for up to opt->lock_wait_ms. */
bool arc_take_lock(arc_pass *ps);
void arc_drop_lock(arc_pass *ps);
/* p from row i of (partition_name, from_us, until_us[, state, rows, id]). */
void arc_part_from_row(arc_part *p, PGresult *r, int i, bool with_state);

/* ------------------------------------------------------------------------------------------ */
/* Partition upkeep: creating, detaching, dropping (wk_archive_upkeep.c)                        */
/* ------------------------------------------------------------------------------------------ */

/* ms as an SQL interval's text. */
void arc_interval_text(char *out, size_t outsz, int64_t ms);
/* Partitions of span CHAT_PARTITION_SPAN around now, after replacing the empty ones of another
 * span; a failure is logged, never the pass's. */
void arc_upkeep(arc_pass *ps);
/* verified -> detached: the partition leaves `messages` as its chunks go live (one transaction).
 * CHAT_ERR_CONFLICT when an event arrived late (the archiving must be undone). */
chat_status arc_detach(arc_pass *ps, arc_part *p);
/* detached -> dropped: its message_dedupe rows pruned, the table dropped. */
chat_status arc_drop(arc_pass *ps, arc_part *p);

/* ------------------------------------------------------------------------------------------ */
/* Verification (wk_archive_verify.c)                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Called with every decoded chunk of an object being checked (restore). */
typedef chat_status (*arc_chunk_fn)(arc_pass *ps, const wk_cold_chunk *c, void *ctx);
/* Objects of the partition: id, url, bytes, sha256, rows (by part); NULL with ps->err set. */
PGresult *arc_objects_of(arc_pass *ps, const arc_part *p);
/* Deletes the partition's objects from storage (not their rows); stops at the first failure. */
chat_status arc_delete_objects(arc_pass *ps, arc_part *p);
/* Reads object row i of objs back and checks it whole, adding its events to *rows.
 * CHAT_ERR_INVALID: it is not what was written; other statuses: storage or database trouble. */
chat_status arc_check_object(arc_pass *ps, PGresult *objs, int i, int64_t *rows, arc_chunk_fn each_chunk, void *ctx);
/* uploaded -> verified: every object checked, their events counted against the plan. */
chat_status arc_verify(arc_pass *ps, arc_part *p);

/* ------------------------------------------------------------------------------------------ */
/* Restore (wk_archive_restore.c)                                                               */
/* ------------------------------------------------------------------------------------------ */

/* restoring -> restored: the objects deleted, then their rows. */
chat_status arc_finish_restore(arc_pass *ps, arc_part *p);

#endif
