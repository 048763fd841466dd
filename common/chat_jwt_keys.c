/* The token policy: the HS256 secret, the key file (`kid alg key` lines) and its PEM files, the
 * claim rules. Built once at start on the main thread (every error one line naming the setting),
 * then read-only. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "chat_jwtp.h"
#include "chat_mem.h"

/* A key file is read by hand and by every gateway at start; more keys than this is a mistake. */
#define KEYS_MAX 32
#define RSA_BITS_MIN 2048
/* The example deploy/env.example ships, which a deployment must replace. */
#define EXAMPLE_SECRET "changeme-changeme-changeme-changeme-0000"

const char *chat_jwt_alg_name(chat_jwt_alg alg)
{
    return alg == CHAT_JWT_HS256 ? "HS256" : alg == CHAT_JWT_EDDSA ? "EdDSA" : "RS256";
}

static bool alg_parse(const char *name, chat_jwt_alg *out)
{
    static const chat_jwt_alg algs[] = {CHAT_JWT_HS256, CHAT_JWT_EDDSA, CHAT_JWT_RS256};
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++)
        if (strcmp(name, chat_jwt_alg_name(algs[i])) == 0) {
            *out = algs[i];
            return true;
        }
    return false;
}

/* The example value, anything built on "changeme", or too few distinct characters to be random
 * (32 random hex digits have 14 or more in all but about 1 in 10^6 draws; 16 distinct is the least
 * for a 32-character secret made by `od -tx1` in practice). */
bool chat_jwt_secret_weak(const char *secret)
{
    if (strcmp(secret, EXAMPLE_SECRET) == 0 || strcasestr(secret, "changeme") != NULL)
        return true;
    bool seen[256] = {false};
    int distinct = 0;
    for (const unsigned char *c = (const unsigned char *)secret; *c; c++)
        if (!seen[*c]) {
            seen[*c] = true;
            distinct++;
        }
    return distinct < 10;
}

static bool kid_valid(const char *kid)
{
    size_t n = strlen(kid);
    if (n == 0 || n > CHAT_JWT_KID_MAX)
        return false;
    for (const char *c = kid; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_' && *c != '.')
            return false;
    return true;
}

static chat_status secret_check(const char *setting, const char *where, const char *secret, char *err, size_t errsz)
{
    if (strlen(secret) < CHAT_JWT_SECRET_MIN) {
        snprintf(err, errsz, "%s: %smust be at least %d characters", setting, where, CHAT_JWT_SECRET_MIN);
        return CHAT_ERR_INVALID;
    }
    if (chat_jwt_secret_weak(secret)) {
        snprintf(err, errsz,
                 "%s: %sis the documented example or a guessable value; use 32+ random characters "
                 "(od -An -tx1 -N32 /dev/urandom | tr -d ' \\n')",
                 setting, where);
        return CHAT_ERR_INVALID;
    }
    return CHAT_OK;
}

static void key_set_secret(jwt_key *k, const char *kid, const char *secret)
{
    snprintf(k->kid, sizeof k->kid, "%s", kid);
    k->alg = CHAT_JWT_HS256;
    k->secret_len = strlen(secret);
    k->secret = (unsigned char *)strdup(secret);
    k->can_sign = true;
}

/* A PEM file's private key, else its public key; NULL when it holds neither. */
static EVP_PKEY *pem_load(const char *path, bool *is_private, int *open_errno)
{
    FILE *f = fopen(path, "r");
    *open_errno = f ? 0 : errno;
    if (f == NULL)
        return NULL;
    EVP_PKEY *pkey = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
    *is_private = pkey != NULL;
    if (pkey == NULL) {
        rewind(f);
        pkey = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    }
    fclose(f);
    ERR_clear_error();
    return pkey;
}

/* EdDSA and RS256: key is the path of a PEM file (relative paths from the key file's folder). */
static chat_status key_set_pem(jwt_key *k, const char *dir, const char *path, const char *where, char *err,
                               size_t errsz)
{
    char full[PATH_MAX];
    snprintf(full, sizeof full, "%s%s", path[0] == '/' ? "" : dir, path);
    bool is_private = false;
    int open_errno = 0;
    k->pkey = pem_load(full, &is_private, &open_errno);
    if (k->pkey == NULL) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: %scannot read a PEM public or private key from \"%s\"%s%s", where, full,
                 open_errno ? ": " : "", open_errno ? strerror(open_errno) : "");
        return CHAT_ERR_INVALID;
    }
    bool fits = k->alg == CHAT_JWT_EDDSA ? EVP_PKEY_is_a(k->pkey, "ED25519")
                                         : EVP_PKEY_is_a(k->pkey, "RSA") && EVP_PKEY_get_bits(k->pkey) >= RSA_BITS_MIN;
    if (!fits) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: %s\"%s\" is not %s", where, full,
                 k->alg == CHAT_JWT_EDDSA ? "an Ed25519 key" : "an RSA key of 2048 bits or more");
        return CHAT_ERR_INVALID;
    }
    k->can_sign = is_private;
    return CHAT_OK;
}

