/* The ingest role under faults, as users see it. The test takes the ingest role over from the
 * stack: it stops the stack's worker, runs its own workers (one with api,archive,notify, and the
 * ingest workers it kills), and in the end gives the stack its worker back (scripts/up
 * --no-build). Scenarios:
 *   a. the only ingest worker is killed (-9) in the middle of 5,000 messages and started again
 *      about a second later: every message acked, stored once, delivered to every device in seq
 *      order without gaps, each sender's order kept, and in CHAT_EVENTS once and in order;
 *   b. two ingest workers share the 16 partitions; one is killed (-9) during traffic in 20
 *      conversations: the survivor owns all 16 within 10 s and nothing is lost or reordered.
 * Clients behave like real ones: pipelined sends with a bounded window, paced below the gateway's
 * rate limits, and a retry with the SAME cmid on `error unavailable` (or `rate_limited`) or when no
 * ack came within a few seconds. Worker logs: $CHAT_HOME/logs/test-ingest-faults-*.log. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
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

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_partition.h"
#include "test_ops.h"
#include "test_stack.h"

#define PROG "test_ingest_faults"
#define RETRY_MS 3000       /* no ack for this long: send the same cmid again */
#define UNAVAILABLE_BACKOFF_MS 300
#define STALL_MS 20000      /* no frame at all for this long fails the scenario */
#define SCENARIO_MS 45000   /* the whole traffic of one scenario */
#define TAKEOVER_LIMIT_MS 10000
#define RATE_LIMITED_BACKOFF_MS 1000
/* The gateway limits posts (CHAT_WS_RATE frames per second per connection, CHAT_WS_USER_RATE posts
 * per second per user, each with a burst of twice that); like a well-behaved client the test paces
 * its sends below them, at this share. */
#define PACE_SHARE 0.9

static test_stack stack;
static char home[PATH_MAX];
static char source_dir[PATH_MAX];
static char pids_path[PATH_MAX + 64];

/* ------------------------------------------------------------------ processes of this test */

typedef struct proc {
    pid_t pid;
    char name[32];
    char listen[64];
    char log[PATH_MAX + 64];
} proc;

#define MAX_PROCS 8
static proc procs[MAX_PROCS];
static int nprocs;

/* chat_ingest_partitions_owned of the worker at listen; -1 when it cannot be read. */
static int owned_partitions(const char *listen)
{
    static char body[1 << 17];
    if (test_ops_http_get(listen, "/metrics", body, sizeof body, 1000) != 200)
        return -1;
    static const char name[] = "chat_ingest_partitions_owned";
    for (const char *p = body; (p = strstr(p, name)) != NULL; p += sizeof name - 1) {
        if (p != body && p[-1] != '\n')
            continue;
        const char *v = p + sizeof name - 1;
        if (*v == '{') /* labels */
            v = strchr(v, '}') ? strchr(v, '}') + 1 : v;
        if (*v != ' ')
            continue;
        return (int)strtod(v + 1, NULL);
    }
    return -1;
}

static void log_line(const char *path, const char *fmt, const char *a, const char *b)
{
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    localtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%F %T", &tm);
    fprintf(f, "===== %s: ", ts);
    fprintf(f, fmt, a, b);
    fputc('\n', f);
    fclose(f);
}

/* Stops the stack's own worker ($CHAT_HOME/run/worker.pid) with SIGTERM and waits for its end. */
static void stop_stack_worker(void)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/run/worker.pid", home);
    FILE *f = fopen(path, "r");
    if (!f)
        return; /* not running (an earlier scenario stopped it) */
    int pid = 0;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid <= 0 || !test_pid_alive(pid) || !test_comm_is(pid, "chat-worker"))
        return;
    ck_assert_msg(kill(pid, SIGTERM) == 0, "SIGTERM to the stack's worker (pid %d): %s", pid, strerror(errno));
    int64_t t0 = test_mono_ms();
    while (test_pid_alive(pid) && test_proc_state(pid) != 'Z') {
        ck_assert_msg(test_mono_ms() - t0 < 15000, "the stack's worker (pid %d) did not stop within 15 s of SIGTERM",
                      pid);
        usleep(50000);
    }
    printf(PROG ": stopped the stack's worker (pid %d) in %lld ms\n", pid, (long long)(test_mono_ms() - t0));
    fflush(stdout);
}

/* Starts a chat-worker with the stack's environment and roles, listening on a free port (does not
 * wait for it). */
static proc *spawn_worker(const char *name, const char *roles)
{
    ck_assert_int_lt(nprocs, MAX_PROCS);
    proc *p = &procs[nprocs];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->listen, sizeof p->listen, "127.0.0.1:%d", test_free_port());
    snprintf(p->log, sizeof p->log, "%s/logs/test-ingest-faults-%s.log", home, name);
    char bin[sizeof stack.build_dir + 32];
    snprintf(bin, sizeof bin, "%s/bin/chat-worker", stack.build_dir);
    char cmd[sizeof bin + 256];
    snprintf(cmd, sizeof cmd, "starting %s --roles %s --worker-listen %s", bin, roles, p->listen);
    log_line(p->log, "%s%s", cmd, "");
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* dies with the test (a Check timeout kills the test without its teardown) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        int out = open(p->log, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (in < 0 || out < 0)
            _exit(127);
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        execl(bin, "chat-worker", "--roles", roles, "--worker-listen", p->listen, (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    nprocs++;
    FILE *f = fopen(pids_path, "a");
    if (f) {
        fprintf(f, "%d\n", (int)pid);
        fclose(f);
    }
    printf(PROG ": started worker %s (pid %d, roles %s, %s)\n", name, (int)pid, roles, p->listen);
    fflush(stdout);
    return p;
}

/* Fails unless p still runs. */
static void assert_running(const proc *p)
{
    int st = 0;
    ck_assert_msg(p->pid > 0 && waitpid(p->pid, &st, WNOHANG) == 0, "worker %s (pid %d) exited (status 0x%x); see %s",
                  p->name, (int)p->pid, st, p->log);
}

/* Waits until p answers /readyz with 200. */
static void wait_ready(const proc *p)
{
    int64_t t0 = test_mono_ms();
    char body[4096];
    for (;;) {
        assert_running(p);
        if (test_ops_http_get(p->listen, "/readyz", body, sizeof body, 1000) == 200)
            break;
        ck_assert_msg(test_mono_ms() - t0 < 20000, "worker %s (pid %d) not ready on %s within 20 s: %s; see %s",
                      p->name, (int)p->pid, p->listen, body, p->log);
        usleep(50000);
    }
    printf(PROG ": worker %s ready in %lld ms\n", p->name, (long long)(test_mono_ms() - t0));
    fflush(stdout);
}

static proc *start_worker(const char *name, const char *roles)
{
    proc *p = spawn_worker(name, roles);
    wait_ready(p);
    return p;
}

/* Sends sig to p and reaps it (SIGTERM: up to 10 s, then SIGKILL). */
static void stop_proc(proc *p, int sig)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, sig);
    int64_t t0 = test_mono_ms();
    for (;;) {
        int st = 0;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid || (r < 0 && errno == ECHILD))
            break;
        if (sig != SIGKILL && test_mono_ms() - t0 > 10000) {
            kill(p->pid, SIGKILL);
            sig = SIGKILL;
        }
        usleep(10000);
    }
    log_line(p->log, "%s by the test (%s)", sig == SIGKILL ? "killed (-9)" : "stopped", p->name);
    p->pid = 0;
}

