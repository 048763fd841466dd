/* Role `archive`: a thread that keeps partitions created ahead of the clock. */
#include "wk_archive.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "chat_log.h"
#include "chat_time.h"
#include "wk_pg.h"

struct wk_archive {
    wk_app *app;
    pthread_t thread;
};

int wk_archive_ensure_partitions(void *pgconn, int64_t span_ms)
{
    PGconn *pg = pgconn;
    char span[48], ahead[48];
    snprintf(span, sizeof span, "%lld milliseconds", (long long)span_ms);
    int64_t ahead_ms = span_ms * 3 < 3600000 ? 3600000 : span_ms * 3; /* 1m spans: 60, not 1440 */
    snprintf(ahead, sizeof ahead, "%lld milliseconds", (long long)ahead_ms);
    const char *params[] = {span, ahead};
    PGresult *r = PQexecParams(pg,
                               "SELECT chat_ensure_partitions(now() - $1::interval, now() + $2::interval, $1::interval)",
                               2, NULL, params, NULL, NULL, 0);
    int n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        n = atoi(PQgetvalue(r, 0, 0));
    else
        LOG_WARN("archive", "event=ensure_partitions_failed detail=\"%s\"", PQresultErrorMessage(r));
    PQclear(r);
    return n;
}

static void *archive_thread(void *arg)
{
    wk_archive *a = arg;
    PGconn *pg = NULL;
    int64_t next = 0;
    while (!atomic_load(&a->app->stopping)) {
        int64_t now = chat_mono_ns() / 1000000;
        if (now >= next) {
            if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
                PQfinish(pg);
                pg = NULL;
                if (wk_pg_connect(a->app->cfg->pg_dsn, "archive", &pg) != CHAT_OK)
                    pg = NULL;
            }
            if (pg) {
                int n = wk_archive_ensure_partitions(pg, a->app->cfg->partition_span_ms);
                if (n > 0)
                    LOG_INFO("archive", "event=partitions_created count=%d", n);
            }
            next = now + (pg ? 60000 : 2000);
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
    if (pthread_create(&a->thread, NULL, archive_thread, a) != 0) {
        free(a);
        return CHAT_ERR_INTERNAL;
    }
    *out = a;
    return CHAT_OK;
}

void wk_archive_destroy(wk_archive *a)
{
    if (a == NULL)
        return;
    pthread_join(a->thread, NULL);
    free(a);
}
