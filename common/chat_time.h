/* Clocks: wall time in Unix milliseconds, monotonic time in nanoseconds or milliseconds. Any thread. */
#ifndef CHAT_TIME_H
#define CHAT_TIME_H
#include <stdint.h>

int64_t chat_now_ms(void);      /* CLOCK_REALTIME, Unix ms */
int64_t chat_mono_ns(void);     /* CLOCK_MONOTONIC, ns */
int64_t chat_mono_ms(void);     /* CLOCK_MONOTONIC, ms: chat_mono_ns() / 1000000 */
void chat_sleep_ms(int64_t ms);

#endif
