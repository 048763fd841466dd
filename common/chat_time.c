/* Clocks. */
#include "chat_time.h"
#include <time.h>

int64_t chat_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t chat_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t chat_mono_ms(void)
{
    return chat_mono_ns() / 1000000;
}

void chat_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

void chat_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

int chat_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *lock, int64_t deadline_mono_ns)
{
    struct timespec until = {.tv_sec = deadline_mono_ns / 1000000000, .tv_nsec = deadline_mono_ns % 1000000000};
    return pthread_cond_timedwait(cv, lock, &until);
}

int chat_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *lock, int64_t ms)
{
    return chat_cond_wait_until(cv, lock, chat_mono_ns() + ms * 1000000);
}
