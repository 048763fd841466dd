# shellcheck shell=bash
# The platform's stacks for bench/run: each a private CHAT_HOME under $BENCH_HOME on ports of
# its own (32xxx), built from build-bench, started with scripts/up and stopped by pid with
# scripts/down, so nothing of another stack on this machine (scripts/up's .local, scripts/test's
# .local-test, a colleague's) is touched.
#
#   bench_ports                       the addresses (BENCH_* and the CHAT_* of the platform)
#   bench_platform_env SYNC           exports the settings of the stack for CHAT_NATS_SYNC=SYNC
#   bench_platform_up SYNC            a fresh stack (data of an earlier one deleted)
#   bench_platform_down               stops it (and any extra gateway) and deletes its data
#   bench_gateway_extra N             starts gateway number N (1, 2: ports +1, +2) beside the first
#   bench_pid NAME                    the pid of a program of the stack (gateway, worker, ...)
#
# Needs scripts/lib/common.sh and services.sh.

bench_ports() {
    BENCH_GW_PORT=${BENCH_GW_PORT:-32080}
    BENCH_WK_PORT=${BENCH_WK_PORT:-32101}
    BENCH_NATS_PORT=${BENCH_NATS_PORT:-32222}
    BENCH_NATS_MON_PORT=${BENCH_NATS_MON_PORT:-32224}
    BENCH_PG_PORT=${BENCH_PG_PORT:-32433}
    BENCH_REDIS_PORT=${BENCH_REDIS_PORT:-32379}
    BENCH_EJ_PORT=${BENCH_EJ_PORT:-32280}
    BENCH_EJ_DIST_PORT=${BENCH_EJ_DIST_PORT:-32290}
    BENCH_EJ_PG_PORT=${BENCH_EJ_PG_PORT:-32533}
    BENCH_SIO_PORT=${BENCH_SIO_PORT:-32300}
    BENCH_NOFILE=${BENCH_NOFILE:-20000}
    export BENCH_GW_PORT BENCH_WK_PORT BENCH_NATS_PORT BENCH_NATS_MON_PORT BENCH_PG_PORT BENCH_REDIS_PORT
    export BENCH_EJ_PORT BENCH_EJ_DIST_PORT BENCH_EJ_PG_PORT BENCH_SIO_PORT BENCH_NOFILE
}

# bench_platform_env SYNC: the stack's settings. The gateway's per-connection and per-user
# rate limits (CHAT_WS_RATE 50 frames/s, CHAT_WS_USER_RATE 100 posts/s by default) are raised:
# the bench measures the server, not its abuse protection (ejabberd's c2s shaper is off too).
bench_platform_env() {
    local sync=$1
    export CHAT_HOME="$BENCH_HOME/platform-$sync"
    export CHAT_BUILD_DIR="$BENCH_BUILD_DIR"
    export CHAT_GATEWAY_LISTEN="127.0.0.1:$BENCH_GW_PORT"
    export CHAT_WORKER_LISTEN="127.0.0.1:$BENCH_WK_PORT"
    export CHAT_NATS_URL="nats://127.0.0.1:$BENCH_NATS_PORT"
    export CHAT_NATS_MONITOR_PORT="$BENCH_NATS_MON_PORT"
    export CHAT_PG_DSN="host=127.0.0.1 port=$BENCH_PG_PORT dbname=chat user=chat"
    export CHAT_REDIS_URL="redis://127.0.0.1:$BENCH_REDIS_PORT"
    export CHAT_NATS_SYNC="$sync"
    export CHAT_WS_RATE=100000
    export CHAT_WS_USER_RATE=100000
    export CHAT_DEV_MODE=0
    export CHAT_LOG=warn
    export CHAT_ARCHIVE_URL="file://$CHAT_HOME/archive"
    unset CHAT_JWT_SECRET
}

bench_platform_down() {
    [[ -n "${CHAT_HOME:-}" && -d "$CHAT_HOME" ]] || return 0
    "$CHAT_ROOT/scripts/down" >>"$BENCH_LOGS/stack.log" 2>&1 || chat_warn "scripts/down failed (see $BENCH_LOGS/stack.log)"
    # the stack's logs outlive its data (gateway.log, worker.log, nats.log, postgres.log, ...)
    if [[ -d "$CHAT_HOME/logs" ]]; then
        BENCH_STACK_N=$((${BENCH_STACK_N:-0} + 1))
        cp -r -- "$CHAT_HOME/logs" "$BENCH_LOGS/$(basename -- "$CHAT_HOME")-$BENCH_STACK_N" 2>/dev/null || true
    fi
    "$CHAT_ROOT/scripts/down" --purge >>"$BENCH_LOGS/stack.log" 2>&1 || chat_warn "scripts/down --purge failed (see $BENCH_LOGS/stack.log)"
}

# bench_platform_up SYNC: a fresh stack with CHAT_NATS_SYNC=SYNC.
bench_platform_up() {
    bench_platform_env "$1"
    bench_platform_down
    chat_log "platform (CHAT_NATS_SYNC=$1): scripts/up --no-build in $CHAT_HOME"
    (ulimit -n "$BENCH_NOFILE"; "$CHAT_ROOT/scripts/up" --no-build) >>"$BENCH_LOGS/stack.log" 2>&1 \
        || chat_die_log "scripts/up failed for the bench stack" "$BENCH_LOGS/stack.log"
    grep -q "sync_interval: $1\$" "$CHAT_HOME/nats/nats.conf" \
        || chat_die "the stack's nats.conf does not say sync_interval: $1 (scripts/lib/services.sh)"
    # shellcheck source=/dev/null
    . "$CHAT_HOME/env"
}

# bench_gateway_extra N: one more gateway on port BENCH_GW_PORT + N (same stack).
bench_gateway_extra() {
    local n=$1 port=$((BENCH_GW_PORT + $1))
    (ulimit -n "$BENCH_NOFILE"
     CHAT_GATEWAY_LISTEN="127.0.0.1:$port" chat_app_start "gateway$n" --listen "127.0.0.1:$port" \
        "$BENCH_BUILD_DIR/bin/chat-gateway")
    chat_app_wait "gateway$n" "127.0.0.1:$port"
}

bench_gateway_restart() {
    local name=${1:-gateway} port=${2:-$BENCH_GW_PORT}
    chat_app_stop "$name" chat-gateway
    (ulimit -n "$BENCH_NOFILE"
     CHAT_GATEWAY_LISTEN="127.0.0.1:$port" chat_app_start "$name" --listen "127.0.0.1:$port" \
        "$BENCH_BUILD_DIR/bin/chat-gateway")
    chat_app_wait "$name" "127.0.0.1:$port"
}

bench_pid() {
    chat_pid_alive "$CHAT_HOME/run/$1.pid" "${2:-}" || true
}
