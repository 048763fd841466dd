/* Settings table, loading and validation (the dependencies' URLs and TLS files: chat_config_deps.c).
 * Runs once at start on the main thread. */
#include "chat_config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "chat_duration.h"
#include "chat_egress.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_redact.h"

#define ALL (CHAT_PROG_GATEWAY | CHAT_PROG_WORKER | CHAT_PROG_CTL | CHAT_PROG_BENCH)
#define GW CHAT_PROG_GATEWAY
#define WK CHAT_PROG_WORKER
#define CTL CHAT_PROG_CTL

typedef struct setting {
    const char *env;      /* CHAT_* variable */
    const char *flag;     /* --flag */
    const char *def;      /* default ("$HOME" prefix: relative to CHAT_HOME) */
    unsigned used_by;     /* CHAT_PROG_* bits */
    size_t offset;        /* of the char * field in chat_cfg */
    const char *help;
} setting;

#define F(field) offsetof(chat_cfg, field)

static const setting settings[] = {
    {"CHAT_HOME", "--home", ".local", ALL, F(home), "data and pid directory"},
    {"CHAT_GATEWAY_LISTEN", "--gateway-listen", "127.0.0.1:8080", GW | CTL, F(gateway_listen_raw),
     "gateway address (HTTP + WebSocket)"},
    {"CHAT_GATEWAY_ID", "--gateway-id", "", GW, F(gateway_id),
     "this gateway's id (1 to 23 of A-Z a-z 0-9 _ -), the name of its NATS credential's own subjects "
     "(chat.deliver.g.<id>, _INBOX.gw.<id>.>); unique per gateway (empty: random at each start)"},
    {"CHAT_WORKER_LISTEN", "--worker-listen", "127.0.0.1:9101", WK, F(worker_listen_raw),
     "worker address for /healthz, /readyz, /metrics"},
    {"CHAT_NATS_URL", "--nats-url", "nats://127.0.0.1:4222", ALL, F(nats_url),
     "NATS server(s), comma separated"},
    {"CHAT_NATS_CA", "--nats-ca", "", ALL, F(nats_ca),
     "PEM CA certificate(s) to trust for tls:// NATS servers, besides the system's"},
    {"CHAT_NATS_CERT", "--nats-cert", "", ALL, F(nats_cert),
     "PEM client certificate for tls:// NATS (mutual TLS, with CHAT_NATS_KEY)"},
    {"CHAT_NATS_KEY", "--nats-key", "", ALL, F(nats_key), "PEM private key of CHAT_NATS_CERT"},
    {"CHAT_PG_DSN", "--pg-dsn", "host=127.0.0.1 port=5433 dbname=chat user=chat", WK | CTL, F(pg_dsn),
     "libpq connection string (chatctl: the archive commands)"},
    {"CHAT_REDIS_URL", "--redis-url", "redis://127.0.0.1:6379", GW | WK, F(redis_url), "Redis"},
    {"CHAT_JWT_SECRET", "--jwt-secret", "", GW | WK | CTL, F(jwt_secret),
     "HS256 secret for client tokens without kid (default: read from $CHAT_HOME/jwt_secret unless CHAT_JWT_KEYS "
     "is set)"},
    {"CHAT_JWT_KEYS", "--jwt-keys", "", GW | WK | CTL, F(jwt_keys),
     "file of \"kid alg key\" lines: HS256 secrets, EdDSA or RS256 PEM files; a token's kid picks its key"},
    {"CHAT_JWT_ISSUER", "--jwt-issuer", "", GW | WK | CTL, F(jwt_issuer), "iss every token must carry (empty: not checked)"},
    {"CHAT_JWT_AUDIENCE", "--jwt-audience", "", GW | WK | CTL, F(jwt_audience),
     "aud every token must carry (empty: not checked)"},
    {"CHAT_JWT_MAX_TTL", "--jwt-max-ttl", "24h", GW | WK | CTL, F(jwt_max_ttl_raw),
     "longest token lifetime: exp further than this from now or from iat is refused (the worker: how long "
     "revocations are kept)"},
    {"CHAT_JWT_SIGNING_KEY", "--jwt-signing-key", "", GW | CTL, F(jwt_signing_key),
     "kid of CHAT_JWT_KEYS that chatctl token and /dev/token sign with (empty: CHAT_JWT_SECRET)"},
    {"CHAT_PARTITIONS", "--partitions", "16", ALL, F(partitions_raw),
     "number of ordering partitions of the message stream"},
    {"CHAT_NATS_SYNC", "--nats-sync", "1s", WK | CTL, F(nats_sync_raw),
     "the broker's JetStream sync_interval (always, or a duration like 1s): how long an acknowledged write may "
     "wait for its fsync (at most 5m); the ingest trusts a CHAT_EVENTS write, chatctl revoke a revocation, only "
     "once that has passed"},
    {"CHAT_JS_REPLICAS", "--js-replicas", "1", WK, F(js_replicas_raw),
     "JetStream replicas of the streams (3 on a three-node NATS cluster)"},
    {"CHAT_ARCHIVE_URL", "--archive-url", "", WK | CTL, F(archive_url),
     "cold storage: file:///path or s3://bucket/prefix (default file://$CHAT_HOME/archive)"},
    {"CHAT_S3_ENDPOINT", "--s3-endpoint", "", WK | CTL, F(s3_endpoint), "S3 endpoint URL"},
    {"CHAT_S3_REGION", "--s3-region", "us-east-1", WK | CTL, F(s3_region), "S3 region"},
    {"CHAT_S3_ACCESS_KEY", "--s3-access-key", "", WK | CTL, F(s3_access_key), "S3 access key"},
    {"CHAT_S3_SECRET_KEY", "--s3-secret-key", "", WK | CTL, F(s3_secret_key), "S3 secret key"},
    {"CHAT_ARCHIVE_CACHE_MB", "--archive-cache-mb", "64", WK, F(archive_cache_raw),
     "MiB of recently read cold chunks each api worker keeps decoded (0: none)"},
    {"CHAT_PARTITION_SPAN", "--partition-span", "1d", WK | CTL, F(span_raw),
     "time span of one messages partition (1m to 7d)"},
    {"CHAT_HOT_RETENTION", "--hot-retention", "30d", WK | CTL, F(retention_raw),
     "how long a message stays in PostgreSQL before archiving"},
    {"CHAT_PUSH_GRACE", "--push-grace", "10s", WK, F(grace_raw),
     "how long a member may stay behind before a push is sent"},
    {"CHAT_ALLOWED_ORIGINS", "--allowed-origins", "", GW, F(allowed_origins),
     "browser origins allowed to open a WebSocket, comma separated (empty: any)"},
    {"CHAT_DEV_MODE", "--dev-mode", "0", GW, F(dev_mode_raw), "1 serves GET /dev/token?user=U"},
    {"CHAT_PUSH_WEBHOOK_URL", "--push-webhook-url", "", WK, F(push_webhook_url),
     "where offline notifications are POSTed (empty: none)"},
    {"CHAT_EGRESS_ALLOW", "--egress-allow", "", WK, F(egress_allow),
     "addresses or CIDR ranges the webhook may reach besides public ones, comma separated (e.g. 127.0.0.0/8,::1)"},
    {"CHAT_PUSH_PREVIEW", "--push-preview", "1", WK, F(push_preview_raw),
     "1 puts a preview of the newest message into pushes, 0 leaves it out"},
    {"CHAT_TLS_CERT", "--tls-cert", "", GW, F(tls_cert), "PEM certificate for wss:// (with CHAT_TLS_KEY)"},
    {"CHAT_TLS_KEY", "--tls-key", "", GW, F(tls_key), "PEM private key for wss://"},
    {"CHAT_WS_QUEUE_MAX", "--ws-queue-max", "8388608", GW, F(ws_queue_raw),
     "outbound bytes queued per connection before it counts as a slow consumer"},
    {"CHAT_WS_SLOW_GRACE", "--ws-slow-grace", "5s", GW, F(ws_grace_raw),
     "how long a connection may stay over CHAT_WS_QUEUE_MAX before it is closed (4008)"},
    {"CHAT_WS_RATE", "--ws-rate", "50", GW, F(ws_rate_raw), "frames per second per connection (burst twice that)"},
    {"CHAT_WS_USER_RATE", "--ws-user-rate", "100", GW, F(ws_user_rate_raw),
     "posts per second per user on one gateway (burst twice that)"},
    {"CHAT_WS_INFLIGHT_MAX", "--ws-inflight-max", "1000", GW, F(ws_inflight_raw),
     "sends one gateway has published and not yet answered; past it new sends get rate_limited at once (0: no "
     "limit)"},
    {"CHAT_WS_MAX_PER_USER", "--ws-max-per-user", "20", GW, F(ws_per_user_raw),
     "connections per user on one gateway (0: no limit)"},
    {"CHAT_WS_MAX_PER_IP", "--ws-max-per-ip", "1000", GW, F(ws_per_ip_raw),
     "connections per client address on one gateway (0: no limit)"},
    {"CHAT_WS_REFUSED_PER_IP", "--ws-refused-per-ip", "20", GW, F(ws_refused_per_ip_raw),
     "refused upgrades (bad token, path, Origin) per second per client address on one gateway, ten seconds' worth "
     "at once; past it the address is refused before its token is checked (0: no limit)"},
    {"CHAT_WS_PING", "--ws-ping", "30s", GW, F(ws_ping_raw),
     "idle connections are pinged this often and closed when silent for twice that"},
    {"CHAT_WS_MEMBERSHIP_CACHE", "--ws-membership-cache", "100000", GW, F(ws_membership_cache_raw),
     "conversations one gateway keeps membership answers for (the oldest are dropped first)"},
    {"CHAT_WS_STOP_DELAY", "--ws-stop-delay", "2s", GW, F(ws_stop_delay_raw),
     "on SIGTERM, how long the gateway answers 503 (readyz, new upgrades) before closing its clients (0: none)"},
    {"CHAT_WEB_DIR", "--web-dir", "", GW, F(web_dir),
     "static files served at / (default: web/ beside the binary's bin/, as built or installed)"},
    {"CHAT_WORKER_ROLES", "--roles", "ingest,api,notify,archive", WK, F(worker_roles),
     "worker roles, comma separated"},
    {"CHAT_INGEST_COMMITTERS", "--ingest-committers", "2", WK, F(committers_raw),
     "transactions an ingest worker runs at once, each for the batches of its share of the partitions (1 to 64)"},
    {"CHAT_INGEST_BULK_RATE", "--ingest-bulk-rate", "2000", WK, F(bulk_rate_raw),
     "bulk posts (imports on chat.bulk.<p>.<conv>, e.g. chatctl import) an ingest worker stores per second at most, "
     "so that an import leaves the machine to live posts; the rest waits in CHAT_BULK (0: no limit; users' and "
     "backends' live posts are never limited here)"},
    {"CHAT_LOG", "--log", "info", ALL, F(log_raw), "log level: error, warn, info, debug"},
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

static char **field(chat_cfg *cfg, const setting *s)
{
    return (char **)((char *)cfg + s->offset);
}

static void set_value(chat_cfg *cfg, const setting *s, const char *value)
{
    char **f = field(cfg, s);
    free(*f);
    *f = chat_xstrdup(value);
}

static const setting *find_flag(const char *arg, size_t len)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strlen(settings[i].flag) == len && strncmp(settings[i].flag, arg, len) == 0)
            return &settings[i];
    return NULL;
}

