#!/usr/bin/env bash
# shellcheck disable=SC2030,SC2031  # the NATS_* variables are set in subshells on purpose
# Validates the deployment files without a container engine:
#   - deploy/nats/nats.conf + accounts.conf: nats-server -t, once per node, with the environment
#     docker-compose.yml gives each node (the cluster itself runs in
#     tests/integration/nats_cluster_test.sh);
#   - docker-compose.yml: docker-compose config (or docker compose config), with deploy/env.example
#     as the .env, and once more without a secret (must fail);
#   - deploy/prometheus: promtool check config, check rules, test rules (alerts_test.yml);
#   - deploy/grafana: the dashboard is JSON, every query parses (promtool), it uses the
#     provisioned datasource uid;
#   - deploy/haproxy/haproxy.cfg: haproxy -c;
#   - deploy/redis/users.sh: parses, prints the three users without a plain password, refuses to
#     run without one; in docker-compose.yml the gateways use its `gateway` user, the workers `worker`
#     (the ACLs themselves are tried in tests/integration/nats_cluster_test.sh);
#   - deploy/postgres/10-chat.sh: bash -n; deploy/Dockerfile: its build packages cover
#     CHAT_APT_PACKAGES' libraries and tools, its run-time packages every library the built
#     binaries link (readelf NEEDED -> dpkg -S), when a build directory exists.
# Tools: nats-server (scripts/up fetches it), and what chat_install_ops_tools (scripts/lib/install.sh)
# puts in place: docker-compose (apt), promtool and haproxy (Debian's packages unpacked into .deps/).
# A missing tool is reported as SKIP; with --strict it is a failure.
#
#   deploy/check.sh [--strict]
set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
root=$(cd -- "$here/.." && pwd -P)
# shellcheck source=/dev/null
. "$root/scripts/lib/common.sh"
# shellcheck source=/dev/null
. "$root/scripts/lib/install.sh"
# shellcheck disable=SC2034  # read by common.sh's chat_log
CHAT_PROG=deploy/check.sh

strict=0
[[ "${1:-}" == --strict ]] && strict=1

