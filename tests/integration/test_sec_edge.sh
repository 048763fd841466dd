#!/usr/bin/env bash
# The HTTP edge and what it prints (issue 19, findings 6 and 7), against the running stack's
# gateway (CHAT_GATEWAY_LISTEN, run with CHAT_DEV_MODE=1 by scripts/test), gateways of its own and
# the deployment's HAProxy config run on loopback:
#   dev       /dev/token and /dev/conv refuse a request carrying Forwarded, X-Forwarded-For or
#             X-Real-IP (404, no token in the answer); a gateway with dev mode on a non-loopback
#             listen address refuses to start with one line; scripts/up leaves dev mode off there;
#   metrics   the gateway refuses /metrics to a forwarded request; through deploy/haproxy's
#             frontend no spelling of /metrics or /dev/ (//metrics, /%6detrics, /./metrics,
#             /x/../metrics, ...) reaches a gateway, and the demo app still does;
#   readyz    a dependency down shows as "redis down", without the error text;
#   secrets   a malformed NATS or Redis URL and chatctl's PostgreSQL error never print the password.
# Environment: the stack's settings ($CHAT_HOME/env), CHAT_BUILD_DIR, CHAT_TEST_SOURCE_DIR, CHAT_DEPS.
# Prints "PASS name" or "FAIL name: why" per check; exits 1 if any failed.
set -uo pipefail

SRC=${CHAT_TEST_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILD=${CHAT_BUILD_DIR:-$SRC/build}
: "${CHAT_GATEWAY_LISTEN:?the settings of the stack are not in the environment}"
GW=$CHAT_GATEWAY_LISTEN
SECRET=s3cretpw$RANDOM
TMP=$(mktemp -d)
FAILED=0
PIDS=()

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+: $2}"; FAILED=1; }
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf -- "$TMP"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 12000)) # below the kernel's ephemeral range (32768-)
        port_free "$p" && { echo "$p"; return 0; }
    done
    return 1
}
# get URL [curl options...]: prints "STATUS BODY" (the path is sent as written)
get() {
    local url=$1; shift
    : >"$TMP/body"
    curl -sS --path-as-is --max-time 5 -o "$TMP/body" -w '%{http_code}' "$@" "$url" 2>"$TMP/curl.err" || true
    printf ' %s' "$(tr '\n' ' ' <"$TMP/body" 2>/dev/null | head -c 20000)"
}
status_of() { echo "${1%% *}"; }

# ---------------------------------------------------------------- dev endpoints, forwarded

r=$(get "http://$GW/dev/token?user=edge_probe")
if [[ $(status_of "$r") == 200 && $r == *token* ]]; then
    pass dev_token_answers_a_local_client
else
    fail dev_token_answers_a_local_client "stack gateway in dev mode: $r"
fi
for h in 'X-Forwarded-For: 203.0.113.7' 'Forwarded: for=203.0.113.7' 'X-Real-IP: 203.0.113.7' \
         'X-Forwarded-For: 127.0.0.1'; do
    for path in "/dev/token?user=edge_intruder" "/dev/conv?conv=edge_c&members=edge_intruder,edge_probe"; do
        r=$(get "http://$GW$path" -H "$h")
        name="dev_refuses_forwarded(${h%%:*}=${h#*: } ${path%%\?*})"
        if [[ $(status_of "$r") == 404 && $r != *token* && $r != *created* ]]; then
            pass "$name"
        else
            fail "$name" "${r:0:300}"
        fi
    done
done

# ---------------------------------------------------------------- metrics, forwarded

r=$(get "http://$GW/metrics")
[[ $(status_of "$r") == 200 && $r == *chat_gateway_* ]] && pass metrics_answers_a_direct_scrape \
    || fail metrics_answers_a_direct_scrape "${r:0:300}"
for h in 'X-Forwarded-For: 203.0.113.7' 'Forwarded: for=203.0.113.7'; do
    for path in /metrics //metrics /%6detrics /./metrics; do
        r=$(get "http://$GW$path" -H "$h")
        if [[ $(status_of "$r") == 404 && $r != *chat_gateway_* ]]; then
            pass "gateway_refuses_forwarded_metrics(${h%%:*} $path)"
        else
            fail "gateway_refuses_forwarded_metrics(${h%%:*} $path)" "${r:0:300}"
        fi
    done
