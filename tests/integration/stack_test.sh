#!/usr/bin/env bash
# Integration test of the embedded stack that scripts/test started (settings from the
# environment and $CHAT_HOME/env):
#   - gateway and worker answer /healthz and /readyz with 200, /metrics has "# TYPE";
#   - scripts/up --no-build run again leaves exactly one process per pid file, the same ones;
#   - a malformed setting stops a binary with exit code 2 and one line naming the setting.
#
#   stack_test.sh [BUILD_DIR]     (default: $CHAT_BUILD_DIR, else <checkout>/build)
# Exits 77 (skipped) when no test stack is running.
set -euo pipefail

# shellcheck source=tests/integration/stack_lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/stack_lib.sh" "$@"
export CHAT_BUILD_DIR="$build"

# ------------------------------------------------------------ HTTP endpoints
for svc in gateway worker; do
    if [[ $svc == gateway ]]; then addr=$CHAT_GATEWAY_LISTEN; else addr=$CHAT_WORKER_LISTEN; fi
    for path in healthz readyz; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$addr/$path" || true)
        if [[ "$code" == 200 ]]; then
            pass "$svc GET /$path -> 200"
        else
            fail "$svc GET http://$addr/$path -> ${code:-no answer} (want 200)"
        fi
    done
    if curl -fsS --max-time 5 "http://$addr/metrics" >"$tmp/metrics" 2>"$tmp/metrics.err" \
        && grep -q '^# TYPE ' "$tmp/metrics"; then
        pass "$svc GET /metrics has '# TYPE'"
    else
        fail "$svc GET http://$addr/metrics: no 200 with '# TYPE' lines ($(head -c 200 "$tmp/metrics.err"))"
    fi
done

# ------------------------------------------------------------ idempotent scripts/up

# pid_of NAME: the pid in $CHAT_HOME/run/NAME.pid (empty if none).
pid_of() {
    local pid=''
    if [[ -r "$CHAT_HOME/run/$1.pid" ]]; then
        read -r pid <"$CHAT_HOME/run/$1.pid" || true
    fi
    printf '%s' "$pid"
}

# alive PID: a running process (not a zombie).
alive() {
    local line rest
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    rest=${line##*) }
    [[ "${rest:0:1}" != [ZX] ]]
}

# count_procs COMM MATCH KIND: live processes named COMM whose command line (KIND=cmdline) has
# the string MATCH, or whose environment (KIND=environ) has MATCH as a whole entry (tests that run
# beside this one start workers with CHAT_HOME=$CHAT_HOME/<their own>).
count_procs() {
    local comm=$1 match=$2 kind=$3 n=0 d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [[ "$(cat "$d/comm" 2>/dev/null)" == "$comm" ]] || continue
        alive "$p" || continue
        local how=-Fq
        [[ $kind == environ ]] && how=-Fxq
        if tr '\0' '\n' <"$d/$kind" 2>/dev/null | grep "$how" -- "$match"; then
            n=$((n + 1))
        fi
    done
    printf '%d' "$n"
}

redis_port=${CHAT_REDIS_URL##*:}
redis_port=${redis_port%%/*}

# check_one NAME: one process of service NAME for this CHAT_HOME.
check_one() {
    local n
    case $1 in
        gateway)  n=$(count_procs chat-gateway "CHAT_HOME=$CHAT_HOME" environ) ;;
        worker)   n=$(count_procs chat-worker "CHAT_HOME=$CHAT_HOME" environ) ;;
        nats)     n=$(count_procs nats-server "$CHAT_HOME/nats/nats.conf" cmdline) ;;
        redis)    n=$(count_procs redis-server "127.0.0.1:$redis_port" cmdline) ;;
        postgres) n=$(count_procs postgres "$CHAT_HOME/pg" cmdline) ;;
        *) n=1 ;;
    esac
    printf '%s' "$n"
}

names=(gateway worker nats redis postgres)
declare -A before
for name in "${names[@]}"; do
    before[$name]=$(pid_of "$name")
done

if "$src/scripts/up" --no-build >"$tmp/up.log" 2>&1; then
    pass "scripts/up --no-build again exits 0"
else
    fail "scripts/up --no-build again failed: $(tail -n 3 "$tmp/up.log" | tr '\n' ' ')"
fi

for name in "${names[@]}"; do
    pid=$(pid_of "$name")
    if [[ -z "$pid" ]]; then
        fail "$name: no pid file $CHAT_HOME/run/$name.pid"
        continue
    fi
    if ! alive "$pid"; then
        fail "$name: pid $pid of $CHAT_HOME/run/$name.pid is not running"
        continue
    fi
    if [[ "$pid" != "${before[$name]}" ]]; then
        fail "$name: pid changed from ${before[$name]:-none} to $pid (the second scripts/up restarted it)"
        continue
    fi
    n=$(check_one "$name")
    if [[ "$n" == 1 ]]; then
        pass "$name: still exactly one process (pid $pid)"
    else
        fail "$name: $n processes for this stack (want 1)"
    fi
done
shopt -s nullglob
for f in "$CHAT_HOME"/run/*.pid; do
    read -r pid <"$f" || true
    alive "${pid:-x}" || fail "pid file $f names no running process"
done
shopt -u nullglob

# ------------------------------------------------------------ bare TCP connections

# A TCP health check or a port scan opens and closes a connection without a request; the gateway
# and the worker's health server must stay up (it once crashed the gateway).
for pair in "gateway $CHAT_GATEWAY_LISTEN" "worker $CHAT_WORKER_LISTEN"; do
    name=${pair%% *}
    addr=${pair#* }
    for _ in 1 2 3; do
        (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" && exec 3>&-) 2>/dev/null || true
    done
    sleep 0.3
    if curl -fsS -o /dev/null --max-time 5 "http://$addr/healthz"; then
        pass "$name survives connections closed before a request"
    else
        fail "$name does not answer /healthz after bare TCP connects"
    fi
done

# ------------------------------------------------------------ malformed settings

# bad_setting BINARY NAME VALUE: BINARY with NAME=VALUE exits 2, printing one line that
# names NAME.
bad_setting() {
    local bin=$1 var=$2 val=$3 rc=0 lines
    if [[ ! -x "$bin" ]]; then
        fail "$bin not built"
        return
    fi
    (cd "$tmp" && env "$var=$val" timeout 20 "$bin" </dev/null >"$tmp/out" 2>"$tmp/err") || rc=$?
    lines=$(cat "$tmp/out" "$tmp/err" | grep -c . || true)
    if [[ $rc -eq 2 && $lines -eq 1 ]] && grep -Fq -- "$var" "$tmp/err"; then
        pass "$(basename -- "$bin") with $var='$val' exits 2: $(head -n 1 "$tmp/err")"
    else
        fail "$(basename -- "$bin") with $var='$val': exit $rc (want 2), $lines output lines (want 1 on stderr naming $var): $(head -c 300 "$tmp/err" | tr '\n' '|')"
    fi
}

bad_setting "$build/bin/chat-gateway" CHAT_NATS_URL notaurl
bad_setting "$build/bin/chat-worker" CHAT_PARTITIONS 0

finish stack_test
