#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2153  # NATS protocol lines in single quotes; CHAT_PG_BIN from services.sh
# The platform's own connections over TLS with a private CA (issue 6), on loopback:
#   - the test makes a CA, a NATS server certificate, a PostgreSQL server certificate and a client
#     certificate with openssl in its temporary directory, and a second CA that signed nothing;
#   - a nats-server of its own requires TLS and a client certificate from the CA (tls { verify:
#     true }) with JetStream; a PostgreSQL of its own (scripts/lib/services.sh) has ssl=on with the
#     CA's certificate and accepts only TLS (hostssl); a Redis of its own;
#   - chat-worker (ingest, api) and chat-gateway connect with CHAT_NATS_URL=tls://,
#     CHAT_NATS_CA, CHAT_NATS_CERT, CHAT_NATS_KEY, and the worker with CHAT_PG_DSN
#     sslmode=verify-full sslrootcert=<CA>; two WebSocket clients: one sends, gets its ack, the
#     other gets the message; chatctl creates the conversation over TLS with the client certificate;
#   - pg_stat_ssl shows every connection of the worker encrypted;
#   - refused, each with one clear line and a non-zero exit: a worker trusting the other CA (NATS),
#     one without a client certificate, one with a nats:// URL, a plain-text NATS client, and
#     `chat-worker migrate` trusting the other CA (PostgreSQL); bad files stop a program at start
#     with exit code 2 and one line naming the setting.
# Everything it starts is its own, on free loopback ports; nothing of the test stack is used.
#
#   backend_tls_test.sh [BUILD_DIR]    (default: $CHAT_BUILD_DIR, else <checkout>/build)
# Exits 77 (skipped) when not run as root (PostgreSQL runs as the postgres user). Everything it
# starts is stopped by pid (PostgreSQL with pg_ctl), its temporary directory removed, on every exit.
set -euo pipefail
exec 3>&1 4>&2 # the test's own output, for the report at exit

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
src=${CHAT_TEST_SOURCE_DIR:-$(cd -- "$here/../.." && pwd -P)}

if [[ $EUID -ne 0 ]]; then
    echo "SKIP: needs root (PostgreSQL of the test runs as the postgres user); scripts/test runs as root"
    exit 77
fi
build=$(realpath -m -- "${1:-${CHAT_BUILD_DIR:-$src/build}}")
for b in chat-worker chat-gateway chatctl; do
    [[ -x "$build/bin/$b" ]] || { echo "FAIL: $build/bin/$b not built"; exit 1; }
done
command -v openssl >/dev/null || { echo "FAIL: the openssl command is missing (scripts/lib/install.sh installs it)"; exit 1; }

# shellcheck source=/dev/null
. "$src/scripts/lib/common.sh"
# shellcheck source=/dev/null
. "$src/scripts/lib/install.sh"
# shellcheck source=/dev/null
. "$src/scripts/lib/services.sh"
# shellcheck disable=SC2034  # read by common.sh's chat_log
CHAT_PROG=backend_tls_test
nats_bin=$(chat_nats_bin) || { echo "FAIL: no nats-server (scripts/up or scripts/test installs it)"; exit 1; }

