/* The api role's sync, cursor, conv.list and history tombstones, over NATS request/reply with
 * protobuf (chat.api.v1.*), against the running stack: paging through `next` returns every
 * event once in per-conversation order, stored `seen` cursors serve unlisted conversations,
 * cursors are monotonic watermarks clamped to last_seq with receipts to every member, and a
 * timed sync of 10,000 missed events across 500 conversations (bulk-inserted with SQL). */
#include <check.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_redis.h"
#include "chat_time.h"
#include "test_check.h"
#include "test_stack.h"

#define REQUEST_MS 10000
#define NATS_MAX_PAYLOAD (1024 * 1024)

static test_stack stack;
static natsConnection *nc;
static jsCtx *js;

static void setup(void)
{
    ck_assert_msg(chat_nats_connect(&stack.cfg, "test_sync", true, &nc) == CHAT_OK, "cannot connect to NATS at %s",
                  stack.cfg.nats_url);
    ck_assert_int_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
}

static void teardown(void)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* The reply of chat.api.v1.<method> to req; the caller destroys it. */
static natsMsg *api(const char *method, const ProtobufCMessage *req)
{
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    protobuf_c_message_pack(req, buf);
    char subject[128];
    snprintf(subject, sizeof subject, "%s%s", CHAT_API_PREFIX, method);
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, nc, subject, buf, (int)len, REQUEST_MS);
    free(buf);
    ck_assert_msg(s == NATS_OK, "%s: %s", subject, natsStatus_GetText(s));
    return reply;
}

static void expect_ok(const char *what, const Chat__V1__Status *st)
{
    ck_assert_msg(st == NULL || st->code[0] == '\0', "%s: %s: %s", what, st ? st->code : "", st ? st->message : "");
}

static void conv_create(const char *conv, const char *kind, const char *u1, const char *u2, const char *u3)
{
    char *members[3] = {(char *)u1, (char *)u2, (char *)u3};
    Chat__V1__ConvCreateRequest q = CHAT__V1__CONV_CREATE_REQUEST__INIT;
    q.conv = (char *)conv;
    q.kind = (char *)kind;
    q.members = members;
    q.n_members = u3 ? 3 : u2 ? 2 : 1;
    natsMsg *m = api("conv.create", &q.base);
    Chat__V1__ConvCreateReply *r = chat__v1__conv_create_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                                       (const uint8_t *)natsMsg_GetData(m));
    ck_assert_ptr_nonnull(r);
    expect_ok("conv.create", r->status);
    chat__v1__conv_create_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
}

/* Posts through chat.api.v1.post (answered once committed); returns the seq. */
static uint64_t post(const char *conv, const char *sender, const char *cmid, const char *body)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)conv;
    p.cmid = (char *)cmid;
    p.sender = (char *)sender;
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = (char *)body;
    Chat__V1__PostRequest q = CHAT__V1__POST_REQUEST__INIT;
    q.post = &p;
    q.timeout_ms = 8000;
    natsMsg *m = api("post", &q.base);
    Chat__V1__PostReply *r =
        chat__v1__post_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    ck_assert_ptr_nonnull(r);
    expect_ok("post", r->status);
    uint64_t seq = r->seq;
    chat__v1__post_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
    return seq;
}

/* Publishes a change (edit or delete) as a backend does, straight to CHAT_IN (the trusted form), then waits
 * for post.status to report it stored; returns its seq. */
static uint64_t post_change(const char *conv, const char *sender, const char *cmid, Chat__V1__EventKind kind,
                            uint64_t target, const char *body)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)conv;
    p.cmid = (char *)cmid;
    p.sender = (char *)sender;
    p.kind = kind;
    p.target = target;
    p.body = (char *)body;
    uint8_t buf[1024];
    size_t len = chat__v1__post__pack(&p, buf);
    char subject[160], msgid[160];
    chat_subject_in_backend(subject, sizeof subject, (int)chat_partition_of(conv, (uint32_t)stack.cfg.partitions),
                            conv);
    snprintf(msgid, sizeof msgid, "%s/%s", conv, cmid);
    natsMsg *msg = NULL;
    ck_assert_int_eq(natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len), NATS_OK);
    natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    jsErrCode jerr = 0;
    natsStatus s = js_PublishMsg(NULL, js, msg, NULL, &jerr);
    natsMsg_Destroy(msg);
    ck_assert_msg(s == NATS_OK, "publish %s: %s (%d)", subject, natsStatus_GetText(s), (int)jerr);
    int64_t deadline = test_mono_ms() + 10000;
    for (;;) {
        Chat__V1__PostStatusRequest q = CHAT__V1__POST_STATUS_REQUEST__INIT;
        q.conv = (char *)conv;
        q.cmid = (char *)cmid;
        natsMsg *m = api("post.status", &q.base);
        Chat__V1__PostReply *r =
            chat__v1__post_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
        ck_assert_ptr_nonnull(r);
        uint64_t seq = r->status->code[0] ? 0 : r->seq;
        chat__v1__post_reply__free_unpacked(r, NULL);
        natsMsg_Destroy(m);
        if (seq)
            return seq;
        ck_assert_msg(test_mono_ms() < deadline, "change %s of %s was not stored within 10 s", cmid, conv);
        nats_Sleep(20);
    }
}

