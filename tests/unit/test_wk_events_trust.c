/* wk_events_trust: confirmed CHAT_EVENTS checkpoints wait for the broker's sync interval, are
 * taken oldest first with what they move merged, and a full queue never trusts a write earlier. */
#include <check.h>
#include <string.h>

#include "unit_run.h"
#include "wk_events_trust.h"

START_TEST(due_in_order_and_merged)
{
    wk_trust t;
    wk_trust_init(&t, 4);
    int64_t a[4] = {0, 10, 0, 0}, b[4] = {0, 20, 5, 0}, c[4] = {0, 0, 0, 7};
    wk_trust_push(&t, 100, 1, "x:1", false, a);
    wk_trust_push(&t, 200, 3, "conv-a:9", true, b); /* a duplicate: checked by its Nats-Msg-Id */
    wk_trust_push(&t, 300, 4, "y:1", false, c);
    ck_assert_int_eq(wk_trust_due(&t, 99), 0);
    ck_assert_int_eq(wk_trust_due(&t, 100), 1);
    ck_assert_int_eq(wk_trust_due(&t, 250), 2);
    ck_assert_uint_eq(wk_trust_at(&t, 1)->seq, 3);
    ck_assert_str_eq(wk_trust_at(&t, 1)->tag, "conv-a:9");
    ck_assert(wk_trust_at(&t, 1)->by_id);
    ck_assert(!wk_trust_at(&t, 2)->by_id);
    int64_t upto[4] = {0};
    wk_trust_pop(&t, 2, upto);
    ck_assert_int_eq(upto[1], 20);
    ck_assert_int_eq(upto[2], 5);
    ck_assert_int_eq(upto[3], 0); /* the third point is not taken */
    ck_assert_int_eq(t.n, 1);
    ck_assert_int_eq(wk_trust_due(&t, 299), 0);
    ck_assert_uint_eq(wk_trust_at(&t, 0)->seq, 4);
    wk_trust_clear(&t);
    ck_assert_int_eq(wk_trust_due(&t, 1000), 0);
    wk_trust_free(&t);
}
END_TEST

/* A fake broker for wk_trust_check_run: the sequences it lost. */
static wk_trust_verdict lost_1(const wk_trust_point *pt, void *arg)
{
    int *reads = arg;
    (*reads)++;
    return pt->seq == 1 ? WK_TRUST_LOST : WK_TRUST_KEPT;
}

static wk_trust_verdict gone(const wk_trust_point *pt, void *arg)
{
    (void)pt;
    (*(int *)arg)++;
    return WK_TRUST_UNKNOWN;
}

/* nats_power_loss: a checkpoint made before the broker lost its unsynced writes (seq 1, lost) and
 * one made after it came back (seq 2, there) due together: the newer one must not vouch for the
 * older one */
START_TEST(every_due_point_is_read_oldest_first)
{
    wk_trust t;
    wk_trust_init(&t, 2);
    int64_t a[2] = {10, 0}, b[2] = {20, 0};
    wk_trust_push(&t, 100, 1, "before:1", false, a);
    wk_trust_push(&t, 200, 2, "after:1", false, b);
    int reads = 0;
    wk_trust_verdict v;
    ck_assert_int_eq(wk_trust_check_run(&t, wk_trust_due(&t, 300), lost_1, &reads, &v), 0);
    ck_assert_int_eq(v, WK_TRUST_LOST);
    ck_assert_int_eq(reads, 1);
    /* with nothing lost both are read and both kept */
    wk_trust_clear(&t);
    wk_trust_push(&t, 100, 3, "x:1", false, a);
    wk_trust_push(&t, 200, 4, "x:2", false, b);
    reads = 0;
    ck_assert_int_eq(wk_trust_check_run(&t, wk_trust_due(&t, 300), lost_1, &reads, &v), 2);
    ck_assert_int_eq(v, WK_TRUST_KEPT);
    ck_assert_int_eq(reads, 2);
    /* a broker that does not answer keeps them all waiting */
    reads = 0;
    ck_assert_int_eq(wk_trust_check_run(&t, 2, gone, &reads, &v), 0);
    ck_assert_int_eq(v, WK_TRUST_UNKNOWN);
    ck_assert_int_eq(reads, 1);
    wk_trust_free(&t);
}
END_TEST

START_TEST(full_queue_merges_into_the_newest)
{
    wk_trust t;
    wk_trust_init(&t, 2);
    for (int i = 0; i < WK_TRUST_MAX; i++) {
        int64_t u[2] = {i + 1, 0};
        wk_trust_push(&t, 100 + i, (uint64_t)i + 1, "m", false, u);
    }
    int64_t late[2] = {0, 99};
    wk_trust_push(&t, 5000, 500, "conv-b:3", true, late);
    ck_assert_int_eq(t.n, WK_TRUST_MAX);
    /* every point before the newest is due as before; the newest now waits as long as the last */
    ck_assert_int_eq(wk_trust_due(&t, 100 + WK_TRUST_MAX), WK_TRUST_MAX - 1);
    ck_assert_int_eq(wk_trust_due(&t, 5000), WK_TRUST_MAX);
    const wk_trust_point *newest = wk_trust_at(&t, WK_TRUST_MAX - 1);
    ck_assert_uint_eq(newest->seq, 500);
    ck_assert_str_eq(newest->tag, "conv-b:3");
    ck_assert(newest->by_id); /* the merged point checks the write it took, as that write asks */
    ck_assert_int_eq(newest->upto_us[0], WK_TRUST_MAX); /* its own cursor kept */
    ck_assert_int_eq(newest->upto_us[1], 99);           /* and the merged one's */
    /* a merge never lowers the sequence checked */
    wk_trust_push(&t, 6000, 0, "", false, late);
    ck_assert_uint_eq(wk_trust_at(&t, WK_TRUST_MAX - 1)->seq, 500);
    ck_assert(wk_trust_at(&t, WK_TRUST_MAX - 1)->by_id);
    wk_trust_pop(&t, WK_TRUST_MAX, NULL);
    ck_assert_int_eq(t.n, 0);
    wk_trust_free(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wk_events_trust");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, due_in_order_and_merged);
    tcase_add_test(tc, full_queue_merges_into_the_newest);
    tcase_add_test(tc, every_due_point_is_read_oldest_first);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
