/* Metrics: Prometheus text with HELP/TYPE once per family, cumulative histogram buckets. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_metrics.h"
#include "unit_run.h"

START_TEST(renders_families)
{
    chat_metrics *m = chat_metrics_create();
    atomic_uint_fast64_t *slow = chat_metrics_counter(m, "chat_disconnects_total", "reason=\"slow\"", "Disconnects.");
    atomic_uint_fast64_t *idle = chat_metrics_counter(m, "chat_disconnects_total", "reason=\"idle\"", "Disconnects.");
    atomic_int_fast64_t *conns = chat_metrics_gauge(m, "chat_connections", NULL, "Open connections.");
    chat_histogram *h = chat_metrics_histogram(m, "chat_delivery_seconds", NULL, "Latency.");
    chat_metrics_add_process(m);
    atomic_fetch_add(slow, 3);
    atomic_fetch_add(idle, 1);
    atomic_store(conns, 12);
    chat_histogram_observe_us(h, 50);       /* <= 100us */
    chat_histogram_observe_us(h, 2500);     /* <= 3ms */
    chat_histogram_observe_us(h, 99000000); /* +Inf */
    size_t len;
    char *text = chat_metrics_render(m, &len);
    ck_assert_uint_eq(strlen(text), len);
    ck_assert_ptr_nonnull(strstr(text, "chat_disconnects_total{reason=\"slow\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "chat_disconnects_total{reason=\"idle\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "chat_connections 12\n"));
    /* one TYPE line per family */
    char *first = strstr(text, "# TYPE chat_disconnects_total counter");
    ck_assert_ptr_nonnull(first);
    ck_assert_ptr_null(strstr(first + 1, "# TYPE chat_disconnects_total"));
    ck_assert_ptr_nonnull(strstr(text, "chat_delivery_seconds_bucket{le=\"0.0001\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "chat_delivery_seconds_bucket{le=\"0.003\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "chat_delivery_seconds_bucket{le=\"60\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "chat_delivery_seconds_bucket{le=\"+Inf\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "chat_delivery_seconds_count 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "process_resident_memory_bytes "));
    ck_assert_ptr_nonnull(strstr(text, "process_threads "));
    free(text);
    chat_metrics_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, renders_families);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
