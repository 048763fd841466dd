/* Object storage by URL: file:// with POSIX calls, s3:// with libcurl (SigV4, path-style).
 * Any thread; the curl handle pool is guarded by the store's mutex, a handle is used by one
 * request at a time. */
#include "wk_objstore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "chat_log.h"
#include "chat_time.h"

#define POOL_MAX 8
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct wk_objstore {
    char endpoint[512];
    char region[64];
    char access_key[256];
    char secret_key[256];
    char sigv4[128]; /* aws:amz:<region>:s3 */
    pthread_mutex_t lock;
    CURL *pool[POOL_MAX];
    int npool;
};

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static chat_status failf(char *err, size_t errsz, chat_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static chat_status failf(char *err, size_t errsz, chat_status st, const char *fmt, ...)
{
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
        chat_log_clean(err);
    }
    return st;
}

void wk_objstore_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", i < mdlen ? md[i] : 0);
    out[64] = '\0';
}

bool wk_objstore_join(const char *base, const char *key, char *out, size_t outsz)
{
    if (strncmp(base, "file:///", 8) != 0 && strncmp(base, "s3://", 5) != 0)
        return false;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    while (*key == '/')
        key++;
    int n = snprintf(out, outsz, "%.*s/%s", (int)blen, base, key);
    return n > 0 && (size_t)n < outsz;
}

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

bool wk_objstore_s3_http_url(const char *endpoint, const char *s3url, char *out, size_t outsz)
{
    if (strncmp(s3url, "s3://", 5) != 0 || s3url[5] == '\0' || s3url[5] == '/')
        return false;
    size_t elen = strlen(endpoint);
    while (elen > 0 && endpoint[elen - 1] == '/')
        elen--;
    chat_buf b = {0};
    chat_buf_append(&b, endpoint, elen);
    chat_buf_putc(&b, '/');
    for (const unsigned char *p = (const unsigned char *)s3url + 5; *p; p++) {
        if (unreserved(*p) || *p == '/')
            chat_buf_putc(&b, (char)*p);
        else
            chat_buf_printf(&b, "%%%02X", *p);
    }
    bool ok = b.len < outsz;
    if (ok)
        memcpy(out, b.data, b.len + 1);
    chat_buf_free(&b);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* file://                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static const char *file_path(const char *url)
{
    return url + 7; /* "file://" then "/abs/path" */
}

/* mkdir -p of the directory part of path. */
static int make_parents(const char *path)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return ENAMETOOLONG;
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            return errno;
        *p = '/';
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return errno;
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return 0;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    return rc;
}

static chat_status file_put(const char *url, const void *data, size_t len, char *err, size_t errsz)
{
    const char *path = file_path(url);
    int e = make_parents(path);
    if (e)
        return failf(err, errsz, CHAT_ERR_IO, "%s: cannot create its directory: %s", url, strerror(e));
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d.%lld", path, (int)getpid(), (long long)(chat_mono_ns() % 1000000000)) >=
        (int)sizeof tmp)
        return failf(err, errsz, CHAT_ERR_INVALID, "%s: path too long", url);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return failf(err, errsz, CHAT_ERR_IO, "%s: open: %s", url, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            e = errno ? errno : EIO;
            close(fd);
            unlink(tmp);
            return failf(err, errsz, CHAT_ERR_IO, "%s: write: %s", url, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) {
        e = errno;
        close(fd);
        unlink(tmp);
        return failf(err, errsz, CHAT_ERR_IO, "%s: fsync: %s", url, strerror(e));
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return failf(err, errsz, CHAT_ERR_IO, "%s: rename: %s", url, strerror(e));
    }
    if ((e = fsync_dir_of(path)) != 0)
        return failf(err, errsz, CHAT_ERR_IO, "%s: fsync of the directory: %s", url, strerror(e));
    return CHAT_OK;
}

