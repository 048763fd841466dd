/* Names of the status codes, and the end of a process out of memory. */
#include "chat_status.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

const char *chat_status_str(chat_status s)
{
    switch (s) {
    case CHAT_OK: return "ok";
    case CHAT_ERR_INVALID: return "invalid";
    case CHAT_ERR_NOMEM: return "nomem";
    case CHAT_ERR_IO: return "io";
    case CHAT_ERR_TIMEOUT: return "timeout";
    case CHAT_ERR_UNAVAILABLE: return "unavailable";
    case CHAT_ERR_NOT_FOUND: return "not_found";
    case CHAT_ERR_CONFLICT: return "conflict";
    case CHAT_ERR_DENIED: return "denied";
    case CHAT_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

void chat_oom(const char *file, int line)
{
    char msg[256]; /* snprintf of %s and %d does not allocate */
    int n = snprintf(msg, sizeof msg, "level=error comp=process event=out_of_memory at=%s:%d\n", file, line);
    if (n > 0)
        (void)!write(STDERR_FILENO, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    abort();
}
