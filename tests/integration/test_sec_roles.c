/* Security: each NATS role gets only what it needs (issue 19, finding 4), the api role's side.
 * A gateway calls chat.api.v1.gw.<method>: the api role answers it for a named user only, never
 * in a trusted backend form (history or post.status for user "", the member list of a
 * conversation the user is not in), and serves no backend-only method there (post, conv.delete);
 * the backend's chat.api.v1.<method> keeps its trusted forms. A post on chat.in.<p>.<conv> (the
 * only post subject a gateway may publish) is a user's, whatever its gateway field says: a
 * non-member sender is refused; only chat.in.<p>.<conv>.backend posts as anyone. (The NATS
 * permissions that keep a gateway off chat.api.v1.* and the trusted post subject are checked
 * with the real credentials by nats_cluster_test.sh.) A typing reaches the members only through the
 * api role's relay, which refuses one naming a non-member or another conversation than its subject.
 * Against the running stack. Main thread of the test program (or its Check child). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"
#include "test_check.h"
#include "test_stack.h"

static test_stack stack;

/* The answer to one request: the reply's bytes and the status code it carries. */
typedef struct answer {
    char code[32];
    uint8_t *data;
    size_t len;
} answer;

/* Reads a varint at *p (before end); false if it runs past end or over 10 bytes. */
static bool varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* The code of field 1 (a Status) of any reply message, read from its wire form: every reply type
 * starts with it, whatever follows ("" when the status is absent or empty). */
static bool status_code(const uint8_t *data, size_t len, char *code, size_t size)
{
    const uint8_t *p = data, *end = data + len;
    code[0] = '\0';
    while (p < end) {
        uint64_t key = 0, n = 0;
        if (!varint(&p, end, &key))
            return false;
        switch (key & 7) {
        case 0:
            if (!varint(&p, end, &n))
                return false;
            break;
        case 1:
            p += 8;
            break;
        case 5:
            p += 4;
            break;
        case 2:
            if (!varint(&p, end, &n) || n > (uint64_t)(end - p))
                return false;
            if (key >> 3 == 1) {
                Chat__V1__Status *st = chat__v1__status__unpack(NULL, (size_t)n, p);
                if (st == NULL)
                    return false;
                snprintf(code, size, "%s", st->code);
                chat__v1__status__free_unpacked(st, NULL);
            }
            p += n;
            break;
        default:
            return false;
        }
    }
    return p == end;
}

/* Sends the packed request on subject and waits 5 s for the reply; its status code ("" success)
 * and bytes go into *out (the caller frees out->data). */
static void ask(const char *subject, const uint8_t *req, size_t len, answer *out)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "NATS %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    natsMsg *reply = NULL;
    s = natsConnection_Request(&reply, nc, subject, req, (int)len, 5000);
    ck_assert_msg(s == NATS_OK, "%s: %s", subject, natsStatus_GetText(s));
    out->len = (size_t)natsMsg_GetDataLength(reply);
    out->data = malloc(out->len ? out->len : 1);
    memcpy(out->data, natsMsg_GetData(reply), out->len);
    ck_assert_msg(status_code(out->data, out->len, out->code, sizeof out->code), "%s: undecodable reply", subject);
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
}

static void history(const char *subject, const char *conv, const char *user, answer *out)
{
    Chat__V1__HistoryRequest q = CHAT__V1__HISTORY_REQUEST__INIT;
    q.conv = (char *)conv;
    q.user = (char *)user;
    uint8_t buf[256];
    ask(subject, buf, chat__v1__history_request__pack(&q, buf), out);
}

static void members_list(const char *subject, const char *conv, const char *user, answer *out)
{
    Chat__V1__MembersListRequest q = CHAT__V1__MEMBERS_LIST_REQUEST__INIT;
    q.conv = (char *)conv;
    q.user = (char *)user;
    uint8_t buf[256];
    ask(subject, buf, chat__v1__members_list_request__pack(&q, buf), out);
}

/* Whether the reply's bytes contain text anywhere (a member id, a message body). */
static bool mentions(const answer *a, const char *text)
{
    size_t n = strlen(text);
    for (size_t i = 0; i + n <= a->len; i++)
        if (memcmp(a->data + i, text, n) == 0)
            return true;
    return false;
}

