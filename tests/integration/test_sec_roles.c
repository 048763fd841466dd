/* Security: each NATS role gets only what it needs (issue 19, finding 4), the api role's side.
 * A gateway calls chat.api.v1.gw.<method>: the api role answers it for a named user only, never
 * in a trusted backend form (history or post.status for user "", the member list of a
 * conversation the user is not in), and serves no backend-only method there (post, conv.delete);
 * the backend's chat.api.v1.<method> keeps its trusted forms. (The NATS permissions that keep a
 * gateway off chat.api.v1.* are checked with the real credentials by nats_cluster_test.sh.)
 * Against the running stack. Main thread of the test program (or its Check child). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_nats.h"
#include "test_check.h"
#include "test_stack.h"

static test_stack stack;

/* The answer to one request: the reply's bytes and the status code it carries. */
typedef struct answer {
    char code[32];
    uint8_t *data;
    size_t len;
} answer;

/* Sends the packed request on subject and waits 5 s for the reply; its status code ("" success)
 * and bytes go into *out (the caller frees out->data). A status-only reply decodes as any reply
 * type, so MembersListReply reads the code of every method's answer. */
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
    Chat__V1__MembersListReply *r = chat__v1__members_list_reply__unpack(NULL, out->len, out->data);
    ck_assert_msg(r != NULL, "%s: undecodable reply", subject);
    snprintf(out->code, sizeof out->code, "%s", r->status ? r->status->code : "");
    chat__v1__members_list_reply__free_unpacked(r, NULL);
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
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: %d %s", rc, out ? out : "");
    free(out);
    out = NULL;
    rc = test_stack_chatctl(&stack, &out, "send", conv, "--from", alice, "--cmid", "r1", "the members' secret", NULL);
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

int main(void)
{
    test_stack_load_or_exit(&stack, "test_sec_roles");
    return test_run_core(&stack, "sec_roles", 60, NULL, NULL, NULL,
                         (const TTest *const[]){gateway_form_has_no_trusted_reads, gateway_form_has_no_backend_methods,
                                                NULL});
}
