/* chat-bench: summary and JSON report (see bench_report.h). Main thread. */
#include "bench_report.h"

#include <inttypes.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "chat_time.h"

typedef struct check {
    const char *name;
    uint64_t value;
    const char *meaning;
} check;

#define N_CHECKS 14

static void checks_of(const bench_result *r, check out[N_CHECKS])
{
    const check c[N_CHECKS] = {
        {"connect_failures", r->conns_failed, "connections that never opened"},
        {"unexpected_closes", r->unexpected_closes, "connections the server closed"},
        {"unacked", r->unacked, "messages sent and never acked (lost)"},
        {"refused_sends", r->failed_sends, "sends refused for good (error frames)"},
        {"undelivered", r->missing_deliveries, "committed seqs missing at a member device at the end (lost)"},
        {"duplicates", r->duplicates, "one cmid seen with two different ids (stored twice)"},
        {"seq_conflicts", r->seq_conflicts, "one seq holding two messages, or one id under two seqs"},
        {"out_of_order", r->out_of_order, "a seq below one the device already had"},
        {"gaps", r->gaps, "a seq more than one above the device's highest"},
        {"sync_holes", r->sync_holes, "seqs still missing right after synced"},
        {"unsynced", r->unsynced, "reconnected connections that never got synced"},
        {"body_mismatch", r->body_mismatch, "bodies that arrived changed"},
        {"protocol_errors", r->protocol_errors, "frames that break the protocol (acks of unknown cmids, ...)"},
        {"bad_frames", r->bad_frames, "frames that are not JSON objects with a type"},
    };
    memcpy(out, c, sizeof c);
}

