/* Gateways of a test's own, HTTP GETs, Prometheus text and RSS for the operations tests. */
#include "test_ops.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char prog_name[64] = "test_ops";
static char pids_path[PATH_MAX + 128];
static char logs_dir[PATH_MAX];

/* ------------------------------------------------------------------ ports and HTTP */

static bool split_listen(const char *listen, char *host, size_t hostsz, int *port)
{
    snprintf(host, hostsz, "%s", listen);
    char *colon = strrchr(host, ':');
    if (!colon)
        return false;
    *colon = '\0';
    *port = atoi(colon + 1);
    return *port > 0;
}

/* A TCP connection to host:port (an IPv4 literal) from source address src (NULL: any), with
 * timeout_ms on every read and write; -1 when it cannot be made. */
static int http_connect(const char *src, const char *host, int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in s = {.sin_family = AF_INET, .sin_port = 0};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if ((src && (inet_pton(AF_INET, src, &s.sin_addr) != 1 || bind(fd, (struct sockaddr *)&s, sizeof s) != 0)) ||
        inet_pton(AF_INET, host, &a.sin_addr) != 1 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Whether the answer read so far (got bytes, NUL-terminated) is whole: a 101's head (the
 * connection stays), or a head and the Content-Length bytes of body after it. */
static bool http_answer_whole(const char *resp, size_t got)
{
    const char *end = strstr(resp, "\r\n\r\n");
    if (end == NULL)
        return false;
    if (strncmp(resp, "HTTP/1.1 101", 12) == 0)
        return true;
    const char *cl = strcasestr(resp, "\r\nContent-Length:");
    return cl && cl < end && got >= (size_t)(end + 4 - resp) + strtoul(cl + 17, NULL, 10);
}

/* The status of the answer in resp (0 when it has no status line). */
static int http_status(const char *resp)
{
    int status = 0;
    return sscanf(resp, "HTTP/1.%*d %d", &status) == 1 ? status : 0;
}

int test_ops_http_get(const char *listen, const char *path, char *body, size_t bodysz, int timeout_ms)
{
    if (body && bodysz)
        body[0] = '\0';
    char host[64];
    int port;
    if (!split_listen(listen, host, sizeof host, &port))
        return 0;
    int fd = http_connect(NULL, host, port, timeout_ms);
    if (fd < 0)
        return 0;
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, listen);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return 0;
    }
    size_t cap = 1 << 16, got = 0;
    char *resp = malloc(cap);
    if (!resp)
        abort();
    int64_t deadline = test_mono_ms() + timeout_ms;
    while (test_mono_ms() < deadline) {
        if (cap - got < 4096) {
            cap *= 2;
            resp = realloc(resp, cap);
            if (!resp)
                abort();
        }
        ssize_t r = read(fd, resp + got, cap - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        resp[got] = '\0';
        if (http_answer_whole(resp, got))
            break;
    }
    close(fd);
    resp[got] = '\0';
    int status = http_status(resp);
    char *end = strstr(resp, "\r\n\r\n");
    if (end && body && bodysz)
        snprintf(body, bodysz, "%s", end + 4);
    free(resp);
    return status;
}

/* ------------------------------------------------------------------ processes */

bool test_pid_alive(pid_t pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

char test_proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' ? rp[2] : 0;
}

bool test_comm_is(pid_t pid, const char *want)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    if (!fgets(comm, sizeof comm, f))
        comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, want) == 0;
}

static void kill_listed(void)
{
    FILE *f = fopen(pids_path, "r");
    if (!f)
        return;
    int pid;
    while (fscanf(f, "%d", &pid) == 1)
        if (pid > 0 && test_pid_alive(pid) && test_comm_is(pid, "chat-gateway"))
            kill(pid, SIGKILL);
    fclose(f);
    unlink(pids_path);
}

void test_ops_init(const char *prog)
{
    /* a write to a connection the gateway already closed (the TLS tunnel's SSL_write after a
     * close, a client's last frame after SIGTERM) must fail with EPIPE, not kill the test */
    signal(SIGPIPE, SIG_IGN);
    snprintf(prog_name, sizeof prog_name, "%s", prog);
    const char *home = getenv("CHAT_HOME");
    if (!home || !home[0])
        home = ".local";
    snprintf(logs_dir, sizeof logs_dir, "%s/logs", home);
    mkdir(logs_dir, 0755);
    char run[PATH_MAX];
    snprintf(run, sizeof run, "%s/run", home);
    mkdir(run, 0755);
    snprintf(pids_path, sizeof pids_path, "%s/%s.pids", run, prog);
    kill_listed();
}

