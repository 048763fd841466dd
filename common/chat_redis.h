/* The one way into Redis: a connection to CHAT_REDIS_URL, authenticated as its user (a Redis ACL
 * user of deploy/redis/users.sh: the worker's may write, the gateway's only read) and on its
 * database. Any thread; each connection has one owner thread. */
#ifndef CHAT_REDIS_H
#define CHAT_REDIS_H
#include <stddef.h>

#include <hiredis/hiredis.h>

#include "chat_config.h"

/* Connects to cfg's Redis with timeout_ms for the connect and for every reply, then sends
 * AUTH <user> <password> when the URL names a user, AUTH <password> when it has a password only,
 * and SELECT when its database is not 0. The caller owns the connection (redisFree). NULL with one
 * line in err: the connect error or Redis's refusal (never the password). */
redisContext *chat_redis_open(const chat_cfg *cfg, int timeout_ms, char *err, size_t errsz);

#endif
