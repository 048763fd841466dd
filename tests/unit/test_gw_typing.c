/* A typing frame's fate (gateway/gw_typing.c, gw_typing_decide): the typing budget first (extras
 * dropped silently, even for a non-member), then the membership cache (not_member, or fanout when
 * the whole list is cached), else a members.list lookup within the lookup budget. The budgets and
 * the cache are the real modules; the bus and the sessions, which gw_typing_handle needs and the
 * decision does not, are stubs that fail the test if called. */
#include <check.h>
#include <stdio.h>

#include "gw_budget.h"
#include "gw_bus.h"
#include "gw_membership.h"
#include "gw_session.h"
#include "gw_typing.h"
#include "unit_run.h"

/* ---- link seams: gw_typing.c's other callees, never reached by gw_typing_decide ---- */

gw_request *gw_bus_request_new(gw_server *srv, gw_request_reply_fn on_reply, uint64_t session, int timeout_ms)
{
    (void)srv, (void)on_reply, (void)session, (void)timeout_ms;
    ck_abort_msg("gw_bus_request_new called");
    return NULL;
}

chat_status gw_bus_request_send(gw_server *srv, gw_request *req, const char *subject, const void *data, size_t len,
                                const char *msg_id)
{
    (void)srv, (void)req, (void)subject, (void)data, (void)len, (void)msg_id;
    ck_abort_msg("gw_bus_request_send called");
    return CHAT_OK;
}

void gw_bus_request_free(gw_server *srv, gw_request *req)
{
    (void)srv, (void)req;
    ck_abort_msg("gw_bus_request_free called");
}

bool gw_bus_no_responders(natsMsg *msg)
{
    (void)msg;
    ck_abort_msg("gw_bus_no_responders called");
    return false;
}

void gw_session_send_error(gw_server *srv, gw_session *s, const char *ref, const char *code, const char *message)
{
    (void)srv, (void)s, (void)ref, (void)code, (void)message;
    ck_abort_msg("gw_session_send_error called");
}

void gw_session_lookup_done(gw_server *srv, uint64_t session)
{
    (void)srv, (void)session;
    ck_abort_msg("gw_session_lookup_done called");
}

gw_session *gw_session_find(gw_server *srv, uint64_t id)
{
    (void)srv, (void)id;
    ck_abort_msg("gw_session_find called");
    return NULL;
}

/* ---- the decision ---- */

#define T0 1000 /* a bucket's clock starts at its first use; 0 means "never used" */

static gw_membership *cache_new(void)
{
    return gw_membership_create(100, GW_MEMBERSHIP_TTL_MS);
}

START_TEST(unknown_membership_asks_for_the_list)
{
    gw_budget *b = NULL;
    gw_membership *m = cache_new();
    ck_assert_int_eq(gw_typing_decide(&b, m, "c1", "alice", T0), GW_TYPING_LOOKUP);
    ck_assert_ptr_nonnull(b);
    /* a member answer alone (members.check, a post) is not the list: still a lookup */
    gw_membership_put(m, "c2", "alice", true, T0);
    ck_assert_int_eq(gw_typing_decide(&b, m, "c2", "alice", T0), GW_TYPING_LOOKUP);
    gw_budget_free(&b);
    gw_membership_destroy(m);
}
END_TEST

START_TEST(a_cached_list_fans_out_without_a_lookup)
{
    gw_budget *b = NULL;
    gw_membership *m = cache_new();
    char *users[] = {"alice", "bob"};
    gw_membership_put_list(m, "c1", users, 2, T0);
    for (int i = 0; i < 30; i++) /* one a second, far more than the lookups in flight allow */
        ck_assert_int_eq(gw_typing_decide(&b, m, "c1", i % 2 ? "bob" : "alice", T0 + i * GW_TYPING_CONV_MS),
                         GW_TYPING_FANOUT);
    ck_assert(gw_budget_lookup(&b, T0 + 30 * GW_TYPING_CONV_MS)); /* no lookup was taken */
    gw_budget_free(&b);
    gw_membership_destroy(m);
}
END_TEST