void test_ops_cleanup(void)
{
    kill_listed();
}

int test_ops_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    test_ops_cleanup();
    return failed;
}

static void log_line(const char *path, const char *text)
{
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    localtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%F %T", &tm);
    fprintf(f, "===== %s: %s\n", ts, text);
    fclose(f);
}

chat_status test_gateway_spawn(const test_stack *st, const char *name, const char *const *env, test_gateway *gw,
                               char *why, size_t whysz)
{
    memset(gw, 0, sizeof *gw);
    snprintf(gw->name, sizeof gw->name, "%s", name);
    gw->port = test_free_port();
    if (gw->port == 0) {
        snprintf(why, whysz, "no free port on 127.0.0.1");
        return CHAT_ERR_IO;
    }
    snprintf(gw->listen, sizeof gw->listen, "127.0.0.1:%d", gw->port);
    snprintf(gw->log, sizeof gw->log, "%s/%s-%s.log", logs_dir[0] ? logs_dir : ".", prog_name, name);
    char bin[sizeof st->build_dir + 32];
    snprintf(bin, sizeof bin, "%s/bin/chat-gateway", st->build_dir);
    if (access(bin, X_OK) != 0) {
        snprintf(why, whysz, "%s not found", bin);
        return CHAT_ERR_NOT_FOUND;
    }
    char line[PATH_MAX + 1024];
    int o = snprintf(line, sizeof line, "starting %s CHAT_GATEWAY_LISTEN=%s", bin, gw->listen);
    for (size_t i = 0; env && env[i] && o > 0 && (size_t)o < sizeof line; i++)
        o += snprintf(line + o, sizeof line - (size_t)o, " %s", env[i]);
    log_line(gw->log, line);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whysz, "fork: %s", strerror(errno));
        return CHAT_ERR_IO;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with the test, also when Check kills it */
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        int out = open(gw->log, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (in < 0 || out < 0)
            _exit(127);
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        setenv("CHAT_GATEWAY_LISTEN", gw->listen, 1);
        for (size_t i = 0; env && env[i]; i++) {
            char kv[PATH_MAX + 256];
            snprintf(kv, sizeof kv, "%s", env[i]);
            char *eq = strchr(kv, '=');
            if (!eq)
                _exit(126);
            *eq = '\0';
            setenv(kv, eq + 1, 1);
        }
        execl(bin, "chat-gateway", (char *)NULL);
        _exit(127);
    }
    gw->pid = pid;
    gw->started_ms = test_mono_ms();
    gw->started_unix = (int64_t)time(NULL);
    if (pids_path[0]) {
        FILE *f = fopen(pids_path, "a");
        if (f) {
            fprintf(f, "%d\n", (int)pid);
            fclose(f);
        }
    }
    return CHAT_OK;
}

bool test_gateway_running(test_gateway *gw)
{
    if (gw->pid <= 0)
        return false;
    int st = 0;
    pid_t r = waitpid(gw->pid, &st, WNOHANG);
    if (r == gw->pid || (r < 0 && errno == ECHILD)) {
        gw->exit_status = r == gw->pid ? st : -1;
        gw->pid = 0;
        return false;
    }
    return true;
}