/* A conversation of alice and bob with one message; ids in conv, alice, bob, outsider. */
static void setup(char *conv, char *alice, char *bob, char *outsider)
{
    test_stack_unique_id("roles", conv, 64);
    test_stack_unique_id("alice", alice, 64);
    test_stack_unique_id("bob", bob, 64);
    test_stack_unique_id("mallory", outsider, 64);
    test_conv_create(&stack, conv, alice, bob);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "send", conv, "--from", alice, "--cmid", "r1", "the members' secret", NULL);
    ck_assert_msg(rc == 0, "chatctl send: %d %s", rc, out ? out : "");
    free(out);
}

START_TEST(gateway_form_has_no_trusted_reads)
{
    char conv[64], alice[64], bob[64], mallory[64];
    setup(conv, alice, bob, mallory);
    answer a = {0};

    /* the backend's trusted form still reads the whole history (the control) */
    history(CHAT_API_PREFIX "history", conv, "", &a);
    ck_assert_msg(a.code[0] == '\0' && mentions(&a, "the members' secret"), "backend history: code %s", a.code);
    free(a.data);
    /* the gateway form answers a member */
    history(CHAT_API_GW_PREFIX "history", conv, bob, &a);
    ck_assert_msg(a.code[0] == '\0' && mentions(&a, "the members' secret"), "gateway history for bob: code %s",
                  a.code);
    free(a.data);
    /* ... and no one: user "" is refused, a non-member gets not_member, neither learns the text */
    history(CHAT_API_GW_PREFIX "history", conv, "", &a);
    ck_assert_msg(strcmp(a.code, "bad_request") == 0 && !mentions(&a, "secret"), "gateway history for \"\": %s",
                  a.code);
    free(a.data);
    history(CHAT_API_GW_PREFIX "history", conv, mallory, &a);
    ck_assert_msg(strcmp(a.code, "not_member") == 0 && !mentions(&a, "secret"), "gateway history for mallory: %s",
                  a.code);
    free(a.data);

    /* members.list: the gateway form names the asking member; a non-member learns no member */
    members_list(CHAT_API_GW_PREFIX "members.list", conv, bob, &a);
    ck_assert_msg(a.code[0] == '\0' && mentions(&a, alice) && mentions(&a, bob), "members for bob: %s", a.code);
    free(a.data);
    members_list(CHAT_API_GW_PREFIX "members.list", conv, mallory, &a);
    ck_assert_msg(strcmp(a.code, "not_member") == 0 && !mentions(&a, alice) && !mentions(&a, bob),
                  "members for mallory: code %s", a.code);
    free(a.data);
    members_list(CHAT_API_GW_PREFIX "members.list", conv, "", &a);
    ck_assert_msg(strcmp(a.code, "bad_request") == 0 && !mentions(&a, alice), "members for \"\": code %s", a.code);
    free(a.data);
    members_list(CHAT_API_PREFIX "members.list", conv, mallory, &a); /* a backend naming a user: same rule */
    ck_assert_msg(strcmp(a.code, "not_member") == 0 && !mentions(&a, alice), "backend members for mallory: %s",
                  a.code);
    free(a.data);

    /* post.status: no trusted form for a gateway */
    Chat__V1__PostStatusRequest ps = CHAT__V1__POST_STATUS_REQUEST__INIT;
    ps.conv = conv;
    ps.cmid = "r1";
    ps.user = "";
    uint8_t buf[256];
    ask(CHAT_API_GW_PREFIX "post.status", buf, chat__v1__post_status_request__pack(&ps, buf), &a);
    ck_assert_msg(strcmp(a.code, "bad_request") == 0, "gateway post.status for \"\": code %s", a.code);
    free(a.data);
}
END_TEST

