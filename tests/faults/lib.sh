# shellcheck shell=bash
# The fault suite's topology, load and scenarios (sourced by tests/faults/run.sh, which sets src,
# build, nats_bin, conf, rate and sources scripts/lib/{common,install,services}.sh first).

results_run=$(mktemp /tmp/chat-faults-results.XXXXXX)
tmp=''
declare -A pids=()      # name -> pid of what the suite started
declare -A port=()      # name -> loopback port
# the NATS topology of a scenario: `cluster` (three nodes in network namespaces, replicas 3, every
# write fsynced) or `single` (one node on loopback as scripts/up runs it, replicas 1, fsync once a
# second: tests/faults/power_loss.sh); run.sh sets it per scenario
nats_topology=cluster
services=0
net=0

# ---------------------------------------------------------------- small helpers

say() { printf '[faults +%5.1fs] %s\n' "$(now_s)" "$*"; }
now_s() { local t=${EPOCHREALTIME/./}; printf '%d.%d' $(((t - t_start) / 1000000)) $((((t - t_start) / 100000) % 10)); }
t_start=${EPOCHREALTIME/./}
now_ms() { local t=${EPOCHREALTIME/./}; printf '%d' $((t / 1000)); }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_ports NAME...: a free loopback port each, below the kernel's ephemeral range (so the
# suite's own 400 client connections cannot take one before its server binds it)
pick_ports() {
    local name p lo
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    ((lo > 12000)) || lo=32768
    for name in "$@"; do
        for ((i = 0; i < 200; i++)); do
            p=$((10000 + RANDOM % (lo - 10000)))
            port_free "$p" || continue
            [[ " ${port[*]:-} " == *" $p "* ]] && continue
            port[$name]=$p
            break
        done
        [[ -n "${port[$name]:-}" ]] || { echo "FAIL: no free port"; return 1; }
    done
}

# wait_for SECONDS CMD...: CMD every 0.2 s until it succeeds (false after SECONDS).
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# metric PORT NAME: the sum of every sample of NAME (any labels) at http://127.0.0.1:PORT/metrics
metric() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) printf "%d\n", s; else print -1 }'
}
ready() { curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; }
alive() { [[ -n "${pids[$1]:-}" ]] && kill -0 "${pids[$1]}" 2>/dev/null; }

# stop NAME [SIGNAL]: SIGNAL (default TERM; up to 10 s, then KILL) to a process of the suite.
stop() {
    local name=$1 sig=${2:-TERM} pid=${pids[$1]:-}
    [[ -n "$pid" ]] || return 0
    if [[ $sig != TERM ]] && kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        [[ $sig == STOP ]] && return 0
    fi
    chat_stop_pid "$pid"
    unset "pids[$name]"
}

# stop_all: every process of the scenario, paused ones woken first (gateways and workers before
# what they depend on).
stop_all() {
    local name
    for name in "${!pids[@]}"; do
        kill -CONT "${pids[$name]}" 2>/dev/null || true
    done
    for name in lb bench probe gw-1 gw-2 svc-1 svc-2 ingest-1 ingest-2 webhook; do stop "$name"; done
    for name in "${!pids[@]}"; do stop "$name"; done
}

# ---------------------------------------------------------------- network namespaces

ns_name() { printf 'chf%s-%s' "$$" "$1"; }
br_name() { printf 'chf%sb' "$$"; }
veth_name() { printf 'chf%sv%s' "$$" "$1"; }
node_ip() { if [[ $nats_topology == single ]]; then printf '127.0.0.1'; else printf '10.213.%s.%s' "$subnet" $((10 + $1)); fi; }
nats_port() { printf '%s' "${port[nats]:-4222}"; }    # the client port (each node has its own address)
nats_mon() { printf '%s' "${port[natsmon]:-8222}"; }  # the monitoring port

net_up() {
    local k
    subnet=''
    for ((k = 0; k < 50; k++)); do
        local x=$((1 + RANDOM % 250))
        ip -4 addr show | grep -q "10\.213\.$x\." && continue
        subnet=$x
        break
    done
    [[ -n "$subnet" ]] || { echo "FAIL: no free 10.213.x.0/24"; return 1; }
    net=1
    ip link add "$(br_name)" type bridge
    ip addr add "10.213.$subnet.1/24" dev "$(br_name)"
    ip link set "$(br_name)" up
    for k in 1 2 3; do
        ip netns add "$(ns_name "$k")"
        ip link add "$(veth_name "$k")" type veth peer name "chf$$p$k"
        ip link set "chf$$p$k" netns "$(ns_name "$k")"
        ip link set "$(veth_name "$k")" master "$(br_name)" up
        ip -n "$(ns_name "$k")" link set lo up
        ip -n "$(ns_name "$k")" link set "chf$$p$k" name eth0
        ip -n "$(ns_name "$k")" addr add "$(node_ip "$k")/24" dev eth0
        ip -n "$(ns_name "$k")" link set eth0 up
    done
}

net_down() {
    ((net)) || return 0
    local k
    for k in 1 2 3; do ip netns del "$(ns_name "$k")" 2>/dev/null || true; done
    ip link del "$(br_name)" 2>/dev/null || true
    net=0
}

# partition K / heal K: cut node K off from everyone (its link on the bridge down), and back.
partition() { ip link set "$(veth_name "$1")" down; }
heal() { ip link set "$(veth_name "$1")" up; }

# ---------------------------------------------------------------- NATS