/* One `kid alg key` line into k. */
static chat_status key_line(chat_jwt_policy *p, jwt_key *k, char *line, const char *dir, const char *where,
                            char *err, size_t errsz)
{
    char *save = NULL, *kid = strtok_r(line, " \t", &save), *alg = strtok_r(NULL, " \t", &save),
         *key = strtok_r(NULL, " \t", &save);
    if (kid == NULL || alg == NULL || key == NULL || strtok_r(NULL, " \t", &save) != NULL) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: %smust be \"kid alg key\" (alg HS256, EdDSA or RS256)", where);
        return CHAT_ERR_INVALID;
    }
    if (!kid_valid(kid)) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: %skid must be 1-%d characters of [A-Za-z0-9._-]", where,
                 CHAT_JWT_KID_MAX);
        return CHAT_ERR_INVALID;
    }
    if (chat_jwt_key_for(p, kid) != NULL) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: %skid \"%s\" appears twice", where, kid);
        return CHAT_ERR_INVALID;
    }
    if (!alg_parse(alg, &k->alg)) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: %salg must be HS256, EdDSA or RS256 (got \"%s\")", where, alg);
        return CHAT_ERR_INVALID;
    }
    snprintf(k->kid, sizeof k->kid, "%s", kid);
    if (k->alg != CHAT_JWT_HS256)
        return key_set_pem(k, dir, key, where, err, errsz);
    chat_status st = secret_check("CHAT_JWT_KEYS", where, key, err, errsz);
    if (st == CHAT_OK)
        key_set_secret(k, kid, key);
    return st;
}

static chat_status key_file_load(chat_jwt_policy *p, const char *path, char *err, size_t errsz)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: cannot read \"%s\": %s", path, strerror(errno));
        return CHAT_ERR_INVALID;
    }
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path + 1) : 0, path);
    char line[1024], where[PATH_MAX + 32];
    size_t before = p->nkeys;
    chat_status st = CHAT_OK;
    for (int n = 1; st == CHAT_OK && fgets(line, sizeof line, f) != NULL; n++) {
        line[strcspn(line, "\r\n")] = '\0';
        char *text = line + strspn(line, " \t");
        if (text[0] == '\0' || text[0] == '#')
            continue;
        snprintf(where, sizeof where, "%s line %d: ", path, n);
        if (p->nkeys == KEYS_MAX) {
            snprintf(err, errsz, "CHAT_JWT_KEYS: %smore than %d keys", where, KEYS_MAX);
            st = CHAT_ERR_INVALID;
            break;
        }
        st = key_line(p, &p->keys[p->nkeys], text, dir, where, err, errsz);
        p->nkeys++; /* also a half-made key, so that destroy frees it */
    }
    fclose(f);
    if (st == CHAT_OK && p->nkeys == before) {
        snprintf(err, errsz, "CHAT_JWT_KEYS: \"%s\" holds no key", path);
        st = CHAT_ERR_INVALID;
    }
    return st;
}

