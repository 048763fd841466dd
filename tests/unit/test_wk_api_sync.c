/* The api role's sync page assembly (workers/wk_api_sync.c): hot rows and archived events merged
 * by seq (each seq once), the page cut where the archived chunks read end, and the reply's next
 * cursors after a page (has_more), with the planning and settling around them. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "unit_run.h"
#include "wk_api.h"

/* An archived chunk of the events lo..hi (every seq), for the page's range ord. */
typedef struct test_chunk {
    wk_cold_chunk chunk;
    Chat__V1__Event ev[64];
    Chat__V1__Event *evp[64];
} test_chunk;

static void chunk_fill(test_chunk *t, uint64_t lo, uint64_t hi)
{
    memset(t, 0, sizeof *t);
    ck_assert_uint_le(hi - lo + 1, 64);
    for (uint64_t s = lo; s <= hi; s++) {
        Chat__V1__Event *e = &t->ev[s - lo];
        chat__v1__event__init(e);
        e->seq = s;
        t->evp[s - lo] = e;
    }
    t->chunk.n = hi - lo + 1;
    t->chunk.events = t->evp;
}

/* The chunks read for a page: chunks[i] belongs to range ord[i]. */
typedef struct test_cold {
    wk_api_sync_cold cold;
    const wk_cold_chunk *chunks[8];
    size_t ord[8];
} test_cold;

static void cold_init(test_cold *c)
{
    memset(c, 0, sizeof *c);
    c->cold.chunks = c->chunks;
    c->cold.ord = c->ord;
    c->cold.trunc = SIZE_MAX;
    c->cold.trunc_below = UINT64_MAX;
}

static void cold_add(test_cold *c, test_chunk *t, size_t ord)
{
    c->chunks[c->cold.n] = &t->chunk;
    c->ord[c->cold.n++] = ord;
    c->cold.events += t->chunk.n;
}

/* Slots must be in page order: by range, then strictly ascending seq (so each seq once). */
static void assert_page_order(const wk_api_sync_slot *s, size_t n)
{
    for (size_t i = 1; i < n; i++)
        ck_assert_msg(s[i].ord > s[i - 1].ord || (s[i].ord == s[i - 1].ord && s[i].seq > s[i - 1].seq),
                      "slot %zu (range %zu seq %llu) after range %zu seq %llu", i, s[i].ord,
                      (unsigned long long)s[i].seq, s[i - 1].ord, (unsigned long long)s[i - 1].seq);
}

START_TEST(hot_rows_only_keep_their_order)
{
    wk_api_sync_range r[2] = {{.conv = "a", .after = 0, .head = 3}, {.conv = "b", .after = 10, .head = 12}};
    ck_assert_uint_eq(wk_api_sync_plan(r, 2, 100), 2);
    wk_api_sync_hot hot[] = {{0, 1}, {0, 2}, {0, 3}, {1, 11}, {1, 12}};
    test_cold c;
    cold_init(&c);
    wk_api_sync_slot slots[8] = {0};
    ck_assert_uint_eq(wk_api_sync_merge(r, 2, hot, 5, &c.cold, slots), 5);
    assert_page_order(slots, 5);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(slots[i].row, i);
        ck_assert_uint_eq(slots[i].seq, hot[i].seq);
        ck_assert_uint_eq(slots[i].ord, hot[i].ord);
    }
}
END_TEST

