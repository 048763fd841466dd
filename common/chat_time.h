/* Clocks: wall time in Unix milliseconds, monotonic time in nanoseconds or milliseconds. Any thread. */
#ifndef CHAT_TIME_H
#define CHAT_TIME_H
#include <pthread.h>
#include <stdint.h>

int64_t chat_now_ms(void);      /* CLOCK_REALTIME, Unix ms */
int64_t chat_mono_ns(void);     /* CLOCK_MONOTONIC, ns */
int64_t chat_mono_ms(void);     /* CLOCK_MONOTONIC, ms: chat_mono_ns() / 1000000 */
void chat_sleep_ms(int64_t ms);

/* Condition variables whose timed waits count on CLOCK_MONOTONIC: a step of the wall clock (NTP
 * setting a fresh machine's time) neither stalls nor hurries a periodic thread. */
void chat_cond_init_mono(pthread_cond_t *cv);
/* Waits on cv (made by chat_cond_init_mono; lock held) at most ms; pthread_cond_timedwait's result. */
int chat_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *lock, int64_t ms);
/* The same with an absolute deadline taken from chat_mono_ns(). */
int chat_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *lock, int64_t deadline_mono_ns);

#endif
