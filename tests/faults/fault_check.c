/* The fault suite's verdict on one scenario: chat-bench's report (what the clients saw), the
 * probe's (the outage a user saw), and PostgreSQL (what is stored), against the guarantees:
 *   - every acked message is stored exactly once (by (conversation, cmid)), nothing is stored
 *     twice, every conversation's seq runs 1..N without a gap or a repeat, the dedupe table has
 *     one row per stored message;
 *   - each sender's order is kept in the store (bench cmids p<proc>-<k> grow with seq per sender
 *     and conversation; an inversion is only possible for a message the client sent again after
 *     an error, so at most `resent` of them);
 *   - every online recipient ends with every message: chat-bench's own checks (undelivered,
 *     duplicates, seq conflicts, out of order, gaps, sync holes, unsynced) are all zero;
 *   - the probe got every message acked.
 * Prints the scenario's row of the table and appends it (tab separated) to --results.
 *
 *   fault_check --scenario NAME --bench FILE --probe FILE --probe-prefix P --pg-dsn DSN
 *               [--results FILE] [--allow-closes] [--note TEXT]
 * Exit 0: every guarantee held; 1: one did not (each is printed); 2: bad input. */
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static PGconn *pg;

static int64_t jint(json_t *root, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *j = root;
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && j; k = strtok_r(NULL, ".", &save))
        j = json_object_get(j, k);
    return json_is_integer(j) ? (int64_t)json_integer_value(j) : json_is_real(j) ? (int64_t)json_real_value(j) : -1;
}

/* One row of integers from sql with $1 = param. */
static bool query(const char *sql, const char *param, int64_t *out, int n)
{
    const char *params[] = {param};
    PGresult *r = PQexecParams(pg, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < n) {
        fprintf(stderr, "fault_check: query failed: %s\n", PQresultErrorMessage(r));
        PQclear(r);
        return false;
    }
    for (int i = 0; i < n; i++)
        out[i] = PQgetisnull(r, 0, i) ? 0 : strtoll(PQgetvalue(r, 0, i), NULL, 10);
    PQclear(r);
    return true;
}

static int problems;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("  VIOLATION: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    problems++;
}