static chat_status signing_key_choose(chat_jwt_policy *p, const char *kid, char *err, size_t errsz)
{
    p->signing = kid[0] ? chat_jwt_key_for(p, kid) : chat_jwt_key_for(p, NULL);
    if (kid[0] == '\0')
        return CHAT_OK; /* the secret when set; nothing to sign with otherwise (a verifying gateway) */
    if (p->signing == NULL || p->signing->kid[0] == '\0') {
        snprintf(err, errsz, "CHAT_JWT_SIGNING_KEY: no key \"%s\" in CHAT_JWT_KEYS", kid);
        p->signing = NULL;
        return CHAT_ERR_INVALID;
    }
    if (!p->signing->can_sign) {
        snprintf(err, errsz, "CHAT_JWT_SIGNING_KEY: key \"%s\" is a public key: signing needs its private key", kid);
        p->signing = NULL;
        return CHAT_ERR_INVALID;
    }
    return CHAT_OK;
}

chat_status chat_jwt_policy_create(const chat_jwt_settings *s, char *err, size_t errsz, chat_jwt_policy **out)
{
    /* OpenSSL's exit handler must not run (see nats_tls_valid in chat_config.c): this may be the
     * process's first use of OpenSSL. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
    chat_jwt_policy *p = chat_xcalloc(1, sizeof *p);
    p->keys = chat_xcalloc(KEYS_MAX + 1, sizeof *p->keys);
    p->issuer = chat_xstrdup(s->issuer ? s->issuer : "");
    p->audience = chat_xstrdup(s->audience ? s->audience : "");
    p->max_ttl_s = s->max_ttl_s;
    chat_status st = CHAT_OK;
    if (s->secret && s->secret[0]) {
        st = secret_check("CHAT_JWT_SECRET", "", s->secret, err, errsz);
        if (st == CHAT_OK)
            key_set_secret(&p->keys[p->nkeys++], "", s->secret);
    }
    p->key_file = s->keys_file && s->keys_file[0];
    if (st == CHAT_OK && p->key_file)
        st = key_file_load(p, s->keys_file, err, errsz);
    if (st == CHAT_OK && p->nkeys == 0) {
        snprintf(err, errsz, "CHAT_JWT_SECRET: not set, and no CHAT_JWT_KEYS: tokens could not be checked");
        st = CHAT_ERR_INVALID;
    }
    if (st == CHAT_OK)
        st = signing_key_choose(p, s->signing_kid ? s->signing_kid : "", err, errsz);
    if (st != CHAT_OK) {
        chat_jwt_policy_destroy(p);
        return st;
    }
    *out = p;
    return CHAT_OK;
}

void chat_jwt_policy_destroy(chat_jwt_policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nkeys; i++) {
        if (p->keys[i].secret)
            OPENSSL_cleanse(p->keys[i].secret, p->keys[i].secret_len);
        free(p->keys[i].secret);
        EVP_PKEY_free(p->keys[i].pkey);
    }
    free(p->keys);
    free(p->issuer);
    free(p->audience);
    free(p);
}

/* Without a key file the secret verifies every token, its kid ignored (as before key ids). With
 * one, a kid names its key, and a token without kid gets the secret when one is set. */
const jwt_key *chat_jwt_key_for(const chat_jwt_policy *p, const char *kid)
{
    if (kid == NULL || !p->key_file)
        return p->nkeys > 0 && p->keys[0].kid[0] == '\0' ? &p->keys[0] : NULL;
    for (size_t i = 0; i < p->nkeys; i++)
        if (p->keys[i].kid[0] && strcmp(p->keys[i].kid, kid) == 0)
            return &p->keys[i];
    return NULL;
}

int64_t chat_jwt_policy_max_ttl(const chat_jwt_policy *p)
{
    return p->max_ttl_s;
}

bool chat_jwt_policy_can_sign(const chat_jwt_policy *p)
{
    return p->signing != NULL;
}
