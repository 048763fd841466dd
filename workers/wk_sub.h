/* The end of a worker's NATS subscription whose delivery thread owns state: drain it, then wait
 * for its last callback (the on_complete callback sets *done under lock and signals cv) before the
 * state is freed. Shared by the api lanes, the typing relay and the route claims. */
#ifndef WK_SUB_H
#define WK_SUB_H
#include <pthread.h>
#include <stdbool.h>

#include <nats/nats.h>

/* Waits up to wait_ms for *done (read under lock, cv signalled when it is set); returns it. */
bool wk_sub_wait_done(pthread_mutex_t *lock, pthread_cond_t *cv, const bool *done, int wait_ms);

/* Drains sub (unsubscribes when the drain cannot start), then wk_sub_wait_done for drain_ms plus a
 * second. true: the last callback returned, the state may be freed; false: one may still run. */
bool wk_sub_end(natsSubscription *sub, int drain_ms, pthread_mutex_t *lock, pthread_cond_t *cv, const bool *done);

#endif
