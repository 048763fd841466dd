/* The TLS tunnel: an accept thread and one pump thread per connection, non-blocking sockets and
 * poll(2) with a stop pipe, OpenSSL without auto-retry so that TLS 1.3 tickets never block a
 * pump. */
#include "tls_tunnel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_CONNS 64
#define HANDSHAKE_MS 10000

typedef struct conn {
    tls_tunnel *t;
    int plain, tcp;
    SSL *ssl;
    pthread_t thread;
    bool started;
} conn;

struct tls_tunnel {
    SSL_CTX *ctx;
    char host[64];
    int port;
    char server_name[256];
    char verify_ip[64];
    int listen_fd, local_port;
    int stop_pipe[2];
    pthread_t acceptor;
    bool acceptor_started;
    pthread_mutex_t lock;
    conn *conns[MAX_CONNS];
    int nconns;
    unsigned handshakes, failures;
    char last[512];
};

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void record(tls_tunnel *t, bool ok, const char *line)
{
    pthread_mutex_lock(&t->lock);
    if (ok)
        t->handshakes++;
    else
        t->failures++;
    snprintf(t->last, sizeof t->last, "%s", line);
    pthread_mutex_unlock(&t->lock);
}

static void ssl_errors(char *out, size_t outsz)
{
    out[0] = '\0';
    unsigned long e;
    size_t o = 0;
    while ((e = ERR_get_error()) != 0 && o + 2 < outsz) {
        char b[256];
        ERR_error_string_n(e, b, sizeof b);
        o += (size_t)snprintf(out + o, outsz - o, "%s%s", o ? "; " : "", b);
    }
}

/* Waits for fd to be ready for events (or the stop pipe); false on stop or timeout. */
static bool wait_fd(tls_tunnel *t, int fd, short events, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = t->stop_pipe[0], .events = POLLIN}};
    int n = poll(p, 2, timeout_ms);
    return n > 0 && !(p[1].revents & POLLIN) && p[0].revents;
}

/* Writes all of buf to the TLS side. */
static bool ssl_write_all(conn *c, const char *buf, size_t len)
{
    while (len > 0) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, buf, (int)len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_WRITE) {
            if (!wait_fd(c->t, c->tcp, POLLOUT, 30000))
                return false;
        } else if (err == SSL_ERROR_WANT_READ) {
            if (!wait_fd(c->t, c->tcp, POLLIN, 30000))
                return false;
        } else {
            return false;
        }
    }
    return true;
}

/* Writes all of buf to the plain side. */
static bool plain_write_all(conn *c, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(c->plain, buf, len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(c->t, c->plain, POLLOUT, 30000))
                return false;
        } else {
            return false;
        }
    }
    return true;
}

static bool handshake(conn *c)
{
    tls_tunnel *t = c->t;
    c->tcp = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
    char why[400];
    if (c->tcp < 0 || inet_pton(AF_INET, t->host, &a.sin_addr) != 1 ||
        connect(c->tcp, (struct sockaddr *)&a, sizeof a) != 0) {
        snprintf(why, sizeof why, "TCP connect to %s:%d: %s", t->host, t->port, strerror(errno));
        record(t, false, why);
        return false;
    }
    int one = 1;
    setsockopt(c->tcp, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_nonblock(c->tcp);
    c->ssl = SSL_new(t->ctx);
    SSL_set_fd(c->ssl, c->tcp);
    if (t->server_name[0])
        SSL_set_tlsext_host_name(c->ssl, t->server_name);
    if (t->verify_ip[0])
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), t->verify_ip);
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(c->ssl);
        if (r == 1)
            break;
        int err = SSL_get_error(c->ssl, r);
        if ((err == SSL_ERROR_WANT_READ && wait_fd(t, c->tcp, POLLIN, HANDSHAKE_MS)) ||
            (err == SSL_ERROR_WANT_WRITE && wait_fd(t, c->tcp, POLLOUT, HANDSHAKE_MS)))
            continue;
        char e[300];
        ssl_errors(e, sizeof e);
        long v = SSL_get_verify_result(c->ssl);
        snprintf(why, sizeof why, "TLS handshake failed (SSL_get_error %d, verify %ld: %s): %s", err, v,
                 X509_verify_cert_error_string(v), e[0] ? e : strerror(errno));
        record(t, false, why);
        return false;
    }
    char subject[256] = "?";
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    if (peer) {
        X509_NAME_oneline(X509_get_subject_name(peer), subject, sizeof subject);
        X509_free(peer);
    }
    snprintf(why, sizeof why, "%s %s subject=%s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl), subject);
    record(t, true, why);
    return true;
}

static void *pump(void *arg)
{
    conn *c = arg;
    tls_tunnel *t = c->t;
    if (!handshake(c))
        goto done;
    char buf[16384];
    for (;;) {
        /* what OpenSSL holds decrypted already is read before polling */
        bool tls_ready = SSL_pending(c->ssl) > 0;
        if (!tls_ready) {
            struct pollfd p[3] = {{.fd = c->plain, .events = POLLIN},
                                  {.fd = c->tcp, .events = POLLIN},
                                  {.fd = t->stop_pipe[0], .events = POLLIN}};
            if (poll(p, 3, 1000) < 0 && errno != EINTR)
                break;
            if (p[2].revents & POLLIN)
                break;
            if (p[0].revents) {
                ssize_t n = read(c->plain, buf, sizeof buf);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                    break; /* the client left: close the TLS side */
                if (n > 0 && !ssl_write_all(c, buf, (size_t)n))
                    break;
            }
            tls_ready = p[1].revents != 0;
        }
        while (tls_ready) {
            ERR_clear_error();
            int n = SSL_read(c->ssl, buf, sizeof buf);
            if (n > 0) {
                if (!plain_write_all(c, buf, (size_t)n))
                    goto done;
                tls_ready = SSL_pending(c->ssl) > 0;
                continue;
            }
            int err = SSL_get_error(c->ssl, n);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
                break;
            goto done; /* the server closed (close_notify or EOF) or a TLS error */
        }
    }
done:
    if (c->ssl)
        SSL_shutdown(c->ssl);
    shutdown(c->plain, SHUT_RDWR);
    return NULL;
}