secret() { printf 'p%s' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"; }

nats_start() { # K
    local k=$1
    mkdir -p -- "$tmp/js-$k"
    ip netns exec "$(ns_name "$k")" env \
        NATS_SERVER_NAME="nats-$k" NATS_LISTEN="$(node_ip "$k"):4222" NATS_HTTP="$(node_ip "$k"):8222" \
        NATS_CLUSTER_LISTEN="$(node_ip "$k"):6222" \
        NATS_ROUTE_1="nats-route://route:$NATS_ROUTE_PASSWORD@$(node_ip 1):6222" \
        NATS_ROUTE_2="nats-route://route:$NATS_ROUTE_PASSWORD@$(node_ip 2):6222" \
        NATS_ROUTE_3="nats-route://route:$NATS_ROUTE_PASSWORD@$(node_ip 3):6222" \
        NATS_STORE_DIR="$tmp/js-$k" \
        NATS_ROUTE_PASSWORD="$NATS_ROUTE_PASSWORD" NATS_GATEWAY_1_PASSWORD="$NATS_GATEWAY_1_PASSWORD" \
        NATS_GATEWAY_2_PASSWORD="$NATS_GATEWAY_2_PASSWORD" \
        NATS_WORKER_PASSWORD="$NATS_WORKER_PASSWORD" NATS_BACKEND_PASSWORD="$NATS_BACKEND_PASSWORD" \
        NATS_SETUP_PASSWORD="$NATS_SETUP_PASSWORD" \
        NATS_ADMIN_PASSWORD="$NATS_ADMIN_PASSWORD" NATS_SYS_PASSWORD="$NATS_SYS_PASSWORD" \
        "$nats_bin" -c "$conf" >>"$logs/nats-$k.log" 2>&1 &
    pids[nats$k]=$!
}

nats_healthy() { curl -fsS --max-time 2 "http://$(node_ip "$1"):$(nats_mon)/healthz" 2>/dev/null | grep -q '"ok"'; }
routes_of() {
    curl -fsS --max-time 2 "http://$(node_ip "$1"):8222/routez" 2>/dev/null \
        | grep -o '"remote_name": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | sort -u | tr '\n' ' '
}
cluster_formed() {
    local k want
    for k in 1 2 3; do
        case $k in 1) want='nats-2 nats-3 ' ;; 2) want='nats-1 nats-3 ' ;; 3) want='nats-1 nats-2 ' ;; esac
        [[ "$(routes_of "$k")" == "$want" ]] && nats_healthy "$k" || return 1
    done
}

urls() { # USER PASSWORD
    local k out=''
    if [[ $nats_topology == single ]]; then printf 'nats://%s:%s@127.0.0.1:%s\n' "$1" "$2" "$(nats_port)"; return; fi
    for k in 1 2 3; do out+="${out:+,}nats://$1:$2@$(node_ip "$k"):4222"; done
    printf '%s\n' "$out"
}