const char *test_gateway_log_tail(const test_gateway *gw, size_t n)
{
    static char buf[4096];
    buf[0] = '\0';
    if (n > sizeof buf - 1)
        n = sizeof buf - 1;
    FILE *f = fopen(gw->log, "r");
    if (!f)
        return buf;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > (long)n ? size - (long)n : 0, SEEK_SET);
    size_t got = fread(buf, 1, n, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

static bool tcp_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

chat_status test_gateway_wait_ready(test_gateway *gw, bool tls, int timeout_ms, char *why, size_t whysz)
{
    int64_t t0 = test_mono_ms();
    char body[2048] = "";
    for (;;) {
        if (!test_gateway_running(gw)) {
            snprintf(why, whysz, "gateway %s exited (status 0x%x) before it was ready; its log ends: %s", gw->name,
                     gw->exit_status, test_gateway_log_tail(gw, 1500));
            return CHAT_ERR_IO;
        }
        if (tls ? tcp_accepts(gw->port) : test_ops_http_get(gw->listen, "/readyz", body, sizeof body, 1000) == 200)
            return CHAT_OK;
        if (test_mono_ms() - t0 > timeout_ms) {
            snprintf(why, whysz, "gateway %s (pid %d) not ready on %s within %d ms: %s; its log ends: %s", gw->name,
                     (int)gw->pid, gw->listen, timeout_ms, body, test_gateway_log_tail(gw, 1500));
            return CHAT_ERR_TIMEOUT;
        }
        usleep(20000);
    }
}

chat_status test_gateway_wait_exit(test_gateway *gw, int timeout_ms)
{
    int64_t t0 = test_mono_ms();
    while (test_gateway_running(gw)) {
        if (test_mono_ms() - t0 > timeout_ms)
            return CHAT_ERR_TIMEOUT;
        usleep(5000);
    }
    return CHAT_OK;
}

void test_gateway_stop(test_gateway *gw, int timeout_ms)
{
    if (!gw || gw->pid <= 0 || !test_gateway_running(gw))
        return;
    kill(gw->pid, SIGTERM);
    if (test_gateway_wait_exit(gw, timeout_ms) != CHAT_OK) {
        kill(gw->pid, SIGKILL);
        test_gateway_wait_exit(gw, 5000);
        log_line(gw->log, "killed (-9) by the test: no exit within the stop timeout");
    } else {
        log_line(gw->log, "stopped by the test");
    }
}

chat_status test_gateway_connect(const test_stack *st, const test_gateway *gw, const char *user, int timeout_ms,
                                 ws_client **out, json_t **hello, char *why, size_t whysz)
{
    test_stack s = *st; /* a shallow copy: only the address differs */
    snprintf(s.gateway_host, sizeof s.gateway_host, "127.0.0.1");
    s.gateway_port = gw->port;
    return test_stack_connect(&s, user, timeout_ms, out, hello, why, whysz);
}

int64_t test_ops_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int64_t kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* ------------------------------------------------------------------ Prometheus text */

json_t *test_metrics_parse(const char *text, char *why, size_t whysz)
{
    json_t *m = json_object();
    json_t *typed = json_object(); /* names with a # TYPE line */
    int lineno = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[2048];
        lineno++;
        if (len >= sizeof line) {
            snprintf(why, whysz, "line %d longer than %zu bytes", lineno, sizeof line);
            goto fail;
        }
        memcpy(line, p, len);
        line[len] = '\0';
        p += len + (nl ? 1 : 0);
        if (line[0] == '\0')
            continue;
        if (line[0] == '#') {
            char name[256], type[32];
            if (sscanf(line, "# TYPE %255s %31s", name, type) == 2) {
                if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram") &&
                    strcmp(type, "summary") && strcmp(type, "untyped")) {
                    snprintf(why, whysz, "line %d: unknown type: %s", lineno, line);
                    goto fail;
                }
                json_object_set_new(typed, name, json_string(type));
            }
            continue;
        }
        /* name{labels} value */
        const char *q = line;
        while (*q && (isalnum((unsigned char)*q) || *q == '_' || *q == ':'))
            q++;
        if (q == line) {
            snprintf(why, whysz, "line %d: no metric name: %s", lineno, line);
            goto fail;
        }
        size_t nlen = (size_t)(q - line);
        if (*q == '{') {
            bool inq = false;
            for (q++; *q && (inq || *q != '}'); q++) {
                if (*q == '\\' && inq && q[1])
                    q++;
                else if (*q == '"')
                    inq = !inq;
            }
            if (*q != '}') {
                snprintf(why, whysz, "line %d: unterminated labels: %s", lineno, line);
                goto fail;
            }
            q++;
        }
        size_t klen = (size_t)(q - line);
        if (*q != ' ') {
            snprintf(why, whysz, "line %d: no value: %s", lineno, line);
            goto fail;
        }
        char *end;
        double v = strtod(q + 1, &end);
        if (end == q + 1 || (*end && *end != ' ')) {
            snprintf(why, whysz, "line %d: bad value: %s", lineno, line);
            goto fail;
        }
        char key[2048], name[256];
        memcpy(key, line, klen);
        key[klen] = '\0';
        snprintf(name, sizeof name, "%.*s", (int)nlen, line);
        /* histogram series belong to the base name's # TYPE */
        bool known = json_object_get(typed, name) != NULL;
        static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
        for (size_t i = 0; !known && i < 3; i++) {
            size_t sl = strlen(suffixes[i]);
            if (nlen > sl && strcmp(name + nlen - sl, suffixes[i]) == 0) {
                char base[256];
                snprintf(base, sizeof base, "%.*s", (int)(nlen - sl), name);
                known = json_object_get(typed, base) != NULL;
            }
        }
        if (!known) {
            snprintf(why, whysz, "line %d: sample without a # TYPE line for its name: %s", lineno, line);
            goto fail;
        }
        if (json_object_get(m, key)) {
            snprintf(why, whysz, "line %d: series %s appears twice", lineno, key);
            goto fail;
        }
        json_object_set_new(m, key, json_real(v));
    }
    json_decref(typed);
    return m;
