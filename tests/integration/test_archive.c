/* Hot and cold storage end to end (docs/storage.md) with CHAT_PARTITION_SPAN=1m and
 * CHAT_HOT_RETENTION=2m: a database of its own on the stack's PostgreSQL, its own nats-server,
 * workers and S3-compatible server (chat_install_s3), so the stack is not touched. Check child:
 * the test; parent: the clean-up. The scenario is described above archive_end_to_end. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "test_stack.h"

#define PROG "test_archive"
#define NCONV 20
#define BUCKET "chat-archive"
#define S3_PREFIX "test"

static test_stack stack;
static int owner_pid;       /* the test program's pid (the Check child's parent): names its database and directory */
static char work[PATH_MAX]; /* everything of this test: NATS store, S3 data, archives, logs */
static char dbname[64];
static char dsn[4096], admin_dsn[4096];
static char nats_url[64], s3_endpoint[64], s3_url[128], file_url[PATH_MAX + 64], blocked_url[PATH_MAX + 64];
static char pids_path[PATH_MAX + 32];
static char convs[NCONV][32];
static PGconn *pg;
static natsConnection *nc;
static jsCtx *js;

/* ------------------------------------------------------------------ processes of this test */

typedef struct proc {
    pid_t pid;
    char name[32];
    char listen[64];
    char log[PATH_MAX + 64];
} proc;

static proc nats_proc, s3_proc, worker_a, worker_b;

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts argv with env overrides ("NAME=value", NULL-terminated, may be NULL); stdout and stderr
 * go to log, or stderr to *err_pipe (read end) when err_pipe is not NULL. The child dies with the
 * test (PR_SET_PDEATHSIG), and its pid goes into pids_path for the final clean-up. */
static pid_t spawn(const char *log, char *const argv[], const char *const env[], int *err_pipe, const char *out_path)
{
    int fds[2] = {-1, -1};
    if (err_pipe)
        ck_assert(pipe(fds) == 0);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        int in = open("/dev/null", O_RDONLY);
        int lf = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
        int of = out_path ? open(out_path, O_WRONLY | O_TRUNC | O_CREAT, 0644) : lf;
        if (in < 0 || lf < 0 || of < 0)
            _exit(127);
        dup2(in, 0);
        dup2(of, 1);
        dup2(err_pipe ? fds[1] : lf, 2);
        if (err_pipe)
            close(fds[0]);
        execvp(argv[0], argv);
        _exit(127);
    }
    if (err_pipe) {
        close(fds[1]);
        *err_pipe = fds[0];
    }
    FILE *f = fopen(pids_path, "a");
    if (f) {
        fprintf(f, "%d\n", (int)pid);
        fclose(f);
    }
    return pid;
}

/* Sends sig and reaps (SIGTERM: up to 10 s, then SIGKILL). */
static void stop_pid(pid_t pid, int sig)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    int64_t t0 = test_mono_ms();
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return;
        if (sig != SIGKILL && test_mono_ms() - t0 > 10000) {
            kill(pid, SIGKILL);
            sig = SIGKILL;
        }
        usleep(10000);
    }
}

static void stop_proc(proc *p)
{
    stop_pid(p->pid, SIGTERM);
    p->pid = 0;
}

/* GET http://listen/path; the status, 0 when nothing answered. */
static int http_status(const char *listen, const char *path)
{
    char host[64];
    snprintf(host, sizeof host, "%s", listen);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return 0;
    }
    char req[256], resp[512] = "";
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, listen);
    int status = 0;
    if (write(fd, req, (size_t)n) == n && read(fd, resp, sizeof resp - 1) > 0)
        sscanf(resp, "HTTP/1.%*d %d", &status);
    close(fd);
    return status;
}

static void start_worker(proc *p, const char *name, const char *roles, const char *archive_url)
{
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->listen, sizeof p->listen, "127.0.0.1:%d", test_free_port());
    snprintf(p->log, sizeof p->log, "%s/%s.log", work, name);
    char bin[sizeof stack.build_dir + 32];
    snprintf(bin, sizeof bin, "%s/bin/chat-worker", stack.build_dir);
    static char url_env[PATH_MAX + 128];
    snprintf(url_env, sizeof url_env, "CHAT_ARCHIVE_URL=%s", archive_url);
    const char *env[] = {url_env, NULL};
    char *argv[] = {bin, "--roles", (char *)roles, "--worker-listen", p->listen, NULL};
    p->pid = spawn(p->log, argv, env, NULL, NULL);
    int64_t t0 = test_mono_ms();
    while (http_status(p->listen, "/readyz") != 200) {
        int st;
        ck_assert_msg(waitpid(p->pid, &st, WNOHANG) == 0, "worker %s exited; see %s", name, p->log);
        ck_assert_msg(test_mono_ms() - t0 < 20000, "worker %s not ready within 20 s; see %s", name, p->log);
        usleep(50000);
    }
    printf(PROG ": worker %s (pid %d, roles %s) ready in %lld ms\n", name, (int)p->pid, roles,
           (long long)(test_mono_ms() - t0));
}

/* The first of candidates that is an executable file (dir prefixes from the environment). */
static bool find_file(char *out, size_t outsz, const char *rel, bool exec)
{
    const char *roots[] = {getenv("CHAT_DEPS"), NULL, NULL};
    char src[PATH_MAX];
    const char *sd = getenv("CHAT_TEST_SOURCE_DIR");
    snprintf(src, sizeof src, "%s/.deps", sd ? sd : ".");
    roots[1] = src;
    for (int i = 0; i < 2; i++) {
        if (roots[i] == NULL)
            continue;
        int n = snprintf(out, outsz, "%s/%s", roots[i], rel);
        if (n > 0 && (size_t)n < outsz && access(out, exec ? X_OK : R_OK) == 0)
            return true;
    }
    return false;
}

static void start_nats(void)
{
    char bin[PATH_MAX];
    const char *sys[] = {"/usr/sbin/nats-server", "/usr/bin/nats-server"};
    if (!find_file(bin, sizeof bin, "nats/usr/sbin/nats-server", true) &&
        !find_file(bin, sizeof bin, "nats/usr/bin/nats-server", true)) {
        for (int i = 0; i < 2; i++)
            if (access(sys[i], X_OK) == 0)
                snprintf(bin, sizeof bin, "%s", sys[i]);
    }
    ck_assert_msg(access(bin, X_OK) == 0, "no nats-server (scripts/up installs it into .deps)");
    int port = test_free_port();
    snprintf(nats_url, sizeof nats_url, "nats://127.0.0.1:%d", port);
    char portv[16], store[PATH_MAX + 16];
    snprintf(portv, sizeof portv, "%d", port);
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(nats_proc.log, sizeof nats_proc.log, "%s/nats.log", work);
    char *argv[] = {bin, "-a", "127.0.0.1", "-p", portv, "-js", "-sd", store, NULL};
    nats_proc.pid = spawn(nats_proc.log, argv, NULL, NULL, NULL);
    int64_t t0 = test_mono_ms();
    while (!port_open(port)) {
        ck_assert_msg(test_mono_ms() - t0 < 10000, "nats-server did not listen; see %s", nats_proc.log);
        usleep(50000);
    }
}

