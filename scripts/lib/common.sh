# shellcheck shell=bash
# Shared helpers for scripts/up, scripts/down, scripts/test.
# Source this file first; it defines CHAT_ROOT (the checkout) from its own location.

if [[ -n "${CHAT_LIB_COMMON_LOADED:-}" ]]; then
    return 0
fi
CHAT_LIB_COMMON_LOADED=1

CHAT_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export CHAT_ROOT

# Start of the current script, for the elapsed time in progress lines.
CHAT_T0="${CHAT_T0:-$EPOCHREALTIME}"
CHAT_PROG="${CHAT_PROG:-$(basename -- "$0")}"

# chat_elapsed: seconds since CHAT_T0, one decimal.
chat_elapsed() {
    local now=${EPOCHREALTIME//[!0-9]/} t0=${CHAT_T0//[!0-9]/}
    local tenths=$(( (10#$now - 10#$t0) / 100000 ))
    printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

# chat_log MSG...: one progress line with the elapsed time.
chat_log() {
    printf '[%s +%ss] %s\n' "$CHAT_PROG" "$(chat_elapsed)" "$*"
}

# chat_note MSG...: an informational line (stderr, so it stands out from progress).
chat_note() {
    printf '[%s] note: %s\n' "$CHAT_PROG" "$*" >&2
}

# chat_warn MSG...: a loud warning line.
chat_warn() {
    printf '[%s] WARNING: %s\n' "$CHAT_PROG" "$*" >&2
}

# chat_die MSG...: one clear error line, then exit 1.
chat_die() {
    printf '[%s] error: %s\n' "$CHAT_PROG" "$*" >&2
    exit 1
}

# chat_die_log MSG LOGFILE: the one error line naming the log to read; under CI (where the
# checkout is thrown away afterwards) also the last lines of that log, then exit 1.
chat_die_log() {
    local msg=$1 log=$2
    printf '[%s] error: %s; read %s\n' "$CHAT_PROG" "$msg" "$log" >&2
    if [[ -n "${CI:-}" && -r "$log" ]]; then
        printf -- '----- last lines of %s -----\n' "$log" >&2
        tail -n 40 -- "$log" >&2 || true
        printf -- '-----\n' >&2
    fi
    exit 1
}

# chat_build_dir: the build directory in use: $CHAT_BUILD_DIR, else build-sanitize when
# CHAT_SANITIZE is set, else build.
chat_build_dir() {
    if [[ -n "${CHAT_BUILD_DIR:-}" ]]; then
        realpath -m -- "$CHAT_BUILD_DIR"
    elif [[ -n "${CHAT_SANITIZE:-}" ]]; then
        printf '%s\n' "$CHAT_ROOT/build-sanitize"
    else
        printf '%s\n' "$CHAT_ROOT/build"
    fi
}

# chat_deps_dir: cache of fetched tools shared by every stack of the checkout.
chat_deps_dir() {
    realpath -m -- "${CHAT_DEPS:-$CHAT_ROOT/.deps}"
}

# chat_url_hostport URL DEFAULT_PORT: prints "host port" of the first URL of a comma list
# (scheme://[user[:pass]@]host[:port][/path]).
chat_url_hostport() {
    local url=${1%%,*} defport=$2 rest host port
    url=${url#"${url%%[![:space:]]*}"}
    url=${url%"${url##*[![:space:]]}"}
    [[ "$url" == *://* ]] || return 1
    rest=${url#*://}
    rest=${rest%%/*}
    rest=${rest##*@}
    [[ -n "$rest" ]] || return 1
    if [[ "$rest" == \[*\]* ]]; then          # [v6]:port
        host=${rest%%]*}; host=${host#[}
        port=${rest#*]}; port=${port#:}
    elif [[ "$rest" == *:* ]]; then
        host=${rest%%:*}; port=${rest#*:}
    else
        host=$rest; port=
    fi
    port=${port:-$defport}
    [[ "$port" =~ ^[0-9]+$ ]] && (( port > 0 && port < 65536 )) || return 1
    printf '%s %s\n' "${host:-127.0.0.1}" "$port"
}

# chat_dsn_get DSN KEY DEFAULT: the value of KEY in a libpq keyword/value DSN
# ("host=... port=5433 dbname=chat"), or in a postgres:// URI (host, port, dbname, user).
chat_dsn_get() {
    local dsn=$1 key=$2 def=$3 word val words
    if [[ "$dsn" == postgres://* || "$dsn" == postgresql://* ]]; then
        local rest=${dsn#*://} auth='' hostport path
        rest=${rest%%\?*}
        if [[ "$rest" == *@* ]]; then auth=${rest%%@*}; rest=${rest#*@}; fi
        hostport=${rest%%/*}
        path=''; [[ "$rest" == */* ]] && path=${rest#*/}
        case $key in
            host) val=${hostport%%:*} ;;
            port) val=''; [[ "$hostport" == *:* ]] && val=${hostport##*:} ;;
            dbname) val=$path ;;
            user) val=${auth%%:*} ;;
            *) val='' ;;
        esac
        printf '%s\n' "${val:-$def}"
        return 0
    fi
    read -r -a words <<<"$dsn"
    for word in "${words[@]}"; do
        if [[ "$word" == "$key="* ]]; then
            val=${word#"$key="}
            val=${val#\'}; val=${val%\'}
            printf '%s\n' "${val:-$def}"
            return 0
        fi
    done
    printf '%s\n' "$def"
}

# chat_is_loopback HOST: true for the addresses the embedded stack serves itself.
chat_is_loopback() {
    case $1 in
        127.*|localhost|'') return 0 ;;
        *) return 1 ;;
    esac
}

# chat_port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
chat_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# chat_pid_running PID: true if PID is a live process (a zombie, dead but not yet reaped by
# its parent, does not count).
chat_pid_running() {
    local line rest
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    rest=${line##*) }
    [[ "${rest:0:1}" != [ZX] ]]
}

# chat_stop_pid PID: SIGTERM to a child of this shell, up to 10 s for it to end, then SIGKILL;
# reaps it. For the processes a test script started itself (a pid it holds, never a name).
chat_stop_pid() {
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    wait "$pid" 2>/dev/null || true
}

# chat_home_claim: makes sure $CHAT_HOME is a stack home: creates it with a marker file
# (.chat-home), or accepts it if it has the marker or is empty. Refuses any other directory,
# so that pid files, data and --purge never land in a directory the scripts did not make.
chat_home_claim() {
    [[ "$CHAT_HOME" == /* && "$CHAT_HOME" != / ]] || chat_die "CHAT_HOME='$CHAT_HOME' is not usable"
    [[ -f "$CHAT_HOME/.chat-home" ]] && return 0
    if [[ -e "$CHAT_HOME" && ! -d "$CHAT_HOME" ]]; then
        chat_die "CHAT_HOME=$CHAT_HOME is not a directory"
    fi
    if [[ -d "$CHAT_HOME" && -n "$(ls -A -- "$CHAT_HOME")" ]]; then
        chat_die "CHAT_HOME=$CHAT_HOME is a non-empty directory that scripts/up did not make (no .chat-home in it); choose another CHAT_HOME"
    fi
    mkdir -p -- "$CHAT_HOME"
    printf 'Home of a chat stack (scripts/up); scripts/down --purge deletes this directory.\n' \
        >"$CHAT_HOME/.chat-home"
}

# chat_home_is_ours: true if $CHAT_HOME carries the marker of chat_home_claim.
chat_home_is_ours() {
    [[ -f "$CHAT_HOME/.chat-home" ]]
}
