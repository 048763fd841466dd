/* The messaging core as users see it, against the gateway of the running stack: the hello frame,
 * ping, bad frames, and 1,000 pipelined messages between two users on three connections. */
#include <check.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_check.h"
#include "test_stack.h"

#define N_MESSAGES 1000
#define WINDOW 100 /* unacked sends per connection */
#define N_DEVICES 3
#define STALL_MS 30000 /* no frame at all for this long fails the test */
#define TOTAL_MS 200000

static test_stack stack;

/* Connects as user and checks the hello frame: {"type":"hello","user":U,"session":S,"server_time":MS}. */
static ws_client *connect_checked(const char *user, json_t **hello_out)
{
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[600];
    chat_status s = test_stack_connect(&stack, user, 10000, &c, &hello, why, sizeof why);
    ck_assert_msg(s == CHAT_OK, "%s", why);
    const char *type = test_str(hello, "type"), *u = test_str(hello, "user"), *session = test_str(hello, "session");
    ck_assert_msg(type && strcmp(type, "hello") == 0, "first frame is not hello: %s", test_json(hello));
    ck_assert_msg(u && strcmp(u, user) == 0, "hello for %s names another user: %s", user, test_json(hello));
    ck_assert_msg(session && session[0], "hello without a session: %s", test_json(hello));
    json_t *st = json_object_get(hello, "server_time");
    ck_assert_msg(json_is_integer(st), "hello without an integer server_time: %s", test_json(hello));
    int64_t now_ms = (int64_t)time(NULL) * 1000, server_ms = (int64_t)json_integer_value(st);
    ck_assert_msg(server_ms > now_ms - 60000 && server_ms < now_ms + 60000,
                  "hello server_time %lld is not within a minute of now (%lld): %s", (long long)server_ms,
                  (long long)now_ms, test_json(hello));
    if (hello_out)
        *hello_out = hello;
    else
        json_decref(hello);
    return c;
}

static void create_conversation(const char *conv, const char *u1, const char *u2)
{
    test_conv_create(&stack, conv, u1, u2);
}

/* The next frame on c within timeout_ms; fails the test when none comes. */
static json_t *next_frame(ws_client *c, const char *what, int timeout_ms)
{
    json_t *f = NULL;
    chat_status s = ws_client_recv_json(c, timeout_ms, &f);
    ck_assert_msg(s == CHAT_OK, "waiting for %s: %s (%s)", what, chat_status_str(s), ws_client_error(c));
    return f;
}

static void send_text(ws_client *c, const char *text)
{
    chat_status s = ws_client_send_text(c, text, strlen(text));
    ck_assert_msg(s == CHAT_OK, "send %s: %s (%s)", text, chat_status_str(s), ws_client_error(c));
}

static void expect_pong(ws_client *c, const char *when)
{
    send_text(c, "{\"type\":\"ping\"}");
    json_t *f = next_frame(c, "pong", 10000);
    const char *type = test_str(f, "type");
    ck_assert_msg(type && strcmp(type, "pong") == 0, "%s: ping answered with %s, want {\"type\":\"pong\"}", when,
                  test_json(f));
    json_decref(f);
}

static void expect_bad_request(ws_client *c, const char *frame)
{
    send_text(c, frame);
    json_t *f = next_frame(c, "error bad_request", 10000);
    const char *type = test_str(f, "type"), *code = test_str(f, "code");
    ck_assert_msg(type && strcmp(type, "error") == 0 && code && strcmp(code, "bad_request") == 0,
                  "frame %s answered with %s, want {\"type\":\"error\",\"code\":\"bad_request\",...}", frame,
                  test_json(f));
    json_decref(f);
}

