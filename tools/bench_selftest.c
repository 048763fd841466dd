/* chat-bench --self-test (see bench_selftest.h). */
#include "bench_selftest.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bench_hist.h"
#include "bench_json.h"
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

int bench_self_test(void)
{
    int bad = json_tests() + hist_tests() + bench_worker_self_test();
    printf("chat-bench self-test: %s (%d failed)\n", bad ? "FAIL" : "PASS", bad);
    return bad ? 1 : 0;
}
