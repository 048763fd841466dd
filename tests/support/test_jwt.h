/* Hand-made JWTs for the token tests (header.payload.signature), so a test does not trust the code
 * under test to make the tokens it refuses. Any thread. */
#ifndef TEST_JWT_H
#define TEST_JWT_H

#include <stddef.h>

/* base64url of in[0..len) without padding into out (room for 4 * (len + 2) / 3 + 1 bytes,
 * NUL-terminated). Returns the characters written. */
size_t test_jwt_b64url(const unsigned char *in, size_t len, char *out);

/* Builds base64url(header).base64url(payload).signature from the JSON texts given. sig_alg
 * "HS256" or "HS512" signs with key (HMAC-SHA256 / -SHA512); NULL leaves the signature empty.
 * The caller frees the result. */
char *test_jwt_forge(const char *header, const char *payload, const char *key, const char *sig_alg);

#endif
