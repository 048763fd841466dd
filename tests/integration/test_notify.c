/* The notify role against the running stack: a small webhook receiver runs inside this test (a
 * thread on 127.0.0.1:<free port> that records every POST and can be told to answer 500, to hang
 * or to refuse connections); the stack's own worker (notify without a webhook) is stopped and this
 * test runs its own workers instead, `--roles ingest,api,archive` and `--roles notify` with
 * CHAT_PUSH_GRACE=2s and CHAT_PUSH_WEBHOOK_URL at the receiver; at the end the stack's worker is
 * started again with `scripts/up --no-build`.
 *
 * Cases: a burst of 20 messages gives one push with unread 20 and the newest preview, none for the
 * sender; a member who marks the messages seen within the grace gets none; a failing webhook (500,
 * then no answer, then refused connections) gets the push after it recovers; a notifier killed
 * with SIGKILL inside the grace loses nothing (a new one, started with CHAT_PUSH_PREVIEW=0, pushes);
 * nor does one killed while its POST hangs (the next one pushes once the claim and AckWait ran out);
 * a notifier that creates the consumer on CHAT_EVENTS anew (it was deleted) pushes nothing posted
 * before, only what comes after.
 *
 * Runs in one process (CK_NOFORK): the receiver thread and the worker processes live across the
 * cases. Main thread, plus the receiver thread. */
#include <arpa/inet.h>
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "test_check.h"
#include "test_stack.h"

#ifndef CHAT_SOURCE_DIR
#define CHAT_SOURCE_DIR "."
#endif

#define GRACE_MS 2000
#define GRACE_TEXT "2s"
#define NOTIFY_STREAM "CHAT_EVENTS"
#define NOTIFY_CONSUMER "chat-notify-events" /* workers/wk_notify.h */

static test_stack stack;

/* ------------------------------------------------------------------ the webhook receiver */

enum { HOOK_OK, HOOK_ERROR, HOOK_HANG, HOOK_DOWN };

typedef struct hook_post {
    char *body;
    int status;    /* what the receiver answered: 200, 500, or 0 (held without an answer) */
    int64_t at_ms; /* test_mono_ms() when it arrived */
} hook_post;

static struct {
    pthread_mutex_t lock;
    pthread_t thread;
    atomic_bool stop;
    atomic_int mode;
    int listen_fd; /* receiver thread only */
    int port;
    hook_post *posts;
    int n, cap;
    int held[64]; /* HANG: connections read and never answered, closed when the mode changes */
    int nheld;
} hook = {.lock = PTHREAD_MUTEX_INITIALIZER, .listen_fd = -1};

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    return ntohs(a.sin_port);
}

/* A port nobody listens on right now. */
static int free_port(void)
{
    int fd = listen_on(0);
    int port = fd >= 0 ? bound_port(fd) : -1;
    if (fd >= 0)
        close(fd);
    return port;
}

/* Reads one HTTP request (headers, then Content-Length bytes of body); the body or NULL. */
static char *read_request(int fd)
{
    struct timeval tv = {.tv_sec = 3};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    char *end = NULL;
    long want = -1;
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (end == NULL && (end = strstr(buf, "\r\n\r\n")) != NULL) {
            want = 0;
            for (char *h = strstr(buf, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n"))
                if (strncasecmp(h + 2, "Content-Length:", 15) == 0)
                    want = strtol(h + 17, NULL, 10);
        }
        if (end && (long)(len - (size_t)(end + 4 - buf)) >= want)
            break;
    }
    if (end == NULL) {
        free(buf);
        return NULL;
    }
    size_t off = (size_t)(end + 4 - buf);
    char *body = strndup(buf + off, len - off);
    free(buf);
    return body;
}

static void release_held(void)
{
    pthread_mutex_lock(&hook.lock);
    for (int i = 0; i < hook.nheld; i++)
        close(hook.held[i]);
    hook.nheld = 0;
    pthread_mutex_unlock(&hook.lock);
}

static void *hook_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&hook.stop)) {
        int mode = atomic_load(&hook.mode);
        if (mode != HOOK_HANG)
            release_held();
        if (mode == HOOK_DOWN) {
            if (hook.listen_fd >= 0) {
                close(hook.listen_fd); /* connections are refused now */
                hook.listen_fd = -1;
            }
            usleep(20000);
            continue;
        }
        if (hook.listen_fd < 0 && (hook.listen_fd = listen_on(hook.port)) < 0) {
            usleep(50000);
            continue;
        }
        struct pollfd pfd = {.fd = hook.listen_fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int fd = accept4(hook.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        char *body = read_request(fd);
        mode = atomic_load(&hook.mode);
        int status = mode == HOOK_ERROR ? 500 : mode == HOOK_HANG ? 0 : 200;
        if (body) {
            pthread_mutex_lock(&hook.lock);
            if (hook.n == hook.cap) {
                hook.cap = hook.cap ? hook.cap * 2 : 64;
                hook.posts = realloc(hook.posts, (size_t)hook.cap * sizeof *hook.posts);
            }
            hook.posts[hook.n++] = (hook_post){.body = body, .status = status, .at_ms = test_mono_ms()};
            pthread_mutex_unlock(&hook.lock);
        }
        if (status == 0 && hook.nheld < 64) {
            pthread_mutex_lock(&hook.lock);
            hook.held[hook.nheld++] = fd;
            pthread_mutex_unlock(&hook.lock);
            continue;
        }
        char resp[160];
        int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                         status ? status : 500, status == 200 ? "OK" : "Internal Server Error");
        ssize_t w = send(fd, resp, (size_t)n, MSG_NOSIGNAL);
        (void)w;
        close(fd);
    }
    release_held();
    if (hook.listen_fd >= 0)
        close(hook.listen_fd);
    return NULL;
}

