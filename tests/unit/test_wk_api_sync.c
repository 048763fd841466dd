/* The api role's sync page assembly (workers/wk_api_sync.c): hot rows and archived events merged
 * by seq (each seq once), the page cut where the archived chunks read end, and the reply's next
 * cursors after a page (has_more), with the planning and settling around them; then the events
 * taken under the byte budget, deleted messages as tombstones, and where the page stopped. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit_run.h"
#include "wk_api.h"
#include "wk_apip.h"

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

/* ---- the events taken from the slots: a result with the events query's columns ---- */

static PGresult *rows_new(void)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc att[API_SYNC_DELETED + 1];
    memset(att, 0, sizeof att);
    for (int i = 0; i <= API_SYNC_DELETED; i++) {
        att[i].name = (char *)"column";
        att[i].typid = 25; /* text */
        att[i].typlen = -1;
        att[i].atttypmod = -1;
    }
    ck_assert(PQsetResultAttrs(r, API_SYNC_DELETED + 1, att));
    return r;
}

static void row_set(PGresult *r, int row, int field, const char *value)
{
    ck_assert(PQsetvalue(r, row, field, (char *)value, value ? (int)strlen(value) : -1));
}

/* A text message of range ord (0-based) with body (NULL: not read), fits and deleted as the
 * query says; returns its row. */
static int row_add(PGresult *r, size_t ord, uint64_t seq, const char *body, bool fits, bool deleted)
{
    int row = PQntuples(r);
    char text[32];
    snprintf(text, sizeof text, "%llu", (unsigned long long)seq);
    row_set(r, row, H_SEQ, text);
    snprintf(text, sizeof text, "id-%llu", (unsigned long long)seq);
    row_set(r, row, H_ID, text);
    row_set(r, row, H_CMID, text);
    row_set(r, row, H_SENDER, "alice");
    row_set(r, row, H_KIND, "text");
    row_set(r, row, H_BODY, body);
    row_set(r, row, H_META, body ? "{}" : NULL);
    row_set(r, row, H_TARGET, NULL);
    row_set(r, row, H_EMOJI, "");
    row_set(r, row, H_ON, "f");
    row_set(r, row, H_TS, "1000");
    snprintf(text, sizeof text, "%zu", ord + 1);
    row_set(r, row, API_SYNC_ORD, text);
    row_set(r, row, API_SYNC_FITS, fits ? "t" : "f");
    row_set(r, row, API_SYNC_DELETED, deleted ? "t" : "f");
    return row;
}

static char body100[101];

static void taken_free(api_sync_taken *t)
{
    free(t->events);
    free(t->eventp);
    free(t->from_cold);
}

/* The hot slots of rows (all of them, in order). */
static size_t hot_slots(PGresult *rows, wk_api_sync_slot *slots)
{
    int n = PQntuples(rows);
    for (int i = 0; i < n; i++)
        slots[i] = (wk_api_sync_slot){.ord = strtoull(PQgetvalue(rows, i, API_SYNC_ORD), NULL, 10) - 1,
                                      .seq = strtoull(PQgetvalue(rows, i, H_SEQ), NULL, 10),
                                      .row = i};
    return (size_t)n;
}

