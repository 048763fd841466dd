/* Tokens: only a token signed by a configured key, with that key's algorithm, and with live claims
 * that match the policy (iss, aud, maximum lifetime) passes. Tokens are made by hand here
 * (header.payload.signature, OpenSSL directly) so the test does not trust the code under test to
 * make them; keys are made with OpenSSL into a folder of the test's own. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "chat_jwt.h"
#include "unit_run.h"

static const char *secret = "test-secret-0123456789abcdef0123456789";
static const char *secret_a = "kid-a-secret-0123456789abcdefghijklmnop";
static const char *secret_b = "kid-b-secret-0123456789abcdefghijklmnop";
static const int64_t now = 1800000000;
static const char *hs256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

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

/* header.payload.signature: md "HS256"/"HS512" signs with HMAC keyed by key, NULL leaves the
 * signature empty; pkey (when not NULL) signs instead: Ed25519 as EdDSA, RSA as RS256. */
static char *forge_with(const char *header, const char *payload, const char *key, size_t keylen, const char *md,
                        EVP_PKEY *pkey)
{
    static char token[8192];
    char h[1024], p[2048];
    b64url((const unsigned char *)header, strlen(header), h);
    b64url((const unsigned char *)payload, strlen(payload), p);
    snprintf(token, sizeof token, "%s.%s.", h, p);
    size_t signed_len = strlen(token) - 1;
    unsigned char sig[1024];
    size_t siglen = 0;
    if (pkey) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        siglen = sizeof sig;
        ck_assert(EVP_DigestSignInit(ctx, NULL, EVP_PKEY_is_a(pkey, "RSA") ? EVP_sha256() : NULL, NULL, pkey) == 1);
        ck_assert(EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)token, signed_len) == 1);
        EVP_MD_CTX_free(ctx);
    } else if (md) {
        unsigned int maclen = 0;
        HMAC(strcmp(md, "HS512") == 0 ? EVP_sha512() : EVP_sha256(), key, (int)keylen, (const unsigned char *)token,
             signed_len, sig, &maclen);
        siglen = maclen;
    }
    char s64[1500];
    b64url(sig, siglen, s64);
    strcat(token, s64);
    return token;
}

static char *forge(const char *header, const char *payload, const char *key, const char *md)
{
    return forge_with(header, payload, key, key ? strlen(key) : 0, md, NULL);
}

/* A policy of the single-secret kind, and the rules given. */
static chat_jwt_policy *policy(const char *keys_file, const char *issuer, const char *audience, int64_t max_ttl,
                               const char *the_secret)
{
    chat_jwt_settings s = {.secret = the_secret, .keys_file = keys_file, .issuer = issuer, .audience = audience,
                           .max_ttl_s = max_ttl, .signing_kid = ""};
    char err[512] = "";
    chat_jwt_policy *p = NULL;
    ck_assert_msg(chat_jwt_policy_create(&s, err, sizeof err, &p) == CHAT_OK, "policy: %s", err);
    return p;
}

static chat_status check_with(const chat_jwt_policy *p, const char *token, char *user)
{
    chat_jwt_claims c;
    const char *why = NULL;
    chat_status st = chat_jwt_verify(p, token, now, &c, &why);
    if (st == CHAT_OK)
        strcpy(user, c.user);
    else
        ck_assert_ptr_nonnull(why);
    return st;
}

static chat_status check(const char *token, char *user)
{
    chat_jwt_policy *p = policy("", "", "", 86400, secret);
    chat_status st = check_with(p, token, user);
    chat_jwt_policy_destroy(p);
    return st;
}

/* ---- keys on disk ---- */

static char dir[64];
static EVP_PKEY *ed, *ed_other, *rsa, *rsa_other;
static char ed_pub_pem[4096];
static char rsa_pub_pem[4096];

static void write_pem(EVP_PKEY *k, const char *name, bool private_key, char *copy, size_t copysz)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert(private_key ? PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1 : PEM_write_PUBKEY(f, k) == 1);
    fclose(f);
    if (copy) {
        f = fopen(path, "r");
        size_t n = fread(copy, 1, copysz - 1, f);
        copy[n] = '\0';
        fclose(f);
    }
}