static void hook_start(void)
{
    hook.listen_fd = listen_on(0);
    if (hook.listen_fd < 0 || (hook.port = bound_port(hook.listen_fd)) <= 0) {
        fprintf(stderr, "test_notify: cannot listen on 127.0.0.1: %s\n", strerror(errno));
        exit(1);
    }
    pthread_create(&hook.thread, NULL, hook_thread, NULL);
}

static void hook_stop(void)
{
    atomic_store(&hook.stop, true);
    pthread_join(hook.thread, NULL);
}

/* The pushes for user recorded so far with the given answer status (-1: any), parsed; the caller
 * decrefs the array. */
static json_t *pushes_for(const char *user, int status)
{
    json_t *out = json_array();
    pthread_mutex_lock(&hook.lock);
    for (int i = 0; i < hook.n; i++) {
        if (status >= 0 && hook.posts[i].status != status)
            continue;
        json_t *j = json_loads(hook.posts[i].body, 0, NULL);
        const char *u = j ? test_str(j, "user") : NULL;
        if (u && strcmp(u, user) == 0) {
            json_object_set_new(j, "_at_ms", json_integer(hook.posts[i].at_ms));
            json_array_append_new(out, j);
        } else {
            json_decref(j);
        }
    }
    pthread_mutex_unlock(&hook.lock);
    return out;
}

/* Waits until user has at least `count` pushes answered with `status`, up to timeout_ms. */
static json_t *wait_pushes(const char *user, int status, size_t count, int timeout_ms)
{
    int64_t deadline = test_mono_ms() + timeout_ms;
    for (;;) {
        json_t *p = pushes_for(user, status);
        if (json_array_size(p) >= count || test_mono_ms() >= deadline)
            return p;
        json_decref(p);
        usleep(50000);
    }
}

static int hook_total(void)
{
    pthread_mutex_lock(&hook.lock);
    int n = hook.n;
    pthread_mutex_unlock(&hook.lock);
    return n;
}

/* ------------------------------------------------------------------ processes */

static pid_t core_pid = -1, notify_pid = -1;
static char core_listen[64], notify_listen[64];
static bool stack_worker_stopped;

static bool http_get(const char *url, long *status, char **body)
{
    CURL *c = curl_easy_init();
    if (!c)
        return false;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = body ? open_memstream(&buf, &len) : fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(c);
    fclose(f);
    if (body)
        *body = buf;
    return rc == CURLE_OK;
}

/* Starts build/bin/chat-worker --roles roles with the stack's settings, its own listen address,
 * the receiver as webhook and a 2 s grace; output appended to $CHAT_HOME/logs/test_notify-<name>.log.
 * Waits for /readyz. */
static pid_t start_worker(const char *name, const char *roles, char *listen, size_t listensz, const char *preview)
{
    snprintf(listen, listensz, "127.0.0.1:%d", free_port());
    char worker[4200], log[4200], webhook[128];
    snprintf(worker, sizeof worker, "%s/bin/chat-worker", stack.build_dir);
    snprintf(log, sizeof log, "%s/logs/test_notify-%s.log", stack.cfg.home, name);
    snprintf(webhook, sizeof webhook, "http://127.0.0.1:%d/push", hook.port);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        setenv("CHAT_WORKER_LISTEN", listen, 1);
        setenv("CHAT_PUSH_WEBHOOK_URL", webhook, 1);
        setenv("CHAT_PUSH_GRACE", GRACE_TEXT, 1);
        setenv("CHAT_PUSH_PREVIEW", preview, 1);
        execl(worker, "chat-worker", "--roles", roles, (char *)NULL);
        fprintf(stderr, "test_notify: exec %s: %s\n", worker, strerror(errno));
        _exit(127);
    }
    if (pid < 0)
        return -1;
    char url[128];
    snprintf(url, sizeof url, "http://%s/readyz", listen);
    for (int i = 0; i < 200; i++) {
        long status = 0;
        if (http_get(url, &status, NULL) && status == 200)
            return pid;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            fprintf(stderr, "test_notify: worker %s exited while starting (see %s)\n", name, log);
            return -1;
        }
        usleep(100000);
    }
    fprintf(stderr, "test_notify: worker %s not ready within 20 s (see %s)\n", name, log);
    return pid;
}

