/* The ingest's parts that stand without a database or a broker: which metric and which answer
 * each drop reason gets, reading JetStream ack subjects, the subjects of a committer's inbox, the
 * validation of a Post decoded from bytes built here and a batch's grouping (workers/wk_ingestp.h). */
#include <check.h>
#include <string.h>

#include "wk_ingestp.h"
#include "unit_run.h"

/* ------------------------------------------------------------------------------------------ */
/* Drop reasons                                                                                 */
/* ------------------------------------------------------------------------------------------ */

START_TEST(drop_metrics)
{
    ck_assert_int_eq(wk_ingest_drop_info(DROP_NOT_MEMBER)->metric, DM_NOT_MEMBER);
    ck_assert_int_eq(wk_ingest_drop_info(DROP_NO_CONVERSATION)->metric, DM_NO_CONVERSATION);
    ck_assert_int_eq(wk_ingest_drop_info(DROP_POISON)->metric, DM_POISON);
    ck_assert_int_eq(wk_ingest_drop_info(DROP_TARGET_MISSING)->metric, DM_NO_TARGET);
    ck_assert_int_eq(wk_ingest_drop_info(DROP_TARGET_DELETED)->metric, DM_NO_TARGET);
    /* everything else is "invalid", including refusals that are not about the post's form */
    drop_reason invalid[] = {
        DROP_NONE,           DROP_UNDECODABLE,    DROP_BAD_ID,         DROP_BAD_KIND,         DROP_CHANGE_NO_TARGET,
        DROP_BAD_EMOJI,      DROP_BODY_TOO_LARGE, DROP_META_TOO_LARGE, DROP_SUBJECT_MISMATCH, DROP_META_NOT_OBJECT,
        DROP_TARGET_NOT_OWN, DROP_ARCHIVING,      DROP_CMID_TAKEN,     DROP_FIRST_REFUSED};
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        ck_assert_int_eq(wk_ingest_drop_info(invalid[i])->metric, DM_INVALID);
}
END_TEST

