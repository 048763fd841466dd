/* chat-bench: the merged results of a run as a human summary and as JSON, and the correctness
 * verdict. Main thread, after every worker has reported. */
#ifndef BENCH_REPORT_H
#define BENCH_REPORT_H
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bench_plan.h"
#include "bench_worker.h"
#include "chat_status.h"

typedef struct bench_report {
    bench_result r;         /* every worker's results added up */
    uint64_t convs_created; /* conversations that did not exist before */
    double setup_s;         /* seconds to create the conversations */
    int rss_pids;           /* gateways whose RSS was read (0: none) */
    char rss_pid_list[128];
    int64_t rss_before_kib; /* summed VmRSS before the ramp, after it settled, at the end (-1: unknown) */
    int64_t rss_after_kib;
    int64_t rss_end_kib;
    double wall_s; /* the whole run */
} bench_report;

/* True when every correctness check passed. */
bool bench_report_ok(const bench_report *rep);

/* The human summary. */
void bench_report_print(FILE *out, const bench_plan *p, const bench_report *rep);

/* Writes the JSON report to path. CHAT_OK or CHAT_ERR_IO. */
chat_status bench_report_write_json(const char *path, const bench_plan *p, const bench_report *rep);

#endif