static void stop_child(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    for (int i = 0; i < 150; i++) {
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = -1;
            return;
        }
        usleep(100000);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = -1;
}

/* Stops the stack's own worker (its pid file, if it names a live chat-worker): it runs notify
 * without a webhook and would ack the requests this test wants pushed. */
static void stop_stack_worker(void)
{
    char path[4200], comm[64] = "";
    snprintf(path, sizeof path, "%s/run/worker.pid", stack.cfg.home);
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1 || pid <= 1) {
        if (f)
            fclose(f);
        printf("test_notify: no stack worker pid file at %s; not stopping any\n", path);
        return;
    }
    fclose(f);
    snprintf(path, sizeof path, "/proc/%ld/comm", pid);
    f = fopen(path, "r");
    if (!f || !fgets(comm, sizeof comm, f) || strncmp(comm, "chat-worker", 11) != 0) {
        if (f)
            fclose(f);
        return;
    }
    fclose(f);
    kill((pid_t)pid, SIGTERM);
    for (int i = 0; i < 150 && kill((pid_t)pid, 0) == 0; i++)
        usleep(100000);
    stack_worker_stopped = true;
    printf("test_notify: stopped the stack's worker (pid %ld)\n", pid);
}

/* scripts/up --no-build, with the build this test used: starts the stack's worker again. */
static bool restore_stack_worker(void)
{
    if (!stack_worker_stopped)
        return true;
    const char *src = getenv("CHAT_TEST_SOURCE_DIR");
    char cmd[12800];
    snprintf(cmd, sizeof cmd, "CHAT_BUILD_DIR='%s' '%s/scripts/up' --no-build >>'%s/logs/test_notify-up.log' 2>&1",
             stack.build_dir, src && src[0] ? src : CHAT_SOURCE_DIR, stack.cfg.home);
    fflush(NULL);
    int rc = system(cmd);
    bool ok = rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
    printf("test_notify: scripts/up --no-build to restore the stack's worker: %s\n",
           ok ? "done" : "FAILED (the stack has no worker now; see logs/test_notify-up.log)");
    return ok;
}

/* ------------------------------------------------------------------ helpers */

static void chatctl_ok(const char *what, char **out, int rc)
{
    ck_assert_msg(rc == 0, "chatctl %s exited %d: %s", what, rc, out && *out ? *out : "");
    if (out) {
        free(*out);
        *out = NULL;
    }
}

/* Posts n messages "<prefix> 1".."<prefix> n" from `from`, in order, each acked by the api role
 * (chat.api.v1.post) before the next, over one NATS connection: a burst takes milliseconds, not a
 * process start per message (20 chatctl runs took 3.8 s on a loaded machine, past the grace the
 * burst must fit in). */
static void send_n(const char *conv, const char *from, const char *prefix, int n)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "NATS %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    for (int i = 1; i <= n; i++) {
        char text[128], cmid[48];
        snprintf(text, sizeof text, "%s %d", prefix, i);
        test_stack_unique_id("n", cmid, sizeof cmid);
        Chat__V1__Post post = CHAT__V1__POST__INIT;
        post.conv = (char *)conv;
        post.cmid = cmid;
        post.sender = (char *)from;
        post.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
        post.body = text;
        Chat__V1__PostRequest q = CHAT__V1__POST_REQUEST__INIT;
        q.post = &post;
        uint8_t buf[512];
        size_t len = chat__v1__post_request__pack(&q, buf);
        natsMsg *m = NULL;
        s = natsConnection_Request(&m, nc, "chat.api.v1.post", buf, (int)len, 10000);
        ck_assert_msg(s == NATS_OK, "post %d of %s: %s", i, prefix, natsStatus_GetText(s));
        Chat__V1__PostReply *r = chat__v1__post_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                              (const uint8_t *)natsMsg_GetData(m));
        ck_assert_msg(r && (r->status == NULL || r->status->code[0] == '\0') && r->seq > 0,
                      "post %d of %s: %s %s", i, prefix, r && r->status ? r->status->code : "malformed reply",
                      r && r->status ? r->status->message : "");
        chat__v1__post_reply__free_unpacked(r, NULL);
        natsMsg_Destroy(m);
    }
    natsConnection_Destroy(nc);
}