static Chat__V1__SyncReply *sync_page(const char *user, Chat__V1__SyncCursor **cursors, size_t n, uint32_t max_events,
                                      bool listed_only, size_t *bytes)
{
    Chat__V1__SyncRequest q = CHAT__V1__SYNC_REQUEST__INIT;
    q.user = (char *)user;
    q.cursors = cursors;
    q.n_cursors = n;
    q.max_events = max_events;
    q.listed_only = listed_only;
    natsMsg *m = api("sync", &q.base);
    if (bytes)
        *bytes = (size_t)natsMsg_GetDataLength(m);
    Chat__V1__SyncReply *r =
        chat__v1__sync_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    natsMsg_Destroy(m);
    ck_assert_ptr_nonnull(r);
    expect_ok("sync", r->status);
    return r;
}

/* One cursor update batch; NULL user ends the list: (conv, user, seen, read) ... */
static void cursor_batch(Chat__V1__CursorUpdate *updates, size_t n)
{
    Chat__V1__CursorUpdate *ptrs[16];
    ck_assert_uint_le(n, 16);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &updates[i];
    Chat__V1__CursorBatch q = CHAT__V1__CURSOR_BATCH__INIT;
    q.updates = ptrs;
    q.n_updates = n;
    natsMsg *m = api("cursor", &q.base);
    Chat__V1__CursorReply *r =
        chat__v1__cursor_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    ck_assert_ptr_nonnull(r);
    expect_ok("cursor", r->status);
    chat__v1__cursor_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
}

static Chat__V1__CursorUpdate cursor(const char *conv, const char *user, uint64_t seen, uint64_t read)
{
    Chat__V1__CursorUpdate u = CHAT__V1__CURSOR_UPDATE__INIT;
    u.conv = (char *)conv;
    u.user = (char *)user;
    u.seen = seen;
    u.read = read;
    return u;
}

static Chat__V1__ConvListReply *conv_list(const char *user)
{
    Chat__V1__ConvListRequest q = CHAT__V1__CONV_LIST_REQUEST__INIT;
    q.user = (char *)user;
    natsMsg *m = api("conv.list", &q.base);
    Chat__V1__ConvListReply *r =
        chat__v1__conv_list_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    natsMsg_Destroy(m);
    ck_assert_ptr_nonnull(r);
    expect_ok("conv.list", r->status);
    return r;
}

