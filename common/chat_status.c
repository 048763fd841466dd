/* Names of the status codes. */
#include "chat_status.h"

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
