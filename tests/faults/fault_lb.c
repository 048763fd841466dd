/* A small TCP load balancer for the fault suite, in front of the gateways as HAProxy is in the
 * deployment: each client connection goes to the next gateway in turn that accepts a connection
 * (a killed gateway refuses, so its clients' reconnects land on the others); bytes are copied both
 * ways; when either side closes or fails, both are closed, so a client sees its gateway die.
 * One thread, epoll, non-blocking sockets.
 *
 *   fault_lb LISTEN_PORT BACKEND_PORT[,BACKEND_PORT...]      (all on 127.0.0.1)
 * Runs until SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (128 * 1024)
#define MAX_BACKENDS 8

typedef struct side side;
typedef struct pair pair;

/* One socket of a pair and the bytes waiting to be written to it. */
struct side {
    int fd;
    pair *p;
    side *peer;
    char *buf; /* bytes read from the peer, to write here */
    size_t off, len;
    bool eof; /* the peer closed: close after buf is written */
};

struct pair {
    side client, backend;
    int backend_index;
    bool dead;  /* closed in this epoll batch; freed after it */
    pair *next_dead;
};

static volatile sig_atomic_t stopping;
static int ep;
static long backend_conns[MAX_BACKENDS];

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void watch(side *s)
{
    struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = s};
    if (s->peer->len - s->peer->off < BUF_SIZE && !s->peer->eof)
        ev.events |= EPOLLIN; /* room to read into the peer's buffer */
    if (s->len > s->off)
        ev.events |= EPOLLOUT;
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static pair *dead_pairs;

/* Closes both sockets now; the memory goes after the current batch of events, which may still
 * name the other side. */
static void close_pair(pair *p)
{
    if (p->dead)
        return;
    p->dead = true;
    epoll_ctl(ep, EPOLL_CTL_DEL, p->client.fd, NULL);
    epoll_ctl(ep, EPOLL_CTL_DEL, p->backend.fd, NULL);
    close(p->client.fd);
    close(p->backend.fd);
    p->next_dead = dead_pairs;
    dead_pairs = p;
}

static void free_dead(void)
{
    while (dead_pairs) {
        pair *p = dead_pairs;
        dead_pairs = p->next_dead;
        free(p->client.buf);
        free(p->backend.buf);
        free(p);
    }
}

/* Connects to 127.0.0.1:port at once (loopback answers or refuses immediately). */
static int connect_backend(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    nonblock(fd);
    return fd;
}

/* Writes what is buffered for s; false when the socket failed. */
static bool flush_side(side *s)
{
    while (s->len > s->off) {
        ssize_t w = write(s->fd, s->buf + s->off, s->len - s->off);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (w <= 0)
            return false;
        s->off += (size_t)w;
    }
    s->off = s->len = 0;
    return true;
}

/* Reads from s into the peer's buffer; false on EOF or error. */
static bool read_side(side *s)
{
    side *to = s->peer;
    while (to->len < BUF_SIZE) {
        if (to->off > 0 && to->len == to->off)
            to->off = to->len = 0;
        ssize_t r = read(s->fd, to->buf + to->len, BUF_SIZE - to->len);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (r <= 0)
            return false;
        to->len += (size_t)r;
    }
    return true;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT[,BACKEND_PORT...]\n", argv[0]);
        return 2;
    }
    int listen_port = atoi(argv[1]);
    int backends[MAX_BACKENDS], nb = 0;
    for (char *tok = strtok(argv[2], ","); tok && nb < MAX_BACKENDS; tok = strtok(NULL, ","))
        backends[nb++] = atoi(tok);
    if (listen_port <= 0 || nb == 0) {
        fprintf(stderr, "fault_lb: bad arguments\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 4096) != 0) {
        fprintf(stderr, "fault_lb: cannot listen on 127.0.0.1:%d: %s\n", listen_port, strerror(errno));
        return 1;
    }
    nonblock(lfd);
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "fault_lb: listening on 127.0.0.1:%d, %d backends\n", listen_port, nb);

    int rr = 0;
    long refused = 0;
    struct epoll_event evs[256];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                for (;;) {
                    int cfd = accept(lfd, NULL, NULL);
                    if (cfd < 0)
                        break;
                    int bfd = -1, bi = -1;
                    for (int k = 0; k < nb && bfd < 0; k++) {
                        bi = (rr + k) % nb;
                        bfd = connect_backend(backends[bi]);
                    }
                    rr = (rr + 1) % nb;
                    if (bfd < 0) {
                        refused++;
                        close(cfd);
                        continue;
                    }
                    backend_conns[bi]++;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    nonblock(cfd);
                    pair *p = calloc(1, sizeof *p);
                    p->backend_index = bi;
                    p->client = (side){.fd = cfd, .p = p, .peer = &p->backend, .buf = malloc(BUF_SIZE)};
                    p->backend = (side){.fd = bfd, .p = p, .peer = &p->client, .buf = malloc(BUF_SIZE)};
                    struct epoll_event e1 = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &p->client};
                    struct epoll_event e2 = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &p->backend};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &e1);
                    epoll_ctl(ep, EPOLL_CTL_ADD, bfd, &e2);
                }
                continue;
            }
            side *s = evs[i].data.ptr;
            pair *p = s->p;
            if (p->dead)
                continue;
            bool ok = true;
            if (evs[i].events & EPOLLOUT)
                ok = flush_side(s);
            if (ok && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                if (!read_side(s)) {
                    /* this side is gone: hand what it sent to the peer, then close both */
                    flush_side(s->peer);
                    ok = false;
                }
            }
            if (ok && !flush_side(s->peer))
                ok = false;
            if (!ok) {
                close_pair(p);
                continue;
            }
            watch(&p->client);
            watch(&p->backend);
        }
        free_dead();
    }
    fprintf(stderr, "fault_lb: stopping; connections per backend:");
    for (int k = 0; k < nb; k++)
        fprintf(stderr, " %d:%ld", backends[k], backend_conns[k]);
    fprintf(stderr, "; refused (no backend) %ld\n", refused);
    return 0;
}
