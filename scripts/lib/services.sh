# shellcheck shell=bash
# Local services of the embedded stack: all on 127.0.0.1, all state under $CHAT_HOME,
# logs in $CHAT_HOME/logs, pid files in $CHAT_HOME/run. Needs common.sh and, for NATS,
# install.sh (chat_nats_bin). Settings come from env.sh (chat_env_init).
#
#   chat_nats_start / chat_nats_wait / chat_nats_stop
#   chat_pg_start   / chat_pg_wait   / chat_pg_stop      (chat_pg_start also creates the
#                                                         role and database of CHAT_PG_DSN)
#   chat_redis_start / chat_redis_wait / chat_redis_stop
#   chat_app_start NAME CMD...        a long-running program, in the background
#   chat_app_wait NAME ADDR           until http://ADDR/readyz answers 200
#   chat_proc_stop NAME COMM          stops the process of $CHAT_HOME/run/NAME.pid
#
# Every start is idempotent; every wait gives up after $CHAT_START_TIMEOUT (30) seconds with
# one line naming what did not come up and the log to read.

CHAT_PG_BIN=${CHAT_PG_BIN:-/usr/lib/postgresql/15/bin}

chat_run_dir() { printf '%s\n' "$CHAT_HOME/run"; }
chat_log_dir() { printf '%s\n' "$CHAT_HOME/logs"; }

chat_dirs() {
    mkdir -p -- "$CHAT_HOME" "$CHAT_HOME/run" "$CHAT_HOME/logs"
}

# chat_comm_of PATH: the kernel's name (comm) for a process exec'd from PATH.
chat_comm_of() {
    local b
    b=$(basename -- "$1")
    printf '%s\n' "${b:0:15}"
}

# chat_pid_alive PIDFILE [COMM]: prints the pid if PIDFILE names a live process (called
# COMM, when given: a pid reused by another program does not count).
chat_pid_alive() {
    local pidf=$1 comm=${2:-} pid c
    [[ -r "$pidf" ]] || return 1
    read -r pid 2>/dev/null <"$pidf" || [[ -n "${pid:-}" ]] || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    chat_pid_running "$pid" || return 1
    c=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ -z "$comm" || "$c" == "${comm:0:15}" ]] || return 1
    printf '%s\n' "$pid"
}

# chat_proc_start NAME CMD...: starts CMD in its own session, in the background, stdin from
# /dev/null, stdout and stderr appended to logs/NAME.log, pid in run/NAME.pid. Does nothing
# if that pid file names a live process of the same program.
chat_proc_start() {
    local name=$1; shift
    local pidf="$CHAT_HOME/run/$name.pid" log="$CHAT_HOME/logs/$name.log" comm pid i
    comm=$(chat_comm_of "$1")
    chat_dirs
    if pid=$(chat_pid_alive "$pidf" "$comm"); then
        return 0
    fi
    rm -f -- "$pidf"
    printf '===== %s: starting %s\n' "$(date '+%F %T')" "$*" >>"$log"
    # The inner shell writes its own pid, then becomes the program (exec keeps the pid).
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
    setsid bash -c 'printf "%s\n" "$$" >"$0.tmp" && mv -f -- "$0.tmp" "$0" && exec nohup "$@"' \
        "$pidf" "$@" </dev/null >>"$log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        [[ -s "$pidf" ]] && return 0
        sleep 0.05
    done
    chat_die_log "$name did not start" "$log"
}