static void keys_setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_chat_jwt.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ed_other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    rsa = EVP_RSA_gen(2048);
    rsa_other = EVP_RSA_gen(2048);
    ck_assert(ed && ed_other && rsa && rsa_other);
    write_pem(ed, "ed.pub", false, ed_pub_pem, sizeof ed_pub_pem);
    write_pem(ed, "ed.key", true, NULL, 0);
    write_pem(rsa, "rsa.pub", false, rsa_pub_pem, sizeof rsa_pub_pem);
    EVP_PKEY *small = EVP_RSA_gen(1024);
    write_pem(small, "rsa1024.pub", false, NULL, 0);
    EVP_PKEY_free(small);
}

static void keys_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(ed_other);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(rsa_other);
}

/* Writes a key file with the given text; returns its path (static). */
static const char *key_file(const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* The rotation set: two HS256 kids, an EdDSA public key (relative path), an RS256 public key. */
static const char *rotation_keys(void)
{
    static char text[1024];
    snprintf(text, sizeof text,
             "# kid alg key\n"
             "a HS256 %s\n"
             "b HS256 %s\n"
             "  ed EdDSA ed.pub\n"
             "\n"
             "rs RS256 %s/rsa.pub\n",
             secret_a, secret_b, dir);
    return key_file(text);
}

static char *claims_now(const char *extra)
{
    static char p[512];
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld%s%s}", (long long)now + 600, extra[0] ? "," : "", extra);
    return p;
}

/* ---- the single-secret form, as before key ids ---- */

START_TEST(valid_token_gives_user)
{
    char user[CHAT_ID_MAX + 1];
    ck_assert_int_eq(check(forge(hs256, claims_now(""), secret, "HS256"), user), CHAT_OK);
    ck_assert_str_eq(user, "alice");
    /* a kid is ignored when there is no key file (tokens made before key ids had any) */
    ck_assert_int_eq(check(forge("{\"alg\":\"HS256\",\"kid\":\"x\"}", claims_now(""), secret, "HS256"), user), CHAT_OK);
}
END_TEST

START_TEST(sign_then_verify)
{
    char *token = NULL;
    ck_assert_int_eq(chat_jwt_sign("bob", secret, now, 100, &token), CHAT_OK);
    chat_jwt_policy *p = policy("", "", "", 86400, secret);
    chat_jwt_claims c;
    ck_assert_int_eq(chat_jwt_verify(p, token, now, &c, NULL), CHAT_OK);
    ck_assert_str_eq(c.user, "bob");
    ck_assert_int_eq(c.exp, now + 100);
    ck_assert_int_eq(c.iat, now);
    chat_jwt_policy_destroy(p);
    free(token);
}
END_TEST