static void *acceptor(void *arg)
{
    tls_tunnel *t = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = t->listen_fd, .events = POLLIN}, {.fd = t->stop_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents & POLLIN)
            break;
        int fd = accept(t->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&t->lock);
        if (t->nconns == MAX_CONNS) {
            pthread_mutex_unlock(&t->lock);
            close(fd);
            continue;
        }
        conn *c = calloc(1, sizeof *c);
        c->t = t;
        c->plain = fd;
        c->tcp = -1;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_nonblock(fd);
        t->conns[t->nconns++] = c;
        c->started = pthread_create(&c->thread, NULL, pump, c) == 0;
        pthread_mutex_unlock(&t->lock);
    }
    return NULL;
}

chat_status tls_tunnel_start(const char *host, int port, const char *ca_file, const char *server_name,
                             const char *verify_ip, tls_tunnel **out, char *why, size_t whysz)
{
    *out = NULL;
    tls_tunnel *t = calloc(1, sizeof *t);
    if (!t)
        return CHAT_ERR_NOMEM;
    t->listen_fd = -1;
    t->stop_pipe[0] = t->stop_pipe[1] = -1;
    pthread_mutex_init(&t->lock, NULL);
    snprintf(t->host, sizeof t->host, "%s", host);
    t->port = port;
    snprintf(t->server_name, sizeof t->server_name, "%s", server_name ? server_name : "");
    snprintf(t->verify_ip, sizeof t->verify_ip, "%s", verify_ip ? verify_ip : "");
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx) {
        snprintf(why, whysz, "SSL_CTX_new failed");
        tls_tunnel_stop(t);
        return CHAT_ERR_INTERNAL;
    }
    SSL_CTX_clear_mode(t->ctx, SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL) != 1) {
            char e[300];
            ssl_errors(e, sizeof e);
            snprintf(why, whysz, "cannot load %s as a CA: %s", ca_file, e);
            tls_tunnel_stop(t);
            return CHAT_ERR_INVALID;
        }
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (pipe(t->stop_pipe) != 0) {
        snprintf(why, whysz, "pipe: %s", strerror(errno));
        tls_tunnel_stop(t);
        return CHAT_ERR_IO;
    }
    t->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (t->listen_fd < 0 || bind(t->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(t->listen_fd, 64) != 0 ||
        getsockname(t->listen_fd, (struct sockaddr *)&a, &alen) != 0) {
        snprintf(why, whysz, "listen on 127.0.0.1:0: %s", strerror(errno));
        tls_tunnel_stop(t);
        return CHAT_ERR_IO;
    }
    t->local_port = ntohs(a.sin_port);
    if (pthread_create(&t->acceptor, NULL, acceptor, t) != 0) {
        snprintf(why, whysz, "pthread_create failed");
        tls_tunnel_stop(t);
        return CHAT_ERR_INTERNAL;
    }
    t->acceptor_started = true;
    *out = t;
    return CHAT_OK;
}

int tls_tunnel_port(const tls_tunnel *t)
{
    return t->local_port;
}

unsigned tls_tunnel_handshakes(tls_tunnel *t)
{
    pthread_mutex_lock(&t->lock);
    unsigned n = t->handshakes;
    pthread_mutex_unlock(&t->lock);
    return n;
}

unsigned tls_tunnel_failures(tls_tunnel *t)
{
    pthread_mutex_lock(&t->lock);
    unsigned n = t->failures;
    pthread_mutex_unlock(&t->lock);
    return n;
}

void tls_tunnel_last(tls_tunnel *t, char *out, size_t outsz)
{
    pthread_mutex_lock(&t->lock);
    snprintf(out, outsz, "%s", t->last);
    pthread_mutex_unlock(&t->lock);
}

void tls_tunnel_stop(tls_tunnel *t)
{
    if (!t)
        return;
    if (t->stop_pipe[1] >= 0) {
        char b = 1;
        if (write(t->stop_pipe[1], &b, 1) != 1) {
            /* nothing to do: the threads then stop at their next timeout */
        }
    }
    if (t->acceptor_started)
        pthread_join(t->acceptor, NULL);
    for (int i = 0; i < t->nconns; i++) {
        conn *c = t->conns[i];
        if (c->started)
            pthread_join(c->thread, NULL);
        if (c->ssl)
            SSL_free(c->ssl);
        if (c->tcp >= 0)
            close(c->tcp);
        close(c->plain);
        free(c);
    }
    if (t->listen_fd >= 0)
        close(t->listen_fd);
    for (int i = 0; i < 2; i++)
        if (t->stop_pipe[i] >= 0)
            close(t->stop_pipe[i]);
    if (t->ctx)
        SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
