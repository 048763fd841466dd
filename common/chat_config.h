/* Settings: one table (name, CHAT_* variable, flag, type, default), read from the environment,
 * then from flags (--nats-url=... or --nats-url ...), then validated once at start.
 * A program gets a filled, read-only `const chat_cfg *`; nothing changes it afterwards. */
#ifndef CHAT_CONFIG_H
#define CHAT_CONFIG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_jwt.h"
#include "chat_status.h"
#include "chat_config_deps.h"

/* Which program asks: only the settings a program uses are validated for it. */
/* Longest CHAT_GATEWAY_ID (its NATS subjects and session names are built from it). */
#define CHAT_GATEWAY_ID_MAX 23

enum {
    CHAT_PROG_GATEWAY = 1 << 0,
    CHAT_PROG_WORKER = 1 << 1,
    CHAT_PROG_CTL = 1 << 2,
    CHAT_PROG_BENCH = 1 << 3,
};

typedef struct chat_cfg {
    /* raw values as given (or defaulted), owned by the cfg */
    char *home;               /* absolute path */
    char *gateway_listen_raw;
    char *gateway_id;         /* CHAT_GATEWAY_ID (empty: random) */
    char *worker_listen_raw;
    char *nats_url;           /* comma separated, as nats.c takes it */
    char *nats_ca;            /* tls:// NATS: PEM CA certificate(s) trusted besides the system's ("" = none) */
    char *nats_cert, *nats_key; /* tls:// NATS: client certificate and key for mutual TLS (both or neither) */
    char *pg_dsn;
    char *redis_url;
    char *jwt_secret;         /* "" with CHAT_JWT_KEYS set: no HS256 key for tokens without kid */
    char *jwt_keys, *jwt_issuer, *jwt_audience, *jwt_max_ttl_raw, *jwt_signing_key;
    char *archive_url;
    char *archive_cache_raw;  /* CHAT_ARCHIVE_CACHE_MB */
    char *committers_raw;     /* CHAT_INGEST_COMMITTERS */
    char *bulk_rate_raw;   /* CHAT_INGEST_BULK_RATE */
    char *s3_endpoint, *s3_region, *s3_access_key, *s3_secret_key;
    char *allowed_origins;    /* comma separated; "" = any */
    char *push_webhook_url;   /* "" = none */
    char *egress_allow;       /* ranges that requests to URLs someone else chose may reach besides public ones (chat_egress.h) */
    char *push_preview_raw;   /* "1" (default) or "0" */
    char *worker_roles;       /* comma separated subset of ingest,api,notify,archive */
    char *web_dir;            /* the demo app's static files ("" = next to the binary) */
    char *tls_cert, *tls_key; /* gateway wss:// (both or neither) */
    char *ws_queue_raw, *ws_grace_raw, *ws_rate_raw, *ws_user_rate_raw, *ws_inflight_raw, *ws_per_user_raw,
        *ws_per_ip_raw, *ws_refused_per_ip_raw, *ws_ping_raw, *ws_stop_delay_raw, *ws_membership_cache_raw;
    char *js_replicas_raw, *nats_sync_raw;
    char *partitions_raw, *span_raw, *retention_raw, *grace_raw, *dev_mode_raw, *log_raw;

    /* parsed */
    chat_listen gateway_listen;
    chat_listen worker_listen;
    char redis_host[256];
    int redis_port;
    int redis_db;
    char redis_user[256];     /* a Redis ACL user ("": AUTH with the password alone, or none) */
    char redis_password[256];
    int partitions;
    int js_replicas;          /* JetStream replicas of the streams the worker creates */
    int64_t nats_sync_ms;     /* the broker's JetStream sync interval (CHAT_NATS_SYNC; 0: always) */
    int64_t partition_span_ms;
    int64_t hot_retention_ms;
    int archive_cache_mb;     /* cold chunks cached per api worker, MiB (0: none) */
    int ingest_committers;    /* transactions one ingest worker runs at once */
    int ingest_bulk_rate;  /* bulk posts one ingest worker stores per second (0: no limit) */
    int64_t push_grace_ms;
    bool push_preview;        /* pushes carry a preview of the newest message */
    bool dev_mode;
    int64_t jwt_max_ttl_s;    /* CHAT_JWT_MAX_TTL (gateway, chatctl; the worker sizes the revocations bucket by it) */
    chat_jwt_policy *jwt;     /* keys and claim rules of client tokens (gateway, chatctl); owned */
    /* gateway protection (docs/operations.md) */
    int64_t ws_queue_max;      /* outbound bytes queued per connection before it counts as slow */
    int64_t ws_slow_grace_ms;  /* how long a connection may stay over ws_queue_max */
    int ws_rate;               /* frames per second per connection (burst: twice) */
    int ws_user_rate;          /* posts per second per user on one gateway (burst: twice) */
    int ws_inflight_max;       /* sends published by one gateway and not yet answered (0: no limit) */
    int ws_max_per_user;       /* connections per user on one gateway (0: no limit) */
    int ws_max_per_ip;         /* connections per client address on one gateway (0: no limit) */
    int ws_refused_per_ip;     /* refused upgrades per second per client address (0: no limit) */
    int64_t ws_ping_ms;        /* idle connections are pinged this often and closed when silent for twice that */
    int64_t ws_stop_delay_ms;  /* on SIGTERM, how long /readyz and new upgrades answer 503 before clients are closed */
    int ws_membership_cache;   /* conversations in one gateway's membership cache (the oldest go first) */
    int log_level;
    unsigned roles;           /* CHAT_ROLE_* bits */

    /* what was left on the command line (positional words and flags no setting claims) */
    int nargs;
    char **args;
    bool help;
} chat_cfg;

enum {
    CHAT_ROLE_INGEST = 1 << 0,
    CHAT_ROLE_API = 1 << 1,
    CHAT_ROLE_NOTIFY = 1 << 2,
    CHAT_ROLE_ARCHIVE = 1 << 3,
    CHAT_ROLE_ALL = 0xf,
};

/* Fills cfg for program `prog` (a CHAT_PROG_* bit) from the environment and argv (argv[0] is
 * skipped). On error returns CHAT_ERR_INVALID and writes one line naming the setting into err,
 * e.g. "CHAT_PARTITIONS: must be an integer from 1 to 1024 (got \"0\")". cfg must be freed with
 * chat_cfg_free in every case. */
chat_status chat_cfg_load(chat_cfg *cfg, unsigned prog, int argc, char **argv, char *err, size_t errsz);

/* chat_cfg_load, then on error prints "<prog>: <err>" to stderr and exits 2; on --help prints
 * usage (the text given, then the settings table for this program) and exits 0. */
void chat_cfg_load_or_exit(chat_cfg *cfg, unsigned prog, const char *progname, const char *usage,
                           int argc, char **argv);

/* Prints the settings this program reads, one per line, with flag, variable and default. */
void chat_cfg_print_help(unsigned prog, const char *progname, const char *usage);

void chat_cfg_free(chat_cfg *cfg);

/* Helpers for validation, exposed for tests (chat_parse_listen: chat_config_deps.h). */
bool chat_origin_allowed(const char *allowed_list, const char *origin);

#endif
