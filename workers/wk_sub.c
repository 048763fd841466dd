/* The end of a worker's subscription (wk_sub.h). */
#include "wk_sub.h"

#include "chat_time.h"

bool wk_sub_wait_done(pthread_mutex_t *lock, pthread_cond_t *cv, const bool *done, int wait_ms)
{
    int64_t until = chat_mono_ns() + (int64_t)wait_ms * 1000000;
    pthread_mutex_lock(lock);
    while (!*done && chat_cond_wait_until(cv, lock, until) == 0)
        ;
    bool was = *done;
    pthread_mutex_unlock(lock);
    return was;
}

bool wk_sub_end(natsSubscription *sub, int drain_ms, pthread_mutex_t *lock, pthread_cond_t *cv, const bool *done)
{
    if (natsSubscription_DrainTimeout(sub, drain_ms) != NATS_OK)
        natsSubscription_Unsubscribe(sub);
    return wk_sub_wait_done(lock, cv, done, drain_ms + 1000);
}
