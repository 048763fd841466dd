/* Private to chat_jwt.c and chat_jwt_keys.c: the policy's layout and key lookup. */
#ifndef CHAT_JWTP_H
#define CHAT_JWTP_H
#include <openssl/evp.h>

#include "chat_jwt.h"

/* One key: the HS256 secret (kid ""), or a line of the key file. */
typedef struct jwt_key {
    char kid[CHAT_JWT_KID_MAX + 1]; /* "" = CHAT_JWT_SECRET: tokens without kid */
    chat_jwt_alg alg;
    unsigned char *secret;          /* HS256: the secret's bytes */
    size_t secret_len;
    EVP_PKEY *pkey;                 /* EdDSA (Ed25519) or RS256 (RSA, 2048 bits or more) */
    bool can_sign;                  /* HS256, or a private key */
} jwt_key;

struct chat_jwt_policy {
    jwt_key *keys; /* the secret's first when set */
    size_t nkeys;
    bool key_file; /* a key file is set: a token's kid chooses the key */
    char *issuer, *audience; /* "" = not checked */
    int64_t max_ttl_s;
    const jwt_key *signing; /* NULL = cannot sign */
};

/* The key that verifies a token whose header names kid (NULL = no kid), or NULL. */
const jwt_key *chat_jwt_key_for(const chat_jwt_policy *p, const char *kid);
/* "HS256", "EdDSA", "RS256". */
const char *chat_jwt_alg_name(chat_jwt_alg alg);

#endif