START_TEST(gateway_form_has_no_backend_methods)
{
    char conv[64], alice[64], bob[64], mallory[64];
    setup(conv, alice, bob, mallory);
    answer a = {0};

    /* posting as anyone */
    Chat__V1__Post post = CHAT__V1__POST__INIT;
    post.conv = conv;
    post.cmid = "forged";
    post.sender = alice;
    post.body = "forged by a gateway";
    Chat__V1__PostRequest pr = CHAT__V1__POST_REQUEST__INIT;
    pr.post = &post;
    uint8_t buf[512];
    ask(CHAT_API_GW_PREFIX "post", buf, chat__v1__post_request__pack(&pr, buf), &a);
    ck_assert_msg(strcmp(a.code, "bad_request") == 0, "gateway post: code %s", a.code);
    free(a.data);
    /* deleting the conversation, adding oneself */
    Chat__V1__ConvDeleteRequest del = CHAT__V1__CONV_DELETE_REQUEST__INIT;
    del.conv = conv;
    ask(CHAT_API_GW_PREFIX "conv.delete", buf, chat__v1__conv_delete_request__pack(&del, buf), &a);
    ck_assert_msg(strcmp(a.code, "bad_request") == 0, "gateway conv.delete: code %s", a.code);
    free(a.data);
    Chat__V1__MembersChangeRequest add = CHAT__V1__MEMBERS_CHANGE_REQUEST__INIT;
    add.conv = conv;
    char *users[] = {mallory};
    add.users = users;
    add.n_users = 1;
    ask(CHAT_API_GW_PREFIX "members.add", buf, chat__v1__members_change_request__pack(&add, buf), &a);
    ck_assert_msg(strcmp(a.code, "bad_request") == 0, "gateway members.add: code %s", a.code);
    free(a.data);

    /* nothing of it happened: the conversation lives, mallory is no member, nothing was posted */
    history(CHAT_API_PREFIX "history", conv, "", &a);
    ck_assert_msg(a.code[0] == '\0' && !mentions(&a, "forged"), "history after: code %s", a.code);
    free(a.data);
    members_list(CHAT_API_PREFIX "members.list", conv, "", &a);
    ck_assert_msg(a.code[0] == '\0' && !mentions(&a, mallory), "members after: code %s", a.code);
    free(a.data);
}
END_TEST

/* JetStream-publishes a Post from sender with an empty gateway field (what a backend sends, and
 * what a compromised gateway could send) on the user's or the trusted subject. */
static void publish_post(bool trusted, const char *conv, const char *cmid, const char *sender, const char *body)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)conv;
    p.cmid = (char *)cmid;
    p.sender = (char *)sender;
    p.body = (char *)body;
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.gateway = "";
    p.session = "";
    uint8_t buf[512];
    size_t len = chat__v1__post__pack(&p, buf);
    char subject[160], msgid[160];
    int part = (int)chat_partition_of(conv, (uint32_t)stack.cfg.partitions);
    if (trusted)
        chat_subject_in_backend(subject, sizeof subject, part, conv);
    else
        chat_subject_in(subject, sizeof subject, part, conv);
    snprintf(msgid, sizeof msgid, "%s/%s", conv, cmid);
    natsConnection *nc = NULL;
    ck_assert_int_eq(natsConnection_ConnectTo(&nc, stack.cfg.nats_url), NATS_OK);
    jsCtx *js = NULL;
    ck_assert_int_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    natsMsg *msg = NULL;
    ck_assert_int_eq(natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len), NATS_OK);
    natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    jsErrCode jerr = 0;
    natsStatus s = js_PublishMsg(NULL, js, msg, NULL, &jerr);
    natsMsg_Destroy(msg);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    ck_assert_msg(s == NATS_OK, "publish %s: %s (%d)", subject, natsStatus_GetText(s), (int)jerr);
}

/* post.status in the backend's form: the status code ("" once stored). */
static void status_of(const char *conv, const char *cmid, char *code, size_t size)
{
    Chat__V1__PostStatusRequest ps = CHAT__V1__POST_STATUS_REQUEST__INIT;
    ps.conv = (char *)conv;
    ps.cmid = (char *)cmid;
    ps.user = "";
    uint8_t buf[256];
    answer a = {0};
    ask(CHAT_API_PREFIX "post.status", buf, chat__v1__post_status_request__pack(&ps, buf), &a);
    snprintf(code, size, "%s", a.code);
    free(a.data);
}

