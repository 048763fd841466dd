# shellcheck shell=bash
# The broker's power loss (sourced by tests/faults/run.sh after lib.sh): the `single` NATS topology
# (one nats-server on loopback as scripts/up runs it: no cluster, replicas 1, CHAT_NATS_SYNC=1s,
# with deploy/nats's accounts and permissions) and the scenario nats_power_loss.

# single_nats_start [traced]: the one node, its store in $tmp/js-1; `traced` runs it under strace,
# which logs every pwrite64 and fsync of its files to $tmp/nats.trace (fsync_cut.py reads it)
single_nats_start() {
    local traced=${1:-} i child=''
    mkdir -p -- "$tmp/js-1"
    cp -- "$src/deploy/nats/accounts.conf" "$tmp/accounts.conf"
    cat >"$tmp/nats-single.conf" <<CONF
server_name: nats-1
listen: 127.0.0.1:$(nats_port)
http: 127.0.0.1:$(nats_mon)
max_payload: 1MB
max_subscriptions: 0
jetstream {
  store_dir: "$tmp/js-1"
  sync_interval: 1s
}
include ./accounts.conf
CONF
    local run_env=(NATS_GATEWAY_1_PASSWORD="$NATS_GATEWAY_1_PASSWORD" NATS_GATEWAY_2_PASSWORD="$NATS_GATEWAY_2_PASSWORD"
        NATS_WORKER_PASSWORD="$NATS_WORKER_PASSWORD"
        NATS_BACKEND_PASSWORD="$NATS_BACKEND_PASSWORD" NATS_SETUP_PASSWORD="$NATS_SETUP_PASSWORD"
        NATS_ADMIN_PASSWORD="$NATS_ADMIN_PASSWORD" NATS_SYS_PASSWORD="$NATS_SYS_PASSWORD")
    if [[ -z "$traced" ]]; then
        env "${run_env[@]}" "$nats_bin" -c "$tmp/nats-single.conf" >>"$logs/nats-1.log" 2>&1 &
        pids[nats1]=$!
        return 0
    fi
    env "${run_env[@]}" strace -f -y -qq -o "$tmp/nats.trace" -e trace=pwrite64,fsync,fdatasync,ftruncate \
        "$nats_bin" -c "$tmp/nats-single.conf" >>"$logs/nats-1.log" 2>&1 &
    strace_pid=$!
    pids[nats1]=''
    for ((i = 0; i < 100; i++)); do
        traced_server && break
        sleep 0.1
    done
    [[ -n "${pids[nats1]}" ]] || { echo "FAIL: nats-server did not start under strace"; return 1; }
}