static int s3_port;

static void start_s3(void)
{
    char script[PATH_MAX];
    ck_assert_msg(find_file(script, sizeof script, "s3/s3-server.js", false),
                  "no S3-compatible server: scripts/test installs it (scripts/lib/install.sh chat_install_s3)");
    if (s3_port == 0) {
        s3_port = test_free_port();
        snprintf(s3_endpoint, sizeof s3_endpoint, "http://127.0.0.1:%d", s3_port);
    }
    char portv[16], data[PATH_MAX + 16];
    snprintf(portv, sizeof portv, "%d", s3_port);
    snprintf(data, sizeof data, "%s/s3", work);
    snprintf(s3_proc.log, sizeof s3_proc.log, "%s/s3.log", work);
    char *argv[] = {"node", script, "127.0.0.1", portv, data, BUCKET, NULL};
    s3_proc.pid = spawn(s3_proc.log, argv, NULL, NULL, NULL);
    int64_t t0 = test_mono_ms();
    while (!port_open(s3_port)) {
        int st;
        ck_assert_msg(waitpid(s3_proc.pid, &st, WNOHANG) == 0, "the S3 server exited; see %s", s3_proc.log);
        ck_assert_msg(test_mono_ms() - t0 < 15000, "the S3 server did not listen; see %s", s3_proc.log);
        usleep(50000);
    }
    printf(PROG ": S3 server (pid %d) on %s\n", (int)s3_proc.pid, s3_endpoint);
}

/* ------------------------------------------------------------------ PostgreSQL */

/* The first value of the first row of sql with text params (NULL-terminated); "" when no row;
 * the caller frees. */
static char *q1(const char *sql, ...)
{
    const char *params[8];
    int n = 0;
    va_list ap;
    va_start(ap, sql);
    for (const char *p; n < 8 && (p = va_arg(ap, const char *)) != NULL;)
        params[n++] = p;
    va_end(ap);
    PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql,
                  PQresultErrorMessage(r));
    char *v = strdup(
        PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return v;
}

static int64_t q1i(const char *sql, ...)
{
    const char *params[8];
    int n = 0;
    va_list ap;
    va_start(ap, sql);
    for (const char *p; n < 8 && (p = va_arg(ap, const char *)) != NULL;)
        params[n++] = p;
    va_end(ap);
    PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    int64_t v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    return v;
}

static void admin_exec(const char *sql)
{
    PGconn *a = PQconnectdb(admin_dsn);
    ck_assert_msg(PQstatus(a) == CONNECTION_OK, "connect as postgres: %s", PQerrorMessage(a));
    PGresult *r = PQexec(a, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(a);
}

/* Seconds since the epoch on the database's clock (the one created_at and the retention use). */
static double db_now(void)
{
    char *v = q1("SELECT extract(epoch FROM clock_timestamp())", NULL);
    double t = strtod(v, NULL);
    free(v);
    return t;
}

static void sleep_until_db(double when)
{
    for (;;) {
        double left = when - db_now();
        if (left <= 0)
            return;
        usleep(left > 1 ? 1000000 : (useconds_t)(left * 1e6) + 1000);
    }
}

/* ------------------------------------------------------------------ NATS API */

static natsMsg *api(const char *method, const ProtobufCMessage *req)
{
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len + 1);
    protobuf_c_message_pack(req, buf);
    char subject[128];
    snprintf(subject, sizeof subject, "%s%s", CHAT_API_PREFIX, method);
    natsMsg *m = NULL;
    natsStatus s = natsConnection_Request(&m, nc, subject, buf, (int)len, 15000);
    free(buf);
    ck_assert_msg(s == NATS_OK, "request %s: %s", subject, natsStatus_GetText(s));
    return m;
}

static void create_conversation(const char *conv)
{
    char *members[] = {"u-a", "u-b"};
    Chat__V1__ConvCreateRequest q = CHAT__V1__CONV_CREATE_REQUEST__INIT;
    q.conv = (char *)conv;
    q.members = members;
    q.n_members = 2;
    q.owner = "u-a";
    natsMsg *m = api("conv.create", &q.base);
    Chat__V1__ConvCreateReply *r = chat__v1__conv_create_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                                       (const uint8_t *)natsMsg_GetData(m));
    ck_assert_msg(r && (!r->status || !r->status->code[0]), "conv.create %s: %s", conv,
                  r && r->status ? r->status->message : "malformed");
    chat__v1__conv_create_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
}

/* Publishes one post to CHAT_IN as a gateway would (Nats-Msg-Id conv/cmid). */
static void post(const char *conv, const char *cmid, Chat__V1__EventKind kind, const char *body, uint64_t target,
                 const char *sender)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)conv;
    p.cmid = (char *)cmid;
    p.sender = (char *)sender;
    p.kind = kind;
    p.body = (char *)body;
    p.meta_json = kind == CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT && cmid[strlen(cmid) - 1] == '7' ? "{\"n\": 7}" : "";
    p.target = target;
    if (kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION) {
        p.emoji = "\xF0\x9F\x91\x8D";
        p.reaction_on = true;
    }
    p.sent_ms = 0;
    p.gateway = "";
    p.session = "";
    size_t len = chat__v1__post__get_packed_size(&p);
    uint8_t *buf = malloc(len + 1);
    chat__v1__post__pack(&p, buf);
    char subject[160], id[160];
    chat_subject_in_backend(subject, sizeof subject, (int)chat_partition_of(conv, (uint32_t)stack.cfg.partitions),
                            conv);
    snprintf(id, sizeof id, "%s/%s", conv, cmid);
    natsMsg *m = NULL;
    ck_assert(natsMsg_Create(&m, subject, NULL, (const char *)buf, (int)len) == NATS_OK);
    natsMsgHeader_Set(m, "Nats-Msg-Id", id);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 10000;
    jsErrCode jerr = 0;
    natsStatus s = js_PublishMsg(NULL, js, m, &po, &jerr);
    ck_assert_msg(s == NATS_OK, "publish %s: %s (%d)", subject, natsStatus_GetText(s), (int)jerr);
    natsMsg_Destroy(m);
    free(buf);
}

static int64_t stored_events(void)
{
    return q1i("SELECT coalesce(sum(last_seq), 0) FROM conversations WHERE id LIKE 'arch-%'", NULL);
}