START_TEST(deleted_messages_come_out_as_tombstones)
{
    wk_api_sync_range r[1] = {{.conv = "a", .after = 0, .head = 3}};
    wk_api_sync_plan(r, 1, 100);
    PGresult *rows = rows_new();
    row_add(rows, 0, 1, "hello", true, false);
    row_add(rows, 0, 2, NULL, true, true); /* deleted: its body was never read out */
    row_add(rows, 0, 3, "again", true, false);
    wk_api_sync_slot slots[4];
    api_sync_source src = {.ranges = r, .n = 1, .rows = rows, .slots = slots, .budget = 1 << 20, .trunc = SIZE_MAX};
    src.nslots = hot_slots(rows, slots);
    api_sync_taken t = {0};
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.sent, 3);
    ck_assert_uint_eq(t.cut, 1); /* not cut */
    for (size_t i = 0; i < 3; i++) {
        ck_assert_ptr_eq(t.eventp[i], &t.events[i]);
        ck_assert_uint_eq(t.events[i].seq, i + 1);
        ck_assert_str_eq(t.events[i].conv, "a");
        ck_assert(!t.from_cold[i]);
    }
    ck_assert(!t.events[0].deleted);
    ck_assert_str_eq(t.events[0].body, "hello");
    ck_assert(t.events[1].deleted);
    ck_assert_str_eq(t.events[1].body, "");
    ck_assert_str_eq(t.events[1].meta_json, "");
    ck_assert_str_eq(t.events[1].id, "id-2"); /* drawn in place: id, sender, kind stay */
    ck_assert_str_eq(t.events[1].sender, "alice");
    ck_assert_int_eq(t.events[1].kind, CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT);
    ck_assert(!t.events[2].deleted);
    ck_assert_str_eq(t.events[2].body, "again");
    taken_free(&t);
    PQclear(rows);
}
END_TEST

START_TEST(archived_events_are_marked_for_their_tombstones)
{
    wk_api_sync_range r[1] = {{.conv = "a", .after = 0, .head = 4}};
    wk_api_sync_plan(r, 1, 100);
    test_chunk k;
    chunk_fill(&k, 1, 2);
    PGresult *rows = rows_new();
    row_add(rows, 0, 3, "hot", true, false);
    wk_api_sync_slot slots[3] = {{.ord = 0, .seq = 1, .row = -1, .cold = k.evp[0]},
                                 {.ord = 0, .seq = 2, .row = -1, .cold = k.evp[1]},
                                 {.ord = 0, .seq = 3, .row = 0}};
    api_sync_source src = {
        .ranges = r, .n = 1, .rows = rows, .slots = slots, .nslots = 3, .budget = 1 << 20, .trunc = SIZE_MAX};
    api_sync_taken t = {0};
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.sent, 3);
    ck_assert(t.from_cold[0] && t.from_cold[1] && !t.from_cold[2]);
    ck_assert_str_eq(t.events[0].conv, "a"); /* the chunk's events carry no conv of their own */
    ck_assert_uint_eq(t.events[1].seq, 2);
    taken_free(&t);
    PQclear(rows);
}
END_TEST

START_TEST(the_byte_budget_cuts_the_page_and_next_continues_there)
{
    /* a: 3 events of 100 bytes, b: 2; a budget of 350 bytes of events */
    memset(body100, 'x', 100);
    wk_api_sync_range r[2] = {{.conv = "a", .after = 10, .head = 13}, {.conv = "b", .after = 0, .head = 2}};
    ck_assert_uint_eq(wk_api_sync_plan(r, 2, 100), 2);
    PGresult *rows = rows_new();
    for (uint64_t s = 11; s <= 13; s++)
        row_add(rows, 0, s, body100, true, false);
    row_add(rows, 1, 1, body100, true, false);
    row_add(rows, 1, 2, body100, true, false);
    wk_api_sync_slot slots[8];
    api_sync_source src = {.ranges = r, .n = 2, .rows = rows, .slots = slots, .budget = 350, .trunc = SIZE_MAX};
    src.nslots = hot_slots(rows, slots);
    api_sync_taken t = {0};
    api_sync_take_events(&src, &t);
    /* each event packs to about 140 bytes: after two, 280 < 350, after three the budget is passed */
    ck_assert_uint_eq(t.sent, 3);
    ck_assert_uint_eq(t.cut, 1);      /* stopped at b's first event */
    ck_assert_uint_eq(t.cut_done, 0); /* nothing of b sent: its after */
    wk_api_sync_settle(r, 2, t.cut, t.cut_done);
    Chat__V1__SyncCursor next[2], *nextp[2];
    ck_assert_uint_eq(wk_api_sync_next(r, 2, next, nextp), 1); /* has more: b from 0 */
    ck_assert_str_eq(nextp[0]->conv, "b");
    ck_assert_uint_eq(nextp[0]->after, 0);
    taken_free(&t);

    /* a budget of one byte: still one event (progress), the page stops inside a */
    src.budget = 1;
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.sent, 1);
    ck_assert_uint_eq(t.cut, 0);
    ck_assert_uint_eq(t.cut_done, 11);
    wk_api_sync_settle(r, 2, t.cut, t.cut_done);
    ck_assert_uint_eq(wk_api_sync_next(r, 2, next, nextp), 2);
    ck_assert_uint_eq(nextp[0]->after, 11);
    taken_free(&t);
    PQclear(rows);
}
END_TEST