START_TEST(drop_answers)
{
    /* a non-member is told the same whether the conversation exists or not; the log keeps it */
    const drop_info *nm = wk_ingest_drop_info(DROP_NOT_MEMBER), *nc = wk_ingest_drop_info(DROP_NO_CONVERSATION);
    ck_assert_str_eq(nm->reject_code, "not_member");
    ck_assert_str_eq(nc->reject_code, "not_member");
    ck_assert_str_eq(nm->told, "not a member of this conversation");
    ck_assert_str_eq(nc->told, nm->told);
    ck_assert_str_eq(nm->text, "sender not a member");
    ck_assert_str_eq(nc->text, "no such conversation");

    ck_assert_str_eq(wk_ingest_drop_info(DROP_TARGET_MISSING)->reject_code, "not_found");
    ck_assert_str_eq(wk_ingest_drop_info(DROP_ARCHIVING)->reject_code, "unavailable");
    ck_assert_str_eq(wk_ingest_drop_info(DROP_FIRST_REFUSED)->reject_code, "unavailable");
    ck_assert_str_eq(wk_ingest_drop_info(DROP_BAD_ID)->reject_code, "bad_request");
    ck_assert_str_eq(wk_ingest_drop_info(DROP_BAD_ID)->told, "bad id");
    ck_assert_str_eq(wk_ingest_drop_info(DROP_CMID_TAKEN)->told,
                     "cmid already names another sender's message in this conversation; send with a new cmid");
    /* poison is logged and counted, not told */
    ck_assert_ptr_null(wk_ingest_drop_info(DROP_POISON)->reject_code);
    ck_assert_str_eq(wk_ingest_drop_info(DROP_POISON)->text, "poison");

    /* every reason has its text; out of range reads as a drop without reason */
    for (int r = 0; r < DROP_REASON_COUNT; r++) {
        ck_assert_ptr_nonnull(wk_ingest_drop_info((drop_reason)r)->text);
        ck_assert_ptr_nonnull(wk_ingest_drop_info((drop_reason)r)->told);
        if (r != DROP_NONE && r != DROP_POISON)
            ck_assert_ptr_nonnull(wk_ingest_drop_info((drop_reason)r)->reject_code);
    }
    ck_assert_str_eq(wk_ingest_drop_info(DROP_REASON_COUNT)->text, "invalid");
    ck_assert_str_eq(wk_ingest_drop_info((drop_reason)-1)->text, "invalid");
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* Ack subjects and inbox subjects                                                              */
/* ------------------------------------------------------------------------------------------ */


START_TEST(inbox_subjects)
{
    const char *inbox = "_INBOX.abcdef";
    inbox_subject is;
    /* a pulled message keeps its own subject */
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "chat.in.3.conv1", &is));
    ck_assert_int_eq(is.part, 3);
    ck_assert(is.pulled);
    ck_assert(!is.lag);
    ck_assert_int_eq(is.lane, LANE_LIVE);
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "chat.in.15.conv1.backend", &is));
    ck_assert_int_eq(is.part, 15);
    ck_assert_int_eq(is.lane, LANE_LIVE);
    /* a bulk import's post, from the other stream */
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "chat.bulk.2.conv1", &is));
    ck_assert_int_eq(is.part, 2);
    ck_assert(is.pulled);
    ck_assert_int_eq(is.lane, LANE_BULK);
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "chat.bulk.16.conv1", &is));
    /* a pull request's end, with the epoch of the lease that asked */
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "_INBOX.abcdef.7.42", &is));
    ck_assert_int_eq(is.part, 7);
    ck_assert(!is.pulled);
    ck_assert_int_eq(is.epoch, 42);
    ck_assert(!is.lag);
    /* the answer to a lag request */
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "_INBOX.abcdef.7.42.lag", &is));
    ck_assert_int_eq(is.epoch, 42);
    ck_assert(is.lag);
    ck_assert_int_eq(is.lane, LANE_LIVE);
    /* the bulk lane's request ends and lag answers */
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "_INBOX.abcdef.7.42.b", &is));
    ck_assert_int_eq(is.epoch, 42);
    ck_assert_int_eq(is.lane, LANE_BULK);
    ck_assert(!is.lag);
    ck_assert(wk_ingest_inbox_subject(inbox, 16, "_INBOX.abcdef.7.42.b.lag", &is));
    ck_assert_int_eq(is.lane, LANE_BULK);
    ck_assert(is.lag);
    /* not ours, or no partition */
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "chat.in.16.conv1", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "chat.in.-1.conv1", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "chat.in.x.conv1", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "chat.in.3", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "_INBOX.abcdefg.7.42", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "_INBOX.other.7.42", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "_INBOX.abcdef.", &is));
    ck_assert(!wk_ingest_inbox_subject(inbox, 16, "chat.deliver.u.alice", &is));
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* Validation of a decoded Post                                                                 */
/* ------------------------------------------------------------------------------------------ */

static Chat__V1__Post text_post(void)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = "conv1";
    p.cmid = "cmid-1";
    p.sender = "alice";
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = "hello";
    return p;
}

/* Packs p, decodes it as the committer does (a message on subject) and validates it: the reason.
 * *backend, when not NULL, gets the item's backend flag. */
static drop_reason check_post(const Chat__V1__Post *p, const char *subject, bool *backend)
{
    size_t len = chat__v1__post__get_packed_size(p);
    uint8_t *bytes = malloc(len ? len : 1);
    chat__v1__post__pack(p, bytes);
    natsMsg *msg = NULL;
    ck_assert_int_eq(natsMsg_Create(&msg, subject, NULL, (const char *)bytes, (int)len), NATS_OK);
    free(bytes);
    batch b = {0};
    wk_ingest_batch_add(&b, &(item){.msg = msg});
    wk_ingest_batch_decode(&b, 2);
    ck_assert_int_eq(b.items[0].part, 2);
    ck_assert_ptr_nonnull(b.items[0].post);
    b.items[0].state = I_NEW;
    wk_ingest_validate(&b.items[0], subject);
    drop_reason r = b.items[0].drop;
    ck_assert_int_eq(b.items[0].state, r == DROP_NONE ? I_NEW : I_DROP);
    if (backend)
        *backend = b.items[0].backend;
    wk_ingest_batch_reset(&b);
    free(b.items);
    return r;
}

