/* chat_redis_open (chat_redis.h). Any thread. */
#include "chat_redis.h"

#include <stdbool.h>
#include <stdio.h>
#include <sys/time.h>

/* Runs one set-up command's reply through: false, with Redis's answer in err, when it refused. */
static bool accepted(redisContext *c, redisReply *r, const char *what, char *err, size_t errsz)
{
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(err, errsz, "%s refused: %s", what, r ? r->str : c->errstr);
    if (r)
        freeReplyObject(r);
    return ok;
}

redisContext *chat_redis_open(const chat_cfg *cfg, int timeout_ms, char *err, size_t errsz)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (c == NULL || c->err) {
        snprintf(err, errsz, "%s", c ? c->errstr : "no memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    bool ok = true;
    if (cfg->redis_user[0])
        ok = accepted(c, redisCommand(c, "AUTH %s %s", cfg->redis_user, cfg->redis_password), "AUTH", err, errsz);
    else if (cfg->redis_password[0])
        ok = accepted(c, redisCommand(c, "AUTH %s", cfg->redis_password), "AUTH", err, errsz);
    if (ok && cfg->redis_db)
        ok = accepted(c, redisCommand(c, "SELECT %d", cfg->redis_db), "SELECT", err, errsz);
    if (!ok) {
        redisFree(c);
        return NULL;
    }
    return c;
}