static void takeover_setup(void)
{
    nprocs = 0;
    stop_stack_worker();
}

static void takeover_teardown(void)
{
    for (int i = 0; i < nprocs; i++)
        stop_proc(&procs[i], SIGTERM);
    nprocs = 0;
}

/* In the parent (after the tests, also when one failed or timed out): kills what a test left
 * behind (pids of our own pid file that still run chat-worker) and gives the stack its worker
 * back. */
static void restore_stack(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    FILE *f = fopen(pids_path, "r");
    if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            if (pid > 0 && test_pid_alive(pid) && test_comm_is(pid, "chat-worker")) {
                kill(pid, SIGKILL);
                for (int i = 0; i < 100 && test_pid_alive(pid) && test_proc_state(pid) != 'Z'; i++)
                    usleep(20000);
            }
        fclose(f);
        unlink(pids_path);
    }
    char cmd[2 * PATH_MAX + 128];
    snprintf(cmd, sizeof cmd, "cd '%s' && scripts/up --no-build >>'%s/logs/test-ingest-faults-restore.log' 2>&1",
             source_dir, home);
    fflush(NULL);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, PROG ": restoring the stack's worker (scripts/up --no-build) failed (%d); see %s/logs/"
                        "test-ingest-faults-restore.log\n", rc, home);
    else
        printf(PROG ": the stack's worker is back (scripts/up --no-build)\n");
    fflush(NULL);
}

/* ------------------------------------------------------------------ PostgreSQL (psql) */

static void shell_quote(char *out, size_t outsz, const char *s)
{
    size_t o = 0;
    if (o + 1 < outsz)
        out[o++] = '\'';
    for (; *s && o + 5 < outsz; s++) {
        if (*s == '\'') {
            memcpy(out + o, "'\\''", 4);
            o += 4;
        } else {
            out[o++] = *s;
        }
    }
    if (o + 1 < outsz)
        out[o++] = '\'';
    out[o] = '\0';
}

/* Runs sql with psql on CHAT_PG_DSN; the unaligned, tuples-only output (caller frees). */
static char *psql(const char *sql)
{
    char dsn[2048], q[8192], cmd[12000];
    shell_quote(dsn, sizeof dsn, stack.cfg.pg_dsn);
    shell_quote(q, sizeof q, sql);
    snprintf(cmd, sizeof cmd, "psql -X -q -A -t -v ON_ERROR_STOP=1 -d %s -c %s", dsn, q);
    fflush(NULL);
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "popen psql: %s", strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 4096)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int st = pclose(p);
    ck_assert_msg(st == 0, "psql -c \"%s\" failed (status %d): %s", sql, st, buf);
    return buf;
}

/* ------------------------------------------------------------------ traffic */

#define MAX_USERS 8
#define MAX_DEVS 8
#define MAX_CONVS 32

typedef struct msgrec {
    char cmid[96];
    char *body;
    int conv, dev;
    int sends, acks;
    int64_t seq; /* from the first ack */
    char id[40];
    int64_t last_send_ms, resend_at_ms;
    int64_t first_ack_ms;
} msgrec;

typedef struct dev {
    char name[128];
    int user;
    ws_client *ws;
    int *order; /* indexes of the messages this device sends, in send order */
    int norder, next, base; /* next to send; base: first in order not acked yet */
    int inflight;
    double rate, tokens;        /* sends per second this device allows itself, and what it may send now */
    int64_t refill_ms;
    json_t *ids[MAX_CONVS];     /* per conversation: msg id -> seq */
    int64_t distinct[MAX_CONVS];
    int64_t *seq_of;            /* per message: the seq this device saw (0: not yet) */
    long repeats, frames;
} dev;

typedef struct traffic {
    const char *label;
    int nusers, nconvs, ndevs, nmsgs;
    char users[MAX_USERS][80];
    char convs[MAX_CONVS][80];
    bool member[MAX_CONVS][MAX_USERS];
    int conv_msgs[MAX_CONVS];
    dev devs[MAX_DEVS];
    msgrec *msgs;
    json_t *index; /* cmid -> message index */
    int window;
    int acked;     /* messages with at least one ack */
    long resends_timeout, resends_error, unavailable_errors, rate_limited_errors, extra_acks, other_frames;
    int64_t t0, last_ack_ms, max_ack_gap_ms, max_gap_end_ms;
    int64_t mark_ms, first_ack_after_mark_ms; /* set mark_ms: the time of the first ack from then on */
} traffic;

static int msg_index(const traffic *t, const char *cmid)
{
    json_t *v = cmid ? json_object_get(t->index, cmid) : NULL;
    return v ? (int)json_integer_value(v) : -1;
}

static int conv_index(const traffic *t, const char *conv)
{
    for (int c = 0; conv && c < t->nconvs; c++)
        if (strcmp(t->convs[c], conv) == 0)
            return c;
    return -1;
}

static const char *progress(const traffic *t)
{
    static char buf[2048];
    size_t o = (size_t)snprintf(buf, sizeof buf, "%s: %d/%d messages acked, resends %ld (no ack) %ld (after an error)",
                                t->label, t->acked, t->nmsgs, t->resends_timeout, t->resends_error);
    for (int k = 0; k < t->ndevs && o < sizeof buf - 200; k++) {
        const dev *d = &t->devs[k];
        int64_t seen = 0;
        for (int c = 0; c < t->nconvs; c++)
            seen += d->distinct[c];
        o += (size_t)snprintf(buf + o, sizeof buf - o, "; %s: sent %d/%d, %d in flight, %lld distinct msgs", d->name,
                              d->next, d->norder, d->inflight, (long long)seen);
    }
    return buf;
}