START_TEST(refused_tokens)
{
    char user[CHAT_ID_MAX + 1], p[256];
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, "another-secret-0123456789abcdef0123", "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, secret, NULL), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p, secret, "HS512"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p, secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge(hs256, p, secret, NULL), user), CHAT_ERR_DENIED); /* no signature */
    /* the algorithm's name must be exactly HS256, even when the HMAC-SHA256 signature is right */
    ck_assert_int_eq(check(forge("{\"alg\":\"hs256\",\"typ\":\"JWT\"}", p, secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge("{\"alg\":\"HS256\",\"crit\":[\"b64\"]}", p, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* expired beyond the leeway, and within it */
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now - 31);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now - 29);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_OK);
    /* not yet valid */
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld,\"nbf\":%lld}", (long long)now + 600,
             (long long)now + 120);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* exp missing, a string, a fraction, huge; sub missing, sub not an id; a claim twice */
    ck_assert_int_eq(check(forge(hs256, "{\"sub\":\"alice\"}", secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":\"%lld\"}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"exp\":%lld.5}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(forge(hs256, "{\"sub\":\"alice\",\"exp\":9223372036854775807}", secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"a.b>\",\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(p, sizeof p, "{\"sub\":\"alice\",\"sub\":\"bob\",\"exp\":%lld}", (long long)now + 60);
    ck_assert_int_eq(check(forge(hs256, p, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* missing, garbage, oversized */
    ck_assert_int_eq(check("", user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check(NULL, user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check("not-a-token", user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check("a.b.c", user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check("a.b.c.d", user), CHAT_ERR_DENIED);
    char *big = malloc(CHAT_JWT_MAX_LEN + 10);
    memset(big, 'A', CHAT_JWT_MAX_LEN + 9);
    big[10] = '.';
    big[CHAT_JWT_MAX_LEN + 9] = '\0';
    ck_assert_int_eq(check(big, user), CHAT_ERR_DENIED);
    free(big);
}
END_TEST

/* ---- issuer, audience, lifetime ---- */

START_TEST(issuer_checked_when_set)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy("", "https://auth.example", "", 86400, secret);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"iss\":\"https://auth.example\""), secret, "HS256"), user),
                     CHAT_OK);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now(""), secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"iss\":\"https://evil.example\""), secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"iss\":[\"https://auth.example\"]"), secret, "HS256"),
                                user),
                     CHAT_ERR_DENIED);
    chat_jwt_policy_destroy(p);
    /* not set: any iss, or none, passes (as before) */
    ck_assert_int_eq(check(forge(hs256, claims_now("\"iss\":\"whoever\""), secret, "HS256"), user), CHAT_OK);
}
END_TEST

START_TEST(audience_string_or_array)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy("", "", "chat", 86400, secret);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"aud\":\"chat\""), secret, "HS256"), user), CHAT_OK);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"aud\":[\"billing\",\"chat\"]"), secret, "HS256"), user),
                     CHAT_OK);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"aud\":[\"billing\"]"), secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"aud\":\"chat2\""), secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"aud\":[]"), secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now("\"aud\":{\"chat\":1}"), secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge(hs256, claims_now(""), secret, "HS256"), user), CHAT_ERR_DENIED);
    chat_jwt_policy_destroy(p);
}
END_TEST

START_TEST(maximum_lifetime)
{
    char user[CHAT_ID_MAX + 1], c[256];
    chat_jwt_policy *p = policy("", "", "", 3600, secret);
    snprintf(c, sizeof c, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 3600);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_OK);
    /* the signer's clock may be up to the leeway ahead */
    snprintf(c, sizeof c, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 3600 + 30);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_OK);
    snprintf(c, sizeof c, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 3600 + 31);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(c, sizeof c, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)now + 10 * 365 * 86400);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_ERR_DENIED);
    /* from iat: issued an hour ago for two hours, though only an hour is left */
    snprintf(c, sizeof c, "{\"sub\":\"alice\",\"iat\":%lld,\"exp\":%lld}", (long long)now - 3600, (long long)now + 3600);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_ERR_DENIED);
    snprintf(c, sizeof c, "{\"sub\":\"alice\",\"iat\":%lld,\"exp\":%lld}", (long long)now - 60, (long long)now + 3540);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_OK);
    /* issuing: within the maximum only */
    char *t = NULL;
    ck_assert_int_eq(chat_jwt_issue(p, "alice", now, 3601, &t), CHAT_ERR_INVALID);
    ck_assert_int_eq(chat_jwt_issue(p, "alice", now, 3600, &t), CHAT_OK);
    ck_assert_int_eq(check_with(p, t, user), CHAT_OK);
    free(t);
    chat_jwt_policy_destroy(p);
}
END_TEST

/* Issued tokens carry iat and a random jti (so one can be revoked alone); chat_jwt_peek reads them
 * back without a key, and refuses what is not a token. */
