/* The signal thread: sigwait() for SIGTERM/SIGINT, then the program's stop callback. */
#include "chat_signal.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>

static atomic_bool stopping;
static chat_signal_fn stop_fn;
static void *stop_ctx;
static sigset_t stop_set;

static void *signal_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int signo = 0;
        if (sigwait(&stop_set, &signo) != 0)
            continue;
        atomic_store(&stopping, true);
        if (stop_fn)
            stop_fn(signo, stop_ctx);
    }
    return NULL;
}

chat_status chat_signal_start(chat_signal_fn fn, void *ctx)
{
    stop_fn = fn;
    stop_ctx = ctx;
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &stop_set, NULL) != 0)
        return CHAT_ERR_INTERNAL;
    pthread_t t;
    if (pthread_create(&t, NULL, signal_thread, NULL) != 0)
        return CHAT_ERR_INTERNAL;
    pthread_detach(t);
    return CHAT_OK;
}

bool chat_signal_stopping(void)
{
    return atomic_load(&stopping);
}
