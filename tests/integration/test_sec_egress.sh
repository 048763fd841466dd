#!/usr/bin/env bash
# Requests to addresses someone else chose (issue 19, finding 9): the notify role's webhook POST
# connects to public addresses only, unless CHAT_EGRESS_ALLOW names the range. Against the stack's
# NATS and PostgreSQL, with a webhook receiver on 127.0.0.1 (tests/faults/fault_webhook) and
# workers of its own (the stack's worker, notify without a webhook, is stopped meanwhile and
# started again with scripts/up --no-build at the end):
#   1. CHAT_EGRESS_ALLOW empty, webhook http://localhost:PORT/push (a name that resolves to
#      loopback): a message for an offline member is due, the push is refused before any
#      connection (the receiver gets nothing at all) and the log names the refused address;
#   2. the same receiver with CHAT_EGRESS_ALLOW=127.0.0.1: a push arrives (so 1 was the policy).
# Environment: the stack's settings, CHAT_BUILD_DIR, CHAT_TEST_SOURCE_DIR.
set -uo pipefail

SRC=${CHAT_TEST_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILD=${CHAT_BUILD_DIR:-$SRC/build}
: "${CHAT_HOME:?the settings of the stack are not in the environment}"
TMP=$(mktemp -d)
FAILED=0
PIDS=()
STOPPED_STACK_WORKER=0
TAG="egr$$r$RANDOM"

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+: $2}"; FAILED=1; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 12000)) # below the kernel's ephemeral range (32768-)
        port_free "$p" && { echo "$p"; return 0; }
    done
    return 1
}
stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if ((STOPPED_STACK_WORKER)); then
        CHAT_BUILD_DIR=$BUILD "$SRC/scripts/up" --no-build >>"$CHAT_HOME/logs/test_sec_egress-up.log" 2>&1 \
            || echo "test_sec_egress: scripts/up --no-build could not restore the stack's worker"
    fi
    rm -rf -- "$TMP"
}
trap cleanup EXIT

# The stack's worker runs notify without a webhook and would ack the pushes this test wants tried.
pid=$(cat "$CHAT_HOME/run/worker.pid" 2>/dev/null || true)
if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == chat-worker ]]; then
    STOPPED_STACK_WORKER=1
    stop_pid "$pid"
fi

hport=$(free_port)
"$BUILD/bin/fault_webhook" "$hport" "$TMP/pushes.jsonl" 0 >"$TMP/webhook.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do port_free "$hport" || break; sleep 0.1; done

# start_worker NAME WEBHOOK ALLOW: a worker with every role, a 1 s grace; its pid in WORKER_PID.
start_worker() {
    local name=$1 webhook=$2 allow=$3 wport
    wport=$(free_port)
    env CHAT_WORKER_LISTEN="127.0.0.1:$wport" CHAT_PUSH_WEBHOOK_URL="$webhook" CHAT_PUSH_GRACE=1s \
        CHAT_EGRESS_ALLOW="$allow" "$BUILD/bin/chat-worker" >"$TMP/$name.log" 2>&1 &
    WORKER_PID=$!
    PIDS+=("$WORKER_PID")
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$wport/readyz" 2>/dev/null && return 0
        sleep 0.2
    done
    fail "start_$name" "worker not ready in 20 s: $(tail -n 5 "$TMP/$name.log" | tr '\n' ' ')"
    return 1
}
# message CONV: a conversation of two, one message from the first; the second never connects.
message() {
    "$BUILD/bin/chatctl" conv create "$1" "${1}_a" "${1}_b" >/dev/null 2>&1 \
        && "$BUILD/bin/chatctl" send "$1" --from "${1}_a" "for the offline member" >/dev/null 2>&1
}
# wait_log FILE PATTERN SECONDS
wait_log() {
    for _ in $(seq $(($3 * 5))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
    return 1
}

# ---- 1. no egress allowed: loopback (by name) is refused, nothing reaches the receiver
if start_worker refused "http://localhost:$hport/push" ''; then
    message "${TAG}_1" || fail message_1 "chatctl failed"
    if wait_log "$TMP/refused.log" 'event=push_failed.*egress refused: \(127.0.0.1\|::1\) (loopback)' 15; then
        pass webhook_to_loopback_refused_and_logged
    else
        fail webhook_to_loopback_refused_and_logged "no egress refusal in the worker's log: $(grep -m3 'event=push' "$TMP/refused.log" | tr '\n' ' ')"
    fi
    sleep 1
    if [[ ! -s "$TMP/pushes.jsonl" ]]; then
        pass receiver_got_nothing
    else
        fail receiver_got_nothing "the receiver on loopback got: $(head -c 300 "$TMP/pushes.jsonl")"
    fi
    stop_pid "$WORKER_PID"
fi

# ---- 2. the range allowed by name: the push arrives
if start_worker allowed "http://127.0.0.1:$hport/push" 127.0.0.1; then
    message "${TAG}_2" || fail message_2 "chatctl failed"
    if wait_log "$TMP/pushes.jsonl" "${TAG}_2_b" 15; then
        pass webhook_allowed_by_chat_egress_allow
    else
        fail webhook_allowed_by_chat_egress_allow "no push in 15 s: $(grep -m3 'event=push' "$TMP/allowed.log" | tr '\n' ' ')"
    fi
    stop_pid "$WORKER_PID"
fi

if ((FAILED)); then
    echo "test_sec_egress: FAILED"
    exit 1
fi
echo "test_sec_egress: all passed"