static void wait_stored(int64_t want)
{
    int64_t t0 = test_mono_ms();
    while (stored_events() < want) {
        ck_assert_msg(test_mono_ms() - t0 < 60000, "only %lld of %lld events stored within 60 s; see %s",
                      (long long)stored_events(), (long long)want, worker_a.log);
        usleep(100000);
    }
    ck_assert_int_eq(stored_events(), want);
}

/* One burst: `texts` text messages into every conversation, then (once they are stored: the
 * ingest checks a change's target in the database) the changes of that burst. */
static int64_t expected_events;
static void burst(char tag, int texts)
{
    for (int c = 0; c < NCONV; c++)
        for (int i = 0; i < texts; i++) {
            char cmid[32], body[160];
            snprintf(cmid, sizeof cmid, "%c-%d", tag, i);
            snprintf(body, sizeof body, "message %c%d of %.31s: %s", tag, i, convs[c],
                     i % 5 ? "hello" : "h\xC3\xA9llo");
            post(convs[c], cmid, CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT, body, 0, "u-a");
        }
    expected_events += (int64_t)texts * NCONV;
    wait_stored(expected_events);
    for (int c = 0; c < NCONV; c++) {
        if (tag == 'A') { /* a delete of a message of the same (first) partition */
            post(convs[c], "A-del3", CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE, "", 3, "u-a");
            expected_events++;
        } else if (tag == 'B') { /* changes, in the second partition, of messages of the first */
            post(convs[c], "B-del5", CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE, "", 5, "u-a");
            post(convs[c], "B-edit7", CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT, "edited seven", 7, "u-a");
            post(convs[c], "B-react8", CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION, "", 8, "u-b");
            expected_events += 3;
        }
    }
    wait_stored(expected_events);
}

static Chat__V1__HistoryReply *history(const char *conv, uint64_t before, uint32_t limit, int64_t *ms)
{
    Chat__V1__HistoryRequest q = CHAT__V1__HISTORY_REQUEST__INIT;
    q.conv = (char *)conv;
    q.user = "";
    q.before = before;
    q.limit = limit;
    int64_t t0 = test_mono_ms();
    natsMsg *m = api("history", &q.base);
    if (ms)
        *ms = test_mono_ms() - t0;
    Chat__V1__HistoryReply *r =
        chat__v1__history_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    natsMsg_Destroy(m);
    ck_assert_msg(r && (!r->status || !r->status->code[0]), "history %s before %" PRIu64 ": %s %s", conv, before,
                  r && r->status ? r->status->code : "malformed", r && r->status ? r->status->message : "");
    return r;
}

/* Pages back from the newest event to seq 1 (100 per page) and returns every page as text; checks
 * on the way that the seqs run from last_seq down to 1, each exactly once, and `more` is true on
 * every page but the last. */
static char *history_all(const char *conv)
{
    int64_t last = q1i("SELECT last_seq FROM conversations WHERE id = $1", conv, NULL);
    chat_buf out = {0}, line = {0};
    chat_buf_reset(&out);
    uint64_t before = 0, want = (uint64_t)last;
    for (int page = 0;; page++) {
        ck_assert_int_lt(page, 100);
        Chat__V1__HistoryReply *r = history(conv, before, 100, NULL);
        chat_buf_printf(&out, "page %d more=%d\n", page, (int)r->more);
        for (size_t i = 0; i < r->n_events; i++) {
            ck_assert_msg(r->events[i]->seq == want, "%s: history gave seq %" PRIu64 " where %" PRIu64 " was due", conv,
                          r->events[i]->seq, want);
            want--;
            chat_buf_reset(&line);
            chat_frame_render(chat_event_json(r->events[i]), &line);
            chat_buf_printf(&out, "%s\n", line.data);
        }
        bool more = r->more;
        if (r->n_events)
            before = r->events[r->n_events - 1]->seq;
        ck_assert_msg(more || want == 0, "%s: more=false with seqs 1..%" PRIu64 " still missing", conv, want);
        ck_assert_msg(!more || r->n_events == 100, "%s: more=true on a short page", conv);
        chat__v1__history_reply__free_unpacked(r, NULL);
        if (!more)
            break;
    }
    ck_assert_msg(want == 0, "%s: history ended above seq 1", conv);
    chat_buf_free(&line);
    return out.data;
}

/* sync as user u-b from seq 0 in every conversation, 150 events a page, until no `next`; returns
 * every page as text and checks each conversation came complete and in order. */
static char *sync_all(void)
{
    chat_buf out = {0}, line = {0};
    chat_buf_reset(&out);
    Chat__V1__SyncCursor cur[NCONV], *curp[NCONV];
    size_t ncur = NCONV;
    for (int c = 0; c < NCONV; c++) {
        chat__v1__sync_cursor__init(&cur[c]);
        cur[c].conv = convs[c];
        cur[c].after = 0;
        curp[c] = &cur[c];
    }
    uint64_t seen[NCONV] = {0};
    char nextconv[NCONV][32];
    for (int page = 0; ncur > 0; page++) {
        ck_assert_int_lt(page, 200);
        Chat__V1__SyncRequest q = CHAT__V1__SYNC_REQUEST__INIT;
        q.user = "u-b";
        q.cursors = curp;
        q.n_cursors = ncur;
        q.max_events = 150;
        q.listed_only = true;
        natsMsg *m = api("sync", &q.base);
        Chat__V1__SyncReply *r =
            chat__v1__sync_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
        natsMsg_Destroy(m);
        ck_assert_msg(r && (!r->status || !r->status->code[0]), "sync: %s", r && r->status ? r->status->message : "?");
        chat_buf_printf(&out, "page %d events=%zu\n", page, r->n_events);
        for (size_t i = 0; i < r->n_events; i++) {
            const Chat__V1__Event *e = r->events[i];
            int c = atoi(e->conv + 5);
            ck_assert_msg(e->seq == seen[c] + 1, "sync: %s seq %" PRIu64 " after %" PRIu64, e->conv, e->seq, seen[c]);
            seen[c] = e->seq;
            chat_buf_reset(&line);
            chat_frame_render(chat_event_json(e), &line);
            chat_buf_printf(&out, "%s\n", line.data);
        }
        ncur = r->n_next;
        for (size_t i = 0; i < r->n_next; i++) {
            snprintf(nextconv[i], sizeof nextconv[i], "%s", r->next[i]->conv);
            cur[i].conv = nextconv[i];
            cur[i].after = r->next[i]->after;
            chat_buf_printf(&out, "next %s %" PRIu64 "\n", nextconv[i], cur[i].after);
        }
        chat__v1__sync_reply__free_unpacked(r, NULL);
    }
    for (int c = 0; c < NCONV; c++)
        ck_assert_int_eq((int64_t)seen[c], q1i("SELECT last_seq FROM conversations WHERE id = $1", convs[c], NULL));
    chat_buf_free(&line);
    return out.data;
}