static unsigned parse_roles(const char *list)
{
    static const struct {
        const char *name;
        unsigned bit;
    } roles[] = {{"ingest", CHAT_ROLE_INGEST}, {"api", CHAT_ROLE_API},
                 {"notify", CHAT_ROLE_NOTIFY}, {"archive", CHAT_ROLE_ARCHIVE},
                 {"all", CHAT_ROLE_ALL}};
    unsigned bits = 0;
    char *copy = strdup(list), *save = NULL;
    for (char *r = strtok_r(copy, ",", &save); r; r = strtok_r(NULL, ",", &save)) {
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
            if (strcmp(r, roles[i].name) == 0)
                bit = roles[i].bit;
        if (bit == 0) {
            bits = 0;
            break;
        }
        bits |= bit;
    }
    free(copy);
    return bits;
}

static char *read_secret_file(const char *home)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/jwt_secret", home);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        n--;
    buf[n] = '\0';
    return chat_xstrdup(buf);
}

/* A listen host that only this machine reaches: a loopback address or "localhost". */
static bool host_is_loopback(const char *host)
{
    char bare[256];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') /* [::1] */
        snprintf(bare, sizeof bare, "%.*s", (int)(n - 2), host + 1);
    else
        snprintf(bare, sizeof bare, "%s", host);
    if (strcmp(bare, "localhost") == 0)
        return true;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, bare, &v4->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, bare, &v6->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    else
        return false; /* "", "0.0.0.0" parse; any other name may resolve anywhere */
    return chat_egress_classify((struct sockaddr *)&ss) == CHAT_EGRESS_LOOPBACK;
}

