/* What the integration tests need from the running stack: its settings (the environment, then
 * $CHAT_HOME/env for what the environment lacks), tokens, unique ids, chatctl for set-up, and a
 * WebSocket connection as a user. Main thread of a test program (or its Check child). */
#ifndef TEST_STACK_H
#define TEST_STACK_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "ws_client.h"

/* Exit code ctest takes as "skipped" (SKIP_RETURN_CODE). */
#define TEST_STACK_SKIP 77

typedef struct test_stack {
    chat_cfg cfg; /* the settings as chatctl and the gateway read them */
    char gateway_host[256];
    int gateway_port;
    char build_dir[4096]; /* CHAT_BUILD_DIR, else "build" next to the checkout */
    char chatctl[4200];   /* build_dir/bin/chatctl */
} test_stack;

/* Loads the stack's settings. When CHAT_HOME (default .local) holds an env file, its
 * `export NAME='value'` lines set what the environment does not have yet. CHAT_OK;
 * CHAT_ERR_NOT_FOUND when neither CHAT_GATEWAY_LISTEN nor $CHAT_HOME/env is there (no stack:
 * the test should exit TEST_STACK_SKIP); CHAT_ERR_INVALID with a line in err otherwise. */
chat_status test_stack_load(test_stack *st, char *err, size_t errsz);

/* test_stack_load for main(): prints "SKIP: ..." and exits TEST_STACK_SKIP when no stack, prints
 * the error and exits 1 when the settings are bad. */
void test_stack_load_or_exit(test_stack *st, const char *progname);

void test_stack_free(test_stack *st);

/* An id no other run or process made: "<prefix>-<ms base36><pid base36><counter>", valid as a
 * conversation id, user id or cmid (prefix: a few characters of [A-Za-z0-9_-]). */
void test_stack_unique_id(const char *prefix, char *out, size_t outsz);
/* A TCP port on 127.0.0.1 that was free a moment ago (0 when none could be found). */
int test_free_port(void);

/* An HS256 token for user signed with the stack's secret, valid ttl_s seconds from now; the
 * caller frees it. Aborts on failure (a test cannot go on without it). */
char *test_stack_token(const test_stack *st, const char *user, int64_t ttl_s);

/* Runs chatctl with the arguments (a NULL-terminated list) and the stack's environment. Returns
 * its exit status (-1 when it could not run or was killed); its standard output goes into *out
 * (caller frees; out may be NULL), its standard error to the test's. */
int test_stack_chatctl(const test_stack *st, char **out, const char *arg, ...) __attribute__((sentinel));

/* Connects to the gateway's /ws as user with a good token in "Authorization: Bearer" and reads
 * the first frame into *hello (caller decrefs; NULL when none came within timeout_ms). CHAT_OK
 * when connected and a JSON frame came; otherwise a status and a line in why. */
chat_status test_stack_connect(const test_stack *st, const char *user, int timeout_ms, ws_client **out, json_t **hello,
                               char *why, size_t whysz);

/* Receives frames on c until one whose type is `type` arrives (CHAT_OK, new reference in *out)
 * or timeout_ms passes (CHAT_ERR_TIMEOUT); other frames are appended to skipped (a JSON array)
 * when it is not NULL, else dropped. Other statuses as ws_client_recv_json. */
chat_status test_recv_type(ws_client *c, const char *type, int timeout_ms, json_t **out, json_t *skipped);

/* The next frame on c if one comes before deadline_ms (test_mono_ms() clock): CHAT_OK with a new
 * reference in *out, CHAT_ERR_TIMEOUT once the deadline has passed, other statuses as
 * ws_client_recv_json. */
chat_status test_recv_by(ws_client *c, int64_t deadline_ms, json_t **out);

/* Compact JSON of j for test messages, at most ~600 characters. Uses one of 16 rotating static
 * buffers, so up to 16 results can appear in one message. */
const char *test_json(const json_t *j);

/* Helpers on frames: the string / integer member key, or NULL / -1 when absent or of another
 * type. */
const char *test_str(const json_t *frame, const char *key);
int64_t test_int(const json_t *frame, const char *key);

/* Milliseconds on the monotonic clock, for timings. */
int64_t test_mono_ms(void);

#endif