/* Fills users, conversations (members set by the caller), devices and messages: each device sends
 * per_dev_conv messages into each conversation its user belongs to, round-robin over them. */
static void traffic_build(traffic *t, const char *run)
{
    t->index = json_object();
    int total = 0;
    for (int c = 0; c < t->nconvs; c++)
        total += t->conv_msgs[c];
    t->msgs = calloc((size_t)total, sizeof *t->msgs);
    /* messages of conversation c are sent alternately by the devices of its members */
    int devs_of[MAX_CONVS][MAX_DEVS], ndevs_of[MAX_CONVS] = {0};
    for (int c = 0; c < t->nconvs; c++)
        for (int k = 0; k < t->ndevs; k++)
            if (t->member[c][t->devs[k].user])
                devs_of[c][ndevs_of[c]++] = k;
    for (int k = 0; k < t->ndevs; k++) {
        t->devs[k].order = calloc((size_t)total, sizeof(int));
        t->devs[k].seq_of = calloc((size_t)total, sizeof(int64_t));
        for (int c = 0; c < t->nconvs; c++)
            t->devs[k].ids[c] = json_object();
    }
    /* interleave the conversations: round r takes message r of every conversation */
    int maxm = 0;
    for (int c = 0; c < t->nconvs; c++)
        if (t->conv_msgs[c] > maxm)
            maxm = t->conv_msgs[c];
    for (int r = 0; r < maxm; r++)
        for (int c = 0; c < t->nconvs; c++) {
            if (r >= t->conv_msgs[c])
                continue;
            ck_assert_msg(ndevs_of[c] > 0, "conversation %d has no device", c);
            msgrec *m = &t->msgs[t->nmsgs];
            m->conv = c;
            m->dev = devs_of[c][r % ndevs_of[c]];
            snprintf(m->cmid, sizeof m->cmid, "%s-%d", run, t->nmsgs);
            char body[256];
            snprintf(body, sizeof body, "%s message %d (#%d of %s) from %s: ünïcødé 😀 \"q\" \\ <&>", t->label, t->nmsgs,
                     r, t->convs[c], t->devs[m->dev].name);
            m->body = strdup(body);
            json_object_set_new(t->index, m->cmid, json_integer(t->nmsgs));
            dev *d = &t->devs[m->dev];
            d->order[d->norder++] = t->nmsgs;
            t->nmsgs++;
        }
}

static void traffic_free(traffic *t)
{
    for (int k = 0; k < t->ndevs; k++) {
        dev *d = &t->devs[k];
        if (d->ws)
            ws_client_destroy(d->ws);
        for (int c = 0; c < t->nconvs; c++)
            json_decref(d->ids[c]);
        free(d->order);
        free(d->seq_of);
    }
    for (int i = 0; i < t->nmsgs; i++)
        free(t->msgs[i].body);
    free(t->msgs);
    json_decref(t->index);
}

static void send_msg(traffic *t, dev *d, int i)
{
    msgrec *m = &t->msgs[i];
    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", t->convs[m->conv], "cmid", m->cmid, "body",
                          m->body);
    chat_status s = ws_client_send_json(d->ws, f);
    json_decref(f);
    ck_assert_msg(s == CHAT_OK, "%s: send %s: %s (%s)", d->name, m->cmid, chat_status_str(s), ws_client_error(d->ws));
    m->sends++;
    m->last_send_ms = test_mono_ms();
    m->resend_at_ms = 0;
}