/* sync as user from the stored cursors, then its `next` pages: every conversation whose id starts
 * with prefix must come complete (seq 1..last) and in order; returns the number of pages. */
static int sync_user_pages(const char *user, const char *prefix, int nconv)
{
    Chat__V1__SyncCursor *cur = calloc((size_t)nconv + 1, sizeof *cur);
    Chat__V1__SyncCursor **curp = calloc((size_t)nconv + 1, sizeof *curp);
    char(*names)[32] = calloc((size_t)nconv + 1, sizeof *names);
    uint64_t *seen = calloc((size_t)nconv + 1, sizeof *seen);
    size_t ncur = 0;
    int page = 0;
    for (bool first = true; first || ncur > 0; first = false, page++) {
        ck_assert_int_lt(page, 100);
        Chat__V1__SyncRequest q = CHAT__V1__SYNC_REQUEST__INIT;
        q.user = (char *)user;
        q.cursors = curp;
        q.n_cursors = ncur;
        q.max_events = 1000;
        q.listed_only = !first;
        natsMsg *m = api("sync", &q.base);
        Chat__V1__SyncReply *r =
            chat__v1__sync_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
        natsMsg_Destroy(m);
        ck_assert_msg(r && (!r->status || !r->status->code[0]), "sync %s: %s", user,
                      r && r->status ? r->status->message : "?");
        for (size_t i = 0; i < r->n_events; i++) {
            const Chat__V1__Event *e = r->events[i];
            ck_assert(strncmp(e->conv, prefix, strlen(prefix)) == 0);
            int c = atoi(e->conv + strlen(prefix)) - 1;
            ck_assert(c >= 0 && c < nconv);
            ck_assert_msg(e->seq == seen[c] + 1, "sync %s: %s seq %" PRIu64 " after %" PRIu64, user, e->conv, e->seq,
                          seen[c]);
            seen[c] = e->seq;
        }
        ncur = r->n_next;
        for (size_t i = 0; i < r->n_next; i++) {
            snprintf(names[i], sizeof names[i], "%s", r->next[i]->conv);
            chat__v1__sync_cursor__init(&cur[i]);
            cur[i].conv = names[i];
            cur[i].after = r->next[i]->after;
            curp[i] = &cur[i];
        }
        chat__v1__sync_reply__free_unpacked(r, NULL);
    }
    for (int c = 0; c < nconv; c++)
        ck_assert_msg(seen[c] == 3, "sync %s: conversation %d ended at seq %" PRIu64, user, c + 1, seen[c]);
    free(cur);
    free(curp);
    free(names);
    free(seen);
    return page;
}

/* ------------------------------------------------------------------ chatctl */

typedef struct ctl_result {
    int exit;        /* exit status, -1 when killed */
    char out[65536]; /* standard output (the JSON summary, or the status lines) */
    char err[4096];  /* standard error */
} ctl_result;

static void read_file(const char *path, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* chatctl archive ARGS... with CHAT_ARCHIVE_URL=url. With pause_at: waits for its "paused after
 * STEP" line, then kills it with SIGKILL (kill -9) and reaps it. */
static void chatctl_archive(const char *url, const char *pause_at, ctl_result *res, const char *a1, const char *a2)
{
    static char url_env[PATH_MAX + 128];
    snprintf(url_env, sizeof url_env, "CHAT_ARCHIVE_URL=%s", url);
    const char *env[] = {url_env, NULL};
    char log[PATH_MAX + 32], out[PATH_MAX + 32], errp[PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/chatctl.log", work);
    snprintf(out, sizeof out, "%s/chatctl.out", work);
    snprintf(errp, sizeof errp, "%s/chatctl.err", work);
    char *argv[8] = {stack.chatctl, "archive", (char *)a1, NULL, NULL, NULL, NULL, NULL};
    int k = 3;
    if (a2)
        argv[k++] = (char *)a2;
    if (pause_at) {
        argv[k++] = "--pause-at";
        argv[k++] = (char *)pause_at;
    }
    memset(res, 0, sizeof *res);
    if (pause_at) {
        int fd = -1;
        pid_t pid = spawn(log, argv, env, &fd, out);
        char want[64];
        snprintf(want, sizeof want, "paused after %s of", pause_at);
        size_t got = 0;
        int64_t t0 = test_mono_ms();
        while (strstr(res->err, want) == NULL) {
            ck_assert_msg(test_mono_ms() - t0 < 60000, "chatctl archive did not pause after %s within 60 s: %s",
                          pause_at, res->err);
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 500) <= 0)
                continue;
            ssize_t n = read(fd, res->err + got, sizeof res->err - 1 - got);
            ck_assert_msg(n > 0, "chatctl archive ended before pausing after %s: %s", pause_at, res->err);
            got += (size_t)n;
            res->err[got] = '\0';
        }
        stop_pid(pid, SIGKILL); /* kill -9 right after the step */
        close(fd);
        res->exit = -1;
        printf(PROG ": chatctl archive run killed (-9) after %s\n", pause_at);
        return;
    }
    unlink(errp);
    pid_t pid = spawn(errp, argv, env, NULL, out);
    (void)log;
    int st = 0;
    int64_t t0 = test_mono_ms();
    while (waitpid(pid, &st, WNOHANG) == 0) {
        ck_assert_msg(test_mono_ms() - t0 < 120000, "chatctl archive %s did not end within 120 s", a1);
        usleep(20000);
    }
    res->exit = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    read_file(out, res->out, sizeof res->out);
    read_file(errp, res->err, sizeof res->err);
    printf(PROG ": chatctl archive %s%s%s (%s) -> exit %d%s%s", a1, a2 ? " " : "", a2 ? a2 : "", url, res->exit,
           strcmp(a1, "status") == 0 ? "\n" : ": ", strcmp(a1, "status") == 0 ? "" : res->out);
}

/* ------------------------------------------------------------------ the partition under test */

static char p0[64];                    /* its name */
static char p0_from[32], p0_until[32]; /* epoch seconds */
static int64_t p0_rows;

static int64_t hot_rows(void)
{
    return q1i("SELECT count(*) FROM messages WHERE created_at >= to_timestamp($1::bigint)"
               " AND created_at < to_timestamp($2::bigint)",
               p0_from, p0_until, NULL);
}

static int64_t cold_rows(void)
{
    return q1i("SELECT coalesce(sum(k.rows), 0) FROM archive_chunks k JOIN archive_objects o ON o.id = k.object_id"
               " JOIN archive_partitions a ON a.id = o.partition_id WHERE k.live AND a.partition_name = $1",
               p0, NULL);
}