static const Chat__V1__ConvSummary *find_summary(const Chat__V1__ConvListReply *r, const char *conv)
{
    for (size_t i = 0; i < r->n_conversations; i++)
        if (strcmp(r->conversations[i]->conv, conv) == 0)
            return r->conversations[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Collecting a whole sync                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct got {
    char conv[65];
    uint64_t seq;
    char body[64];
} got;

typedef struct sync_run {
    got *v;
    size_t n, cap;
    int pages;
    size_t max_bytes, max_page_events;
    int64_t us; /* the requests and replies only, not the checks */
} sync_run;

/* Runs a whole sync as the gateway does: the first page with the client's cursors, then
 * listed_only with `next` until it is empty. Checks each page: at most max_events (when set),
 * under the NATS payload, grouped by conversation, seq ascending within each, continuing
 * exactly where the previous page of that conversation stopped. */
static void sync_all(const char *user, Chat__V1__SyncCursor **first, size_t nfirst, uint32_t max_events, sync_run *run)
{
    memset(run, 0, sizeof *run);
    Chat__V1__SyncReply *prev = NULL;
    for (;;) {
        size_t bytes = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        Chat__V1__SyncReply *r = prev == NULL ? sync_page(user, first, nfirst, max_events, false, &bytes)
                                              : sync_page(user, prev->next, prev->n_next, max_events, true, &bytes);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        run->us += (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
        run->pages++;
        ck_assert_msg(run->pages < 10000, "sync never ends");
        uint32_t cap = max_events == 0 ? 500 : max_events > 1000 ? 1000 : max_events;
        ck_assert_msg(r->n_events <= cap, "page %d has %zu events, more than %u", run->pages, r->n_events, cap);
        ck_assert_msg(bytes < NATS_MAX_PAYLOAD, "page %d is %zu bytes", run->pages, bytes);
        ck_assert_msg(r->n_events > 0 || r->n_next == 0, "page %d: no events but a next", run->pages);
        if (bytes > run->max_bytes)
            run->max_bytes = bytes;
        if (r->n_events > run->max_page_events)
            run->max_page_events = r->n_events;
        for (size_t i = 0; i < r->n_events; i++) {
            const Chat__V1__Event *e = r->events[i];
            if (i > 0 && strcmp(r->events[i - 1]->conv, e->conv) == 0)
                ck_assert_msg(e->seq == r->events[i - 1]->seq + 1, "page %d: %s seq %" PRIu64 " after %" PRIu64,
                              run->pages, e->conv, e->seq, r->events[i - 1]->seq);
            else
                for (size_t j = 0; j + 1 < i; j++)
                    ck_assert_msg(strcmp(r->events[j]->conv, e->conv) != 0, "page %d: %s is not grouped", run->pages,
                                  e->conv);
            if (run->n == run->cap) {
                run->cap = run->cap ? run->cap * 2 : 1024;
                run->v = realloc(run->v, run->cap * sizeof *run->v);
            }
            got *g = &run->v[run->n++];
            snprintf(g->conv, sizeof g->conv, "%s", e->conv);
            g->seq = e->seq;
            snprintf(g->body, sizeof g->body, "%s", e->body);
        }
        if (prev)
            chat__v1__sync_reply__free_unpacked(prev, NULL);
        prev = r;
        if (r->n_next == 0)
            break;
    }
    chat__v1__sync_reply__free_unpacked(prev, NULL);
}

/* The seqs run got of conv must be exactly from+1 .. to, in order. */
static void expect_range(const sync_run *run, const char *conv, uint64_t from, uint64_t to)
{
    uint64_t want = from + 1;
    for (size_t i = 0; i < run->n; i++) {
        if (strcmp(run->v[i].conv, conv) != 0)
            continue;
        ck_assert_msg(run->v[i].seq == want, "%s: got seq %" PRIu64 ", want %" PRIu64 " (a repeat, a gap or disorder)",
                      conv, run->v[i].seq, want);
        want++;
    }
    ck_assert_msg(want == to + 1, "%s: got up to %" PRIu64 ", want %" PRIu64, conv, want - 1, to);
}

static size_t count_conv(const sync_run *run, const char *conv)
{
    size_t n = 0;
    for (size_t i = 0; i < run->n; i++)
        n += strcmp(run->v[i].conv, conv) == 0;
    return n;
}

static Chat__V1__SyncCursor sync_cursor(const char *conv, uint64_t after)
{
    Chat__V1__SyncCursor k = CHAT__V1__SYNC_CURSOR__INIT;
    k.conv = (char *)conv;
    k.after = after;
    return k;
}

/* ------------------------------------------------------------------------------------------ */
/* Tests                                                                                        */
/* ------------------------------------------------------------------------------------------ */

#define NCONV 5
#define PER_CONV 100

/* 500 events over 5 conversations, posted interleaved; paging returns each once, in order. */
START_TEST(sync_pages_every_event_once)
{
    char alice[80], bob[80], carol[80], conv[NCONV][80], other[80];
    test_stack_unique_id("sa", alice, sizeof alice);
    test_stack_unique_id("sb", bob, sizeof bob);
    test_stack_unique_id("sc", carol, sizeof carol);
    test_stack_unique_id("sx", other, sizeof other);
    for (int c = 0; c < NCONV; c++) {
        test_stack_unique_id("sync", conv[c], sizeof conv[c]);
        conv_create(conv[c], "group", alice, bob, NULL);
    }
    conv_create(other, "group", alice, carol, NULL); /* bob is not a member */
    post(other, alice, "o1", "not for bob");
    int64_t t0 = test_mono_ms();
    for (int i = 1; i <= PER_CONV; i++)
        for (int c = 0; c < NCONV; c++) {
            char cmid[32], body[64];
            snprintf(cmid, sizeof cmid, "m%d", i);
            snprintf(body, sizeof body, "c%d-%d", c, i);
            ck_assert_uint_eq(post(conv[c], c % 2 ? alice : bob, cmid, body), (uint64_t)i);
        }
    printf("posted %d events through chat.api.v1.post in %lld ms\n", NCONV * PER_CONV,
           (long long)(test_mono_ms() - t0));

    /* 1. no cursors: everything from the stored seen (0), in pages of 120 */
    sync_run run;
    sync_all(bob, NULL, 0, 120, &run);
    ck_assert_uint_eq(run.n, NCONV * PER_CONV);
    ck_assert_int_eq(run.pages, 5);
    for (int c = 0; c < NCONV; c++) {
        expect_range(&run, conv[c], 0, PER_CONV);
        for (size_t i = 0; i < run.n; i++)
            if (strcmp(run.v[i].conv, conv[c]) == 0) {
                char want[64];
                snprintf(want, sizeof want, "c%d-%" PRIu64, c, run.v[i].seq);
                ck_assert_str_eq(run.v[i].body, want);
            }
    }
    ck_assert_uint_eq(count_conv(&run, other), 0);
    free(run.v);

    /* 2. the default page (500) takes it in one */
    sync_all(bob, NULL, 0, 0, &run);
    ck_assert_uint_eq(run.n, NCONV * PER_CONV);
    ck_assert_int_eq(run.pages, 1);
    free(run.v);

    /* 3. listed cursors win over the stored ones, listed_only keeps to them, a conversation
     * bob is not in (listed or not) gives nothing */
    Chat__V1__SyncCursor k[3] = {sync_cursor(conv[0], 90), sync_cursor(other, 0), sync_cursor(conv[3], 99)};
    Chat__V1__SyncCursor *kp[3] = {&k[0], &k[1], &k[2]};
    size_t bytes;
    Chat__V1__SyncReply *r = sync_page(bob, kp, 3, 0, true, &bytes);
    ck_assert_uint_eq(r->n_events, 11);
    ck_assert_uint_eq(r->n_next, 0);
    uint64_t want0 = 91;
    for (size_t i = 0; i < r->n_events; i++) {
        const Chat__V1__Event *e = r->events[i];
        if (strcmp(e->conv, conv[0]) == 0)
            ck_assert_uint_eq(e->seq, want0++);
        else
            ck_assert_msg(strcmp(e->conv, conv[3]) == 0 && e->seq == 100, "unexpected %s %" PRIu64, e->conv, e->seq);
    }
    ck_assert_uint_eq(want0, 101);
    chat__v1__sync_reply__free_unpacked(r, NULL);
    /* carol (a member of `other` only) listing bob's conversations learns nothing of them */
    r = sync_page(carol, kp, 3, 0, false, &bytes);
    ck_assert_uint_eq(r->n_events, 1);
    ck_assert_str_eq(r->events[0]->conv, other);
    ck_assert_str_eq(r->events[0]->body, "not for bob");
    chat__v1__sync_reply__free_unpacked(r, NULL);

    /* 4. stored seen cursors serve the unlisted conversations */
    Chat__V1__CursorUpdate u[2] = {cursor(conv[1], bob, 50, 0), cursor(conv[2], bob, PER_CONV, 0)};
    cursor_batch(u, 2);
    Chat__V1__SyncCursor k0 = sync_cursor(conv[0], 95), *k0p = &k0;
    sync_all(bob, &k0p, 1, 1000, &run);
    ck_assert_int_eq(run.pages, 1);
    ck_assert_uint_eq(run.n, 5 + 50 + 0 + PER_CONV + PER_CONV);
    expect_range(&run, conv[0], 95, PER_CONV);
    expect_range(&run, conv[1], 50, PER_CONV);
    ck_assert_uint_eq(count_conv(&run, conv[2]), 0);
    expect_range(&run, conv[3], 0, PER_CONV);
    expect_range(&run, conv[4], 0, PER_CONV);
    free(run.v);

    /* 5. the same in pages of 7: the continuation keeps the unlisted conversations' cursors */
    sync_all(bob, &k0p, 1, 7, &run);
    ck_assert_uint_eq(run.n, 255);
    ck_assert_int_eq(run.pages, (255 + 6) / 7);
    expect_range(&run, conv[0], 95, PER_CONV);
    expect_range(&run, conv[1], 50, PER_CONV);
    expect_range(&run, conv[3], 0, PER_CONV);
    expect_range(&run, conv[4], 0, PER_CONV);
    free(run.v);

    /* 6. conv.list: heads and cursors; unread = last_seq - read */
    Chat__V1__CursorUpdate u2 = cursor(conv[4], bob, 0, 40);
    cursor_batch(&u2, 1);
    Chat__V1__ConvListReply *l = conv_list(bob);
    ck_assert_uint_eq(l->n_conversations, NCONV);
    ck_assert_ptr_null(find_summary(l, other));
    for (int c = 0; c < NCONV; c++) {
        const Chat__V1__ConvSummary *s = find_summary(l, conv[c]);
        ck_assert_ptr_nonnull(s);
        ck_assert_str_eq(s->kind, "group");
        ck_assert_uint_eq(s->last_seq, PER_CONV);
        uint64_t seen = c == 1 ? 50 : c == 2 ? PER_CONV : c == 4 ? 40 : 0;
        ck_assert_uint_eq(s->seen, seen);
        ck_assert_uint_eq(s->read, c == 4 ? 40 : 0);
    }
    for (size_t i = 1; i < l->n_conversations; i++)
        ck_assert_int_lt(strcmp(l->conversations[i - 1]->conv, l->conversations[i]->conv), 0);
    chat__v1__conv_list_reply__free_unpacked(l, NULL);
}
END_TEST

/* A page stops early once its events pass about 512 KiB: 40 events of 15 KiB come in at least
 * two pages, each under 1 MB, every event once. */
START_TEST(sync_pages_by_bytes)
{
    char alice[80], conv[80];
    test_stack_unique_id("ba", alice, sizeof alice);
    test_stack_unique_id("big", conv, sizeof conv);
    conv_create(conv, "direct", alice, NULL, NULL);
    char *body = malloc(15 * 1024 + 1);
    memset(body, 'b', 15 * 1024);
    body[15 * 1024] = '\0';
    for (int i = 1; i <= 40; i++) {
        char cmid[16];
        snprintf(cmid, sizeof cmid, "b%d", i);
        post(conv, alice, cmid, body);
    }
    free(body);
    sync_run run;
    sync_all(alice, NULL, 0, 1000, &run);
    ck_assert_uint_eq(run.n, 40);
    expect_range(&run, conv, 0, 40);
    ck_assert_int_ge(run.pages, 2);
    ck_assert_uint_le(run.max_page_events, 36);
    printf("40 events of 15 KiB: %d pages, the largest %zu bytes\n", run.pages, run.max_bytes);
    free(run.v);
    Chat__V1__ConvListReply *l = conv_list(alice);
    ck_assert_uint_eq(l->n_conversations, 1);
    ck_assert_str_eq(l->conversations[0]->kind, "direct");
    chat__v1__conv_list_reply__free_unpacked(l, NULL);
}
END_TEST

/* The next Delivery{receipt} on sub within ms (other deliveries are skipped); NULL if none. */
/* The next receipt delivered on sub (a gateway's subject: DeliveryBatch items) within ms. */
static Chat__V1__Receipt *next_receipt(natsSubscription *sub, int ms)
{
    int64_t deadline = test_mono_ms() + ms;
    for (;;) {
        int64_t left = deadline - test_mono_ms();
        natsMsg *m = NULL;
        if (left <= 0 || natsSubscription_NextMsg(&m, sub, left) != NATS_OK)
            return NULL;
        Chat__V1__DeliveryBatch *db = chat__v1__delivery_batch__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                                       (const uint8_t *)natsMsg_GetData(m));
        natsMsg_Destroy(m);
        ck_assert_ptr_nonnull(db);
        Chat__V1__Receipt *r = NULL;
        for (size_t i = 0; i < db->n_items && r == NULL; i++) {
            Chat__V1__Delivery *d = db->items[i]->delivery;
            if (d && d->item_case == CHAT__V1__DELIVERY__ITEM_RECEIPT) {
                r = d->receipt;
                d->receipt = NULL;
                d->item_case = CHAT__V1__DELIVERY__ITEM__NOT_SET;
            }
        }
        chat__v1__delivery_batch__free_unpacked(db, NULL);
        if (r)
            return r;
    }
}

/* A route of user to a gateway id of the test's own, as the api role writes a claimed one
 * (workers/wk_claims.h), so that deliveries to user come to the test on chat.deliver.g.<gateway>. */
static void route_to(const char *user, const char *gateway)
{
    char err[160];
    redisContext *r = chat_redis_open(&stack.cfg, 2000, err, sizeof err);
    ck_assert_msg(r != NULL, "Redis: %s", err);
    redisReply *x = redisCommand(r, "ZADD presence:%s %lld %s", user, (long long)(chat_now_ms() + 120000), gateway);
    ck_assert_msg(x && x->type == REDIS_REPLY_INTEGER, "ZADD presence:%s: %s", user, x && x->str ? x->str : r->errstr);
    freeReplyObject(x);
    redisFree(r);
}

static void expect_receipt(natsSubscription *sub, const char *who, const char *conv, const char *user, uint64_t seen,
                           uint64_t read)
{
    Chat__V1__Receipt *r = next_receipt(sub, 5000);
    ck_assert_msg(r != NULL, "%s: no receipt of %s read %" PRIu64, who, user, read);
    ck_assert_str_eq(r->conv, conv);
    ck_assert_str_eq(r->user, user);
    ck_assert_msg(r->read == read && r->seen == seen,
                  "%s: receipt of %s says seen %" PRIu64 " read %" PRIu64 ", want %" PRIu64 " %" PRIu64, who, user,
                  r->seen, r->read, seen, read);
    ck_assert_int_gt(r->ts_ms, 0);
    chat__v1__receipt__free_unpacked(r, NULL);
}

static void expect_no_receipt(natsSubscription *sub, const char *who)
{
    Chat__V1__Receipt *r = next_receipt(sub, 400);
    ck_assert_msg(r == NULL, "%s: unexpected receipt of %s seen %" PRIu64 " read %" PRIu64, who, r ? r->user : "",
                  r ? r->seen : 0, r ? r->read : 0);
}

static void expect_cursors(const char *user, const char *conv, uint64_t seen, uint64_t read)
{
    Chat__V1__ConvListReply *l = conv_list(user);
    const Chat__V1__ConvSummary *s = find_summary(l, conv);
    ck_assert_msg(s != NULL, "%s is not in the list of %s", conv, user);
    ck_assert_msg(s->seen == seen && s->read == read,
                  "%s in %s: seen %" PRIu64 " read %" PRIu64 ", want %" PRIu64 " %" PRIu64, user, conv, s->seen,
                  s->read, seen, read);
    chat__v1__conv_list_reply__free_unpacked(l, NULL);
}

/* Cursors only move forward, never past last_seq, only for members; a read that moved is a
 * receipt to every member's gateways (the reader's too). */
START_TEST(cursors_are_monotonic_watermarks_with_receipts)
{
    char alice[80], bob[80], carol[80], dave[80], conv[80];
    test_stack_unique_id("ra", alice, sizeof alice);
    test_stack_unique_id("rb", bob, sizeof bob);
    test_stack_unique_id("rc", carol, sizeof carol);
    test_stack_unique_id("rd", dave, sizeof dave);
    test_stack_unique_id("rcpt", conv, sizeof conv);
    conv_create(conv, "group", alice, bob, carol);
    for (int i = 1; i <= 5; i++) {
        char cmid[16];
        snprintf(cmid, sizeof cmid, "r%d", i);
        post(conv, alice, cmid, "hi");
    }
    const char *users[4] = {alice, bob, carol, dave};
    natsSubscription *sub[4];
    for (int i = 0; i < 4; i++) { /* each user on a gateway of its own: the test */
        char gateway[96], subject[128];
        snprintf(gateway, sizeof gateway, "t%s", users[i]);
        gateway[CHAT_GATEWAY_ID_MAX] = '\0';
        route_to(users[i], gateway);
        chat_subject_deliver_gateway(subject, sizeof subject, gateway);
        ck_assert_int_eq(natsConnection_SubscribeSync(&sub[i], nc, subject), NATS_OK);
    }
    ck_assert_int_eq(natsConnection_Flush(nc), NATS_OK);

    /* bob read 2, seen 3: stored, and a receipt to alice, bob and carol (not dave) */
    Chat__V1__CursorUpdate u1 = cursor(conv, bob, 3, 2);
    cursor_batch(&u1, 1);
    expect_cursors(bob, conv, 3, 2);
    for (int i = 0; i < 3; i++)
        expect_receipt(sub[i], users[i], conv, bob, 3, 2);
    expect_no_receipt(sub[3], "dave");

    /* older values do not move anything back, and nothing is published */
    Chat__V1__CursorUpdate u2 = cursor(conv, bob, 1, 1);
    cursor_batch(&u2, 1);
    expect_cursors(bob, conv, 3, 2);
    expect_no_receipt(sub[0], "alice");

    /* seen alone moves without a receipt */
    Chat__V1__CursorUpdate u3 = cursor(conv, carol, 4, 0);
    cursor_batch(&u3, 1);
    expect_cursors(carol, conv, 4, 0);
    expect_no_receipt(sub[1], "bob");

    /* beyond last_seq: clamped to 5; a read implies seen */
    Chat__V1__CursorUpdate u4 = cursor(conv, bob, 0, 99);
    cursor_batch(&u4, 1);
    expect_cursors(bob, conv, 5, 5);
    for (int i = 0; i < 3; i++)
        expect_receipt(sub[i], users[i], conv, bob, 5, 5);

    /* one batch: repeats merge (highest wins), a non-member and an unknown conversation are
     * ignored, the rest moves */
    Chat__V1__CursorUpdate batch[5] = {cursor(conv, alice, 0, 2), cursor(conv, alice, 1, 4), cursor(conv, alice, 3, 0),
                                       cursor(conv, dave, 5, 5), cursor("no-such-conv-xyz", alice, 1, 1)};
    cursor_batch(batch, 5);
    expect_cursors(alice, conv, 4, 4);
    for (int i = 0; i < 3; i++)
        expect_receipt(sub[i], users[i], conv, alice, 4, 4);
    expect_no_receipt(sub[1], "bob (once per moved read)");
    Chat__V1__ConvListReply *l = conv_list(dave);
    ck_assert_uint_eq(l->n_conversations, 0);
    chat__v1__conv_list_reply__free_unpacked(l, NULL);

    /* a malformed id refuses the batch */
    Chat__V1__CursorUpdate bad = cursor("a.b", alice, 1, 1);
    Chat__V1__CursorUpdate *badp = &bad;
    Chat__V1__CursorBatch q = CHAT__V1__CURSOR_BATCH__INIT;
    q.updates = &badp;
    q.n_updates = 1;
    natsMsg *m = api("cursor", &q.base);
    Chat__V1__CursorReply *r =
        chat__v1__cursor_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    ck_assert_str_eq(r->status->code, "bad_request");
    chat__v1__cursor_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);

    for (int i = 0; i < 4; i++)
        natsSubscription_Destroy(sub[i]);
}
END_TEST

static Chat__V1__HistoryReply *history(const char *conv, const char *user)
{
    Chat__V1__HistoryRequest q = CHAT__V1__HISTORY_REQUEST__INIT;
    q.conv = (char *)conv;
    q.user = (char *)user;
    natsMsg *m = api("history", &q.base);
    Chat__V1__HistoryReply *r =
        chat__v1__history_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    natsMsg_Destroy(m);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* History and sync show a deleted message (and its edits) as deleted, without its text; the
 * delete event itself comes as it is. */
START_TEST(history_tombstones)
{
    char alice[80], bob[80], eve[80], conv[80];
    test_stack_unique_id("ha", alice, sizeof alice);
    test_stack_unique_id("hb", bob, sizeof bob);
    test_stack_unique_id("he", eve, sizeof eve);
    test_stack_unique_id("tomb", conv, sizeof conv);
    conv_create(conv, "group", alice, bob, NULL);
    ck_assert_uint_eq(post(conv, alice, "t1", "secret"), 1);
    ck_assert_uint_eq(post(conv, alice, "t2", "keep"), 2);
    ck_assert_uint_eq(post_change(conv, alice, "t3", CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT, 1, "secret v2"), 3);
    ck_assert_uint_eq(post_change(conv, alice, "t4", CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE, 1, ""), 4);

    Chat__V1__HistoryReply *h = history(conv, bob);
    expect_ok("history", h->status);
    ck_assert_uint_eq(h->n_events, 4);
    Chat__V1__Event **e = h->events; /* newest first */
    ck_assert_uint_eq(e[0]->seq, 4);
    ck_assert_int_eq(e[0]->kind, CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE);
    ck_assert_uint_eq(e[0]->target, 1);
    ck_assert(!e[0]->deleted);
    ck_assert_uint_eq(e[1]->seq, 3);
    ck_assert_int_eq(e[1]->kind, CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT);
    ck_assert(e[1]->deleted);
    ck_assert_str_eq(e[1]->body, "");
    ck_assert_uint_eq(e[2]->seq, 2);
    ck_assert(!e[2]->deleted);
    ck_assert_str_eq(e[2]->body, "keep");
    ck_assert_uint_eq(e[3]->seq, 1);
    ck_assert(e[3]->deleted);
    ck_assert_str_eq(e[3]->body, "");
    ck_assert_str_eq(e[3]->sender, alice);
    ck_assert_int_eq(e[3]->kind, CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT);
    chat__v1__history_reply__free_unpacked(h, NULL);

    /* not a member: refused */
    h = history(conv, eve);
    ck_assert_str_eq(h->status->code, "not_member");
    ck_assert_uint_eq(h->n_events, 0);
    chat__v1__history_reply__free_unpacked(h, NULL);

    /* sync: the log with the same tombstones (the deleted text is served by no path), the delete
     * event included */
    Chat__V1__SyncCursor k = sync_cursor(conv, 0), *kp = &k;
    size_t bytes;
    Chat__V1__SyncReply *r = sync_page(bob, &kp, 1, 0, true, &bytes);
    ck_assert_uint_eq(r->n_events, 4);
    ck_assert(r->events[0]->deleted);
    ck_assert_str_eq(r->events[0]->body, "");
    ck_assert_str_eq(r->events[0]->sender, alice);
    ck_assert(!r->events[1]->deleted);
    ck_assert_str_eq(r->events[1]->body, "keep");
    ck_assert(r->events[2]->deleted);
    ck_assert_str_eq(r->events[2]->body, "");
    ck_assert_int_eq(r->events[3]->kind, CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE);
    ck_assert_uint_eq(r->events[3]->target, 1);
    ck_assert(!r->events[3]->deleted);
    chat__v1__sync_reply__free_unpacked(r, NULL);
    r = sync_page(eve, &kp, 1, 0, true, &bytes);
    ck_assert_uint_eq(r->n_events, 0);
    ck_assert_uint_eq(r->n_next, 0);
    chat__v1__sync_reply__free_unpacked(r, NULL);

    /* a bad user or cursor id is refused */
    Chat__V1__SyncCursor bad = sync_cursor("a b", 0), *badp = &bad;
    const char *users[2] = {"", bob};
    for (int i = 0; i < 2; i++) {
        Chat__V1__SyncRequest q = CHAT__V1__SYNC_REQUEST__INIT;
        q.user = (char *)users[i];
        q.cursors = i ? &badp : NULL;
        q.n_cursors = i ? 1 : 0;
        natsMsg *m = api("sync", &q.base);
        r = chat__v1__sync_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
        ck_assert_str_eq(r->status->code, "bad_request");
        chat__v1__sync_reply__free_unpacked(r, NULL);
        natsMsg_Destroy(m);
    }
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* Timing: 10,000 missed events across 500 conversations                                        */
/* ------------------------------------------------------------------------------------------ */

#define BULK_CONVS 500
#define BULK_EVENTS 20

/* Runs query with up to two text parameters (n of them). */
static void sql(PGconn *pg, const char *what, const char *query, int n, const char *p1, const char *p2)
{
    const char *p[] = {p1, p2};
    PGresult *r = PQexecParams(pg, query, n, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
}

/* Bulk data straight into the tables (as the ingest would have stored it: messages, their dedupe
 * rows and last_seq), then the whole sync timed, with the default page and with 1000. */
START_TEST(sync_10k_events_500_conversations_timed)
{
    char user[80], prefix[80];
    test_stack_unique_id("bulk", user, sizeof user);
    test_stack_unique_id("bk", prefix, sizeof prefix);
    const char *dsn = getenv("CHAT_PG_DSN");
    PGconn *pg = PQconnectdb(dsn ? dsn : stack.cfg.pg_dsn);
    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "PostgreSQL: %s", PQerrorMessage(pg));
    int64_t t0 = test_mono_ms();
    sql(pg, "begin", "BEGIN", 0, NULL, NULL);
    sql(pg, "conversations",
        "INSERT INTO conversations (id, last_seq) SELECT $1 || '-' || g, 20 FROM generate_series(1, 500) g", 1, prefix,
        NULL);
    sql(pg, "members",
        "INSERT INTO conversation_members (conversation_id, user_id)"
        " SELECT $1 || '-' || g, u FROM generate_series(1, 500) g, unnest(ARRAY[$2, 'other']) u",
        2, prefix, user);
    sql(pg, "messages",
        "INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, kind, body, created_at)"
        " SELECT $1 || '-' || g, s, $1 || 'x' || g || 'x' || s, 'k' || s, 'other', 'text',"
        " 'event ' || s || ' ' || repeat('x', 150), now() FROM generate_series(1, 500) g, generate_series(1, 20) s",
        1, prefix, NULL);
    sql(pg, "dedupe",
        "INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)"
        " SELECT conversation_id, client_msg_id, seq, id, created_at FROM messages"
        " WHERE conversation_id LIKE $1 || '-%'",
        1, prefix, NULL);
    sql(pg, "commit", "COMMIT", 0, NULL, NULL);
    PQfinish(pg);
    printf("bulk: %d conversations x %d events inserted in %lld ms\n", BULK_CONVS, BULK_EVENTS,
           (long long)(test_mono_ms() - t0));

    uint32_t sizes[2] = {0, 1000};
    for (int k = 0; k < 2; k++) {
        sync_run run;
        sync_all(user, NULL, 0, sizes[k], &run);
        ck_assert_uint_eq(run.n, BULK_CONVS * BULK_EVENTS);
        for (size_t i = 0; i < run.n; i++) /* conversations whole and in order, none twice */
            ck_assert_uint_eq(run.v[i].seq, i % BULK_EVENTS + 1);
        size_t convs = 0;
        for (size_t i = 0; i < run.n; i += BULK_EVENTS, convs++)
            for (size_t j = 1; j < BULK_EVENTS; j++)
                ck_assert_str_eq(run.v[i + j].conv, run.v[i].conv);
        for (size_t i = BULK_EVENTS; i < run.n; i += BULK_EVENTS)
            ck_assert_int_lt(strcmp(run.v[i - BULK_EVENTS].conv, run.v[i].conv), 0);
        ck_assert_uint_eq(convs, BULK_CONVS);
        printf("sync of %zu events across %d conversations, max_events %u: %d pages in %.1f ms (%.1f ms a page, "
               "request to decoded reply), largest reply %zu bytes\n",
               run.n, BULK_CONVS, sizes[k] ? sizes[k] : 500, run.pages, (double)run.us / 1000.0,
               (double)run.us / 1000.0 / run.pages, run.max_bytes);
        free(run.v);
    }
}
END_TEST

/* A first page that carries events still names every listed conversation the user may not read
 * (and nothing of its content comes): the client turns each into not_member. */
START_TEST(first_page_with_events_names_listed_non_members)
{
    char conv[64], closed[64], alice[64], bob[64];
    test_stack_unique_id("open", conv, sizeof conv);
    test_stack_unique_id("closed", closed, sizeof closed);
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    conv_create(conv, "group", alice, bob, NULL);
    conv_create(closed, "group", bob, NULL, NULL);
    post(conv, bob, "m1", "for alice");
    post(closed, bob, "m2", "not for alice");
    Chat__V1__SyncCursor k1 = sync_cursor(conv, 0), k2 = sync_cursor(closed, 0);
    Chat__V1__SyncCursor *ks[] = {&k1, &k2};
    Chat__V1__SyncReply *r = sync_page(alice, ks, 2, 0, false, NULL);
    ck_assert_msg(r->n_events >= 1, "alice's first page has %zu events", r->n_events);
    for (size_t i = 0; i < r->n_events; i++)
        ck_assert_msg(strcmp(r->events[i]->conv, closed) != 0, "alice got an event of %s", closed);
    ck_assert_msg(r->n_not_member == 1 && strcmp(r->not_member[0], closed) == 0,
                  "not_member names %zu conversations (%s), want %s", r->n_not_member,
                  r->n_not_member ? r->not_member[0] : "", closed);
    chat__v1__sync_reply__free_unpacked(r, NULL);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_sync");
    setvbuf(stdout, NULL, _IONBF, 0);
    return test_run_core(&stack, "sync", 240, setup, teardown, NULL,
                         (const TTest *const[]){sync_pages_every_event_once, sync_pages_by_bytes,
                                                cursors_are_monotonic_watermarks_with_receipts, history_tombstones,
                                                sync_10k_events_500_conversations_timed,
                                                first_page_with_events_names_listed_non_members, NULL});
}