# chat_proc_stop NAME COMM: SIGTERM to the process of run/NAME.pid (if it is a live COMM),
# up to 10 s for it to end, then SIGKILL; removes the pid file.
chat_proc_stop() {
    local name=$1 comm=$2 pidf pid i
    pidf="$CHAT_HOME/run/$name.pid"
    if pid=$(chat_pid_alive "$pidf" "$comm"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            chat_pid_running "$pid" || break
            sleep 0.1
        done
        if chat_pid_running "$pid"; then
            chat_note "$name (pid $pid) did not stop within 10s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                chat_pid_running "$pid" || break
                sleep 0.1
            done
        fi
        chat_log "stopped $name (pid $pid)"
    fi
    rm -f -- "$pidf"
}

# chat_wait DESC LOG NAME COMM CHECK...: runs CHECK until it succeeds. Fails at once if the
# process of run/NAME.pid (when NAME is not empty) is gone, or after the timeout.
chat_wait() {
    local desc=$1 log=$2 name=$3 comm=$4; shift 4
    local timeout=${CHAT_START_TIMEOUT:-30}
    local deadline=$((SECONDS + timeout))
    while :; do
        if [[ -n "$name" ]] && ! chat_pid_alive "$CHAT_HOME/run/$name.pid" "$comm" >/dev/null; then
            chat_die_log "$desc exited while starting" "$log"
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            chat_die_log "$desc did not come up within ${timeout}s" "$log"
        fi
        sleep 0.2
    done
}

# chat_port_check PORT WHAT NAME COMM: fails if PORT is taken while our NAME is not running.
chat_port_check() {
    local port=$1 what=$2 name=$3 comm=$4
    if ! chat_pid_alive "$CHAT_HOME/run/$name.pid" "$comm" >/dev/null && chat_port_open "$port"; then
        chat_die "127.0.0.1:$port (for $what) is already in use by another program; set other addresses or stop it"
    fi
}

# ---------------------------------------------------------------- NATS

# chat_nats_addr: prints "host port monitor_port".
chat_nats_addr() {
    local hp
    hp=$(chat_url_hostport "$CHAT_NATS_URL" 4222) || chat_die "CHAT_NATS_URL='$CHAT_NATS_URL' is not a nats://host:port URL"
    printf '%s %s\n' "$hp" "${CHAT_NATS_MONITOR_PORT:-$(( ${hp#* } + 4000 ))}"
}

chat_nats_start() {
    local host port mon bin dir="$CHAT_HOME/nats" conf sync=''
    read -r host port mon < <(chat_nats_addr)
    if ! chat_is_loopback "$host"; then
        chat_note "CHAT_NATS_URL names $host: using that server, not starting a local one"
        return 0
    fi
    bin=$(chat_nats_bin) || chat_die "no nats-server found; run scripts/up without --no-build to install it"
    chat_dirs
    mkdir -p -- "$dir/js"
    if chat_nats_has_sync "$bin"; then
        # CHAT_NATS_SYNC (env.sh): `always` fsyncs every JetStream write; a duration (`1s`, the
        # default) fsyncs on that interval, so a power loss can lose that much of what the broker
        # acknowledged (docs/operations.md: what the platform repairs of it).
        [[ "${CHAT_NATS_SYNC:-1s}" =~ ^(always|[0-9]+(ms|s|m))$ ]] \
            || chat_die "CHAT_NATS_SYNC='${CHAT_NATS_SYNC}' is neither 'always' nor a duration like 1s, 500ms, 2m"
        sync="  sync_interval: ${CHAT_NATS_SYNC:-1s}"
    else
        chat_warn "$bin is older than 2.10: JetStream data will NOT be fsynced"
    fi
    conf="$dir/nats.conf"
    cat >"$conf.tmp" <<EOF
# Written by scripts/up; regenerated on every start.
server_name: "chat_$port"
listen: "127.0.0.1:$port"
http: "127.0.0.1:$mon"
max_payload: 1MB
pid_file: "$dir/nats.pid"
jetstream {
  store_dir: "$dir/js"
$sync
}
EOF
    mv -f -- "$conf.tmp" "$conf"
    chat_port_check "$port" "NATS" nats nats-server
    chat_port_check "$mon" "NATS monitoring" nats nats-server
    chat_proc_start nats "$bin" -c "$conf"
}

chat_nats_ready() {
    local port=$1 mon=$2
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$mon/healthz?js-enabled-only=true" \
        && chat_port_open "$port"
}

chat_nats_wait() {
    local host port mon
    read -r host port mon < <(chat_nats_addr)
    chat_is_loopback "$host" || return 0
    chat_wait "NATS on 127.0.0.1:$port" "$CHAT_HOME/logs/nats.log" nats nats-server \
        chat_nats_ready "$port" "$mon"
}

chat_nats_stop() {
    chat_proc_stop nats nats-server
}

# ---------------------------------------------------------------- Redis

chat_redis_addr() {
    chat_url_hostport "$CHAT_REDIS_URL" 6379 || chat_die "CHAT_REDIS_URL='$CHAT_REDIS_URL' is not a redis://host:port URL"
}

# chat_redis_start: a local Redis for a loopback CHAT_REDIS_URL. CHAT_REDIS_EXTRA_CONF (default
# empty), when set, is appended to its redis.conf as is: the cluster test gives it the platform's
# users (deploy/redis/users.sh conf); the embedded stack's Redis has none and no password.
chat_redis_start() {
    local host port dir="$CHAT_HOME/redis" conf bin
    read -r host port < <(chat_redis_addr)
    if ! chat_is_loopback "$host"; then
        chat_note "CHAT_REDIS_URL names $host: using that server, not starting a local one"
        return 0
    fi
    bin=$(command -v redis-server) || chat_die "redis-server is not installed"
    chat_dirs
    mkdir -p -- "$dir"
    conf="$dir/redis.conf"
    cat >"$conf.tmp" <<EOF
# Written by scripts/up; regenerated on every start.
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
dir "$dir"
save ""
appendonly no
logfile "$CHAT_HOME/logs/redis.log"
pidfile "$dir/redis.pid"
EOF
    if [[ -n "${CHAT_REDIS_EXTRA_CONF:-}" ]]; then
        printf '%s\n' "$CHAT_REDIS_EXTRA_CONF" >>"$conf.tmp"
    fi
    mv -f -- "$conf.tmp" "$conf"
    chat_port_check "$port" "Redis" redis redis-server
    chat_proc_start redis "$bin" "$conf"
}

# chat_redis_ping PORT: Redis answers, PONG or, when it has users with passwords
# (CHAT_REDIS_EXTRA_CONF), NOAUTH.
chat_redis_ping() {
    local out
    out=$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)
    [[ "$out" == PONG || "$out" == NOAUTH* ]]
}