START_TEST(issue_carries_jti_peek_reads_it)
{
    chat_jwt_policy *p = policy("", "", "", 86400, secret);
    char *t1 = NULL, *t2 = NULL;
    ck_assert_int_eq(chat_jwt_issue(p, "dora", now, 600, &t1), CHAT_OK);
    ck_assert_int_eq(chat_jwt_issue(p, "dora", now, 600, &t2), CHAT_OK);
    chat_jwt_claims a, b, v;
    ck_assert_int_eq(chat_jwt_peek(t1, &a), CHAT_OK);
    ck_assert_int_eq(chat_jwt_peek(t2, &b), CHAT_OK);
    ck_assert_str_eq(a.user, "dora");
    ck_assert_int_eq(a.iat, now);
    ck_assert_int_eq(a.exp, now + 600);
    ck_assert_int_eq(strlen(a.jti), 22);
    ck_assert_str_ne(a.jti, b.jti);
    ck_assert_int_eq(chat_jwt_verify(p, t1, now, &v, NULL), CHAT_OK);
    ck_assert_str_eq(v.jti, a.jti);
    ck_assert_int_eq(chat_jwt_peek("not.a.token", &a), CHAT_ERR_INVALID);
    ck_assert_int_eq(chat_jwt_peek("", &a), CHAT_ERR_INVALID);
    free(t1);
    free(t2);
    chat_jwt_policy_destroy(p);
}
END_TEST

START_TEST(issue_carries_iss_and_aud)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy("", "https://auth.example", "chat", 86400, secret);
    char *t = NULL;
    ck_assert_int_eq(chat_jwt_issue(p, "carol", now, 600, &t), CHAT_OK);
    ck_assert_int_eq(check_with(p, t, user), CHAT_OK);
    ck_assert_str_eq(user, "carol");
    free(t);
    chat_jwt_policy_destroy(p);
}
END_TEST

/* ---- several keys, chosen by kid ---- */

START_TEST(kid_selects_the_key)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy(rotation_keys(), "", "", 86400, secret);
    const char *c = claims_now("");
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"a\"}", c, secret_a, "HS256"), user), CHAT_OK);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"b\"}", c, secret_b, "HS256"), user), CHAT_OK);
    /* a key signs only under its own kid */
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"b\"}", c, secret_a, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"a\"}", c, secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    /* no kid: CHAT_JWT_SECRET's key, and only it */
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_OK);
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret_a, "HS256"), user), CHAT_ERR_DENIED);
    /* unknown kid, an empty kid, a kid that is not a string */
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"c\"}", c, secret_a, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"\"}", c, secret, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":1}", c, secret, "HS256"), user), CHAT_ERR_DENIED);
    chat_jwt_policy_destroy(p);
    /* without CHAT_JWT_SECRET, a token without kid has no key */
    p = policy(rotation_keys(), "", "", 86400, "");
    ck_assert_int_eq(check_with(p, forge(hs256, c, secret, "HS256"), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"HS256\",\"kid\":\"a\"}", c, secret_a, "HS256"), user), CHAT_OK);
    chat_jwt_policy_destroy(p);
}
END_TEST

START_TEST(eddsa_and_rs256)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy(rotation_keys(), "", "", 86400, "");
    const char *c = claims_now("");
    const char *ed_h = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"ed\"}";
    const char *rs_h = "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"rs\"}";
    ck_assert_int_eq(check_with(p, forge_with(ed_h, c, NULL, 0, NULL, ed), user), CHAT_OK);
    ck_assert_str_eq(user, "alice");
    ck_assert_int_eq(check_with(p, forge_with(rs_h, c, NULL, 0, NULL, rsa), user), CHAT_OK);
    /* another key pair's signature */
    ck_assert_int_eq(check_with(p, forge_with(ed_h, c, NULL, 0, NULL, ed_other), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge_with(rs_h, c, NULL, 0, NULL, rsa_other), user), CHAT_ERR_DENIED);
    /* a good signature over other claims: the claims changed after signing */
    char *t = strdup(forge_with(ed_h, c, NULL, 0, NULL, ed));
    char *other = strdup(forge_with(ed_h, claims_now("\"x\":1"), NULL, 0, NULL, ed));
    char spliced[8192];
    snprintf(spliced, sizeof spliced, "%.*s%s", (int)(strchr(strchr(other, '.') + 1, '.') - other), other,
             strrchr(t, '.'));
    ck_assert_int_eq(check_with(p, spliced, user), CHAT_ERR_DENIED);
    free(t);
    free(other);
    chat_jwt_policy_destroy(p);
}
END_TEST

