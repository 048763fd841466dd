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

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
src=${CHAT_TEST_SOURCE_DIR:-$(cd -- "$here/../.." && pwd -P)}

if [[ -z "${CHAT_HOME:-}" || ! -r "$CHAT_HOME/env" ]]; then
    echo "SKIP: no running stack (CHAT_HOME/env not found); run it through scripts/test"
    exit 77
fi
# shellcheck source=/dev/null
. "$CHAT_HOME/env"
build=$(realpath -m -- "${1:-${CHAT_BUILD_DIR:-$src/build}}")
bench="$build/bin/chat-bench"
scenario="$src/bench/scenarios/smoke.conf"

if [[ ! -x "$bench" ]]; then
    echo "FAIL: $bench not built"
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# The checker itself: synthetic frames with a gap, a reordering, a duplicate, ... must be caught.
if "$bench" --self-test >"$tmp/self.log" 2>&1; then
    echo "PASS: chat-bench --self-test"
else
    cat "$tmp/self.log"
    echo "FAIL: chat-bench --self-test"
    exit 1
fi

rc=0
timeout 240 "$bench" "$scenario" --json "$tmp/smoke.json" || rc=$?
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
