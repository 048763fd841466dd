/* JWT verification and signing (libjwt; claims checked here, libjwt 1.10 checks none). */
#include "chat_jwt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jwt.h>

chat_status chat_jwt_verify(const char *token, const char *secret, int64_t now_s, char *user, int64_t *exp_s,
                            const char **why)
{
    const char *reason = NULL;
    jwt_t *jwt = NULL;
    if (token == NULL || token[0] == '\0') {
        reason = "missing token";
        goto out;
    }
    if (strlen(token) > CHAT_JWT_MAX_LEN) {
        reason = "token too long";
        goto out;
    }
    /* Refuse anything but a three-part compact token before parsing. */
    if (strchr(token, '.') == NULL) {
        reason = "malformed token";
        goto out;
    }
    if (jwt_decode(&jwt, token, (const unsigned char *)secret, (int)strlen(secret)) != 0 || jwt == NULL) {
        reason = "bad signature or malformed token";
        goto out;
    }
    /* libjwt matches the name without regard to case ("hs256" passes): insist on the exact name */
    const char *alg = jwt_get_header(jwt, "alg");
    if (jwt_get_alg(jwt) != JWT_ALG_HS256 || alg == NULL || strcmp(alg, "HS256") != 0) {
        reason = "algorithm is not HS256";
        goto out;
    }
    errno = 0;
    long exp = jwt_get_grant_int(jwt, "exp");
    if (errno != 0) {
        reason = "exp missing";
        goto out;
    }
    if (now_s > exp + CHAT_JWT_LEEWAY_S) {
        reason = "expired";
        goto out;
    }
    errno = 0;
    long nbf = jwt_get_grant_int(jwt, "nbf");
    if (errno == 0 && now_s + CHAT_JWT_LEEWAY_S < nbf) {
        reason = "not yet valid";
        goto out;
    }
    const char *sub = jwt_get_grant(jwt, "sub");
    if (sub == NULL || !chat_id_valid(sub)) {
        reason = "sub missing or not a valid user id";
        goto out;
    }
    strcpy(user, sub);
    if (exp_s)
        *exp_s = exp;
out:
    jwt_free(jwt);
    if (reason) {
        if (why)
            *why = reason;
        return CHAT_ERR_DENIED;
    }
    return CHAT_OK;
}

chat_status chat_jwt_sign(const char *user, const char *secret, int64_t now_s, int64_t ttl_s, char **out)
{
    jwt_t *jwt = NULL;
    if (!chat_id_valid(user) || jwt_new(&jwt) != 0)
        return CHAT_ERR_INVALID;
    int rc = jwt_add_grant(jwt, "sub", user);
    rc = rc ? rc : jwt_add_grant_int(jwt, "iat", (long)now_s);
    rc = rc ? rc : jwt_add_grant_int(jwt, "exp", (long)(now_s + ttl_s));
    rc = rc ? rc : jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret));
    char *token = rc ? NULL : jwt_encode_str(jwt);
    jwt_free(jwt);
    if (token == NULL)
        return CHAT_ERR_INTERNAL;
    *out = strdup(token);
    free(token); /* libjwt 1.10 allocates with its default allocator (malloc) */
    return CHAT_OK;
}
