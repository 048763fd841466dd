/* The one status type of the project. Library errors (natsStatus, PGresult, redisReply, lws)
 * are turned into it once, at the edge, and their text is logged there. */
#ifndef CHAT_STATUS_H
#define CHAT_STATUS_H

typedef enum chat_status {
    CHAT_OK = 0,
    CHAT_ERR_INVALID,     /* bad input: a malformed setting, frame or id */
    CHAT_ERR_NOMEM,
    CHAT_ERR_IO,          /* a file or socket failed */
    CHAT_ERR_TIMEOUT,
    CHAT_ERR_UNAVAILABLE, /* a dependency (NATS, PostgreSQL, Redis) does not answer */
    CHAT_ERR_NOT_FOUND,
    CHAT_ERR_CONFLICT,    /* already exists, or a lease is held by another */
    CHAT_ERR_DENIED,      /* authentication or authorization refused */
    CHAT_ERR_INTERNAL,
} chat_status;

/* A short stable name ("ok", "invalid", ...) for logs; never NULL. */
const char *chat_status_str(chat_status s);

/* The out-of-memory policy (docs/architecture.md, "Out of memory"): an allocation of the
 * process's own bookkeeping that fails ends the process here, with one log line naming the place
 * (written without allocating), then abort(). Creating a module at start returns CHAT_ERR_NOMEM
 * instead, so that a binary that cannot start says so. */
_Noreturn void chat_oom(const char *file, int line);
#define CHAT_OOM() chat_oom(__FILE__, __LINE__)

#endif
