/* chat-bench --self-test (see bench_selftest.h). */
#include "bench_selftest.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bench_hist.h"
#include "bench_json.h"
#include "bench_peer.h"
#include "bench_worker.h"

static int check(bool ok, const char *what)
{
    if (!ok)
        fprintf(stderr, "self-test: %s\n", what);
    return ok ? 0 : 1;
}

static int json_tests(void)
{
    int bad = 0;
    bench_json_member m[8];
    const char *frame = "{\"type\":\"msg\", \"seq\":12,\"meta\":{\"a\":[1,{\"b\":\"}\"}]},\"body\":\"x\\\"y\","
                        "\"on\":true,\"n\":null,\"f\":-1.5e3}";
    int n = bench_json_scan(frame, strlen(frame), m, 8);
    uint64_t seq = 0;
    bad += check(n == 7, "json: 7 members");
    bad += check(bench_json_str_is(bench_json_get(m, n, "type"), "msg"), "json: type is msg");
    bad += check(bench_json_u64(bench_json_get(m, n, "seq"), &seq) && seq == 12, "json: seq is 12");
    const bench_json_member *meta = bench_json_get(m, n, "meta");
    bad += check(meta && meta->kind == BENCH_JSON_OBJECT && meta->val_len == 19, "json: meta is the whole object");
    const bench_json_member *body = bench_json_get(m, n, "body");
    bad += check(body && body->escaped && body->val_len == 4, "json: body kept raw with its escape");
    bad += check(!bench_json_u64(bench_json_get(m, n, "f"), &seq), "json: -1.5e3 is not a u64");
    bad += check(bench_json_get(m, n, "nope") == NULL, "json: missing key");
    const char *broken[] = {"{\"a\":1,}",  "{\"a\":1} x",         "[1]", "{\"a\":tru}", "{\"a\":\"x}", "{\"a\" 1}", "",
                            "{\"a\":01x}", "{\"a\":{\"b\":[1,2}}"};
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "json: refuses %s", broken[i]);
        bad += check(bench_json_scan(broken[i], strlen(broken[i]), m, 8) < 0, what);
    }
    bad += check(bench_json_scan("{}", 2, m, 8) == 0, "json: {} has no members");
    return bad;
}

static int hist_tests(void)
{
    int bad = 0;
    const uint64_t values[] = {
        0, 1, 31, 32, 33, 63, 64, 65, 1000, 4095, 4096, 123456, 1000000, 999999999999ULL, UINT64_MAX / 2, UINT64_MAX};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        unsigned b = bench_hist_bucket_of(values[i]);
        char what[96];
        snprintf(what, sizeof what, "hist: %" PRIu64 " inside its bucket %u", values[i], b);
        bad += check(b < BENCH_HIST_BUCKETS && bench_hist_bucket_low(b) <= values[i] &&
                         values[i] <= bench_hist_bucket_high(b),
                     what);
    }
    for (unsigned b = 1; b < BENCH_HIST_BUCKETS; b++)
        if (bench_hist_bucket_low(b) != bench_hist_bucket_high(b - 1) + 1) {
            bad += check(false, "hist: buckets are contiguous");
            break;
        }
    static bench_hist a, c;
    bench_hist_init(&a);
    bench_hist_init(&c);
    for (int v = 1; v <= 1000; v++)
        bench_hist_add(v % 2 ? &a : &c, v);
    bench_hist_merge(&a, &c);
    uint64_t p50 = bench_hist_quantile(&a, 0.5), p99 = bench_hist_quantile(&a, 0.99);
    bad += check(a.count == 1000 && a.min_us == 1 && a.max_us == 1000, "hist: count, min, max after merge");
    bad += check(p50 >= 500 && p50 <= 500 * 1.04, "hist: p50 of 1..1000 within 4% of 500");
    bad += check(p99 >= 990 && p99 <= 1000, "hist: p99 of 1..1000 within 990..1000");
    bad += check(bench_hist_quantile(&a, 1.0) == 1000, "hist: p100 is the max");
    return bad;
}