static chat_status duration_in(const char *env, const char *raw, int64_t min, int64_t max,
                               int64_t *out, char *err, size_t errsz)
{
    int64_t ms;
    if (chat_duration_parse(raw, &ms) != CHAT_OK || ms < min || ms > max) {
        char lo[32], hi[32], fmt[160];
        chat_duration_format(min, lo, sizeof lo);
        chat_duration_format(max, hi, sizeof hi);
        snprintf(fmt, sizeof fmt, "must be a duration from %s to %s like 30s, 5m, 12h, 30d (got \"%%s\")",
                 lo, hi);
        return chat_cfg_fail(err, errsz, env, fmt, raw);
    }
    *out = ms;
    return CHAT_OK;
}

/* The token policy. Without CHAT_JWT_KEYS the secret is required (from $CHAT_HOME/jwt_secret when
 * unset, as scripts/up makes it); with a key file the secret is one more key only when it is set,
 * so that a gateway can hold public keys alone. */
static chat_status jwt_policy_load(chat_cfg *cfg, char *err, size_t errsz)
{
    if (cfg->jwt_secret[0] == '\0' && cfg->jwt_keys[0] == '\0') {
        char *s = read_secret_file(cfg->home);
        if (s == NULL) {
            snprintf(err, errsz, "CHAT_JWT_SECRET: not set, and %s/jwt_secret does not exist "
                     "(scripts/up creates it)", cfg->home);
            return CHAT_ERR_INVALID;
        }
        free(cfg->jwt_secret);
        cfg->jwt_secret = s;
    }
    chat_jwt_settings s = {.secret = cfg->jwt_secret,
                           .keys_file = cfg->jwt_keys,
                           .issuer = cfg->jwt_issuer,
                           .audience = cfg->jwt_audience,
                           .max_ttl_s = cfg->jwt_max_ttl_s,
                           .signing_kid = cfg->jwt_signing_key};
    return chat_jwt_policy_create(&s, err, errsz, &cfg->jwt);
}

