/* The fault suite's push receiver: an HTTP/1.1 server on 127.0.0.1 that answers every request
 * 200 (keep-alive, as libcurl reuses connections) after delay_ms, and appends each request body
 * as one line to a file, so the notify scenario has a webhook that takes time (work in flight to
 * kill) and a record of the pushes. One thread, poll.
 *
 *   fault_webhook PORT FILE [DELAY_MS]
 * Runs until SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 256
#define BUF 65536

typedef struct conn {
    int fd;
    char buf[BUF];
    size_t len;
} conn;

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT FILE [DELAY_MS]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), delay_ms = argc > 3 ? atoi(argv[3]) : 0;
    FILE *out = fopen(argv[2], "a");
    if (!out) {
        fprintf(stderr, "fault_webhook: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 128) != 0) {
        fprintf(stderr, "fault_webhook: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    static conn conns[MAX_CONNS];
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = -1;
    long requests = 0;
    while (!stopping) {
        struct pollfd pfd[MAX_CONNS + 1];
        int map[MAX_CONNS + 1], n = 0;
        pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
        map[n++] = -1;
        for (int i = 0; i < MAX_CONNS; i++)
            if (conns[i].fd >= 0) {
                pfd[n] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
                map[n++] = i;
            }
        if (poll(pfd, (nfds_t)n, 500) <= 0)
            continue;
        for (int k = 0; k < n; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (map[k] < 0) {
                int cfd = accept(lfd, NULL, NULL);
                if (cfd < 0)
                    continue;
                int slot = -1;
                for (int i = 0; i < MAX_CONNS && slot < 0; i++)
                    if (conns[i].fd < 0)
                        slot = i;
                if (slot < 0) {
                    close(cfd);
                    continue;
                }
                conns[slot].fd = cfd;
                conns[slot].len = 0;
                continue;
            }
            conn *c = &conns[map[k]];
            ssize_t r = read(c->fd, c->buf + c->len, BUF - 1 - c->len);
            if (r <= 0) {
                close(c->fd);
                c->fd = -1;
                continue;
            }
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            /* every whole request in the buffer */
            for (;;) {
                char *end = strstr(c->buf, "\r\n\r\n");
                if (!end)
                    break;
                size_t head = (size_t)(end + 4 - c->buf), body = 0;
                for (char *h = c->buf; h < end; h = strstr(h, "\r\n") + 2)
                    if (strncasecmp(h, "Content-Length:", 15) == 0)
                        body = strtoul(h + 15, NULL, 10);
                if (head + body > BUF - 1) { /* too big for us: drop the connection */
                    close(c->fd);
                    c->fd = -1;
                    break;
                }
                if (c->len < head + body)
                    break;
                fwrite(c->buf + head, 1, body, out);
                fputc('\n', out);
                fflush(out);
                requests++;
                if (delay_ms > 0)
                    usleep((useconds_t)delay_ms * 1000);
                static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n";
                if (write(c->fd, ok, sizeof ok - 1) < 0) {
                    close(c->fd);
                    c->fd = -1;
                    break;
                }
                memmove(c->buf, c->buf + head + body, c->len - head - body);
                c->len -= head + body;
                c->buf[c->len] = '\0';
            }
        }
    }
    fprintf(stderr, "fault_webhook: %ld pushes received\n", requests);
    fclose(out);
    return 0;
}