static bool slice_is(const char *v, size_t len, const char *want)
{
    return v && len == strlen(want) && memcmp(v, want, len) == 0;
}

/* The peers' scanners on frames as ejabberd and Socket.IO send them. */
static int peer_tests(void)
{
    int bad = 0;
    const char *name, *v;
    size_t nl, vl;
    const char *msg = "<message xml:lang='en' to='r-u1@bench.local' from='r-u0@bench.local/d0' type='chat' "
                      "id='p0-7' xmlns='jabber:client'><body>b:0:7:123:xx</body><stanza-id by='r-u1@bench.local' "
                      "id='1732' xmlns='urn:xmpp:sid:0'/></message>";
    bad += check(bench_xml_root(msg, strlen(msg), &name, &nl) && slice_is(name, nl, "message"), "xml: root message");
    bad += check(bench_xml_attr(msg, strlen(msg), "id", &v, &vl) && slice_is(v, vl, "p0-7"), "xml: id of the root");
    bad += check(bench_xml_attr(msg, strlen(msg), "type", &v, &vl) && slice_is(v, vl, "chat"), "xml: type");
    bad += check(!bench_xml_attr(msg, strlen(msg), "by", &v, &vl), "xml: a child's attribute is not the root's");
    bad += check(bench_xml_child_text(msg, strlen(msg), "body", &v, &vl) && slice_is(v, vl, "b:0:7:123:xx"),
                 "xml: body text");
    const char *a = " <a xmlns=\"urn:xmpp:sm:3\" h=\"12\"/>";
    bad += check(bench_xml_root(a, strlen(a), &name, &nl) && slice_is(name, nl, "a"), "xml: root a");
    bad += check(bench_xml_attr(a, strlen(a), "h", &v, &vl) && slice_is(v, vl, "12"), "xml: h in double quotes");
    const char *f = "<?xml version='1.0'?><stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
                    "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
                    "</mechanisms></stream:features>";
    bad += check(bench_xml_root(f, strlen(f), &name, &nl) && slice_is(name, nl, "stream:features"),
                 "xml: root after a declaration");
    bad += check(bench_mem_has(f, strlen(f), ">PLAIN<"), "xml: PLAIN offered");
    bad += check(!bench_xml_root("hello", 5, &name, &nl), "xml: text is not an element");
    char b64[64];
    bad += check(bench_sasl_plain("u", "pw", b64, sizeof b64) && strcmp(b64, "AHUAcHc=") == 0, "sasl: PLAIN of u/pw");

    bench_sio_packet pk;
    bad += check(bench_sio_parse("0{\"sid\":\"x\"}", 13, &pk) && pk.kind == BENCH_SIO_OPEN, "sio: open");
    bad += check(bench_sio_parse("2", 1, &pk) && pk.kind == BENCH_SIO_PING, "sio: ping");
    bad += check(bench_sio_parse("40{\"sid\":\"y\"}", 14, &pk) && pk.kind == BENCH_SIO_CONNECTED, "sio: connected");
    const char *ack = "43120[{\"ok\":true}]";
    bad += check(bench_sio_parse(ack, strlen(ack), &pk) && pk.kind == BENCH_SIO_ACK && pk.ack_id == 120, "sio: ack 120");
    const char *ev = "42[\"msg\",{\"conv\":\"c1\",\"cmid\":\"p0-1\",\"body\":\"b\"}]";
    bad += check(bench_sio_parse(ev, strlen(ev), &pk) && pk.kind == BENCH_SIO_EVENT && slice_is(pk.name, pk.name_len, "msg") &&
                     pk.data_len == strlen("{\"conv\":\"c1\",\"cmid\":\"p0-1\",\"body\":\"b\"}"),
                 "sio: event msg and its object");
    bad += check(!bench_sio_parse("x", 1, &pk), "sio: not a packet");
    return bad;
}

int bench_self_test(void)
{
    int bad = json_tests() + hist_tests() + peer_tests() + bench_worker_self_test();
    printf("chat-bench self-test: %s (%d failed)\n", bad ? "FAIL" : "PASS", bad);
    return bad ? 1 : 0;
}
