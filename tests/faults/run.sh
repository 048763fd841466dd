#!/usr/bin/env bash
# The fault suite: a multi-node platform on one machine, under chat-bench load, with one fault
# per scenario, and the verdict of fault_check (every acked message stored exactly once, seq
# contiguous, each sender's order kept, every online recipient with every message) plus what the
# scenario checks itself. Topology (brought up for each run of this script, torn down at the end):
#   - three nats-server nodes from deploy/nats/nats.conf (accounts and per-role permissions), each
#     in a network namespace of its own on a bridge (10.213.X.11-13), so one can be cut off;
#     JetStream streams with replicas 3 (CHAT_JS_REPLICAS=3);
#   - PostgreSQL and Redis of the suite's own (scripts/lib/services.sh, loopback ports);
#   - workers ingest-1 and ingest-2 (role ingest), svc-1 and svc-2 (api, notify, archive);
#   - gateways gw-1 and gw-2 behind fault_lb (a TCP balancer: a dead gateway's clients reconnect
#     to the other);
#   - load: chat-bench through the balancer (conversations 1:1 and groups of 4, open-loop sends,
#     clients that reconnect and sync), and fault_probe (one message in flight per partition: its
#     worst ack time is the recovery time).
#
#   run.sh [--rate N] [--keep-logs DIR] SCENARIO...      (default: every scenario)
# Scenarios: baseline ingest_kill ingest_pause gateway_kill nats_leader_kill nats_partition
#            pg_restart redis_restart notify_kill nats_power_loss
# Settings: CHAT_BUILD_DIR (binaries; default <checkout>/build), CHAT_FAULT_RATE (messages per
# second, default 200), CHAT_FAULT_LOG (CHAT_LOG of the platform's processes, default info; debug
# logs every send's way through gateway and ingest), CHAT_FAULT_RESULTS (a file the table rows
# are appended to, tab separated).
# Needs root (PostgreSQL runs as the postgres user; ip netns); exits 77 (skipped) without it.
# With --keep-logs DIR the logs of every scenario are copied to DIR/<scenario>/; without it those
# of a failed one go to $CHAT_HOME/logs/faults-<scenario>/ when CHAT_HOME is set (scripts/test's
# .local-test).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
outer_home=${CHAT_HOME:-}
src=${CHAT_TEST_SOURCE_DIR:-$(cd -- "$here/../.." && pwd -P)}
all_scenarios=(baseline ingest_kill ingest_pause gateway_kill nats_leader_kill nats_partition pg_restart redis_restart
    notify_kill nats_power_loss)

rate=${CHAT_FAULT_RATE:-200}
keep_logs=''
scenarios=()
while (($#)); do
    case $1 in
        --rate) rate=$2; shift 2 ;;
        --keep-logs) keep_logs=$2; shift 2 ;;
        -h|--help) sed -n '2,27s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
        *) scenarios+=("$1"); shift ;;
    esac
done
((${#scenarios[@]})) || scenarios=("${all_scenarios[@]}")
for s in "${scenarios[@]}"; do
    [[ " ${all_scenarios[*]} " == *" $s "* ]] || { echo "run.sh: unknown scenario $s" >&2; exit 2; }
done

if [[ $EUID -ne 0 ]]; then
    echo "SKIP: the fault suite needs root (PostgreSQL as the postgres user, network namespaces)"
    exit 77
fi
command -v ip >/dev/null || { echo "SKIP: no ip (iproute2)"; exit 77; }
build=$(realpath -m -- "${CHAT_BUILD_DIR:-$src/build}")
for b in chat-worker chat-gateway chatctl chat-bench fault_lb fault_probe fault_check fault_webhook fault_events; do
    [[ -x "$build/bin/$b" ]] || { echo "FAIL: $build/bin/$b not built"; exit 1; }
done

# shellcheck source=/dev/null
. "$src/scripts/lib/common.sh"
# shellcheck source=/dev/null
. "$src/scripts/lib/install.sh"
# shellcheck source=/dev/null
. "$src/scripts/lib/services.sh"
# shellcheck disable=SC2034  # read by common.sh
CHAT_PROG=faults
nats_bin=$(chat_nats_bin) || { echo "FAIL: no nats-server (scripts/up or scripts/test installs it)"; exit 1; }
chat_nats_has_sync "$nats_bin" || { echo "FAIL: $nats_bin is older than 2.10"; exit 1; }
conf="$src/deploy/nats/nats.conf"

# shellcheck source=tests/faults/lib.sh
. "$here/lib.sh"
# shellcheck source=tests/faults/power_loss.sh
. "$here/power_loss.sh"

trap topology_down EXIT
trap 'echo "run.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

failed=()
passed=()
for s in "${scenarios[@]}"; do
    printf '\n==================== %s (rate %s msg/s) ====================\n' "$s" "$rate"
    rc=0
    nats_topology=cluster
    [[ $s == nats_power_loss ]] && nats_topology=single
    topology_up || rc=$?
    if ((rc != 0)); then
        # once more from scratch: three nodes started at once sometimes come up unable to place a
        # replicated stream ("no suitable peers for placement") for minutes although routes and a
        # meta leader are there; a start that fails twice fails the scenario
        echo "run.sh: the topology did not come up; tearing it down and starting it once more"
        save_logs "$s-start"
        topology_down
        rc=0
        topology_up || rc=$?
    fi
    if ((rc == 0)); then
        "scenario_$s" || rc=$?
    fi
    sanitizer_check || rc=1
    # the table's result is the scenario's (its own checks too, not only fault_check's)
    if [[ -s "$results_run" ]] && [[ "$(tail -n 1 "$results_run" | cut -f1)" == "$s" ]]; then
        last=$(tail -n 1 "$results_run")
        sed -i '$d' "$results_run"
        awk -F'\t' -v OFS='\t' -v r="$( ((rc == 0)) && echo PASS || echo FAIL)" '{ $12 = r; print }' <<<"$last" >>"$results_run"
    else
        printf '%s\t%s\t\t\t\t\t\t\t\t\t\tFAIL\tno verdict (the topology or the load failed)\n' "$s" "$rate" >>"$results_run"
    fi
    if ((rc == 0)); then
        passed+=("$s")
        [[ -z "$keep_logs" ]] || save_logs "$s"
    else
        failed+=("$s")
        save_logs "$s"
    fi
    topology_down
done

printf '\n%-22s %6s %7s %7s %7s %9s %5s %9s %8s %8s %10s %s\n' scenario rate sent acked stored delivered lost \
    dup-store disorder seq-gaps recovery result
while IFS=$'\t' read -r sc r se ac st de lo du di ga re res _note; do
    printf '%-22s %6s %7s %7s %7s %9s %5s %9s %8s %8s %8s s %s\n' "$sc" "$r" "$se" "$ac" "$st" "$de" "$lo" "$du" "$di" "$ga" "$re" "$res"
done <"$results_run"
if [[ -n "${CHAT_FAULT_RESULTS:-}" ]]; then
    cat "$results_run" >>"$CHAT_FAULT_RESULTS"
fi
rm -f -- "$results_run"
printf '\npassed: %s\nfailed: %s\n' "${passed[*]:-none}" "${failed[*]:-none}"
((${#failed[@]} == 0))