passed=0
failed=0
skipped=0
pass() { printf 'PASS: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }
skip() {
    if ((strict)); then
        fail "$* (--strict)"
    else
        printf 'SKIP: %s\n' "$*"
        skipped=$((skipped + 1))
    fi
}

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
deps=$(chat_deps_dir)

# The variables of deploy/env.example, as compose would read them from .env.
env_example="$here/env.example"
load_env_example() {
    set -a
    # shellcheck source=/dev/null
    . "$env_example"
    set +a
}

# ---------------------------------------------------------------- NATS

if nats=$(chat_nats_bin); then
    ok=1
    for n in 1 2 3; do
        if ! (
            load_env_example
            export NATS_SERVER_NAME="nats-$n" NATS_LISTEN=0.0.0.0:4222 NATS_HTTP=0.0.0.0:8222 \
                NATS_CLUSTER_LISTEN=0.0.0.0:6222 NATS_STORE_DIR="$tmp/js"
            for r in 1 2 3; do export "NATS_ROUTE_$r=nats-route://route:$NATS_ROUTE_PASSWORD@nats-$r:6222"; done
            "$nats" -t -c "$here/nats/nats.conf"
        ) >"$tmp/nats.out" 2>&1; then
            ok=0
            fail "nats-server -t deploy/nats/nats.conf (nats-$n): $(tr '\n' ' ' <"$tmp/nats.out")"
        fi
    done
    ((ok)) && pass "deploy/nats/nats.conf and accounts.conf parse for nats-1..3 ($("$nats" --version 2>&1))"
    # A missing secret must stop the server, not start it without a password.
    if (unset NATS_GATEWAY_2_PASSWORD; load_env_example; unset NATS_GATEWAY_2_PASSWORD
        export NATS_SERVER_NAME=nats-1 NATS_LISTEN=0.0.0.0:4222 NATS_HTTP=0.0.0.0:8222 \
            NATS_CLUSTER_LISTEN=0.0.0.0:6222 NATS_STORE_DIR="$tmp/js" NATS_ROUTE_1=a NATS_ROUTE_2=b NATS_ROUTE_3=c
        "$nats" -t -c "$here/nats/nats.conf") >/dev/null 2>&1; then
        fail "nats-server accepts deploy/nats with NATS_GATEWAY_2_PASSWORD unset"
    else
        pass "nats-server refuses deploy/nats when a password variable is unset"
    fi
else
    skip "no nats-server (scripts/up fetches it into .deps/)"
fi

# ---------------------------------------------------------------- compose

# compose reads variables from its environment before the --env-file: run it with none of ours (a
# test stack's CHAT_* settings would hide what the file itself lacks)
compose=()
if command -v docker-compose >/dev/null 2>&1; then
    compose=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" docker compose)
fi
if ((${#compose[@]})); then
    if (cd "$root" && "${compose[@]}" --env-file "$env_example" -f docker-compose.yml config -q) >"$tmp/compose.out" 2>&1; then
        pass "docker-compose.yml is valid ($("${compose[@]}" version 2>/dev/null | head -n 1))"
    else
        fail "${compose[*]} config: $(tr '\n' ' ' <"$tmp/compose.out" | head -c 600)"
    fi
    grep -v '^CHAT_JWT_SECRET=' "$env_example" >"$tmp/env.partial"
    if (cd "$root" && "${compose[@]}" --env-file "$tmp/env.partial" -f docker-compose.yml config -q) >/dev/null 2>&1; then
        fail "docker-compose.yml is accepted with CHAT_JWT_SECRET unset"
    else
        pass "docker-compose.yml refuses to run with a secret unset"
    fi
    services=$(cd "$root" && "${compose[@]}" --env-file "$env_example" -f docker-compose.yml config --services 2>/dev/null | sort | tr '\n' ' ')
    want='chatctl gateway-1 gateway-2 grafana lb migrate minio minio-init nats-1 nats-2 nats-3 postgres prometheus redis worker-1 worker-2 '
    if [[ "$services" == "$want" ]]; then
        pass "docker-compose.yml has every service of the topology"
    else
        fail "services: got '$services', want '$want'"
    fi
    # The Redis user in each service's CHAT_REDIS_URL (deploy/redis/users.sh).
    redis_users=$(cd "$root" && "${compose[@]}" --env-file "$env_example" -f docker-compose.yml config 2>/dev/null |
        awk '/^services:/ {in_s = 1; next} /^[^ ]/ {in_s = 0}
             in_s && /^  [a-z0-9-]+:$/ {svc = $1; sub(/:$/, "", svc)}
             in_s && $1 == "CHAT_REDIS_URL:" {u = $2; gsub(/["\047]/, "", u); sub(/^redis:\/\//, "", u); sub(/:.*/, "", u); print svc, u}' |
        sort | tr '\n' ' ')
    want='gateway-1 gateway gateway-2 gateway migrate worker worker-1 worker worker-2 worker '
    if [[ "$redis_users" == "$want" ]]; then
        pass "docker-compose.yml: the gateways use the Redis user gateway (read-only), the workers worker"
    else
        fail "Redis users in CHAT_REDIS_URL: got '$redis_users', want '$want'"
    fi
else
    skip "no docker-compose (apt-get install docker-compose: chat_install_ops_tools)"
fi

# ---------------------------------------------------------------- Prometheus

promtool=''
for p in "$deps/prometheus/usr/bin/promtool" "$(command -v promtool 2>/dev/null)"; do
    [[ -n "$p" && -x "$p" ]] && { promtool=$p; break; }
done
if [[ -n "$promtool" ]]; then
    if "$promtool" check config "$here/prometheus/prometheus.yml" >"$tmp/p.out" 2>&1; then
        pass "promtool check config deploy/prometheus/prometheus.yml"
    else
        fail "promtool check config: $(tr '\n' ' ' <"$tmp/p.out")"
    fi
    if "$promtool" check rules "$here/prometheus/alerts.yml" >"$tmp/p.out" 2>&1; then
        pass "promtool check rules deploy/prometheus/alerts.yml: $(grep -o '[0-9]* rules found' "$tmp/p.out")"
    else
        fail "promtool check rules: $(tr '\n' ' ' <"$tmp/p.out")"
    fi
    if (cd "$here/prometheus" && "$promtool" test rules alerts_test.yml) >"$tmp/p.out" 2>&1; then
        pass "promtool test rules deploy/prometheus/alerts_test.yml"
    else
        fail "promtool test rules: $(tail -n 30 "$tmp/p.out")"
    fi
else
    skip "no promtool (Debian's prometheus package, unpacked into .deps/ by chat_install_ops_tools)"
fi

# ---------------------------------------------------------------- Grafana

dash="$here/grafana/dashboards/chat.json"
if command -v python3 >/dev/null 2>&1; then
    if python3 - "$dash" "$tmp/dash-rules.yml" <<'EOF' >"$tmp/g.out" 2>&1; then
import json, sys
d = json.load(open(sys.argv[1]))
exprs, uids = [], set()
def walk(ps):
    for p in ps:
        walk(p.get("panels", []))
        if "datasource" in p:
            uids.add(p["datasource"]["uid"])
        for t in p.get("targets", []):
            exprs.append(t["expr"])
walk(d["panels"])
assert d["uid"] and d["title"], "dashboard uid/title"
assert exprs, "no queries"
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        f.write("      - record: dashboard:q%d\n        expr: %s\n" % (i, json.dumps(e)))
print(len(exprs), ",".join(sorted(uids)))
EOF
        read -r nq uids <"$tmp/g.out"
        pass "deploy/grafana/dashboards/chat.json is a dashboard with $nq queries"
        if python3 "$here/grafana/dashboard.py" | cmp -s - "$dash"; then
            pass "the dashboard JSON is what deploy/grafana/dashboard.py prints"
        else
            fail "deploy/grafana/dashboards/chat.json differs from deploy/grafana/dashboard.py's output (regenerate it)"
        fi
        if grep -q "uid: $uids\$" "$here/grafana/provisioning/datasources/prometheus.yml"; then
            pass "the dashboard's datasource uid ($uids) is the provisioned one"
        else
            fail "the dashboard uses datasource uid(s) '$uids', not provisioned"
        fi
        if [[ -n "$promtool" ]]; then
            if "$promtool" check rules "$tmp/dash-rules.yml" >"$tmp/p.out" 2>&1; then
                pass "every dashboard query parses (promtool)"
            else
                fail "dashboard queries: $(tr '\n' ' ' <"$tmp/p.out" | head -c 800)"
            fi
        fi
    else
        fail "deploy/grafana/dashboards/chat.json: $(tr '\n' ' ' <"$tmp/g.out")"
    fi
else
    skip "no python3 for the dashboard checks"
fi

# ---------------------------------------------------------------- HAProxy

haproxy='' ldpath=''
if [[ -x "$deps/haproxy/usr/sbin/haproxy" ]]; then
    haproxy="$deps/haproxy/usr/sbin/haproxy"
    ldpath=$(printf '%s:' "$deps"/haproxy/usr/lib/*-linux-gnu)
elif command -v haproxy >/dev/null 2>&1; then
    haproxy=$(command -v haproxy)
fi
if [[ -n "$haproxy" ]]; then
    if LD_LIBRARY_PATH="$ldpath" "$haproxy" -c -f "$here/haproxy/haproxy.cfg" >"$tmp/h.out" 2>&1; then
        pass "haproxy -c deploy/haproxy/haproxy.cfg ($(LD_LIBRARY_PATH="$ldpath" "$haproxy" -v 2>/dev/null | head -n 1 | cut -d' ' -f1-3))"
    else
        fail "haproxy -c: $(grep -v WARNING "$tmp/h.out" | tr '\n' ' ')"
    fi
else
    skip "no haproxy (Debian's haproxy package, unpacked into .deps/ by chat_install_ops_tools)"
fi

# ---------------------------------------------------------------- Redis users

users_sh="$here/redis/users.sh"
if ! sh -n "$users_sh"; then
    fail "deploy/redis/users.sh does not parse"
elif (load_env_example; sh "$users_sh" conf) >"$tmp/users.out" 2>&1 &&
    [[ "$(cut -d' ' -f1-2 "$tmp/users.out" | tr '\n' ' ')" == 'user default user worker user gateway ' ]] &&
    grep -qx 'user default reset' "$tmp/users.out" &&
    ! (load_env_example; grep -qF -e "$REDIS_WORKER_PASSWORD" -e "$REDIS_GATEWAY_PASSWORD" "$tmp/users.out"); then
    pass "deploy/redis/users.sh: users default (off), worker and gateway, passwords only as SHA-256"
else
    fail "deploy/redis/users.sh conf: $(tr '\n' ' ' <"$tmp/users.out" | head -c 400)"
fi
if (load_env_example; unset REDIS_GATEWAY_PASSWORD; sh "$users_sh" conf) >/dev/null 2>&1; then
    fail "deploy/redis/users.sh runs with REDIS_GATEWAY_PASSWORD unset"
else
    pass "deploy/redis/users.sh refuses to run with a password unset"
fi

# ---------------------------------------------------------------- PostgreSQL init, Dockerfile

if bash -n "$here/postgres/10-chat.sh"; then
    pass "deploy/postgres/10-chat.sh parses"
else
    fail "deploy/postgres/10-chat.sh does not parse"
fi

# The build stage installs the -dev packages and build tools of CHAT_APT_PACKAGES.
missing=()
for p in "${CHAT_APT_PACKAGES[@]}"; do
    case $p in
        redis-server|postgresql-*|clang|libclang-*|curl|python3-websockets) continue ;;   # local services, fuzzing, extras, test clients
    esac
    grep -Eq "(^|[[:space:]])$p([[:space:]]|\\\\|\$)" "$here/Dockerfile" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    pass "deploy/Dockerfile's build stage installs every build package of CHAT_APT_PACKAGES"
else
    fail "deploy/Dockerfile lacks build packages: ${missing[*]}"
fi
# The run-time stage installs the package of every library the binaries link directly.
build=$(chat_build_dir)
if [[ -x "$build/bin/chat-worker" && -x "$build/bin/chat-gateway" ]] && command -v readelf >/dev/null; then
    runtime=$(sed -n '/^FROM .* AS runtime/,$p' "$here/Dockerfile")
    missing=()
    # NEEDED names of each binary, resolved to the files the loader picks (ldd), then to packages.
    while read -r lib path; do
        pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(realpath -- "$path")" 2>/dev/null)
        pkg=${pkg%%:*}
        # libc, and the sanitizer runtimes of a CHAT_SANITIZE build (scripts/test), which no image has
        [[ -z "$pkg" || "$pkg" == libc6 || "$pkg" =~ ^lib(asan|ubsan|tsan|lsan)[0-9]+$ ]] && continue
        grep -Eq "(^|[[:space:]])$pkg([[:space:]]|\\\\|\$)" <<<"$runtime" || missing+=("$pkg ($lib)")
    done < <(for b in "$build"/bin/chat-gateway "$build"/bin/chat-worker "$build"/bin/chatctl "$build"/bin/chat-bench; do
                 [[ -x "$b" ]] || continue
                 needed=" $(readelf -d "$b" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
                 ldd "$b" | while read -r name _ path _; do
                     [[ "$needed" == *" $name "* && "$path" == /* ]] && printf '%s %s\n' "$name" "$path"
                 done
             done | sort -u)
    if ((${#missing[@]} == 0)); then
        pass "deploy/Dockerfile's run-time stage has the package of every library the binaries link"
    else
        fail "deploy/Dockerfile's run-time stage lacks: ${missing[*]}"
    fi
else
    skip "no build in $build: the Dockerfile's run-time libraries are not checked"
fi

printf '%d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
((failed == 0))
