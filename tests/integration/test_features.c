/* Offline users, sync, receipts, edits, presence and typing, through real WebSocket clients
 * against the running stack (issue 4's tests). The presence-after-kill case starts a gateway of
 * its own on a free port and kill -9s it. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_stack.h"

static test_stack stack;

static ws_client *connect_to(const char *user, int port)
{
    char *token = test_stack_token(&stack, user, 3600);
    ws_connect_opts o = {.host = stack.gateway_host, .port = port, .path = "/ws", .token = token, .timeout_ms = 10000};
    ws_connect_info info;
    ws_client *c = NULL;
    chat_status s = ws_client_connect(&o, &c, &info);
    free(token);
    ck_assert_msg(s == CHAT_OK, "%s cannot connect to port %d: HTTP %d %s", user, port, info.http_status, info.error);
    json_t *hello = NULL;
    ck_assert_msg(test_recv_type(c, "hello", 5000, &hello, NULL) == CHAT_OK, "%s: no hello", user);
    json_decref(hello);
    return c;
}

static ws_client *connect_user(const char *user)
{
    return connect_to(user, stack.gateway_port);
}

static void send_json(ws_client *c, json_t *frame)
{
    ck_assert_msg(ws_client_send_json(c, frame) == CHAT_OK, "send failed: %s", ws_client_error(c));
    json_decref(frame);
}

static void create_conv(const char *conv, const char *a, const char *b, const char *c)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, a, b, c, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create %s exited %d: %s", conv, rc, out ? out : "");
    free(out);
}

/* Sends (kind, fields) and waits for its ack (other frames are kept in skipped). */
static int64_t post_and_ack(ws_client *c, json_t *frame, json_t *skipped)
{
    const char *cmid = test_str(frame, "cmid");
    char want[80];
    snprintf(want, sizeof want, "%s", cmid);
    send_json(c, frame);
    for (;;) {
        json_t *f = NULL;
        ck_assert_msg(test_recv_type(c, "ack", 10000, &f, skipped) == CHAT_OK, "no ack for %s", want);
        bool mine = strcmp(test_str(f, "cmid"), want) == 0;
        int64_t seq = test_int(f, "seq");
        json_decref(f);
        if (mine)
            return seq;
    }
}

/* Collects msg frames of a sync until `synced`; returns them (a JSON array, in arrival order). */
static json_t *sync_all(ws_client *c, json_t *cursors)
{
    json_t *req = json_pack("{s:s}", "type", "sync");
    if (cursors)
        json_object_set_new(req, "cursors", cursors);
    send_json(c, req);
    json_t *msgs = json_array(), *f = NULL;
    ck_assert_msg(test_recv_type(c, "synced", 30000, &f, msgs) == CHAT_OK, "no synced within 30 s");
    json_decref(f);
    json_t *only = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *type = test_str(m, "type");
        if (type && strcmp(type, "msg") == 0)
            json_array_append(only, m);
    }
    json_decref(msgs);
    return only;
}

/* Every conversation of convs has seq 1..per in arrival order, each id once. */
static void check_complete(json_t *msgs, char convs[][80], int nconv, int per, const char *who)
{
    for (int k = 0; k < nconv; k++) {
        int64_t want = 1;
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m)
        {
            if (strcmp(test_str(m, "conv"), convs[k]) != 0)
                continue;
            ck_assert_msg(test_int(m, "seq") == want, "%s: %s seq %lld arrived where %lld was due", who, convs[k],
                          (long long)test_int(m, "seq"), (long long)want);
            want++;
        }
        ck_assert_msg(want == per + 1, "%s: %s has %lld of %d events", who, convs[k], (long long)want - 1, per);
    }
    ck_assert_msg((int)json_array_size(msgs) == nconv * per, "%s: %zu frames, not %d (repeats?)", who,
                  json_array_size(msgs), nconv * per);
}

