#!/usr/bin/env bash
# The database roles hold no more than they need (issue 19, finding 5), against the running stack:
#   - `chat` (the services' role) cannot create roles, cannot grant itself
#     pg_execute_server_program, cannot run COPY ... PROGRAM, and is no member of any role;
#   - `chat_reporting` reads the four reporting views and can write nothing;
#   - a cluster set up by an older scripts/up (chat with CREATEROLE and a membership it granted
#     itself) is repaired by the next scripts/up (--no-build --services-only here).
# Environment: CHAT_PG_DSN (as role chat, loopback: the superuser `postgres` is reached the same
# way, trust on 127.0.0.1), CHAT_TEST_SOURCE_DIR (the checkout, for scripts/up).
# Prints "PASS name" or "FAIL name: why" per check; exits 1 if any failed.
set -uo pipefail

: "${CHAT_PG_DSN:?CHAT_PG_DSN is not set (libpq string of the stack, as role chat)}"
SRC=${CHAT_TEST_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PSQL=$(command -v psql || true)
[[ -n $PSQL ]] || PSQL=/usr/lib/postgresql/15/bin/psql
export PGCONNECT_TIMEOUT=10
case $CHAT_PG_DSN in
    *host=127.*) ;;
    *) echo "SKIP: CHAT_PG_DSN is not the embedded loopback cluster"; exit 77 ;;
esac
CHAT_DSN=$CHAT_PG_DSN
ADMIN_DSN="$CHAT_PG_DSN user=postgres dbname=postgres"
REP_DSN="$CHAT_PG_DSN user=chat_reporting"
TAG="secpg_$$_$RANDOM"
TMP=$(mktemp -d)
FAILED=0

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+: $2}"; FAILED=1; }
sql() { local dsn=$1; shift; "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$dsn" -c "$@"; }

# Whatever a check on unfixed code managed to do is undone, as the superuser.
cleanup() {
    sql "$ADMIN_DSN" "DROP ROLE IF EXISTS ${TAG}_r" >/dev/null 2>&1
    sql "$ADMIN_DSN" "REVOKE pg_execute_server_program FROM chat" >/dev/null 2>&1
    rm -rf -- "$TMP"
}
trap cleanup EXIT

# expect_refused NAME DSN SQL: PASS if SQL fails with a permission error.
expect_refused() {
    local name=$1 dsn=$2 query=$3 rc=0
    "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$dsn" -c "$query" >"$TMP/out" 2>"$TMP/err" || rc=$?
    if [[ $rc -eq 0 ]]; then
        fail "$name" "succeeded: $query"
    elif grep -Eqi 'permission denied|must be superuser|must have admin option|privileges of the' "$TMP/err"; then
        pass "$name"
    else
        fail "$name" "failed, but not for want of a right: $(tr '\n' ' ' <"$TMP/err")"
    fi
}

# check_chat_role LABEL: the role chat as it must be.
check_chat_role() {
    local label=$1 attrs members
    attrs=$(sql "$ADMIN_DSN" "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
                               FROM pg_roles WHERE rolname = 'chat'" 2>&1)
    [[ $attrs == "f|f|f|f|f" ]] && pass "${label}_chat_attributes" \
        || fail "${label}_chat_attributes" "super|createrole|createdb|replication|bypassrls = $attrs, want f|f|f|f|f"
    members=$(sql "$ADMIN_DSN" "SELECT string_agg(g.rolname, ',') FROM pg_auth_members m
                                 JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = 'chat'::regrole" 2>&1)
    [[ -z $members ]] && pass "${label}_chat_no_memberships" || fail "${label}_chat_no_memberships" "member of $members"
}

# ---- the services' role
check_chat_role stack
expect_refused chat_cannot_create_role "$CHAT_DSN" "CREATE ROLE ${TAG}_r"
expect_refused chat_cannot_grant_itself_server_program "$CHAT_DSN" "GRANT pg_execute_server_program TO chat"
expect_refused chat_cannot_copy_to_program "$CHAT_DSN" "COPY (SELECT 1) TO PROGRAM 'true'"
expect_refused chat_cannot_copy_from_program "$CHAT_DSN" "COPY schema_migrations FROM PROGRAM 'true'"
expect_refused chat_cannot_create_database "$CHAT_DSN" "CREATE DATABASE ${TAG}_db"
# what it needs still works: its own schema
if out=$(sql "$CHAT_DSN" "SELECT count(*) FROM schema_migrations" 2>&1) && [[ $out -gt 0 ]]; then
    pass chat_reads_its_schema
else
    fail chat_reads_its_schema "$out"
fi

# ---- the reporting role: the views, and no write anywhere
for v in report_daily_messages report_active_users report_conversation_stats report_delivery_health; do
    if out=$(sql "$REP_DSN" "SELECT count(*) FROM $v" 2>&1); then
        pass "reporting_reads_$v"
    else
        fail "reporting_reads_$v" "$(tr '\n' ' ' <<<"$out")"
    fi
done
expect_refused reporting_cannot_insert "$REP_DSN" "INSERT INTO conversations (id) VALUES ('${TAG}')"
expect_refused reporting_cannot_update "$REP_DSN" "UPDATE conversation_members SET read_seq = read_seq WHERE false"
expect_refused reporting_cannot_delete "$REP_DSN" "DELETE FROM messages WHERE false"
expect_refused reporting_cannot_create_table "$REP_DSN" "CREATE TABLE public.${TAG}_t (x int)"
expect_refused reporting_cannot_create_role "$REP_DSN" "CREATE ROLE ${TAG}_r"
expect_refused reporting_cannot_copy_to_program "$REP_DSN" "COPY (SELECT 1) TO PROGRAM 'true'"

# ---- an older cluster is repaired by the next scripts/up
if sql "$ADMIN_DSN" "ALTER ROLE chat CREATEROLE; GRANT pg_execute_server_program TO chat" >"$TMP/out" 2>&1; then
    if "$SRC/scripts/up" --no-build --services-only >"$TMP/up.log" 2>&1; then
        check_chat_role after_up
        expect_refused after_up_chat_cannot_copy_to_program "$CHAT_DSN" "COPY (SELECT 1) TO PROGRAM 'true'"
    else
        fail after_up "scripts/up --no-build --services-only failed: $(tail -n 5 "$TMP/up.log" | tr '\n' ' ')"
    fi
    sql "$ADMIN_DSN" "ALTER ROLE chat NOCREATEROLE" >/dev/null 2>&1
else
    fail after_up_setup "could not give chat the old rights as postgres: $(tr '\n' ' ' <"$TMP/out")"
fi

if ((FAILED)); then
    echo "test_sec_pg_roles: FAILED"
    exit 1
fi
echo "test_sec_pg_roles: all passed"