static void handle_frame(traffic *t, dev *d, json_t *f)
{
    const char *type = test_str(f, "type");
    ck_assert_msg(type != NULL, "%s: frame without type: %s", d->name, test_json(f));
    d->frames++;
    int64_t now = test_mono_ms();
    if (strcmp(type, "members") == 0) {
        ck_assert_msg(conv_index(t, test_str(f, "conv")) >= 0, "%s: members frame of another conversation: %s",
                      d->name, test_json(f));
        return;
    }
    if (strcmp(type, "ack") == 0) {
        const char *conv = test_str(f, "conv"), *cmid = test_str(f, "cmid"), *id = test_str(f, "id");
        int64_t seq = test_int(f, "seq");
        int i = msg_index(t, cmid);
        ck_assert_msg(i >= 0, "%s: ack for a cmid never sent: %s", d->name, test_json(f));
        msgrec *m = &t->msgs[i];
        ck_assert_msg(&t->devs[m->dev] == d, "%s: ack for a message that %s sent: %s", d->name, t->devs[m->dev].name,
                      test_json(f));
        ck_assert_msg(conv && strcmp(conv, t->convs[m->conv]) == 0, "%s: ack with conv other than %s: %s", d->name,
                      t->convs[m->conv], test_json(f));
        ck_assert_msg(seq > 0 && id && id[0], "%s: ack without seq or id: %s", d->name, test_json(f));
        if (m->acks++ > 0) {
            /* one ack per send attempt: every one names the same stored message */
            ck_assert_msg(seq == m->seq && strcmp(id, m->id) == 0,
                          "%s: cmid %s acked as seq %lld id %s and again as seq %lld id %s (stored twice?)", d->name,
                          cmid, (long long)m->seq, m->id, (long long)seq, id);
            t->extra_acks++;
            return;
        }
        m->seq = seq;
        snprintf(m->id, sizeof m->id, "%s", id);
        m->first_ack_ms = now;
        if (t->mark_ms && !t->first_ack_after_mark_ms && now >= t->mark_ms)
            t->first_ack_after_mark_ms = now;
        t->acked++;
        d->inflight--;
        while (d->base < d->next && t->msgs[d->order[d->base]].acks > 0)
            d->base++;
        if (t->last_ack_ms && now - t->last_ack_ms > t->max_ack_gap_ms) {
            t->max_ack_gap_ms = now - t->last_ack_ms;
            t->max_gap_end_ms = now;
        }
        t->last_ack_ms = now;
        return;
    }
    if (strcmp(type, "error") == 0) {
        const char *code = test_str(f, "code"), *ref = test_str(f, "ref");
        int i = msg_index(t, ref);
        bool unavailable = code && strcmp(code, "unavailable") == 0;
        bool limited = code && strcmp(code, "rate_limited") == 0;
        ck_assert_msg(i >= 0 && (unavailable || limited),
                      "%s: error frame (only `unavailable` or `rate_limited` for one of our sends is expected): %s",
                      d->name, test_json(f));
        msgrec *m = &t->msgs[i];
        ck_assert_msg(&t->devs[m->dev] == d, "%s: error for a message that %s sent: %s", d->name, t->devs[m->dev].name,
                      test_json(f));
        if (unavailable)
            t->unavailable_errors++;
        else
            t->rate_limited_errors++;
        /* a real client retries the same cmid, after a pause */
        if (m->acks == 0 && m->resend_at_ms == 0)
            m->resend_at_ms = now + (unavailable ? UNAVAILABLE_BACKOFF_MS : RATE_LIMITED_BACKOFF_MS);
        return;
    }
    if (strcmp(type, "msg") == 0) {
        const char *conv = test_str(f, "conv"), *id = test_str(f, "id"), *cmid = test_str(f, "cmid");
        const char *from = test_str(f, "from"), *kind = test_str(f, "kind"), *body = test_str(f, "body");
        int64_t seq = test_int(f, "seq");
        int c = conv_index(t, conv);
        ck_assert_msg(c >= 0, "%s: msg of another conversation: %s", d->name, test_json(f));
        ck_assert_msg(t->member[c][d->user], "%s: msg of a conversation its user is not in: %s", d->name,
                      test_json(f));
        ck_assert_msg(id && id[0] && seq > 0, "%s: msg without id or seq: %s", d->name, test_json(f));
        json_t *known = json_object_get(d->ids[c], id);
        if (known) {
            ck_assert_msg(json_integer_value(known) == seq, "%s: id %s came with seq %lld and now with %lld: %s",
                          d->name, id, (long long)json_integer_value(known), (long long)seq, test_json(f));
            d->repeats++;
            return;
        }
        int i = msg_index(t, cmid);
        ck_assert_msg(i >= 0, "%s: msg with a cmid nobody sent: %s", d->name, test_json(f));
        msgrec *m = &t->msgs[i];
        ck_assert_msg(m->conv == c, "%s: cmid %s of %s delivered in %s: %s", d->name, cmid, t->convs[m->conv], conv,
                      test_json(f));
        ck_assert_msg(d->seq_of[i] == 0,
                      "%s: cmid %s delivered under two ids (stored twice): seq %lld, then %s", d->name, cmid,
                      (long long)d->seq_of[i], test_json(f));
        ck_assert_msg(seq == d->distinct[c] + 1,
                      "%s: in %s seq %lld arrived after %lld distinct messages (want %lld: a gap or out of order): %s",
                      d->name, conv, (long long)seq, (long long)d->distinct[c], (long long)d->distinct[c] + 1,
                      test_json(f));
        ck_assert_msg(from && strcmp(from, t->users[t->devs[m->dev].user]) == 0, "%s: msg from %s, sent by %s: %s",
                      d->name, from ? from : "(none)", t->users[t->devs[m->dev].user], test_json(f));
        ck_assert_msg(kind && strcmp(kind, "text") == 0, "%s: msg kind is not text: %s", d->name, test_json(f));
        ck_assert_msg(body && strcmp(body, m->body) == 0, "%s: msg body differs from what was sent (%s): %s", d->name,
                      m->body, test_json(f));
        json_object_set_new(d->ids[c], id, json_integer(seq));
        d->distinct[c]++;
        d->seq_of[i] = seq;
        return;
    }
    /* informational frames of other kinds (presence, conversations, ...) are not this test's subject */
    ck_assert_msg(strcmp(type, "hello") != 0, "%s: a second hello: %s", d->name, test_json(f));
    t->other_frames++;
}

static bool drain(traffic *t)
{
    bool any = false;
    for (int k = 0; k < t->ndevs; k++) {
        dev *d = &t->devs[k];
        for (;;) {
            json_t *f = NULL;
            chat_status s = ws_client_recv_json(d->ws, 0, &f);
            if (s == CHAT_ERR_TIMEOUT)
                break;
            ck_assert_msg(s == CHAT_OK, "%s: receive failed: %s (%s), close code %d", d->name, chat_status_str(s),
                          ws_client_error(d->ws), ws_client_close_code(d->ws));
            handle_frame(t, d, f);
            json_decref(f);
            any = true;
        }
    }
    return any;
}

static bool pump(traffic *t, int timeout_ms)
{
    if (drain(t))
        return true;
    struct pollfd pfd[MAX_DEVS];
    for (int k = 0; k < t->ndevs; k++)
        pfd[k] = (struct pollfd){.fd = ws_client_fd(t->devs[k].ws), .events = POLLIN};
    if (poll(pfd, (nfds_t)t->ndevs, timeout_ms) <= 0)
        return false;
    return drain(t);
}

/* Takes one send from d's budget (a token bucket of d->rate per second, burst rate/2). */
static bool take_token(dev *d, int64_t now)
{
    if (d->rate <= 0)
        return true;
    double burst = d->rate / 2 > 1 ? d->rate / 2 : 1;
    if (d->refill_ms == 0) {
        d->tokens = burst;
        d->refill_ms = now;
    }
    d->tokens += (double)(now - d->refill_ms) * d->rate / 1000.0;
    if (d->tokens > burst)
        d->tokens = burst;
    d->refill_ms = now;
    if (d->tokens < 1)
        return false;
    d->tokens -= 1;
    return true;
}

static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v && atoi(v) > 0 ? atoi(v) : dflt;
}

/* Each device's pace: PACE_SHARE of what the gateway allows the connection and its share of what
 * it allows the user (the limits as the environment names them, else the gateway's defaults). */
static void traffic_pace(traffic *t)
{
    int conn_rate = env_int("CHAT_WS_RATE", 50), user_rate = env_int("CHAT_WS_USER_RATE", 100);
    for (int k = 0; k < t->ndevs; k++) {
        int conns = 0;
        for (int j = 0; j < t->ndevs; j++)
            conns += t->devs[j].user == t->devs[k].user;
        double r = (double)user_rate / conns < conn_rate ? (double)user_rate / conns : conn_rate;
        t->devs[k].rate = PACE_SHARE * r;
    }
    printf(PROG ": %s: pacing each connection at %.0f sends/s (CHAT_WS_RATE %d, CHAT_WS_USER_RATE %d)\n", t->label,
           t->devs[0].rate, conn_rate, user_rate);
    fflush(stdout);
}