START_TEST(archived_events_fill_a_range_within_its_bounds)
{
    /* range a wants (3, 8] of a chunk 1..10; range b (0, 2], all archived in two chunks */
    wk_api_sync_range r[2] = {{.conv = "a", .after = 3, .head = 8}, {.conv = "b", .after = 0, .head = 2}};
    wk_api_sync_plan(r, 2, 100);
    test_chunk k1, k2, k3;
    chunk_fill(&k1, 1, 10);
    chunk_fill(&k2, 1, 1);
    chunk_fill(&k3, 2, 2);
    test_cold c;
    cold_init(&c);
    cold_add(&c, &k1, 0);
    cold_add(&c, &k2, 1);
    cold_add(&c, &k3, 1);
    wk_api_sync_slot slots[16] = {0};
    size_t n = wk_api_sync_merge(r, 2, NULL, 0, &c.cold, slots);
    ck_assert_uint_eq(n, 7);
    assert_page_order(slots, n);
    uint64_t want[] = {4, 5, 6, 7, 8, 1, 2};
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(slots[i].seq, want[i]);
        ck_assert_int_eq(slots[i].row, -1);
        ck_assert_ptr_nonnull(slots[i].cold);
        ck_assert_uint_eq(slots[i].cold->seq, want[i]);
        ck_assert_uint_eq(slots[i].ord, i < 5 ? 0 : 1);
    }
}
END_TEST

START_TEST(hot_and_archived_overlap_each_seq_once)
{
    /* (0, 9]: 1..6 archived, 5..9 still hot (archived between the two reads) */
    wk_api_sync_range r[1] = {{.conv = "a", .after = 0, .head = 9}};
    wk_api_sync_plan(r, 1, 100);
    wk_api_sync_hot hot[] = {{0, 5}, {0, 6}, {0, 7}, {0, 8}, {0, 9}};
    test_chunk k;
    chunk_fill(&k, 1, 6);
    test_cold c;
    cold_init(&c);
    cold_add(&c, &k, 0);
    wk_api_sync_slot slots[16] = {0};
    size_t n = wk_api_sync_merge(r, 1, hot, 5, &c.cold, slots);
    ck_assert_uint_eq(n, 9);
    assert_page_order(slots, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(slots[i].seq, i + 1);
        if (i < 4) {
            ck_assert_int_eq(slots[i].row, -1);
        } else {
            ck_assert_int_eq(slots[i].row, (int)i - 4); /* the hot row wins */
        }
    }
}
END_TEST

START_TEST(hot_rows_between_archived_ones_interleave)
{
    /* two ranges; a: archived 1..4 and hot 5..6; b: hot 3, archived 1..2 and 4..5 */
    wk_api_sync_range r[2] = {{.conv = "a", .after = 0, .head = 6}, {.conv = "b", .after = 0, .head = 5}};
    wk_api_sync_plan(r, 2, 100);
    wk_api_sync_hot hot[] = {{0, 5}, {0, 6}, {1, 3}};
    test_chunk a, b1, b2;
    chunk_fill(&a, 1, 4);
    chunk_fill(&b1, 1, 2);
    chunk_fill(&b2, 4, 5);
    test_cold c;
    cold_init(&c);
    cold_add(&c, &a, 0);
    cold_add(&c, &b1, 1);
    cold_add(&c, &b2, 1);
    wk_api_sync_slot slots[16] = {0};
    size_t n = wk_api_sync_merge(r, 2, hot, 3, &c.cold, slots);
    ck_assert_uint_eq(n, 11);
    assert_page_order(slots, n);
    ck_assert_int_eq(slots[4].row, 0);
    ck_assert_int_eq(slots[5].row, 1);
    ck_assert_uint_eq(slots[8].ord, 1);
    ck_assert_uint_eq(slots[8].seq, 3);
    ck_assert_int_eq(slots[8].row, 2);
}
END_TEST