static chat_status file_get(const char *url, uint64_t offset, uint64_t length, chat_buf *out, char *err, size_t errsz)
{
    const char *path = file_path(url);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return failf(err, errsz, errno == ENOENT ? CHAT_ERR_NOT_FOUND : CHAT_ERR_IO, "%s: open: %s", url,
                     strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return failf(err, errsz, CHAT_ERR_IO, "%s: stat: %s", url, strerror(e));
    }
    uint64_t size = (uint64_t)st.st_size;
    if (offset > size || (length > 0 && offset + length > size)) {
        close(fd);
        return failf(err, errsz, CHAT_ERR_IO, "%s: bytes %" PRIu64 "+%" PRIu64 " are past its end (%" PRIu64 ")", url,
                     offset, length, size);
    }
    uint64_t want = length > 0 ? length : size - offset;
    chat_buf_reset(out);
    chat_buf_reserve(out, (size_t)want);
    uint64_t got = 0;
    while (got < want) {
        ssize_t r = pread(fd, out->data + got, (size_t)(want - got), (off_t)(offset + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            close(fd);
            return failf(err, errsz, CHAT_ERR_IO, "%s: read: %s", url, strerror(e));
        }
        got += (uint64_t)r;
    }
    close(fd);
    out->len = (size_t)want;
    out->data[out->len] = '\0';
    return CHAT_OK;
}

static chat_status file_delete(const char *url, char *err, size_t errsz)
{
    const char *path = file_path(url);
    if (unlink(path) != 0 && errno != ENOENT)
        return failf(err, errsz, CHAT_ERR_IO, "%s: unlink: %s", url, strerror(errno));
    /* tidy: the partition's directory goes once its last object is gone (fails while not empty) */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        (void)rmdir(dir);
    }
    return CHAT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* s3://                                                                                        */
/* ------------------------------------------------------------------------------------------ */

static CURL *take_handle(wk_objstore *os)
{
    CURL *h = NULL;
    pthread_mutex_lock(&os->lock);
    if (os->npool > 0)
        h = os->pool[--os->npool];
    pthread_mutex_unlock(&os->lock);
    if (h == NULL)
        h = curl_easy_init();
    else
        curl_easy_reset(h); /* keeps its connection cache */
    return h;
}

static void give_handle(wk_objstore *os, CURL *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&os->lock);
    if (os->npool < POOL_MAX) {
        os->pool[os->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&os->lock);
    curl_easy_cleanup(h);
}

typedef struct sink {
    chat_buf *body;
    size_t max; /* stop reading past this (an error body or an unexpected size) */
} sink;

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    sink *s = arg;
    size_t len = size * n;
    if (s->body->len + len > s->max)
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    chat_buf_append(s->body, data, len);
    return len;
}

/* One S3 request with retries. method "PUT" (data, len), "GET" (range when length > 0; the body
 * into out) or "DELETE". Returns the final HTTP status in *http (0: no answer). */
static chat_status s3_request(wk_objstore *os, const char *method, const char *url, const void *data, size_t len,
                              uint64_t offset, uint64_t length, chat_buf *out, long *http, char *err, size_t errsz)
{
    char target[WK_OBJSTORE_URL_MAX + 600];
    if (!wk_objstore_s3_http_url(os->endpoint, url, target, sizeof target))
        return failf(err, errsz, CHAT_ERR_INVALID, "%s: not an s3://bucket/key URL", url);
    bool put = strcmp(method, "PUT") == 0, get = strcmp(method, "GET") == 0;
    char sha[65] = EMPTY_SHA256;
    if (put)
        wk_objstore_sha256_hex(data, len, sha);
    chat_buf body = {0};
    chat_buf_reset(&body);
    chat_status st = CHAT_ERR_UNAVAILABLE;
    *http = 0;
    int64_t backoff_ms = 200;
    for (int attempt = 1; attempt <= WK_OBJSTORE_ATTEMPTS; attempt++) {
        CURL *h = take_handle(os);
        if (h == NULL) {
            st = failf(err, errsz, CHAT_ERR_NOMEM, "%s: curl_easy_init failed", url);
            break;
        }
        struct curl_slist *hdr = NULL;
        char line[256];
        snprintf(line, sizeof line, "x-amz-content-sha256: %s", sha);
        hdr = curl_slist_append(hdr, line);
        if (put) /* no "Expect:" override: libcurl would sign the header it then leaves out */
            hdr = curl_slist_append(hdr, "Content-Type: application/octet-stream");
        if (get && length > 0) {
            snprintf(line, sizeof line, "Range: bytes=%" PRIu64 "-%" PRIu64, offset, offset + length - 1);
            hdr = curl_slist_append(hdr, line);
        } else if (get && offset > 0) {
            snprintf(line, sizeof line, "Range: bytes=%" PRIu64 "-", offset);
            hdr = curl_slist_append(hdr, line);
        }
        chat_buf_reset(&body);
        sink s = {.body = &body, .max = get ? (length > 0 ? (size_t)length : (size_t)1 << 31) + 65536 : 65536};
        curl_easy_setopt(h, CURLOPT_URL, target);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_AWS_SIGV4, os->sigv4);
        curl_easy_setopt(h, CURLOPT_USERNAME, os->access_key);
        curl_easy_setopt(h, CURLOPT_PASSWORD, os->secret_key);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)WK_OBJSTORE_CONNECT_TIMEOUT_MS);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(WK_OBJSTORE_TIMEOUT_MS + (put ? len : (size_t)length) / 1000));
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
        if (put) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, data ? data : "");
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        }
        CURLcode rc = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_slist_free_all(hdr);
        give_handle(os, h);
        *http = code;
        bool retry = false;
        if (rc != CURLE_OK) {
            st = failf(err, errsz, CHAT_ERR_UNAVAILABLE, "%s %s: %s (try %d of %d)", method, url,
                       curl_easy_strerror(rc), attempt, WK_OBJSTORE_ATTEMPTS);
            retry = true;
        } else if ((put && code == 200) || (get && (code == 200 || code == 206)) ||
                   (!put && !get && (code == 200 || code == 204 || code == 404))) {
            st = CHAT_OK;
        } else {
            const char *c0 = body.data ? strstr(body.data, "<Code>") : NULL;
            const char *c1 = c0 ? strstr(c0, "</Code>") : NULL;
            int clen = c0 && c1 ? (int)(c1 - c0 - 6) : 0;
            chat_status kind = code == 404                                 ? CHAT_ERR_NOT_FOUND
                               : code == 403 || code == 401                ? CHAT_ERR_DENIED
                               : code >= 500 || code == 429 || code == 408 ? CHAT_ERR_UNAVAILABLE
                                                                           : CHAT_ERR_IO;
            st = failf(err, errsz, kind, "%s %s: HTTP %ld %.*s (try %d of %d)", method, url, code, clen,
                       c0 ? c0 + 6 : "", attempt, WK_OBJSTORE_ATTEMPTS);
            retry = kind == CHAT_ERR_UNAVAILABLE;
        }
        if (!retry || attempt == WK_OBJSTORE_ATTEMPTS)
            break;
        LOG_DEBUG("objstore", "event=retry method=%s url=%s attempt=%d", method, url, attempt);
        chat_sleep_ms(backoff_ms);
        backoff_ms *= 4;
    }
    if (st == CHAT_OK && get) {
        /* 206: exactly the range; 200: the whole object (a server that ignores Range), cut here */
        size_t skip = *http == 200 ? (size_t)offset : 0;
        if (body.len < skip || (length > 0 && body.len - skip < length)) {
            st = failf(err, errsz, CHAT_ERR_IO, "GET %s: %zu bytes (HTTP %ld), wanted %" PRIu64 "+%" PRIu64, url,
                       body.len, *http, offset, length);
        } else {
            size_t take = length > 0 ? (size_t)length : body.len - skip;
            chat_buf_reset(out);
            chat_buf_append(out, body.data + skip, take);
        }
    }
    chat_buf_free(&body);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* API                                                                                          */