START_TEST(hello_ping_and_bad_frames)
{
    char alice[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    json_t *h1 = NULL, *h2 = NULL;
    ws_client *d1 = connect_checked(alice, &h1);
    ws_client *d2 = connect_checked(alice, &h2);
    ck_assert_msg(strcmp(test_str(h1, "session"), test_str(h2, "session")) != 0,
                  "two connections of one user got the same session: %s and %s", test_json(h1), test_json(h2));

    expect_pong(d1, "fresh connection");
    expect_bad_request(d1, "{\"type\":\"send\",\"conv\":"); /* cut short */
    expect_pong(d1, "after a frame that is not JSON");
    expect_bad_request(d1, "not json at all");
    expect_bad_request(d1, "[1,2,3]"); /* JSON, but not an object */
    expect_bad_request(d1, "{\"type\":\"no_such_type\"}");
    expect_bad_request(d1, "{\"kind\":\"no type field\"}");
    expect_pong(d1, "after an unknown type");
    /* the other device of the same user is not disturbed */
    expect_pong(d2, "second device");
    ck_assert_int_eq(ws_client_close_code(d1), 0);

    json_decref(h1);
    json_decref(h2);
    ck_assert_msg(ws_client_shutdown(d1, 5000) == CHAT_OK, "close handshake of device 1 not answered");
    ck_assert_msg(ws_client_shutdown(d2, 5000) == CHAT_OK, "close handshake of device 2 not answered");
}
END_TEST

/* ------------------------------------------------------------------ 1,000 messages */

typedef struct sent_msg {
    char cmid[96];
    char *body;
    int device; /* which device sends it */
    int acks;
    int64_t seq; /* from the ack */
    char *id;    /* from the ack */
} sent_msg;

typedef struct device {
    char name[96];
    const char *user;
    ws_client *ws;
    int order[N_MESSAGES]; /* indexes of the messages this device sends, in send order */
    int norder, next_send, acked;
    json_t *ids;                /* msg id -> seq, every id seen */
    int64_t distinct;           /* distinct ids seen so far (= the last seq, when there is no gap) */
    int64_t seq_of[N_MESSAGES]; /* seq of each message as this device saw it */
    char *id_of[N_MESSAGES];
    long repeats, frames;
} device;

typedef struct bulk {
    const char *conv;
    sent_msg msgs[N_MESSAGES];
    json_t *index; /* cmid -> message index */
    device dev[N_DEVICES];
} bulk;

static int msg_index(const bulk *b, const char *cmid)
{
    json_t *v = cmid ? json_object_get(b->index, cmid) : NULL;
    return v ? (int)json_integer_value(v) : -1;
}

static void handle_frame(bulk *b, device *d, json_t *f)
{
    const char *type = test_str(f, "type");
    ck_assert_msg(type != NULL, "%s: frame without type: %s", d->name, test_json(f));
    d->frames++;
    if (strcmp(type, "members") == 0) {
        ck_assert_msg(test_str(f, "conv") && strcmp(test_str(f, "conv"), b->conv) == 0,
                      "%s: members frame of another conversation: %s", d->name, test_json(f));
        return;
    }
    if (strcmp(type, "ack") == 0) {
        const char *conv = test_str(f, "conv"), *cmid = test_str(f, "cmid"), *id = test_str(f, "id");
        int64_t seq = test_int(f, "seq");
        int i = msg_index(b, cmid);
        ck_assert_msg(i >= 0, "%s: ack for a cmid never sent: %s", d->name, test_json(f));
        sent_msg *m = &b->msgs[i];
        ck_assert_msg(&b->dev[m->device] == d, "%s: ack for a message that %s sent: %s", d->name,
                      b->dev[m->device].name, test_json(f));
        ck_assert_msg(conv && strcmp(conv, b->conv) == 0, "%s: ack with conv other than %s: %s", d->name, b->conv,
                      test_json(f));
        ck_assert_msg(seq > 0 && id && id[0], "%s: ack without seq or id: %s", d->name, test_json(f));
        m->acks++;
        ck_assert_msg(m->acks == 1, "%s: ack number %d for cmid %s (one send, one ack): %s (first: seq %lld id %s)",
                      d->name, m->acks, cmid, test_json(f), (long long)m->seq, m->id);
        m->seq = seq;
        m->id = strdup(id);
        d->acked++;
        return;
    }
    if (strcmp(type, "msg") == 0) {
        const char *conv = test_str(f, "conv"), *id = test_str(f, "id"), *cmid = test_str(f, "cmid");
        const char *from = test_str(f, "from"), *kind = test_str(f, "kind"), *body = test_str(f, "body");
        int64_t seq = test_int(f, "seq"), ts = test_int(f, "ts");
        ck_assert_msg(conv && strcmp(conv, b->conv) == 0, "%s: msg of another conversation: %s", d->name, test_json(f));
        ck_assert_msg(id && id[0] && seq > 0, "%s: msg without id or seq: %s", d->name, test_json(f));
        json_t *known = json_object_get(d->ids, id);
        if (known) {
            /* a repeat (at-least-once): dropped by id, but it must be the same message */
            ck_assert_msg(json_integer_value(known) == seq, "%s: id %s came with seq %lld and now with %lld: %s",
                          d->name, id, (long long)json_integer_value(known), (long long)seq, test_json(f));
            d->repeats++;
            return;
        }
        int i = msg_index(b, cmid);
        ck_assert_msg(i >= 0, "%s: msg with a cmid nobody sent: %s", d->name, test_json(f));
        sent_msg *m = &b->msgs[i];
        ck_assert_msg(d->seq_of[i] == 0, "%s: cmid %s delivered under two ids (stored twice): seq %lld id %s, then %s",
                      d->name, cmid, (long long)d->seq_of[i], d->id_of[i], test_json(f));
        ck_assert_msg(seq == d->distinct + 1,
                      "%s: seq %lld arrived after %lld distinct messages (want %lld: a gap or out of order): %s",
                      d->name, (long long)seq, (long long)d->distinct, (long long)d->distinct + 1, test_json(f));
        ck_assert_msg(from && strcmp(from, b->dev[m->device].user) == 0, "%s: msg from %s, sent by %s: %s", d->name,
                      from ? from : "(none)", b->dev[m->device].user, test_json(f));
        ck_assert_msg(kind && strcmp(kind, "text") == 0, "%s: msg kind is not text: %s", d->name, test_json(f));
        ck_assert_msg(body && strcmp(body, m->body) == 0, "%s: msg body differs from what was sent (%.80s): %s",
                      d->name, m->body, test_json(f));
        int64_t now_ms = (int64_t)time(NULL) * 1000;
        ck_assert_msg(ts > now_ms - 600000 && ts < now_ms + 60000, "%s: msg ts %lld is not around now (%lld): %s",
                      d->name, (long long)ts, (long long)now_ms, test_json(f));
        json_object_set_new(d->ids, id, json_integer(seq));
        d->distinct++;
        d->seq_of[i] = seq;
        d->id_of[i] = strdup(id);
        return;
    }
    ck_abort_msg("%s: unexpected frame during the exchange: %s", d->name, test_json(f));
}

/* Handles every frame already buffered or readable on every device; true if there was one. */
static bool drain(bulk *b)
{
    bool any = false;
    for (int k = 0; k < N_DEVICES; k++) {
        device *d = &b->dev[k];
        for (;;) {
            json_t *f = NULL;
            chat_status s = ws_client_recv_json(d->ws, 0, &f);
            if (s == CHAT_ERR_TIMEOUT)
                break;
            ck_assert_msg(s == CHAT_OK, "%s: receive failed: %s (%s), close code %d", d->name, chat_status_str(s),
                          ws_client_error(d->ws), ws_client_close_code(d->ws));
            handle_frame(b, d, f);
            json_decref(f);
            any = true;
        }
    }
    return any;
}

/* Waits up to timeout_ms for any device to become readable, then drains. */
static bool pump(bulk *b, int timeout_ms)
{
    if (drain(b))
        return true;
    struct pollfd pfd[N_DEVICES];
    for (int k = 0; k < N_DEVICES; k++)
        pfd[k] = (struct pollfd){.fd = ws_client_fd(b->dev[k].ws), .events = POLLIN};
    if (poll(pfd, N_DEVICES, timeout_ms) <= 0)
        return false;
    return drain(b);
}

static void send_one(bulk *b, device *d)
{
    sent_msg *m = &b->msgs[d->order[d->next_send++]];
    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", b->conv, "cmid", m->cmid, "body", m->body);
    chat_status s = ws_client_send_json(d->ws, f);
    json_decref(f);
    ck_assert_msg(s == CHAT_OK, "%s: send %s: %s (%s)", d->name, m->cmid, chat_status_str(s), ws_client_error(d->ws));
}

static bool all_done(const bulk *b)
{
    for (int k = 0; k < N_DEVICES; k++)
        if (b->dev[k].acked < b->dev[k].norder || b->dev[k].distinct < N_MESSAGES)
            return false;
    return true;
}

static const char *progress(const bulk *b)
{
    static char buf[512];
    size_t o = 0;
    for (int k = 0; k < N_DEVICES; k++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%s: sent %d/%d acked %d, %lld distinct msgs (%ld repeats)",
                              k ? "; " : "", b->dev[k].name, b->dev[k].next_send, b->dev[k].norder, b->dev[k].acked,
                              (long long)b->dev[k].distinct, b->dev[k].repeats);
    return buf;
}

START_TEST(thousand_messages_three_devices)
{
    static bulk b; /* large; zeroed */
    char alice[80], bob[80], conv[80], run[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("r", run, sizeof run);
    b.conv = conv;
    create_conversation(conv, alice, bob);

    const char *users[N_DEVICES] = {alice, alice, bob};
    for (int k = 0; k < N_DEVICES; k++) {
        device *d = &b.dev[k];
        snprintf(d->name, sizeof d->name, "%s device %d", users[k], k == 1 ? 2 : 1);
        d->user = users[k];
        d->ids = json_object();
        d->ws = connect_checked(users[k], NULL);
    }

    /* messages 0,3,6... from alice's first device, 1,4,... from her second, 2,5,... from bob */
    b.index = json_object();
    for (int i = 0; i < N_MESSAGES; i++) {
        sent_msg *m = &b.msgs[i];
        m->device = i % N_DEVICES;
        snprintf(m->cmid, sizeof m->cmid, "%s-%d", run, i);
        char body[256];
        snprintf(body, sizeof body, "message %d from %s: \"quotes\", back\\slash, tab\t, newline\n, ünïcødé 😀 <b>&amp;",
                 i, b.dev[m->device].name);
        if (i % 97 == 0) {
            /* now and then a long one (about 12 KiB, under the 16 KiB limit) */
            static const char chunk[] = "0123456789 ünïcødé 😀 ";
            size_t n = strlen(body), cap = n + 12 * 1024 + sizeof chunk;
            m->body = malloc(cap);
            memcpy(m->body, body, n);
            while (n + sizeof chunk < 12 * 1024) {
                memcpy(m->body + n, chunk, sizeof chunk - 1);
                n += sizeof chunk - 1;
            }
            m->body[n] = '\0';
        } else {
            m->body = strdup(body);
        }
        json_object_set_new(b.index, m->cmid, json_integer(i));
        device *d = &b.dev[m->device];
        d->order[d->norder++] = i;
    }

    int64_t t0 = test_mono_ms(), last_frame = t0, acks_done_at = 0;
    while (!all_done(&b)) {
        /* one send per device in turn, while its window has room */
        bool sent = true;
        while (sent) {
            sent = false;
            for (int k = 0; k < N_DEVICES; k++) {
                device *d = &b.dev[k];
                if (d->next_send < d->norder && d->next_send - d->acked < WINDOW) {
                    send_one(&b, d);
                    sent = true;
                }
            }
        }
        if (pump(&b, 500))
            last_frame = test_mono_ms();
        int64_t now = test_mono_ms();
        if (!acks_done_at && b.dev[0].acked == b.dev[0].norder && b.dev[1].acked == b.dev[1].norder &&
            b.dev[2].acked == b.dev[2].norder)
            acks_done_at = now;
        ck_assert_msg(now - last_frame < STALL_MS, "nothing received for %d s: %s", STALL_MS / 1000, progress(&b));
        ck_assert_msg(now - t0 < TOTAL_MS, "not done after %d s: %s", TOTAL_MS / 1000, progress(&b));
    }
    int64_t t_done = test_mono_ms();
    /* late frames: a second ack or a message under a second id would show here */
    while (test_mono_ms() - t_done < 1500)
        pump(&b, 200);

    long repeats = 0;
    for (int k = 0; k < N_DEVICES; k++)
        repeats += b.dev[k].repeats;
    printf("test_messaging: %d messages, %d devices: all acked in %lld ms, all delivered in %lld ms "
           "(%.0f msg/s), %ld repeated frames dropped\n",
           N_MESSAGES, N_DEVICES, (long long)(acks_done_at ? acks_done_at - t0 : t_done - t0), (long long)(t_done - t0),
           N_MESSAGES * 1000.0 / (double)(t_done - t0 > 0 ? t_done - t0 : 1), repeats);
    fflush(stdout);

    for (int i = 0; i < N_MESSAGES; i++) {
        sent_msg *m = &b.msgs[i];
        ck_assert_msg(m->acks == 1, "cmid %s got %d acks", m->cmid, m->acks);
        for (int k = 0; k < N_DEVICES; k++) {
            device *d = &b.dev[k];
            ck_assert_msg(d->seq_of[i] == m->seq && strcmp(d->id_of[i], m->id) == 0,
                          "%s saw cmid %s as seq %lld id %s, but its ack says seq %lld id %s", d->name, m->cmid,
                          (long long)d->seq_of[i], d->id_of[i], (long long)m->seq, m->id);
        }
    }
    for (int k = 0; k < N_DEVICES; k++) {
        device *d = &b.dev[k];
        ck_assert_msg(d->distinct == N_MESSAGES, "%s: %lld distinct messages, want %d", d->name, (long long)d->distinct,
                      N_MESSAGES);
        /* the sender's own order: each message's seq above every seq this device sent before */
        int overtaken = 0;
        int64_t highest = 0;
        char first[400] = "";
        for (int j = 0; j < d->norder; j++) {
            sent_msg *m = &b.msgs[d->order[j]];
            if (m->seq < highest) {
                if (overtaken++ == 0)
                    snprintf(first, sizeof first, "%s (send #%d) got seq %lld after an earlier send got seq %lld",
                             m->cmid, j + 1, (long long)m->seq, (long long)highest);
            }
            if (m->seq > highest)
                highest = m->seq;
        }
        ck_assert_msg(overtaken == 0,
                      "%s: order of its own sends not kept: %d of %d messages got a lower seq than "
                      "one sent before them; first: %s",
                      d->name, overtaken, d->norder, first);
    }
    for (int k = 0; k < N_DEVICES; k++) {
        ck_assert_msg(ws_client_shutdown(b.dev[k].ws, 5000) == CHAT_OK, "%s: close handshake not answered",
                      b.dev[k].name);
        json_decref(b.dev[k].ids);
        for (int i = 0; i < N_MESSAGES; i++)
            free(b.dev[k].id_of[i]);
    }
    for (int i = 0; i < N_MESSAGES; i++) {
        free(b.msgs[i].body);
        free(b.msgs[i].id);
    }
    json_decref(b.index);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_messaging");
    return test_run_core(&stack, "messaging", 240, NULL, NULL, NULL,
                         (const TTest *const[]){hello_ping_and_bad_frames, thousand_messages_three_devices, NULL});
}