bool bench_report_ok(const bench_report *rep)
{
    check c[N_CHECKS];
    checks_of(&rep->r, c);
    for (int i = 0; i < N_CHECKS; i++)
        if (c[i].value)
            return false;
    return true;
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static double secs(int64_t ns)
{
    return (double)ns / 1e9;
}

static double per_s(uint64_t n, int64_t from_ns, int64_t to_ns)
{
    return to_ns > from_ns ? (double)n / secs(to_ns - from_ns) : 0.0;
}

static void print_lat(FILE *out, const char *label, const bench_hist *h)
{
    if (h->count == 0) {
        fprintf(out, "%-12s none\n", label);
        return;
    }
    fprintf(out, "%-12s p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f ms  (mean %.2f, n %" PRIu64 ")\n", label,
            ms(bench_hist_quantile(h, 0.50)), ms(bench_hist_quantile(h, 0.90)), ms(bench_hist_quantile(h, 0.99)),
            ms(bench_hist_quantile(h, 0.999)), ms(h->max_us), bench_hist_mean(h) / 1000.0, h->count);
}

void bench_report_print(FILE *out, const bench_plan *p, const bench_report *rep)
{
    const bench_result *r = &rep->r;
    const bench_opts *o = &p->opts;
    uint64_t direct = 0;
    for (uint32_t c = 0; c < p->n_convs; c++)
        direct += p->conv_direct[c];
    fprintf(out, "\n== chat-bench %s (run %s, proto %s, %d process%s, server%s %s)\n", o->scenario, p->run_id, o->proto,
            p->n_procs, p->n_procs == 1 ? "" : "es", p->n_gateways == 1 ? "" : "s",
            o->gateways[0] ? o->gateways : p->gateway_host[0]);
    if (p->proto == BENCH_PROTO_XMPP)
        fprintf(out, "note         proto xmpp: ack = the server's XEP-0198 <a/> (stanza handled: archived and routed); "
                     "no server seq, order checked per sender; the sender's own device gets no copy\n");
    else if (p->proto == BENCH_PROTO_SOCKETIO)
        fprintf(out, "note         proto socketio: ack = the relay's Socket.IO ack (relayed, nothing stored); "
                     "no server seq, order checked per sender\n");
    fprintf(out,
            "set-up       %u conversations (%" PRIu64 " 1:1, %" PRIu64 " groups of %ld) over %u users, %" PRIu64
            " new, in %.2f s\n",
            p->n_convs, direct, (uint64_t)p->n_convs - direct, o->group_size, p->n_users, rep->convs_created,
            rep->setup_s);
    fprintf(out,
            "connections  %" PRIu64 "/%" PRIu64 " open in %.2f s (ramp %.0f/s), %" PRIu64 " failed, %" PRIu64
            " retries, %" PRIu64 " refused upgrades\n",
            r->conns_open, r->conns, secs(r->ramp_end_ns - r->ramp_start_ns), o->ramp_rate, r->conns_failed,
            r->connect_retries, r->http_refused);
    print_lat(out, "  connect", &r->connect);
    if (r->restart_closes)
        fprintf(out,
                "closes       %" PRIu64 " closed by the server with 1012 (service restart): reconnected and synced\n",
                r->restart_closes);
    char end[32] = "?";
    if (rep->rss_end_kib >= 0)
        snprintf(end, sizeof end, "%" PRId64, rep->rss_end_kib);
    if (rep->rss_pids > 0 && rep->rss_before_kib >= 0 && rep->rss_after_kib >= 0)
        fprintf(out,
                "gateway RSS  %" PRId64 " KiB before, %" PRId64 " KiB after the ramp, %s"
                " KiB at the end: %.2f KiB per connection (pid %s)\n",
                rep->rss_before_kib, rep->rss_after_kib, end,
                r->conns_open ? (double)(rep->rss_after_kib - rep->rss_before_kib) / (double)r->conns_open : 0.0,
                rep->rss_pid_list);
    else
        fprintf(out, "gateway RSS  not read (no gateway pid: --gateway-pid or $CHAT_HOME/run/gateway.pid)\n");
    if (o->rate > 0) {
        fprintf(out,
                "sending      %.0f msg/s for %.1f s (after %.1f s of warm-up): %" PRIu64 " scheduled, %" PRIu64
                " sent, %" PRIu64 " skipped (sender offline), %" PRIu64 " resent, %" PRIu64 " late > 5 ms\n",
                o->rate, o->duration, o->warmup, r->scheduled, r->sent, r->skipped_offline, r->resent, r->late_sends);
        print_lat(out, "  lag", &r->lag);
        fprintf(out,
                "acked        %" PRIu64 " (%.1f msg/s)   errors: unavailable %" PRIu64 ", rate_limited %" PRIu64
                ", not_member %" PRIu64 ", other %" PRIu64 "\n",
                r->acked, per_s(r->acked - r->acked_warm, r->send_start_ns, r->last_ack_ns), r->err_unavailable,
                r->err_rate_limited, r->err_not_member, r->err_other);
        if (r->err_unavailable)
            fprintf(out, "  unavailable: \"%s\" (the first; each resent with the same cmid)\n", r->unavailable_why);
        print_lat(out, "  send->ack", &r->ack);
        fprintf(out,
                "delivered    %" PRIu64 "/%" PRIu64 " (%.1f deliveries/s), %" PRIu64 " redeliveries dropped by id\n",
                r->deliveries, r->deliveries_expected,
                per_s(r->deliveries - r->deliveries_warm, r->send_start_ns, r->last_delivery_ns), r->redeliveries);
        print_lat(out, "  send->msg", &r->delivery);
    } else {
        fprintf(out, "sending      none (rate 0): connections held %.1f s\n", o->hold + o->duration);
    }
    if (o->drop > 0) {
        fprintf(out,
                "reconnect    %" PRIu64 " dropped, %" PRIu64 " reconnected, %" PRIu64 " synced in %.2f s after "
                "the reconnect began (%" PRIu64 " sync retries)\n",
                r->dropped, r->reconnected, r->synced,
                r->last_synced_ns > r->reconnect_start_ns ? secs(r->last_synced_ns - r->reconnect_start_ns) : 0.0,
                r->sync_retries);
        print_lat(out, "  to synced", &r->resync);
    }
    check c[N_CHECKS];
    checks_of(r, c);
    fprintf(out, "checks      ");
    for (int i = 0; i < N_CHECKS; i++)
        fprintf(out, " %s %" PRIu64 "%s", c[i].name, c[i].value, i + 1 < N_CHECKS ? "," : "\n");
    if (r->unexpected_frames)
        fprintf(out, "note         %" PRIu64 " frames of other types (members, receipt, ...) ignored\n",
                r->unexpected_frames);
    if (r->cross_sender_reorders)
        fprintf(out, "note         %" PRIu64 " messages arrived after a later one of another sender (no order promised "
                     "across senders by this protocol)\n",
                r->cross_sender_reorders);
    bool ok = bench_report_ok(rep);
    for (int i = 0; i < N_CHECKS; i++)
        if (c[i].value)
            fprintf(out, "failed       %s %" PRIu64 ": %s\n", c[i].name, c[i].value, c[i].meaning);
    if (!ok)
        for (uint32_t i = 0; i < r->n_examples; i++)
            fprintf(out, "also seen    %s\n", r->examples[i]);
    fprintf(out, "result       %s%s%s  (%.1f s in all)\n", ok ? "PASS" : "FAIL",
            ok ? "" : ": first seen: ", ok ? "" : r->problem, rep->wall_s);
}

static json_t *lat_json(const bench_hist *h)
{
    return json_pack("{s:I, s:f, s:f, s:f, s:f, s:f, s:f}", "count", (json_int_t)h->count, "mean",
                     bench_hist_mean(h) / 1000.0, "p50", ms(bench_hist_quantile(h, 0.50)), "p90",
                     ms(bench_hist_quantile(h, 0.90)), "p99", ms(bench_hist_quantile(h, 0.99)), "p99_9",
                     ms(bench_hist_quantile(h, 0.999)), "max", ms(h->max_us));
}

static json_t *params_json(const bench_opts *o)
{
    json_t *j = json_object();
    json_object_set_new(j, "users", json_integer(o->users));
    json_object_set_new(j, "conversations", json_integer(o->conversations));
    json_object_set_new(j, "group_size", json_integer(o->group_size));
    json_object_set_new(j, "mix", json_real(o->mix));
    json_object_set_new(j, "connections", json_integer(o->connections));
    json_object_set_new(j, "ramp_rate", json_real(o->ramp_rate));
    json_object_set_new(j, "hold", json_real(o->hold));
    json_object_set_new(j, "rate", json_real(o->rate));
    json_object_set_new(j, "duration", json_real(o->duration));
    json_object_set_new(j, "drain", json_real(o->drain));
    json_object_set_new(j, "linger", json_real(o->linger));
    json_object_set_new(j, "warmup", json_real(o->warmup));
    json_object_set_new(j, "body_size", json_integer(o->body_size));
    json_object_set_new(j, "drop", json_integer(o->drop));
    json_object_set_new(j, "drop_at", json_real(o->drop_at));
    json_object_set_new(j, "reconnect_after", json_real(o->reconnect_after));
    json_object_set_new(j, "procs", json_integer(o->procs));
    json_object_set_new(j, "conns_per_ip", json_integer(o->conns_per_ip));
    return j;
}

chat_status bench_report_write_json(const char *path, const bench_plan *p, const bench_report *rep)
{
    const bench_result *r = &rep->r;
    const bench_opts *o = &p->opts;
    char date[64], host[256] = "";
    time_t t = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    gethostname(host, sizeof host - 1);
    json_t *gws = json_array();
    for (int i = 0; i < p->n_gateways; i++)
        json_array_append_new(gws, json_string(p->gateway_host[i]));
    uint64_t direct = 0;
    for (uint32_t c = 0; c < p->n_convs; c++)
        direct += p->conv_direct[c];

    json_t *root = json_object();
    json_object_set_new(root, "tool", json_string("chat-bench"));
    json_object_set_new(root, "scenario", json_string(o->scenario));
    json_object_set_new(root, "proto", json_string(o->proto));
    json_object_set_new(root, "run_id", json_string(p->run_id));
    json_object_set_new(root, "date", json_string(date));
    json_object_set_new(root, "host", json_string(host));
    json_object_set_new(root, "gateways", gws);
    json_object_set_new(root, "params", params_json(o));
    json_object_set_new(root, "setup",
                        json_pack("{s:I, s:I, s:I, s:f}", "conversations", (json_int_t)p->n_convs, "direct",
                                  (json_int_t)direct, "created", (json_int_t)rep->convs_created, "seconds",
                                  rep->setup_s));
    json_t *conn = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "target", (json_int_t)r->conns, "open",
                             (json_int_t)r->conns_open, "failed", (json_int_t)r->conns_failed, "attempts",
                             (json_int_t)r->connect_attempts, "retries", (json_int_t)r->connect_retries, "http_refused",
                             (json_int_t)r->http_refused, "unexpected_closes", (json_int_t)r->unexpected_closes,
                             "ramp_s", secs(r->ramp_end_ns - r->ramp_start_ns));
    json_object_set_new(conn, "restart_closes", json_integer((json_int_t)r->restart_closes));
    json_object_set_new(conn, "connect_ms", lat_json(&r->connect));
    json_object_set_new(root, "connections", conn);
    json_t *rss = json_object();
    json_object_set_new(rss, "pids", json_string(rep->rss_pid_list));
    if (rep->rss_pids > 0 && rep->rss_before_kib >= 0 && rep->rss_after_kib >= 0) {
        json_object_set_new(rss, "before_kib", json_integer(rep->rss_before_kib));
        json_object_set_new(rss, "after_ramp_kib", json_integer(rep->rss_after_kib));
        json_object_set_new(rss, "end_kib", rep->rss_end_kib >= 0 ? json_integer(rep->rss_end_kib) : json_null());
        json_object_set_new(rss, "per_connection_kib",
                            json_real(r->conns_open
                                          ? (double)(rep->rss_after_kib - rep->rss_before_kib) / (double)r->conns_open
                                          : 0.0));
    }
    json_object_set_new(root, "gateway_rss", rss);
    json_t *send = json_pack("{s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I}", "rate", o->rate, "duration_s", o->duration,
                             "scheduled", (json_int_t)r->scheduled, "sent", (json_int_t)r->sent, "acked",
                             (json_int_t)r->acked, "skipped_offline", (json_int_t)r->skipped_offline, "resent",
                             (json_int_t)r->resent, "late", (json_int_t)r->late_sends);
    json_object_set_new(send, "lag_ms", lat_json(&r->lag));
    json_object_set_new(send, "errors",
                        json_pack("{s:I, s:I, s:I, s:I}", "unavailable", (json_int_t)r->err_unavailable, "rate_limited",
                                  (json_int_t)r->err_rate_limited, "not_member", (json_int_t)r->err_not_member, "other",
                                  (json_int_t)r->err_other));
    json_object_set_new(send, "unavailable_why", json_string(r->unavailable_why));
    /* acked and delivered of the messages scheduled in the warm-up: the throughput and latencies leave
     * them out (the checks do not) */
    json_object_set_new(send, "acked_warm", json_integer((json_int_t)r->acked_warm));
    json_object_set_new(send, "deliveries_warm", json_integer((json_int_t)r->deliveries_warm));
    json_object_set_new(root, "send", send);
    json_object_set_new(root, "throughput",
                        json_pack("{s:f, s:f}", "acked_per_s",
                                  per_s(r->acked - r->acked_warm, r->send_start_ns, r->last_ack_ns), "deliveries_per_s",
                                  per_s(r->deliveries - r->deliveries_warm, r->send_start_ns, r->last_delivery_ns)));
    json_object_set_new(
        root, "latency_ms",
        json_pack("{s:o, s:o}", "send_to_ack", lat_json(&r->ack), "send_to_delivery", lat_json(&r->delivery)));
    json_object_set_new(root, "deliveries",
                        json_pack("{s:I, s:I, s:I, s:I}", "expected", (json_int_t)r->deliveries_expected, "unique",
                                  (json_int_t)r->deliveries, "redeliveries", (json_int_t)r->redeliveries,
                                  "other_frames", (json_int_t)r->unexpected_frames));
    json_object_set_new(json_object_get(root, "deliveries"), "cross_sender_reorders",
                        json_integer((json_int_t)r->cross_sender_reorders));
    json_t *rec = json_pack(
        "{s:I, s:I, s:I, s:I, s:f}", "dropped", (json_int_t)r->dropped, "reconnected", (json_int_t)r->reconnected,
        "synced", (json_int_t)r->synced, "sync_retries", (json_int_t)r->sync_retries, "seconds",
        r->last_synced_ns > r->reconnect_start_ns ? secs(r->last_synced_ns - r->reconnect_start_ns) : 0.0);
    json_object_set_new(rec, "per_connection_ms", lat_json(&r->resync));
    json_object_set_new(root, "reconnect", rec);
    check c[N_CHECKS];
    checks_of(r, c);
    json_t *checks = json_object();
    for (int i = 0; i < N_CHECKS; i++)
        json_object_set_new(checks, c[i].name, json_integer((json_int_t)c[i].value));
    json_object_set_new(root, "checks", checks);
    json_object_set_new(root, "lost", json_integer((json_int_t)(r->unacked + r->missing_deliveries)));
    bool ok = bench_report_ok(rep);
    json_object_set_new(root, "ok", json_boolean(ok));
    json_object_set_new(root, "problem", json_string(ok ? "" : r->problem));
    json_t *ex = json_array();
    for (uint32_t i = 0; !ok && i < r->n_examples; i++)
        json_array_append_new(ex, json_string(r->examples[i]));
    json_object_set_new(root, "also_seen", ex);
    json_object_set_new(root, "wall_s", json_real(rep->wall_s));
    /* the phases on the wall clock, to line them up with samples taken outside (bench/run) */
    int64_t off_ns = chat_now_ms() * 1000000 - chat_mono_ns();
#define UNIX_MS(ns) ((ns) ? json_integer((json_int_t)(((ns) + off_ns) / 1000000)) : json_null())
    json_object_set_new(root, "unix_ms",
                        json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}", "ramp_start", UNIX_MS(r->ramp_start_ns), "ramp_end",
                                  UNIX_MS(r->ramp_end_ns), "send_start", UNIX_MS(r->send_start_ns), "send_end",
                                  UNIX_MS(r->send_end_ns), "last_ack", UNIX_MS(r->last_ack_ns), "last_delivery",
                                  UNIX_MS(r->last_delivery_ns)));
#undef UNIX_MS
    int rc = json_dump_file(root, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(root);
    return rc == 0 ? CHAT_OK : CHAT_ERR_IO;
}
