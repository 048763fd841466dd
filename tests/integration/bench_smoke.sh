#!/usr/bin/env bash
# Correctness-only run of chat-bench against the stack that scripts/test started (settings from
# the environment and $CHAT_HOME/env): bench/scenarios/smoke.conf, ~50 connections, 200 msg/s
# for a few seconds, 5 connections reset mid-run and reconnected with sync. chat-bench exits
# non-zero when a message is lost (unacked or undelivered), duplicated, out of order or has a seq
# gap, so its exit code is the verdict. Speed is not asserted.
#
#   bench_smoke.sh [BUILD_DIR]     (default: $CHAT_BUILD_DIR, else <checkout>/build)
# Exits 77 (skipped) when no test stack is running.
set -euo pipefail

# shellcheck source=tests/integration/stack_lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/stack_lib.sh" "$@"
bench="$build/bin/chat-bench"
scenario="$src/bench/scenarios/smoke.conf"

if [[ ! -x "$bench" ]]; then
    echo "FAIL: $bench not built"
    exit 1
fi

# The checker itself: synthetic frames with a gap, a reordering, a duplicate, ... must be caught.
if "$bench" --self-test >"$tmp/self.log" 2>&1; then
    echo "PASS: chat-bench --self-test"
else
    cat "$tmp/self.log"
    echo "FAIL: chat-bench --self-test"
    exit 1
fi

# bench/run's sampler watches the run as it watches a ladder step (bench/lib/sample.py): the
# stack's processes, and at chat-bench's "sending" and "drained" nats-server's /varz and the
# database's counters; 2 s of the idle stack first, the baseline.
res="$tmp/results"
mkdir -p -- "$res"
nats_port=${CHAT_NATS_URL##*:}
nats_mon=${CHAT_NATS_MONITOR_PORT:-$((${nats_port%%/*} + 4000))} # as scripts/lib/services.sh chat_nats_addr
pg_port=$(sed -n 's/.*port=\([0-9]*\).*/\1/p' <<<"$CHAT_PG_DSN")
groups=()
for g in gateway worker nats redis; do
    [[ -r "$CHAT_HOME/run/$g.pid" ]] && groups+=("$g=$(head -n 1 "$CHAT_HOME/run/$g.pid")")
done
groups+=("postgres=postmaster:$CHAT_HOME/pg/postmaster.pid")
watch=(--varz "http://127.0.0.1:$nats_mon/varz" --pg "${CHAT_PG_BIN:-/usr/lib/postgresql/15/bin}/psql,$pg_port,chat")
python3 "$src/bench/lib/sample.py" "$res/001-baseline-platform-smoke-r1.samples.jsonl" "${watch[@]}" "${groups[@]}" &
sampler=$!
sleep 2
kill -TERM "$sampler"
wait "$sampler" || true
log="$res/002-ladder-platform-smoke-r1.log"
: >"$log"
python3 "$src/bench/lib/sample.py" "$res/002-ladder-platform-smoke-r1.samples.jsonl" --mark-log "$log" "${watch[@]}" \
    "${groups[@]}" &
sampler=$!

rc=0
timeout 240 "$bench" "$scenario" --warmup 1 --linger 1 --json "$res/002-ladder-platform-smoke-r1.json" 2>"$log" || rc=$?
kill -TERM "$sampler"
wait "$sampler" || true
cat -- "$log" >&2
cp -- "$res/002-ladder-platform-smoke-r1.json" "$tmp/smoke.json" 2>/dev/null || true
if [[ $rc -ne 0 ]]; then
    echo "FAIL: chat-bench smoke exited $rc (a correctness check failed, see the summary above)"
    [[ -r "$tmp/smoke.json" ]] && grep -A 16 '"checks"' "$tmp/smoke.json"
    exit 1
fi
# The exit code is the verdict; the JSON must agree with it.
if ! grep -q '"ok": true' "$tmp/smoke.json" || ! grep -q '"lost": 0' "$tmp/smoke.json"; then
    echo "FAIL: chat-bench exited 0 but its JSON report does not say ok with 0 lost"
    exit 1
fi
echo "PASS: chat-bench smoke: 0 lost, 0 duplicated, 0 out of order, 0 gaps"

# bench/lib/report.py's cost tables from that run, recorded as the 100 msg/s step of a ladder on
# 50 connections (so that its row is there whatever the step's verdict): the CPU of each process
# per message less idle, and the broker's and database's work per message, as numbers.
cat >"$res/runs.jsonl" <<EOF
{"id": "001-baseline-platform-smoke-r1", "row": "baseline", "system": "platform-smoke", "rep": 1, "rate": 0, "rc": 0, "cmd": "idle", "json": "", "samples": "001-baseline-platform-smoke-r1.samples.jsonl", "perf": 0, "shape": 50}
{"id": "002-ladder-platform-smoke-r1", "row": "ladder", "system": "platform-smoke", "rep": 1, "rate": 100, "rc": 0, "cmd": "chat-bench smoke", "json": "002-ladder-platform-smoke-r1.json", "samples": "002-ladder-platform-smoke-r1.samples.jsonl", "perf": 0, "shape": 50}
EOF
printf 'quick=1\nruns=1\ncores=%s\n' "$(nproc)" >"$res/machine.txt"
if ! python3 "$src/bench/lib/report.py" page "$res" "$tmp/page.md"; then
    echo "FAIL: bench/lib/report.py page failed on the smoke run's results"
    exit 1
fi
for mark in start end; do
    if ! grep '"mark":"'$mark'"' "$res/002-ladder-platform-smoke-r1.samples.jsonl" | grep -q '"nats_in_msgs"'; then
        echo "FAIL: the sampler's $mark mark has no nats-server counters"
        exit 1
    fi
done
# the warm-up's end moves the start: one mark at "sending", one at "measuring"
if [[ $(grep -c '"mark":"start"' "$res/002-ladder-platform-smoke-r1.samples.jsonl") -ne 2 ]] \
    || ! grep -q '"acked_warm": [1-9]' "$res/002-ladder-platform-smoke-r1.json"; then
    echo "FAIL: no second start mark at the end of the warm-up, or no message counted in the warm-up"
    exit 1
fi
cost=$(grep -E '^\| this platform, CHAT_NATS_SYNC=smoke \| 50 \| 100 msg/s \| [^|]* \| [0-9.]+ \| \*\*[0-9,.]+\*\*' "$tmp/page.md" || true)
idle=$(grep -E '^\| this platform, CHAT_NATS_SYNC=smoke \| 50 \| idle \(cores\) \|' "$tmp/page.md" || true)
work=$(grep -E '^\| this platform, CHAT_NATS_SYNC=smoke \| 50 \| 100 msg/s \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|' "$tmp/page.md" || true)
if [[ -z "$cost" || -z "$idle" || -z "$work" ]]; then
    sed -n '/^### Cost per message/,/^## /p' "$tmp/page.md"
    echo "FAIL: the page lacks the cost per message (idle and at load) or the broker's and database's work per message"
    exit 1
fi
printf '%s\n%s\n%s\n' "$idle" "$cost" "$work"
echo "PASS: bench/lib sample.py and report.py: CPU per message less idle, NATS and PostgreSQL work per message"