START_TEST(offline_user_syncs_500_messages)
{
    enum { NCONV = 5, PER = 100 };
    char alice[80], bob[80], convs[NCONV][80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    for (int k = 0; k < NCONV; k++) {
        test_stack_unique_id("sync", convs[k], sizeof convs[k]);
        create_conv(convs[k], alice, bob, NULL);
    }
    ws_client *a = connect_user(alice);
    /* bob is away: alice sends 500 messages, 100 in each conversation, pipelined */
    int acked = 0, sent = 0;
    while (acked < NCONV * PER) {
        while (sent < NCONV * PER && sent - acked < 50) {
            char cmid[32];
            snprintf(cmid, sizeof cmid, "m%d", sent);
            send_json(a, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", convs[sent % NCONV], "cmid", cmid,
                                   "body", "while you were away"));
            sent++;
        }
        json_t *f = NULL;
        ck_assert_msg(test_recv_type(a, "ack", 10000, &f, NULL) == CHAT_OK, "only %d of 500 acked", acked);
        json_decref(f);
        acked++;
    }
    int64_t t0 = test_mono_ms();
    ws_client *b1 = connect_user(bob);
    json_t *got = sync_all(b1, NULL); /* no cursors: from the stored seen cursors (none yet) */
    printf("test_features: bob synced %zu events in %lld ms\n", json_array_size(got), (long long)(test_mono_ms() - t0));
    check_complete(got, convs, NCONV, PER, "bob device 1");
    json_decref(got);
    /* device 1 marks everything seen; a second device syncing from its own cursors (0) gets all
     * of it again, and a sync without cursors after `seen` has nothing left */
    for (int k = 0; k < NCONV; k++)
        send_json(b1, json_pack("{s:s, s:s, s:i}", "type", "seen", "conv", convs[k], "seq", PER));
    ws_client *b2 = connect_user(bob);
    json_t *cursors = json_object();
    for (int k = 0; k < NCONV; k++)
        json_object_set_new(cursors, convs[k], json_integer(0));
    got = sync_all(b2, cursors);
    check_complete(got, convs, NCONV, PER, "bob device 2");
    json_decref(got);
    usleep(600000); /* the gateway batches cursors every 200 ms */
    got = sync_all(b2, NULL);
    size_t leftover = 0, i;
    json_t *m;
    json_array_foreach(got, i, m)
    {
        for (int k = 0; k < NCONV; k++)
            leftover += strcmp(test_str(m, "conv"), convs[k]) == 0;
    }
    ck_assert_msg(leftover == 0, "after seen, a cursor-less sync still sent %zu events", leftover);
    json_decref(got);
    ws_client_destroy(a);
    ws_client_destroy(b1);
    ws_client_destroy(b2);
}
END_TEST

START_TEST(read_receipts_reach_members_and_devices)
{
    char alice[80], bob[80], conv[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("rcpt", conv, sizeof conv);
    create_conv(conv, alice, bob, NULL);
    ws_client *a = connect_user(alice), *b1 = connect_user(bob), *b2 = connect_user(bob);
    int64_t seq = post_and_ack(a, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", "r1", "body",
                                            "read me"), NULL);
    send_json(b1, json_pack("{s:s, s:s, s:I}", "type", "read", "conv", conv, "seq", (json_int_t)seq));
    ws_client *who[] = {a, b2};
    const char *names[] = {"alice", "bob's other device"};
    for (int k = 0; k < 2; k++) {
        json_t *r = NULL;
        ck_assert_msg(test_recv_type(who[k], "receipt", 5000, &r, NULL) == CHAT_OK, "%s got no receipt", names[k]);
        ck_assert_str_eq(test_str(r, "conv"), conv);
        ck_assert_str_eq(test_str(r, "user"), bob);
        ck_assert_int_eq(test_int(r, "read"), seq);
        json_decref(r);
    }
    ws_client_destroy(a);
    ws_client_destroy(b1);
    ws_client_destroy(b2);
}
END_TEST

