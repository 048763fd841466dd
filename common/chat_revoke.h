/* Token revocations (docs/operations.md, "Revoking tokens"): the NATS KV bucket CHAT_REVOKED that
 * `chatctl revoke` writes (backend credential), `chat-worker streams` creates and every gateway
 * watches. Keys and values, and the one rule a token is checked by. Pure functions: any thread.
 *   u.<user>  -> "not before", unix seconds: the user's tokens issued before it (iat < it, or no
 *                iat) are refused
 *   j.<hash>  -> the token's exp, unix seconds: the token whose jti hashes to <hash> (64 hex
 *                digits of SHA-256(jti): any jti becomes a valid key) is refused */
#ifndef CHAT_REVOKE_H
#define CHAT_REVOKE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_jwt.h"

#define CHAT_REVOKE_BUCKET "CHAT_REVOKED"
#define CHAT_REVOKE_STREAM "KV_CHAT_REVOKED"       /* the bucket's JetStream stream */
#define CHAT_REVOKE_SUBJECTS "$KV.CHAT_REVOKED.>"  /* its subjects (one per key) */
#define CHAT_REVOKE_KEY_MAX (2 + 64 + 1)           /* "j." + 64 hex digits, or "u." + a user id */
/* What the bucket keeps beyond the longest token lifetime: the 30 s leeway at both ends and
 * clocks (chatctl's, the broker's, the issuer's) that disagree by a few minutes. */
#define CHAT_REVOKE_KEEP_EXTRA_S 300

typedef enum chat_revoke_kind {
    CHAT_REVOKE_USER = 1, /* u.<user>: not before */
    CHAT_REVOKE_TOKEN,    /* j.<hash>: one token, until its exp */
} chat_revoke_kind;

/* "u.<user>"; false when user is not a valid id. buf has CHAT_REVOKE_KEY_MAX bytes. */
bool chat_revoke_key_user(char *buf, const char *user);
/* "j.<64 hex digits of SHA-256(jti)>"; jti must not be empty. buf has CHAT_REVOKE_KEY_MAX bytes. */
void chat_revoke_key_token(char *buf, const char *jti);
/* The first 8 bytes of SHA-256(jti), never 0: what a session keeps of its token's jti (0 = no jti). */
uint64_t chat_revoke_jti_id(const char *jti);
/* The same from a key "j.<hash>" (0 when it is not one). */
uint64_t chat_revoke_key_jti_id(const char *key);

/* The kind of a key, and in *user (CHAT_ID_MAX + 1 bytes, may be NULL) the user of a u. key;
 * 0 when the key is neither form. */
chat_revoke_kind chat_revoke_key_parse(const char *key, char *user);

/* A value: decimal unix seconds, 1 to 2^40 (len bytes, not NUL-terminated). */
bool chat_revoke_value_parse(const char *text, size_t len, int64_t *out);

/* Whether a token of the user of a u. key whose value is not_before is refused: issued before it,
 * or with no iat (whose issue time nobody knows). */
static inline bool chat_revoke_user_refuses(int64_t not_before, int64_t iat)
{
    return iat == 0 || iat < not_before;
}

/* Until when an entry can refuse anything (after it, every token it refuses has expired, leeway
 * included), with max_ttl_s the longest token lifetime (CHAT_JWT_MAX_TTL). */
int64_t chat_revoke_entry_until(chat_revoke_kind kind, int64_t value, int64_t max_ttl_s);

/* The bucket's max age in seconds: max_ttl_s + CHAT_REVOKE_KEEP_EXTRA_S (an entry put with a
 * value chatctl accepts is kept until chat_revoke_entry_until). */
static inline int64_t chat_revoke_keep_s(int64_t max_ttl_s)
{
    return max_ttl_s + CHAT_REVOKE_KEEP_EXTRA_S;
}

/* A set of revocations as the bucket holds them (key -> kind, value, the watch that delivered it):
 * what a gateway or a worker checks tokens against (gateway/gw_revoke.c, chat_revoke_watch.h feeds
 * it). Not thread-safe: one owner thread, or every call under the caller's lock. Logs nothing. */
typedef struct chat_revoke_set chat_revoke_set;
chat_revoke_set *chat_revoke_set_create(void);            /* never NULL (CHAT_OOM) */
void chat_revoke_set_destroy(chat_revoke_set *s);          /* NULL-safe */
/* Keeps key (from watch `watch`) with value; returns its kind, 0 (and keeps nothing) when the key is
 * neither u. nor j.; *user (CHAT_ID_MAX + 1 bytes, may be NULL) gets the user of a u. key. */
chat_revoke_kind chat_revoke_set_put(chat_revoke_set *s, const char *key, int64_t value, uint32_t watch, char *user);
void chat_revoke_set_delete(chat_revoke_set *s, const char *key);
/* Watch `watch` has delivered the whole bucket: entries an older watch left that this one did not
 * deliver are dropped (returns how many); the set counts as loaded from now on. */
size_t chat_revoke_set_loaded(chat_revoke_set *s, uint32_t watch);
bool chat_revoke_set_is_loaded(const chat_revoke_set *s);
/* Whether verified claims are refused by an entry (u. not-before rule, or the j. key of its jti).
 * Says nothing of loading: a set not loaded yet refuses only what it holds. */
bool chat_revoke_set_refuses(const chat_revoke_set *s, const chat_jwt_claims *claims);
/* Drops entries that can refuse nothing any more at now_s (chat_revoke_entry_until); returns how many. */
size_t chat_revoke_set_trim(chat_revoke_set *s, int64_t now_s, int64_t max_ttl_s);
size_t chat_revoke_set_size(const chat_revoke_set *s);

#endif