/* Settings every program reads: home, log level, listen addresses, NATS, PostgreSQL, Redis,
 * partitions, token keys. The checks of each group run in the order of the settings table. */
static chat_status validate_common(chat_cfg *cfg, unsigned prog, char *err, size_t errsz)
{
    char shown[1024]; /* a setting echoed in an error: its secrets masked (chat_redact.h) */
    /* CHAT_HOME: made absolute, so file:// defaults and pid paths do not depend on cwd later. */
    if (cfg->home[0] == '\0')
        return chat_cfg_fail(err, errsz, "CHAT_HOME", "must not be empty", NULL);
    if (cfg->home[0] != '/') {
        char cwd[PATH_MAX], abs[PATH_MAX + 256];
        if (getcwd(cwd, sizeof cwd) == NULL)
            return chat_cfg_fail(err, errsz, "CHAT_HOME", "cannot resolve relative path \"%s\"", cfg->home);
        snprintf(abs, sizeof abs, "%s/%s", cwd, cfg->home);
        free(cfg->home);
        cfg->home = chat_xstrdup(abs);
    }
    int lvl = chat_log_level_parse(cfg->log_raw);
    if (lvl < 0)
        return chat_cfg_fail(err, errsz, "CHAT_LOG", "must be error, warn, info or debug (got \"%s\")", cfg->log_raw);
    cfg->log_level = lvl;

    if ((prog & GW) && chat_parse_listen(cfg->gateway_listen_raw, &cfg->gateway_listen) != CHAT_OK)
        return chat_cfg_fail(err, errsz, "CHAT_GATEWAY_LISTEN", "must be host:port (got \"%s\")",
                             cfg->gateway_listen_raw);
    if ((prog & WK) && chat_parse_listen(cfg->worker_listen_raw, &cfg->worker_listen) != CHAT_OK)
        return chat_cfg_fail(err, errsz, "CHAT_WORKER_LISTEN", "must be host:port (got \"%s\")",
                             cfg->worker_listen_raw);
    if (!chat_cfg_nats_urls_valid(cfg->nats_url)) {
        chat_redact_url(cfg->nats_url, shown, sizeof shown);
        return chat_cfg_fail(err, errsz, "CHAT_NATS_URL",
                             "must be nats://host:port[,nats://host:port...] or the same with tls:// (got \"%s\")",
                             shown);
    }
    chat_status tls_st =
        chat_cfg_nats_tls_valid(cfg->nats_url, cfg->nats_ca, cfg->nats_cert, cfg->nats_key, err, errsz);
    if (tls_st != CHAT_OK)
        return tls_st;
    if (prog & (WK | CTL)) {
        char *perr = NULL;
        PQconninfoOption *opts = PQconninfoParse(cfg->pg_dsn, &perr);
        if (opts == NULL) {
            chat_redact_pq_message(perr ? perr : "cannot parse", shown, sizeof shown);
            chat_status st = chat_cfg_fail(err, errsz, "CHAT_PG_DSN", "malformed: %s", shown);
            PQfreemem(perr);
            return st;
        }
        PQconninfoFree(opts);
    }
    chat_redis_addr redis;
    if ((prog & (GW | WK)) && !chat_cfg_parse_redis(cfg->redis_url, &redis)) {
        chat_redact_url(cfg->redis_url, shown, sizeof shown);
        return chat_cfg_fail(err, errsz, "CHAT_REDIS_URL",
                             "must be redis://[[user]:password@]host:port[/db] (got \"%s\")", shown);
    }
    if (prog & (GW | WK)) {
        snprintf(cfg->redis_host, sizeof cfg->redis_host, "%s", redis.host);
        cfg->redis_port = redis.port;
        cfg->redis_db = redis.db;
        snprintf(cfg->redis_user, sizeof cfg->redis_user, "%s", redis.user);
        snprintf(cfg->redis_password, sizeof cfg->redis_password, "%s", redis.password);
    }
    if (!chat_cfg_parse_int(cfg->partitions_raw, 1, 1024, &cfg->partitions))
        return chat_cfg_fail(err, errsz, "CHAT_PARTITIONS", "must be an integer from 1 to 1024 (got \"%s\")",
                             cfg->partitions_raw);
    if (prog & (GW | WK | CTL)) {
        int64_t max_ttl_ms;
        chat_status st = duration_in("CHAT_JWT_MAX_TTL", cfg->jwt_max_ttl_raw, 60000, 365LL * 86400000, &max_ttl_ms,
                                     err, errsz);
        if (st != CHAT_OK)
            return st;
        cfg->jwt_max_ttl_s = max_ttl_ms / 1000;
    }
    if (prog & (GW | CTL)) {
        chat_status st = jwt_policy_load(cfg, err, errsz);
        if (st != CHAT_OK)
            return st;
    }
    return CHAT_OK;
}