START_TEST(edits_deletes_reactions_live_and_by_sync)
{
    char alice[80], bob[80], carol[80], conv[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("carol", carol, sizeof carol);
    test_stack_unique_id("chg", conv, sizeof conv);
    create_conv(conv, alice, bob, carol);
    ws_client *a = connect_user(alice), *b = connect_user(bob);
    json_t *bob_frames = json_array(); /* whatever bob receives while waiting for something else */
    int64_t s1 = post_and_ack(a, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", "t1", "body",
                                           "first draft"), NULL);
    /* a non-sender's edit and delete are refused, and nothing is stored */
    send_json(b, json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "edit", "conv", conv, "cmid", "x1", "target",
                           (json_int_t)s1, "body", "hijacked"));
    json_t *e = NULL;
    ck_assert_msg(test_recv_type(b, "error", 5000, &e, bob_frames) == CHAT_OK, "bob's edit of alice's message was not refused");
    ck_assert_str_eq(test_str(e, "ref"), "x1");
    ck_assert_str_eq(test_str(e, "code"), "bad_request");
    json_decref(e);
    send_json(b, json_pack("{s:s, s:s, s:s, s:I}", "type", "delete", "conv", conv, "cmid", "x2", "target", (json_int_t)s1));
    ck_assert_msg(test_recv_type(b, "error", 5000, &e, bob_frames) == CHAT_OK, "bob's delete of alice's message was not refused");
    ck_assert_str_eq(test_str(e, "ref"), "x2");
    json_decref(e);
    int64_t s2 = post_and_ack(a, json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "edit", "conv", conv, "cmid", "t2",
                                           "target", (json_int_t)s1, "body", "final text"), NULL);
    int64_t s3 = post_and_ack(b, json_pack("{s:s, s:s, s:s, s:I, s:s, s:b}", "type", "react", "conv", conv, "cmid", "t3",
                                           "target", (json_int_t)s1, "emoji", "🎉", "on", 1), bob_frames);
    int64_t s4 = post_and_ack(a, json_pack("{s:s, s:s, s:s, s:I}", "type", "delete", "conv", conv, "cmid", "t4", "target",
                                           (json_int_t)s1), NULL);
    ck_assert_msg(s2 == s1 + 1 && s3 == s2 + 1 && s4 == s3 + 1, "changes are not events with their own seq: %lld %lld %lld %lld",
                  (long long)s1, (long long)s2, (long long)s3, (long long)s4);
    /* bob (online) saw every change live, in order */
    const char *kinds[] = {"text", "edit", "reaction", "delete"};
    json_t *seen = json_array();
    size_t i;
    json_t *f0;
    json_array_foreach(bob_frames, i, f0)
    {
        if (strcmp(test_str(f0, "type"), "msg") == 0)
            json_array_append(seen, f0);
    }
    json_decref(bob_frames);
    int64_t deadline = test_mono_ms() + 5000;
    while ((int)json_array_size(seen) < 4 && test_mono_ms() < deadline) {
        json_t *f = NULL;
        if (test_recv_type(b, "msg", 1000, &f, NULL) == CHAT_OK)
            json_array_append_new(seen, f);
    }
    ck_assert_msg(json_array_size(seen) == 4, "bob saw %zu of 4 events live", json_array_size(seen));
    for (int k = 0; k < 4; k++) {
        json_t *f = json_array_get(seen, (size_t)k);
        ck_assert_msg(strcmp(test_str(f, "kind"), kinds[k]) == 0 && test_int(f, "seq") == s1 + k, "live event %d: %s", k,
                      test_json(f));
        if (k > 0)
            ck_assert_int_eq(test_int(f, "target"), s1);
    }
    json_decref(seen);
    /* carol was offline: sync replays the changes in order */
    ws_client *c = connect_user(carol);
    json_t *cursors = json_pack("{s:i}", conv, 0);
    json_t *got = sync_all(c, cursors);
    ck_assert_int_eq(json_array_size(got), 4);
    for (int k = 0; k < 4; k++)
        ck_assert_msg(strcmp(test_str(json_array_get(got, (size_t)k), "kind"), kinds[k]) == 0, "sync event %d: %s", k,
                      test_json(json_array_get(got, (size_t)k)));
    json_decref(got);
    /* history shows the message as deleted */
    send_json(c, json_pack("{s:s, s:s, s:s}", "type", "history", "conv", conv, "ref", "h"));
    json_t *h = NULL;
    ck_assert(test_recv_type(c, "history", 5000, &h, NULL) == CHAT_OK);
    json_t *msgs = json_object_get(h, "messages");
    json_t *oldest = json_array_get(msgs, json_array_size(msgs) - 1);
    ck_assert_msg(test_int(oldest, "seq") == s1 && json_is_true(json_object_get(oldest, "deleted")),
                  "history does not show seq %lld as deleted: %s", (long long)s1, test_json(oldest));
    json_decref(h);
    ws_client_destroy(a);
    ws_client_destroy(b);
    ws_client_destroy(c);
}
END_TEST

