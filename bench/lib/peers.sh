# shellcheck shell=bash
# The peers bench/run compares the platform with, each started on loopback under $BENCH_HOME,
# from the package registries (Debian 12, npm), and stopped by pid:
#
#   bench_peers_install          apt-get ejabberd 23.01 and erlang-p1-pgsql; npm ci the relay
#   bench_ejabberd_start         PostgreSQL (the scripts' own set-up) + ejabberd with MAM and offline
#   bench_ejabberd_users PREFIX N  creates users PREFIX-u0 .. PREFIX-u(N-1) (password "bench")
#   bench_ejabberd_stop
#   bench_socketio_start / bench_socketio_stop
#
# Needs scripts/lib/common.sh, services.sh and install.sh, and bench/lib/stacks.sh (BENCH_* ports).

BENCH_EJ_DOMAIN=${BENCH_EJ_DOMAIN:-bench.local}
BENCH_EJ_PASSWORD=bench

# bench_peers_install: what the peers need, from Debian 12 and npm, only when missing.
bench_peers_install() {
    local -a missing
    mapfile -t missing < <(chat_apt_missing ejabberd erlang-p1-pgsql)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if (( ${#missing[@]} > 0 )); then
        [[ $EUID -eq 0 ]] || chat_die "packages missing (${missing[*]}); run bench/run as root to install them"
        # The Debian package would start a system ejabberd on the standard ports when the machine
        # lets services start; bench/run only runs its own (below), so stop one that did start.
        chat_apt_install "${missing[@]}"
        if [[ -x /etc/init.d/ejabberd ]] && pgrep -u ejabberd -x beam.smp >/dev/null 2>&1; then
            chat_note "the ejabberd package started the system service; stopping it (bench/run runs its own)"
            /etc/init.d/ejabberd stop >/dev/null 2>&1 || true
        fi
    fi
    local v
    v=$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null)
    [[ "$v" == 23.01* ]] || chat_warn "ejabberd $v is installed, not 23.01 (Debian 12's): the comparison names the version it ran"
    [[ -r /usr/share/ejabberd/sql/pg.sql ]] || chat_die "/usr/share/ejabberd/sql/pg.sql is missing (ejabberd package)"
    local dir="$CHAT_ROOT/bench/peers/socketio" lock stamp
    lock=$(sha256sum -- "$dir/package-lock.json")
    lock=${lock%% *}
    stamp="$dir/node_modules/.chat-lock-sha256"
    if [[ ! -d "$dir/node_modules/socket.io" || ! -f "$stamp" || "$(cat -- "$stamp")" != "$lock" ]]; then
        chat_log "npm ci (bench/peers/socketio: socket.io)"
        (cd -- "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || chat_die "npm ci in $dir failed"
        printf '%s\n' "$lock" >"$stamp"
    fi
}

# ---------------------------------------------------------------- ejabberd

bench_ej_dir() { printf '%s\n' "$BENCH_HOME/ejabberd"; }

# bench_ej_pg ARGS...: runs the given function with the environment of ejabberd's PostgreSQL
# (its own cluster, set up exactly like the platform's by scripts/lib/services.sh: fsync on,
# synchronous_commit on, shared_buffers 256MB).
bench_ej_pg() {
    CHAT_HOME="$(bench_ej_dir)/stack" \
        CHAT_PG_DSN="host=127.0.0.1 port=$BENCH_EJ_PG_PORT dbname=ejabberd user=ejabberd" "$@"
}

bench_ej_psql() {
    "$CHAT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BENCH_EJ_PG_PORT" -U ejabberd -d ejabberd "$@"
}

bench_ej_config() {
    local d=$1
    mkdir -p -- "$d/etc" "$d/spool" "$d/logs" "$d/home"
    # ejabberd.yml: XMPP over WebSocket (RFC 7395) on /ws, no TLS on loopback (neither side runs
    # TLS in the bench), SASL PLAIN against users in PostgreSQL, MAM for every message and
    # offline storage in PostgreSQL, XEP-0198 for the acks. The c2s traffic shaper is off
    # (c2s_shaper: none; Debian's default config shapes every user to 3,000 bytes/s, which
    # throttles a load test); the platform's own per-connection limits are raised for the bench
    # too (CHAT_WS_RATE, CHAT_WS_USER_RATE in bench/run).
    cat >"$d/etc/ejabberd.yml" <<EOF
# Written by bench/run (bench/lib/peers.sh); regenerated on every start.
hosts:
  - "$BENCH_EJ_DOMAIN"
loglevel: warning
log_rotate_count: 0
listen:
  -
    port: $BENCH_EJ_PORT
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /ws: ejabberd_http_ws
shaper_rules:
  max_user_sessions: 20
  max_user_offline_messages: 100000
  c2s_shaper: none
  s2s_shaper: none
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
default_db: sql
sql_type: pgsql
sql_server: "127.0.0.1"
sql_port: $BENCH_EJ_PG_PORT
sql_database: "ejabberd"
sql_username: "ejabberd"
sql_password: ""
sql_pool_size: 10
auth_method: sql
auth_password_format: plain
# the caches of users, rosters and archive preferences hold 1,000 entries by default: with more
# users than that logging in they thrash ("Shrinking cache ..."); a deployment sizes them
cache_size: 200000
modules:
  mod_disco: {}
  mod_roster:
    db_type: sql
  mod_offline:
    db_type: sql
  mod_mam:
    db_type: sql
    default: always
    assume_mam_usage: true
  mod_stream_mgmt: {}
EOF
    # ejabberdctl reads this instead of /etc/ejabberd/ejabberdctl.cfg (--ctl-config): a node name
    # of its own and a fixed distribution port (no epmd), so nothing is shared with a system node.
    cat >"$d/etc/ejabberdctl.cfg" <<EOF
# Written by bench/run (bench/lib/peers.sh).
ERLANG_NODE=ejabberd_bench@localhost
ERL_DIST_PORT=$BENCH_EJ_DIST_PORT
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=65536
ERL_PROCESSES=1000000
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_BYPASS_WARNINGS=true
EOF
    cp -f /etc/ejabberd/inetrc "$d/etc/inetrc" 2>/dev/null || true
    chown -R ejabberd:ejabberd -- "$d/etc" "$d/spool" "$d/logs" "$d/home"
}

# bench_ej_ctl ARGS...: ejabberdctl on the bench node, as the ejabberd user (setpriv, not su:
# su goes through PAM's limits and leaves 1,024 open files; setpriv keeps ours).
bench_ej_ctl() {
    local d
    d=$(bench_ej_dir)
    (cd -- "$d/spool" && ulimit -n "$BENCH_NOFILE" && exec setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
        env HOME="$d/home" /usr/sbin/ejabberdctl --config-dir "$d/etc" --config "$d/etc/ejabberd.yml" \
        --ctl-config "$d/etc/ejabberdctl.cfg" --logs "$d/logs" --spool "$d/spool" "$@")
}

# bench_ej_beam: the pid of the node's beam.smp (child of the ejabberdctl foreground shell).
bench_ej_beam() {
    local ctl pid
    ctl=$(cat -- "$(bench_ej_dir)/run/ejabberdctl.pid" 2>/dev/null) || return 1
    for pid in $(pgrep -P "$ctl" 2>/dev/null); do
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == beam.smp ]] && { printf '%s\n' "$pid"; return 0; }
    done
    return 1
}

bench_ejabberd_start() {
    local d log beam i
    d=$(bench_ej_dir)
    log="$d/logs/foreground.log"
    mkdir -p -- "$d/run" "$d/stack"
    [[ -f "$d/stack/.chat-home" ]] || printf 'ejabberd PostgreSQL of bench/run\n' >"$d/stack/.chat-home"
    bench_ej_pg chat_pg_start
    if ! bench_ej_psql -tAc "SELECT 1 FROM pg_tables WHERE tablename = 'archive'" | grep -q 1; then
        bench_ej_psql -f /usr/share/ejabberd/sql/pg.sql >"$d/stack/schema.log" 2>&1 \
            || chat_die_log "loading ejabberd's pg.sql failed" "$d/stack/schema.log"
    fi
    bench_ej_config "$d"
    chat_port_open "$BENCH_EJ_PORT" && chat_die "127.0.0.1:$BENCH_EJ_PORT (ejabberd) is in use by another program"
    # foreground, in its own session, so that bench/run holds the pid and stops it by pid
    (
        cd -- "$d/spool" || exit 1
        ulimit -n "$BENCH_NOFILE"
        setsid setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME="$d/home" \
            /usr/sbin/ejabberdctl --config-dir "$d/etc" --config "$d/etc/ejabberd.yml" \
            --ctl-config "$d/etc/ejabberdctl.cfg" --logs "$d/logs" --spool "$d/spool" foreground \
            </dev/null >>"$log" 2>&1 &
        printf '%s\n' "$!" >"$d/run/ejabberdctl.pid"
    )
    for ((i = 0; i < 600; i++)); do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$BENCH_EJ_PORT/ws" 2>/dev/null; then
            break
        fi
        bench_ej_beam >/dev/null || { ((i < 50)) || chat_die_log "ejabberd did not start" "$log"; }
        sleep 0.1
    done
    beam=$(bench_ej_beam) || chat_die_log "ejabberd did not start (no beam.smp)" "$log"
    chat_port_open "$BENCH_EJ_PORT" || chat_die_log "ejabberd does not listen on 127.0.0.1:$BENCH_EJ_PORT" "$log"
    printf '%s\n' "$beam" >"$d/run/beam.pid"
    local lim
    lim=$(awk '/Max open files/ {print $4}' "/proc/$beam/limits")
    chat_log "ejabberd $(dpkg-query -W -f='${Version}' ejabberd) up on ws://127.0.0.1:$BENCH_EJ_PORT/ws (beam pid $beam, $lim open files)"
}

# bench_ejabberd_users PREFIX N: users PREFIX-u0 .. PREFIX-u<N-1> with the bench password, in one
# statement (ejabberdctl register would start an Erlang VM per user).
bench_ejabberd_users() {
    local prefix=$1 n=$2
    bench_ej_psql -c "INSERT INTO users (username, password)
        SELECT '$prefix-u' || i, '$BENCH_EJ_PASSWORD' FROM generate_series(0, $n - 1) AS i
        ON CONFLICT (username) DO NOTHING" >/dev/null || chat_die "creating $n XMPP users failed"
}

# bench_ejabberd_sizes: rows in ejabberd's archive and offline spool (after a run).
bench_ejabberd_rows() {
    bench_ej_psql -tAc "SELECT (SELECT count(*) FROM archive) || ' ' || (SELECT count(*) FROM spool)"
}

bench_ejabberd_stop() {
    local d pid ctl i
    d=$(bench_ej_dir)
    [[ -d "$d" ]] || return 0
    pid=$(bench_ej_beam 2>/dev/null || true)
    ctl=$(cat -- "$d/run/ejabberdctl.pid" 2>/dev/null || true)
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            chat_pid_running "$pid" || break
            sleep 0.1
        done
        chat_pid_running "$pid" && kill -KILL "$pid" 2>/dev/null
        chat_log "stopped ejabberd (pid $pid)"
    fi
    if [[ -n "$ctl" ]] && chat_pid_running "$ctl"; then
        kill -TERM "$ctl" 2>/dev/null || true
    fi
    rm -f -- "$d/run/ejabberdctl.pid" "$d/run/beam.pid"
    bench_ej_pg chat_pg_stop
}

# ---------------------------------------------------------------- Socket.IO

bench_socketio_start() {
    local d="$BENCH_HOME/socketio" i
    mkdir -p -- "$d"
    chat_port_open "$BENCH_SIO_PORT" && chat_die "127.0.0.1:$BENCH_SIO_PORT (Socket.IO relay) is in use by another program"
    (
        ulimit -n "$BENCH_NOFILE"
        cd -- "$CHAT_ROOT/bench/peers/socketio" || exit 1
        setsid node relay.js 127.0.0.1 "$BENCH_SIO_PORT" </dev/null >>"$d/relay.log" 2>&1 &
        printf '%s\n' "$!" >"$d/relay.pid"
    )
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$BENCH_SIO_PORT/healthz" 2>/dev/null && break
        sleep 0.1
    done
    chat_port_open "$BENCH_SIO_PORT" || chat_die_log "the Socket.IO relay did not start" "$d/relay.log"
    chat_log "Socket.IO relay up on 127.0.0.1:$BENCH_SIO_PORT (node $(node --version), pid $(cat "$d/relay.pid"))"
}

bench_socketio_pid() { cat -- "$BENCH_HOME/socketio/relay.pid" 2>/dev/null; }

bench_socketio_stop() {
    local pid i
    pid=$(bench_socketio_pid) || return 0
    if [[ -n "$pid" ]] && chat_pid_running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            chat_pid_running "$pid" || break
            sleep 0.1
        done
        chat_pid_running "$pid" && kill -KILL "$pid" 2>/dev/null
        chat_log "stopped the Socket.IO relay (pid $pid)"
    fi
    rm -f -- "$BENCH_HOME/socketio/relay.pid"
}