int main(int argc, char **argv)
{
    const char *scenario = NULL, *bench_path = NULL, *probe_path = NULL, *probe_prefix = NULL, *dsn = NULL,
               *results = NULL, *note = "";
    bool allow_closes = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--allow-closes") == 0) {
            allow_closes = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "fault_check: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--scenario") == 0)
            scenario = v;
        else if (strcmp(a, "--bench") == 0)
            bench_path = v;
        else if (strcmp(a, "--probe") == 0)
            probe_path = v;
        else if (strcmp(a, "--probe-prefix") == 0)
            probe_prefix = v;
        else if (strcmp(a, "--pg-dsn") == 0)
            dsn = v;
        else if (strcmp(a, "--results") == 0)
            results = v;
        else if (strcmp(a, "--note") == 0)
            note = v;
        else {
            fprintf(stderr, "fault_check: unknown argument %s\n", a);
            return 2;
        }
        i++;
    }
    if (!scenario || !bench_path || !probe_path || !probe_prefix || !dsn) {
        fprintf(stderr, "fault_check: --scenario, --bench, --probe, --probe-prefix and --pg-dsn are required\n");
        return 2;
    }
    json_error_t jerr;
    json_t *bench = json_load_file(bench_path, 0, &jerr);
    json_t *probe = json_load_file(probe_path, 0, &jerr);
    if (!bench || !probe) {
        printf("  VIOLATION: no report from %s\n", bench ? "the probe" : "chat-bench");
        return 1;
    }
    pg = PQconnectdb(dsn);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "fault_check: PostgreSQL: %s\n", PQerrorMessage(pg));
        return 2;
    }
    const char *run = json_string_value(json_object_get(bench, "run_id"));
    if (!run) {
        fprintf(stderr, "fault_check: no run_id in %s\n", bench_path);
        return 2;
    }
    char like[128], plike[128];
    snprintf(like, sizeof like, "%s-c%%", run);
    snprintf(plike, sizeof plike, "%s-%%", probe_prefix);

    int64_t sent = jint(bench, "send.sent"), acked = jint(bench, "send.acked"), resent = jint(bench, "send.resent");
    int64_t expected = jint(bench, "deliveries.expected"), unique = jint(bench, "deliveries.unique");
    int64_t redeliveries = jint(bench, "deliveries.redeliveries");
    double rate = json_real_value(json_object_get(json_object_get(bench, "params"), "rate"));

    /* the store */
    int64_t st[4];
    if (!query("SELECT count(*), count(DISTINCT (conversation_id, client_msg_id)), count(DISTINCT conversation_id),"
               " count(DISTINCT (conversation_id, seq)) FROM messages WHERE conversation_id LIKE $1",
               like, st, 4))
        return 2;
    int64_t stored = st[0], stored_distinct = st[1], convs = st[2], distinct_seq = st[3];
    int64_t gaps[1];
    if (!query("SELECT count(*) FROM (SELECT conversation_id, count(*) n, min(seq) lo, max(seq) hi,"
               " count(DISTINCT seq) d FROM messages WHERE conversation_id LIKE $1 GROUP BY conversation_id) t"
               " WHERE lo <> 1 OR hi <> n OR d <> n",
               like, gaps, 1))
        return 2;
    int64_t order[1];
    if (!query("SELECT count(*) FROM (SELECT k, lag(k) OVER (PARTITION BY conversation_id, sender_id, proc ORDER BY seq) AS"
               " prev FROM (SELECT conversation_id, sender_id, seq, substring(client_msg_id FROM '^p([0-9]+)-') AS proc,"
               " substring(client_msg_id FROM '-([0-9]+)$')::bigint AS k FROM messages WHERE conversation_id LIKE $1) m) t"
               " WHERE prev IS NOT NULL AND k < prev",
               like, order, 1))
        return 2;
    int64_t dd[1];
    if (!query("SELECT count(*) FROM message_dedupe WHERE conversation_id LIKE $1", like, dd, 1))
        return 2;
    int64_t pst[3];
    if (!query("SELECT count(*), count(DISTINCT (conversation_id, client_msg_id)), (SELECT count(*) FROM (SELECT"
               " conversation_id FROM messages WHERE conversation_id LIKE $1 GROUP BY conversation_id HAVING"
               " min(seq) <> 1 OR max(seq) <> count(*) OR count(DISTINCT seq) <> count(*)) g) FROM messages"
               " WHERE conversation_id LIKE $1",
               plike, pst, 3))
        return 2;

    /* the verdict */
    json_t *checks = json_object_get(bench, "checks");
    const char *names[] = {"connect_failures", "unacked", "refused_sends", "undelivered", "duplicates", "seq_conflicts",
                           "out_of_order", "gaps", "sync_holes", "unsynced", "body_mismatch", "protocol_errors",
                           "bad_frames"};
    int64_t bench_bad = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int64_t v = json_integer_value(json_object_get(checks, names[i]));
        if (v > 0) {
            problem("chat-bench %s = %" PRId64, names[i], v);
            bench_bad += v;
        }
    }
    int64_t closes = json_integer_value(json_object_get(checks, "unexpected_closes"));
    if (closes > 0 && !allow_closes)
        problem("chat-bench unexpected_closes = %" PRId64 " (the server closed client connections)", closes);
    int64_t unacked = json_integer_value(json_object_get(checks, "unacked"));
    /* lost: acked but not stored. Only this run's clients post to its conversations, so with every
     * sent message acked the stored set must be exactly the sent set. */
    int64_t lost = unacked == 0 ? sent - stored_distinct : -1;
    if (lost != 0)
        problem("lost: %" PRId64 " sent and acked, %" PRId64 " stored%s", acked, stored_distinct,
                unacked ? " (some unacked: the bench failed)" : "");
    int64_t dup = stored - stored_distinct;
    if (dup != 0)
        problem("%" PRId64 " messages stored twice (same conversation and cmid)", dup);
    if (distinct_seq != stored)
        problem("%" PRId64 " messages share a seq with another", stored - distinct_seq);
    if (gaps[0] != 0)
        problem("%" PRId64 " conversations whose seq is not 1..N", gaps[0]);
    if (dd[0] != stored_distinct)
        problem("message_dedupe holds %" PRId64 " rows for %" PRId64 " stored messages", dd[0], stored_distinct);
    if (order[0] > resent)
        problem("%" PRId64 " sender-order inversions in the store, more than the %" PRId64 " messages sent again",
                order[0], resent);
    int64_t probe_sent = jint(probe, "sent"), probe_acked = jint(probe, "acked"), probe_unacked = jint(probe, "unacked");
    if (probe_unacked != 0)
        problem("the probe has %" PRId64 " messages never acked", probe_unacked);
    if (pst[1] < probe_acked)
        problem("the probe had %" PRId64 " acked, %" PRId64 " stored", probe_acked, pst[1]);
    if (pst[0] != pst[1])
        problem("%" PRId64 " probe messages stored twice", pst[0] - pst[1]);
    if (pst[2] != 0)
        problem("%" PRId64 " probe conversations whose seq is not 1..N", pst[2]);

    int64_t recovery = jint(probe, "max_ms");
    printf("\n  %-22s %6s %7s %7s %7s %9s %5s %9s %8s %8s %10s\n", "scenario", "rate", "sent", "acked", "stored",
           "delivered", "lost", "dup-store", "disorder", "seq-gaps", "recovery");
    char lost_s[24];
    snprintf(lost_s, sizeof lost_s, lost < 0 ? "?" : "%" PRId64, lost);
    printf("  %-22s %6.0f %7" PRId64 " %7" PRId64 " %7" PRId64 " %9" PRId64 " %5s %9" PRId64 " %8" PRId64 " %8" PRId64
           " %8.1f s\n",
           scenario, rate, sent, acked, stored, unique, lost_s, dup, order[0] + jint(checks, "out_of_order"), gaps[0],
           recovery / 1000.0);
    printf("  (%" PRId64 " conversations; %" PRId64 " deliveries expected, %" PRId64
           " redeliveries dropped by id; %" PRId64 " resent, %" PRId64 " connections closed by the server, %" PRId64
           " closed with 1012 to sync; probe: %" PRId64 " sent, %" PRId64 " acked, ack p99 %" PRId64 " ms, %" PRId64
           " reconnects)\n",
           convs, expected, redeliveries, resent, closes,
           (int64_t)json_integer_value(json_object_get(json_object_get(bench, "connections"), "restart_closes")),
           probe_sent, probe_acked, jint(probe, "p99_ms"), jint(probe, "reconnects"));
    printf("  result: %s\n\n", problems ? "FAIL" : "PASS");
    if (results) {
        FILE *f = fopen(results, "a");
        if (f) {
            fprintf(f, "%s\t%.0f\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\t%s\t%" PRId64 "\t%" PRId64 "\t%" PRId64
                       "\t%.1f\t%s\t%s\n",
                    scenario, rate, sent, acked, stored, unique, lost_s, dup, order[0] + jint(checks, "out_of_order"),
                    gaps[0], recovery / 1000.0, problems ? "FAIL" : "PASS", note);
            fclose(f);
        }
    }
    (void)bench_bad;
    PQfinish(pg);
    json_decref(bench);
    json_decref(probe);
    return problems ? 1 : 0;
}