START_TEST(only_the_trusted_subject_posts_as_anyone)
{
    char conv[64], alice[64], bob[64], mallory[64];
    setup(conv, alice, bob, mallory);
    /* a non-member "system" sender on the user's subject, with the empty gateway field that used
     * to mean "trusted": refused; then the same on the trusted subject, which the partition's
     * owner takes after it (one consumer, stream order), so its commit says the first was decided */
    publish_post(false, conv, "forged-1", mallory, "forged on the user's subject");
    publish_post(true, conv, "notice-1", mallory, "a backend's notice");
    char code[32] = "not_found";
    for (int64_t deadline = test_mono_ms() + 15000; strcmp(code, "not_found") == 0 && test_mono_ms() < deadline;) {
        status_of(conv, "notice-1", code, sizeof code);
        if (strcmp(code, "not_found") == 0)
            chat_sleep_ms(100);
    }
    ck_assert_msg(code[0] == '\0', "the trusted post was not stored: %s", code);
    status_of(conv, "forged-1", code, sizeof code);
    ck_assert_msg(strcmp(code, "not_found") == 0, "the user-subject post of a non-member: %s, want not_found", code);
    answer a = {0};
    history(CHAT_API_PREFIX "history", conv, "", &a);
    ck_assert_msg(a.code[0] == '\0' && mentions(&a, "a backend's notice") && !mentions(&a, "forged"),
                  "history: code %s", a.code);
    free(a.data);
    /* a member on the user's subject is stored as usual */
    publish_post(false, conv, "member-1", bob, "bob through the user's subject");
    strcpy(code, "not_found");
    for (int64_t deadline = test_mono_ms() + 15000; strcmp(code, "not_found") == 0 && test_mono_ms() < deadline;) {
        status_of(conv, "member-1", code, sizeof code);
        if (strcmp(code, "not_found") == 0)
            chat_sleep_ms(100);
    }
    ck_assert_msg(code[0] == '\0', "a member's post on the user's subject: %s", code);
}
END_TEST

/* Publishes Typing{conv, user} on chat.typing.<subject_conv>, as a gateway does. */
static void publish_typing(const char *subject_conv, const char *conv, const char *user)
{
    Chat__V1__Typing t = CHAT__V1__TYPING__INIT;
    t.conv = (char *)conv;
    t.user = (char *)user;
    uint8_t buf[256];
    size_t len = chat__v1__typing__pack(&t, buf);
    char subject[128];
    ck_assert(chat_subject_typing(subject, sizeof subject, subject_conv));
    natsConnection *nc = NULL;
    ck_assert_int_eq(natsConnection_ConnectTo(&nc, stack.cfg.nats_url), NATS_OK);
    ck_assert_int_eq(natsConnection_Publish(nc, subject, buf, (int)len), NATS_OK);
    ck_assert_int_eq(natsConnection_Flush(nc), NATS_OK);
    natsConnection_Destroy(nc);
}

/* The typing frames c receives within ms, as "conv/user" lines in out. */
static void typing_seen(ws_client *c, int ms, char *out, size_t size)
{
    out[0] = '\0';
    int64_t deadline = test_mono_ms() + ms;
    json_t *f = NULL;
    while (test_recv_by(c, deadline, &f) == CHAT_OK) {
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "typing") == 0) {
            size_t n = strlen(out);
            snprintf(out + n, size - n, "%s/%s\n", test_str(f, "conv"), test_str(f, "user"));
        }
        json_decref(f);
    }
}

START_TEST(typing_only_through_the_relay)
{
    char conv[64], alice[64], bob[64], mallory[64], other[64];
    setup(conv, alice, bob, mallory);
    test_stack_unique_id("roles-other", other, sizeof other);
    test_conv_create(&stack, other, mallory, alice);
    ws_client *b = test_connect_user(&stack, bob);
    char seen[512];
    /* a non-member's typing, and a member of another conversation naming this one in the body */
    publish_typing(conv, conv, mallory);
    publish_typing(conv, other, mallory);
    publish_typing(other, conv, alice);
    typing_seen(b, 1500, seen, sizeof seen);
    ck_assert_msg(seen[0] == '\0', "bob got forged typing: %s", seen);
    /* a member's typing is relayed */
    publish_typing(conv, conv, alice);
    typing_seen(b, 3000, seen, sizeof seen);
    char want[160];
    snprintf(want, sizeof want, "%s/%s\n", conv, alice);
    ck_assert_msg(strcmp(seen, want) == 0, "bob's typing frames: \"%s\", want \"%s\"", seen, want);
    ws_client_destroy(b);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_sec_roles");
    return test_run_core(&stack, "sec_roles", 60, NULL, NULL, NULL,
                         (const TTest *const[]){gateway_form_has_no_trusted_reads, gateway_form_has_no_backend_methods,
                                                only_the_trusted_subject_posts_as_anyone, typing_only_through_the_relay,
                                                NULL});
}