START_TEST(alg_must_be_the_keys)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy(rotation_keys(), "", "", 86400, secret);
    const char *c = claims_now("");
    /* each key's own signature, under another algorithm's name */
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"RS256\",\"kid\":\"ed\"}", c, NULL, 0, NULL, ed), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"EdDSA\",\"kid\":\"rs\"}", c, NULL, 0, NULL, rsa), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"EdDSA\",\"kid\":\"a\"}", c, secret_a, "HS256"), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"EdDSA\"}", c, NULL, 0, NULL, ed), user), CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"eddsa\",\"kid\":\"ed\"}", c, NULL, 0, NULL, ed), user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge("{\"alg\":\"none\",\"kid\":\"ed\"}", c, NULL, NULL), user), CHAT_ERR_DENIED);
    chat_jwt_policy_destroy(p);
}
END_TEST

/* The classic confusion: an HS256 token whose HMAC key is the public key's PEM text, which a
 * verifier that lets the token pick the algorithm would use as the secret. */
START_TEST(public_key_never_an_hmac_secret)
{
    char user[CHAT_ID_MAX + 1];
    chat_jwt_policy *p = policy(rotation_keys(), "", "", 86400, secret);
    const char *c = claims_now("");
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"HS256\",\"kid\":\"rs\"}", c, rsa_pub_pem, strlen(rsa_pub_pem),
                                              "HS256", NULL),
                                user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"HS256\",\"kid\":\"ed\"}", c, ed_pub_pem, strlen(ed_pub_pem),
                                              "HS256", NULL),
                                user),
                     CHAT_ERR_DENIED);
    ck_assert_int_eq(check_with(p, forge_with("{\"alg\":\"RS256\",\"kid\":\"rs\"}", c, rsa_pub_pem,
                                              strlen(rsa_pub_pem), "HS256", NULL),
                                user),
                     CHAT_ERR_DENIED);
    chat_jwt_policy_destroy(p);
}
END_TEST

START_TEST(issue_with_a_private_key)
{
    char keys[512], user[CHAT_ID_MAX + 1];
    snprintf(keys, sizeof keys, "ed EdDSA ed.key\n");
    chat_jwt_settings s = {.secret = "", .keys_file = key_file(keys), .issuer = "", .audience = "",
                           .max_ttl_s = 86400, .signing_kid = "ed"};
    char err[512] = "";
    chat_jwt_policy *signer = NULL;
    ck_assert_msg(chat_jwt_policy_create(&s, err, sizeof err, &signer) == CHAT_OK, "%s", err);
    ck_assert(chat_jwt_policy_can_sign(signer));
    char *t = NULL;
    ck_assert_int_eq(chat_jwt_issue(signer, "dave", now, 600, &t), CHAT_OK);
    /* a gateway with the public key only verifies it, and cannot sign */
    chat_jwt_policy *gw = policy(rotation_keys(), "", "", 86400, "");
    ck_assert_int_eq(check_with(gw, t, user), CHAT_OK);
    ck_assert_str_eq(user, "dave");
    ck_assert(!chat_jwt_policy_can_sign(gw));
    char *t2 = NULL;
    ck_assert_int_eq(chat_jwt_issue(gw, "dave", now, 600, &t2), CHAT_ERR_DENIED);
    free(t);
    chat_jwt_policy_destroy(gw);
    chat_jwt_policy_destroy(signer);
    /* naming a public key to sign with is refused at start */
    s.keys_file = rotation_keys();
    ck_assert_int_eq(chat_jwt_policy_create(&s, err, sizeof err, &signer), CHAT_ERR_INVALID);
    ck_assert_msg(strncmp(err, "CHAT_JWT_SIGNING_KEY: ", 22) == 0 && strstr(err, "public key"), "%s", err);
}
END_TEST

/* ---- refused at start, one line naming the setting ---- */