START_TEST(a_known_non_member_gets_not_member)
{
    gw_budget *b = NULL;
    gw_membership *m = cache_new();
    gw_membership_put(m, "c1", "mallory", false, T0);
    ck_assert_int_eq(gw_typing_decide(&b, m, "c1", "mallory", T0), GW_TYPING_NOT_MEMBER);
    ck_assert_int_eq(gw_typing_decide(&b, m, "c1", "mallory", T0 + 1), GW_TYPING_DROP); /* within its second */
    char *users[] = {"alice"};
    gw_membership_put_list(m, "c2", users, 1, T0);
    /* someone the cached list does not name is unknown, not refused: asked (the members.list
     * answer then records a non-member) */
    ck_assert_int_eq(gw_typing_decide(&b, m, "c2", "mallory", T0 + 2), GW_TYPING_LOOKUP);
    gw_budget_free(&b);
    gw_membership_destroy(m);
}
END_TEST

START_TEST(the_typing_budget_comes_first)
{
    gw_budget *b = NULL;
    gw_membership *m = cache_new();
    char *users[] = {"alice"};
    gw_membership_put_list(m, "c1", users, 1, T0);
    ck_assert_int_eq(gw_typing_decide(&b, m, "c1", "alice", T0), GW_TYPING_FANOUT);
    ck_assert_int_eq(gw_typing_decide(&b, m, "c1", "alice", T0 + GW_TYPING_CONV_MS - 1), GW_TYPING_DROP);
    /* the burst over all conversations: the extras are dropped before the cache is asked, so a
     * non-member past it gets nothing, not even an error */
    gw_membership_put(m, "x", "alice", false, T0);
    for (int i = 1; i < 2 * GW_TYPING_RATE; i++) {
        char conv[8];
        snprintf(conv, sizeof conv, "u%d", i);
        ck_assert_int_eq(gw_typing_decide(&b, m, conv, "alice", T0), GW_TYPING_LOOKUP);
    }
    ck_assert_int_eq(gw_typing_decide(&b, m, "x", "alice", T0), GW_TYPING_DROP);
    ck_assert_int_eq(gw_typing_decide(&b, m, "c1", "alice", T0 + GW_TYPING_CONV_MS), GW_TYPING_FANOUT);
    gw_budget_free(&b);
    gw_membership_destroy(m);
}
END_TEST

START_TEST(lookups_in_flight_are_bounded)
{
    gw_budget *b = NULL;
    gw_membership *m = cache_new();
    int64_t now = T0;
    int lookups = 0;
    for (int i = 0; i < 2 * GW_LOOKUPS_INFLIGHT; i++) {
        char conv[8];
        snprintf(conv, sizeof conv, "c%d", i);
        now += 1000 / GW_TYPING_RATE; /* within the typing rate: only the lookups limit */
        gw_typing_action a = gw_typing_decide(&b, m, conv, "alice", now);
        ck_assert_int_eq(a, (i < GW_LOOKUPS_INFLIGHT ? GW_TYPING_LOOKUP : GW_TYPING_DROP));
        lookups += a == GW_TYPING_LOOKUP;
    }
    ck_assert_int_eq(lookups, GW_LOOKUPS_INFLIGHT);
    gw_budget_lookup_done(b); /* one answered: one more may go */
    ck_assert_int_eq(gw_typing_decide(&b, m, "again", "alice", now + 1000), GW_TYPING_LOOKUP);
    gw_budget_free(&b);
    gw_membership_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_typing");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, unknown_membership_asks_for_the_list);
    tcase_add_test(tc, a_cached_list_fans_out_without_a_lookup);
    tcase_add_test(tc, a_known_non_member_gets_not_member);
    tcase_add_test(tc, the_typing_budget_comes_first);
    tcase_add_test(tc, lookups_in_flight_are_bounded);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