/* Every object in storage under dir (the S3 server's files or a file:// archive) must be named in
 * archive_objects: no chunk the index does not know. Returns how many objects there are. */
static int check_objects_known(const char *root, const char *url_prefix, const char *suffix)
{
    int count = 0;
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "find '%s' -type f -name '*%s' 2>/dev/null", root, suffix);
    FILE *f = popen(cmd, "r");
    ck_assert(f != NULL);
    char line[PATH_MAX + 64];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        size_t rl = strlen(root), sl = strlen(suffix), ll = strlen(line);
        char url[PATH_MAX + 256];
        snprintf(url, sizeof url, "%s%.*s", url_prefix, (int)(ll - rl - sl), line + rl);
        ck_assert_msg(q1i("SELECT count(*) FROM archive_objects WHERE url = $1", url, NULL) == 1,
                      "object %s is in storage but not in archive_objects", url);
        count++;
    }
    pclose(f);
    return count;
}

/* After any step (or a kill): the partition's events are all hot or all cold, never both, never
 * fewer; storage holds only objects the index knows; history still answers. */
static void check_consistent(const char *when, const char *baseline0)
{
    int64_t hot = hot_rows(), cold = cold_rows();
    ck_assert_msg((hot == p0_rows && cold == 0) || (hot == 0 && cold == p0_rows),
                  "%s: %lld events hot and %lld cold, want %lld in exactly one tier", when, (long long)hot,
                  (long long)cold, (long long)p0_rows);
    char root[PATH_MAX + 64];
    snprintf(root, sizeof root, "%s/s3/%s", work, BUCKET);
    check_objects_known(root, "s3://" BUCKET, "._S3rver_object");
    char *h = history_all(convs[0]);
    ck_assert_msg(strcmp(h, baseline0) == 0, "%s: history of %s differs from before the archiving", when, convs[0]);
    free(h);
    printf(PROG ": %s: %lld hot, %lld cold, history intact\n", when, (long long)hot, (long long)cold);
}

static char *partition_dump(void)
{
    return q1(
        "SELECT string_agg(m::text, E'\\n' ORDER BY m.conversation_id, m.seq) FROM (SELECT conversation_id, seq,"
        " id, client_msg_id, sender_id, kind, body, meta, target_seq, emoji, reaction_on, created_at"
        " FROM messages WHERE created_at >= to_timestamp($1::bigint) AND created_at < to_timestamp($2::bigint)) m",
        p0_from, p0_until, NULL);
}