/* The archive and its cold reads (workers, chatctl). */
static chat_status validate_storage(chat_cfg *cfg, char *err, size_t errsz)
{
    char shown[1024];
    if (cfg->archive_url[0] == '\0') {
        char buf[PATH_MAX + 32];
        snprintf(buf, sizeof buf, "file://%s/archive", cfg->home);
        free(cfg->archive_url);
        cfg->archive_url = chat_xstrdup(buf);
    }
    bool file = strncmp(cfg->archive_url, "file:///", 8) == 0;
    bool s3 = strncmp(cfg->archive_url, "s3://", 5) == 0 && cfg->archive_url[5] != '\0' &&
              cfg->archive_url[5] != '/';
    if (!file && !s3)
        return chat_cfg_fail(err, errsz, "CHAT_ARCHIVE_URL",
                             "must be file:///absolute/path or s3://bucket/prefix (got \"%s\")", cfg->archive_url);
    if (s3 && (cfg->s3_access_key[0] == '\0' || cfg->s3_secret_key[0] == '\0'))
        return chat_cfg_fail(err, errsz, cfg->s3_access_key[0] ? "CHAT_S3_SECRET_KEY" : "CHAT_S3_ACCESS_KEY",
                             "required when CHAT_ARCHIVE_URL is s3://%s", NULL);
    if (s3 && cfg->s3_endpoint[0] && strncmp(cfg->s3_endpoint, "http://", 7) != 0 &&
        strncmp(cfg->s3_endpoint, "https://", 8) != 0) {
        chat_redact_url(cfg->s3_endpoint, shown, sizeof shown);
        return chat_cfg_fail(err, errsz, "CHAT_S3_ENDPOINT", "must be an http:// or https:// URL (got \"%s\")", shown);
    }
    chat_status st = duration_in("CHAT_PARTITION_SPAN", cfg->span_raw, 60000, 7 * 86400000LL,
                                 &cfg->partition_span_ms, err, errsz);
    if (st != CHAT_OK)
        return st;
    st = duration_in("CHAT_HOT_RETENTION", cfg->retention_raw, 60000, 100LL * 365 * 86400000,
                     &cfg->hot_retention_ms, err, errsz);
    if (st != CHAT_OK)
        return st;
    if (strcmp(cfg->nats_sync_raw, "always") == 0)
        cfg->nats_sync_ms = 0;
    else if (duration_in("CHAT_NATS_SYNC", cfg->nats_sync_raw, 1, 300000, &cfg->nats_sync_ms, err, errsz) != CHAT_OK)
        return chat_cfg_fail(err, errsz, "CHAT_NATS_SYNC",
                             "must be always or a duration from 1ms to 5m like 1s (got \"%s\")", cfg->nats_sync_raw);
    return CHAT_OK;
}

