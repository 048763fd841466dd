/* The dependencies' settings of chat_config.c: the NATS URL list and its TLS files, the Redis URL,
 * and the helpers both files use. Runs once at start on the main thread. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "chat_config_deps.h"

chat_status chat_parse_listen(const char *text, chat_listen *out)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || (size_t)(colon - text) >= sizeof out->host)
        return CHAT_ERR_INVALID;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || port < 1 || port > 65535)
        return CHAT_ERR_INVALID;
    memcpy(out->host, text, (size_t)(colon - text));
    out->host[colon - text] = '\0';
    out->port = (int)port;
    return CHAT_OK;
}

chat_status chat_cfg_fail(char *err, size_t errsz, const char *env, const char *fmt, const char *val)
{
    char reason[512];
    /* a long value is cut, and says so (and an optimizing build sees the length checked) */
    if (snprintf(reason, sizeof reason, fmt, val ? val : "") >= (int)sizeof reason)
        memcpy(reason + sizeof reason - 4, "...", 4);
    for (char *p = reason; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = p[1] ? ' ' : '\0';
    snprintf(err, errsz, "%s: %s", env, reason);
    return CHAT_ERR_INVALID;
}

bool chat_cfg_parse_int(const char *text, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *text == '\0' || *end || v < min || v > max)
        return false;
    *out = (int)v;
    return true;
}

/* nats://host:port or tls://host:port, optionally user:pass@, comma separated. */
bool chat_cfg_nats_urls_valid(const char *list)
{
    if (*list == '\0')
        return false;
    char *copy = strdup(list), *save = NULL;
    bool ok = true;
    for (char *u = strtok_r(copy, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*u))
            u++;
        const char *rest = NULL;
        if (strncmp(u, "nats://", 7) == 0)
            rest = u + 7;
        else if (strncmp(u, "tls://", 6) == 0)
            rest = u + 6;
        const char *at = rest ? strrchr(rest, '@') : NULL;
        if (at)
            rest = at + 1;
        chat_listen l;
        if (rest == NULL || chat_parse_listen(rest, &l) != CHAT_OK)
            ok = false;
    }
    free(copy);
    return ok;
}

/* The scheme of every URL of a valid CHAT_NATS_URL list: "nats", "tls", or "mixed". */
static const char *nats_urls_scheme(const char *list)
{
    bool plain = false, tls = false;
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        if (strncmp(p, "tls://", 6) == 0)
            tls = true;
        else if (*p)
            plain = true;
        p += strcspn(p, ",");
    }
    return plain && tls ? "mixed" : tls ? "tls" : "nats";
}

/* OpenSSL's passphrase callback: none (no prompt on the terminal; an encrypted key is refused). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* The NATS TLS settings: tls:// URLs for them, and their PEM files parsed at start, so that a wrong
 * file stops the program with one line here rather than failing every connection later. */
