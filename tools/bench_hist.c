/* chat-bench: log-bucket histogram. Values below 32 µs have a bucket each; above, each power of
 * two is split into 32 equal buckets. Any thread (one owner per histogram). */
#include "bench_hist.h"

#include <math.h>
#include <string.h>

void bench_hist_init(bench_hist *h)
{
    memset(h, 0, sizeof *h);
    h->min_us = UINT64_MAX;
}

unsigned bench_hist_bucket_of(uint64_t us)
{
    if (us < BENCH_HIST_SUB)
        return (unsigned)us;
    unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= BENCH_HIST_SUB_BITS */
    unsigned sub = (unsigned)(us >> (e - BENCH_HIST_SUB_BITS)) & (BENCH_HIST_SUB - 1);
    return (e - BENCH_HIST_SUB_BITS + 1) * BENCH_HIST_SUB + sub;
}

uint64_t bench_hist_bucket_low(unsigned idx)
{
    if (idx < BENCH_HIST_SUB)
        return idx;
    unsigned e = idx / BENCH_HIST_SUB + BENCH_HIST_SUB_BITS - 1;
    uint64_t sub = idx % BENCH_HIST_SUB;
    return (BENCH_HIST_SUB + sub) << (e - BENCH_HIST_SUB_BITS);
}

uint64_t bench_hist_bucket_high(unsigned idx)
{
    if (idx < BENCH_HIST_SUB)
        return idx;
    unsigned e = idx / BENCH_HIST_SUB + BENCH_HIST_SUB_BITS - 1;
    return bench_hist_bucket_low(idx) + ((uint64_t)1 << (e - BENCH_HIST_SUB_BITS)) - 1;
}

void bench_hist_add(bench_hist *h, int64_t us)
{
    uint64_t v = us < 0 ? 0 : (uint64_t)us;
    h->buckets[bench_hist_bucket_of(v)]++;
    h->count++;
    h->sum_us += v;
    if (v < h->min_us)
        h->min_us = v;
    if (v > h->max_us)
        h->max_us = v;
}

void bench_hist_merge(bench_hist *into, const bench_hist *from)
{
    if (from->count == 0)
        return;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
        into->buckets[i] += from->buckets[i];
    into->count += from->count;
    into->sum_us += from->sum_us;
    if (from->min_us < into->min_us)
        into->min_us = from->min_us;
    if (from->max_us > into->max_us)
        into->max_us = from->max_us;
}

uint64_t bench_hist_quantile(const bench_hist *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = bench_hist_bucket_high(i);
            if (v > h->max_us)
                v = h->max_us;
            if (v < h->min_us)
                v = h->min_us;
            return v;
        }
    }
    return h->max_us;
}

double bench_hist_mean(const bench_hist *h)
{
    return h->count ? (double)h->sum_us / (double)h->count : 0.0;
}
