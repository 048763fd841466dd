/* Sending the same cmid again stores and delivers the message once and acks it again with the same
 * seq and id: at once, and after closing and reconnecting; the same cmid in another conversation
 * is another message. Against the gateway of the running stack. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_check.h"
#include "test_stack.h"

static test_stack stack;

static void create_conversation(const char *conv, const char *u1, const char *u2)
{
    test_conv_create(&stack, conv, u1, u2);
}

static void send_msg(ws_client *c, const char *conv, const char *cmid, const char *body)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", body);
    chat_status s = ws_client_send_json(c, f);
    json_decref(f);
    ck_assert_msg(s == CHAT_OK, "send %s: %s (%s)", cmid, chat_status_str(s), ws_client_error(c));
}

/* What one connection received: acks and msg frames in arrival order. */
typedef struct seen {
    const char *name;
    json_t *acks; /* array */
    json_t *msgs; /* array, repeats included */
} seen;

static void seen_init(seen *s, const char *name)
{
    s->name = name;
    s->acks = json_array();
    s->msgs = json_array();
}

static void seen_free(seen *s)
{
    json_decref(s->acks);
    json_decref(s->msgs);
}

static int count_cmid(const json_t *frames, const char *cmid)
{
    size_t i;
    json_t *f;
    int n = 0;
    json_array_foreach(frames, i, f)
    {
        const char *c = test_str(f, "cmid");
        if (c && strcmp(c, cmid) == 0)
            n++;
    }
    return n;
}

/* Receives on c for up to timeout_ms until acks for cmid number want_acks and a msg frame with
 * cmid has come (msg_cmid NULL: no msg needed); other frames must be members frames. */
static void collect(ws_client *c, seen *s, const char *cmid, int want_acks, const char *msg_cmid, int timeout_ms)
{
    int64_t deadline = test_mono_ms() + timeout_ms;
    for (;;) {
        bool acks_ok = !cmid || count_cmid(s->acks, cmid) >= want_acks;
        bool msg_ok = !msg_cmid || count_cmid(s->msgs, msg_cmid) >= 1;
        if (acks_ok && msg_ok)
            return;
        int64_t left = deadline - test_mono_ms();
        json_t *f = NULL;
        chat_status st = ws_client_recv_json(c, left > 0 ? (int)left : 0, &f);
        ck_assert_msg(st == CHAT_OK,
                      "%s: waiting for %d ack(s) of %s (have %d) and a msg of %s (have %d): %s (%s); acks %s msgs %s",
                      s->name, want_acks, cmid ? cmid : "-", cmid ? count_cmid(s->acks, cmid) : 0,
                      msg_cmid ? msg_cmid : "-", msg_cmid ? count_cmid(s->msgs, msg_cmid) : 0, chat_status_str(st),
                      ws_client_error(c), test_json(s->acks), test_json(s->msgs));
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "ack") == 0)
            json_array_append_new(s->acks, f);
        else if (type && strcmp(type, "msg") == 0)
            json_array_append_new(s->msgs, f);
        else if (type && strcmp(type, "members") == 0)
            json_decref(f);
        else
            ck_abort_msg("%s: unexpected frame: %s", s->name, test_json(f));
    }
}

/* Everything that comes on c within ms. */
static void linger(ws_client *c, seen *s, int ms)
{
    int64_t deadline = test_mono_ms() + ms;
    for (;;) {
        json_t *f = NULL;
        chat_status st = test_recv_by(c, deadline, &f);
        if (st == CHAT_ERR_TIMEOUT)
            return;
        ck_assert_msg(st == CHAT_OK, "%s: %s (%s)", s->name, chat_status_str(st), ws_client_error(c));
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "ack") == 0)
            json_array_append_new(s->acks, f);
        else if (type && strcmp(type, "msg") == 0)
            json_array_append_new(s->msgs, f);
        else if (type && strcmp(type, "members") == 0)
            json_decref(f);
        else
            ck_abort_msg("%s: unexpected frame: %s", s->name, test_json(f));
    }
}

/* Checks every ack of cmid in s: conv, the same seq and id as want_seq / want_id (the first one
 * sets them when *want_seq is 0). */
