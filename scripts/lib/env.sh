# shellcheck shell=bash
# Settings of the embedded stack (CONTRACT section 2).
#   chat_env_init [DEV_MODE_DEFAULT]  every setting not already in the environment gets its
#                                     embedded default; all are exported.
#   chat_env_write                    writes $CHAT_HOME/env (export NAME='value' lines).
# Needs common.sh.

# The settings, in the order they are written to $CHAT_HOME/env.
CHAT_SETTINGS=(
    CHAT_HOME CHAT_GATEWAY_LISTEN CHAT_WORKER_LISTEN CHAT_NATS_URL CHAT_PG_DSN CHAT_REDIS_URL
    CHAT_JWT_SECRET CHAT_JWT_KEYS CHAT_JWT_ISSUER CHAT_JWT_AUDIENCE CHAT_JWT_MAX_TTL CHAT_JWT_SIGNING_KEY
    CHAT_PARTITIONS CHAT_ARCHIVE_URL CHAT_S3_ENDPOINT CHAT_S3_REGION
    CHAT_S3_ACCESS_KEY CHAT_S3_SECRET_KEY CHAT_PARTITION_SPAN CHAT_HOT_RETENTION CHAT_PUSH_GRACE
    CHAT_ALLOWED_ORIGINS CHAT_DEV_MODE CHAT_PUSH_WEBHOOK_URL CHAT_EGRESS_ALLOW CHAT_LOG
    CHAT_NATS_MONITOR_PORT CHAT_NATS_SYNC CHAT_JS_REPLICAS CHAT_WS_QUEUE_MAX CHAT_WS_SLOW_GRACE CHAT_WS_RATE
    CHAT_WS_USER_RATE CHAT_WS_MAX_PER_USER CHAT_WS_MAX_PER_IP CHAT_WS_PING CHAT_WS_STOP_DELAY CHAT_WS_INFLIGHT_MAX
    CHAT_WS_MEMBERSHIP_CACHE CHAT_WS_REFUSED_PER_IP CHAT_INGEST_COMMITTERS CHAT_INGEST_BULK_RATE
    CHAT_TLS_CERT CHAT_TLS_KEY
)

# chat_env_default NAME VALUE: export NAME=VALUE unless NAME is already set (even empty).
chat_env_default() {
    if [[ -z "${!1+x}" ]]; then
        printf -v "$1" '%s' "$2"
    fi
    # shellcheck disable=SC2163  # exporting the variable named by $1
    export "$1"
}