static void set_seen(const char *conv, const char *user, int seq)
{
    PGconn *pg = PQconnectdb(stack.cfg.pg_dsn);
    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "PostgreSQL: %s", PQerrorMessage(pg));
    char s[16];
    snprintf(s, sizeof s, "%d", seq);
    const char *params[] = {conv, user, s};
    PGresult *r = PQexecParams(pg,
                               "UPDATE conversation_members SET delivered_seq = $3::bigint, updated_at = now()"
                               " WHERE conversation_id = $1 AND user_id = $2",
                               3, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(r), "1") == 0;
    char err[256];
    snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(pg);
    ck_assert_msg(ok, "setting delivered_seq of %s in %s: %s", user, conv, err);
}

/* Checks one push: one conversation with unread/last_seq, the newest from `from` with seq last. */
static void check_push(json_t *p, const char *user, const char *conv, int unread, const char *from, const char *preview)
{
    ck_assert_msg(test_str(p, "user") && strcmp(test_str(p, "user"), user) == 0, "user: %s", test_json(p));
    json_t *convs = json_object_get(p, "conversations");
    ck_assert_msg(json_array_size(convs) == 1, "one conversation expected: %s", test_json(p));
    json_t *c = json_array_get(convs, 0);
    ck_assert_msg(test_str(c, "conv") && strcmp(test_str(c, "conv"), conv) == 0, "conv: %s", test_json(p));
    ck_assert_msg(test_int(c, "unread") == unread, "unread %d expected: %s", unread, test_json(p));
    ck_assert_msg(test_int(c, "last_seq") == unread, "last_seq %d expected: %s", unread, test_json(p));
    ck_assert_msg(test_int(p, "unread_total") == unread, "unread_total %d expected: %s", unread, test_json(p));
    json_t *nw = json_object_get(p, "newest");
    ck_assert_msg(json_is_object(nw), "no newest: %s", test_json(p));
    ck_assert_msg(test_str(nw, "conv") && strcmp(test_str(nw, "conv"), conv) == 0, "newest.conv: %s", test_json(p));
    ck_assert_msg(test_int(nw, "seq") == unread, "newest.seq %d expected: %s", unread, test_json(p));
    ck_assert_msg(test_str(nw, "from") && strcmp(test_str(nw, "from"), from) == 0, "newest.from: %s", test_json(p));
    int64_t now_ms = (int64_t)time(NULL) * 1000;
    ck_assert_msg(test_int(nw, "ts") > now_ms - 600000 && test_int(nw, "ts") < now_ms + 60000, "newest.ts: %s",
                  test_json(p));
    if (preview)
        ck_assert_msg(test_str(nw, "preview") && strcmp(test_str(nw, "preview"), preview) == 0,
                      "newest.preview \"%s\" expected: %s", preview, test_json(p));
    else
        ck_assert_msg(json_object_get(nw, "preview") == NULL, "a preview although CHAT_PUSH_PREVIEW=0: %s",
                      test_json(p));
}

static double metric(const char *listen, const char *name)
{
    char url[128], *body = NULL;
    long status = 0;
    snprintf(url, sizeof url, "http://%s/metrics", listen);
    if (!http_get(url, &status, &body) || status != 200) {
        free(body);
        return -1;
    }
    double v = -1;
    size_t n = strlen(name);
    for (char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, name, n) == 0 && line[n] == ' ')
            v = strtod(line + n + 1, NULL);
    free(body);
    return v;
}

/* A connection and JetStream context to the stack's NATS for one check; false when there is none. */
static bool js_open(natsConnection **nc, jsCtx **js)
{
    *nc = NULL;
    *js = NULL;
    return natsConnection_ConnectTo(nc, stack.cfg.nats_url) == NATS_OK &&
           natsConnection_JetStream(js, *nc, NULL) == NATS_OK;
}