/* Retries due (same cmid), then new sends while the window has room, all within each device's pace. */
static void send_some(traffic *t)
{
    int64_t now = test_mono_ms();
    for (int k = 0; k < t->ndevs; k++) {
        dev *d = &t->devs[k];
        for (int j = d->base; j < d->next; j++) {
            msgrec *m = &t->msgs[d->order[j]];
            if (m->acks > 0)
                continue;
            bool due = m->resend_at_ms ? now >= m->resend_at_ms
                                       : now - m->last_send_ms >= (int64_t)RETRY_MS * (m->sends < 3 ? m->sends : 3);
            if (!due)
                continue;
            if (!take_token(d, now))
                break;
            /* no ack: again after 3 s, 6 s, then every 9 s; after an error: after its pause */
            if (m->resend_at_ms)
                t->resends_error++;
            else
                t->resends_timeout++;
            send_msg(t, d, d->order[j]);
        }
    }
    bool sent = true;
    while (sent) {
        sent = false;
        for (int k = 0; k < t->ndevs; k++) {
            dev *d = &t->devs[k];
            if (d->next < d->norder && d->inflight < t->window && take_token(d, now)) {
                send_msg(t, d, d->order[d->next++]);
                d->inflight++;
                sent = true;
            }
        }
    }
}

static bool traffic_done(const traffic *t)
{
    if (t->acked < t->nmsgs)
        return false;
    for (int k = 0; k < t->ndevs; k++)
        for (int c = 0; c < t->nconvs; c++)
            if (t->member[c][t->devs[k].user] && t->devs[k].distinct[c] < t->conv_msgs[c])
                return false;
    return true;
}

/* A hook called on every turn of the loop (the fault injection). */
typedef void (*traffic_hook)(traffic *t, void *ctx);

static void traffic_run(traffic *t, traffic_hook hook, void *ctx)
{
    t->t0 = test_mono_ms();
    int64_t last_frame = t->t0;
    while (!traffic_done(t)) {
        send_some(t);
        if (pump(t, 50))
            last_frame = test_mono_ms();
        if (hook)
            hook(t, ctx);
        int64_t now = test_mono_ms();
        ck_assert_msg(now - last_frame < STALL_MS, "nothing received for %d s: %s", STALL_MS / 1000, progress(t));
        ck_assert_msg(now - t->t0 < SCENARIO_MS, "not done after %d s: %s", SCENARIO_MS / 1000, progress(t));
    }
    /* late frames: a second ack naming another seq, or a message under a second id, shows here */
    int64_t done = test_mono_ms();
    while (test_mono_ms() - done < 1500)
        pump(t, 100);
}

/* Everything a user and an admin would check once the traffic is over. */
static void traffic_check(traffic *t)
{
    for (int i = 0; i < t->nmsgs; i++) {
        msgrec *m = &t->msgs[i];
        ck_assert_msg(m->acks >= 1, "cmid %s was never acked (%d sends)", m->cmid, m->sends);
        for (int k = 0; k < t->ndevs; k++) {
            dev *d = &t->devs[k];
            if (!t->member[m->conv][d->user])
                continue;
            ck_assert_msg(d->seq_of[i] == m->seq, "%s saw cmid %s as seq %lld, but its ack says seq %lld", d->name,
                          m->cmid, (long long)d->seq_of[i], (long long)m->seq);
            json_t *v = json_object_get(d->ids[m->conv], m->id);
            ck_assert_msg(v && json_integer_value(v) == m->seq, "%s never saw id %s (seq %lld) that the ack of %s names",
                          d->name, m->id, (long long)m->seq, m->cmid);
        }
    }
    for (int k = 0; k < t->ndevs; k++) {
        dev *d = &t->devs[k];
        for (int c = 0; c < t->nconvs; c++) {
            if (!t->member[c][d->user])
                continue;
            ck_assert_msg(d->distinct[c] == t->conv_msgs[c], "%s: %lld distinct messages in %s, want %d", d->name,
                          (long long)d->distinct[c], t->convs[c], t->conv_msgs[c]);
            /* the sender's own order: each message of c above every one it sent before into c */
            int64_t highest = 0;
            for (int j = 0; j < d->norder; j++) {
                msgrec *m = &t->msgs[d->order[j]];
                if (m->conv != c)
                    continue;
                ck_assert_msg(m->seq > highest,
                              "%s: order of its own sends into %s not kept: %s (send #%d) got seq %lld after an "
                              "earlier send got seq %lld",
                              d->name, t->convs[c], m->cmid, j + 1, (long long)m->seq, (long long)highest);
                highest = m->seq;
            }
        }
    }
    /* stored once: count, distinct cmids, seq 1..N without a gap */
    char sql[8192];
    size_t o = (size_t)snprintf(sql, sizeof sql,
                                "SELECT conversation_id, count(*), count(DISTINCT client_msg_id), count(DISTINCT seq),"
                                " coalesce(min(seq), 0), coalesce(max(seq), 0) FROM messages"
                                " WHERE conversation_id IN (");
    for (int c = 0; c < t->nconvs; c++)
        o += (size_t)snprintf(sql + o, sizeof sql - o, "%s'%s'", c ? "," : "", t->convs[c]);
    snprintf(sql + o, sizeof sql - o, ") GROUP BY conversation_id");
    char *out = psql(sql);
    int rows = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char conv[80];
        long long count, cmids, seqs, min, max;
        ck_assert_msg(sscanf(line, "%79[^|]|%lld|%lld|%lld|%lld|%lld", conv, &count, &cmids, &seqs, &min, &max) == 6,
                      "psql line: %s", line);
        int c = conv_index(t, conv);
        ck_assert_msg(c >= 0, "psql: unknown conversation %s", conv);
        long long want = t->conv_msgs[c];
        ck_assert_msg(count == want && cmids == want && seqs == want && min == 1 && max == want,
                      "messages of %s in PostgreSQL: count %lld, distinct cmids %lld, distinct seqs %lld, seq %lld..%lld;"
                      " want %lld stored once with seq 1..%lld",
                      conv, count, cmids, seqs, min, max, want, want);
        rows++;
    }
    free(out);
    ck_assert_msg(rows == t->nconvs, "PostgreSQL has messages of %d of the %d conversations", rows, t->nconvs);
}

/* A backend replaying CHAT_EVENTS sees each conversation's events once, in seq order, whatever
 * crashed: an ordered consumer from the start, filtered on chat.evt.<conv>, must deliver the
 * membership event of the creation and then seq 1..N, each the stored message; the last message of
 * the subject in the stream is the last one delivered (nothing repeated after it). */
