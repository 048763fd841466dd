/* Compact JWS tokens, read and written by hand with OpenSSL's primitives and jansson: the key is
 * chosen from the policy by kid before the header's alg is looked at, and the alg must be the
 * key's, so a token never picks how it is checked. Any thread (the policy is read-only). */
#include "chat_jwtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>

#include "chat_mem.h"

/* An RSA signature of the largest key we load (16384 bits) is 2 KiB. */
#define SIG_MAX 2048

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding into out (4 * (len + 2) / 3 + 1 bytes); returns the length. */
static size_t b64url_encode(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = B64URL[(v >> 6) & 63];
        if (i + 2 < len)
            out[o++] = B64URL[v & 63];
    }
    out[o] = '\0';
    return o;
}

/* Strict base64url (no padding, no other characters, no stray bits) of in[0..len) into out (room
 * for len * 3 / 4 bytes). false when it is not. */
static bool b64url_decode(const char *in, size_t len, unsigned char *out, size_t *outlen)
{
    if (len % 4 == 1)
        return false;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        const char *c = in[i] ? strchr(B64URL, in[i]) : NULL;
        if (c == NULL)
            return false;
        acc = (acc << 6 | (unsigned)(c - B64URL)) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1)) /* the last character's unused bits must be zero */
        return false;
    *outlen = o;
    return true;
}