START_TEST(validate_text)
{
    Chat__V1__Post p = text_post();
    bool backend = true;
    ck_assert_int_eq(check_post(&p, "chat.in.2.conv1", &backend), DROP_NONE);
    ck_assert(!backend);
    ck_assert_int_eq(check_post(&p, "chat.in.2.conv1.backend", &backend), DROP_NONE);
    ck_assert(backend);
    p.meta_json = "{\"a\":1}";
    ck_assert_int_eq(check_post(&p, "chat.in.2.conv1", NULL), DROP_NONE);
}
END_TEST

START_TEST(validate_faults)
{
    const char *subject = "chat.in.2.conv1";
    Chat__V1__Post p = text_post();
    p.sender = "al ice";
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_BAD_ID);
    p = text_post();
    p.cmid = "";
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_BAD_ID);
    p = text_post();
    p.kind = (Chat__V1__EventKind)99;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_BAD_KIND);
    p = text_post();
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_CHANGE_NO_TARGET);
    p.target = 4;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_NONE);
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_BAD_EMOJI);
    char emoji[66];
    memset(emoji, 'x', 65);
    emoji[65] = '\0';
    p.emoji = emoji;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_BAD_EMOJI);
    emoji[64] = '\0';
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_NONE);

    static char big[16 * 1024 + 2];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    p = text_post();
    p.body = big;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_BODY_TOO_LARGE);
    big[16 * 1024] = '\0'; /* exactly the limit */
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_NONE);
    p = text_post();
    big[16 * 1024] = 'b';
    p.meta_json = big;
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_META_TOO_LARGE);

    p = text_post();
    ck_assert_int_eq(check_post(&p, "chat.in.2.conv2", NULL), DROP_SUBJECT_MISMATCH);
    ck_assert_int_eq(check_post(&p, "chat.in.2.conv", NULL), DROP_SUBJECT_MISMATCH);
    ck_assert_int_eq(check_post(&p, "chat.in.2.conv1.other", NULL), DROP_SUBJECT_MISMATCH);
    p.meta_json = "[1]";
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_META_NOT_OBJECT);
    p.meta_json = "{\"a\":1,\"a\":2}";
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_META_NOT_OBJECT);
    p.meta_json = "{";
    ck_assert_int_eq(check_post(&p, subject, NULL), DROP_META_NOT_OBJECT);
}
END_TEST

START_TEST(validate_undecodable)
{
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    natsMsg *msg = NULL;
    ck_assert_int_eq(natsMsg_Create(&msg, "chat.in.2.conv1", NULL, (const char *)junk, sizeof junk), NATS_OK);
    batch b = {0};
    wk_ingest_batch_add(&b, &(item){.msg = msg});
    wk_ingest_batch_decode(&b, 2);
    ck_assert_ptr_null(b.items[0].post);
    wk_ingest_validate(&b.items[0], "chat.in.2.conv1");
    ck_assert_int_eq(b.items[0].state, I_DROP);
    ck_assert_int_eq(b.items[0].drop, DROP_UNDECODABLE);
    wk_ingest_batch_reset(&b);
    free(b.items);
}
END_TEST