fail:
    json_decref(typed);
    json_decref(m);
    return NULL;
}

json_t *test_metrics_scrape(const char *listen, char *why, size_t whysz)
{
    static char body[1 << 20];
    int status = test_ops_http_get(listen, "/metrics", body, sizeof body, 5000);
    if (status != 200) {
        /* cut to the caller's buffer (checked, so an optimizing build does not take it for a mistake) */
        if (snprintf(why, whysz, "GET http://%s/metrics answered %d (0: no answer): %.300s", listen, status, body) >=
            (int)whysz)
            why[whysz - 1] = '\0';
        return NULL;
    }
    char perr[512];
    json_t *m = test_metrics_parse(body, perr, sizeof perr);
    if (!m && snprintf(why, whysz, "http://%s/metrics is not Prometheus text: %s", listen, perr) >= (int)whysz)
        why[whysz - 1] = '\0';
    return m;
}

double test_metric(const json_t *m, const char *key)
{
    json_t *v = json_object_get(m, key);
    return v ? json_real_value(v) : NAN;
}

double test_metric_delta(const json_t *before, const json_t *after, const char *key)
{
    return test_metric(after, key) - test_metric(before, key);
}

/* ---- raw HTTP: exact bytes, from a source address of the test's choice ---- */

int test_raw_http(const char *src, int port, const char *request, size_t reqlen, char *resp, size_t respsz,
                  int timeout_ms)
{
    resp[0] = '\0';
    int fd = http_connect(src, "127.0.0.1", port, timeout_ms);
    if (fd < 0)
        return 0;
    size_t off = 0;
    while (off < reqlen) {
        ssize_t w = write(fd, request + off, reqlen - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    size_t got = 0;
    int64_t deadline = test_mono_ms() + timeout_ms;
    while (got < respsz - 1 && test_mono_ms() < deadline) {
        ssize_t r = read(fd, resp + got, respsz - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        resp[got] = '\0';
        if (http_answer_whole(resp, got))
            break;
    }
    close(fd);
    resp[got] = '\0';
    return http_status(resp);
}

int test_raw_upgrade(const char *src, int port, const char *token, char *resp, size_t respsz)
{
    char own[4096];
    if (resp == NULL || respsz == 0) {
        resp = own;
        respsz = sizeof own;
    }
    size_t cap = strlen(token) + 512;
    char *req = malloc(cap);
    int n = snprintf(req, cap,
                     "GET /ws?token=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     token, port);
    int st = test_raw_http(src, port, req, (size_t)n, resp, respsz, 5000);
    free(req);
    return st;
}

double test_worker_metric(const char *key)
{
    const char *listen = getenv("CHAT_WORKER_LISTEN");
    ck_assert_msg(listen != NULL, "CHAT_WORKER_LISTEN is not set");
    char why[300];
    json_t *m = test_metrics_scrape(listen, why, sizeof why);
    ck_assert_msg(m != NULL, "worker metrics: %s", why);
    double v = test_metric(m, key);
    json_decref(m);
    return v;
}

natsSubscription *test_events_reader(jsCtx *js, const char *subject)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "CHAT_EVENTS";
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_SubscribeSync(&sub, js, subject, NULL, &so, &jerr);
    ck_assert_msg(s == NATS_OK, "ordered consumer on CHAT_EVENTS %s: %s (jerr %d)", subject, natsStatus_GetText(s),
                  (int)jerr);
    return sub;
}

int test_ws_upgrade(const char *host, int port, const char *token, const char *user, ws_client **out, char *body,
                    size_t bodysz)
{
    ws_connect_opts o = {.host = host, .port = port, .path = "/ws", .token = token, .timeout_ms = 5000};
    ws_connect_info info;
    memset(&info, 0, sizeof info);
    ws_client *c = NULL;
    chat_status st = ws_client_connect(&o, &c, &info);
    if (body)
        snprintf(body, bodysz, "%s", info.body);
    if (st != CHAT_OK)
        return info.http_status;
    json_t *hello = NULL;
    ck_assert_msg(test_recv_type(c, "hello", 5000, &hello, NULL) == CHAT_OK, "no hello after 101");
    if (user)
        ck_assert_msg(strcmp(test_str(hello, "user"), user) == 0, "hello for %s, want %s", test_str(hello, "user"),
                      user);
    json_decref(hello);
    if (out)
        *out = c;
    else
        ws_client_shutdown(c, 2000);
    return 101;
}
