/* Token revocations: keys and values of the CHAT_REVOKED bucket (chat_revoke.h). Any thread. */
#include "chat_revoke.h"

#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

#include "chat_id.h"

bool chat_revoke_key_user(char *buf, const char *user)
{
    if (!chat_id_valid(user))
        return false;
    snprintf(buf, CHAT_REVOKE_KEY_MAX, "u.%s", user);
    return true;
}

void chat_revoke_key_token(char *buf, const char *jti)
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)jti, strlen(jti), d);
    static const char hex[] = "0123456789abcdef";
    buf[0] = 'j';
    buf[1] = '.';
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        buf[2 + 2 * i] = hex[d[i] >> 4];
        buf[3 + 2 * i] = hex[d[i] & 15];
    }
    buf[2 + 2 * SHA256_DIGEST_LENGTH] = '\0';
}

uint64_t chat_revoke_key_jti_id(const char *key)
{
    if (strncmp(key, "j.", 2) != 0 || strlen(key) != 2 + 2 * SHA256_DIGEST_LENGTH)
        return 0;
    uint64_t id = 0;
    for (int i = 0; i < 16; i++) {
        char c = key[2 + i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return 0;
        id = id << 4 | (uint64_t)v;
    }
    return id ? id : 1;
}

uint64_t chat_revoke_jti_id(const char *jti)
{
    char key[CHAT_REVOKE_KEY_MAX];
    chat_revoke_key_token(key, jti);
    return chat_revoke_key_jti_id(key);
}

chat_revoke_kind chat_revoke_key_parse(const char *key, char *user)
{
    if (strncmp(key, "u.", 2) == 0 && chat_id_valid(key + 2)) {
        if (user)
            snprintf(user, CHAT_ID_MAX + 1, "%s", key + 2);
        return CHAT_REVOKE_USER;
    }
    return chat_revoke_key_jti_id(key) ? CHAT_REVOKE_TOKEN : 0;
}

bool chat_revoke_value_parse(const char *text, size_t len, int64_t *out)
{
    if (len == 0 || len > 13)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        v = v * 10 + (text[i] - '0');
    }
    if (v < 1 || v > (1LL << 40))
        return false;
    *out = v;
    return true;
}

int64_t chat_revoke_entry_until(chat_revoke_kind kind, int64_t value, int64_t max_ttl_s)
{
    /* a refused user token was issued before not_before, so it expires by not_before + max_ttl
     * (exp - iat is checked against the maximum); a revoked token by its exp; both + the leeway */
    return kind == CHAT_REVOKE_USER ? value + max_ttl_s + CHAT_JWT_LEEWAY_S : value + CHAT_JWT_LEEWAY_S;
}