static void check_events_stream(traffic *t)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "connect to %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    jsCtx *js = NULL;
    ck_assert_msg(natsConnection_JetStream(&js, nc, NULL) == NATS_OK, "JetStream context");
    int64_t t0 = test_mono_ms();
    long events = 0;
    for (int c = 0; c < t->nconvs; c++) {
        char subject[128];
        snprintf(subject, sizeof subject, "chat.evt.%s", t->convs[c]);
        /* the stored message of each seq of this conversation, from the acks */
        int *of_seq = calloc((size_t)t->conv_msgs[c] + 1, sizeof(int));
        for (int i = 0; i < t->nmsgs; i++)
            if (t->msgs[i].conv == c && t->msgs[i].seq >= 1 && t->msgs[i].seq <= t->conv_msgs[c])
                of_seq[t->msgs[i].seq] = i + 1;
        natsSubscription *sub = test_events_reader(js, subject);
        int64_t next = 1;
        int members = 0;
        uint64_t last_stream_seq = 0;
        while (next <= t->conv_msgs[c] || members == 0) {
            natsMsg *m = NULL;
            s = natsSubscription_NextMsg(&m, sub, 10000);
            ck_assert_msg(s == NATS_OK, "CHAT_EVENTS %s: after seq %lld and %d membership events nothing for 10 s: %s",
                          subject, (long long)next - 1, members, natsStatus_GetText(s));
            jsMsgMetaData *md = NULL;
            if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
                last_stream_seq = md->Sequence.Stream;
                jsMsgMetaData_Destroy(md);
            }
            const char *type = NULL;
            natsMsgHeader_Get(m, "Chat-Type", &type);
            if (type && strcmp(type, "members") == 0) {
                members++;
                ck_assert_msg(members == 1 && next == 1,
                              "CHAT_EVENTS %s: membership event number %d after seq %lld (one, before the messages, "
                              "is expected)",
                              subject, members, (long long)next - 1);
                natsMsg_Destroy(m);
                continue;
            }
            ck_assert_msg(type && strcmp(type, "event") == 0, "CHAT_EVENTS %s: a message with Chat-Type %s", subject,
                          type ? type : "(none)");
            Chat__V1__Event *e = chat__v1__event__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                         (const uint8_t *)natsMsg_GetData(m));
            ck_assert_msg(e != NULL, "CHAT_EVENTS %s: an event that is not a chat.v1.Event", subject);
            ck_assert_msg((int64_t)e->seq == next,
                          "CHAT_EVENTS %s: seq %llu (cmid %s) after seq %lld: repeated, missing or out of order",
                          subject, (unsigned long long)e->seq, e->cmid, (long long)next - 1);
            const msgrec *want = of_seq[next] ? &t->msgs[of_seq[next] - 1] : NULL;
            ck_assert_msg(want && strcmp(e->cmid, want->cmid) == 0 && strcmp(e->id, want->id) == 0 &&
                              strcmp(e->body, want->body) == 0 &&
                              strcmp(e->sender, t->users[t->devs[want->dev].user]) == 0,
                          "CHAT_EVENTS %s: seq %lld is cmid %s id %s from %s, the acks say cmid %s id %s", subject,
                          (long long)next, e->cmid, e->id, e->sender, want ? want->cmid : "(none)",
                          want ? want->id : "(none)");
            chat__v1__event__free_unpacked(e, NULL);
            natsMsg_Destroy(m);
            next++;
            events++;
        }
        natsMsg *last = NULL;
        jsErrCode jerr = 0;
        s = js_GetLastMsg(&last, js, "CHAT_EVENTS", subject, NULL, &jerr);
        ck_assert_msg(s == NATS_OK, "last message of %s: %s", subject, natsStatus_GetText(s));
        ck_assert_msg(natsMsg_GetSequence(last) == last_stream_seq,
                      "CHAT_EVENTS %s: the stream holds more after seq %d (last stream seq %llu, delivered up to %llu)",
                      subject, t->conv_msgs[c], (unsigned long long)natsMsg_GetSequence(last),
                      (unsigned long long)last_stream_seq);
        natsMsg_Destroy(last);
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
        free(of_seq);
    }
    printf(PROG ": %s: CHAT_EVENTS replayed: %ld events in %d conversation(s), each once and in order, in %lld ms\n",
           t->label, events, t->nconvs, (long long)(test_mono_ms() - t0));
    fflush(stdout);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static void connect_devices(traffic *t)
{
    for (int k = 0; k < t->ndevs; k++) {
        dev *d = &t->devs[k];
        json_t *hello = NULL;
        char why[600];
        chat_status s = test_stack_connect(&stack, t->users[d->user], 10000, &d->ws, &hello, why, sizeof why);
        ck_assert_msg(s == CHAT_OK, "%s", why);
        ck_assert_msg(test_str(hello, "type") && strcmp(test_str(hello, "type"), "hello") == 0,
                      "first frame is not hello: %s", test_json(hello));
        json_decref(hello);
    }
}

static void create_conversations(traffic *t)
{
    for (int c = 0; c < t->nconvs; c++) {
        const char *members[MAX_USERS];
        int n = 0;
        for (int u = 0; u < t->nusers; u++)
            if (t->member[c][u])
                members[n++] = t->users[u];
        char *out = NULL;
        int rc = n == 2 ? test_stack_chatctl(&stack, &out, "conv", "create", t->convs[c], members[0], members[1], NULL)
                        : -2;
        ck_assert_msg(rc == 0, "chatctl conv create %s exited %d: %s", t->convs[c], rc, out ? out : "");
        free(out);
    }
}

static long total_repeats(const traffic *t)
{
    long r = 0;
    for (int k = 0; k < t->ndevs; k++)
        r += t->devs[k].repeats;
    return r;
}

/* Waits until the workers together own every partition, each of them some; the time in ms. */
static int64_t wait_owned(proc *const *ws, int n, int limit_ms, const char *what)
{
    int64_t t0 = test_mono_ms();
    char last[256] = "";
    for (;;) {
        int sum = 0;
        bool each = true;
        size_t o = 0;
        for (int i = 0; i < n; i++) {
            int v = owned_partitions(ws[i]->listen);
            o += (size_t)snprintf(last + o, sizeof last - o, "%s%s owns %d", i ? ", " : "", ws[i]->name, v);
            if (v <= 0)
                each = false;
            else
                sum += v;
        }
        if (each && sum == stack.cfg.partitions)
            return test_mono_ms() - t0;
        ck_assert_msg(test_mono_ms() - t0 < limit_ms, "%s: not every one of %d partitions owned within %d ms: %s", what,
                      stack.cfg.partitions, limit_ms, last);
        usleep(50000);
    }
}

/* ------------------------------------------------------------------ a. kill -9 the only ingest worker */

#define A_MESSAGES 5000
#define A_KILL_AT 1500
#ifndef A_RESTART_AFTER_MS
#define A_RESTART_AFTER_MS 1000
#endif

