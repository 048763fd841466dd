/* PostgreSQL refusing the ingest's writes for a while (a full disk, out of memory, a deadlock, a
 * read-only database) costs time, not messages: the ingest keeps the batch, stores it again when
 * the database takes it, and only then acks and delivers. Simulated with a trigger that raises
 * disk_full (SQLSTATE 53100) on the update of one conversation's row while a switch row exists;
 * before the fix such a batch was split and each message dropped as poison. Against the running
 * stack. */
#include <check.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_ops.h"
#include "test_check.h"
#include "test_stack.h"

#define N_MSGS 3
#define FAULT_MS 4000

static test_stack stack;

static PGconn *pg_open(void)
{
    const char *dsn = getenv("CHAT_PG_DSN");
    PGconn *pg = PQconnectdb(dsn ? dsn : stack.cfg.pg_dsn);
    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "PostgreSQL: %s", PQerrorMessage(pg));
    return pg;
}

static void sql(PGconn *pg, const char *what, const char *query, const char *p1)
{
    const char *p[] = {p1};
    PGresult *r = PQexecParams(pg, query, p1 ? 1 : 0, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", what,
                  PQresultErrorMessage(r));
    PQclear(r);
}

/* Installs trigger function fn (its body: plpgsql up to RETURN NEW), fires it `when` (e.g.
 * "BEFORE UPDATE ON conversations") under a trigger of the same name, and switches it on for
 * conv: a row of table fn, which the body looks up. */
static void arm_fault(PGconn *pg, const char *fn, const char *body, const char *when, const char *conv)
{
    char q[1024];
    snprintf(q, sizeof q, "CREATE TABLE IF NOT EXISTS %s (conv text PRIMARY KEY)", fn);
    sql(pg, "switch table", q, NULL);
    snprintf(q, sizeof q, "CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN %s END $f$", fn,
             body);
    sql(pg, "function", q, NULL);
    snprintf(q, sizeof q, "DROP TRIGGER IF EXISTS %s ON %s", fn, strstr(when, " ON ") + 4);
    sql(pg, "old trigger", q, NULL);
    snprintf(q, sizeof q, "CREATE TRIGGER %s %s FOR EACH ROW EXECUTE FUNCTION %s()", fn, when, fn);
    sql(pg, "trigger", q, NULL);
    snprintf(q, sizeof q, "INSERT INTO %s VALUES ($1)", fn);
    sql(pg, "switch on", q, conv);
}

/* Runs in the parent after the test, whatever became of it: the trigger must not outlive it. */
static void remove_fault(void)
{
    const char *dsn = getenv("CHAT_PG_DSN");
    PGconn *pg = PQconnectdb(dsn ? dsn : stack.cfg.pg_dsn);
    if (PQstatus(pg) == CONNECTION_OK)
        PQclear(PQexec(pg, "DROP TRIGGER IF EXISTS test_store_fault ON conversations;"
                           " DROP FUNCTION IF EXISTS test_store_fault(); DROP TABLE IF EXISTS test_store_fault;"
                           " DROP TRIGGER IF EXISTS test_store_poison ON messages;"
                           " DROP FUNCTION IF EXISTS test_store_poison(); DROP TABLE IF EXISTS test_store_poison;"
                           " DROP SEQUENCE IF EXISTS test_store_poison_tries"));
    PQfinish(pg);
}

static void send_msg(ws_client *c, const char *conv, const char *cmid)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", cmid);
    chat_status s = ws_client_send_json(c, f);
    json_decref(f);
    ck_assert_msg(s == CHAT_OK, "send %s: %s (%s)", cmid, chat_status_str(s), ws_client_error(c));
}