static void expect_refused(const char *the_secret, const char *keys_text, const char *setting, const char *words)
{
    chat_jwt_settings s = {.secret = the_secret, .keys_file = keys_text ? key_file(keys_text) : "", .issuer = "",
                           .audience = "", .max_ttl_s = 86400, .signing_kid = ""};
    char err[512] = "";
    chat_jwt_policy *p = NULL;
    ck_assert_msg(chat_jwt_policy_create(&s, err, sizeof err, &p) == CHAT_ERR_INVALID, "accepted: %s / %s",
                  the_secret, keys_text ? keys_text : "");
    ck_assert_ptr_null(p);
    ck_assert_msg(strncmp(err, setting, strlen(setting)) == 0 && strstr(err, words) && !strchr(err, '\n'),
                  "error line \"%s\" (want %s ... %s)", err, setting, words);
}

START_TEST(weak_and_broken_keys_refused)
{
    expect_refused("changeme-changeme-changeme-changeme-0000", NULL, "CHAT_JWT_SECRET: ", "documented example");
    expect_refused("ChangeMe-our-production-secret-2024-xyz", NULL, "CHAT_JWT_SECRET: ", "documented example");
    expect_refused("00000000000000000000000000000000000000", NULL, "CHAT_JWT_SECRET: ", "guessable");
    expect_refused("abababababababababababababababababab", NULL, "CHAT_JWT_SECRET: ", "guessable");
    expect_refused("short", NULL, "CHAT_JWT_SECRET: ", "at least 32");
    expect_refused("", NULL, "CHAT_JWT_SECRET: ", "not set");
    expect_refused("", "k HS256 changeme-changeme-changeme-changeme-0000\n", "CHAT_JWT_KEYS: ", "line 1");
    char text[512];
    snprintf(text, sizeof text, "a HS256 %s\na HS256 %s\n", secret_a, secret_b);
    expect_refused("", text, "CHAT_JWT_KEYS: ", "appears twice");
    expect_refused("", "a HS384 0123456789abcdef0123456789abcdef0123\n", "CHAT_JWT_KEYS: ", "HS256, EdDSA or RS256");
    expect_refused("", "a HS256\n", "CHAT_JWT_KEYS: ", "kid alg key");
    expect_refused("", "a/b HS256 0123456789abcdef0123456789abcdef0123\n", "CHAT_JWT_KEYS: ", "kid must be");
    expect_refused("", "ed EdDSA nonexistent.pem\n", "CHAT_JWT_KEYS: ", "nonexistent.pem");
    expect_refused("", "ed EdDSA rsa.pub\n", "CHAT_JWT_KEYS: ", "Ed25519");
    expect_refused("", "rs RS256 ed.pub\n", "CHAT_JWT_KEYS: ", "RSA key of 2048");
    expect_refused("", "rs RS256 rsa1024.pub\n", "CHAT_JWT_KEYS: ", "RSA key of 2048");
    expect_refused("", "# nothing\n", "CHAT_JWT_KEYS: ", "holds no key");
    ck_assert(!chat_jwt_secret_weak("0123456789abcdef0123456789abcdef"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_jwt");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, valid_token_gives_user);
    tcase_add_test(tc, sign_then_verify);
    tcase_add_test(tc, refused_tokens);
    tcase_add_test(tc, issuer_checked_when_set);
    tcase_add_test(tc, audience_string_or_array);
    tcase_add_test(tc, maximum_lifetime);
    tcase_add_test(tc, issue_carries_iss_and_aud);
    tcase_add_test(tc, issue_carries_jti_peek_reads_it);
    suite_add_tcase(s, tc);
    TCase *keys = tcase_create("keys");
    tcase_add_checked_fixture(keys, keys_setup, keys_teardown);
    tcase_set_timeout(keys, 30);
    tcase_add_test(keys, kid_selects_the_key);
    tcase_add_test(keys, eddsa_and_rs256);
    tcase_add_test(keys, alg_must_be_the_keys);
    tcase_add_test(keys, public_key_never_an_hmac_secret);
    tcase_add_test(keys, issue_with_a_private_key);
    tcase_add_test(keys, weak_and_broken_keys_refused);
    suite_add_tcase(s, keys);
    return unit_run(s);
}