static void js_close(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* Deletes the notify role's consumer; true when it is gone. */
static bool delete_notify_consumer(void)
{
    natsConnection *nc;
    jsCtx *js;
    jsErrCode jerr = 0;
    bool ok = js_open(&nc, &js) && (js_DeleteConsumer(js, NOTIFY_STREAM, NOTIFY_CONSUMER, NULL, &jerr) == NATS_OK ||
                                    jerr == JSConsumerNotFoundErr);
    js_close(nc, js);
    return ok;
}

/* Waits up to 10 s until a notifier created its consumer; fails the test unless it was created
 * with DeliverPolicy new. */
static bool wait_notify_consumer(void)
{
    natsConnection *nc;
    jsCtx *js;
    bool open = js_open(&nc, &js), ok = false;
    for (int i = 0; open && i < 100 && !ok; i++) {
        jsConsumerInfo *ci = NULL;
        if (js_GetConsumerInfo(&ci, js, NOTIFY_STREAM, NOTIFY_CONSUMER, NULL, NULL) == NATS_OK && ci) {
            ck_assert_msg(ci->Config->DeliverPolicy == js_DeliverNew,
                          "the notify consumer was created with DeliverPolicy %d, not new",
                          (int)ci->Config->DeliverPolicy);
            ok = true;
        } else {
            usleep(100000);
        }
        jsConsumerInfo_Destroy(ci);
    }
    js_close(nc, js);
    return ok;
}

/* Waits up to 10 s until CHAT_EVENTS holds event seq of conv as its last on chat.evt.<conv>: the
 * ingest publishes it just after the commit that answered the send. */
static bool wait_event(const char *conv, uint64_t seq)
{
    natsConnection *nc;
    jsCtx *js;
    char subject[128];
    snprintf(subject, sizeof subject, "chat.evt.%s", conv);
    bool open = js_open(&nc, &js), ok = false;
    for (int i = 0; open && i < 100 && !ok; i++) {
        natsMsg *m = NULL;
        if (js_GetLastMsg(&m, js, NOTIFY_STREAM, subject, NULL, NULL) == NATS_OK) {
            Chat__V1__Event *e =
                chat__v1__event__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
            ok = e && e->seq == seq;
            if (e)
                chat__v1__event__free_unpacked(e, NULL);
        }
        natsMsg_Destroy(m);
        if (!ok)
            usleep(100000);
    }
    js_close(nc, js);
    return ok;
}

/* ------------------------------------------------------------------ cases */

/* A fresh 1:1 conversation (made with chatctl) of a new user alice and a new user named after name. */
static void one_to_one(const char *name, char alice[80], char other[80], char conv[80])
{
    test_stack_unique_id("alice", alice, 80);
    test_stack_unique_id(name, other, 80);
    test_stack_unique_id("conv", conv, 80);
    char *out = NULL;
    chatctl_ok("conv create", &out, test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, other, NULL));
}

START_TEST(burst_gives_one_push)
{
    char alice[80], bob[80], conv[80];
    one_to_one("bob", alice, bob, conv);

    int64_t t0 = test_mono_ms();
    send_n(conv, alice, "burst message", 20);
    int64_t burst_ms = test_mono_ms() - t0;
    ck_assert_msg(burst_ms < GRACE_MS, "the 20 sends took %lld ms, longer than the grace: the test cannot tell",
                  (long long)burst_ms);
    json_t *p = wait_pushes(bob, 200, 1, GRACE_MS + 10000);
    ck_assert_msg(json_array_size(p) == 1, "no push for %s within %d ms", bob, GRACE_MS + 10000);
    int64_t latency = json_integer_value(json_object_get(json_array_get(p, 0), "_at_ms")) - t0;
    json_decref(p);
    usleep(5000 * 1000); /* the later messages of the burst come due and must find nothing new */
    p = pushes_for(bob, -1);
    ck_assert_msg(json_array_size(p) == 1, "%zu pushes for %s, one expected: %s", json_array_size(p), bob,
                  test_json(p));
    check_push(json_array_get(p, 0), bob, conv, 20, alice, "burst message 20");
    json_decref(p);
    p = pushes_for(alice, -1);
    ck_assert_msg(json_array_size(p) == 0, "a push for the sender: %s", test_json(p));
    json_decref(p);
    ck_assert_msg(metric(notify_listen, "chat_notify_pushes_total") >= 1, "chat_notify_pushes_total not counted");
    ck_assert_msg(metric(notify_listen, "chat_notify_pending") >= 0, "chat_notify_pending missing");
    printf("test_notify: burst of 20 sent in %lld ms; the push came %lld ms after the first send (grace %d ms)\n",
           (long long)burst_ms, (long long)latency, GRACE_MS);
}
END_TEST