static char *dedupe_dump(void)
{
    return q1("SELECT string_agg(d::text, E'\\n' ORDER BY d.conversation_id, d.seq) FROM message_dedupe d"
              " WHERE d.created_at >= to_timestamp($1::bigint) AND d.created_at < to_timestamp($2::bigint)",
              p0_from, p0_until, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ the test */

/* 2,000 messages (and deletes, an edit, a reaction) in 20 conversations go in over three
 * partitions; the second partition is missing on purpose (the ingest makes it). The test waits
 * once, until the first partition is older than the retention:
 *   1. S3 down: `chatctl archive run` fails and says why, the partition stays hot, history answers;
 *   2. S3 back: the run is killed (-9) after each step in turn and run again: after every kill no
 *      event is lost or in both tiers, no object is unknown to the index; then history pages back
 *      from the newest to seq 1 across the boundary and sync from 0 give exactly what they gave
 *      before the archiving (every event once, in order); cold page latency, cache cold and warm;
 *   3. restore of the partition from S3, compared row for row (and its dedupe rows);
 *   4. the archive role of a worker archives it again to file://, which first fails (a file stands
 *      where the archive's directory should be) and is retried by the role once that is fixed. */
START_TEST(archive_end_to_end)
{
    int64_t t_start = test_mono_ms();
    /* --- set-up: database, NATS, S3 server, settings for every process we start */
    snprintf(work, sizeof work, "%s/test-archive-%d", stack.cfg.home, owner_pid);
    snprintf(pids_path, sizeof pids_path, "%s/pids", work);
    mkdir(stack.cfg.home, 0755);
    ck_assert_msg(mkdir(work, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", work, strerror(errno));
    snprintf(dbname, sizeof dbname, "chat_archive_test_%d", owner_pid);
    snprintf(dsn, sizeof dsn, "%s dbname=%s", stack.cfg.pg_dsn, dbname);
    snprintf(admin_dsn, sizeof admin_dsn, "%s dbname=postgres user=postgres", stack.cfg.pg_dsn);
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
    admin_exec(sql);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s OWNER chat", dbname);
    admin_exec(sql);
    start_nats();
    start_s3();
    snprintf(s3_url, sizeof s3_url, "s3://%s/%s", BUCKET, S3_PREFIX);
    snprintf(file_url, sizeof file_url, "file://%s/archive", work);
    snprintf(blocked_url, sizeof blocked_url, "file://%s/blocked/archive", work);
    setenv("CHAT_HOME", work, 1);
    setenv("CHAT_PG_DSN", dsn, 1);
    setenv("CHAT_NATS_URL", nats_url, 1);
    setenv("CHAT_PARTITION_SPAN", "1m", 1);
    setenv("CHAT_HOT_RETENTION", "2m", 1);
    setenv("CHAT_ARCHIVE_URL", file_url, 1);
    setenv("CHAT_S3_ENDPOINT", s3_endpoint, 1);
    setenv("CHAT_S3_REGION", "us-east-1", 1);
    setenv("CHAT_S3_ACCESS_KEY", "S3RVER", 1);
    setenv("CHAT_S3_SECRET_KEY", "S3RVER", 1);
    setenv("CHAT_JWT_SECRET", "test-archive-secret-0123456789abcdef", 1);
    setenv("CHAT_JS_REPLICAS", "1", 1);
    setenv("CHAT_LOG", "info", 1);
    char bin[sizeof stack.build_dir + 32], mlog[PATH_MAX + 32];
    snprintf(bin, sizeof bin, "%s/bin/chat-worker", stack.build_dir);
    snprintf(mlog, sizeof mlog, "%s/migrate.log", work);
    char *margv[] = {bin, "migrate", NULL};
    int st = 0;
    waitpid(spawn(mlog, margv, NULL, NULL, NULL), &st, 0);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "chat-worker migrate failed; see %s", mlog);
    pg = PQconnectdb(dsn);
    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "%s", PQerrorMessage(pg));

    /* the migration made daily partitions; the first pass puts 1-minute ones in place of the empty
     * ones (and archives yesterday's, empty) */
    ctl_result res;
    chatctl_archive(file_url, NULL, &res, "run", NULL);
    ck_assert_msg(res.exit == 0, "first archive run: %s %s", res.out, res.err);
    ck_assert_int_ge(q1i("SELECT count(*) FROM chat_partitions WHERE span = interval '1 minute'"
                         " AND from_ts <= now() AND until_ts > now()",
                         NULL),
                     1);

    /* the worker with the ingest and api roles only: no archive role runs until phase 4 */
    start_worker(&worker_a, "worker-a", "ingest,api", file_url);
    ck_assert(natsConnection_ConnectTo(&nc, nats_url) == NATS_OK);
    ck_assert(natsConnection_JetStream(&js, nc, NULL) == NATS_OK);
    for (int c = 0; c < NCONV; c++) {
        snprintf(convs[c], sizeof convs[c], "arch-%02d", c);
        create_conversation(convs[c]);
    }

    /* --- 2,000 messages over three partitions; the first burst well inside one minute */
    double now = db_now();
    if (now - 60.0 * (long long)(now / 60) > 56)
        sleep_until_db(60.0 * (long long)(now / 60) + 60.5);
    burst('A', 35); /* seqs 1..35 and the delete of 3 (seq 36) */
    char *v = q1("SELECT chat_partition_name(min(created_at), interval '1 minute') FROM messages", NULL);
    snprintf(p0, sizeof p0, "%s", v);
    free(v);
    snprintf(p0_from, sizeof p0_from, "%.20s", p0 + strlen("messages_p"));
    snprintf(p0_until, sizeof p0_until, "%lld", atoll(p0_from) + 60);
    p0_rows = hot_rows();
    printf(PROG ": first partition %s holds %lld events (%.0f s into the test)\n", p0, (long long)p0_rows,
           (double)(test_mono_ms() - t_start) / 1000.0);
    /* the next partition is missing on purpose (as if the archive role had been down): the ingest
     * makes it when the first message needs it */
    char p1[64];
    snprintf(p1, sizeof p1, "messages_p%lld", atoll(p0_until));
    char *ident = PQescapeIdentifier(pg, p1, strlen(p1));
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", ident);
    PQfreemem(ident);
    PGresult *r = PQexec(pg, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    sleep_until_db(atof(p0_until) + 0.5);
    burst('B', 35); /* seqs 37..71, delete of 5, edit of 7, reaction on 8 */
    ck_assert_int_eq(q1i("SELECT count(*) FROM chat_partitions WHERE partition_name = $1", p1, NULL), 1);
    sleep_until_db(atof(p0_until) + 60.5);
    burst('C', 30);
    ck_assert_int_eq(q1i("SELECT count(*) FROM messages WHERE kind = 'text'", NULL), 2000);
    ck_assert_int_ge(
        q1i("SELECT count(DISTINCT chat_partition_name(created_at, interval '1 minute')) FROM messages", NULL), 3);

    /* what history and sync give while everything is hot, and the rows of the first partition */
    static char *baseline[NCONV];
    for (int c = 0; c < NCONV; c++)
        baseline[c] = history_all(convs[c]);
    char *sync_baseline = sync_all();
    char *rows_before = partition_dump();
    int64_t p0_deletes =
        q1i("SELECT count(*) FROM messages WHERE kind = 'delete' AND created_at >= to_timestamp($1::bigint)"
            " AND created_at < to_timestamp($2::bigint)",
            p0_from, p0_until, NULL);
    int64_t p0_convs =
        q1i("SELECT count(DISTINCT conversation_id) FROM messages WHERE created_at >= to_timestamp($1::bigint)"
            " AND created_at < to_timestamp($2::bigint)",
            p0_from, p0_until, NULL);
    char *dedupe_before = dedupe_dump();
    ck_assert_int_eq(q1i("SELECT count(*) FROM message_dedupe WHERE created_at >= to_timestamp($1::bigint)"
                         " AND created_at < to_timestamp($2::bigint)",
                         p0_from, p0_until, NULL),
                     p0_rows);

    /* --- while the first partition ages: the archive role of a worker on a partition of a day ago
     * (300 conversations of 3 events, written directly). Its storage is broken first (a file stands
     * where the archive's directory goes): the pass fails, the partition stays hot; once fixed, the
     * role retries by itself. Then sync from 0 over its 300 chunks, more than one request reads:
     * the first page stops where its chunks end and `next` goes on from there. */
    char *old_part = q1("SELECT chat_partition_name(now() - interval '1 day', interval '1 minute')", NULL);
    ck_assert_int_ge(q1i("SELECT chat_ensure_partitions(now() - interval '1 day', now() - interval '1 day'"
                         " + interval '1 minute', interval '1 minute')",
                         NULL),
                     0);
    free(q1("INSERT INTO conversations (id, last_seq) SELECT 'old-' || lpad(c::text, 3, '0'), 3"
            " FROM generate_series(1, 300) c",
            NULL));
    free(q1("INSERT INTO conversation_members (conversation_id, user_id) SELECT id, 'u-old' FROM conversations"
            " WHERE id LIKE 'old-%'",
            NULL));
    free(q1(
        "INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, body, created_at)"
        " SELECT 'old-' || lpad(c::text, 3, '0'), s, 'oid-' || c || '-' || s, 'ocm-' || s, 'u-old', 'old ' || s,"
        " to_timestamp($1::bigint) + s * interval '1 second' FROM generate_series(1, 300) c, generate_series(1, 3) s",
        old_part + strlen("messages_p"), NULL));
    ck_assert_int_eq(q1i("SELECT count(*) FROM messages WHERE conversation_id LIKE 'old-%'", NULL), 900);
    ck_assert_msg(db_now() < atof(p0_until) + 100, "too late to run the archive role before %s may be archived", p0);
    char blocker[PATH_MAX + 16];
    snprintf(blocker, sizeof blocker, "%s/blocked", work);
    FILE *bf = fopen(blocker, "w");
    ck_assert(bf != NULL);
    fclose(bf);
    start_worker(&worker_b, "worker-b", "archive", blocked_url);
    int64_t t0 = test_mono_ms();
    for (;;) {
        v = q1(
            "SELECT coalesce(last_error, '') FROM archive_partitions WHERE partition_name = $1 AND state = 'planned'",
            old_part, NULL);
        bool failed = v[0] != '\0';
        free(v);
        if (failed)
            break;
        ck_assert_msg(test_mono_ms() - t0 < 20000, "the archive role did not report the broken storage; see %s",
                      worker_b.log);
        usleep(200000);
    }
    ck_assert_int_eq(q1i("SELECT count(*) FROM messages WHERE conversation_id LIKE 'old-%'", NULL), 900);
    ck_assert(unlink(blocker) == 0);
    t0 = test_mono_ms();
    while (q1i("SELECT count(*) FROM archive_partitions WHERE partition_name = $1 AND state = 'dropped'", old_part,
               NULL) == 0) {
        ck_assert_msg(test_mono_ms() - t0 < 45000, "the archive role did not archive %s after the fix; see %s",
                      old_part, worker_b.log);
        usleep(250000);
    }
    printf(PROG ": the archive role reported the broken storage, retried by itself and archived %s %.1f s after"
                " the fix\n",
           old_part, (double)(test_mono_ms() - t0) / 1000.0);
    stop_proc(&worker_b);
    ck_assert_msg(db_now() < atof(p0_until) + 120, "the archive role ran past the time %s may be archived", p0);
    ck_assert_int_eq(q1i("SELECT count(*) FROM messages WHERE conversation_id LIKE 'old-%'", NULL), 0);
    char broot[PATH_MAX + 64];
    snprintf(broot, sizeof broot, "%s/blocked/archive", work);
    ck_assert_int_eq(check_objects_known(broot, blocked_url, ""), 1);
    int pages = sync_user_pages("u-old", "old-", 300);
    ck_assert_msg(pages >= 2, "sync over 300 archived chunks took %d page(s)", pages);
    printf(PROG ": sync from 0 over 300 archived chunks: %d pages, every event once and in order\n", pages);
    free(old_part);

    /* --- the one wait: until the whole first partition is older than the retention */
    printf(PROG ": waiting for %s to be older than 2m (%.0f s into the test)\n", p0,
           (double)(test_mono_ms() - t_start) / 1000.0);
    sleep_until_db(atof(p0_until) + 120.5);

    /* --- 1. S3 down: the run fails and says so, the partition stays hot, history answers */
    stop_proc(&s3_proc);
    chatctl_archive(s3_url, NULL, &res, "run", NULL);
    ck_assert_msg(res.exit == 1, "archive run with S3 down: exit %d (%s)", res.exit, res.out);
    ck_assert_msg(strstr(res.err, s3_url) && strstr(res.out, "\"failed\":1"), "the error does not name the object: %s",
                  res.err);
    ck_assert_int_eq(hot_rows(), p0_rows);
    ck_assert_int_eq(cold_rows(), 0);
    v = q1("SELECT last_error FROM archive_partitions WHERE partition_name = $1 AND state = 'planned'", p0, NULL);
    ck_assert_msg(strstr(v, "s3://") != NULL, "last_error of %s: \"%s\"", p0, v);
    free(v);
    check_consistent("S3 down", baseline[0]);

    /* --- 2. S3 back; the run killed (-9) after each step in turn, then run again */
    start_s3();
    const char *steps[] = {"planned", "put", "uploaded", "verified", "detached", "dropped"};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        chatctl_archive(s3_url, steps[i], &res, "run", NULL);
        char when[64];
        snprintf(when, sizeof when, "killed after %s", steps[i]);
        check_consistent(when, baseline[0]);
    }
    chatctl_archive(s3_url, NULL, &res, "run", NULL);
    ck_assert_msg(res.exit == 0, "archive run after the kills: %s %s", res.out, res.err);
    check_consistent("archived to S3", baseline[0]);
    ck_assert_int_eq(hot_rows(), 0);
    ck_assert_int_eq(cold_rows(), p0_rows);
    ck_assert_int_eq(
        q1i("SELECT count(*) FROM archive_partitions WHERE partition_name = $1 AND state = 'dropped'", p0, NULL), 1);
    ck_assert_int_eq(q1i("SELECT count(*) FROM archive_partitions WHERE state NOT IN ('dropped', 'restored')", NULL),
                     0);
    ck_assert_int_eq(q1i("SELECT (to_regclass($1) IS NULL)::int", p0, NULL), 1);
    char root[PATH_MAX + 64];
    snprintf(root, sizeof root, "%s/s3/%s", work, BUCKET);
    int objects = check_objects_known(root, "s3://" BUCKET, "._S3rver_object");
    ck_assert_int_eq(objects, (int)q1i("SELECT count(*) FROM archive_objects WHERE url LIKE 's3://%'", NULL));
    ck_assert_int_ge(objects, 1);
    ck_assert_int_eq(q1i("SELECT count(*) FROM archive_chunks k JOIN archive_objects o ON o.id = k.object_id"
                         " JOIN archive_partitions a ON a.id = o.partition_id WHERE a.partition_name = $1",
                         p0, NULL),
                     p0_convs); /* one chunk per conversation and partition */
    ck_assert_int_eq(q1i("SELECT count(*) FROM message_dedupe WHERE created_at >= to_timestamp($1::bigint)"
                         " AND created_at < to_timestamp($2::bigint)",
                         p0_from, p0_until, NULL),
                     0);
    ck_assert_int_eq(q1i("SELECT count(*) FROM archive_tombstones", NULL), p0_deletes); /* the deletes of seq 3 */
    /* the reporting views: this partition and the one of a day ago */
    ck_assert_int_eq(q1i("SELECT sum(messages) FROM report_archive_volume", NULL), p0_rows + 900);
    ck_assert_int_eq(q1i("SELECT sum(archived_messages) FROM report_conversation_stats", NULL), p0_rows + 900);
    chatctl_archive(s3_url, NULL, &res, "status", NULL);
    ck_assert_msg(res.exit == 0 && strstr(res.out, "\"tier\":\"cold\"") && strstr(res.out, s3_url),
                  "archive status: %s", res.out);
    printf(PROG ": S3 archive: %lld events, %d object(s), %lld bytes (%lld before compression)\n", (long long)p0_rows,
           objects,
           (long long)q1i("SELECT bytes FROM archive_partitions WHERE partition_name = $1 AND state = 'dropped'", p0,
                          NULL),
           (long long)q1i("SELECT raw_bytes FROM archive_partitions WHERE partition_name = $1 AND state = 'dropped'",
                          p0, NULL));

    /* latency of a history page that is all cold: the first read of a chunk (range GET from S3,
     * decompress) and the second (cache) */
    int64_t cold_ms[NCONV / 2], warm_ms[NCONV / 2];
    for (int c = 0; c < NCONV / 2; c++) {
        char *lo = q1("SELECT min(seq) FROM messages WHERE conversation_id = $1", convs[c], NULL);
        Chat__V1__HistoryReply *h1 = history(convs[c], strtoull(lo, NULL, 10), 100, &cold_ms[c]);
        Chat__V1__HistoryReply *h2 = history(convs[c], strtoull(lo, NULL, 10), 100, &warm_ms[c]);
        ck_assert_uint_ge(h1->n_events, 30);
        ck_assert_uint_eq(h1->n_events, h2->n_events);
        chat__v1__history_reply__free_unpacked(h1, NULL);
        chat__v1__history_reply__free_unpacked(h2, NULL);
        free(lo);
    }
    int64_t hot_ms[NCONV / 2];
    for (int c = 0; c < NCONV / 2; c++) {
        Chat__V1__HistoryReply *h = history(convs[c], 0, 100, &hot_ms[c]);
        chat__v1__history_reply__free_unpacked(h, NULL);
    }
    qsort(hot_ms, NCONV / 2, sizeof hot_ms[0], cmp_i64);
    qsort(cold_ms, NCONV / 2, sizeof cold_ms[0], cmp_i64);
    qsort(warm_ms, NCONV / 2, sizeof warm_ms[0], cmp_i64);
    printf(PROG ": cold-tier history page (S3, round trip over NATS): cache cold median %lld ms (max %lld),"
                " cache warm median %lld ms (max %lld)\n",
           (long long)cold_ms[NCONV / 4], (long long)cold_ms[NCONV / 2 - 1], (long long)warm_ms[NCONV / 4],
           (long long)warm_ms[NCONV / 2 - 1]);
    printf(PROG ": hot-tier history page for comparison: median %lld ms (max %lld)\n", (long long)hot_ms[NCONV / 4],
           (long long)hot_ms[NCONV / 2 - 1]);

    /* every conversation pages back across the boundary exactly as before; sync from 0 too */
    for (int c = 0; c < NCONV; c++) {
        char *h = history_all(convs[c]);
        ck_assert_msg(strcmp(h, baseline[c]) == 0, "history of %s differs from before the archiving", convs[c]);
        free(h);
    }
    char *s = sync_all();
    ck_assert_msg(strcmp(s, sync_baseline) == 0, "sync from 0 differs from before the archiving");
    free(s);
    /* --- 3. restore from S3, row for row */
    chatctl_archive(s3_url, NULL, &res, "restore", p0);
    ck_assert_msg(res.exit == 0, "restore: %s %s", res.out, res.err);
    char *rows_after = partition_dump();
    ck_assert_msg(strcmp(rows_before, rows_after) == 0, "the restored rows of %s differ from the archived ones", p0);
    char *dedupe_after = dedupe_dump();
    ck_assert_msg(strcmp(dedupe_before, dedupe_after) == 0, "the restored dedupe rows of %s differ", p0);
    free(rows_after);
    free(dedupe_after);
    ck_assert_int_eq(cold_rows(), 0);
    ck_assert_int_eq(check_objects_known(root, "s3://" BUCKET, "._S3rver_object"), 0);
    ck_assert_int_eq(
        q1i("SELECT count(*) FROM archive_partitions WHERE partition_name = $1 AND state = 'restored'", p0, NULL), 1);
    ck_assert_int_eq(q1i("SELECT count(*) FROM archive_tombstones", NULL), 0);
    for (int c = 0; c < NCONV; c += 7) {
        char *h = history_all(convs[c]);
        ck_assert_msg(strcmp(h, baseline[c]) == 0, "history of %s after the restore differs", convs[c]);
        free(h);
    }
    printf(PROG ": restored %s from S3: %lld rows identical, objects deleted\n", p0, (long long)p0_rows);

    /* --- 4. the restored partition archived again, to file:// this time; history and sync across
     * the tiers once more */
    chatctl_archive(file_url, NULL, &res, "run", NULL);
    ck_assert_msg(res.exit == 0, "archive run to file://: %s %s", res.out, res.err);
    ck_assert_int_eq(hot_rows(), 0);
    ck_assert_int_eq(cold_rows(), p0_rows);
    char froot[PATH_MAX + 64];
    snprintf(froot, sizeof froot, "%s/archive", work);
    int fobjects = check_objects_known(froot, file_url, "");
    ck_assert_int_ge(fobjects, 1);
    ck_assert_int_eq(fobjects,
                     (int)q1i("SELECT count(*) FROM archive_objects WHERE url LIKE $1 || '/%'", file_url, NULL));
    for (int c = 0; c < NCONV; c++) {
        char *h = history_all(convs[c]);
        ck_assert_msg(strcmp(h, baseline[c]) == 0, "history of %s (file:// archive) differs", convs[c]);
        free(h);
    }
    s = sync_all();
    ck_assert_msg(strcmp(s, sync_baseline) == 0, "sync from 0 (file:// archive) differs");
    free(s);
    printf(PROG ": archived %s again, to file://: history and sync unchanged\n", p0);

    /* --- clean up (on failure the parent does it) */
    for (int c = 0; c < NCONV; c++)
        free(baseline[c]);
    free(sync_baseline);
    free(rows_before);
    free(dedupe_before);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    PQfinish(pg);
    stop_proc(&worker_a);
    stop_proc(&s3_proc);
    stop_proc(&nats_proc);
    printf(PROG ": done in %.0f s\n", (double)(test_mono_ms() - t_start) / 1000.0);
}
END_TEST

/* In the parent, after the test (also when it failed or timed out): what it left behind. */
static void clean_up(void)
{
    char dir[PATH_MAX], pids[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/test-archive-%d", stack.cfg.home, owner_pid);
    snprintf(pids, sizeof pids, "%s/pids", dir);
    FILE *f = fopen(pids, "r");
    if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            if (pid > 0 && kill(pid, 0) == 0) {
                /* only our own children's pids are in the file; they die with the Check child
                 * (PR_SET_PDEATHSIG), this is the belt to those braces */
                char comm[64] = "", path[64];
                snprintf(path, sizeof path, "/proc/%d/comm", pid);
                FILE *c = fopen(path, "r");
                if (c && fgets(comm, sizeof comm, c) &&
                    (strncmp(comm, "chat-worker", 11) == 0 || strncmp(comm, "nats-server", 11) == 0 ||
                     strncmp(comm, "node", 4) == 0 || strncmp(comm, "chatctl", 7) == 0))
                    kill(pid, SIGKILL);
                if (c)
                    fclose(c);
            }
        fclose(f);
    }
    char adm[4096], sql[128];
    snprintf(adm, sizeof adm, "%s dbname=postgres user=postgres", stack.cfg.pg_dsn);
    PGconn *a = PQconnectdb(adm);
    if (PQstatus(a) == CONNECTION_OK) {
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS chat_archive_test_%d WITH (FORCE)", owner_pid);
        PQclear(PQexec(a, sql));
    }
    PQfinish(a);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (getenv("CHAT_TEST_KEEP") == NULL && system(cmd) != 0)
        fprintf(stderr, PROG ": could not remove %s\n", dir);
}

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    owner_pid = (int)getpid();
    Suite *s = suite_create("archive");
    TCase *tc = tcase_create("end_to_end");
    tcase_set_timeout(tc, 450);
    tcase_add_test(tc, archive_end_to_end);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    clean_up();
    test_stack_free(&stack);
    return failed ? 1 : 0;
}
