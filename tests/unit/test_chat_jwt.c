/* Tokens: HS256 with the right secret and live claims only. Forged tokens are made by hand here
 * (header.payload.signature) so the test does not trust the code under test to make them. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "chat_jwt.h"
#include "unit_run.h"

static const char *secret = "test-secret-0123456789abcdef0123456789";
static const int64_t now = 1800000000;

static void b64url(const unsigned char *in, size_t len, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = tbl[(v >> 6) & 63];
        if (i + 2 < len)
            out[o++] = tbl[v & 63];
    }
    out[o] = '\0';
}

/* Builds header.payload.signature; alg_sig "HS256"/"HS512" signs with key, anything else leaves
 * the signature empty. */
static char *forge(const char *header, const char *payload, const char *key, const char *md)
{
    static char token[4096];
    char h[1024], p[2048];
    b64url((const unsigned char *)header, strlen(header), h);
    b64url((const unsigned char *)payload, strlen(payload), p);
    snprintf(token, sizeof token, "%s.%s.", h, p);
    if (md) {
        unsigned char mac[64];
        unsigned int maclen = 0;
        const EVP_MD *alg = strcmp(md, "HS512") == 0 ? EVP_sha512() : EVP_sha256();
        size_t signed_len = strlen(token) - 1;
        HMAC(alg, key, (int)strlen(key), (const unsigned char *)token, signed_len, mac, &maclen);
        char sig[128];
        b64url(mac, maclen, sig);
        strcat(token, sig);
    }
    return token;
}

static chat_status check(const char *token, char *user)
{
    const char *why = NULL;
    return chat_jwt_verify(token, secret, now, user, NULL, &why);
}

START_TEST(valid_token_gives_user)
{
    char user[CHAT_ID_MAX + 1], payload[256];
    snprintf(payload, sizeof payload, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, secret, "HS256"), user), CHAT_OK);
    ck_assert_str_eq(user, "alice");
}
END_TEST

START_TEST(sign_then_verify)
{
    char *token = NULL, user[CHAT_ID_MAX + 1];
    ck_assert_int_eq(chat_jwt_sign("bob", secret, now, 100, &token), CHAT_OK);
    int64_t exp = 0;
    ck_assert_int_eq(chat_jwt_verify(token, secret, now, user, &exp, NULL), CHAT_OK);
    ck_assert_str_eq(user, "bob");
    ck_assert_int_eq(exp, now + 100);
    free(token);
}
END_TEST

START_TEST(refused_tokens)
{
    char user[CHAT_ID_MAX + 1], p[256];
    const char *hs256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, "another-secret-0123456789abcdef0123", "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, secret, NULL), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p, secret, "HS512"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p, secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge(hs256, p, secret, NULL), user), CHAT_ERR_DENIED); /* no signature */
    /* the algorithm's name must be exactly HS256, even when the HMAC-SHA256 signature is right */
    ck_assert_int_eq(check(forge("{\"alg\":\"hs256\",\"typ\":\"JWT\"}", p, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* expired beyond the leeway, and within it */
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now - 31);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now - 29);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_OK);
    /* not yet valid */
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld,\"nbf\":%lld}", (long long)now + 600,
             (long long)now + 120);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* exp missing, sub missing, sub not an id */
    ck_assert_int_eq(check(forge(hs256, "{\"sub\":\"alice\"}", secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"a.b>\",\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* missing, garbage, oversized */
    ck_assert_int_eq(check("", user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(NULL, user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check("not-a-token", user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check("a.b.c", user), CHAT_ERR_DENIED);
    char *big = malloc(CHAT_JWT_MAX_LEN + 10);
    memset(big, 'A', CHAT_JWT_MAX_LEN + 9);
    big[10] = '.';
    big[CHAT_JWT_MAX_LEN + 9] = '\0';
    ck_assert_int_eq(check(big, user), CHAT_ERR_DENIED);
    free(big);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_jwt");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, valid_token_gives_user);
    tcase_add_test(tc, sign_then_verify);
    tcase_add_test(tc, refused_tokens);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
