/* Object storage for the cold tier, addressed by full URL: file:///absolute/path (the embedded
 * default) and s3://bucket/key (path-style requests to CHAT_S3_ENDPOINT, signed with AWS
 * Signature V4 by libcurl's CURLOPT_AWS_SIGV4). Whole-object PUT, range GET, DELETE; transient
 * failures (connection errors, timeouts, HTTP 5xx, 429) are retried with backoff. Any thread:
 * a store keeps a small pool of curl handles under a mutex. */
#ifndef WK_OBJSTORE_H
#define WK_OBJSTORE_H
#include <stddef.h>
#include <stdint.h>

#include "chat_buf.h"
#include "chat_config.h"
#include "chat_status.h"

#define WK_OBJSTORE_ATTEMPTS 4 /* tries per request (1 + 3 retries) */
#define WK_OBJSTORE_CONNECT_TIMEOUT_MS 5000
#define WK_OBJSTORE_TIMEOUT_MS 30000 /* per try, plus 1 s per MB of the body */
#define WK_OBJSTORE_URL_MAX 2048

typedef struct wk_objstore wk_objstore;

/* A store with cfg's S3 settings (endpoint, region, access and secret key; the endpoint defaults
 * to https://s3.<region>.amazonaws.com). Calls curl_global_init: create it on the main thread
 * before other threads use libcurl. cfg is copied. *out set only on CHAT_OK. */
chat_status wk_objstore_create(const chat_cfg *cfg, wk_objstore **out);
/* NULL-safe. No request may be in flight. */
void wk_objstore_destroy(wk_objstore *os);

/* Writes data as the whole object at url (replacing it). file:// writes a temporary file,
 * fsyncs and renames it into place, so a reader sees the old object or the whole new one. On
 * failure err holds one line (the URL, the HTTP status or the system error). */
chat_status wk_objstore_put(wk_objstore *os, const char *url, const void *data, size_t len, char *err, size_t errsz);

/* Reads length bytes from offset into out (replacing its content); length 0 reads to the end.
 * CHAT_ERR_NOT_FOUND when the object does not exist; CHAT_ERR_IO when fewer bytes came back. */
chat_status wk_objstore_get(wk_objstore *os, const char *url, uint64_t offset, uint64_t length, chat_buf *out,
                            char *err, size_t errsz);

/* Deletes the object; one that does not exist counts as deleted. */
chat_status wk_objstore_delete(wk_objstore *os, const char *url, char *err, size_t errsz);

/* ---- pure helpers, exposed for tests; any thread ---- */

/* SHA-256 of data as 64 lowercase hex digits and a NUL. */
void wk_objstore_sha256_hex(const void *data, size_t len, char out[65]);

/* base + "/" + key without a doubled slash; false when it does not fit or base is not a
 * file:/// or s3:// URL. */
bool wk_objstore_join(const char *base, const char *key, char *out, size_t outsz);
/* The HTTP URL of an s3://bucket/key object for path-style requests to endpoint (no trailing
 * slash needed); key characters outside [A-Za-z0-9-._~/] are percent-encoded. */
bool wk_objstore_s3_http_url(const char *endpoint, const char *s3url, char *out, size_t outsz);

#endif