/* A base64url part holding a JSON object (duplicate names refused: which one would count?). */
static json_t *json_part(const char *in, size_t len)
{
    unsigned char buf[CHAT_JWT_MAX_LEN];
    size_t n;
    if (!b64url_decode(in, len, buf, &n))
        return NULL;
    json_t *j = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Checks sig over msg with the key, by the key's algorithm. */
static bool signature_valid(const jwt_key *k, const char *msg, size_t len, const unsigned char *sig, size_t siglen)
{
    if (k->alg == CHAT_JWT_HS256) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned maclen = 0;
        if (HMAC(EVP_sha256(), k->secret, (int)k->secret_len, (const unsigned char *)msg, len, mac, &maclen) == NULL)
            return false;
        return siglen == maclen && CRYPTO_memcmp(mac, sig, maclen) == 0;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const EVP_MD *md = k->alg == CHAT_JWT_RS256 ? EVP_sha256() : NULL; /* Ed25519 hashes itself */
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, md, NULL, k->pkey) == 1 &&
              EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* Signs msg with the key into sig (SIG_MAX bytes). */
static bool signature_make(const jwt_key *k, const char *msg, size_t len, unsigned char *sig, size_t *siglen)
{
    if (k->alg == CHAT_JWT_HS256) {
        unsigned maclen = 0;
        bool ok = HMAC(EVP_sha256(), k->secret, (int)k->secret_len, (const unsigned char *)msg, len, sig, &maclen);
        *siglen = maclen;
        return ok;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const EVP_MD *md = k->alg == CHAT_JWT_RS256 ? EVP_sha256() : NULL;
    *siglen = SIG_MAX;
    bool ok = ctx && EVP_DigestSignInit(ctx, NULL, md, NULL, k->pkey) == 1 &&
              EVP_DigestSign(ctx, sig, siglen, (const unsigned char *)msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* A time claim: absent (*present false) is fine; anything but an integer from 0 to 2^40 (year
 * 36812; no arithmetic on it can overflow) is not. */
static bool int_claim(json_t *claims, const char *name, int64_t *out, bool *present)
{
    json_t *v = json_object_get(claims, name);
    *present = v != NULL;
    if (v == NULL)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1LL << 40))
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

/* RFC 7519 4.1.3: aud is one string or an array of strings; ours must be among them. */
static bool audience_has(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    size_t i;
    json_t *v;
    json_array_foreach(aud, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
            return true;
    }
    return false;
}

/* The time claims: exp required; nbf, iat integers when present; the lifetime bounded. */
static const char *times_check(const chat_jwt_policy *p, json_t *claims, int64_t now_s, chat_jwt_claims *c)
{
    bool has_exp, has_nbf, has_iat;
    int64_t nbf = 0;
    if (!int_claim(claims, "exp", &c->exp, &has_exp) || !has_exp)
        return "exp missing or not an integer time";
    if (!int_claim(claims, "nbf", &nbf, &has_nbf) || !int_claim(claims, "iat", &c->iat, &has_iat))
        return "nbf or iat not an integer time";
    if (now_s > c->exp + CHAT_JWT_LEEWAY_S)
        return "expired";
    if (has_nbf && now_s + CHAT_JWT_LEEWAY_S < nbf)
        return "not yet valid";
    /* a stolen token is good until exp: the maximum lifetime bounds that, from now (with the
     * leeway, for the signer's clock) and from iat (which the signer's clock wrote) */
    if (c->exp - now_s > p->max_ttl_s + CHAT_JWT_LEEWAY_S || (has_iat && c->exp - c->iat > p->max_ttl_s))
        return "lifetime over the maximum (CHAT_JWT_MAX_TTL)";
    if (!has_iat)
        c->iat = 0;
    return NULL;
}

/* Every claim the policy asks for, into c. NULL when all hold, else the reason. */
static const char *claims_check(const chat_jwt_policy *p, json_t *claims, int64_t now_s, chat_jwt_claims *c)
{
    const char *why = times_check(p, claims, now_s, c);
    if (why)
        return why;
    json_t *iss = json_object_get(claims, "iss");
    if (p->issuer[0] && (!json_is_string(iss) || strcmp(json_string_value(iss), p->issuer) != 0))
        return "wrong or missing issuer (iss)";
    json_t *aud = json_object_get(claims, "aud");
    if (p->audience[0] && (aud == NULL || !audience_has(aud, p->audience)))
        return "wrong or missing audience (aud)";
    json_t *sub = json_object_get(claims, "sub");
    if (!json_is_string(sub) || !chat_id_valid(json_string_value(sub)))
        return "sub missing or not a valid user id";
    snprintf(c->user, sizeof c->user, "%s", json_string_value(sub));
    json_t *jti = json_object_get(claims, "jti");
    if (jti && (!json_is_string(jti) || strlen(json_string_value(jti)) > CHAT_JWT_JTI_MAX))
        return "jti not a string of at most 128 characters";
    snprintf(c->jti, sizeof c->jti, "%s", jti ? json_string_value(jti) : "");
    return NULL;
}

/* The header: the key it names, and its alg must be that key's. */
static const char *header_check(const chat_jwt_policy *p, json_t *header, const jwt_key **key)
{
    json_t *alg = json_object_get(header, "alg"), *kid = json_object_get(header, "kid");
    if (kid && !json_is_string(kid))
        return "kid not a string";
    /* RFC 7515 4.1.11: a critical extension we do not implement makes the token invalid */
    if (json_object_get(header, "crit"))
        return "unsupported critical header";
    *key = chat_jwt_key_for(p, kid ? json_string_value(kid) : NULL);
    if (*key == NULL)
        return kid ? "unknown key id (kid)" : "kid missing";
    /* exact name: "hs256" or "none" never pass, nor an alg other than the key's (an HS256 token
     * checked with a public key's PEM as the HMAC secret) */
    if (!json_is_string(alg) || strcmp(json_string_value(alg), chat_jwt_alg_name((*key)->alg)) != 0)
        return "algorithm is not the key's";
    return NULL;
}

/* Splits header.payload.signature; false unless exactly three parts. */
static bool split3(const char *token, size_t len, size_t dot[2])
{
    const char *a = memchr(token, '.', len);
    const char *b = a ? memchr(a + 1, '.', len - (size_t)(a + 1 - token)) : NULL;
    if (a == NULL || b == NULL || memchr(b + 1, '.', len - (size_t)(b + 1 - token)) != NULL)
        return false;
    dot[0] = (size_t)(a - token);
    dot[1] = (size_t)(b - token);
    return true;
}

static const char *verify_token(const chat_jwt_policy *p, const char *token, int64_t now_s, chat_jwt_claims *c)
{
    size_t len = token ? strlen(token) : 0, dot[2];
    if (len == 0)
        return "missing token";
    if (len > CHAT_JWT_MAX_LEN)
        return "token too long";
    if (!split3(token, len, dot))
        return "malformed token";
    json_t *header = json_part(token, dot[0]);
    if (header == NULL)
        return "malformed token";
    const jwt_key *key = NULL;
    const char *why = header_check(p, header, &key);
    json_decref(header);
    if (why)
        return why;
    unsigned char sig[CHAT_JWT_MAX_LEN];
    size_t siglen = 0;
    if (!b64url_decode(token + dot[1] + 1, len - dot[1] - 1, sig, &siglen) ||
        !signature_valid(key, token, dot[1], sig, siglen))
        return "bad signature";
    json_t *claims = json_part(token + dot[0] + 1, dot[1] - dot[0] - 1);
    if (claims == NULL)
        return "malformed claims";
    why = claims_check(p, claims, now_s, c);
    json_decref(claims);
    snprintf(c->kid, sizeof c->kid, "%s", key->kid);
    return why;
}

chat_status chat_jwt_verify(const chat_jwt_policy *p, const char *token, int64_t now_s, chat_jwt_claims *out,
                            const char **why)
{
    chat_jwt_claims c;
    memset(&c, 0, sizeof c);
    const char *reason = verify_token(p, token, now_s, &c);
    if (reason) {
        if (why)
            *why = reason;
        return CHAT_ERR_DENIED;
    }
    if (out)
        *out = c;
    return CHAT_OK;
}

/* header.payload.signature of the two JSON objects, signed with k. */
static chat_status token_make(const jwt_key *k, json_t *header, json_t *claims, char **out)
{
    char *h = json_dumps(header, JSON_COMPACT), *c = json_dumps(claims, JSON_COMPACT);
    size_t hl = strlen(h), cl = strlen(c);
    char *token = chat_xmalloc(4 * (hl + cl + SIG_MAX) / 3 + 16);
    size_t n = b64url_encode((const unsigned char *)h, hl, token);
    token[n++] = '.';
    n += b64url_encode((const unsigned char *)c, cl, token + n);
    free(h);
    free(c);
    unsigned char sig[SIG_MAX];
    size_t siglen = 0;
    if (!signature_make(k, token, n, sig, &siglen)) {
        free(token);
        return CHAT_ERR_INTERNAL;
    }
    token[n++] = '.';
    b64url_encode(sig, siglen, token + n);
    *out = token;
    return CHAT_OK;
}

static chat_status issue_with(const jwt_key *k, const char *iss, const char *aud, const char *user, int64_t now_s,
                              int64_t ttl_s, char **out)
{
    if (!chat_id_valid(user))
        return CHAT_ERR_INVALID;
    json_t *header = json_pack("{s:s, s:s}", "alg", chat_jwt_alg_name(k->alg), "typ", "JWT");
    if (k->kid[0])
        json_object_set_new(header, "kid", json_string(k->kid));
    /* a random jti: one token can be revoked without its user's others (chatctl revoke token) */
    unsigned char r[16];
    char jti[32];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        return CHAT_ERR_INTERNAL;
    b64url_encode(r, sizeof r, jti);
    json_t *claims = json_pack("{s:s, s:I, s:I, s:s}", "sub", user, "iat", (json_int_t)now_s, "exp",
                               (json_int_t)(now_s + ttl_s), "jti", jti);
    if (iss[0])
        json_object_set_new(claims, "iss", json_string(iss));
    if (aud[0])
        json_object_set_new(claims, "aud", json_string(aud));
    chat_status st = token_make(k, header, claims, out);
    json_decref(header);
    json_decref(claims);
    return st;
}

chat_status chat_jwt_issue(const chat_jwt_policy *p, const char *user, int64_t now_s, int64_t ttl_s, char **out)
{
    if (ttl_s < 1 || ttl_s > p->max_ttl_s)
        return CHAT_ERR_INVALID;
    if (p->signing == NULL)
        return CHAT_ERR_DENIED;
    return issue_with(p->signing, p->issuer, p->audience, user, now_s, ttl_s, out);
}

chat_status chat_jwt_sign(const char *user, const char *secret, int64_t now_s, int64_t ttl_s, char **out)
{
    jwt_key k = {.kid = "", .alg = CHAT_JWT_HS256, .secret = (unsigned char *)secret, .secret_len = strlen(secret)};
    return issue_with(&k, "", "", user, now_s, ttl_s, out);
}

chat_status chat_jwt_peek(const char *token, chat_jwt_claims *out)
{
    size_t len = token ? strlen(token) : 0, dot[2];
    if (len == 0 || len > CHAT_JWT_MAX_LEN || !split3(token, len, dot))
        return CHAT_ERR_INVALID;
    json_t *claims = json_part(token + dot[0] + 1, dot[1] - dot[0] - 1);
    if (claims == NULL)
        return CHAT_ERR_INVALID;
    chat_jwt_claims c;
    memset(&c, 0, sizeof c);
    json_t *sub = json_object_get(claims, "sub"), *jti = json_object_get(claims, "jti");
    bool has_exp, has_iat;
    bool ok = json_is_string(sub) && chat_id_valid(json_string_value(sub)) && int_claim(claims, "exp", &c.exp, &has_exp) &&
              has_exp && int_claim(claims, "iat", &c.iat, &has_iat) &&
              (jti == NULL || (json_is_string(jti) && strlen(json_string_value(jti)) <= CHAT_JWT_JTI_MAX));
    if (ok) {
        snprintf(c.user, sizeof c.user, "%s", json_string_value(sub));
        snprintf(c.jti, sizeof c.jti, "%s", jti ? json_string_value(jti) : "");
        *out = c;
    }
    json_decref(claims);
    return ok ? CHAT_OK : CHAT_ERR_INVALID;
}
