/* chat-worker: `chat-worker migrate` applies the schema, `chat-worker streams` creates or updates
 * the JetStream streams (the set-up steps, run with the set-up credentials); without a command it
 * runs the roles named by --roles (ingest, api, notify, archive) until SIGTERM. Main thread. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_config.h"
#include "chat_health.h"
#include "chat_http.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_redact.h"
#include "chat_signal.h"
#include "wk_api.h"
#include "wk_app.h"
#include "wk_archive.h"
#include "wk_ingest.h"
#include "wk_migrate.h"
#include "wk_notify.h"
#include "wk_streams.h"
#include "wk_claims.h"
#include "wk_typing.h"

static const char *usage = "chat-worker [migrate | streams] [--roles ingest,api,notify,archive] [settings...]";

static pthread_mutex_t stop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stop_cv = PTHREAD_COND_INITIALIZER;

static void on_stop(int signo, void *ctx)
{
    wk_app *app = ctx;
    LOG_INFO("worker", "event=stop_requested signal=%d", signo);
    pthread_mutex_lock(&stop_lock);
    atomic_store(&app->stopping, true);
    pthread_cond_broadcast(&stop_cv);
    pthread_mutex_unlock(&stop_lock);
}

static int run(const chat_cfg *cfg)
{
    wk_app app = {.cfg = cfg};
    if (chat_signal_start(on_stop, &app) != CHAT_OK) {
        fprintf(stderr, "chat-worker: cannot install signal handling\n");
        return 1;
    }
    app.metrics = chat_metrics_create();
    chat_metrics_add_process(app.metrics);
    chat_http_lws_logging();

    if (chat_nats_connect(cfg, "worker", false, &app.nc) != CHAT_OK) {
        char shown[1024];
        chat_redact_url(cfg->nats_url, shown, sizeof shown);
        fprintf(stderr, "chat-worker: cannot use CHAT_NATS_URL %s\n", shown);
        return 1;
    }
    unsigned deps = CHAT_DEP_NATS | CHAT_DEP_PG; /* the worker roles do not use Redis */
    chat_health *health = NULL;
    chat_httpd *httpd = NULL;
    if (chat_health_start(cfg, deps, app.nc, &health) != CHAT_OK)
        return 1;
    if (chat_httpd_start(&cfg->worker_listen, app.metrics, chat_health_ready, health, &httpd) != CHAT_OK) {
        fprintf(stderr, "chat-worker: CHAT_WORKER_LISTEN: cannot listen on %s (in use?)\n", cfg->worker_listen_raw);
        chat_health_destroy(health);
        return 1;
    }
    wk_archive *archive = NULL;
    if ((cfg->roles & CHAT_ROLE_ARCHIVE) && wk_archive_start(&app, &archive) != CHAT_OK)
        return 1;
    wk_ingest *ingest = NULL;
    if ((cfg->roles & CHAT_ROLE_INGEST) && wk_ingest_start(&app, &ingest) != CHAT_OK)
        return 1;
    wk_api *api = NULL;
    if ((cfg->roles & CHAT_ROLE_API) && wk_api_start(&app, &api) != CHAT_OK)
        return 1;
    wk_typing *typing = NULL;
    if ((cfg->roles & CHAT_ROLE_API) && wk_typing_start(&app, &typing) != CHAT_OK)
        return 1;
    wk_claims *claims = NULL;
    if ((cfg->roles & CHAT_ROLE_API) && wk_claims_start(&app, &claims) != CHAT_OK)
        return 1;
    wk_notify *notify = NULL;
    if ((cfg->roles & CHAT_ROLE_NOTIFY) && wk_notify_start(&app, &notify) != CHAT_OK)
        return 1;
    LOG_INFO("worker", "event=started listen=%s roles=%s", cfg->worker_listen_raw, cfg->worker_roles);

    pthread_mutex_lock(&stop_lock);
    while (!atomic_load(&app.stopping))
        pthread_cond_wait(&stop_cv, &stop_lock);
    pthread_mutex_unlock(&stop_lock);

    wk_api_destroy(api); /* first: posts in flight wait for the ingest's commit */
    wk_typing_destroy(typing);
    wk_claims_destroy(claims);
    wk_notify_destroy(notify);
    wk_ingest_destroy(ingest);
    wk_archive_destroy(archive);
    chat_httpd_destroy(httpd);
    chat_health_destroy(health);
    natsConnection_Destroy(app.nc);
    chat_metrics_destroy(app.metrics);
    LOG_INFO("worker", "event=stopped");
    return 0;
}

/* `chat-worker streams`: creates CHAT_IN, CHAT_EVENTS and the CHAT_REVOKED bucket, or brings them
 * to their configuration (CHAT_JS_REPLICAS, CHAT_JWT_MAX_TTL). Needs NATS credentials with the stream-update permission (the `setup` user
 * of deploy/nats/accounts.conf); the running roles' `worker` user has none. */
static int setup_streams(const chat_cfg *cfg)
{
    natsConnection *nc = NULL;
    if (chat_nats_connect(cfg, "setup", true, &nc) != CHAT_OK) {
        char shown[1024];
        chat_redact_url(cfg->nats_url, shown, sizeof shown);
        fprintf(stderr, "chat-worker: cannot use CHAT_NATS_URL %s\n", shown);
        return 1;
    }
    jsCtx *js = NULL;
    chat_status st = CHAT_ERR_UNAVAILABLE;
    for (int attempt = 0; attempt < 30 && st == CHAT_ERR_UNAVAILABLE; attempt++) {
        if (attempt > 0)
            nats_Sleep(1000); /* a cluster still electing its meta leader answers nothing yet */
        if (js == NULL && natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
            continue;
        st = wk_streams_ensure(js, cfg->js_replicas, true);
        if (st == CHAT_OK)
            st = wk_streams_ensure_revoked(js, cfg->js_replicas, cfg->jwt_max_ttl_s, true);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    if (st != CHAT_OK) {
        fprintf(stderr, "chat-worker: streams: set-up failed (see the log line above)\n");
        return 1;
    }
    LOG_INFO("streams", "event=streams_ready replicas=%d", cfg->js_replicas);
    return 0;
}

int main(int argc, char **argv)
{
    chat_cfg cfg;
    chat_cfg_load_or_exit(&cfg, CHAT_PROG_WORKER, "chat-worker", usage, argc, argv);
    int rc;
    if (cfg.nargs == 1 && strcmp(cfg.args[0], "migrate") == 0) {
        rc = wk_migrate_run(cfg.pg_dsn) == CHAT_OK ? 0 : 1;
        if (rc)
            fprintf(stderr, "chat-worker: migrate failed (see the log line above)\n");
    } else if (cfg.nargs == 1 && strcmp(cfg.args[0], "streams") == 0) {
        rc = setup_streams(&cfg);
    } else if (cfg.nargs > 0) {
        fprintf(stderr, "chat-worker: unknown argument \"%s\" (try --help)\n", cfg.args[0]);
        rc = 2;
    } else {
        rc = run(&cfg);
    }
    chat_cfg_free(&cfg);
    chat_nats_shutdown();
    return rc;
}
