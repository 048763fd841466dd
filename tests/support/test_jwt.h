/* Hand-made JWTs for the token tests (header.payload.signature), so a test does not trust the code
 * under test to make the tokens it refuses. Any thread. */
#ifndef TEST_JWT_H
#define TEST_JWT_H

/* Builds base64url(header).base64url(payload).signature from the JSON texts given. sig_alg
 * "HS256" or "HS512" signs with key (HMAC-SHA256 / -SHA512); NULL leaves the signature empty.
 * The caller frees the result. */
char *test_jwt_forge(const char *header, const char *payload, const char *key, const char *sig_alg);

#endif