done

# ---------------------------------------------------------------- start refusals and secrets

# run_gateway NAME ENV...: runs chat-gateway with the stack's settings and ENV for at most 5 s;
# leaves exit code in $TMP/NAME.rc, stderr+stdout in $TMP/NAME.out.
run_gateway() {
    local name=$1; shift
    env "$@" timeout 5 "$BUILD/bin/chat-gateway" >"$TMP/$name.out" 2>&1
    echo $? >"$TMP/$name.rc"
}
# A non-loopback address of no interface here (TEST-NET-1): nothing is bound on any network,
# whatever the code under test does.
run_gateway devnet CHAT_DEV_MODE=1 CHAT_GATEWAY_LISTEN=192.0.2.1:8080
lines=$(grep -c . "$TMP/devnet.out")
if [[ $(cat "$TMP/devnet.rc") == 2 && $lines == 1 ]] && grep -q '^chat-gateway: CHAT_DEV_MODE: .*loopback' "$TMP/devnet.out"; then
    pass dev_mode_non_loopback_refused_at_start
else
    fail dev_mode_non_loopback_refused_at_start "exit $(cat "$TMP/devnet.rc"), $lines lines: $(head -c 300 "$TMP/devnet.out" | tr '\n' ' ')"
fi
# scripts/up's defaults: dev mode only where the gateway listens on loopback
devmode_of() {
    (
        unset CHAT_DEV_MODE
        export CHAT_HOME="$TMP/home-$RANDOM" CHAT_GATEWAY_LISTEN=$1 CHAT_PROG=test_sec_edge
        # shellcheck source=/dev/null
        . "$SRC/scripts/lib/common.sh"
        # shellcheck source=/dev/null
        . "$SRC/scripts/lib/env.sh"
        chat_env_init 1 2>/dev/null
        echo "$CHAT_DEV_MODE"
    )
}
for l in 0.0.0.0:8080 10.1.2.3:8080 '[::]:8080'; do
    d=$(devmode_of "$l")
    [[ $d == 0 ]] && pass "scripts_up_dev_mode_off_on($l)" || fail "scripts_up_dev_mode_off_on($l)" "CHAT_DEV_MODE=$d"
done
d=$(devmode_of 127.0.0.1:8080)
[[ $d == 1 ]] && pass "scripts_up_dev_mode_on_on(127.0.0.1)" || fail "scripts_up_dev_mode_on_on(127.0.0.1)" "CHAT_DEV_MODE=$d"

for spec in "nats CHAT_NATS_URL=nats://gw:$SECRET@127.0.0.1" \
            "redis CHAT_REDIS_URL=redis://:$SECRET@127.0.0.1:notaport" \
            "redis_list CHAT_REDIS_URL=redis://u:$SECRET@127.0.0.1:6379/99"; do
    name=${spec%% *}
    run_gateway "url_$name" "${spec#* }"
    if [[ $(cat "$TMP/url_$name.rc") == 2 ]] && ! grep -q "$SECRET" "$TMP/url_$name.out" \
        && grep -q '\*\*\*' "$TMP/url_$name.out"; then
        pass "malformed_url_masked($name)"
    else
        fail "malformed_url_masked($name)" "exit $(cat "$TMP/url_$name.rc"): $(head -c 300 "$TMP/url_$name.out" | tr '\n' ' ')"
    fi
done
CHAT_PG_DSN="host=127.0.0.1 port=1 dbname=chat user=chat password=$SECRET connect_timeout=2" \
    "$BUILD/bin/chatctl" archive status >"$TMP/ctl.out" 2>&1
rc=$?
if [[ $rc != 0 ]] && ! grep -q "$SECRET" "$TMP/ctl.out" && grep -q 'password=\*\*\*' "$TMP/ctl.out"; then
    pass chatctl_dsn_masked
else
    fail chatctl_dsn_masked "exit $rc: $(head -c 300 "$TMP/ctl.out" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- /readyz: up or down only

rport=$(free_port); gport=$(free_port)
env CHAT_GATEWAY_LISTEN="127.0.0.1:$gport" CHAT_REDIS_URL="redis://127.0.0.1:$rport" CHAT_DEV_MODE=0 \
    "$BUILD/bin/chat-gateway" >"$TMP/readyz-gw.log" 2>&1 &