chat_redis_wait() {
    local host port
    read -r host port < <(chat_redis_addr)
    chat_is_loopback "$host" || return 0
    chat_wait "Redis on 127.0.0.1:$port" "$CHAT_HOME/logs/redis.log" redis redis-server \
        chat_redis_ping "$port"
}

chat_redis_stop() {
    chat_proc_stop redis redis-server
}

# ---------------------------------------------------------------- PostgreSQL

# chat_as_postgres CMD...: runs CMD as the postgres system user (from /, which it can read).
chat_as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

# chat_pg_reach DIR: makes sure the postgres user can traverse to DIR; where an ancestor
# (e.g. a 0700 mktemp directory holding the checkout) stops it, adds o+x (search only).
chat_pg_reach() {
    local target=$1 d i
    chat_as_postgres test -x "$target" && return 0
    local -a dirs=()
    d=$target
    while [[ "$d" != / && -n "$d" ]]; do
        dirs+=("$d")
        d=$(dirname -- "$d")
    done
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
        d=${dirs[i]}
        if [[ -d "$d" ]] && ! chat_as_postgres test -x "$d"; then
            chmod o+x -- "$d"
            chat_note "added o+x (search only) to $d so the postgres user can reach $CHAT_HOME"
        fi
    done
    chat_as_postgres test -x "$target" || chat_die "the postgres user cannot reach $target"
}

chat_pg_port() {
    # shellcheck disable=SC2153  # set by env.sh
    chat_dsn_get "$CHAT_PG_DSN" port 5432
}

chat_pg_sql_name() {
    [[ "$1" =~ ^[a-z_][a-z0-9_]*$ ]] || chat_die "CHAT_PG_DSN: '$1' is not a plain lower-case name the scripts can create"
    printf '%s\n' "$1"
}