static void check_acks(const seen *s, const char *conv, const char *cmid, int64_t *want_seq, char *want_id, size_t idsz)
{
    size_t i;
    json_t *f;
    json_array_foreach(s->acks, i, f)
    {
        if (!test_str(f, "cmid") || strcmp(test_str(f, "cmid"), cmid) != 0)
            continue;
        const char *id = test_str(f, "id");
        int64_t seq = test_int(f, "seq");
        ck_assert_msg(test_str(f, "conv") && strcmp(test_str(f, "conv"), conv) == 0, "%s: ack of another conv: %s",
                      s->name, test_json(f));
        ck_assert_msg(seq > 0 && id && id[0], "%s: ack without seq or id: %s", s->name, test_json(f));
        if (*want_seq == 0) {
            *want_seq = seq;
            snprintf(want_id, idsz, "%s", id);
        }
        ck_assert_msg(seq == *want_seq && strcmp(id, want_id) == 0,
                      "%s: cmid %s acked again with seq %lld id %s, first with seq %lld id %s: %s", s->name, cmid,
                      (long long)seq, id, (long long)*want_seq, want_id, test_json(s->acks));
    }
}

/* The msg frames of s after dropping repeated ids: exactly the (cmid, seq, id) expected, in
 * seq order 1..n. */
static void check_msgs(const seen *s, const char *conv, int n, const char *const *cmids, const int64_t *seqs,
                       const char *const *ids)
{
    json_t *distinct = json_object();
    json_t *order = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(s->msgs, i, f)
    {
        const char *id = test_str(f, "id");
        ck_assert_msg(test_str(f, "conv") && strcmp(test_str(f, "conv"), conv) == 0, "%s: msg of another conv: %s",
                      s->name, test_json(f));
        ck_assert_msg(id && id[0], "%s: msg without id: %s", s->name, test_json(f));
        json_t *first = json_object_get(distinct, id);
        if (first) {
            ck_assert_msg(test_int(first, "seq") == test_int(f, "seq"), "%s: id %s with two seqs: %s and %s", s->name,
                          id, test_json(first), test_json(f));
            continue;
        }
        json_object_set(distinct, id, f);
        json_array_append(order, f);
    }
    ck_assert_msg((int)json_array_size(order) == n, "%s: %zu distinct messages, want %d (stored once each): %s",
                  s->name, json_array_size(order), n, test_json(s->msgs));
    json_array_foreach(order, i, f)
    {
        ck_assert_msg(strcmp(test_str(f, "cmid") ? test_str(f, "cmid") : "", cmids[i]) == 0 &&
                          test_int(f, "seq") == seqs[i] && strcmp(test_str(f, "id"), ids[i]) == 0,
                      "%s: message %zu is %s, want cmid %s seq %lld id %s", s->name, i + 1, test_json(f), cmids[i],
                      (long long)seqs[i], ids[i]);
    }
    json_decref(order);
    json_decref(distinct);
}

/* chatctl history of conv as an array of frames. */
static json_t *history(const char *conv)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "history", conv, "--limit", "100", NULL);
    ck_assert_msg(rc == 0, "chatctl history %s exited %d: %s", conv, rc, out ? out : "");
    json_t *lines = json_array();
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        ck_assert_msg(j != NULL, "chatctl history printed a line that is not JSON (%s): %s", err.text, line);
        json_array_append_new(lines, j);
    }
    free(out);
    return lines;
}