# chat_jwt_secret: CHAT_JWT_SECRET from the environment, else from $CHAT_HOME/jwt_secret,
# which is created once (64 hex chars, mode 0600). With a key file (CHAT_JWT_KEYS) and
# CHAT_JWT_SECRET set but empty, it stays empty: the keys alone sign and verify.
chat_jwt_secret() {
    local f="$CHAT_HOME/jwt_secret"
    if [[ -n "${CHAT_JWT_SECRET:-}" || ( -n "${CHAT_JWT_KEYS:-}" && -n "${CHAT_JWT_SECRET+x}" ) ]]; then
        export CHAT_JWT_SECRET
        return 0
    fi
    if [[ ! -s "$f" ]]; then
        mkdir -p -- "$CHAT_HOME"
        local tmp
        tmp=$(mktemp -- "$f.XXXXXX")
        chmod 600 -- "$tmp"
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp"
        printf '\n' >>"$tmp"
        mv -f -- "$tmp" "$f"
    fi
    CHAT_JWT_SECRET=$(tr -d '[:space:]' <"$f")
    [[ ${#CHAT_JWT_SECRET} -ge 32 ]] || chat_die "$f does not hold a usable secret; delete it to have a new one made"
    export CHAT_JWT_SECRET
}

# chat_listen_is_loopback HOST:PORT: true when HOST only this machine reaches (127.x, ::1,
# localhost); an empty host or 0.0.0.0 listens on every interface.
chat_listen_is_loopback() {
    local host=${1%:*}
    host=${host#[}
    host=${host%]}
    case $host in
        127.*|localhost|::1) return 0 ;;
        *) return 1 ;;
    esac
}

# chat_env_init [DEV_MODE_DEFAULT]: fill in and export every setting.
chat_env_init() {
    local dev_default=${1:-0} nats_port
    chat_env_default CHAT_HOME "$CHAT_ROOT/.local"
    CHAT_HOME=$(realpath -m -- "$CHAT_HOME")
    export CHAT_HOME
    chat_home_claim
    chat_env_default CHAT_GATEWAY_LISTEN 127.0.0.1:8080
    chat_env_default CHAT_WORKER_LISTEN 127.0.0.1:9101
    chat_env_default CHAT_NATS_URL nats://127.0.0.1:4222
    chat_env_default CHAT_PG_DSN 'host=127.0.0.1 port=5433 dbname=chat user=chat'
    chat_env_default CHAT_REDIS_URL redis://127.0.0.1:6379
    chat_env_default CHAT_PARTITIONS 16
    chat_env_default CHAT_ARCHIVE_URL "file://$CHAT_HOME/archive"
    chat_env_default CHAT_S3_ENDPOINT ''
    chat_env_default CHAT_S3_REGION us-east-1
    chat_env_default CHAT_S3_ACCESS_KEY ''
    chat_env_default CHAT_S3_SECRET_KEY ''
    chat_env_default CHAT_PARTITION_SPAN 1d
    chat_env_default CHAT_HOT_RETENTION 30d
    chat_env_default CHAT_PUSH_GRACE 10s
    chat_env_default CHAT_ALLOWED_ORIGINS ''
    # Dev mode (/dev/token mints a token for any user) only where the network cannot reach it:
    # the gateway refuses CHAT_DEV_MODE=1 on any other address at start.
    if [[ "$dev_default" == 1 && -z "${CHAT_DEV_MODE+x}" ]] && ! chat_listen_is_loopback "$CHAT_GATEWAY_LISTEN"; then
        chat_note "CHAT_GATEWAY_LISTEN=$CHAT_GATEWAY_LISTEN is not a loopback address: dev mode (/dev/token) stays off"
        dev_default=0
    fi
    chat_env_default CHAT_DEV_MODE "$dev_default"
    chat_env_default CHAT_PUSH_WEBHOOK_URL ''
    # The embedded stack's webhook receivers (tests, a local demo) listen on loopback: allowed by
    # name here; the programs' own default allows public addresses only.
    chat_env_default CHAT_EGRESS_ALLOW '127.0.0.0/8,::1'
    chat_env_default CHAT_LOG info
    # Additions to the contract's table (docs/operations.md): the gateway's protection, wss://,
    # and the JetStream replicas of the streams.
    chat_env_default CHAT_JS_REPLICAS 1
    # JetStream fsync of the local nats-server (services.sh): always, or an interval like 1s.
    chat_env_default CHAT_NATS_SYNC 1s
    chat_env_default CHAT_WS_QUEUE_MAX 8388608
    chat_env_default CHAT_WS_SLOW_GRACE 5s
    chat_env_default CHAT_WS_RATE 50
    chat_env_default CHAT_WS_USER_RATE 100
    chat_env_default CHAT_WS_MAX_PER_USER 20
    chat_env_default CHAT_WS_MAX_PER_IP 1000
    chat_env_default CHAT_WS_REFUSED_PER_IP 20
    # the ingest: transactions at once per worker, and from how many members a conversation's
    # events go to its members' gateways rather than per user (docs/operations.md)
    chat_env_default CHAT_INGEST_COMMITTERS 2
    # bulk imports (chat.bulk.*, chatctl import) stored per second per worker, after the live posts
    chat_env_default CHAT_INGEST_BULK_RATE 2000
    chat_env_default CHAT_WS_PING 30s
    chat_env_default CHAT_WS_STOP_DELAY 2s
    chat_env_default CHAT_WS_INFLIGHT_MAX 1000
    chat_env_default CHAT_WS_MEMBERSHIP_CACHE 100000
    chat_env_default CHAT_TLS_CERT ''
    chat_env_default CHAT_TLS_KEY ''
    # Client tokens (docs/operations.md): key file, issuer, audience, maximum lifetime, signing kid.
    chat_env_default CHAT_JWT_KEYS ''
    chat_env_default CHAT_JWT_ISSUER ''
    chat_env_default CHAT_JWT_AUDIENCE ''
    chat_env_default CHAT_JWT_MAX_TTL 24h
    chat_env_default CHAT_JWT_SIGNING_KEY ''
    nats_port=$(chat_url_hostport "$CHAT_NATS_URL" 4222) \
        || chat_die "CHAT_NATS_URL='$CHAT_NATS_URL' is not a nats://host:port URL"
    nats_port=${nats_port#* }
    chat_env_default CHAT_NATS_MONITOR_PORT $((nats_port + 4000))
    chat_jwt_secret
}

# chat_shell_quote VALUE: VALUE as one single-quoted shell word.
chat_shell_quote() {
    local v=$1 q="'\\''"
    printf "'%s'" "${v//\'/$q}"
}

# chat_env_write: $CHAT_HOME/env with an export line per setting (mode 0600: it holds the
# JWT secret). `. $CHAT_HOME/env` gives a shell the stack's view.
chat_env_write() {
    local f="$CHAT_HOME/env" tmp name
    mkdir -p -- "$CHAT_HOME"
    tmp=$(mktemp -- "$f.XXXXXX")
    chmod 600 -- "$tmp"
    {
        printf '# Settings of the chat stack in %s, written by scripts/up.\n' "$CHAT_HOME"
        printf '# Load with: . %s\n' "$(chat_shell_quote "$f")"
        for name in "${CHAT_SETTINGS[@]}"; do
            printf 'export %s=%s\n' "$name" "$(chat_shell_quote "${!name-}")"
        done
    } >"$tmp"
    mv -f -- "$tmp" "$f"
}