START_TEST(unplanned_ranges_and_the_chunk_cut_end_the_page)
{
    /* four ranges of 5 events, a page of 12: a and b whole, c (0, 2], d nothing */
    wk_api_sync_range r[4] = {{.conv = "a", .after = 0, .head = 5},
                              {.conv = "b", .after = 0, .head = 5},
                              {.conv = "c", .after = 0, .head = 5},
                              {.conv = "d", .after = 0, .head = 5}};
    size_t planned = wk_api_sync_plan(r, 4, 12);
    ck_assert_uint_eq(planned, 3);
    wk_api_sync_hot hot[] = {{0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}, {2, 1}, {2, 2}};
    test_chunk kb;
    chunk_fill(&kb, 1, 5);
    test_cold c;
    cold_init(&c);
    cold_add(&c, &kb, 1);
    wk_api_sync_slot slots[32] = {0};
    size_t n = wk_api_sync_merge(r, planned, hot, 7, &c.cold, slots);
    ck_assert_uint_eq(n, 12);
    assert_page_order(slots, n);
    ck_assert_uint_eq(slots[n - 1].ord, 2);
    ck_assert_uint_eq(slots[n - 1].seq, 2);

    /* the chunks read end in range b, before its seq 4: b keeps 1..3, c is not served */
    c.cold.trunc = 1;
    c.cold.trunc_below = 4;
    n = wk_api_sync_merge(r, planned, hot, 7, &c.cold, slots);
    ck_assert_uint_eq(n, 8);
    assert_page_order(slots, n);
    ck_assert_uint_eq(slots[n - 1].ord, 1);
    ck_assert_uint_eq(slots[n - 1].seq, 3);
}
END_TEST

START_TEST(next_names_what_the_page_left)
{
    /* a behind by 3, b listed but with nothing new, c behind by 1000: a page of 10 */
    wk_api_sync_range r[3] = {{.conv = "a", .after = 0, .head = 3},
                              {.conv = "b", .after = 5, .head = 5},
                              {.conv = "c", .after = 0, .head = 1000}};
    ck_assert_uint_eq(wk_api_sync_plan(r, 3, 10), 3);
    ck_assert_uint_eq(r[1].upto, 5); /* nothing asked of b */
    wk_api_sync_hot hot[10];
    for (int i = 0; i < 10; i++)
        hot[i] = (wk_api_sync_hot){.ord = i < 3 ? 0 : 2, .seq = i < 3 ? (uint64_t)i + 1 : (uint64_t)i - 2};
    test_cold c;
    cold_init(&c);
    wk_api_sync_slot slots[16] = {0};
    size_t n = wk_api_sync_merge(r, 3, hot, 10, &c.cold, slots);
    ck_assert_uint_eq(n, 10);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_ne(slots[i].ord, 1); /* b: no event */

    Chat__V1__SyncCursor next[3], *nextp[3] = {NULL, NULL, NULL};
    wk_api_sync_settle(r, 3, 3, 0);                            /* the whole page went */
    ck_assert_uint_eq(wk_api_sync_next(r, 3, next, nextp), 1); /* has more: only c */
    ck_assert_ptr_eq(nextp[0], &next[0]);
    ck_assert_str_eq(next[0].conv, "c");
    ck_assert_uint_eq(next[0].after, 7);

    wk_api_sync_settle(r, 3, 0, 2); /* the bytes ran out after a's seq 2 */
    ck_assert_uint_eq(wk_api_sync_next(r, 3, next, nextp), 2);
    ck_assert_str_eq(nextp[0]->conv, "a");
    ck_assert_uint_eq(nextp[0]->after, 2);
    ck_assert_str_eq(nextp[1]->conv, "c");
    ck_assert_uint_eq(nextp[1]->after, 0);

    /* all caught up: no next, no more */
    wk_api_sync_range done[2] = {{.conv = "a", .after = 0, .head = 3}, {.conv = "b", .after = 5, .head = 5}};
    wk_api_sync_plan(done, 2, 10);
    wk_api_sync_settle(done, 2, 2, 0);
    ck_assert_uint_eq(wk_api_sync_next(done, 2, next, nextp), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wk_api_sync");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hot_rows_only_keep_their_order);
    tcase_add_test(tc, archived_events_fill_a_range_within_its_bounds);
    tcase_add_test(tc, hot_and_archived_overlap_each_seq_once);
    tcase_add_test(tc, hot_rows_between_archived_ones_interleave);
    tcase_add_test(tc, unplanned_ranges_and_the_chunk_cut_end_the_page);
    tcase_add_test(tc, next_names_what_the_page_left);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