START_TEST(seen_within_grace_gives_none)
{
    char alice[80], dave[80], erin[80], conv[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("dave", dave, sizeof dave);
    test_stack_unique_id("erin", erin, sizeof erin);
    test_stack_unique_id("conv", conv, sizeof conv);
    char *out = NULL;
    chatctl_ok("conv create", &out, test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, dave, erin, NULL));
    int64_t t0 = test_mono_ms();
    send_n(conv, alice, "seen message", 3);
    set_seen(conv, dave, 3);
    int64_t seen_ms = test_mono_ms() - t0;
    ck_assert_msg(seen_ms < GRACE_MS, "sending and marking seen took %lld ms, longer than the grace",
                  (long long)seen_ms);
    /* erin did not look: her push shows the notifier handled these messages */
    json_t *p = wait_pushes(erin, 200, 1, GRACE_MS + 10000);
    ck_assert_msg(json_array_size(p) == 1, "no push for %s (who did not see the messages)", erin);
    check_push(json_array_get(p, 0), erin, conv, 3, alice, "seen message 3");
    json_decref(p);
    usleep(3000 * 1000);
    p = pushes_for(dave, -1);
    ck_assert_msg(json_array_size(p) == 0, "a push for %s, who saw the messages within the grace: %s", dave,
                  test_json(p));
    json_decref(p);
}
END_TEST

START_TEST(failing_webhook_pushes_after_recovery)
{
    char alice[80], frank[80], conv[80];
    one_to_one("frank", alice, frank, conv);
    double failures0 = metric(notify_listen, "chat_notify_push_failures_total");

    atomic_store(&hook.mode, HOOK_ERROR);
    int64_t t0 = test_mono_ms();
    send_n(conv, alice, "while down", 5);
    json_t *p = wait_pushes(frank, 500, 1, GRACE_MS + 10000);
    ck_assert_msg(json_array_size(p) >= 1, "no POST for %s while the receiver answers 500", frank);
    json_decref(p);
    usleep(3000 * 1000);
    atomic_store(&hook.mode, HOOK_HANG); /* accepts, reads, never answers: the 5 s timeout */
    usleep(6000 * 1000);
    atomic_store(&hook.mode, HOOK_DOWN); /* connections refused */
    usleep(4000 * 1000);
    int failed_posts = (int)json_array_size(p = pushes_for(frank, -1));
    json_decref(p);
    p = pushes_for(frank, 200);
    ck_assert_msg(json_array_size(p) == 0, "a push answered 200 while the receiver was failing: %s", test_json(p));
    json_decref(p);
    atomic_store(&hook.mode, HOOK_OK);
    int64_t recovered = test_mono_ms();

    p = wait_pushes(frank, 200, 1, 90000);
    ck_assert_msg(json_array_size(p) >= 1, "no push for %s within 90 s of the receiver's recovery", frank);
    int64_t after = json_integer_value(json_object_get(json_array_get(p, 0), "_at_ms")) - recovered;
    json_decref(p);
    usleep(3000 * 1000);
    p = pushes_for(frank, 200);
    ck_assert_msg(json_array_size(p) == 1, "%zu pushes answered 200 for %s, one expected: %s", json_array_size(p),
                  frank, test_json(p));
    check_push(json_array_get(p, 0), frank, conv, 5, alice, "while down 5");
    json_decref(p);
    double failures = metric(notify_listen, "chat_notify_push_failures_total");
    ck_assert_msg(failures > failures0, "chat_notify_push_failures_total did not grow (%.0f -> %.0f)", failures0,
                  failures);
    printf("test_notify: webhook failing for %lld ms (%d POSTs for the user refused, hung or not accepted); "
           "the push came %lld ms after it recovered\n",
           (long long)(recovered - t0), failed_posts, (long long)after);
}
END_TEST

START_TEST(killed_notifier_loses_nothing)
{
    char alice[80], gina[80], conv[80];
    one_to_one("gina", alice, gina, conv);
    int64_t t0 = test_mono_ms();
    send_n(conv, alice, "before the kill", 5);
    kill(notify_pid, SIGKILL);
    waitpid(notify_pid, NULL, 0);
    notify_pid = -1;
    int64_t killed = test_mono_ms() - t0;
    ck_assert_msg(killed < GRACE_MS, "sending and killing took %lld ms, longer than the grace", (long long)killed);

    notify_pid = start_worker("notify2", "notify", notify_listen, sizeof notify_listen, "0");
    ck_assert_msg(notify_pid > 0, "the second notifier did not start");
    json_t *p = wait_pushes(gina, 200, 1, 60000);
    ck_assert_msg(json_array_size(p) >= 1, "no push for %s within 60 s after the notifier was killed", gina);
    int64_t latency = json_integer_value(json_object_get(json_array_get(p, 0), "_at_ms")) - t0;
    json_decref(p);
    usleep(3000 * 1000);
    p = pushes_for(gina, 200);
    ck_assert_msg(json_array_size(p) == 1, "%zu pushes for %s, one expected: %s", json_array_size(p), gina,
                  test_json(p));
    check_push(json_array_get(p, 0), gina, conv, 5, alice, NULL);
    json_decref(p);
    printf("test_notify: notifier killed %lld ms after the first send; a new one pushed %lld ms after it\n",
           (long long)killed, (long long)latency);
}
END_TEST

