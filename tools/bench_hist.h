/* chat-bench: a log-bucket latency histogram in microseconds (32 sub-buckets per power of two, so a
 * percentile is within about 3% of the true value), mergeable across worker processes by adding
 * the buckets. Plain data, no pointers: a worker sends it to the parent through a pipe as is.
 * One owner thread. */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H
#include <stdint.h>

#define BENCH_HIST_SUB_BITS 5
#define BENCH_HIST_SUB (1u << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_BUCKETS ((64u - BENCH_HIST_SUB_BITS + 1u) * BENCH_HIST_SUB)

typedef struct bench_hist {
    uint64_t count;
    uint64_t sum_us;
    uint64_t min_us, max_us; /* min_us is UINT64_MAX while count is 0 */
    uint64_t buckets[BENCH_HIST_BUCKETS];
} bench_hist;

void bench_hist_init(bench_hist *h);
/* Adds one value in microseconds (negative values count as 0). */
void bench_hist_add(bench_hist *h, int64_t us);
/* Adds every value of from into into. */
void bench_hist_merge(bench_hist *into, const bench_hist *from);
/* The value at quantile q (0 < q <= 1): the upper edge of the bucket holding it, never above the
 * true maximum; 0 when empty. */
uint64_t bench_hist_quantile(const bench_hist *h, double q);
double bench_hist_mean(const bench_hist *h);

/* Bucket arithmetic, exposed for the self-test. */
unsigned bench_hist_bucket_of(uint64_t us);
uint64_t bench_hist_bucket_low(unsigned idx);
uint64_t bench_hist_bucket_high(unsigned idx);

#endif
