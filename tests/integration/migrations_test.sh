#!/usr/bin/env bash
# Integration test of migrations/*.sql and `chat-worker migrate`, against a running stack.
#
# Environment:
#   CHAT_PG_DSN            libpq keyword/value string of the stack, as role chat
#                          (e.g. "host=127.0.0.1 port=15433 dbname=chat user=chat")
#   CHAT_TEST_SOURCE_DIR   the checkout (default: two levels up from this script)
#   CHAT_WORKER_BIN        optional, default $CHAT_BUILD_DIR (else $CHAT_TEST_SOURCE_DIR/build)/bin/chat-worker
#   CHAT_REPORTING_DSN     optional, default "$CHAT_PG_DSN user=chat_reporting" (later keywords
#                          win in libpq)
#
# Prints "PASS name" or "FAIL name: why" per check; exits 1 if any check failed.
# What it writes is undone: data checks run in transactions that are rolled back, and the
# partitions it creates (1-minute ones in a far-future range nobody uses) are dropped on exit.
set -euo pipefail

: "${CHAT_PG_DSN:?CHAT_PG_DSN is not set (libpq string of the stack, as role chat)}"
SRC=${CHAT_TEST_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
WORKER=${CHAT_WORKER_BIN:-${CHAT_BUILD_DIR:-$SRC/build}/bin/chat-worker}
PSQL=$(command -v psql || true)
[[ -n $PSQL ]] || PSQL=/usr/lib/postgresql/15/bin/psql
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}

if [[ -n ${CHAT_REPORTING_DSN:-} ]]; then
    REP_DSN=$CHAT_REPORTING_DSN
else
    case $CHAT_PG_DSN in
        postgres://*\?* | postgresql://*\?*) REP_DSN="$CHAT_PG_DSN&user=chat_reporting" ;;
        postgres://* | postgresql://*)       REP_DSN="$CHAT_PG_DSN?user=chat_reporting" ;;
        *)                                   REP_DSN="$CHAT_PG_DSN user=chat_reporting" ;;
    esac
fi

TMP=$(mktemp -d)
FAILED=0
TAG="migtest_$$_$RANDOM"           # ids of the test's rows
# A far-future base for the 1-minute partitions, a multiple of 10 minutes (so 5-minute slots
# line up with it), random so runs do not meet.
BASE_MIN=$(( (RANDOM * 32768 + RANDOM) % 40000 * 10 ))
BASE="timestamptz '2200-01-01 00:00:00+00' + interval '$BASE_MIN minutes'"
PART_RANGE_OK=0                    # set once the range is known to be ours

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+: $2}"; FAILED=1; }

# sql DSN SQL: runs SQL (one simple query, or several -c) and prints tuples unaligned.
sql() { local dsn=$1; shift; "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$dsn" -c "$@"; }
admin() { sql "$CHAT_PG_DSN" "$@"; }

# expect_fail NAME PATTERN DSN SQL: PASS if SQL fails with an error matching PATTERN (ERE).
expect_fail() {
    local name=$1 pattern=$2 dsn=$3 query=$4 rc=0
    "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$dsn" -c "$query" >"$TMP/out" 2>"$TMP/err" || rc=$?
    if [[ $rc -eq 0 ]]; then
        fail "$name" "succeeded: $(tr -s '\n ' '  ' <<<"$query")"
    elif grep -Eq "$pattern" "$TMP/err"; then
        pass "$name"
    else
        fail "$name" "failed, but not with /$pattern/: $(tr '\n' ' ' <"$TMP/err")"
    fi
}

# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1" "expected [$2], got [$3]"; fi
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local p
    if [[ $PART_RANGE_OK -eq 1 ]]; then
        for p in $(admin "SELECT partition_name FROM chat_partitions
                          WHERE from_ts < $BASE + interval '1 hour'
                            AND until_ts > $BASE - interval '1 hour'" 2>/dev/null); do
            admin "DROP TABLE IF EXISTS $p" >/dev/null 2>&1 || echo "warning: could not drop partition $p" >&2
        done
    fi
    # The data checks commit nothing; this removes what a wrongly allowed write would leave.
    local ids="'${TAG}_r', '${TAG}_d', '${TAG}_p', '${TAG}_n', '${TAG}_v'"
    admin "DELETE FROM messages WHERE conversation_id IN ($ids);
           DELETE FROM message_dedupe WHERE conversation_id IN ($ids);
           DELETE FROM conversations WHERE id IN ($ids)" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# 1. chat-worker migrate: twice in a row, then two at once.
# ---------------------------------------------------------------------------------------------
migrate() { (cd "$SRC" && CHAT_PG_DSN=$CHAT_PG_DSN timeout 120 "$WORKER" migrate); }

if [[ ! -x $WORKER ]]; then
    fail migrate_sequential "no executable $WORKER (build first)"
    fail migrate_concurrent "no executable $WORKER"
else
    rc1=0; rc2=0
    migrate >"$TMP/m1" 2>&1 || rc1=$?
    migrate >"$TMP/m2" 2>&1 || rc2=$?
    if [[ $rc1 -eq 0 && $rc2 -eq 0 ]]; then
        pass migrate_sequential
    else
        fail migrate_sequential "exit codes $rc1 and $rc2: $(tail -n 5 "$TMP/m1" "$TMP/m2" | tr '\n' ' ')"
    fi

    rc1=0; rc2=0
    migrate >"$TMP/c1" 2>&1 & p1=$!
    migrate >"$TMP/c2" 2>&1 & p2=$!
    wait "$p1" || rc1=$?
    wait "$p2" || rc2=$?
    if [[ $rc1 -eq 0 && $rc2 -eq 0 ]]; then
        pass migrate_concurrent
    else
        fail migrate_concurrent "exit codes $rc1 and $rc2: $(tail -n 5 "$TMP/c1" "$TMP/c2" | tr '\n' ' ')"
    fi
fi

# Each migration file recorded exactly once, and nothing recorded without a file.
files=()
for f in "$SRC"/migrations/*.sql; do
    [[ -e $f ]] && files+=("$(basename "$f" .sql)")
done
if [[ ${#files[@]} -eq 0 ]]; then
    fail schema_migrations_each_once "no migrations/*.sql under $SRC"
else
    recorded=$(admin "SELECT version || ' ' || count(*) FROM schema_migrations GROUP BY version ORDER BY version" 2>&1) || true
    expected=$(for v in "${files[@]}"; do echo "$v 1"; done | LC_ALL=C sort)
    actual=$(echo "$recorded" | LC_ALL=C sort)
    if [[ "$expected" == "$actual" ]]; then
        pass schema_migrations_each_once
    else
        fail schema_migrations_each_once "expected [$(tr '\n' ' ' <<<"$expected")], got [$(tr '\n' ' ' <<<"$actual")]"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 2. The reporting role: the four views and nothing else.
# ---------------------------------------------------------------------------------------------
attrs=$(admin "SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb
               FROM pg_roles WHERE rolname = 'chat_reporting'" 2>&1) || true
expect_eq reporting_role_attributes "t|f|f|f|f" "$attrs"

for v in report_daily_messages report_active_users report_conversation_stats report_delivery_health; do
    if out=$(sql "$REP_DSN" "SELECT count(*) FROM $v" 2>&1); then
        pass "reporting_select_$v"
    else
        fail "reporting_select_$v" "$(echo "$out" | tr '\n' ' ')"
    fi
done

DENIED='permission denied'
expect_fail reporting_denied_select_messages "$DENIED" "$REP_DSN" "SELECT * FROM messages LIMIT 1"
expect_fail reporting_denied_select_conversations "$DENIED" "$REP_DSN" "SELECT * FROM conversations LIMIT 1"
expect_fail reporting_denied_select_dedupe "$DENIED" "$REP_DSN" "SELECT * FROM message_dedupe LIMIT 1"
one_part=$(admin "SELECT partition_name FROM chat_partitions LIMIT 1" 2>/dev/null || true)
if [[ -n $one_part ]]; then
    expect_fail reporting_denied_select_partition "$DENIED" "$REP_DSN" "SELECT * FROM $one_part LIMIT 1"
fi
expect_fail reporting_denied_insert_messages "$DENIED" "$REP_DSN" \
    "INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, created_at)
     VALUES ('${TAG}_r', 1, 'x', 'x', 'x', now())"
expect_fail reporting_denied_insert_conversations "$DENIED" "$REP_DSN" \
    "INSERT INTO conversations (id) VALUES ('${TAG}_r')"
expect_fail reporting_denied_update_members "$DENIED" "$REP_DSN" \
    "UPDATE conversation_members SET read_seq = read_seq WHERE false"
expect_fail reporting_denied_delete_conversations "$DENIED" "$REP_DSN" \
    "DELETE FROM conversations WHERE false"
expect_fail reporting_denied_insert_view "$DENIED|cannot insert into view" "$REP_DSN" \
    "INSERT INTO report_daily_messages (day) VALUES (current_date)"
expect_fail reporting_denied_create_table "$DENIED" "$REP_DSN" "CREATE TABLE ${TAG}_t (x int)"
expect_fail reporting_denied_create_table_public "$DENIED" "$REP_DSN" "CREATE TABLE public.${TAG}_t (x int)"
expect_fail reporting_denied_ensure_partitions "$DENIED" "$REP_DSN" \
    "SELECT chat_ensure_partitions(now(), now() + interval '1 minute', interval '1 minute')"

# ---------------------------------------------------------------------------------------------
# 3. Dedupe: (conversation, seq) and (conversation, cmid) are unique. Rolled back.
# ---------------------------------------------------------------------------------------------
DEDUPE_SETUP="BEGIN;
INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)
VALUES ('${TAG}_d', 'cmid-a', 1, 'id-a', now()),
       ('${TAG}_d', 'cmid-b', 2, 'id-b', now() - interval '40 days');"
if out=$(admin "$DEDUPE_SETUP ROLLBACK;" 2>&1); then
    pass dedupe_distinct_rows_insert
else
    fail dedupe_distinct_rows_insert "$(echo "$out" | tr '\n' ' ')"
fi
expect_fail dedupe_duplicate_seq "duplicate key value violates unique constraint" "$CHAT_PG_DSN" \
    "$DEDUPE_SETUP
     INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)
     VALUES ('${TAG}_d', 'cmid-c', 1, 'id-c', now() + interval '40 days');
     ROLLBACK;"
expect_fail dedupe_duplicate_cmid "duplicate key value violates unique constraint" "$CHAT_PG_DSN" \
    "$DEDUPE_SETUP
     INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)
     VALUES ('${TAG}_d', 'cmid-a', 3, 'id-c', now());
     ROLLBACK;"

# ---------------------------------------------------------------------------------------------
# 4. Partitions with a 1-minute span in a far-future range (created, used, dropped on exit).
# ---------------------------------------------------------------------------------------------
# The test owns [BASE - 1 hour, BASE + 1 hour): it must be free, and is emptied on exit.
busy=$(admin "SELECT count(*) FROM chat_partitions
              WHERE from_ts < $BASE + interval '1 hour' AND until_ts > $BASE - interval '1 hour'" 2>&1) || busy="error: $busy"
if [[ $busy != 0 ]]; then
    fail partitions_one_minute "range after $BASE_MIN minutes from 2200-01-01 is not free: $busy"
else
    PART_RANGE_OK=1
    created=$(admin "SELECT chat_ensure_partitions($BASE, $BASE + interval '3 minutes', interval '1 minute')" 2>&1) || true
    listed=$(admin "SELECT count(*) FROM chat_partitions
                    WHERE from_ts >= $BASE AND until_ts <= $BASE + interval '3 minutes'
                      AND span = interval '1 minute'
                      AND partition_name = chat_partition_name(from_ts, interval '1 minute')" 2>&1) || true
    expect_eq partitions_one_minute "3 3" "$created $listed"

    again=$(admin "SELECT chat_ensure_partitions($BASE, $BASE + interval '3 minutes', interval '1 minute')" 2>&1) || true
    expect_eq partitions_idempotent "0" "$again"

    # The archive role's upkeep (every minute on the running stack) reshapes only up to its own
    # horizon (0008): partitions of another span made on purpose further ahead stay.
    kept=$(admin "SELECT chat_reshape_partitions(interval '1 day', interval '1 hour');
                  SELECT count(*) FROM chat_partitions
                  WHERE from_ts >= $BASE AND until_ts <= $BASE + interval '3 minutes'" 2>&1 | tail -n 1) || true
    expect_eq partitions_beyond_upkeep_kept "3" "$kept"

    # Two sessions at once over the next 3 minutes: both succeed, 3 created between them.
    CONC="BEGIN;
          SELECT chat_ensure_partitions($BASE + interval '3 minutes', $BASE + interval '6 minutes',
                                        interval '1 minute');
          SELECT pg_sleep(0.5);
          COMMIT;"
    rc1=0; rc2=0
    "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$CHAT_PG_DSN" -c "$CONC" >"$TMP/e1" 2>&1 & p1=$!
    sleep 0.2
    "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$CHAT_PG_DSN" -c "$CONC" >"$TMP/e2" 2>&1 & p2=$!
    wait "$p1" || rc1=$?
    wait "$p2" || rc2=$?
    n1=$(head -n 1 "$TMP/e1"); n2=$(head -n 1 "$TMP/e2")
    if [[ $rc1 -eq 0 && $rc2 -eq 0 && $n1 =~ ^[0-9]+$ && $n2 =~ ^[0-9]+$ ]] && (( n1 + n2 == 3 )); then
        pass partitions_concurrent
    else
        fail partitions_concurrent "rc $rc1/$rc2, created $n1 + $n2: $(cat "$TMP/e1" "$TMP/e2" | tr '\n' ' ')"
    fi

    # A span change over the same range fills only the gaps and never fails on an overlap.
    grown=$(admin "SELECT chat_ensure_partitions($BASE, $BASE + interval '10 minutes', interval '5 minutes')" 2>&1) || true
    holes=$(admin "SELECT count(*) FROM (
                     SELECT from_ts, lag(until_ts) OVER (ORDER BY from_ts) AS prev_until
                     FROM chat_partitions
                     WHERE from_ts >= $BASE AND until_ts <= $BASE + interval '10 minutes') s
                   WHERE prev_until IS NOT NULL AND prev_until <> from_ts" 2>&1) || true
    covered=$(admin "SELECT min(from_ts) = $BASE AND max(until_ts) = $BASE + interval '10 minutes'
                     FROM chat_partitions
                     WHERE from_ts >= $BASE AND until_ts <= $BASE + interval '10 minutes'" 2>&1) || true
    expect_eq partitions_span_change "1 0 t" "$grown $holes $covered"

    # A row inside the range lands in its 1-minute partition (rolled back).
    landed=$(admin "BEGIN;
        INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, body, created_at)
        VALUES ('${TAG}_p', 1, '${TAG}_id', '${TAG}_cmid', 'u1', 'hello',
                $BASE + interval '90 seconds');
        SELECT tableoid::regclass::text = chat_partition_name($BASE + interval '90 seconds', interval '1 minute')
        FROM messages WHERE conversation_id = '${TAG}_p' AND created_at = $BASE + interval '90 seconds';
        ROLLBACK;" 2>&1) || true
    expect_eq partitions_insert_in_range "t" "$landed"
fi

# No default partition: a row outside every partition is refused.
free=$(admin "SELECT count(*) FROM chat_partitions
              WHERE from_ts <= timestamptz '2999-06-01 00:00:00+00'
                AND until_ts > timestamptz '2999-06-01 00:00:00+00'" 2>/dev/null || echo error)
if [[ $free == 0 ]]; then
    expect_fail messages_no_default_partition "no partition of relation" "$CHAT_PG_DSN" \
        "BEGIN;
         INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, created_at)
         VALUES ('${TAG}_n', 1, 'x', 'x', 'x', timestamptz '2999-06-01 00:00:00+00');
         ROLLBACK;"
else
    fail messages_no_default_partition "2999-06-01 is covered by a partition, or chat_partitions failed ($free)"
fi

# ---------------------------------------------------------------------------------------------
# 5. The views count what they say (as the owner, inside a transaction that is rolled back;
#    deltas, so whatever else the stack holds does not matter).
# ---------------------------------------------------------------------------------------------
C="${TAG}_v"
values=$(admin "BEGIN;
    SELECT chat_ensure_partitions(now() - interval '1 minute', now() + interval '1 minute', interval '1 day');
    CREATE TEMP TABLE before_daily ON COMMIT DROP AS
        SELECT * FROM report_daily_messages WHERE day = (now() AT TIME ZONE 'UTC')::date;
    CREATE TEMP TABLE before_active ON COMMIT DROP AS
        SELECT * FROM report_active_users WHERE day = (now() AT TIME ZONE 'UTC')::date;
    INSERT INTO conversations (id, kind, last_seq) VALUES ('$C', 'group', 5);
    INSERT INTO conversation_members (conversation_id, user_id, role, delivered_seq, read_seq)
    VALUES ('$C', '${TAG}_u1', 'owner', 5, 5),
           ('$C', '${TAG}_u2', 'member', 3, 1),
           ('$C', '${TAG}_u3', 'member', 0, 0);
    INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, kind, body, target_seq, emoji, reaction_on, created_at)
    VALUES ('$C', 1, 'i1', 'c1', '${TAG}_u1', 'text', 'a', NULL, NULL, NULL, now()),
           ('$C', 2, 'i2', 'c2', '${TAG}_u2', 'text', 'b', NULL, NULL, NULL, now()),
           ('$C', 3, 'i3', 'c3', '${TAG}_u2', 'reaction', '', 1, '+1', true, now()),
           ('$C', 4, 'i4', 'c4', '${TAG}_u1', 'edit', 'a2', 1, NULL, NULL, now()),
           ('$C', 5, 'i5', 'c5', '${TAG}_bot', 'system', 'hi', NULL, NULL, NULL, now());
    SELECT concat_ws(' ',
        a.messages - coalesce(b.messages, 0), a.text_messages - coalesce(b.text_messages, 0),
        a.edits - coalesce(b.edits, 0), a.reactions - coalesce(b.reactions, 0),
        a.system_messages - coalesce(b.system_messages, 0), a.senders - coalesce(b.senders, 0),
        a.conversations - coalesce(b.conversations, 0))
    FROM report_daily_messages a LEFT JOIN before_daily b USING (day)
    WHERE a.day = (now() AT TIME ZONE 'UTC')::date;
    SELECT concat_ws(' ',
        a.active_users - coalesce(b.active_users, 0), a.active_users_7d - coalesce(b.active_users_7d, 0),
        a.active_users_30d - coalesce(b.active_users_30d, 0))
    FROM report_active_users a LEFT JOIN before_active b USING (day)
    WHERE a.day = (now() AT TIME ZONE 'UTC')::date;
    SELECT concat_ws(' ', members, last_seq, hot_messages, first_message_at = now(), last_message_at = now())
    FROM report_conversation_stats WHERE conversation_id = '$C';
    SELECT concat_ws(' ', scope, members, members_behind, members_unread, max_delivery_lag, unread_total)
    FROM report_delivery_health WHERE conversation_id = '$C';
    SELECT count(*) FROM report_delivery_health WHERE scope = 'total' AND conversation_id IS NULL;
    ROLLBACK;" 2>&1) || true
mapfile -t vals <<<"$values"
# ensure (1 line), then: daily deltas, active deltas, conversation stats, delivery health, totals
expect_eq report_daily_messages_values "5 2 1 1 1 2 1" "${vals[1]:-}"
expect_eq report_active_users_values "2 2 2" "${vals[2]:-}"
expect_eq report_conversation_stats_values "3 5 5 t t" "${vals[3]:-}"
expect_eq report_delivery_health_values "conversation 3 2 2 5 9" "${vals[4]:-}"
expect_eq report_delivery_health_total_row "1" "${vals[5]:-}"
if [[ ${#vals[@]} -lt 6 ]]; then echo "  (view check output: $(echo "$values" | tr '\n' ' '))"; fi

exit $FAILED
