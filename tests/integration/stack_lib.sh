# The preamble of the integration scripts that run against the stack scripts/test started: source
# it after `set -euo pipefail` with the script's arguments ("$@"). Not run on its own.
#   - exits 77 (skipped) when no stack runs (no $CHAT_HOME/env), else reads the stack's settings;
#   - src: the checkout; build: the build directory ($1, else $CHAT_BUILD_DIR, else <checkout>/build);
#   - tmp: a directory removed at exit;
#   - pass MSG / fail MSG count into passed / failed; finish NAME prints the counts and returns
#     non-zero when one failed;
#   - ctl ARGS...: runs chatctl (60 s at most): stdout in $tmp/out, stderr in $tmp/err, exit code
#     in $rc; field KEY: the value of "KEY" on the first line of $tmp/out; why: the last run, in one line.
# shellcheck shell=bash

src=${CHAT_TEST_SOURCE_DIR:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)}
if [[ -z "${CHAT_HOME:-}" || ! -r "$CHAT_HOME/env" ]]; then
    echo "SKIP: no running stack (CHAT_HOME/env not found); run it through scripts/test"
    exit 77
fi
# shellcheck source=/dev/null
. "$CHAT_HOME/env"
build=$(realpath -m -- "${1:-${CHAT_BUILD_DIR:-$src/build}}")
chatctl="$build/bin/chatctl"

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

passed=0
failed=0
pass() { printf 'PASS: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }
finish() {
    printf '%s: %d passed, %d failed\n' "$1" "$passed" "$failed"
    ((failed == 0))
}

rc=0
ctl() {
    rc=0
    timeout 60 "$chatctl" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
}
field() {
    head -n 1 "$tmp/out" | sed -n -E "s/.*\"$1\":(\"([^\"]*)\"|([0-9]+|true|false)).*/\\2\\3/p"
}
why() { printf 'exit %s, out: %s, err: %s' "$rc" "$(head -c 400 "$tmp/out" | tr '\n' '|')" "$(head -c 400 "$tmp/err" | tr '\n' '|')"; }