# chat_pg_running: true if the cluster in $CHAT_HOME/pg is running.
chat_pg_running() {
    [[ -f "$CHAT_HOME/pg/postmaster.pid" ]] || return 1
    chat_as_postgres "$CHAT_PG_BIN/pg_ctl" status -D "$CHAT_HOME/pg" >/dev/null 2>&1
}

chat_pg_start() {
    local host port data="$CHAT_HOME/pg" log="$CHAT_HOME/logs/postgres.log" user db
    host=$(chat_dsn_get "$CHAT_PG_DSN" host 127.0.0.1)
    if ! chat_is_loopback "$host"; then
        chat_note "CHAT_PG_DSN names $host: using that server, not starting a local one"
        return 0
    fi
    port=$(chat_pg_port)
    [[ "$port" =~ ^[0-9]+$ ]] || chat_die "CHAT_PG_DSN: port '$port' is not a number"
    user=$(chat_pg_sql_name "$(chat_dsn_get "$CHAT_PG_DSN" user chat)")
    db=$(chat_pg_sql_name "$(chat_dsn_get "$CHAT_PG_DSN" dbname "$user")")
    [[ -x "$CHAT_PG_BIN/pg_ctl" ]] || chat_die "PostgreSQL 15 is not installed ($CHAT_PG_BIN/pg_ctl missing)"
    id -u postgres >/dev/null 2>&1 || chat_die "there is no 'postgres' system user (is postgresql-15 installed?)"
    chat_dirs
    chat_pg_reach "$CHAT_HOME/logs"
    touch -- "$log"
    chown postgres:postgres -- "$log"

    if [[ ! -s "$data/PG_VERSION" ]]; then
        chat_log "initdb $data"
        mkdir -p -- "$data"
        chown postgres:postgres -- "$data"
        chmod 700 -- "$data"
        chat_as_postgres "$CHAT_PG_BIN/initdb" -D "$data" -U postgres --auth=trust \
            -E UTF8 --locale=C.UTF-8 >"$CHAT_HOME/logs/initdb.log" 2>&1 \
            || chat_die_log "initdb of $data failed" "$CHAT_HOME/logs/initdb.log"
        printf "\ninclude = 'chat.conf'\n" >>"$data/postgresql.conf"
    fi

    # Settings of the embedded cluster; rewritten on every start.
    cat >"$data/chat.conf.tmp" <<EOF
# Written by scripts/up; regenerated on every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
    cat >"$data/pg_hba.conf.tmp" <<'EOF'
# Written by scripts/up. The embedded stack listens on loopback only and trusts every
# connection from 127.0.0.1 (no passwords): never expose this cluster beyond this machine.
host all all 127.0.0.1/32 trust
EOF
    chown postgres:postgres -- "$data/chat.conf.tmp" "$data/pg_hba.conf.tmp"
    mv -f -- "$data/chat.conf.tmp" "$data/chat.conf"
    mv -f -- "$data/pg_hba.conf.tmp" "$data/pg_hba.conf"

    if ! chat_pg_running; then
        rm -f -- "$CHAT_HOME/run/postgres.pid"
        chat_port_open "$port" \
            && chat_die "127.0.0.1:$port (for PostgreSQL) is already in use by another program; set another port in CHAT_PG_DSN"
        chat_as_postgres "$CHAT_PG_BIN/pg_ctl" start -D "$data" -l "$log" -w -t "${CHAT_START_TIMEOUT:-30}" \
            >/dev/null 2>&1 || chat_die_log "PostgreSQL on 127.0.0.1:$port did not start" "$log"
    fi
    chat_pg_wait
    head -n 1 -- "$data/postmaster.pid" >"$CHAT_HOME/run/postgres.pid"

    # The roles and the database, made here by the superuser: the stack's role owns its database
    # and everything the migrations create, and nothing more (no CREATEROLE: on PostgreSQL 15 a
    # role that may create roles can grant itself pg_execute_server_program and run programs as
    # the server). The reporting role of migration 0002 is made here too, so the migration has no
    # role to create. Run on every start: a cluster made by an older scripts/up loses the rights
    # (and any role membership) its role got then.
    [[ "$user" != postgres ]] || chat_die "CHAT_PG_DSN: user=postgres is the cluster's superuser; the services need a role of their own (user=chat)"
    local psql=("$CHAT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    PGCONNECT_TIMEOUT=10 "${psql[@]}" >>"$CHAT_HOME/logs/pg-setup.log" 2>&1 <<EOF \
        || chat_die_log "creating roles $user, chat_reporting and database $db failed" "$CHAT_HOME/logs/pg-setup.log"
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$user') THEN
    CREATE ROLE $user LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chat_reporting') THEN
    CREATE ROLE chat_reporting LOGIN NOINHERIT;
  END IF;
END
\$\$;
ALTER ROLE $user NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS;
SELECT format('REVOKE %I FROM %I', g.rolname, '$user')
  FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
 WHERE m.member = '$user'::regrole
\gexec
SELECT 'CREATE DATABASE $db OWNER $user' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$db')
\gexec
EOF
}

chat_pg_isready() {
    "$CHAT_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2
}

chat_pg_wait() {
    local host port
    host=$(chat_dsn_get "$CHAT_PG_DSN" host 127.0.0.1)
    chat_is_loopback "$host" || return 0
    port=$(chat_pg_port)
    chat_wait "PostgreSQL on 127.0.0.1:$port" "$CHAT_HOME/logs/postgres.log" '' '' \
        chat_pg_isready "$port"
}

chat_pg_stop() {
    local data="$CHAT_HOME/pg" pid
    if chat_pg_running; then
        read -r pid <"$data/postmaster.pid" || pid='?'
        if ! chat_as_postgres "$CHAT_PG_BIN/pg_ctl" stop -D "$data" -m fast -w -t 30 >/dev/null 2>&1; then
            chat_note "PostgreSQL did not stop in 30s (fast); stopping it with -m immediate"
            chat_as_postgres "$CHAT_PG_BIN/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1 || true
        fi
        chat_log "stopped postgres (pid $pid)"
    fi
    rm -f -- "$CHAT_HOME/run/postgres.pid"
}

# ---------------------------------------------------------------- the project's programs

# chat_app_start NAME [--listen HOST:PORT] CMD...: like chat_proc_start, but restarts the
# program when its binary was rebuilt since it started; with --listen, fails with a clear
# line when that port is taken by another program.
chat_app_start() {
    local name=$1; shift
    local listen=''
    if [[ "${1:-}" == --listen ]]; then
        listen=$2; shift 2
    fi
    local pidf="$CHAT_HOME/run/$name.pid" comm pid exe
    [[ -x "$1" ]] || chat_die "$1 not found or not executable; build first (scripts/up without --no-build)"
    comm=$(chat_comm_of "$1")
    if pid=$(chat_pid_alive "$pidf" "$comm"); then
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        if [[ "$exe" == *" (deleted)" ]]; then
            chat_log "restarting $name (its binary was rebuilt)"
            chat_proc_stop "$name" "$comm"
        else
            return 0
        fi
    fi
    if [[ -n "$listen" ]]; then
        chat_port_check "${listen##*:}" "$name" "$name" "$comm"
    fi
    chat_proc_start "$name" "$@"
}

chat_http_ok() {
    curl -fsS -o /dev/null --max-time 2 "$1"
}

# chat_app_wait NAME ADDR: until http://ADDR/readyz answers 200 (fails at once if the
# process of run/NAME.pid ends).
chat_app_wait() {
    local name=$1 addr=$2
    chat_wait "$name (http://$addr/readyz)" "$CHAT_HOME/logs/$name.log" "$name" '' \
        chat_http_ok "http://$addr/readyz"
}

# chat_app_stop NAME [COMM]: stops the program of run/NAME.pid (COMM defaults to chat-NAME).
chat_app_stop() {
    chat_proc_stop "$1" "${2:-chat-$1}"
}