START_TEST(refused_writes_cost_time_not_messages)
{
    char conv[80], alice[80], bob[80], cmids[N_MSGS][80];
    test_stack_unique_id("sf", conv, sizeof conv);
    test_stack_unique_id("sfa", alice, sizeof alice);
    test_stack_unique_id("sfb", bob, sizeof bob);
    for (int i = 0; i < N_MSGS; i++)
        snprintf(cmids[i], sizeof cmids[i], "m%d", i + 1);
    test_conv_create(&stack, conv, alice, bob);

    PGconn *pg = pg_open();
    arm_fault(pg, "test_store_fault",
              "IF EXISTS (SELECT 1 FROM test_store_fault s WHERE s.conv = NEW.id) THEN"
              " RAISE EXCEPTION 'simulated: could not extend file: No space left on device' USING ERRCODE = 'disk_full';"
              " END IF; RETURN NEW;",
              "BEFORE UPDATE ON conversations", conv);
    double retries0 = test_worker_metric("chat_ingest_store_retries_total");

    ws_client *a = test_connect_user(&stack, alice), *b = test_connect_user(&stack, bob);
    for (int i = 0; i < N_MSGS; i++)
        send_msg(a, conv, cmids[i]);

    /* while the database refuses: no ack, and no error but `unavailable` (a client resends) */
    bool resend = false;
    for (int64_t end = test_mono_ms() + FAULT_MS;;) {
        json_t *f = NULL;
        chat_status st = test_recv_by(a, end, &f);
        if (st == CHAT_ERR_TIMEOUT)
            break;
        ck_assert_msg(st == CHAT_OK, "alice: %s (%s)", chat_status_str(st), ws_client_error(a));
        const char *type = test_str(f, "type");
        ck_assert_msg(!type || strcmp(type, "ack") != 0, "acked while PostgreSQL refused the write: %s", test_json(f));
        if (type && strcmp(type, "error") == 0) {
            ck_assert_msg(test_str(f, "code") && strcmp(test_str(f, "code"), "unavailable") == 0,
                          "a send was refused for good while PostgreSQL refused the write for now: %s", test_json(f));
            resend = true;
        }
        json_decref(f);
    }
    PGresult *r = PQexecParams(pg, "SELECT count(*) FROM messages WHERE conversation_id = $1", 1, NULL,
                               (const char *[]){conv}, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "0") == 0,
                  "%s messages stored while the trigger refused them", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (retries0 >= 0)
        ck_assert_msg(test_worker_metric("chat_ingest_store_retries_total") > retries0,
                      "chat_ingest_store_retries_total did not grow while PostgreSQL refused (%g)", retries0);

    /* the database takes writes again: every message acked and delivered once, in order */
    sql(pg, "switch off", "DELETE FROM test_store_fault WHERE conv = $1", conv);
    if (resend)
        for (int i = 0; i < N_MSGS; i++)
            send_msg(a, conv, cmids[i]);
    int64_t acked[N_MSGS] = {0}, got[N_MSGS] = {0};
    int nacks = 0, nmsgs_b = 0;
    for (int64_t end = test_mono_ms() + 30000; nacks < N_MSGS || nmsgs_b < N_MSGS;) {
        ck_assert_msg(test_mono_ms() < end,
                      "30 s after PostgreSQL took writes again: %d of %d acked, %d of %d delivered to bob", nacks,
                      N_MSGS, nmsgs_b, N_MSGS);
        for (int who = 0; who < 2; who++) { /* a frame of alice's (acks), then one of bob's (msgs) */
            json_t *f = NULL;
            chat_status st = ws_client_recv_json(who == 0 ? a : b, 100, &f);
            if (st == CHAT_ERR_TIMEOUT)
                continue;
            ck_assert_msg(st == CHAT_OK, "%s: %s", who == 0 ? "alice" : "bob", chat_status_str(st));
            const char *t = test_str(f, "type"), *cm = test_str(f, "cmid");
            for (int i = 0; t && cm && i < N_MSGS; i++) {
                if (strcmp(cm, cmids[i]) != 0)
                    continue;
                if (who == 0 && strcmp(t, "ack") == 0 && acked[i] == 0) {
                    acked[i] = test_int(f, "seq");
                    nacks++;
                } else if (who == 1 && strcmp(t, "msg") == 0 && got[i] == 0) {
                    got[i] = test_int(f, "seq");
                    nmsgs_b++;
                }
            }
            json_decref(f);
        }
    }
    for (int i = 0; i < N_MSGS; i++) {
        ck_assert_msg(acked[i] == i + 1, "%s acked with seq %lld, want %d (in the order sent)", cmids[i],
                      (long long)acked[i], i + 1);
        ck_assert_msg(got[i] == i + 1, "bob got %s with seq %lld, want %d", cmids[i], (long long)got[i], i + 1);
    }
    r = PQexecParams(pg, "SELECT count(*), count(DISTINCT client_msg_id) FROM messages WHERE conversation_id = $1", 1,
                     NULL, (const char *[]){conv}, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == N_MSGS &&
                      atoi(PQgetvalue(r, 0, 1)) == N_MSGS,
                  "stored %s messages (%s distinct cmids), want %d once each", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1),
                  N_MSGS);
    PQclear(r);
    PQfinish(pg);
    ws_client_shutdown(a, 5000);
    ws_client_shutdown(b, 5000);
}
END_TEST