/* The worker's roles: pushes, egress, streams, the ingest. */
static chat_status validate_worker(chat_cfg *cfg, char *err, size_t errsz)
{
    char shown[1024];
    chat_status st = duration_in("CHAT_PUSH_GRACE", cfg->grace_raw, 1, 7 * 86400000LL,
                                 &cfg->push_grace_ms, err, errsz);
    if (st != CHAT_OK)
        return st;
    const char *w = cfg->push_webhook_url;
    if (w[0] && strncmp(w, "http://", 7) != 0 && strncmp(w, "https://", 8) != 0) {
        chat_redact_url(w, shown, sizeof shown);
        return chat_cfg_fail(err, errsz, "CHAT_PUSH_WEBHOOK_URL", "must be an http:// or https:// URL (got \"%s\")",
                             shown);
    }
    chat_egress *egress = NULL;
    char why[160];
    if (chat_egress_create(cfg->egress_allow, &egress, why, sizeof why) != CHAT_OK)
        return chat_cfg_fail(err, errsz, "CHAT_EGRESS_ALLOW", "%s", why);
    chat_egress_destroy(egress);
    if (strcmp(cfg->push_preview_raw, "0") != 0 && strcmp(cfg->push_preview_raw, "1") != 0)
        return chat_cfg_fail(err, errsz, "CHAT_PUSH_PREVIEW", "must be 0 or 1 (got \"%s\")", cfg->push_preview_raw);
    cfg->push_preview = strcmp(cfg->push_preview_raw, "1") == 0;
    if (!chat_cfg_parse_int(cfg->js_replicas_raw, 1, 5, &cfg->js_replicas))
        return chat_cfg_fail(err, errsz, "CHAT_JS_REPLICAS", "must be an integer from 1 to 5 (got \"%s\")",
                             cfg->js_replicas_raw);
    if (!chat_cfg_parse_int(cfg->archive_cache_raw, 0, 65536, &cfg->archive_cache_mb))
        return chat_cfg_fail(err, errsz, "CHAT_ARCHIVE_CACHE_MB", "must be an integer from 0 to 65536 (got \"%s\")",
                             cfg->archive_cache_raw);
    if (!chat_cfg_parse_int(cfg->committers_raw, 1, 64, &cfg->ingest_committers))
        return chat_cfg_fail(err, errsz, "CHAT_INGEST_COMMITTERS", "must be an integer from 1 to 64 (got \"%s\")",
                             cfg->committers_raw);
    if (!chat_cfg_parse_int(cfg->bulk_rate_raw, 0, 10000000, &cfg->ingest_bulk_rate))
        return chat_cfg_fail(err, errsz, "CHAT_INGEST_BULK_RATE", "must be an integer from 0 to 10000000 (got \"%s\")",
                             cfg->bulk_rate_raw);
    cfg->roles = parse_roles(cfg->worker_roles);
    if (cfg->roles == 0)
        return chat_cfg_fail(err, errsz, "CHAT_WORKER_ROLES",
                             "must be a comma separated list of ingest, api, notify, archive (got \"%s\")",
                             cfg->worker_roles);
    /* the api role checks the tokens of the gateways' route claims (workers/wk_claims.h) */
    if ((cfg->roles & CHAT_ROLE_API) && cfg->jwt == NULL) /* not loaded yet for the gateway's settings */
        return jwt_policy_load(cfg, err, errsz);
    return CHAT_OK;
}

