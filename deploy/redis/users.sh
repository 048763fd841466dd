#!/bin/sh
# The Redis users of the platform, written only here (docs/security.md, "Redis users"):
#   default  off: a connection that has not authenticated can run nothing
#   worker   every key (this Redis holds only presence and routes, all the worker's to write) and
#            every command but @dangerous (no FLUSHALL, CONFIG, KEYS, ACL SETUSER, SHUTDOWN, ...)
#   gateway  read-only on presence:<user> and last_seen:<user> (%R~), and only the commands it
#            sends: PING (chat_health.c), ZCOUNT and GET (presence queries), SELECT (CHAT_REDIS_URL's
#            database); the worker writes every route and presence key (workers/wk_claims.h)
# Passwords come from REDIS_WORKER_PASSWORD and REDIS_GATEWAY_PASSWORD and reach Redis as their
# SHA-256 (#<hex>), so no password is in a command line, a config file or ACL LIST. They also go
# into CHAT_REDIS_URL (redis://worker:<password>@redis:6379/0), which does not decode %xx: use
# letters and digits (deploy/env.example).
#
#   users.sh conf          prints one `user` line each, for a redis.conf
#                          (tests/integration/nats_cluster_test.sh, CHAT_REDIS_EXTRA_CONF)
#   users.sh exec CMD...   runs CMD (redis-server ...) with one --user each (docker-compose.yml)
# POSIX sh: it runs in the redis:7-alpine image (busybox) too.
set -eu

: "${REDIS_WORKER_PASSWORD:?is not set}" "${REDIS_GATEWAY_PASSWORD:?is not set}"

sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# One user a line: its name and rules, as redis.conf's `user` directive takes them.
users() {
    printf '%s\n' \
        "default reset" \
        "worker on #$(sha256 "$REDIS_WORKER_PASSWORD") ~* resetchannels +@all -@dangerous" \
        "gateway on #$(sha256 "$REDIS_GATEWAY_PASSWORD") resetkeys %R~presence:* %R~last_seen:* resetchannels -@all +ping +zcount +get +select"
}

case ${1:-} in
conf)
    users | sed 's/^/user /'
    ;;
exec)
    shift
    [ "$#" -gt 0 ] || { echo "usage: users.sh exec CMD..." >&2; exit 2; }
    # Each word of a rule is an argument of its own: redis-server quotes a whole argument as one
    # word ("user 'worker on ...'" is a user name with spaces). The rules have no spaces inside a
    # word, and set -f keeps the shell from expanding ~* and %R~presence:* as file names.
    rules=$(users)
    set -f
    while IFS= read -r rule; do
        # shellcheck disable=SC2086  # split on purpose
        set -- "$@" --user $rule
    done <<EOF
$rules
EOF
    exec "$@"
    ;;
*)
    echo "usage: users.sh conf | users.sh exec CMD..." >&2
    exit 2
    ;;
esac
