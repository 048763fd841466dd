/* Client tokens: JWT, HS256 only, `sub` = user id, `exp` required, `nbf` honoured, at most 30 s
 * of clock leeway. Signature through libjwt with the key always given and the algorithm pinned.
 * Any thread. */
#ifndef CHAT_JWT_H
#define CHAT_JWT_H
#include <stddef.h>
#include <stdint.h>

#include "chat_id.h"
#include "chat_status.h"

#define CHAT_JWT_MAX_LEN 4096
#define CHAT_JWT_LEEWAY_S 30

/* Checks token against secret at time now_s. On CHAT_OK writes the user id (sub) into user
 * (CHAT_ID_MAX + 1 bytes) and its expiry into *exp_s (may be NULL). Otherwise CHAT_ERR_DENIED
 * and a short reason ("expired", "bad signature", ...) in *why. */
chat_status chat_jwt_verify(const char *token, const char *secret, int64_t now_s, char *user, int64_t *exp_s,
                            const char **why);

/* Makes an HS256 token for user valid ttl_s seconds from now_s; the caller frees *out. */
chat_status chat_jwt_sign(const char *user, const char *secret, int64_t now_s, int64_t ttl_s, char **out);

#endif