passed=0
failed=0
pass() { printf 'PASS: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chat-backend-tls.XXXXXX")
declare -A pids=() # name -> pid of what this test started
services=0
export CHAT_HOME="$tmp/home" CHAT_START_TIMEOUT=${CHAT_START_TIMEOUT:-120}
mkdir -p -- "$CHAT_HOME"

stop_pid() { # NAME: SIGTERM, up to 10 s, then SIGKILL
    chat_stop_pid "${pids[$1]:-}"
    unset "pids[$1]"
}

cleanup() {
    local rc=$?
    set +e
    exec 1>&3 2>&4
    for name in gateway worker; do stop_pid "$name"; done
    for name in "${!pids[@]}"; do stop_pid "$name"; done
    if ((services)); then
        chat_redis_stop >/dev/null
        chat_pg_stop >/dev/null
    fi
    if ((rc != 0 || failed > 0)); then
        for log in "$tmp"/*.log "$CHAT_HOME"/logs/*.log; do
            [[ -f "$log" ]] || continue
            printf -- '----- last lines of %s -----\n' "$(basename -- "$log")"
            tail -n 20 -- "$log"
        done
    fi
    rm -rf -- "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS CMD...: runs CMD every 0.2 s until it succeeds; false after SECONDS, or at
# once when CMD exits with 2 (what it waits for can no longer happen).
wait_for() {
    local deadline=$((SECONDS + $1)) rc; shift
    while :; do
        rc=0
        "$@" || rc=$?
        ((rc == 0)) && return 0
        ((rc != 2 && SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------- ports

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Six free loopback ports from a random base in 20000-23999 (below the kernel's ephemeral range):
# NATS client and monitoring, PostgreSQL, Redis, worker, gateway.
ports=()
for ((try = 0; try < 50; try++)); do
    base=$((20000 + (RANDOM % 500) * 8))
    ports=()
    for ((i = 0; i < 6; i++)); do
        port_free $((base + i)) || continue 2
        ports+=($((base + i)))
    done
    break
done
((${#ports[@]} == 6)) || { echo "FAIL: no free ports found"; exit 1; }
nats_port=${ports[0]} nats_http=${ports[1]} pg_port=${ports[2]} redis_port=${ports[3]}
worker_port=${ports[4]} gateway_port=${ports[5]}

# ---------------------------------------------------------------- certificates

pki=$tmp/pki
mkdir -p -- "$pki"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
make_ca() { # NAME CN
    openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign -keyout "$pki/$1.key" -out "$pki/$1.crt" >>"$tmp/openssl.log" 2>&1
}
make_cert() { # NAME CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAME]: signed by ca
    openssl req "${ec[@]}" -subj "/CN=$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" >>"$tmp/openssl.log" 2>&1
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=%s\n%s\n' "$3" "${4:+subjectAltName=$4}" >"$pki/$1.ext"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -days 2 \
        -set_serial "0x$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" -extfile "$pki/$1.ext" \
        -out "$pki/$1.crt" >>"$tmp/openssl.log" 2>&1
}
if make_ca ca chat-test-ca && make_ca other chat-test-other-ca &&
    make_cert nats nats serverAuth IP:127.0.0.1,DNS:localhost &&
    make_cert pg postgres serverAuth IP:127.0.0.1,DNS:localhost &&
    make_cert client chat-backend clientAuth; then
    pass "openssl made a CA, a second CA, NATS and PostgreSQL server certificates and a client certificate"
else
    fail "openssl: $(tail -n 5 "$tmp/openssl.log" | tr '\n' ' ')"
    exit 1
fi

# ---------------------------------------------------------------- NATS with TLS

mkdir -p -- "$tmp/js"
cat >"$tmp/nats.conf" <<EOF
server_name: "chat_tls_$nats_port"
listen: "127.0.0.1:$nats_port"
http: "127.0.0.1:$nats_http"
tls {
  cert_file: "$pki/nats.crt"
  key_file: "$pki/nats.key"
  ca_file: "$pki/ca.crt"
  verify: true
  timeout: 5
}
jetstream {
  store_dir: "$tmp/js"
}
EOF
"$nats_bin" -c "$tmp/nats.conf" >>"$tmp/nats.log" 2>&1 &
pids[nats]=$!
nats_ready() {
    kill -0 "${pids[nats]}" 2>/dev/null || return 2
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$nats_http/healthz?js-enabled-only=true" 2>/dev/null
}
if wait_for 60 nats_ready; then
    pass "nats-server with tls { verify: true } and JetStream is up on 127.0.0.1:$nats_port"
else
    fail "nats-server did not come up: $(tail -n 5 "$tmp/nats.log" | tr '\n' ' ')"
    exit 1
fi

# A plain-text client: the server announces tls_required and never answers its CONNECT + PING.
plain=''
if exec {fd}<>"/dev/tcp/127.0.0.1/$nats_port"; then
    IFS= read -r -t 10 line <&"$fd" && plain+="$line|"
    { printf 'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"name":"plain"}\r\nPING\r\n' >&"$fd"; } 2>/dev/null || true
    while IFS= read -r -t 10 line <&"$fd"; do plain+="${line%$'\r'}|"; done
    exec {fd}>&-
fi
if [[ "$plain" == INFO*'"tls_required":true'* && "$plain" != *PONG* ]]; then
    pass "a plain-text NATS client is refused (INFO says tls_required, no PONG to its CONNECT)"
else
    fail "plain-text NATS client: got $(head -c 400 <<<"$plain")"
fi

# ---------------------------------------------------------------- PostgreSQL with TLS, Redis

services=1
export CHAT_PG_DSN="host=127.0.0.1 port=$pg_port dbname=chat user=chat"
export CHAT_REDIS_URL="redis://127.0.0.1:$redis_port"
pg_tls() { # after chat_pg_start: ssl=on with the CA's certificate, only TLS connections accepted
    local data=$CHAT_HOME/pg
    install -o postgres -g postgres -m 0600 "$pki/pg.key" "$data/server.key"
    install -o postgres -g postgres -m 0644 "$pki/pg.crt" "$data/server.crt"
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >>"$data/postgresql.conf"
    printf 'hostssl all all 127.0.0.1/32 trust\n' >"$data/pg_hba.conf"
    chat_as_postgres "$CHAT_PG_BIN/pg_ctl" reload -D "$data" >/dev/null
}
pg_ssl_on() {
    [[ "$(PGSSLMODE=require "$CHAT_PG_BIN/psql" -X -qAt -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c 'SHOW ssl' 2>/dev/null)" == on ]]
}
# In a subshell: the helpers exit on failure, and that must become a FAIL line here.
if (chat_pg_start && pg_tls && chat_redis_start && chat_redis_wait) >"$tmp/services.log" 2>&1 &&
    wait_for 30 pg_ssl_on; then
    pass "PostgreSQL with ssl=on (hostssl only) and Redis of the test are up"
else
    fail "the test's PostgreSQL (TLS) and Redis did not start: $(tail -n 5 "$tmp/services.log" | tr '\n' ' ')"
    exit 1
fi

# ---------------------------------------------------------------- settings of the programs

CHAT_JWT_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
pg_tls_dsn="$CHAT_PG_DSN sslmode=verify-full sslrootcert=$pki/ca.crt"
common_env=(
    CHAT_HOME="$CHAT_HOME" CHAT_REDIS_URL="$CHAT_REDIS_URL" CHAT_PARTITIONS=4 CHAT_JWT_SECRET="$CHAT_JWT_SECRET"
    CHAT_LOG=info CHAT_NATS_URL="tls://127.0.0.1:$nats_port" CHAT_NATS_CA="$pki/ca.crt"
    CHAT_NATS_CERT="$pki/client.crt" CHAT_NATS_KEY="$pki/client.key" CHAT_PG_DSN="$pg_tls_dsn"
)
run() { # NAME ENV...: runs the program after the settings (env words, then the command) into $tmp/NAME.log; rc in $rc
    local name=$1; shift
    rc=0
    env "${common_env[@]}" "$@" >"$tmp/$name.log" 2>&1 || rc=$?
}
lines() { grep -cv '^$' "$tmp/$1.log" || true; }

# Bad files stop a program at start: exit 2, one line naming the setting.
run bad_key CHAT_NATS_KEY="$pki/client.crt" timeout 20 "$build/bin/chat-worker" migrate
if ((rc == 2)) && [[ "$(lines bad_key)" == 1 ]] && grep -q '^chat-worker: CHAT_NATS_KEY: ' "$tmp/bad_key.log"; then
    pass "a certificate given as CHAT_NATS_KEY: exit 2, one line: $(cat "$tmp/bad_key.log")"
else
    fail "CHAT_NATS_KEY holding a certificate: exit $rc, $(head -c 300 "$tmp/bad_key.log")"
fi
run wrong_key CHAT_NATS_KEY="$pki/nats.key" timeout 20 "$build/bin/chat-gateway"
if ((rc == 2)) && [[ "$(lines wrong_key)" == 1 ]] && grep -q 'CHAT_NATS_KEY: .*not the key of the certificate' "$tmp/wrong_key.log"; then
    pass "a key that does not match CHAT_NATS_CERT: exit 2, one line: $(cat "$tmp/wrong_key.log")"
else
    fail "mismatched CHAT_NATS_KEY: exit $rc, $(head -c 300 "$tmp/wrong_key.log")"
fi
run no_ca CHAT_NATS_CA="$tmp/missing.crt" timeout 20 "$build/bin/chatctl" conv check c u
if ((rc == 2)) && [[ "$(lines no_ca)" == 1 ]] && grep -q '^chatctl: CHAT_NATS_CA: cannot read' "$tmp/no_ca.log"; then
    pass "a missing CHAT_NATS_CA file: exit 2, one line: $(cat "$tmp/no_ca.log")"
else
    fail "missing CHAT_NATS_CA: exit $rc, $(head -c 300 "$tmp/no_ca.log")"
fi

# ---------------------------------------------------------------- PostgreSQL over TLS

run migrate_other CHAT_PG_DSN="$CHAT_PG_DSN sslmode=verify-full sslrootcert=$pki/other.crt" \
    timeout 60 "$build/bin/chat-worker" migrate
if ((rc != 0)) && [[ "$(grep -c 'level=error' "$tmp/migrate_other.log")" == 1 ]] &&
    grep 'level=error' "$tmp/migrate_other.log" | grep -q 'setting=CHAT_PG_DSN.*certificate verify failed'; then
    pass "chat-worker migrate trusting another CA is refused (exit $rc), one error line: $(grep -o 'detail=.*' "$tmp/migrate_other.log" | cut -c1-200)"
else
    fail "migrate with the wrong sslrootcert: exit $rc, $(head -c 400 "$tmp/migrate_other.log")"
fi
run migrate timeout 60 "$build/bin/chat-worker" migrate
if ((rc == 0)); then
    pass "chat-worker migrate over sslmode=verify-full"
else
    fail "chat-worker migrate over TLS: exit $rc, $(tail -c 400 "$tmp/migrate.log")"
    exit 1
fi

# ---------------------------------------------------------------- refused NATS clients

# Each one of these workers fails at start (exit 1) with one error line saying why.
refused() { # NAME WHAT PATTERN ENV...
    local name=$1 what=$2 pattern=$3; shift 3
    run "$name" CHAT_WORKER_LISTEN="127.0.0.1:$worker_port" CHAT_WORKER_ROLES=api "$@" timeout 30 "$build/bin/chat-worker"
    local errors
    errors=$(grep -c 'level=error' "$tmp/$name.log" || true)
    if ((rc == 1)) && [[ "$errors" == 1 ]] && grep 'level=error' "$tmp/$name.log" | grep -q "event=nats_connect_failed.*$pattern"; then
        pass "$what: exit 1, one error line: $(grep -o 'status=.*' "$tmp/$name.log" | head -n 1 | cut -c1-200)"
    else
        fail "$what: exit $rc, $(head -c 500 "$tmp/$name.log")"
    fi
}
refused other_ca "a worker trusting another CA" 'unable to get local issuer certificate' CHAT_NATS_CA="$pki/other.crt"
refused system_ca "a worker without CHAT_NATS_CA (the system's CAs)" 'unable to get local issuer certificate' CHAT_NATS_CA=
refused no_client_cert "a worker without a client certificate" 'status=' CHAT_NATS_CERT= CHAT_NATS_KEY=
refused plain_url "a worker with a nats:// URL to the TLS server" 'SSL' CHAT_NATS_URL="nats://127.0.0.1:$nats_port" \
    CHAT_NATS_CA= CHAT_NATS_CERT= CHAT_NATS_KEY=
run gateway_other_ca CHAT_NATS_CA="$pki/other.crt" CHAT_GATEWAY_LISTEN="127.0.0.1:$gateway_port" \
    timeout 30 "$build/bin/chat-gateway"
if ((rc == 1)) && [[ "$(grep -c 'level=error' "$tmp/gateway_other_ca.log")" == 1 ]] &&
    grep -q 'level=error .*event=nats_connect_failed.*unable to get local issuer certificate' "$tmp/gateway_other_ca.log" &&
    ! grep -q 'cannot listen' "$tmp/gateway_other_ca.log"; then
    pass "a gateway trusting another CA: exit 1, one error line"
else
    fail "gateway trusting another CA: exit $rc, $(head -c 500 "$tmp/gateway_other_ca.log")"
fi
# chatctl keeps the library's log lines for CHAT_LOG=debug and says it in one line of its own
run chatctl_other_ca CHAT_NATS_CA="$pki/other.crt" timeout 30 "$build/bin/chatctl" conv check c u
if ((rc == 1)) && [[ "$(lines chatctl_other_ca)" == 1 ]] &&
    grep -q '^chatctl: cannot connect to NATS at tls://' "$tmp/chatctl_other_ca.log"; then
    pass "chatctl trusting another CA: exit 1, one line: $(cat "$tmp/chatctl_other_ca.log")"
else
    fail "chatctl trusting another CA: exit $rc, $(head -c 500 "$tmp/chatctl_other_ca.log")"
fi

# ---------------------------------------------------------------- the platform over TLS

ready() { curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; }
ready_or_dead() { ready "$1" || { kill -0 "${pids[$2]}" 2>/dev/null || return 2; return 1; }; }
env "${common_env[@]}" CHAT_WORKER_LISTEN="127.0.0.1:$worker_port" CHAT_WORKER_ROLES=ingest,api \
    "$build/bin/chat-worker" >>"$tmp/worker.log" 2>&1 &
pids[worker]=$!
env "${common_env[@]}" CHAT_GATEWAY_LISTEN="127.0.0.1:$gateway_port" CHAT_DEV_MODE=0 \
    CHAT_WS_STOP_DELAY=0 "$build/bin/chat-gateway" >>"$tmp/gateway.log" 2>&1 &
pids[gateway]=$!
for name in worker gateway; do
    port=$worker_port what=" and to PostgreSQL (verify-full)"
    [[ $name == gateway ]] && port=$gateway_port what=''
    if wait_for 120 ready_or_dead "$port" "$name"; then
        pass "chat-$name is ready over TLS to NATS (client certificate)$what"
    else
        fail "chat-$name not ready: $(curl -sS --max-time 2 "http://127.0.0.1:$port/readyz" 2>&1 | tr '\n' ' ')"
        exit 1
    fi
done
partitions_acquired() {
    local n
    n=$(grep -o 'event=partition_acquired partition=[0-9]*' "$tmp/worker.log" 2>/dev/null | sort -u | wc -l)
    ((n >= 4)) || { kill -0 "${pids[worker]}" 2>/dev/null || return 2; return 1; }
}
wait_for 120 partitions_acquired || { fail "the worker did not acquire its 4 partitions"; exit 1; }

conv="tls-$$-$RANDOM"
run conv timeout 60 "$build/bin/chatctl" conv create "$conv" alice bob
if ((rc == 0)) && grep -q '"created":true' "$tmp/conv.log"; then
    pass "chatctl conv create over TLS with the client certificate"
else
    fail "chatctl conv create: exit $rc, $(head -c 300 "$tmp/conv.log")"
fi

# Two WebSocket clients (bash, /dev/tcp; client frames masked with a zero key).
ws_frame() { # TEXT -> one client text frame on stdout (up to 65535 bytes)
    local text=$1 len=${#1}
    if ((len < 126)); then
        printf '%b' "\\x81\\x$(printf '%02x' $((0x80 | len)))\\x00\\x00\\x00\\x00"
    else
        printf '%b' "\\x81\\xfe\\x$(printf '%02x' $((len >> 8)))\\x$(printf '%02x' $((len & 255)))\\x00\\x00\\x00\\x00"
    fi
    printf '%s' "$text"
}
declare -A ws=()
ws_open() { # USER: connects USER's socket (ws[USER]), output into $tmp/ws-USER
    local user=$1 token fd
    token=$(env "${common_env[@]}" "$build/bin/chatctl" token "$user" 2>/dev/null) || return 1
    exec {fd}<>"/dev/tcp/127.0.0.1/$gateway_port" || return 1
    ws[$user]=$fd
    : >"$tmp/ws-$user"
    printf 'GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nAuthorization: Bearer %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' \
        "$gateway_port" "$token" >&"$fd"
}
ws_until() { # USER PATTERN: reads USER's socket until PATTERN shows up (30 s)
    local deadline=$((SECONDS + 30))
    until grep -aq "$2" "$tmp/ws-$1"; do
        ((SECONDS < deadline)) || return 1
        timeout 0.5 cat <&"${ws[$1]}" >>"$tmp/ws-$1" || true
    done
}
body="over TLS end to end $RANDOM"
ws_ok=0
if ws_open alice && ws_open bob && ws_until alice '"type":"hello"' && ws_until bob '"type":"hello"'; then
    deadline=$((SECONDS + 60)) retried=0
    ws_frame '{"type":"send","conv":"'"$conv"'","cmid":"t1","body":"'"$body"'"}' >&"${ws[alice]}"
    # an "unavailable" is retried with the same cmid, as a client does
    until grep -aq '"type":"ack"' "$tmp/ws-alice" || ((SECONDS >= deadline)); do
        timeout 0.5 cat <&"${ws[alice]}" >>"$tmp/ws-alice" || true
        if (($(grep -ao '"code":"unavailable"' "$tmp/ws-alice" | wc -l) > retried)); then
            retried=$((retried + 1))
            ws_frame '{"type":"send","conv":"'"$conv"'","cmid":"t1","body":"'"$body"'"}' >&"${ws[alice]}"
        fi
    done
    if grep -aq '"type":"ack","conv":"'"$conv"'","cmid":"t1","seq":1' "$tmp/ws-alice" && ws_until bob "$body" &&
        grep -aq '"seq":1' "$tmp/ws-bob"; then
        ws_ok=1
    fi
fi
if ((ws_ok)); then
    pass "alice sent through the gateway, got her ack (seq 1), bob got the message ($retried retries)"
else
    fail "WebSocket end to end: alice got $(tr -c '[:print:]' '.' <"$tmp/ws-alice" 2>/dev/null | head -c 500), bob got $(tr -c '[:print:]' '.' <"$tmp/ws-bob" 2>/dev/null | head -c 500)"
fi
for u in alice bob; do
    fd=${ws[$u]:-}
    [[ -z "$fd" ]] || exec {fd}>&-
done

# Every connection of the worker (the only client as user chat) is encrypted.
ssl_report=$(PGSSLMODE=require "$CHAT_PG_BIN/psql" -X -qAt -F ' ' -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c \
    "SELECT count(*), count(*) FILTER (WHERE s.ssl), string_agg(DISTINCT s.version, ','), count(DISTINCT a.application_name)
       FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
      WHERE a.usename = 'chat' AND a.backend_type = 'client backend'" 2>&1) || true
read -r total encrypted versions apps <<<"$ssl_report"
if [[ "$total" =~ ^[0-9]+$ ]] && ((total >= 5 && encrypted == total)); then
    pass "pg_stat_ssl: all $total connections of the worker ($apps application names) are encrypted ($versions)"
else
    fail "pg_stat_ssl: $ssl_report"
fi

# SIGTERM: both stop cleanly (exit 0; OpenSSL and nats.c clean up at exit without a crash).
for name in gateway worker; do
    pid=${pids[$name]} st=0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        fail "chat-$name did not stop within 30 s of SIGTERM"
        continue
    fi
    wait "$pid" || st=$?
    unset "pids[$name]"
    if ((st == 0)); then
        pass "chat-$name stopped on SIGTERM with exit 0"
    else
        fail "chat-$name stopped with exit $st: $(tail -n 3 "$tmp/$name.log" | tr '\n' ' ')"
    fi
done

printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