START_TEST(a_row_past_the_query_budget_ends_the_page_after_the_first)
{
    /* the query read no body past its budget (fits "f"): the page stops before such a row,
     * unless it is the first, which goes anyway */
    wk_api_sync_range r[1] = {{.conv = "a", .after = 0, .head = 3}};
    wk_api_sync_plan(r, 1, 100);
    PGresult *rows = rows_new();
    row_add(rows, 0, 1, "one", true, false);
    row_add(rows, 0, 2, NULL, false, false);
    row_add(rows, 0, 3, NULL, false, false);
    wk_api_sync_slot slots[4];
    api_sync_source src = {.ranges = r, .n = 1, .rows = rows, .slots = slots, .budget = 1 << 20, .trunc = SIZE_MAX};
    src.nslots = hot_slots(rows, slots);
    api_sync_taken t = {0};
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.sent, 1);
    ck_assert_uint_eq(t.cut, 0);
    ck_assert_uint_eq(t.cut_done, 1);
    taken_free(&t);

    src.slots = slots + 1; /* a page that starts at a row the query did not read */
    src.nslots = 2;
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.sent, 1);
    ck_assert_uint_eq(t.events[0].seq, 2);
    ck_assert_uint_eq(t.cut_done, 2);
    taken_free(&t);
    PQclear(rows);
}
END_TEST

START_TEST(the_chunks_read_end_the_page_where_they_stop)
{
    /* everything fits, but the archived chunks read ended in range b (trunc) */
    wk_api_sync_range r[3] = {{.conv = "a", .after = 0, .head = 2},
                              {.conv = "b", .after = 4, .head = 9},
                              {.conv = "c", .after = 0, .head = 1}};
    wk_api_sync_plan(r, 3, 100);
    PGresult *rows = rows_new();
    row_add(rows, 0, 1, "a1", true, false);
    row_add(rows, 0, 2, "a2", true, false);
    row_add(rows, 1, 5, "b5", true, false);
    wk_api_sync_slot slots[4];
    api_sync_source src = {.ranges = r, .n = 3, .rows = rows, .slots = slots, .budget = 1 << 20, .trunc = 1};
    src.nslots = hot_slots(rows, slots);
    api_sync_taken t = {0};
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.sent, 3);
    ck_assert_uint_eq(t.cut, 1);
    ck_assert_uint_eq(t.cut_done, 5); /* b continues after its last event sent */
    taken_free(&t);

    src.nslots = 2; /* nothing of b in the page: b continues from its cursor */
    api_sync_take_events(&src, &t);
    ck_assert_uint_eq(t.cut, 1);
    ck_assert_uint_eq(t.cut_done, 4);
    wk_api_sync_settle(r, 3, t.cut, t.cut_done);
    Chat__V1__SyncCursor next[3], *nextp[3];
    ck_assert_uint_eq(wk_api_sync_next(r, 3, next, nextp), 2); /* b and c */
    ck_assert_str_eq(nextp[0]->conv, "b");
    ck_assert_uint_eq(nextp[0]->after, 4);
    ck_assert_str_eq(nextp[1]->conv, "c");
    taken_free(&t);
    PQclear(rows);
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
    TCase *take = tcase_create("take");
    tcase_add_test(take, deleted_messages_come_out_as_tombstones);
    tcase_add_test(take, archived_events_are_marked_for_their_tombstones);
    tcase_add_test(take, the_byte_budget_cuts_the_page_and_next_continues_there);
    tcase_add_test(take, a_row_past_the_query_budget_ends_the_page_after_the_first);
    tcase_add_test(take, the_chunks_read_end_the_page_where_they_stop);
    suite_add_tcase(s, take);
    return unit_run(s);
}