chat_status chat_cfg_nats_tls_valid(const char *nats_url, const char *ca_file, const char *cert_file,
                                    const char *key_file, char *err, size_t errsz)
{
    bool any = ca_file[0] || cert_file[0] || key_file[0];
    const char *scheme = nats_urls_scheme(nats_url);
    if (strcmp(scheme, "mixed") == 0)
        return chat_cfg_fail(err, errsz, "CHAT_NATS_URL",
                             "mixes nats:// and tls:// URLs: use tls:// for every server%s", NULL);
    const char *first = ca_file[0] ? "CHAT_NATS_CA" : cert_file[0] ? "CHAT_NATS_CERT" : "CHAT_NATS_KEY";
    if (any && strcmp(scheme, "tls") != 0)
        return chat_cfg_fail(err, errsz, first, "needs tls:// URLs in CHAT_NATS_URL (they are nats://)%s", NULL);
    if ((cert_file[0] != '\0') != (key_file[0] != '\0'))
        return chat_cfg_fail(err, errsz, cert_file[0] ? "CHAT_NATS_KEY" : "CHAT_NATS_CERT",
                             "CHAT_NATS_CERT and CHAT_NATS_KEY go together%s", NULL);
    const struct {
        const char *env, *path;
    } files[] = {{"CHAT_NATS_CA", ca_file}, {"CHAT_NATS_CERT", cert_file}, {"CHAT_NATS_KEY", key_file}};
    /* This is the process's first use of OpenSSL. nats.c 3.4.1's exit handler frees OpenSSL's
     * compression-method stack, which OpenSSL's own exit handler frees again (a crash at exit)
     * when it runs second, as it would, registered here before nats.c's: so OpenSSL registers
     * none. (nats_Open here would order them, but start nats.c's threads before the program
     * blocks SIGTERM for its signal thread.) */
    if (ca_file[0] == '\0' && cert_file[0] == '\0')
        return CHAT_OK;
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    chat_status st = CHAT_OK;
    for (size_t i = 0; i < sizeof files / sizeof files[0] && st == CHAT_OK; i++) {
        if (files[i].path[0] == '\0')
            continue;
        FILE *f = fopen(files[i].path, "r");
        if (f == NULL) {
            char fmt[300];
            snprintf(fmt, sizeof fmt, "cannot read \"%%s\" (%s)", strerror(errno));
            st = chat_cfg_fail(err, errsz, files[i].env, fmt, files[i].path);
            break;
        }
        if (i == 0) { /* every certificate of the CA file must parse, and there must be one */
            STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read(f, NULL, no_passphrase, NULL);
            int certs = 0;
            for (int j = 0; infos && j < sk_X509_INFO_num(infos); j++)
                certs += sk_X509_INFO_value(infos, j)->x509 != NULL;
            if (certs == 0)
                st = chat_cfg_fail(err, errsz, files[i].env, "\"%s\" holds no PEM certificate", files[i].path);
            sk_X509_INFO_pop_free(infos, X509_INFO_free);
        } else if (i == 1) {
            cert = PEM_read_X509(f, NULL, no_passphrase, NULL);
            if (cert == NULL)
                st = chat_cfg_fail(err, errsz, files[i].env, "\"%s\" holds no PEM certificate", files[i].path);
        } else {
            key = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
            if (key == NULL)
                st = chat_cfg_fail(err, errsz, files[i].env,
                                   "\"%s\" holds no PEM private key (or it is encrypted: give it without a passphrase)",
                                   files[i].path);
            else if (cert && X509_check_private_key(cert, key) != 1)
                st = chat_cfg_fail(err, errsz, files[i].env,
                                   "\"%s\" is not the key of the certificate in CHAT_NATS_CERT", files[i].path);
        }
        fclose(f);
    }
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error(); /* nats.c reads this thread's OpenSSL error queue later */
    return st;
}

/* Copies len bytes of text into a field of size bytes; false when it does not fit. */
static bool copy_part(char *dst, size_t size, const char *text, size_t len)
{
    if (len >= size)
        return false;
    memcpy(dst, text, len);
    dst[len] = '\0';
    return true;
}

/* redis://[[user]:password@]host:port[/db]: a user (a Redis ACL user, deploy/redis/users.sh) ends
 * at the first ':' of the part before the last '@'; without a ':' that part is the password. */
bool chat_cfg_parse_redis(const char *url, chat_redis_addr *out)
{
    if (strncmp(url, "redis://", 8) != 0)
        return false;
    char buf[512];
    if (strlen(url + 8) >= sizeof buf)
        return false;
    strcpy(buf, url + 8);
    char *hostport = buf;
    out->user[0] = '\0';
    out->password[0] = '\0';
    char *at = strrchr(buf, '@');
    if (at) {
        *at = '\0';
        char *colon = strchr(buf, ':');
        const char *password = colon ? colon + 1 : buf;
        if ((colon && !copy_part(out->user, sizeof out->user, buf, (size_t)(colon - buf))) ||
            !copy_part(out->password, sizeof out->password, password, strlen(password)))
            return false;
        hostport = at + 1;
    }
    out->db = 0;
    char *slash = strchr(hostport, '/');
    if (slash) {
        *slash = '\0';
        if (slash[1] && !chat_cfg_parse_int(slash + 1, 0, 15, &out->db))
            return false;
    }
    chat_listen l;
    if (strchr(hostport, ':') == NULL) {
        if (!copy_part(l.host, sizeof l.host, hostport, strlen(hostport)) || l.host[0] == '\0')
            return false;
        l.port = 6379;
    } else if (chat_parse_listen(hostport, &l) != CHAT_OK) {
        return false;
    }
    snprintf(out->host, sizeof out->host, "%s", l.host);
    out->port = l.port;
    return true;
}
