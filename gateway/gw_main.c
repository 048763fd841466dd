/* chat-gateway: settings, dependencies, the lws loop on the main thread, graceful stop. */
#include <stdio.h>
#include <stdlib.h>

#include "chat_config.h"
#include "chat_health.h"
#include "chat_http.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_signal.h"
#include "gw_server.h"

static const char *usage = "chat-gateway [settings...]";

static void on_stop(int signo, void *ctx)
{
    LOG_INFO("gateway", "event=stop_requested signal=%d", signo);
    gw_server_stop(ctx);
}

int main(int argc, char **argv)
{
    chat_cfg cfg;
    chat_cfg_load_or_exit(&cfg, CHAT_PROG_GATEWAY, "chat-gateway", usage, argc, argv);
    if (cfg.nargs > 0) {
        fprintf(stderr, "chat-gateway: unknown argument \"%s\" (try --help)\n", cfg.args[0]);
        chat_cfg_free(&cfg);
        return 2;
    }
    gw_server srv = {.cfg = &cfg, .context_lock = PTHREAD_MUTEX_INITIALIZER};
    if (chat_signal_start(on_stop, &srv) != CHAT_OK)
        return 1;
    srv.metrics = chat_metrics_create();
    chat_metrics_add_process(srv.metrics);
    chat_http_lws_logging();
    /* one subscription per connected user: a shared delivery thread, not one thread each. One,
     * not two: the callbacks only queue the message for the lws thread, and a second delivery
     * thread only split the bursts into two wake-ups (bench/findings.md, item 10) */
    if (chat_nats_connect_shared(&cfg, "gateway", 1, &srv.nc) != CHAT_OK)
        return 1;
    if (chat_health_start(&cfg, CHAT_DEP_NATS | CHAT_DEP_REDIS, srv.nc, &srv.health) != CHAT_OK)
        return 1;
    chat_status st = gw_server_create(&srv);
    if (st != CHAT_OK) {
        if (st == CHAT_ERR_IO)
            fprintf(stderr, "chat-gateway: CHAT_GATEWAY_LISTEN: cannot listen on %s (in use?)\n",
                    cfg.gateway_listen_raw);
        else /* said on stderr or in the log where it failed */
            fprintf(stderr, "chat-gateway: cannot start: %s\n", chat_status_str(st));
        return 1;
    }
    LOG_INFO("gateway", "event=started listen=%s gateway=%s", cfg.gateway_listen_raw, srv.gateway_id);
    gw_server_run(&srv);
    gw_server_destroy(&srv);
    chat_health_destroy(srv.health);
    natsConnection_Destroy(srv.nc);
    chat_metrics_destroy(srv.metrics);
    chat_cfg_free(&cfg);
    chat_nats_shutdown();
    LOG_INFO("gateway", "event=stopped");
    return 0;
}