PIDS+=($!)
r=''
for _ in $(seq 50); do
    r=$(get "http://127.0.0.1:$gport/readyz")
    # (until its revocations are loaded too: "revocations: not loaded" is a state, not an error)
    [[ $r == *"redis down"* && $r != *"not loaded"* ]] && break
    sleep 0.2
done
body=${r#* }
if [[ $(status_of "$r") == 503 && $body == *"redis down"* && $body != *:* && $body != *efused* ]]; then
    pass readyz_no_error_text
else
    fail readyz_no_error_text "$r"
fi
if grep -q 'event=dep_down dep=redis detail="[^"]' "$TMP/readyz-gw.log"; then
    pass readyz_detail_in_the_log
else
    fail readyz_detail_in_the_log "no dep_down line with detail in the gateway's log"
fi

# ---------------------------------------------------------------- HAProxy (deploy/haproxy/haproxy.cfg)

deps=${CHAT_DEPS:-$SRC/.deps}
haproxy="$deps/haproxy/usr/sbin/haproxy"
if [[ ! -x $haproxy ]]; then
    echo "SKIP haproxy: $haproxy not installed (scripts/test installs it: chat_install_ops_tools)"
else
    libs=$(printf '%s:' "$deps"/haproxy/usr/lib/*-linux-gnu)
    # The deployment's file with loopback addresses: its frontend rules are used as they are.
    # (A port taken between the choice and the bind: try again with others.)
    for _ in 1 2 3; do
        lport=$(free_port); oport=$(free_port)
        [[ $lport != "$oport" ]] || continue
        sed -e "s/^\(\s*\)bind :8080$/\1bind 127.0.0.1:$lport/" -e "s/^\(\s*\)bind :8404$/\1bind 127.0.0.1:$oport/" \
            -e 's/maxconn 200000/maxconn 1000/' -e '/^resolvers docker/,/^$/d' \
            -e 's/ init-addr last,libc,none resolvers docker//' \
            -e "s/server gateway-1 gateway-1:8080 check/server gateway-1 $GW check/" -e '/server gateway-2/d' \
            "$SRC/deploy/haproxy/haproxy.cfg" >"$TMP/haproxy.cfg"
        grep -q "bind 127.0.0.1:$lport" "$TMP/haproxy.cfg" || fail haproxy_config "could not rewrite the bind line"
        LD_LIBRARY_PATH="$libs" "$haproxy" -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
        hpid=$!
        PIDS+=("$hpid")
        sleep 0.5
        kill -0 "$hpid" 2>/dev/null && break
    done
    r=''
    for _ in $(seq 50); do
        r=$(get "http://127.0.0.1:$lport/")
        [[ $(status_of "$r") == 200 ]] && break
        sleep 0.2
    done
    [[ $(status_of "$r") == 200 ]] && pass lb_serves_the_demo_app || fail lb_serves_the_demo_app "$r ($(tail -n 3 "$TMP/haproxy.log" | tr '\n' ' '))"
    r=$(get "http://127.0.0.1:$lport/index.html")
    [[ $(status_of "$r") == 200 ]] && pass lb_serves_index_html || fail lb_serves_index_html "$r"
    for path in /metrics //metrics ///metrics /%6detrics /%6Detrics /%2fmetrics /%2Fmetrics /./metrics \
                /x/../metrics /.%2e/metrics /metrics/ /metrics%00 /%2e/metrics \
                '/dev/token?user=edge_intruder' '//dev/token?user=edge_intruder' '/%64ev/token?user=edge_intruder' \
                '/dev/%74oken?user=edge_intruder' '/./dev/token?user=edge_intruder' '/dev//token?user=edge_intruder'; do
        r=$(get "http://127.0.0.1:$lport$path")
        # answered by the balancer itself (its built-in HTML error page), never by a gateway
        if [[ $(status_of "$r") =~ ^(400|404)$ && $r == *"<html>"* && $r != *chat_gateway_* && $r != *token* ]]; then
            pass "lb_never_serves($path)"
        else
            fail "lb_never_serves($path)" "${r:0:300}"
        fi
    done
fi

if ((FAILED)); then
    echo "test_sec_edge: FAILED"
    exit 1
fi
echo "test_sec_edge: all passed"