/* Waits up to 15 s for alice's acks of every cmid of want[0..n) that is not NULL: their seqs in
 * seq[] (0: not acked); a cmid of `never` acked fails the test. */
static void await_acks(ws_client *a, const char *const *want, int n, const char *never, int64_t *seq)
{
    int left = 0;
    for (int i = 0; i < n; i++)
        left += want[i] != NULL;
    for (int64_t end = test_mono_ms() + 15000; left > 0;) {
        json_t *f = NULL;
        chat_status st = test_recv_by(a, end, &f);
        ck_assert_msg(st == CHAT_OK, "alice, %d acks still due: %s (%s)", left, chat_status_str(st),
                      ws_client_error(a));
        const char *t = test_str(f, "type"), *cm = test_str(f, "cmid");
        bool ack = t && cm && strcmp(t, "ack") == 0;
        ck_assert_msg(!ack || !never || strcmp(cm, never) != 0, "the refused message was acked: %s", test_json(f));
        for (int i = 0; ack && i < n; i++)
            if (want[i] && strcmp(cm, want[i]) == 0 && seq[i] == 0) {
                seq[i] = test_int(f, "seq");
                left--;
            }
        json_decref(f);
    }
}

/* The store's error paths through its pipeline: a message the database refuses for its own data
 * (SQLSTATE class 22) is dropped alone (its batch split) and the messages around it are stored in
 * order; a write refused once as "no partition" (23514) makes the ingest create partitions and
 * store the batch again. Simulated with a trigger on the insert into `messages`. */
START_TEST(poison_dropped_alone_and_missing_partition_created)
{
    char conv[80], conv2[80], alice[80], bob[80];
    test_stack_unique_id("sp", conv, sizeof conv);
    test_stack_unique_id("sq", conv2, sizeof conv2);
    test_stack_unique_id("spa", alice, sizeof alice);
    test_stack_unique_id("spb", bob, sizeof bob);
    test_conv_create(&stack, conv, alice, bob);
    test_conv_create(&stack, conv2, alice, bob);
    PGconn *pg = pg_open();
    sql(pg, "tries", "CREATE SEQUENCE IF NOT EXISTS test_store_poison_tries", NULL);
    arm_fault(pg, "test_store_poison",
              "IF NEW.body = 'poison' THEN"
              " RAISE EXCEPTION 'simulated: invalid value' USING ERRCODE = 'invalid_parameter_value'; END IF;"
              " IF EXISTS (SELECT 1 FROM test_store_poison s WHERE s.conv = NEW.conversation_id)"
              " AND nextval('test_store_poison_tries') = 1 THEN"
              " RAISE EXCEPTION 'no partition of relation \"messages\" found for row (simulated)'"
              " USING ERRCODE = 'check_violation'; END IF; RETURN NEW;",
              "BEFORE INSERT ON messages", conv2);
    double poison0 = test_worker_metric("chat_ingest_dropped_total{reason=\"poison\"}");

    ws_client *a = test_connect_user(&stack, alice);
    send_msg(a, conv, "p1");
    send_msg(a, conv, "poison"); /* its body too: refused by the trigger */
    send_msg(a, conv, "p3");
    int64_t seq[3] = {0};
    /* a partition's messages are stored in order: p3 acked, the poison was dropped before it */
    await_acks(a, (const char *const[]){"p1", NULL, "p3"}, 3, "poison", seq);
    ck_assert_msg(seq[0] == 1 && seq[2] == 2, "p1, p3 acked with seqs %lld, %lld; want 1, 2", (long long)seq[0],
                  (long long)seq[2]);
    if (poison0 >= 0)
        ck_assert_msg(test_worker_metric("chat_ingest_dropped_total{reason=\"poison\"}") > poison0,
                      "chat_ingest_dropped_total{reason=\"poison\"} did not grow");

    send_msg(a, conv2, "q1");
    int64_t seq2[1] = {0};
    await_acks(a, (const char *const[]){"q1"}, 1, NULL, seq2);
    ck_assert_msg(seq2[0] == 1, "q1 acked with seq %lld, want 1", (long long)seq2[0]);
    PGresult *r = PQexec(pg, "SELECT last_value FROM test_store_poison_tries");
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) >= 2,
                  "the write refused as 'no partition' was not tried again (%s tries)", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
    ws_client_shutdown(a, 5000);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_store_faults");
    return test_run_core(&stack, "store_faults", 120, NULL, NULL, remove_fault,
                         (const TTest *const[]){refused_writes_cost_time_not_messages,
                                                poison_dropped_alone_and_missing_partition_created, NULL});
}
