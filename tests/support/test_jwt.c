/* Hand-made JWTs for the token tests (the forge of tests/unit/test_chat_jwt.c, without the fixed
 * buffer). Any thread. */
#include "test_jwt.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

size_t test_jwt_b64url(const unsigned char *in, size_t len, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v =
            (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = tbl[(v >> 6) & 63];
        if (i + 2 < len)
            out[o++] = tbl[v & 63];
    }
    out[o] = '\0';
    return o;
}

char *test_jwt_forge(const char *header, const char *payload, const char *key, const char *sig_alg)
{
    size_t hlen = strlen(header), plen = strlen(payload);
    char *token = malloc(4 * (hlen + plen) / 3 + 200);
    if (!token)
        abort();
    size_t o = test_jwt_b64url((const unsigned char *)header, hlen, token);
    token[o++] = '.';
    o += test_jwt_b64url((const unsigned char *)payload, plen, token + o);
    size_t signed_len = o;
    token[o++] = '.';
    token[o] = '\0';
    if (sig_alg) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        const EVP_MD *md = strcmp(sig_alg, "HS512") == 0 ? EVP_sha512() : EVP_sha256();
        HMAC(md, key, (int)strlen(key), (const unsigned char *)token, signed_len, mac, &maclen);
        test_jwt_b64url(mac, maclen, token + o);
    }
    return token;
}