START_TEST(notifier_killed_during_a_push_loses_nothing)
{
    char alice[80], hank[80], conv[80];
    one_to_one("hank", alice, hank, conv);
    atomic_store(&hook.mode, HOOK_HANG); /* the POST is read and never answered */
    send_n(conv, alice, "in flight", 3);
    json_t *p = wait_pushes(hank, 0, 1, GRACE_MS + 10000);
    ck_assert_msg(json_array_size(p) == 1, "no POST for %s reached the hanging receiver", hank);
    json_decref(p);
    kill(notify_pid, SIGKILL); /* while its POST waits: the member is claimed, the requests unacked */
    waitpid(notify_pid, NULL, 0);
    notify_pid = -1;
    int64_t killed = test_mono_ms();
    atomic_store(&hook.mode, HOOK_OK);
    notify_pid = start_worker("notify3", "notify", notify_listen, sizeof notify_listen, "1");
    ck_assert_msg(notify_pid > 0, "the third notifier did not start");
    p = wait_pushes(hank, 200, 1, 75000);
    ck_assert_msg(json_array_size(p) >= 1, "no push for %s within 75 s after the notifier died in a POST", hank);
    int64_t latency = json_integer_value(json_object_get(json_array_get(p, 0), "_at_ms")) - killed;
    json_decref(p);
    usleep(3000 * 1000);
    p = pushes_for(hank, 200);
    ck_assert_msg(json_array_size(p) == 1, "%zu pushes for %s, one expected: %s", json_array_size(p), hank,
                  test_json(p));
    check_push(json_array_get(p, 0), hank, conv, 3, alice, "in flight 3");
    json_decref(p);
    printf("test_notify: notifier killed in the middle of a POST; a new one pushed %lld ms later "
           "(ack wait and claim: %d s)\n",
           (long long)latency, 30);
}
END_TEST

START_TEST(fresh_consumer_skips_the_past)
{
    char alice[80], ivan[80], conv[80];
    one_to_one("ivan", alice, ivan, conv);
    /* no notifier and no consumer: what is posted now is only in CHAT_EVENTS' history */
    stop_child(&notify_pid);
    ck_assert_msg(delete_notify_consumer(), "cannot delete the consumer %s of %s", NOTIFY_CONSUMER, NOTIFY_STREAM);
    send_n(conv, alice, "before the consumer", 3);
    ck_assert_msg(wait_event(conv, 3), "the third message is not in %s within 10 s", NOTIFY_STREAM);
    notify_pid = start_worker("notify4", "notify", notify_listen, sizeof notify_listen, "1");
    ck_assert_msg(notify_pid > 0, "the fourth notifier did not start");
    ck_assert_msg(wait_notify_consumer(), "the new notifier did not create %s within 10 s", NOTIFY_CONSUMER);
    int64_t created = test_mono_ms();
    /* ivan is behind on three messages past their grace: delivered to the notifier they would be
     * pushed at once */
    usleep((GRACE_MS + 3000) * 1000);
    json_t *p = pushes_for(ivan, -1);
    ck_assert_msg(json_array_size(p) == 0, "a new consumer pushed messages posted before it existed: %s", test_json(p));
    json_decref(p);
    /* what comes after is pushed, and covers everything unread */
    send_n(conv, alice, "after the consumer", 1);
    p = wait_pushes(ivan, 200, 1, GRACE_MS + 10000);
    ck_assert_msg(json_array_size(p) == 1, "no push for %s for a message posted after the consumer was created", ivan);
    json_decref(p);
    usleep(3000 * 1000);
    p = pushes_for(ivan, -1);
    ck_assert_msg(json_array_size(p) == 1, "%zu pushes for %s, one expected: %s", json_array_size(p), ivan,
                  test_json(p));
    check_push(json_array_get(p, 0), ivan, conv, 4, alice, "after the consumer 1");
    json_decref(p);
    printf("test_notify: a new consumer pushed none of 3 older messages in %lld ms, then one push for a new one\n",
           (long long)(test_mono_ms() - created));
}
END_TEST

/* A message deleted within the grace is in no push: neither counted nor previewed (issue 19,
 * finding 2). alice posts a visible message and then one she deletes at once (through the
 * gateway); bob's push counts the visible one and previews it, and no push has the deleted text. */
