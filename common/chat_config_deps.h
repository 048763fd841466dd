/* The dependencies' settings (chat_config_deps.c): listen addresses, the NATS URL list and its TLS
 * files, the Redis URL, and the error line and integer parser chat_config.c uses too. Knows nothing
 * of chat_cfg: chat_config.c hands it the values. Main thread, at start. */
#ifndef CHAT_CONFIG_DEPS_H
#define CHAT_CONFIG_DEPS_H
#include <stdbool.h>
#include <stddef.h>

#include "chat_status.h"

typedef struct chat_listen {
    char host[256];
    int port;
} chat_listen;

/* host:port, port 1-65535. */
chat_status chat_parse_listen(const char *text, chat_listen *out);

/* "ENV: reason" into err (fmt has one %s for val; a long value is cut); CHAT_ERR_INVALID. */
chat_status chat_cfg_fail(char *err, size_t errsz, const char *env, const char *fmt, const char *val);
/* A whole decimal integer in [min, max]. */
bool chat_cfg_parse_int(const char *text, long min, long max, int *out);

/* CHAT_NATS_URL: nats://host:port or tls://host:port, optionally user:pass@, comma separated. */
bool chat_cfg_nats_urls_valid(const char *list);
/* The NATS TLS settings (CHAT_NATS_CA, _CERT, _KEY; "" when unset) against the URL list: tls://
 * URLs for them, and their PEM files parsed, so that a wrong file stops the program at start. */
chat_status chat_cfg_nats_tls_valid(const char *nats_url, const char *ca_file, const char *cert_file,
                                    const char *key_file, char *err, size_t errsz);

/* CHAT_REDIS_URL, redis://[[user]:password@]host:port[/db], taken apart. */
typedef struct chat_redis_addr {
    char host[256];
    int port;
    int db;
    char user[256]; /* a Redis ACL user ("": AUTH with the password alone, or none) */
    char password[256];
} chat_redis_addr;
bool chat_cfg_parse_redis(const char *url, chat_redis_addr *out);

#endif