typedef struct a_ctx {
    proc *ingest;
    int64_t kill_ms, restart_ms, ready_ms, last_poll_ms;
    int acked_at_kill, acked_at_restart;
} a_ctx;

static void a_hook(traffic *t, void *arg)
{
    a_ctx *a = arg;
    int64_t now = test_mono_ms();
    if (!a->kill_ms && t->acked >= A_KILL_AT) {
        stop_proc(a->ingest, SIGKILL);
        a->kill_ms = test_mono_ms();
        a->acked_at_kill = t->acked;
        printf(PROG ": a: killed the ingest worker (-9) after %d acks, %lld ms into the traffic\n", t->acked,
               (long long)(a->kill_ms - t->t0));
        fflush(stdout);
    } else if (a->kill_ms && !a->restart_ms && now - a->kill_ms >= A_RESTART_AFTER_MS) {
        a->restart_ms = now;
        a->acked_at_restart = t->acked;
        t->mark_ms = now;
        a->ingest = spawn_worker("ingest-a2", "ingest"); /* the clients go on meanwhile */
        printf(PROG ": a: a new ingest worker started %lld ms after the kill (%d acks came between the kill and "
               "the restart)\n",
               (long long)(a->restart_ms - a->kill_ms), a->acked_at_restart - a->acked_at_kill);
        fflush(stdout);
    } else if (a->restart_ms && !a->ready_ms && now - a->last_poll_ms >= 50) {
        a->last_poll_ms = now;
        char body[1024];
        assert_running(a->ingest);
        if (test_ops_http_get(a->ingest->listen, "/readyz", body, sizeof body, 500) == 200)
            a->ready_ms = test_mono_ms();
    }
}

START_TEST(a_kill_the_only_ingest_worker)
{
    start_worker("api", "api,archive,notify");
    proc *ing = start_worker("ingest-a1", "ingest");
    proc *list[] = {ing};
    wait_owned(list, 1, 10000, "one ingest worker");

    static traffic t; /* large; zeroed */
    t.label = "a";
    t.window = 100;
    char run[80];
    test_stack_unique_id("a", run, sizeof run);
    test_stack_unique_id("alice", t.users[0], sizeof t.users[0]);
    test_stack_unique_id("bob", t.users[1], sizeof t.users[1]);
    t.nusers = 2;
    test_stack_unique_id("conv", t.convs[0], sizeof t.convs[0]);
    t.nconvs = 1;
    t.member[0][0] = t.member[0][1] = true;
    t.conv_msgs[0] = A_MESSAGES;
    /* alice and bob on two devices each; all four send */
    t.ndevs = 4;
    for (int k = 0; k < t.ndevs; k++) {
        t.devs[k].user = k / 2;
        snprintf(t.devs[k].name, sizeof t.devs[k].name, "%s device %d", t.users[k / 2], k % 2 + 1);
    }
    create_conversations(&t);
    traffic_build(&t, run);
    traffic_pace(&t);
    connect_devices(&t);

    a_ctx a = {.ingest = ing};
    traffic_run(&t, a_hook, &a);
    int64_t total = t.last_ack_ms - t.t0;
    ck_assert_msg(a.kill_ms > 0 && a.restart_ms > 0, "the fault was not injected: %s", progress(&t));
    assert_running(a.ingest);
    printf(PROG ": a: %d messages, %d devices: all acked in %lld ms (%.0f msg/s overall, the outage included); killed "
           "after %d acks; new worker ready %lld ms after its start; first ack %lld ms after the kill (%lld ms after "
           "the new worker was started); longest pause "
           "between acks %lld ms; %ld resends after no ack, %ld after an error (%ld `unavailable`, %ld `rate_limited`), "
           "%ld extra acks, %ld repeated msg frames dropped\n",
           t.nmsgs, t.ndevs, (long long)total, t.nmsgs * 1000.0 / (double)(total > 0 ? total : 1), a.acked_at_kill,
           (long long)(a.ready_ms ? a.ready_ms - a.restart_ms : -1),
           (long long)(t.first_ack_after_mark_ms ? t.first_ack_after_mark_ms - a.kill_ms : -1),
           (long long)(t.first_ack_after_mark_ms ? t.first_ack_after_mark_ms - a.restart_ms : -1),
           (long long)t.max_ack_gap_ms, t.resends_timeout, t.resends_error, t.unavailable_errors,
           t.rate_limited_errors, t.extra_acks,
           total_repeats(&t));
    fflush(stdout);
    traffic_check(&t);
    check_events_stream(&t);
    traffic_free(&t);
}
END_TEST

/* ------------------------------------------------------------------ b. two ingest workers, one dies */

#define B_CONVS 20
#define B_USERS 4
#define B_PER_CONV 100
#define B_KILL_FRACTION 3 /* kill after a third of the messages are acked */

typedef struct b_ctx {
    proc *victim, *survivor;
    int64_t kill_ms, takeover_ms, last_poll_ms;
    int acked_at_kill, survivor_before;
} b_ctx;

static void b_hook(traffic *t, void *arg)
{
    b_ctx *b = arg;
    int64_t now = test_mono_ms();
    if (!b->kill_ms && t->acked >= t->nmsgs / B_KILL_FRACTION) {
        b->survivor_before = owned_partitions(b->survivor->listen);
        stop_proc(b->victim, SIGKILL);
        b->kill_ms = test_mono_ms();
        b->acked_at_kill = t->acked;
        printf(PROG ": b: killed %s (-9) after %d acks; %s owned %d partitions\n", b->victim->name, t->acked,
               b->survivor->name, b->survivor_before);
        fflush(stdout);
    } else if (b->kill_ms && !b->takeover_ms && now - b->last_poll_ms >= 50) {
        b->last_poll_ms = now;
        if (owned_partitions(b->survivor->listen) == stack.cfg.partitions)
            b->takeover_ms = test_mono_ms() - b->kill_ms;
        else
            ck_assert_msg(now - b->kill_ms <= TAKEOVER_LIMIT_MS,
                          "%s owns %d of %d partitions %lld ms after %s was killed (want all within %d ms)",
                          b->survivor->name, owned_partitions(b->survivor->listen), stack.cfg.partitions,
                          (long long)(now - b->kill_ms), b->victim->name, TAKEOVER_LIMIT_MS);
    }
}

