/* Metrics in Prometheus text format. Series are registered at start (main thread), then
 * updated lock-free from any thread; rendering walks the registry under its lock.
 * Label sets are fixed at registration: no per-user labels, cardinality stays bounded. */
#ifndef CHAT_METRICS_H
#define CHAT_METRICS_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct chat_metrics chat_metrics;

/* Latency histogram with fixed log-spaced buckets from 100 us to 60 s. */
#define CHAT_HIST_BUCKETS 22
typedef struct chat_histogram {
    atomic_uint_fast64_t buckets[CHAT_HIST_BUCKETS + 1]; /* last: +Inf */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_us;
} chat_histogram;

typedef double (*chat_gauge_fn)(void *ctx);

chat_metrics *chat_metrics_create(void);
void chat_metrics_destroy(chat_metrics *m);

/* Register series; name and labels (e.g. "reason=\"slow\"", or NULL) must outlive m.
 * Series of one family must be registered one after another. The returned pointers are owned
 * by m and live until chat_metrics_destroy. */
atomic_uint_fast64_t *chat_metrics_counter(chat_metrics *m, const char *name, const char *labels,
                                           const char *help);
atomic_int_fast64_t *chat_metrics_gauge(chat_metrics *m, const char *name, const char *labels,
                                        const char *help);
void chat_metrics_gauge_fn(chat_metrics *m, const char *name, const char *labels, const char *help,
                           chat_gauge_fn fn, void *ctx);
chat_histogram *chat_metrics_histogram(chat_metrics *m, const char *name, const char *labels,
                                       const char *help);

/* process_resident_memory_bytes, process_open_fds, process_threads, process_start_time_seconds. */
void chat_metrics_add_process(chat_metrics *m);

void chat_histogram_observe_us(chat_histogram *h, int64_t us);

/* Renders every series; returns a malloc'd NUL-terminated text the caller frees. */
char *chat_metrics_render(chat_metrics *m, size_t *len);

#endif
