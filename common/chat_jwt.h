/* Client tokens: compact JWS, `sub` = user id, `exp` required, `nbf` honoured, at most 30 s of clock
 * leeway. Keys: the HS256 secret (tokens without kid) and a key file of `kid alg key` lines (HS256,
 * EdDSA, RS256), the algorithm pinned by the key; issuer, audience and a maximum lifetime checked.
 * Signatures with OpenSSL. A policy is built once at start, then read-only: any thread. */
#ifndef CHAT_JWT_H
#define CHAT_JWT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_id.h"
#include "chat_status.h"

#define CHAT_JWT_MAX_LEN 4096
#define CHAT_JWT_LEEWAY_S 30
#define CHAT_JWT_SECRET_MIN 32 /* characters of an HS256 secret */
#define CHAT_JWT_KID_MAX 64
#define CHAT_JWT_JTI_MAX 128

/* The algorithms a key may be pinned to (a token's `alg` must name its key's exactly). */
typedef enum chat_jwt_alg {
    CHAT_JWT_HS256 = 1, /* HMAC-SHA256 with a shared secret */
    CHAT_JWT_EDDSA,     /* Ed25519 (RFC 8037) */
    CHAT_JWT_RS256,     /* RSASSA-PKCS1-v1_5 with SHA-256 */
} chat_jwt_alg;

/* What chat_jwt_policy_create reads (the CHAT_JWT_* settings); strings are borrowed. */
typedef struct chat_jwt_settings {
    const char *secret;      /* CHAT_JWT_SECRET: HS256, verifies tokens without kid ("" = none) */
    const char *keys_file;   /* CHAT_JWT_KEYS: path of the key file ("" = none) */
    const char *issuer;      /* CHAT_JWT_ISSUER: required `iss` ("" = not checked) */
    const char *audience;    /* CHAT_JWT_AUDIENCE: required in `aud` ("" = not checked) */
    int64_t max_ttl_s;       /* CHAT_JWT_MAX_TTL: longest `exp` from now, and from `iat` */
    const char *signing_kid; /* CHAT_JWT_SIGNING_KEY: kid chat_jwt_issue signs with ("" = the secret) */
} chat_jwt_settings;

/* The keys and claim rules tokens are checked against. */
typedef struct chat_jwt_policy chat_jwt_policy;

/* Builds a policy: reads and parses the key file and its PEM files, refuses weak secrets. On
 * CHAT_ERR_INVALID writes one line naming the setting into err ("CHAT_JWT_KEYS: line 3: ...").
 * *out set only on CHAT_OK; the caller destroys it. Main thread, at start. */
chat_status chat_jwt_policy_create(const chat_jwt_settings *s, char *err, size_t errsz, chat_jwt_policy **out);
void chat_jwt_policy_destroy(chat_jwt_policy *p); /* NULL-safe */

int64_t chat_jwt_policy_max_ttl(const chat_jwt_policy *p);
/* Whether chat_jwt_issue has a key to sign with (a secret, or a private key named by signing_kid). */
bool chat_jwt_policy_can_sign(const chat_jwt_policy *p);

/* true for the documented example secret and other values nobody should sign with. */
bool chat_jwt_secret_weak(const char *secret);

/* What a verified token says. */
typedef struct chat_jwt_claims {
    char user[CHAT_ID_MAX + 1];
    int64_t exp;
    int64_t iat;                      /* 0 when absent */
    char jti[CHAT_JWT_JTI_MAX + 1];   /* "" when absent */
    char kid[CHAT_JWT_KID_MAX + 1];   /* the key that verified it ("" = CHAT_JWT_SECRET) */
} chat_jwt_claims;

/* Checks token at time now_s. On CHAT_OK fills *out (may be NULL). Otherwise CHAT_ERR_DENIED and a
 * short reason ("expired", "bad signature", ...) in *why (may be NULL). */
chat_status chat_jwt_verify(const chat_jwt_policy *p, const char *token, int64_t now_s, chat_jwt_claims *out,
                            const char **why);

/* A token for user valid ttl_s seconds from now_s (`iat` now_s, a random `jti`), signed with the
 * policy's signing key, with `iss` and `aud` when the policy checks them. CHAT_ERR_INVALID when ttl_s is not 1 to the maximum
 * lifetime, CHAT_ERR_DENIED when the policy has no signing key. The caller frees *out. */
chat_status chat_jwt_issue(const chat_jwt_policy *p, const char *user, int64_t now_s, int64_t ttl_s, char **out);

/* The claims of a token WITHOUT checking its signature or times (user, exp, iat, jti; kid ""): for
 * chatctl revoke token, which needs only which token it is. CHAT_ERR_INVALID when it is not a JWT
 * with sub and exp. */
chat_status chat_jwt_peek(const char *token, chat_jwt_claims *out);

/* An HS256 token (no kid, no iss or aud) signed with secret: the single-secret form. The caller
 * frees *out. */
chat_status chat_jwt_sign(const char *user, const char *secret, int64_t now_s, int64_t ttl_s, char **out);

#endif