# nats_raw NODE USER PASSWORD PROTO: NATS protocol lines to node NODE as USER, a PING after them;
# prints the server's lines until the PONG and one MSG with its payload (up to 5 s).
nats_raw() {
    local node=$1 user=$2 pass=$3 proto=$4 fd line got_msg=0 deadline
    exec {fd}<>"/dev/tcp/$(node_ip "$node")/$(nats_port)" 2>/dev/null || return 1
    read -r -t 5 line <&"$fd" || { exec {fd}>&-; return 1; }
    printf 'CONNECT {"verbose":false,"pedantic":false,"user":"%s","pass":"%s","protocol":1,"headers":true,"no_responders":true,"name":"faults"}\r\n%bPING\r\n' \
        "$user" "$pass" "$proto" >&"$fd"
    deadline=$((SECONDS + 5))
    while ((SECONDS < deadline)) && read -r -t 5 line <&"$fd"; do
        line=${line%$'\r'}
        case $line in
            PING) printf 'PONG\r\n' >&"$fd" ;;
            MSG\ *|HMSG\ *) got_msg=1; read -r -t 5 line <&"$fd" && printf '%s\n' "${line%$'\r'}" ;;
        esac
        ((got_msg)) && break
    done
    exec {fd}>&-
}
# js_api NODE SUBJECT: the JetStream API's answer to the admin user
js_api() {
    # shellcheck disable=SC2016
    nats_raw "$1" admin "$NATS_ADMIN_PASSWORD" "SUB _INBOX.f.* 1\r\nPUB $2 _INBOX.f.1 0\r\n\r\n"
}
# stream_leader [NODE...]: the server name leading CHAT_IN, asked of the first node that answers
stream_leader() {
    local k out
    for k in "${@:-1 2 3}"; do
        # shellcheck disable=SC2016
        out=$(js_api "$k" '$JS.API.STREAM.INFO.CHAT_IN' 2>/dev/null) || continue
        out=$(grep -o '"leader":"[^"]*"' <<<"$out" | head -n 1 | cut -d'"' -f4)
        [[ -n "$out" ]] && { printf '%s\n' "$out"; return 0; }
    done
    return 1
}
replicated() { # STREAM: 3 replicas, a leader and two current followers (single: the one copy)
    local info
    info=$(js_api 1 "\$JS.API.STREAM.INFO.$1") || return 1
    if [[ $nats_topology == single ]]; then grep -q '"num_replicas":1' <<<"$info"; return; fi
    grep -q '"num_replicas":3' <<<"$info" && [[ $(grep -o '"current":true' <<<"$info" | wc -l) -eq 2 ]]
}
# gateways_on K: the gateway connections node K holds (its monitor's connz, by client name)
gateways_on() {
    curl -fsS --max-time 2 "http://$(node_ip "$1"):$(nats_mon)/connz?limit=1024" 2>/dev/null | grep -c '"name": *"gateway"' || true
}
# notify_backlog: pending + ack pending of the notify role's consumer on CHAT_EVENTS (-1 when not
# readable); CHAT_EVENTS keeps every event, so only that consumer's position says what is left
notify_backlog() {
    local info total=0 k v
    # shellcheck disable=SC2016
    info=$(js_api 1 '$JS.API.CONSUMER.INFO.CHAT_EVENTS.chat-notify-events') || { echo -1; return; }
    grep -q '"num_pending"' <<<"$info" || { echo -1; return; }
    for k in num_pending num_ack_pending; do
        v=$(grep -o "\"$k\":[0-9]*" <<<"$info" | head -n 1 | cut -d: -f2)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------- the platform's processes

start_worker() { # NAME ROLES
    local name=$1 roles=$2
    env "${common_env[@]}" CHAT_NATS_URL="$(urls worker "$NATS_WORKER_PASSWORD")" \
        CHAT_JS_REPLICAS="$([[ $nats_topology == single ]] && echo 1 || echo 3)" \
        CHAT_WORKER_LISTEN="127.0.0.1:${port[$name]}" CHAT_WORKER_ROLES="$roles" \
        "$build/bin/chat-worker" >>"$logs/$name.log" 2>&1 &
    pids[$name]=$!
}
start_gateway() { # NAME (gw-N: NATS user gateway-N, its CHAT_GATEWAY_ID, deploy/nats/accounts.conf)
    local name=$1 n=${1#gw-} pw
    pw=NATS_GATEWAY_${n}_PASSWORD
    env "${common_env[@]}" CHAT_NATS_URL="$(urls "gateway-$n" "${!pw}")" CHAT_GATEWAY_ID="gateway-$n" CHAT_DEV_MODE=0 \
        CHAT_GATEWAY_LISTEN="127.0.0.1:${port[$name]}" CHAT_WS_MAX_PER_IP=0 \
        "$build/bin/chat-gateway" >>"$logs/$name.log" 2>&1 &
    pids[$name]=$!
}
wait_ready() { # NAME [SECONDS]
    local name=$1 i
    for ((i = 0; i < ${2:-60} * 5; i++)); do
        ready "${port[$name]}" && return 0
        alive "$name" || { echo "FAIL: $name exited while starting; last lines:"; tail -n 20 "$logs/$name.log"; return 1; }
        sleep 0.2
    done
    echo "FAIL: $name not ready: $(curl -sS --max-time 2 "http://127.0.0.1:${port[$name]}/readyz" 2>&1 | tr '\n' ' ')"
    return 1
}
owned() { # the partitions the ingest workers own, summed
    local a b
    a=$(metric "${port[ingest-1]}" chat_ingest_partitions_owned)
    b=$(metric "${port[ingest-2]}" chat_ingest_partitions_owned)
    echo $(((a < 0 ? 0 : a) + (b < 0 ? 0 : b)))
}
all_owned() { [[ "$(owned)" -eq 16 ]]; }

topology_up() {
    local t0=$SECONDS k
    tmp=$(mktemp -d /tmp/chat-faults.XXXXXX)
    chmod 755 "$tmp"
    export CHAT_HOME="$tmp/home"
    mkdir -p -- "$CHAT_HOME/logs"
    logs="$CHAT_HOME/logs"
    pids=()
    port=()
    pick_ports pg redis ingest-1 ingest-2 svc-1 svc-2 gw-1 gw-2 lb webhook || return 1
    export CHAT_PG_DSN="host=127.0.0.1 port=${port[pg]} dbname=chat user=chat"
    export CHAT_REDIS_URL="redis://127.0.0.1:${port[redis]}"
    export NATS_ROUTE_PASSWORD NATS_GATEWAY_1_PASSWORD NATS_GATEWAY_2_PASSWORD NATS_WORKER_PASSWORD NATS_BACKEND_PASSWORD NATS_ADMIN_PASSWORD \
        NATS_SYS_PASSWORD NATS_SETUP_PASSWORD
    NATS_SETUP_PASSWORD=$(secret)
    NATS_ROUTE_PASSWORD=$(secret)
    NATS_GATEWAY_1_PASSWORD=$(secret)
    NATS_GATEWAY_2_PASSWORD=$(secret)
    NATS_WORKER_PASSWORD=$(secret)
    NATS_BACKEND_PASSWORD=$(secret)
    NATS_ADMIN_PASSWORD=$(secret)
    NATS_SYS_PASSWORD=$(secret)
    if [[ $nats_topology == single ]]; then
        single_nats_up || return 1
    else
        net_up || return 1
        for k in 1 2 3; do nats_start "$k"; done
        wait_for 60 cluster_formed || { echo "FAIL: the NATS cluster did not form (routes: $(routes_of 1)/ $(routes_of 2)/ $(routes_of 3))"; return 1; }
    fi
    services=1
    chat_pg_start >"$logs/services.log" 2>&1 || { echo "FAIL: PostgreSQL did not start"; tail -n 20 "$logs/services.log"; return 1; }
    chat_redis_start >>"$logs/services.log" 2>&1
    chat_redis_wait >>"$logs/services.log" 2>&1
    CHAT_JWT_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    export CHAT_JWT_SECRET
    common_env=(
        CHAT_HOME="$CHAT_HOME" CHAT_PG_DSN="$CHAT_PG_DSN" CHAT_REDIS_URL="$CHAT_REDIS_URL" CHAT_PARTITIONS=16
        CHAT_JWT_SECRET="$CHAT_JWT_SECRET" CHAT_LOG="${CHAT_FAULT_LOG:-info}" CHAT_ARCHIVE_URL="file://$tmp/archive"
        CHAT_PUSH_GRACE=2s CHAT_PUSH_WEBHOOK_URL="http://127.0.0.1:${port[webhook]}/push" CHAT_EGRESS_ALLOW=127.0.0.1
        CHAT_NATS_SYNC="$([[ $nats_topology == single ]] && echo 1s || echo always)"
    )
    # the push receiver: 2 ms per push, every body recorded
    "$build/bin/fault_webhook" "${port[webhook]}" "$tmp/pushes.jsonl" 2 >>"$logs/webhook.log" 2>&1 &
    pids[webhook]=$!
    env "${common_env[@]}" "$build/bin/chat-worker" migrate >"$logs/migrate.log" 2>&1 \
        || { echo "FAIL: chat-worker migrate"; tail -n 20 "$logs/migrate.log"; return 1; }
    start_worker ingest-1 ingest
    wait_ready ingest-1 || return 1
    local s
    for s in CHAT_IN CHAT_BULK CHAT_EVENTS; do
        wait_for 60 replicated "$s" \
            || { echo "FAIL: stream $s is not replicated 3 times: $(js_api 1 "\$JS.API.STREAM.INFO.$s" | head -c 600)"; return 1; }
    done
    start_worker ingest-2 ingest
    start_worker svc-1 api,notify,archive
    start_worker svc-2 api,notify,archive
    start_gateway gw-1
    start_gateway gw-2
    for s in ingest-2 svc-1 svc-2 gw-1 gw-2; do wait_ready "$s" || return 1; done
    "$build/bin/fault_lb" "${port[lb]}" "${port[gw-1]},${port[gw-2]}" >>"$logs/lb.log" 2>&1 &
    pids[lb]=$!
    wait_for 10 all_owned || { echo "FAIL: the ingest workers own $(owned) of 16 partitions"; return 1; }
    wait_for 10 ready "${port[lb]}" || { echo "FAIL: the balancer does not answer"; return 1; }
    say "topology up in $((SECONDS - t0)) s: NATS $(node_ip 1),$(node_ip 2),$(node_ip 3) (CHAT_IN leader $(stream_leader 1 2 3)), PostgreSQL :${port[pg]}, Redis :${port[redis]}, gateways :${port[gw-1]} :${port[gw-2]} behind :${port[lb]}"
}

topology_down() {
    [[ -n "$tmp" ]] || return 0
    stop_all
    if ((services)); then
        chat_redis_stop >/dev/null 2>&1 || true
        chat_pg_stop >/dev/null 2>&1 || true
        services=0
    fi
    net_down
    rm -rf -- "$tmp"
    tmp=''
}

# sanitizer_check: stops every process of the scenario (so that LeakSanitizer runs at their exit)
# and fails when a log holds a sanitizer report (scripts/test builds everything with ASan and
# UBSan); prints the first one.
sanitizer_check() {
    local hits
    [[ -n "$tmp" ]] || return 0
    stop_all
    hits=$(grep -l -E 'ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:' "$logs"/*.log 2>/dev/null || true)
    [[ -z "$hits" ]] && return 0
    echo "FAIL: sanitizer reports in ${hits//$'\n'/ }"
    # the whole first report (a leak's report lists every object of a cycle, direct ones first)
    grep -h -m 1 -A 120 -E 'ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:' $hits | head -n 120
    return 1
}

save_logs() { # SCENARIO
    local dest=${keep_logs:+$keep_logs/$1}
    if [[ -z "$dest" && -n "${outer_home:-}" && -d "$outer_home" ]]; then dest="$outer_home/logs/faults-$1"; fi
    [[ -n "$dest" && -n "$tmp" ]] || return 0
    mkdir -p -- "$dest"
    cp -r -- "$logs"/. "$dest"/ 2>/dev/null || true
    cp -- "$tmp"/*.json "$tmp"/*.jsonl "$dest"/ 2>/dev/null || true
    say "logs of $1 kept in $dest"
}

# ---------------------------------------------------------------- load

# load_start NAME DURATION: the probe and chat-bench through the balancer; returns once the
# bench's first message is stored (t_send, epoch ms).
load_start() {
    local name=$1 duration=$2 c
    run="f$(printf '%s' "$name" | tr -d '_' | cut -c1-10)$(date +%s)"
    probe_prefix="pr$run"
    probe_user="probe-$run"
    local backend_env=(CHAT_NATS_URL="$(urls backend "$NATS_BACKEND_PASSWORD")" CHAT_JWT_SECRET="$CHAT_JWT_SECRET"
        CHAT_HOME="$CHAT_HOME" CHAT_PARTITIONS=16 CHAT_PG_DSN="$CHAT_PG_DSN")
    for c in $(env "${backend_env[@]}" "$build/bin/fault_probe" --list "$probe_prefix"); do
        env "${backend_env[@]}" "$build/bin/chatctl" conv create "$c" "$probe_user" >/dev/null 2>>"$logs/chatctl.log" \
            || { echo "FAIL: chatctl conv create $c"; return 1; }
    done
    env "${backend_env[@]}" "$build/bin/fault_probe" --gateway "127.0.0.1:${port[lb]}" --user "$probe_user" \
        --prefix "$probe_prefix" --duration $((duration + 8)) --drain 90 --out "$tmp/probe.json" \
        >"$logs/probe.out" 2>&1 &
    pids[probe]=$!
    env "${backend_env[@]}" timeout $((duration + 300)) "$build/bin/chat-bench" --gateways "127.0.0.1:${port[lb]}" \
        --prefix "$run" --users 400 --conversations 200 --mix 0.5 --group-size 4 --rate "$rate" \
        --duration "$duration" --drain 90 --retries 6 --ramp-rate 1000 --json "$tmp/bench.json" \
        >"$logs/bench.out" 2>&1 &
    pids[bench]=$!
    local i
    for ((i = 0; i < 600; i++)); do
        if [[ "$(pg_value "SELECT count(*) > 0 FROM messages WHERE conversation_id LIKE '$run-c%'")" == t ]]; then
            t_send=$(now_ms)
            say "load: $rate msg/s over 200 conversations (400 clients) for $duration s, run $run; sending"
            return 0
        fi
        alive bench || { echo "FAIL: chat-bench exited before sending"; cat "$logs/bench.out"; return 1; }
        sleep 0.1
    done
    echo "FAIL: chat-bench stored nothing within 60 s"
    return 1
}

pg_value() { # SQL: one value
    "$CHAT_PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "${port[pg]}" -U chat -d chat -c "$1" 2>/dev/null
}

# at SECONDS: sleeps until SECONDS (an integer) after the bench's first stored message
at() {
    local due=$((t_send + $1 * 1000)) now
    now=$(now_ms)
    if ((due > now)); then sleep "$(printf '%d.%03d' $(((due - now) / 1000)) $(((due - now) % 1000)))"; fi
}

# load_wait: waits for the bench and the probe and prints their summaries (the verdict is
# fault_check's: it reads both reports; the bench's own exit code also counts connections the
# server closed, which the gateway scenario expects)
load_wait() {
    wait "${pids[bench]}" || true
    unset "pids[bench]"
    wait "${pids[probe]}" || true
    unset "pids[probe]"
    grep -E '^(connections|sending|acked|  send->|delivered|reconnect|checks|failed|result)' "$logs/bench.out" \
        | sed 's/^/  bench: /'
    sed 's/^/  /' "$logs/probe.out"
}

# verdict SCENARIO NOTE [fault_check args...]: the table row and the store's checks
verdict() {
    local name=$1 note=$2; shift 2
    "$build/bin/fault_check" --scenario "$name" --bench "$tmp/bench.json" --probe "$tmp/probe.json" \
        --probe-prefix "$probe_prefix" --pg-dsn "$CHAT_PG_DSN" --results "$results_run" --note "$note" "$@"
}

# no_violations: no NATS permission violation in the nodes' logs (the roles stayed within theirs)
no_violations() {
    if grep -h 'Violation' "$logs"/nats-*.log >"$tmp/violations" 2>/dev/null; then
        echo "  VIOLATION: NATS permission violations: $(head -c 400 "$tmp/violations")"
        return 1
    fi
}

node_of() { # nats-K -> K
    printf '%s\n' "${1#nats-}"
}

# ---------------------------------------------------------------- scenarios
# Each: load, the fault at fixed times after the first stored message, its own checks, the
# verdict. Returns non-zero when anything failed.

scenario_baseline() {
    load_start baseline 15 || return 1
    local rc=0
    load_wait
    verdict baseline "no fault" || rc=1
    no_violations || rc=1
    return $rc
}

# kill -9 an ingest worker every 10 s, alternating; each is started again 2 s later
scenario_ingest_kill() {
    load_start ingest_kill 30 || return 1
    local rc=0 t victim other t0 took
    for t in 5 15 25; do
        at "$t"
        if ((t == 15)); then victim=ingest-2 other=ingest-1; else victim=ingest-1 other=ingest-2; fi
        stop "$victim" KILL
        t0=$(now_ms)
        say "kill -9 $victim"
        # the survivor takes every partition of the dead one
        if wait_for 10 sh -c "[ \"\$(curl -fsS --max-time 1 http://127.0.0.1:${port[$other]}/metrics | awk '\$1==\"chat_ingest_partitions_owned\"{print \$2}')\" = 16 ]"; then
            took=$(($(now_ms) - t0))
            say "$other owns all 16 partitions ${took} ms after the kill"
        else
            echo "  VIOLATION: $other owns $(metric "${port[$other]}" chat_ingest_partitions_owned) of 16 partitions 10 s after the kill"
            rc=1
        fi
        at $((t + 2))
        start_worker "$victim" ingest
        wait_ready "$victim" 30 || rc=1
        say "$victim started again"
    done
    load_wait
    verdict ingest_kill "kill -9 of an ingest worker at 5, 15, 25 s (two-worker split), each back 2 s later" || rc=1
    no_violations || rc=1
    return $rc
}

# SIGSTOP an ingest worker past its lease (idle_session_timeout 10 s), SIGCONT 15 s later
scenario_ingest_pause() {
    load_start ingest_pause 30 || return 1
    local rc=0 had lost t0 took
    at 5
    had=$(metric "${port[ingest-1]}" chat_ingest_partitions_owned)
    local before_lost
    before_lost=$(grep -c 'reason=lease_lost' "$logs/ingest-1.log" || true)
    stop ingest-1 STOP
    t0=$(now_ms)
    say "SIGSTOP ingest-1 (owning $had partitions)"
    if wait_for 20 sh -c "[ \"\$(curl -fsS --max-time 1 http://127.0.0.1:${port[ingest-2]}/metrics | awk '\$1==\"chat_ingest_partitions_owned\"{print \$2}')\" = 16 ]"; then
        took=$(($(now_ms) - t0))
        say "ingest-2 owns all 16 partitions ${took} ms after the pause (the lease is a PostgreSQL session: idle_session_timeout 10 s)"
    else
        echo "  VIOLATION: ingest-2 owns $(metric "${port[ingest-2]}" chat_ingest_partitions_owned) of 16, 20 s into the pause"
        echo "  sessions still open (pid, state, wait, since the state began, query):"
        pg_value "SELECT pid, state, coalesce(wait_event_type || ':' || wait_event, '-'),
                         round(extract(epoch FROM now() - state_change)), left(regexp_replace(query, '\s+', ' ', 'g'), 100)
                    FROM pg_stat_activity WHERE usename = 'chat' AND pid <> pg_backend_pid() ORDER BY state_change" |
            sed 's/^/    /'
        rc=1
    fi
    at 20
    kill -CONT "${pids[ingest-1]}"
    say "SIGCONT ingest-1"
    # the stale owner finds its sessions gone: every partition it held ends with lease_lost, and
    # PostgreSQL ended those sessions (so it had no session to write with)
    if wait_for 15 sh -c "[ \$(grep -c 'reason=lease_lost' '$logs/ingest-1.log') -ge $((before_lost + had)) ]"; then
        lost=$(($(grep -c 'reason=lease_lost' "$logs/ingest-1.log") - before_lost))
        say "ingest-1 after SIGCONT: $lost partitions released with reason=lease_lost (it held $had)"
    else
        echo "  VIOLATION: after SIGCONT ingest-1 released $(($(grep -c 'reason=lease_lost' "$logs/ingest-1.log") - before_lost)) partitions with lease_lost, it held $had"
        rc=1
    fi
    local terminated
    terminated=$(grep -c 'idle-session timeout' "$logs/postgres.log" || true)
    say "PostgreSQL ended $terminated idle sessions of the paused worker (idle_session_timeout)"
    ((terminated >= 1)) || { echo "  VIOLATION: no session ended by idle_session_timeout in postgres.log"; rc=1; }
    load_wait
    verdict ingest_pause "SIGSTOP of an ingest worker at 5 s for 15 s (lease 10 s), SIGCONT: no write from the stale owner" || rc=1
    no_violations || rc=1
    return $rc
}

# kill -9 a gateway holding half of the clients; they reconnect through the balancer to the other
scenario_gateway_kill() {
    load_start gateway_kill 20 || return 1
    local rc=0 held total t0
    at 8
    held=$(metric "${port[gw-1]}" chat_gateway_connections)
    total=$((held + $(metric "${port[gw-2]}" chat_gateway_connections)))
    stop gw-1 KILL
    t0=$(now_ms)
    say "kill -9 gw-1 holding $held of $total connections"
    if wait_for 20 sh -c "[ \$(curl -fsS --max-time 1 http://127.0.0.1:${port[gw-2]}/metrics | awk '\$1==\"chat_gateway_connections\"{print \$2}') -ge $total ]"; then
        say "gw-2 holds all $total connections $(($(now_ms) - t0)) ms after the kill"
    else
        echo "  VIOLATION: gw-2 holds $(metric "${port[gw-2]}" chat_gateway_connections) of $total connections 20 s after the kill"
        rc=1
    fi
    load_wait
    verdict gateway_kill "kill -9 of the gateway holding $held of $total clients at 8 s; they reconnect to the other and sync" --allow-closes || rc=1
    no_violations || rc=1
    start_gateway gw-1
    return $rc
}

# gateway_on_leader: before the load, a gateway holds its NATS connection on the node leading
# CHAT_IN (the one the NATS scenarios hit), so the fault also loses that gateway's live deliveries
# (docs/reliability.md finding 3). nats.c picks a random server of the list, so gw-1 is started
# again until it lands there (each try ~1 s; 12 tries miss with a chance of (2/3)^12 < 1 %).
gateway_on_leader() {
    local leader k i
    leader=$(stream_leader 1 2 3) || return 0
    k=$(node_of "$leader")
    for ((i = 0; i < 12; i++)); do
        if (($(gateways_on "$k") > 0)); then
            say "$(gateways_on "$k") gateway(s) connected to $leader, the CHAT_IN leader"
            return 0
        fi
        stop gw-1 KILL
        start_gateway gw-1
        wait_ready gw-1 30 || return 1
    done
    say "no gateway connected to $leader after 12 starts of gw-1: the gateway reconnect goes untested"
}

# resyncs: the gateways' closes of every session with 1012 after their NATS connection came back
resyncs() { cat "$logs"/gw-*.log 2>/dev/null | grep -c 'event=nats_reconnect_resync' || true; }

# gateway_resynced HELD BEFORE: a node holding HELD gateway connections was lost; each of those
# gateways must have closed its sessions with 1012 (BEFORE: resyncs before the fault) so that
# their devices reconnect and sync (fault_check then holds them to no gap, nothing undelivered)
gateway_resynced() {
    local held=$1 before=$2 after
    after=$(resyncs)
    if ((held == 0)); then
        say "no gateway was connected to the node (resyncs: $((after - before)))"
    elif ((after - before >= held)); then
        say "gateway NATS reconnects: $(grep -h 'event=nats_reconnect_resync' "$logs"/gw-*.log | sed 's/.*\(sessions_closed=[0-9]*\).*/\1/' | tr '\n' ' ')(closed with 1012, synced)"
    else
        echo "  VIOLATION: $held gateway connection(s) were on the lost node, $((after - before)) gateway(s) closed their sessions with 1012"
        return 1
    fi
}

# leases_kept: no ingest worker lost its lease session (PostgreSQL) to a fault of NATS alone: a
# committer waiting on a silent broker must go on heartbeating its session, or every partition it
# owns stalls until another worker takes it over (docs/reliability.md, finding 6)
leases_kept() {
    local lost
    lost=$(cat "$logs"/ingest-*.log | grep -c 'event=lease_connection_lost' || true)
    if ((lost == 0)); then
        say "the ingest workers kept their lease sessions (no lease_connection_lost)"
    else
        echo "  VIOLATION: $lost lease session(s) lost by ingest workers during a NATS fault (lease_connection_lost)"
        return 1
    fi
}

# lose_leader WHAT FAULT: the node leading CHAT_IN is lost to FAULT (a command given the node's
# number: kill_node, partition); sets the caller's leader, k (its node), held (gateway connections
# on it), before (resyncs so far) and t0, then waits up to 20 s for another node to lead CHAT_IN.
# 1: no new leader; 2: no leader to begin with.
lose_leader() {
    local what=$1 fault=$2 others new
    leader=$(stream_leader 1 2 3) || { echo "  VIOLATION: no CHAT_IN leader"; return 2; }
    k=$(node_of "$leader")
    others=$(printf '%s ' 1 2 3 | sed "s/$k //")
    held=$(gateways_on "$k")
    before=$(resyncs)
    "$fault" "$k"
    t0=$(now_ms)
    say "$what: $leader (CHAT_IN leader, $held gateway connection(s)) lost"
    # shellcheck disable=SC2086
    if new=$(wait_leader_other "$leader" $others); then
        say "new CHAT_IN leader $new $(($(now_ms) - t0)) ms after the $what"
    else
        echo "  VIOLATION: no new CHAT_IN leader 20 s after the $what"
        return 1
    fi
}
kill_node() { stop "nats$1" KILL; }

# leader_scenario NAME WHAT FAULT BACK_AT RECOVER STORY: under 30 s of load, the CHAT_IN leader is
# lost at 5 s (lose_leader WHAT FAULT), RECOVER runs at BACK_AT s (it sees leader, k and t0),
# then the checks; STORY is the verdict's line, with %s for the lost leader
leader_scenario() {
    local name=$1 what=$2 fault=$3 back_at=$4 recover=$5 story=$6
    gateway_on_leader || return 1
    load_start "$name" 30 || return 1
    local rc=0 leader k t0 held before
    at 5
    lose_leader "$what" "$fault" || { (($? == 2)) && return 1; rc=1; }
    at "$back_at"
    "$recover" || rc=1
    load_wait
    gateway_resynced "$held" "$before" || rc=1
    leases_kept || rc=1
    # shellcheck disable=SC2059
    verdict "$name" "$(printf "$story" "$leader")" || rc=1
    no_violations || rc=1
    return $rc
}

# kill -9 the node leading CHAT_IN; started again (same store) 10 s later
restart_node() {
    nats_start "$k"
    say "nats-$k started again"
    wait_for 60 nats_healthy "$k" && say "nats-$k healthy (JetStream current) again" \
        || { echo "  VIOLATION: nats-$k not healthy 60 s after its restart"; return 1; }
}
scenario_nats_leader_kill() {
    leader_scenario nats_leader_kill kill kill_node 15 restart_node \
        "kill -9 of the CHAT_IN leader (%s) at 5 s, back at 15 s"
}

# wait_leader_other OLD NODE...: a CHAT_IN leader other than OLD, asked of NODEs (20 s)
wait_leader_other() {
    local old=$1; shift
    local i l
    for ((i = 0; i < 100; i++)); do
        l=$(stream_leader "$@" 2>/dev/null || true)
        if [[ -n "$l" && "$l" != "$old" ]]; then printf '%s\n' "$l"; return 0; fi
        sleep 0.2
    done
    return 1
}

# cut the CHAT_IN leader off the network for 15 s (a new leader within ~7 s, and its clients
# noticing within 4-6 s), then heal
heal_node() {
    heal "$k"
    say "healed: $leader back on the network"
    wait_for 60 cluster_formed && say "cluster whole again $(($(now_ms) - t0 - 15000)) ms after the heal" \
        || { echo "  VIOLATION: the cluster did not re-form 60 s after the heal"; return 1; }
}
scenario_nats_partition() {
    leader_scenario nats_partition cut partition 20 heal_node \
        "the CHAT_IN leader (%s) cut off at 5 s for 15 s (network namespaces), then healed"
}

# PostgreSQL stopped with -m immediate (a crash) and started again 5 s later
scenario_pg_restart() {
    load_start pg_restart 20 || return 1
    local rc=0 t0
    at 5
    chat_as_postgres "$CHAT_PG_BIN/pg_ctl" stop -D "$CHAT_HOME/pg" -m immediate -w >/dev/null 2>&1 \
        || { echo "  VIOLATION: pg_ctl stop -m immediate failed"; rc=1; }
    t0=$(now_ms)
    say "pg_ctl stop -m immediate"
    at 10
    chat_as_postgres "$CHAT_PG_BIN/pg_ctl" start -D "$CHAT_HOME/pg" -l "$logs/postgres.log" -w -t 60 >/dev/null 2>&1 \
        || { echo "  VIOLATION: PostgreSQL did not start again"; rc=1; }
    say "PostgreSQL started again"
    local s
    for s in ingest-1 ingest-2 svc-1 svc-2; do
        wait_for 30 ready "${port[$s]}" || { echo "  VIOLATION: $s not ready 30 s after PostgreSQL came back"; rc=1; }
    done
    wait_for 30 all_owned && say "workers ready and all 16 partitions owned $(($(now_ms) - t0)) ms after the crash" \
        || { echo "  VIOLATION: $(owned) of 16 partitions owned 30 s after PostgreSQL came back"; rc=1; }
    load_wait
    verdict pg_restart "PostgreSQL crashed (stop -m immediate) at 5 s, started at 10 s" || rc=1
    no_violations || rc=1
    return $rc
}

# Redis stopped and started again (empty): live delivery waits while it is away (the routes are in
# Redis and there is no per-user path), then goes on; every session is closed with 1012 at the
# gateways' next claim (a new epoch) and syncs; presence is rebuilt by the reconnected sessions'
# claims; the verdict: every acked message stored once and delivered once, in order
scenario_redis_restart() {
    load_start redis_restart 25 || return 1
    local rc=0 online t0 i f0 f1 late=0 recovered
    at 4
    online=$(redis-cli -p "${port[redis]}" ZCARD presence:online 2>/dev/null || echo 0)
    at 5
    (chat_redis_stop) >>"$logs/services.log" 2>&1 || true
    t0=$(now_ms)
    say "Redis stopped (presence:online held $online users)"
    # deliveries written by the gateways, each second, while Redis is away and after
    f0=$(($(metric "${port[gw-1]}" chat_gateway_frames_out_total) + $(metric "${port[gw-2]}" chat_gateway_frames_out_total)))
    local seq=''
    for ((i = 0; i < 10; i++)); do
        sleep 1
        if ((i == 2)); then
            # in a subshell: the helpers exit when Redis does not come up
            if (chat_redis_start && chat_redis_wait) >>"$logs/services.log" 2>&1; then
                say "Redis started again (empty: no persistence)"
            else
                echo "  VIOLATION: Redis did not start again: $(tail -n 3 "$logs/services.log" | tr '\n' ' ')"
                rc=1
            fi
        fi
        f1=$(($(metric "${port[gw-1]}" chat_gateway_frames_out_total) + $(metric "${port[gw-2]}" chat_gateway_frames_out_total)))
        seq+=" $((f1 - f0))"
        # from 3 s after Redis is back, frames must flow every second
        ((i < 5 || f1 > f0)) || late=$((late + 1))
        f0=$f1
    done
    say "frames written per second from the stop on:$seq"
    ((late == 0)) || { echo "  VIOLATION: no frames for $late s more than 3 s after Redis came back"; rc=1; }
    if wait_for 40 sh -c "[ \$(redis-cli -p ${port[redis]} ZCARD presence:online 2>/dev/null || echo 0) -ge $((online * 95 / 100)) ]"; then
        recovered=$(redis-cli -p "${port[redis]}" ZCARD presence:online)
        say "presence recovered: $recovered users online $(($(now_ms) - t0)) ms after the stop (heartbeats every 10 s)"
    else
        echo "  VIOLATION: presence:online holds $(redis-cli -p "${port[redis]}" ZCARD presence:online) of $online users 40 s after Redis came back"
        rc=1
    fi
    load_wait
    verdict redis_restart "Redis stopped at 5 s, back empty at 7 s; deliveries waited, sessions synced after 1012, presence rebuilt" || rc=1
    no_violations || rc=1
    return $rc
}

# kill -9 a worker running notify (and api, archive) while it holds messages waiting for a push
scenario_notify_kill() {
    load_start notify_kill 20 || return 1
    local rc=0 backlog
    at 8
    backlog=$(notify_backlog)
    stop svc-1 KILL
    say "kill -9 svc-1 (notify, api, archive) with $backlog events in the notify consumer of CHAT_EVENTS"
    at 12
    start_worker svc-1 api,notify,archive
    wait_ready svc-1 30 || rc=1
    say "svc-1 started again"
    load_wait
    # every message is handled by the notify role (none stuck with the dead worker), and every
    # member who stayed behind on a message of someone else got a push covering it (the clients
    # of the bench never send `seen`, so every member is behind on everything)
    if wait_notify_drained; then
        say "the notify consumer of CHAT_EVENTS drained: nothing pending or unacked"
    else
        echo "  VIOLATION: the notify consumer of CHAT_EVENTS still holds $(notify_backlog) events 90 s after the load"
        rc=1
    fi
    local uncovered members pushes
    uncovered=$(pg_value "SELECT count(*) FROM conversation_members cm
        JOIN LATERAL (SELECT max(seq) AS s FROM messages m WHERE m.conversation_id = cm.conversation_id
                      AND m.sender_id <> cm.user_id AND m.kind IN ('text', 'system')) o ON o.s IS NOT NULL
        LEFT JOIN push_state ps ON ps.conversation_id = cm.conversation_id AND ps.user_id = cm.user_id
        WHERE cm.conversation_id LIKE '$run-c%' AND cm.delivered_seq < o.s AND coalesce(ps.pushed_seq, 0) < o.s" || true)
    members=$(pg_value "SELECT count(*) FROM conversation_members WHERE conversation_id LIKE '$run-c%'" || true)
    pushes=$(wc -l <"$tmp/pushes.jsonl" 2>/dev/null || echo 0)
    if [[ "$uncovered" == 0 ]]; then
        say "every one of $members members was pushed up to the last message of the others ($pushes pushes received)"
    else
        echo "  VIOLATION: $uncovered of $members members were never pushed for the last message of the others ($pushes pushes received)"
        rc=1
    fi
    verdict notify_kill "kill -9 of a notify worker (with api, archive) at 8 s, back at 12 s" || rc=1
    no_violations || rc=1
    return $rc
}

wait_notify_drained() {
    local i
    for ((i = 0; i < 90; i++)); do
        [[ "$(notify_backlog)" == 0 ]] && return 0
        sleep 1
    done
    return 1
}
