/* Role `archive`: its thread, a pass a minute (wk_archive_pass.c), started and stopped by the
 * worker's main thread. The top of the archive's files (wk_archivep.h): it calls the pass, nothing
 * calls it but the worker. */
#include "wk_archive.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_time.h"
#include "wk_archivep.h"
#include "wk_pg.h"

/* ------------------------------------------------------------------------------------------ */
/* The role's thread                                                                            */
/* ------------------------------------------------------------------------------------------ */

struct wk_archive {
    wk_app *app;
    wk_objstore *os;
    pthread_t thread;
    atomic_uint_fast64_t *m_passes, *m_failures, *m_rows, *m_partitions;
};

static void *archive_thread(void *arg)
{
    wk_archive *a = arg;
    const chat_cfg *cfg = a->app->cfg;
    PGconn *pg = NULL;
    int64_t next = 0;
    while (!atomic_load(&a->app->stopping)) {
        int64_t now = chat_mono_ms();
        if (now >= next) {
            if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
                PQfinish(pg);
                pg = NULL;
                if (wk_pg_connect(cfg->pg_dsn, "archive", &pg) != CHAT_OK)
                    pg = NULL;
            }
            bool failed = pg == NULL;
            if (pg) {
                wk_archive_options opt = {.stopping = &a->app->stopping};
                wk_archive_report rep;
                chat_status st = wk_archive_pass(cfg, pg, a->os, &opt, &rep);
                atomic_fetch_add(a->m_passes, 1);
                atomic_fetch_add(a->m_rows, (uint64_t)rep.rows);
                atomic_fetch_add(a->m_partitions, (uint64_t)rep.archived);
                failed = st != CHAT_OK && st != CHAT_ERR_CONFLICT;
                if (failed)
                    atomic_fetch_add(a->m_failures, 1);
                if (failed || rep.archived || rep.partitions_created || rep.partitions_reshaped || rep.abandoned)
                    CHAT_LOG(failed ? CHAT_LOG_WARN : CHAT_LOG_INFO, "archive",
                             "event=pass status=%s created=%d reshaped=%d archived=%d resumed=%d undone=%d failed=%d"
                             " rows=%lld bytes=%lld ms=%lld error=\"%s\"",
                             chat_status_str(st), rep.partitions_created, rep.partitions_reshaped, rep.archived,
                             rep.resumed, rep.abandoned, rep.failed, (long long)rep.rows, (long long)rep.bytes,
                             (long long)rep.archive_ms, rep.error);
            }
            next = now + (failed ? (pg ? WK_ARCHIVE_RETRY_MS : 2000) : WK_ARCHIVE_INTERVAL_MS);
        }
        chat_sleep_ms(200);
    }
    PQfinish(pg);
    return NULL;
}

chat_status wk_archive_start(wk_app *app, wk_archive **out)
{
    wk_archive *a = calloc(1, sizeof *a);
    if (a == NULL)
        return CHAT_ERR_NOMEM;
    a->app = app;
    chat_status st = wk_objstore_create(app->cfg, &a->os);
    if (st != CHAT_OK) {
        free(a);
        return st;
    }
    chat_metrics *m = app->metrics;
    a->m_passes = chat_metrics_counter(m, "chat_archive_passes_total", NULL, "Archive passes run by this worker.");
    a->m_failures = chat_metrics_counter(m, "chat_archive_pass_failures_total", NULL,
                                         "Archive passes that left a partition at an error (retried later).");
    a->m_rows = chat_metrics_counter(m, "chat_archive_rows_total", NULL, "Events moved to cold storage.");
    a->m_partitions =
        chat_metrics_counter(m, "chat_archive_partitions_total", NULL, "Partitions moved to cold storage.");
    if (pthread_create(&a->thread, NULL, archive_thread, a) != 0) {
        wk_objstore_destroy(a->os);
        free(a);
        return CHAT_ERR_INTERNAL;
    }
    LOG_INFO("archive", "event=role_started archive_url=%s span_ms=%lld retention_ms=%lld", app->cfg->archive_url,
             (long long)app->cfg->partition_span_ms, (long long)app->cfg->hot_retention_ms);
    *out = a;
    return CHAT_OK;
}

void wk_archive_destroy(wk_archive *a)
{
    if (a == NULL)
        return;
    pthread_join(a->thread, NULL);
    wk_objstore_destroy(a->os);
    free(a);
}