/* The gateway: dev mode, TLS, the per-connection limits. */
static chat_status validate_gateway(chat_cfg *cfg, char *err, size_t errsz)
{
    if (strcmp(cfg->dev_mode_raw, "0") != 0 && strcmp(cfg->dev_mode_raw, "1") != 0)
        return chat_cfg_fail(err, errsz, "CHAT_DEV_MODE", "must be 0 or 1 (got \"%s\")", cfg->dev_mode_raw);
    cfg->dev_mode = strcmp(cfg->dev_mode_raw, "1") == 0;
    if (cfg->gateway_id[0] && (strlen(cfg->gateway_id) > CHAT_GATEWAY_ID_MAX || !chat_id_valid(cfg->gateway_id)))
        return chat_cfg_fail(err, errsz, "CHAT_GATEWAY_ID", "must be 1 to 23 of A-Z a-z 0-9 _ - (got \"%s\")",
                             cfg->gateway_id);
    /* dev mode mints a token for any user: never on an address the network reaches */
    if (cfg->dev_mode && !host_is_loopback(cfg->gateway_listen.host))
        return chat_cfg_fail(err, errsz, "CHAT_DEV_MODE",
                             "1 needs a loopback CHAT_GATEWAY_LISTEN (127.0.0.1, ::1 or localhost): /dev/token mints a "
                             "token for any user (got \"%s\")",
                             cfg->gateway_listen_raw);
    if ((cfg->tls_cert[0] != '\0') != (cfg->tls_key[0] != '\0'))
        return chat_cfg_fail(err, errsz, cfg->tls_cert[0] ? "CHAT_TLS_KEY" : "CHAT_TLS_CERT",
                             "CHAT_TLS_CERT and CHAT_TLS_KEY go together%s", NULL);
    for (int i = 0; i < 2; i++) {
        const char *path = i ? cfg->tls_key : cfg->tls_cert;
        if (path[0] && access(path, R_OK) != 0)
            return chat_cfg_fail(err, errsz, i ? "CHAT_TLS_KEY" : "CHAT_TLS_CERT", "cannot read \"%s\"", path);
    }
    char *end;
    long long queue = strtoll(cfg->ws_queue_raw, &end, 10);
    if (*end || queue < 65536 || queue > (1LL << 30))
        return chat_cfg_fail(err, errsz, "CHAT_WS_QUEUE_MAX",
                             "must be a number of bytes from 65536 to 1073741824 (got \"%s\")", cfg->ws_queue_raw);
    cfg->ws_queue_max = queue;
    chat_status st = duration_in("CHAT_WS_SLOW_GRACE", cfg->ws_grace_raw, 1, 3600000, &cfg->ws_slow_grace_ms, err, errsz);
    if (st == CHAT_OK)
        st = duration_in("CHAT_WS_PING", cfg->ws_ping_raw, 1000, 3600000, &cfg->ws_ping_ms, err, errsz);
    cfg->ws_stop_delay_ms = 0;
    if (st == CHAT_OK && strcmp(cfg->ws_stop_delay_raw, "0") != 0)
        st = duration_in("CHAT_WS_STOP_DELAY", cfg->ws_stop_delay_raw, 1, 60000, &cfg->ws_stop_delay_ms, err, errsz);
    if (st != CHAT_OK)
        return st;
    if (!chat_cfg_parse_int(cfg->ws_rate_raw, 1, 1000000, &cfg->ws_rate))
        return chat_cfg_fail(err, errsz, "CHAT_WS_RATE", "must be an integer from 1 to 1000000 (got \"%s\")",
                             cfg->ws_rate_raw);
    if (!chat_cfg_parse_int(cfg->ws_user_rate_raw, 1, 1000000, &cfg->ws_user_rate))
        return chat_cfg_fail(err, errsz, "CHAT_WS_USER_RATE", "must be an integer from 1 to 1000000 (got \"%s\")",
                             cfg->ws_user_rate_raw);
    if (!chat_cfg_parse_int(cfg->ws_inflight_raw, 0, 1000000, &cfg->ws_inflight_max))
        return chat_cfg_fail(err, errsz, "CHAT_WS_INFLIGHT_MAX", "must be an integer from 0 to 1000000 (got \"%s\")",
                             cfg->ws_inflight_raw);
    if (!chat_cfg_parse_int(cfg->ws_per_user_raw, 0, 1000000, &cfg->ws_max_per_user))
        return chat_cfg_fail(err, errsz, "CHAT_WS_MAX_PER_USER", "must be an integer >= 0 (got \"%s\")",
                             cfg->ws_per_user_raw);
    if (!chat_cfg_parse_int(cfg->ws_per_ip_raw, 0, 10000000, &cfg->ws_max_per_ip))
        return chat_cfg_fail(err, errsz, "CHAT_WS_MAX_PER_IP", "must be an integer >= 0 (got \"%s\")",
                             cfg->ws_per_ip_raw);
    if (!chat_cfg_parse_int(cfg->ws_refused_per_ip_raw, 0, 1000000, &cfg->ws_refused_per_ip))
        return chat_cfg_fail(err, errsz, "CHAT_WS_REFUSED_PER_IP", "must be an integer from 0 to 1000000 (got \"%s\")",
                             cfg->ws_refused_per_ip_raw);
    if (!chat_cfg_parse_int(cfg->ws_membership_cache_raw, 10, 10000000, &cfg->ws_membership_cache))
        return chat_cfg_fail(err, errsz, "CHAT_WS_MEMBERSHIP_CACHE",
                             "must be an integer from 10 to 10000000 (got \"%s\")", cfg->ws_membership_cache_raw);
    return CHAT_OK;
}

