/* chat-bench: one worker process: signs its users' tokens, opens its share of the connections
 * (ramped), sends its share of the messages on a fixed schedule from the parent's start time,
 * drops and reconnects connections when asked, checks every ack and delivery, and reports to the
 * parent. One thread around one epoll loop. */
#ifndef BENCH_WORKER_H
#define BENCH_WORKER_H
#include <stdint.h>

#include "bench_hist.h"
#include "bench_plan.h"

/* Parent <-> worker, over two pipes, fixed structs in this order:
 *   worker -> parent  bench_ready   once every connection is open or has failed for good
 *   parent -> worker  bench_go      start of the send phase (CLOCK_MONOTONIC, shared by processes)
 *   worker -> parent  bench_result  after the drain; then the worker exits */
typedef struct bench_ready {
    uint64_t open, failed;
    int64_t ramp_start_ns, ramp_end_ns;
} bench_ready;

typedef struct bench_go {
    int64_t t0_ns;
} bench_go;

#define BENCH_EXAMPLES 8

/* Counters of one worker, added up by the parent. Times are CLOCK_MONOTONIC ns (0: never). */
typedef struct bench_result {
    /* connections */
    uint64_t conns, conns_open, conns_failed, connect_attempts, connect_retries, http_refused;
    uint64_t unexpected_closes;
    uint64_t restart_closes;   /* closed by the server with 1012 (service restart): the protocol's "reconnect
                                  and sync", so not a failure; the device reconnects and syncs */
    int64_t ramp_start_ns, ramp_end_ns;
    /* sending */
    uint64_t scheduled, sent, acked, unacked, skipped_offline, failed_sends, resent;
    uint64_t acked_warm, deliveries_warm; /* of messages scheduled in the warm-up */
    uint64_t err_unavailable, err_rate_limited, err_not_member, err_other;
    uint64_t late_sends;       /* sent more than 5 ms after their scheduled time */
    char unavailable_why[120]; /* the message of the first error unavailable */
    int64_t send_start_ns, send_end_ns, last_ack_ns, last_delivery_ns;
    /* deliveries and checks */
    uint64_t deliveries_expected, deliveries, missing_deliveries;
    uint64_t redeliveries;  /* the same id again at a device: at-least-once, dropped */
    uint64_t duplicates;    /* one cmid seen with two different ids: stored twice, a real duplicate */
    uint64_t seq_conflicts; /* one seq holding two messages, or one id under two seqs */
    uint64_t out_of_order;  /* a seq lower than one the device already had */
    uint64_t gaps;          /* a seq more than one above the highest the device had */
    uint64_t gap_seqs;      /* seqs skipped by those gaps */
    uint64_t sync_holes;    /* seqs still missing right after a synced */
    uint64_t body_mismatch; /* a delivery whose body does not match its cmid */
    uint64_t cross_sender_reorders; /* peers: a message arrived after a later one of another sender
                                       (a relay promises no order across senders; not a failure) */
    uint64_t bad_frames, unexpected_frames, protocol_errors;
    /* drop and reconnect */
    uint64_t dropped, reconnected, synced, sync_retries, unsynced;
    int64_t drop_ns, reconnect_start_ns, last_synced_ns;
    /* latencies in µs */
    bench_hist ack, delivery, lag, connect, resync;
    char problem[256];   /* the first failed check, for the report */
    uint32_t n_examples; /* further failed checks, the first BENCH_EXAMPLES of them */
    char examples[BENCH_EXAMPLES][200];
} bench_result;

void bench_result_init(bench_result *r);
/* Adds from into into (counters add, first times take the minimum, last times the maximum). */
void bench_result_merge(bench_result *into, const bench_result *from);

/* Runs worker proc of the plan; to_parent / from_parent are the pipe ends. Returns the exit code
 * of the worker process (0: it ran, whatever it measured; 1: it could not run). */
int bench_worker_main(const bench_plan *plan, int proc, int to_parent, int from_parent);

/* Feeds synthetic frames (a gap, a reordering, a duplicate, a redelivery, a seq conflict, a
 * changed body, a hole after sync, stray acks and errors) through the checker and compares every
 * counter with what it must be. Returns the number of mismatches (printed on stderr). */
int bench_worker_self_test(void);

#endif