# traced_server: the nats-server strace runs (its child, once it is nats-server: not before its
# exec) into pids[nats1]; false while there is none
traced_server() {
    local child
    child=$(cat /proc/"$strace_pid"/task/*/children 2>/dev/null | tr -s ' ' '\n' | head -n 1)
    [[ -n "$child" && "$(tr '\0' ' ' <"/proc/$child/cmdline" 2>/dev/null)" == *nats-server* ]] || return 1
    pids[nats1]=$child
}

# power_off: kill -9 of the traced nats-server, then strace ends (its log complete). Never waits
# for good: a server not found again is killed through strace's child list.
power_off() {
    [[ -n "${pids[nats1]:-}" ]] || traced_server || true
    kill -KILL "${pids[nats1]:-0}" 2>/dev/null || true
    unset 'pids[nats1]'
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$strace_pid" 2>/dev/null || break
        ((i % 20 == 19)) && traced_server && kill -KILL "${pids[nats1]}" 2>/dev/null && unset 'pids[nats1]'
        sleep 0.1
    done
    if kill -0 "$strace_pid" 2>/dev/null; then
        echo "  VIOLATION: strace (pid $strace_pid) still runs 10 s after the kill"
        kill -KILL "$strace_pid" 2>/dev/null || true
        return 1
    fi
    wait "$strace_pid" 2>/dev/null || true
}

# single_nats_up: the topology's NATS (topology_up calls it instead of the cluster's)
single_nats_up() {
    command -v strace >/dev/null || { echo "FAIL: strace is not installed (scripts/test installs it)"; return 1; }
    pick_ports nats natsmon || return 1
    single_nats_start traced || return 1
    wait_for 30 nats_healthy 1 || { echo "FAIL: nats-server did not come up"; tail -n 20 "$logs/nats-1.log"; return 1; }
}

# stream_last STREAM: its last sequence, from the node's monitoring (-1 when unreadable)
stream_last() {
    curl -fsS --max-time 2 "http://127.0.0.1:$(nats_mon)/jsz?streams=true&accounts=true" 2>/dev/null | python3 -c '
import json, sys
want, last = sys.argv[1], -1
for a in json.load(sys.stdin).get("account_details") or []:
    for s in a.get("stream_detail") or []:
        if s.get("name") == want:
            last = s["state"]["last_seq"]
print(last)' "$1" 2>/dev/null || echo -1
}

blk_fsyncs() { grep -c 'fsync([0-9]*<[^>]*\.blk>) = 0' "$tmp/nats.trace" 2>/dev/null || true; }
fsynced_since() { (($(blk_fsyncs) > $1)); } # N: a block was fsynced since the trace held N

# events_once PREFIX...: every message stored in a conversation whose id starts with a PREFIX is in
# CHAT_EVENTS exactly once, and nothing else of theirs is (fault_events)
events_once() {
    "$build/bin/fault_events" --nats "$(urls admin "$NATS_ADMIN_PASSWORD")" --pg-dsn "$CHAT_PG_DSN" "$@"
}

# revocation_kept PID USER: `chatctl revoke user USER` (PID) answered 0, wrote the revocation again
# if the cut took it, and the bucket has it now
revocation_kept() {
    local pid=$1 user=$2 rc=0 body got
    wait "$pid" || { echo "  VIOLATION: chatctl revoke failed: $(tr '\n' ' ' <"$logs/revoke.out")"; rc=1; }
    if grep -q '^jetstream/.*/KV_CHAT_REVOKED/msgs/[0-9]*\.blk: ' "$tmp/cut.txt"; then
        grep -q 'writing it again' "$logs/revoke.out" \
            || { echo "  VIOLATION: the cut took the revocation, and chatctl did not write it again"; rc=1; }
    fi
    body="{\"last_by_subj\":\"\$KV.CHAT_REVOKED.u.$user\"}"
    # shellcheck disable=SC2016
    got=$(nats_raw 1 admin "$NATS_ADMIN_PASSWORD" \
        "SUB _INBOX.f.* 1\r\nPUB \$JS.API.STREAM.MSG.GET.KV_CHAT_REVOKED _INBOX.f.1 ${#body}\r\n$body\r\n")
    if [[ "$got" != *'"message":'* ]]; then
        echo "  VIOLATION: the revocation of $user is not in CHAT_REVOKED after the restart: ${got:0:200}"
        rc=1
    else
        say "the revocation is kept ($(grep -c 'writing it again' "$logs/revoke.out") rewrite(s) by chatctl)"
    fi
    return $rc
}

# The broker's machine loses power 10 s into 30 s of load (CHAT_NATS_SYNC=1s): half a second after
# one of its fsyncs of a message block, nats-server is killed with -9 and every block is cut back
# to what its last fsync covered (fsync_cut.py over the strace of its writes); it is started again
# 5 s later on what is left. It must have lost writes it had acknowledged (CHAT_EVENTS' last
# sequence goes back), or the scenario proves nothing. Then: every acked message stored once,
# delivered, in order (the verdict), CHAT_EVENTS whole again (each stored message once: the
# ingest found the loss, chat_ingest_events_lost_total, and republished from PostgreSQL).
scenario_nats_power_loss() {
    load_start nats_power_loss 30 || return 1
    local rc=0 n0 in_before ev_before in_after ev_after lost
    at 10
    n0=$(blk_fsyncs)
    wait_for 5 fsynced_since "$n0" || { echo "  VIOLATION: no fsync of a block in 5 s"; rc=1; }
    # a revocation written now is not on the disk at the kill: chatctl must find it gone once the
    # broker is back and write it again before it answers
    local revoked="plr-$run" revoke_pid
    env CHAT_NATS_URL="$(urls backend "$NATS_BACKEND_PASSWORD")" CHAT_HOME="$CHAT_HOME" CHAT_PG_DSN="$CHAT_PG_DSN" \
        CHAT_JWT_SECRET="$CHAT_JWT_SECRET" CHAT_NATS_SYNC=1s \
        "$build/bin/chatctl" revoke user "$revoked" >"$logs/revoke.out" 2>&1 &
    revoke_pid=$!
    sleep 0.5
    in_before=$(stream_last CHAT_IN)
    ev_before=$(stream_last CHAT_EVENTS)
    power_off || return 1
    say "power loss: nats-server killed with -9 (last sequences just before: CHAT_IN $in_before, CHAT_EVENTS $ev_before)"
    python3 "$here/fsync_cut.py" "$tmp/nats.trace" "$tmp/js-1" >"$tmp/cut.txt" 2>&1 \
        || { echo "  VIOLATION: fsync_cut.py failed: $(tail -n 3 "$tmp/cut.txt")"; return 1; }
    sed 's/^/  cut: /' "$tmp/cut.txt" | tail -n 8
    at 15
    single_nats_start
    wait_for 60 nats_healthy 1 || { echo "  VIOLATION: nats-server not healthy 60 s after its restart"; return 1; }
    in_after=$(stream_last CHAT_IN)
    ev_after=$(stream_last CHAT_EVENTS)
    say "nats-server started again on what its disk kept (last sequences once the clients were back: CHAT_IN $in_after, CHAT_EVENTS $ev_after)"
    # the broker acknowledges a write once it is in the block it appends to: what was cut of
    # CHAT_EVENTS' blocks had been acknowledged (the ingest's check below says which it missed)
    if ! grep -q '^jetstream/.*/CHAT_EVENTS/msgs/[0-9]*\.blk: ' "$tmp/cut.txt"; then
        echo "  VIOLATION: the cut took nothing of CHAT_EVENTS' blocks: nothing was tested"
        rc=1
    fi
    revocation_kept "$revoke_pid" "$revoked" || rc=1
    load_wait
    # what is left in CHAT_IN (a work queue: messages no ingest acked); nothing, once drained
    # shellcheck disable=SC2016
    say "CHAT_IN after the drain: $(js_api 1 '$JS.API.STREAM.INFO.CHAT_IN' | grep -o '"state":{[^}]*}' | head -n 1)"
    verdict nats_power_loss "power loss of the broker (CHAT_NATS_SYNC=1s) at 10 s: its store cut to the last fsync, back at 15 s" || rc=1
    events_once "$run-" "$probe_prefix" || rc=1
    lost=$(($(metric "${port[ingest-1]}" chat_ingest_events_lost_total) + $(metric "${port[ingest-2]}" chat_ingest_events_lost_total)))
    if ((lost < 1)); then
        echo "  VIOLATION: no ingest worker found the lost CHAT_EVENTS writes (chat_ingest_events_lost_total $lost)"
        rc=1
    else
        say "the ingest found the loss $lost time(s) and republished from PostgreSQL"
    fi
    no_violations || rc=1
    return $rc
}