/* Every setting prog uses, checked once at start; the first bad one is named in err. */
static chat_status validate(chat_cfg *cfg, unsigned prog, char *err, size_t errsz)
{
    chat_status st = validate_common(cfg, prog, err, errsz);
    if (st == CHAT_OK && (prog & (WK | CTL)))
        st = validate_storage(cfg, err, errsz);
    if (st == CHAT_OK && (prog & WK))
        st = validate_worker(cfg, err, errsz);
    if (st == CHAT_OK && (prog & GW))
        st = validate_gateway(cfg, err, errsz);
    return st;
}

chat_status chat_cfg_load(chat_cfg *cfg, unsigned prog, int argc, char **argv, char *err, size_t errsz)
{
    memset(cfg, 0, sizeof *cfg);
    err[0] = '\0';
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *env = getenv(settings[i].env);
        set_value(cfg, &settings[i], env ? env : settings[i].def);
    }
    cfg->args = chat_xcalloc((size_t)(argc > 0 ? argc : 1), sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cfg->help = true;
            continue;
        }
        if (strncmp(a, "--", 2) == 0) {
            const char *eq = strchr(a, '=');
            const setting *s = find_flag(a, eq ? (size_t)(eq - a) : strlen(a));
            if (s) {
                if (eq) {
                    set_value(cfg, s, eq + 1);
                } else if (i + 1 < argc) {
                    set_value(cfg, s, argv[++i]);
                } else {
                    snprintf(err, errsz, "%s: flag %s needs a value", s->env, s->flag);
                    return CHAT_ERR_INVALID;
                }
                continue;
            }
        }
        cfg->args[cfg->nargs++] = argv[i];
    }
    if (cfg->help)
        return CHAT_OK;
    return validate(cfg, prog, err, errsz);
}

void chat_cfg_print_help(unsigned prog, const char *progname, const char *usage)
{
    printf("usage: %s\n\nsettings (environment variable or flag; flags win):\n", usage ? usage : progname);
    for (size_t i = 0; i < NSETTINGS; i++) {
        if (!(settings[i].used_by & prog))
            continue;
        printf("  %-22s %-20s %s", settings[i].flag, settings[i].env, settings[i].help);
        if (settings[i].def[0])
            printf(" [%s]", settings[i].def);
        printf("\n");
    }
}

void chat_cfg_load_or_exit(chat_cfg *cfg, unsigned prog, const char *progname, const char *usage,
                           int argc, char **argv)
{
    char err[768];
    if (chat_cfg_load(cfg, prog, argc, argv, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "%s: %s\n", progname, err);
        chat_cfg_free(cfg);
        exit(2);
    }
    if (cfg->help) {
        chat_cfg_print_help(prog, progname, usage);
        chat_cfg_free(cfg);
        exit(0);
    }
    chat_log_set_level((chat_log_level)cfg->log_level);
}

void chat_cfg_free(chat_cfg *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < NSETTINGS; i++) {
        char **f = field(cfg, &settings[i]);
        free(*f);
        *f = NULL;
    }
    chat_jwt_policy_destroy(cfg->jwt);
    cfg->jwt = NULL;
    free(cfg->args);
    cfg->args = NULL;
    cfg->nargs = 0;
}

bool chat_origin_allowed(const char *allowed_list, const char *origin)
{
    if (allowed_list == NULL || allowed_list[0] == '\0')
        return true;
    if (origin == NULL)
        return false;
    size_t olen = strlen(origin);
    const char *p = allowed_list;
    while (*p) {
        while (*p == ',' || *p == ' ')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *e = end;
        while (e > p && e[-1] == ' ')
            e--;
        if ((size_t)(e - p) == olen && strncmp(p, origin, olen) == 0)
            return true;
        p = end;
    }
    return false;
}
