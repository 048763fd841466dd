/* Helpers of the operations tests (tests/integration/test_ops_*.c): gateways of the test's own,
 * started from $CHAT_BUILD_DIR/bin/chat-gateway with the stack's environment on ports of their
 * own; plain HTTP GETs (/readyz, /metrics); Prometheus text parsing; a process's RSS. Main thread
 * of a test program (or its Check child). */
#ifndef TEST_OPS_H
#define TEST_OPS_H
#include <check.h>
#include <jansson.h>
#include <nats/nats.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "test_stack.h"

/* GET http://listen/path (HTTP/1.1, Connection: close) with one socket, everything within
 * timeout_ms. Returns the status (0 when no status line came); the body goes into body
 * (NUL-terminated, cut at bodysz; body may be NULL). */
int test_ops_http_get(const char *listen, const char *path, char *body, size_t bodysz, int timeout_ms);

/* Processes not the test's own children (the stack's): alive (signal 0 reaches it), named
 * `want` in /proc/<pid>/comm, its state letter from /proc/<pid>/stat ('Z' zombie; 0 when gone). */
bool test_pid_alive(pid_t pid);
bool test_comm_is(pid_t pid, const char *want);
char test_proc_state(pid_t pid);

/* Upgrades host:port's /ws with token: the HTTP status, 101 only once the hello came (for user,
 * when user is not NULL); a refusal's body in body (may be NULL). With out, a 101's client is
 * handed over (the caller destroys it); without, it is closed. */
int test_ws_upgrade(const char *host, int port, const char *token, const char *user, ws_client **out, char *body,
                    size_t bodysz);

/* A chat-gateway process of the test. */
typedef struct test_gateway {
    pid_t pid; /* 0 once reaped */
    char name[32];
    char listen[64]; /* 127.0.0.1:port */
    int port;
    char log[PATH_MAX + 128]; /* its stderr and stdout */
    int64_t started_ms;       /* test_mono_ms() at the fork */
    int64_t started_unix;     /* time(NULL) at the fork */
    int exit_status;          /* wait status once reaped */
} test_gateway;

/* Where the gateways of program prog record their pids ($CHAT_HOME/run/<prog>.pids) and log
 * ($CHAT_HOME/logs/<prog>-<name>.log); kills (SIGKILL) chat-gateway processes an earlier run of
 * prog left behind in its pid file; ignores SIGPIPE. Call once in main() before the tests. */
void test_ops_init(const char *prog);

/* Kills (SIGKILL) every chat-gateway process still listed in the pid file and removes it. For
 * main() after the tests (a Check child that timed out leaves its gateways to this). */
void test_ops_cleanup(void);

/* main()'s end: runs suite s (verbose), frees the runner, test_ops_cleanup(). Returns the number
 * of failed tests. */
int test_ops_run(Suite *s);

/* Starts build_dir/bin/chat-gateway with the test's environment (the stack's settings), then
 * CHAT_GATEWAY_LISTEN=127.0.0.1:<free port> and the NAME=value strings of env (NULL-terminated,
 * may be NULL) on top. Does not wait for it. CHAT_OK, or a line in why. The process dies with the
 * test (PR_SET_PDEATHSIG). */
chat_status test_gateway_spawn(const test_stack *st, const char *name, const char *const *env, test_gateway *gw,
                               char *why, size_t whysz);

/* Waits until gw answers GET /readyz with 200 over plain HTTP (tls false) or only accepts TCP
 * connections (tls true), while it keeps running. CHAT_OK; CHAT_ERR_TIMEOUT or CHAT_ERR_IO (it
 * exited) with a line in why (the end of its log included). */
chat_status test_gateway_wait_ready(test_gateway *gw, bool tls, int timeout_ms, char *why, size_t whysz);

/* true while gw runs (reaps it when it exited: gw->pid becomes 0, gw->exit_status is set). */
bool test_gateway_running(test_gateway *gw);

/* Waits up to timeout_ms for gw to exit and reaps it: CHAT_OK (gw->exit_status set) or
 * CHAT_ERR_TIMEOUT. */
chat_status test_gateway_wait_exit(test_gateway *gw, int timeout_ms);

/* Stops gw: SIGTERM, up to timeout_ms, then SIGKILL; reaps it. NULL-safe, no-op when not
 * running. */
void test_gateway_stop(test_gateway *gw, int timeout_ms);

/* The last up to n bytes of gw's log, for failure messages (static buffer). */
const char *test_gateway_log_tail(const test_gateway *gw, size_t n);

/* Connects to gw's /ws as user, like test_stack_connect (token of the stack's secret, the hello
 * frame read into *hello). */
chat_status test_gateway_connect(const test_stack *st, const test_gateway *gw, const char *user, int timeout_ms,
                                 ws_client **out, json_t **hello, char *why, size_t whysz);

/* test_gateway_connect as user within 10 s; the test fails unless the first frame is hello. */
static inline ws_client *test_gateway_user(const test_stack *st, const test_gateway *gw, const char *user)
{
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[700];
    ck_assert_msg(test_gateway_connect(st, gw, user, 10000, &c, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    const char *type = test_str(hello, "type");
    ck_assert_msg(type && strcmp(type, "hello") == 0, "first frame is not hello: %s", test_json(hello));
    json_decref(hello);
    return c;
}

/* VmRSS of pid in bytes (from /proc/<pid>/status), -1 when it cannot be read. */
int64_t test_ops_rss(pid_t pid);

/* Prometheus text format: every sample line "name{labels} value" into a JSON object mapping
 * "name{labels}" (exactly as written) to its value (a real). NULL and a line in why when a line
 * does not parse, a sample has no "# TYPE" line before it, or a series appears twice. */
json_t *test_metrics_parse(const char *text, char *why, size_t whysz);

/* GET /metrics of listen and parse it: NULL with a line in why when not 200 or not parsable. */
json_t *test_metrics_scrape(const char *listen, char *why, size_t whysz);

/* The value of series key ("name" or "name{labels}") in parsed metrics, or NAN when absent. */
double test_metric(const json_t *m, const char *key);

/* The value of series key in after minus before (NAN when absent in either). */
double test_metric_delta(const json_t *before, const json_t *after, const char *key);
/* An ordered consumer of CHAT_EVENTS filtered to subject (chat.evt.<conv>), from the stream's
 * start: every stored event of the conversation in stream order, read with NextMsg. Fails the
 * test when it cannot be made; the caller unsubscribes and destroys it. */
natsSubscription *test_events_reader(jsCtx *js, const char *subject);
/* A series of the stack's worker (CHAT_WORKER_LISTEN) now; fails the test when unreadable. */
double test_worker_metric(const char *key);

/* Sends request (raw bytes) to 127.0.0.1:port from source address src (NULL: any; another
 * loopback address such as 127.0.0.2 is another client address to the gateway) and reads the
 * answer until the server closes or timeout_ms passes. Returns the HTTP status (0 when no status
 * line came: the connection was dropped); the whole answer (or its head, for a 101) in resp. */
int test_raw_http(const char *src, int port, const char *request, size_t reqlen, char *resp, size_t respsz,
                  int timeout_ms);
/* A WebSocket upgrade of /ws with token (in the query, sent as given) from src; the status, the
 * answer in resp (resp may be NULL). */
int test_raw_upgrade(const char *src, int port, const char *token, char *resp, size_t respsz);

#endif