START_TEST(typing_reaches_connected_members_only)
{
    char alice[80], bob[80], carol[80], conv[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("carol", carol, sizeof carol);
    test_stack_unique_id("typ", conv, sizeof conv);
    create_conv(conv, alice, bob, carol);
    ws_client *a = connect_user(alice), *b = connect_user(bob);
    send_json(a, json_pack("{s:s, s:s}", "type", "typing", "conv", conv));
    json_t *t = NULL;
    ck_assert_msg(test_recv_type(b, "typing", 5000, &t, NULL) == CHAT_OK, "bob did not see alice typing");
    ck_assert_str_eq(test_str(t, "user"), alice);
    ck_assert_str_eq(test_str(t, "conv"), conv);
    json_decref(t);
    /* carol connects afterwards: the typing was not stored, so neither sync nor history has it */
    ws_client *c = connect_user(carol);
    ck_assert_msg(test_recv_type(c, "typing", 1500, &t, NULL) == CHAT_ERR_TIMEOUT, "carol got a past typing frame");
    json_t *got = sync_all(c, json_pack("{s:i}", conv, 0));
    ck_assert_msg(json_array_size(got) == 0, "typing was stored: %s", test_json(got));
    json_decref(got);
    /* and the typist gets no echo of its own typing */
    ck_assert_msg(test_recv_type(a, "typing", 500, &t, NULL) == CHAT_ERR_TIMEOUT, "alice got her own typing back");
    ws_client_destroy(a);
    ws_client_destroy(b);
    ws_client_destroy(c);
}
END_TEST

/* ---- presence ---- */

/* Why the last presence_of found nothing: CHAT_ERR_TIMEOUT, or the watcher's connection failed. */
static chat_status presence_status;

static json_t *presence_of(ws_client *watcher, const char *user, int timeout_ms)
{
    json_t *p = NULL;
    presence_status = test_recv_type(watcher, "presence", timeout_ms, &p, NULL);
    if (presence_status != CHAT_OK)
        return NULL;
    json_t *u = json_incref(json_object_get(json_object_get(p, "users"), user));
    json_decref(p);
    return u;
}

/* The first presence frame for user whose online state is `online`, within timeout_ms (frames
 * with the other state may come first: announcements race the answer to a query). */
static json_t *presence_until(ws_client *watcher, const char *user, bool online, int timeout_ms)
{
    int64_t deadline = test_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - test_mono_ms();
        if (left <= 0)
            return NULL;
        json_t *u = presence_of(watcher, user, (int)left);
        if (u == NULL && presence_status != CHAT_ERR_TIMEOUT)
            return NULL; /* the watcher's connection is gone: nothing more will come */
        if (u == NULL)
            continue;
        if (json_is_boolean(json_object_get(u, "online")) && json_is_true(json_object_get(u, "online")) == online)
            return u;
        json_decref(u);
    }
}

static void ask_presence(ws_client *watcher, const char *user)
{
    send_json(watcher, json_pack("{s:s, s:[s]}", "type", "presence", "users", user));
}