START_TEST(b_two_ingest_workers_one_dies)
{
    start_worker("api", "api,archive,notify");
    proc *w1 = start_worker("ingest-b1", "ingest");
    proc *w2 = start_worker("ingest-b2", "ingest");
    proc *both[] = {w1, w2};
    int64_t spread_ms = wait_owned(both, 2, 10000, "two ingest workers");
    int o1 = owned_partitions(w1->listen), o2 = owned_partitions(w2->listen);
    /* docs/architecture.md: each worker aims at ceil(partitions / workers) and releases extras */
    int half = (stack.cfg.partitions + 1) / 2;
    int64_t t_even = test_mono_ms();
    int e1 = o1, e2 = o2;
    while (e1 != half || e2 != stack.cfg.partitions - half) {
        ck_assert_msg(test_mono_ms() - t_even < 10000,
                      "two ingest workers: not spread evenly within 10 s (%s owns %d, %s owns %d; want %d and %d)",
                      w1->name, e1, w2->name, e2, half, stack.cfg.partitions - half);
        usleep(100000);
        e1 = owned_partitions(w1->listen);
        e2 = owned_partitions(w2->listen);
    }
    printf(PROG ": b: both ingest workers own partitions %lld ms after both were ready (%s %d, %s %d), %d each "
           "%lld ms later\n",
           (long long)spread_ms, w1->name, o1, w2->name, o2, half, (long long)(test_mono_ms() - t_even));
    fflush(stdout);

    static traffic t;
    t.label = "b";
    t.window = 64;
    char run[80];
    test_stack_unique_id("b", run, sizeof run);
    t.nusers = B_USERS;
    for (int u = 0; u < B_USERS; u++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "user%d", u);
        test_stack_unique_id(prefix, t.users[u], sizeof t.users[u]);
    }
    /* 20 conversations over as many partitions as there are: the first 16 on distinct ones */
    bool used[64] = {false};
    int parts_covered = 0;
    for (int c = 0, tries = 0; c < B_CONVS; tries++) {
        char id[80];
        test_stack_unique_id("conv", id, sizeof id);
        uint32_t p = chat_partition_of(id, (uint32_t)stack.cfg.partitions);
        if (p < 64 && used[p] && parts_covered < stack.cfg.partitions && tries < 10000)
            continue;
        if (p < 64 && !used[p]) {
            used[p] = true;
            parts_covered++;
        }
        snprintf(t.convs[c], sizeof t.convs[c], "%s", id);
        t.member[c][c % B_USERS] = t.member[c][(c + 1) % B_USERS] = true;
        t.conv_msgs[c] = B_PER_CONV;
        c++;
    }
    t.nconvs = B_CONVS;
    t.ndevs = 2 * B_USERS; /* two devices per user */
    for (int k = 0; k < t.ndevs; k++) {
        t.devs[k].user = k / 2;
        snprintf(t.devs[k].name, sizeof t.devs[k].name, "%s device %d", t.users[k / 2], k % 2 + 1);
    }
    create_conversations(&t);
    traffic_build(&t, run);
    traffic_pace(&t);
    connect_devices(&t);

    b_ctx b = {.victim = w1, .survivor = w2};
    traffic_run(&t, b_hook, &b);
    ck_assert_msg(b.kill_ms > 0, "the fault was not injected: %s", progress(&t));
    /* the traffic may end before the survivor has taken everything: keep measuring */
    while (!b.takeover_ms) {
        b_hook(&t, &b);
        usleep(20000);
    }
    int64_t total = t.last_ack_ms - t.t0;
    printf(PROG ": b: %d messages in %d conversations over %d partitions, %d devices: all acked in %lld ms (%.0f "
           "msg/s); %s killed after %d acks; %s owned all %d partitions %lld ms after the kill (it had %d); longest "
           "pause between acks %lld ms; %ld resends after no ack, %ld after an error (%ld `unavailable`, %ld "
           "`rate_limited`), %ld extra acks, %ld repeated msg frames dropped\n",
           t.nmsgs, t.nconvs, parts_covered, t.ndevs, (long long)total, t.nmsgs * 1000.0 / (double)(total > 0 ? total : 1),
           b.victim->name, b.acked_at_kill, b.survivor->name, stack.cfg.partitions, (long long)b.takeover_ms,
           b.survivor_before, (long long)t.max_ack_gap_ms, t.resends_timeout, t.resends_error, t.unavailable_errors,
           t.rate_limited_errors, t.extra_acks,
           total_repeats(&t));
    fflush(stdout);
    ck_assert_msg(b.takeover_ms <= TAKEOVER_LIMIT_MS, "takeover took %lld ms (limit %d)", (long long)b.takeover_ms,
                  TAKEOVER_LIMIT_MS);
    traffic_check(&t);
    check_events_stream(&t);
    traffic_free(&t);
}
END_TEST

/* ------------------------------------------------------------------ main */

static pid_t main_pid;

/* atexit: only in the main process (a Check child inherits the handler and exits too) */
static void on_exit_restore(void)
{
    if (getpid() == main_pid)
        restore_stack();
}

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    const char *h = getenv("CHAT_HOME");
    snprintf(home, sizeof home, "%s", h && h[0] ? h : ".local");
    const char *src = getenv("CHAT_TEST_SOURCE_DIR");
    if (src && src[0]) {
        snprintf(source_dir, sizeof source_dir, "%s", src);
    } else {
        /* this file is tests/integration/ of the checkout (CMake compiles it by its absolute path) */
        snprintf(source_dir, sizeof source_dir, "%s", __FILE__);
        for (int up = 0; up < 3; up++) {
            char *slash = strrchr(source_dir, '/');
            if (slash)
                *slash = '\0';
        }
    }
    char worker[sizeof stack.build_dir + 32];
    snprintf(worker, sizeof worker, "%s/bin/chat-worker", stack.build_dir);
    if (access(worker, X_OK) != 0) {
        fprintf(stderr, PROG ": %s not found\n", worker);
        return EXIT_FAILURE;
    }
    snprintf(pids_path, sizeof pids_path, "%s/run/test-ingest-faults.pids", home);
    /* leftovers of an earlier run that died: our pid file, our processes */
    FILE *f = fopen(pids_path, "r");
    if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            if (pid > 0 && test_pid_alive(pid) && test_comm_is(pid, "chat-worker"))
                kill(pid, SIGKILL);
        fclose(f);
        unlink(pids_path);
    }
    main_pid = getpid();
    atexit(on_exit_restore);

    Suite *s = suite_create("ingest_faults");
    TCase *tc = tcase_create("takeover");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, takeover_setup, takeover_teardown);
    tcase_add_test(tc, a_kill_the_only_ingest_worker);
    tcase_add_test(tc, b_two_ingest_workers_one_dies);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    restore_stack();
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
