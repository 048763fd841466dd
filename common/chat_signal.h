/* Graceful stop: SIGTERM and SIGINT are blocked in every thread and taken by one thread with
 * sigwait(), which calls the program's stop callback there (not in a signal handler), so the
 * callback may lock, log and call lws_cancel_service(). SIGPIPE is ignored. */
#ifndef CHAT_SIGNAL_H
#define CHAT_SIGNAL_H
#include <stdbool.h>

#include "chat_status.h"

typedef void (*chat_signal_fn)(int signo, void *ctx);

/* Call on the main thread before any other thread is created (threads inherit the mask).
 * fn runs on the signal thread for each SIGTERM/SIGINT received. */
chat_status chat_signal_start(chat_signal_fn fn, void *ctx);

/* True once a stop signal arrived. Any thread. */
bool chat_signal_stopping(void);

#endif