START_TEST(presence_follows_devices)
{
    char dave[80], eve[80];
    test_stack_unique_id("dave", dave, sizeof dave);
    test_stack_unique_id("eve", eve, sizeof eve);
    ws_client *d = connect_user(dave);
    ask_presence(d, eve);
    json_t *u = presence_of(d, eve, 5000);
    ck_assert_msg(u && json_is_false(json_object_get(u, "online")), "eve is not offline before connecting");
    json_decref(u);
    ws_client *e1 = connect_user(eve);
    u = presence_until(d, eve, true, 5000); /* the change, pushed to the watcher */
    ck_assert_msg(u != NULL, "eve is not online after connecting");
    json_decref(u);
    ws_client *e2 = connect_user(eve);
    ws_client_destroy(e1); /* one of two devices leaves: still online, no offline announcement */
    json_t *wrong = presence_until(d, eve, false, 1000);
    ck_assert_msg(wrong == NULL, "eve announced offline while a device remains: %s", test_json(wrong));
    ask_presence(d, eve);
    u = presence_until(d, eve, true, 5000); /* the answer; nothing says offline in between */
    ck_assert_msg(u != NULL, "eve offline while a device remains");
    json_decref(u);
    int64_t before = (int64_t)time(NULL) * 1000 - 1000;
    ws_client_destroy(e2);
    u = presence_until(d, eve, false, 5000);
    ck_assert_msg(u != NULL, "eve still online after her last device left");
    json_int_t last = json_integer_value(json_object_get(u, "last_seen"));
    ck_assert_msg(last >= before && last <= (int64_t)time(NULL) * 1000 + 1000, "last_seen %lld is not about now",
                  (long long)last);
    json_decref(u);
    ws_client_destroy(d);
}
END_TEST

/* A gateway of this test on a free port (the stack's environment); its log under CHAT_HOME/logs. */
static pid_t spawn_gateway(int port)
{
    char bin[sizeof stack.build_dir + 32], listen[64], log[4200];
    snprintf(bin, sizeof bin, "%s/bin/chat-gateway", stack.build_dir);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/logs/test-features-gateway.log", stack.cfg.home);
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int out = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (out >= 0) {
            dup2(out, 1);
            dup2(out, 2);
        }
        execl(bin, "chat-gateway", "--gateway-listen", listen, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) { /* ready when it accepts */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bool up = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (up)
            return pid;
        usleep(100000);
    }
    kill(pid, SIGKILL);
    ck_abort_msg("the test's gateway did not listen on %s; see %s", listen, log);
    return -1;
}

START_TEST(presence_expires_after_gateway_kill)
{
    char dave[80], eve[80];
    test_stack_unique_id("dave", dave, sizeof dave);
    test_stack_unique_id("eve", eve, sizeof eve);
    int port = test_free_port();
    pid_t gw = spawn_gateway(port);
    ws_client *e = connect_to(eve, port); /* eve on the doomed gateway */
    ws_client *d = connect_user(dave);    /* dave watches from the stack's gateway */
    ask_presence(d, eve);
    json_t *u = presence_until(d, eve, true, 5000);
    ck_assert_msg(u != NULL, "eve is not online on the second gateway");
    json_decref(u);
    int64_t t0 = test_mono_ms(), wall0 = (int64_t)time(NULL);
    kill(gw, SIGKILL);
    waitpid(gw, NULL, 0);
    /* no clean leave: the entry expires after the 30 s TTL and a sweeper announces it */
    u = presence_until(d, eve, false, 45000);
    int64_t took = test_mono_ms() - t0;
    if (u == NULL) { /* what the worker saw, for the one who reads the failure */
        char cmd[4400];
        snprintf(cmd, sizeof cmd, "grep -h 'comp=claims' '%s/logs/worker.log' | tail -n 20", stack.cfg.home);
        fflush(stdout);
        if (system(cmd) != 0)
            printf("test_features: no claims lines in the worker's log\n");
    }
    ck_assert_msg(u != NULL, "eve still online %lld ms after her gateway died (wall clock: %lld s; watcher: %s)",
                  (long long)took, (long long)((int64_t)time(NULL) - wall0),
                  presence_status == CHAT_ERR_TIMEOUT ? "connected" : "connection closed");
    printf("test_features: offline %lld ms after kill -9 of the gateway\n", (long long)took);
    ck_assert_msg(took <= 40000, "offline only after %lld ms (TTL 30 s + sweep 5 s)", (long long)took);
    json_decref(u);
    ws_client_destroy(e);
    ws_client_destroy(d);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_features");
    Suite *s = suite_create("features");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, offline_user_syncs_500_messages);
    tcase_add_test(tc, read_receipts_reach_members_and_devices);
    tcase_add_test(tc, edits_deletes_reactions_live_and_by_sync);
    tcase_add_test(tc, typing_reaches_connected_members_only);
    tcase_add_test(tc, presence_follows_devices);
    tcase_add_test(tc, presence_expires_after_gateway_kill);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