/* ------------------------------------------------------------------------------------------ */

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

chat_status wk_objstore_create(const chat_cfg *cfg, wk_objstore **out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, curl_init_once);
    wk_objstore *os = calloc(1, sizeof *os);
    if (os == NULL)
        return CHAT_ERR_NOMEM;
    snprintf(os->region, sizeof os->region, "%s", cfg->s3_region[0] ? cfg->s3_region : "us-east-1");
    if (cfg->s3_endpoint[0])
        snprintf(os->endpoint, sizeof os->endpoint, "%s", cfg->s3_endpoint);
    else
        snprintf(os->endpoint, sizeof os->endpoint, "https://s3.%s.amazonaws.com", os->region);
    snprintf(os->access_key, sizeof os->access_key, "%s", cfg->s3_access_key);
    snprintf(os->secret_key, sizeof os->secret_key, "%s", cfg->s3_secret_key);
    snprintf(os->sigv4, sizeof os->sigv4, "aws:amz:%s:s3", os->region);
    pthread_mutex_init(&os->lock, NULL);
    *out = os;
    return CHAT_OK;
}

void wk_objstore_destroy(wk_objstore *os)
{
    if (os == NULL)
        return;
    for (int i = 0; i < os->npool; i++)
        curl_easy_cleanup(os->pool[i]);
    pthread_mutex_destroy(&os->lock);
    free(os);
}

static bool is_file(const char *url)
{
    return strncmp(url, "file:///", 8) == 0;
}

static bool is_s3(const char *url)
{
    return strncmp(url, "s3://", 5) == 0;
}

chat_status wk_objstore_put(wk_objstore *os, const char *url, const void *data, size_t len, char *err, size_t errsz)
{
    if (is_file(url))
        return file_put(url, data, len, err, errsz);
    if (!is_s3(url))
        return failf(err, errsz, CHAT_ERR_INVALID, "%s: not a file:/// or s3:// URL", url);
    long http;
    return s3_request(os, "PUT", url, data, len, 0, 0, NULL, &http, err, errsz);
}

chat_status wk_objstore_get(wk_objstore *os, const char *url, uint64_t offset, uint64_t length, chat_buf *out,
                            char *err, size_t errsz)
{
    if (is_file(url))
        return file_get(url, offset, length, out, err, errsz);
    if (!is_s3(url))
        return failf(err, errsz, CHAT_ERR_INVALID, "%s: not a file:/// or s3:// URL", url);
    long http;
    return s3_request(os, "GET", url, NULL, 0, offset, length, out, &http, err, errsz);
}

chat_status wk_objstore_delete(wk_objstore *os, const char *url, char *err, size_t errsz)
{
    if (is_file(url))
        return file_delete(url, err, errsz);
    if (!is_s3(url))
        return failf(err, errsz, CHAT_ERR_INVALID, "%s: not a file:/// or s3:// URL", url);
    long http;
    return s3_request(os, "DELETE", url, NULL, 0, 0, 0, NULL, &http, err, errsz);
}