START_TEST(same_cmid_stored_once)
{
    char alice[80], bob[80], conv[80], conv2[80], cmid[80], cmid2[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("conv", conv2, sizeof conv2);
    test_stack_unique_id("k", cmid, sizeof cmid);
    test_stack_unique_id("k", cmid2, sizeof cmid2);
    create_conversation(conv, alice, bob);
    create_conversation(conv2, alice, bob);

    ws_client *a = test_connect_user(&stack, alice), *b = test_connect_user(&stack, bob);
    seen sa, sb;
    seen_init(&sa, "alice");
    seen_init(&sb, "bob");

    /* 1. the same cmid twice at once */
    send_msg(a, conv, cmid, "only once, please");
    send_msg(a, conv, cmid, "only once, please");
    collect(a, &sa, cmid, 2, cmid, 15000);
    collect(b, &sb, NULL, 0, cmid, 15000);
    int64_t seq = 0;
    char id[128] = "";
    check_acks(&sa, conv, cmid, &seq, id, sizeof id);
    ck_assert_msg(seq == 1, "the first message of a new conversation got seq %lld, want 1", (long long)seq);

    /* 2. closed and reconnected (a client that lost its connection sends again) */
    ck_assert_msg(ws_client_shutdown(a, 5000) == CHAT_OK, "alice: close handshake not answered");
    seen sa2;
    seen_init(&sa2, "alice (reconnected)");
    a = test_connect_user(&stack, alice);
    send_msg(a, conv, cmid, "only once, please");
    collect(a, &sa2, cmid, 1, NULL, 15000);
    check_acks(&sa2, conv, cmid, &seq, id, sizeof id);

    /* 3. a new cmid after that takes the next seq: the repeats took none */
    send_msg(a, conv, cmid2, "the second message");
    collect(a, &sa2, cmid2, 1, cmid2, 15000);
    collect(b, &sb, NULL, 0, cmid2, 15000);
    int64_t seq2 = 0;
    char id2[128] = "";
    check_acks(&sa2, conv, cmid2, &seq2, id2, sizeof id2);
    ck_assert_msg(seq2 == seq + 1, "the next message got seq %lld, want %lld", (long long)seq2, (long long)seq + 1);
    ck_assert_msg(strcmp(id2, id) != 0, "two messages with one id %s", id);
    linger(a, &sa2, 1000);
    linger(b, &sb, 1000);
    ck_assert_msg(count_cmid(sa.acks, cmid) == 2 && count_cmid(sa2.acks, cmid) == 1 && count_cmid(sa2.acks, cmid2) == 1,
                  "one ack per send: first connection %s, second %s", test_json(sa.acks), test_json(sa2.acks));

    /* every device saw each message once (after dropping repeated ids), in seq order */
    const char *cmids[] = {cmid, cmid2}, *ids[] = {id, id2};
    int64_t seqs[] = {seq, seq2};
    check_msgs(&sb, conv, 2, cmids, seqs, ids);
    json_array_extend(sa.msgs, sa2.msgs); /* alice's two connections together */
    check_msgs(&sa, conv, 2, cmids, seqs, ids);

    /* 4. the store has it once */
    json_t *h = history(conv);
    ck_assert_msg(json_array_size(h) == 2 && count_cmid(h, cmid) == 1 && count_cmid(h, cmid2) == 1,
                  "chatctl history %s shows %zu messages, want 2 (cmid %s once, %s once): %s", conv, json_array_size(h),
                  cmid, cmid2, test_json(h));
    size_t i;
    json_t *f;
    json_array_foreach(h, i, f)
    {
        const char *c = test_str(f, "cmid");
        if (c && strcmp(c, cmid) == 0)
            ck_assert_msg(test_int(f, "seq") == seq && strcmp(test_str(f, "id") ? test_str(f, "id") : "", id) == 0,
                          "history has cmid %s as %s, the ack said seq %lld id %s", cmid, test_json(f), (long long)seq,
                          id);
    }
    json_decref(h);

    /* 5. the same cmid in another conversation is another message */
    seen sc;
    seen_init(&sc, "alice (second conversation)");
    send_msg(a, conv2, cmid, "same cmid, other conversation");
    collect(a, &sc, cmid, 1, NULL, 15000);
    int64_t seq_other = 0;
    char id_other[128] = "";
    check_acks(&sc, conv2, cmid, &seq_other, id_other, sizeof id_other);
    ck_assert_msg(seq_other == 1 && strcmp(id_other, id) != 0,
                  "cmid %s in %s was acked with seq %lld id %s; want seq 1 and an id other than %s", cmid, conv2,
                  (long long)seq_other, id_other, id);

    seen_free(&sa);
    seen_free(&sa2);
    seen_free(&sb);
    seen_free(&sc);
    ck_assert_msg(ws_client_shutdown(a, 5000) == CHAT_OK, "alice: close handshake not answered");
    ck_assert_msg(ws_client_shutdown(b, 5000) == CHAT_OK, "bob: close handshake not answered");
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_dedupe");
    return test_run_core(&stack, "dedupe", 120, NULL, NULL, NULL, (const TTest *const[]){same_cmid_stored_once, NULL});
}