START_TEST(deleted_within_grace_not_previewed)
{
    char alice[80], kim[80], conv[80], cmid[80];
    one_to_one("kim", alice, kim, conv);
    test_stack_unique_id("del", cmid, sizeof cmid);
    ws_client *a = test_connect_user(&stack, alice);
    int64_t t0 = test_mono_ms();
    send_n(conv, alice, "visible message", 1);
    send_n(conv, alice, "SECRET deleted message", 1);
    json_t *del = json_pack("{s:s, s:s, s:s, s:i}", "type", "delete", "conv", conv, "cmid", cmid, "target", 2);
    ck_assert_msg(ws_client_send_json(a, del) == CHAT_OK, "sending the delete: %s", ws_client_error(a));
    json_decref(del);
    json_t *ack = NULL;
    ck_assert_msg(test_recv_type(a, "ack", 5000, &ack, NULL) == CHAT_OK, "the delete was not acked");
    ck_assert_msg(test_int(ack, "seq") == 3, "the delete got %s, want seq 3", test_json(ack));
    json_decref(ack);
    int64_t deleted_ms = test_mono_ms() - t0;
    ck_assert_msg(deleted_ms < GRACE_MS, "posting and deleting took %lld ms, longer than the grace",
                  (long long)deleted_ms);
    json_t *p = wait_pushes(kim, 200, 1, GRACE_MS + 10000);
    ck_assert_msg(json_array_size(p) == 1, "no push for %s (one visible message is unread)", kim);
    usleep(2000 * 1000); /* the delete's request comes due too and must add nothing */
    json_decref(p);
    p = pushes_for(kim, -1);
    char *text = json_dumps(p, JSON_COMPACT);
    ck_assert_msg(text && strstr(text, "SECRET") == NULL, "a push carries the deleted text: %s", text);
    free(text);
    json_t *first = json_array_get(p, 0), *nw = json_object_get(first, "newest");
    ck_assert_msg(test_int(first, "unread_total") == 1, "the deleted message was counted unread: %s", test_json(p));
    ck_assert_msg(test_int(nw, "seq") == 1 && strcmp(test_str(nw, "preview") ? test_str(nw, "preview") : "",
                                                     "visible message 1") == 0,
                  "newest should be the visible message 1: %s", test_json(p));
    json_decref(p);
    ws_client_destroy(a);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_notify");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    hook_start();
    stop_stack_worker();
    core_pid = start_worker("core", "ingest,api,archive", core_listen, sizeof core_listen, "1");
    notify_pid = start_worker("notify", "notify", notify_listen, sizeof notify_listen, "1");
    int failed = 1;
    if (core_pid > 0 && notify_pid > 0) {
        /* the new ingest takes its partitions within a second or so: wait until a post is stored */
        char conv[80], user[80];
        test_stack_unique_id("warm", conv, sizeof conv);
        test_stack_unique_id("warm", user, sizeof user);
        int rc = test_stack_chatctl(&stack, NULL, "conv", "create", conv, user, NULL);
        for (int i = 0; rc == 0 && i < 20; i++) {
            rc = test_stack_chatctl(&stack, NULL, "send", conv, "--from", user, "warm-up", NULL);
            if (rc == 0)
                break;
            sleep(1);
        }
        printf("test_notify: receiver on 127.0.0.1:%d, workers on %s (core) and %s (notify); warm-up %s\n", hook.port,
               core_listen, notify_listen, rc == 0 ? "stored" : "FAILED");
        fflush(stdout);
        Suite *s = suite_create("notify");
        TCase *tc = tcase_create("core");
        tcase_set_timeout(tc, 150);
        tcase_add_test(tc, burst_gives_one_push);
        tcase_add_test(tc, seen_within_grace_gives_none);
        tcase_add_test(tc, deleted_within_grace_not_previewed);
        tcase_add_test(tc, failing_webhook_pushes_after_recovery);
        tcase_add_test(tc, killed_notifier_loses_nothing);
        tcase_add_test(tc, notifier_killed_during_a_push_loses_nothing);
        tcase_add_test(tc, fresh_consumer_skips_the_past);
        suite_add_tcase(s, tc);
        SRunner *sr = srunner_create(s);
        srunner_set_fork_status(sr, CK_NOFORK);
        srunner_run_all(sr, CK_VERBOSE);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
    }
    atomic_store(&hook.mode, HOOK_OK);
    stop_child(&notify_pid);
    stop_child(&core_pid);
    printf("test_notify: %d POSTs received in all\n", hook_total());
    hook_stop();
    if (!restore_stack_worker())
        failed = 1;
    test_stack_free(&stack);
    curl_global_cleanup();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