/* A message as the committer buffers it: the packed post on subject, acked on reply. */
static void add_message(batch *b, const Chat__V1__Post *p, const char *subject, const char *reply)
{
    size_t len = chat__v1__post__get_packed_size(p);
    uint8_t *bytes = malloc(len ? len : 1);
    chat__v1__post__pack(p, bytes);
    natsMsg *msg = NULL;
    ck_assert_int_eq(natsMsg_Create(&msg, subject, reply, (const char *)bytes, (int)len), NATS_OK);
    free(bytes);
    wk_ingest_batch_add(b, &(item){.msg = msg});
}

/* Each attempt starts afresh: a repeat of a (conv, cmid) points at its first copy, every
 * conversation of a valid post is listed once, the broker timestamp comes from the ack subject. */
START_TEST(batch_groups)
{
    batch b = {0};
    Chat__V1__Post p = text_post();
    add_message(&b, &p, "chat.in.2.conv1", "$JS.ACK.CHAT_IN.ingest-2-1.1.10.10.1795832157506000000.3");
    p.cmid = "cmid-2";
    add_message(&b, &p, "chat.in.2.conv1", "$JS.ACK.CHAT_IN.ingest-2-1.1.11.11.1795832157507000000.2");
    p = text_post(); /* the first one's (conv, cmid) again */
    add_message(&b, &p, "chat.in.2.conv1", "$JS.ACK.CHAT_IN.ingest-2-1.1.12.12.1795832157508000000.1");
    p.conv = "conv2";
    add_message(&b, &p, "chat.in.2.conv2", NULL);
    p.conv = "conv3";
    p.sender = "";
    add_message(&b, &p, "chat.in.2.conv3", "$JS.ACK.CHAT_IN.ingest-2-1.1.13.13.1795832157509000000.0");
    wk_ingest_batch_decode(&b, 2);
    for (int attempt = 0; attempt < 2; attempt++) {
        wk_ingest_batch_prepare(&b);
        ck_assert_int_eq(b.items[0].state, I_NEW);
        ck_assert_int_eq(b.items[1].state, I_NEW);
        ck_assert_int_eq(b.items[2].state, I_DUP);
        ck_assert_int_eq(b.items[2].dup_of, 0);
        ck_assert_int_eq(b.items[3].state, I_NEW);
        ck_assert_int_eq(b.items[4].state, I_DROP);
        ck_assert_int_eq(b.items[4].drop, DROP_BAD_ID);
        ck_assert_int_eq(b.items[0].ts_us, 1795832157506000LL);
        ck_assert_int_eq(b.items[1].ts_us, 1795832157507000LL);
        ck_assert_int_gt(b.items[3].ts_us, 0); /* no ack subject: now */
        ck_assert_int_eq(b.nconvs, 2);         /* conv3's post is dropped */
        ck_assert_ptr_nonnull(wk_ingest_find_conv(&b, "conv1"));
        ck_assert_ptr_nonnull(wk_ingest_find_conv(&b, "conv2"));
        ck_assert_ptr_null(wk_ingest_find_conv(&b, "conv3"));
        ck_assert_int_eq(wk_ingest_find_conv(&b, "conv1")->n, 0); /* members come from the store */
        wk_ingest_reject(&b.items[0], DROP_NOT_MEMBER);           /* undone by the next attempt */
    }
    wk_ingest_batch_reset(&b);
    ck_assert_int_eq(b.n, 0);
    free(b.items);
}
END_TEST

/* nats.c's library state, which natsMsg_Create needs. */
static void nats_setup(void)
{
    ck_assert_int_eq(nats_Open(-1), NATS_OK);
}

static void nats_teardown(void)
{
    nats_Close();
}

static Suite *suite(void)
{
    Suite *s = suite_create("wk_ingest");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, nats_setup, nats_teardown);
    tcase_add_test(tc, drop_metrics);
    tcase_add_test(tc, drop_answers);
    tcase_add_test(tc, inbox_subjects);
    tcase_add_test(tc, validate_text);
    tcase_add_test(tc, validate_faults);
    tcase_add_test(tc, validate_undecodable);
    tcase_add_test(tc, batch_groups);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(suite());
}
