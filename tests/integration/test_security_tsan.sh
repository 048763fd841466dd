#!/usr/bin/env bash
# ThreadSanitizer on the gateway: chat-gateway built with CHAT_SANITIZE=thread (its own build
# directory, the gateway target only) runs beside the stack's gateway, against the stack's NATS,
# Redis and workers, under chat-bench load that crosses every thread boundary of the gateway:
# deliveries and request replies from nats.c's threads onto the lws thread (gateway/gw_bus.c
# push/drain), presence answers from the Redis thread (gw_bus_call), the health thread, metrics
# read by /metrics while the loop updates them; connections reset and reconnected with sync.
# Passes when chat-bench finds nothing lost, duplicated or out of order and the gateway's log
# holds no ThreadSanitizer report (also none at exit after SIGTERM).
#
#   test_security_tsan.sh [BUILD_DIR]    BUILD_DIR: where chat-bench is (default $CHAT_BUILD_DIR)
# Runs only with CHAT_TSAN=1 (scripts/test sets it; the build takes about a minute), else
# exits 77 (skipped); exits 77 too when no stack runs. CHAT_TSAN_BUILD_DIR: the TSan build
# (default <checkout>/build-tsan).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
src=${CHAT_TEST_SOURCE_DIR:-$(cd -- "$here/../.." && pwd -P)}

if [[ "${CHAT_TSAN:-0}" != 1 ]]; then
    echo "SKIP: ThreadSanitizer run only with CHAT_TSAN=1 (scripts/test sets it)"
    exit 77
fi
if [[ -z "${CHAT_HOME:-}" || ! -r "$CHAT_HOME/env" ]]; then
    echo "SKIP: no running stack (CHAT_HOME/env not found); run it through scripts/test or scripts/sanitize"
    exit 77
fi
# shellcheck source=/dev/null
. "$CHAT_HOME/env"
build=$(realpath -m -- "${1:-${CHAT_BUILD_DIR:-$src/build}}")
tsan=$(realpath -m -- "${CHAT_TSAN_BUILD_DIR:-$src/build-tsan}")
bench="$build/bin/chat-bench"
[[ -x "$bench" ]] || { echo "FAIL: $bench not built"; exit 1; }

# ---------------------------------------------------------------- the TSan gateway
t0=$SECONDS
if [[ ! -f "$tsan/CMakeCache.txt" ]]; then
    cmake -S "$src" -B "$tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHAT_SANITIZE=thread >"$CHAT_HOME/logs/tsan-build.log" 2>&1 \
        || { tail -n 20 "$CHAT_HOME/logs/tsan-build.log"; echo "FAIL: cmake configure of $tsan"; exit 1; }
fi
if ! cmake --build "$tsan" -j2 --target chat-gateway >>"$CHAT_HOME/logs/tsan-build.log" 2>&1; then
    tail -n 30 "$CHAT_HOME/logs/tsan-build.log"
    echo "FAIL: building chat-gateway with ThreadSanitizer"
    exit 1
fi
echo "PASS: chat-gateway built with -fsanitize=thread in $((SECONDS - t0)) s ($tsan)"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=0
for ((i = 0; i < 50; i++)); do
    p=$((30000 + RANDOM % 20000))
    if port_free "$p"; then port=$p; break; fi
done
((port)) || { echo "FAIL: no free port"; exit 1; }
log="$CHAT_HOME/logs/test-security-tsan-gateway.log"
: >"$log"
tmp=$(mktemp -d)
gw=0
cleanup() {
    local rc=$?
    if ((gw)) && kill -0 "$gw" 2>/dev/null; then
        kill -KILL "$gw" 2>/dev/null || true
        wait "$gw" 2>/dev/null || true
    fi
    rm -rf -- "$tmp"
    exit "$rc"
}
trap cleanup EXIT

# halt_on_error=0: every report goes to the log, the test fails on any; the gateway's own pid
# file is not written (a test gateway beside the stack's).
TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 history_size=4 ${TSAN_OPTIONS:-}" \
CHAT_GATEWAY_LISTEN="127.0.0.1:$port" CHAT_WS_MAX_PER_IP=0 CHAT_WS_RATE=5000 CHAT_WS_USER_RATE=5000 \
    "$tsan/bin/chat-gateway" >>"$log" 2>&1 &
gw=$!
for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz" 2>/dev/null && break
    kill -0 "$gw" 2>/dev/null || { tail -n 30 "$log"; echo "FAIL: the TSan gateway exited while starting"; exit 1; }
    sleep 0.1
done
curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz" \
    || { tail -n 30 "$log"; echo "FAIL: the TSan gateway not ready within 30 s"; exit 1; }
echo "PASS: the TSan gateway (pid $gw) is ready on 127.0.0.1:$port"

# ---------------------------------------------------------------- load
# /metrics scraped while the loop runs (atomics read by the HTTP handler, histograms)
( for ((i = 0; i < 60; i++)); do curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/metrics" || true; sleep 0.5; done ) &
scraper=$!
rc=0
timeout 180 "$bench" --gateways "127.0.0.1:$port" --gateway-pid "$gw" --users 300 --conversations 150 --mix 0.5 \
    --group-size 4 --devices 1 --rate 400 --duration 15 --drain 30 --drop 40 --drop-at 6 --reconnect-after 1 \
    --json "$tmp/bench.json" >"$tmp/bench.out" 2>&1 || rc=$?
kill "$scraper" 2>/dev/null || true
wait "$scraper" 2>/dev/null || true
grep -E '^(connections|sending|acked|delivered|reconnect|checks|result)' "$tmp/bench.out" || cat "$tmp/bench.out"
if ((rc != 0)); then
    echo "FAIL: chat-bench against the TSan gateway exited $rc"
    exit 1
fi
echo "PASS: chat-bench through the TSan gateway: nothing lost, duplicated or out of order"

# ---------------------------------------------------------------- stop, then read the log
kill -TERM "$gw"
for ((i = 0; i < 200; i++)); do
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
done
st=0
wait "$gw" || st=$?
gw=0
reports=$(grep -c 'WARNING: ThreadSanitizer' "$log" || true)
if ((reports > 0)); then
    awk '/WARNING: ThreadSanitizer/{n++} n==1' "$log" | head -n 60
    echo "FAIL: $reports ThreadSanitizer report(s) in $log (the first above)"
    exit 1
fi
if ((st != 0)); then
    tail -n 30 "$log"
    echo "FAIL: the TSan gateway exited with status $st after SIGTERM"
    exit 1
fi
echo "PASS: no ThreadSanitizer report in $log (gateway stopped cleanly)"
