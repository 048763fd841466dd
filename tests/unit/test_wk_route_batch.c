/* workers/wk_route_batch.c: the per-gateway DeliveryBatches of a fanout (each event once per
 * gateway, its recipients there as indexes into the batch's users, order kept); and
 * wk_routes_split (workers/wk_routes.c): one delivery split by its recipients' gateways. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.pb-c.h"
#include "chat_routes.h"
#include "wk_routes.h"
#include "unit_run.h"
#include "wk_route_batch.h"

#define MAX_OUT 8

/* What the flush handed out, unpacked. */
typedef struct flushed {
    int n;
    char gateway[MAX_OUT][64];
    Chat__V1__DeliveryBatch *batch[MAX_OUT];
    int events[MAX_OUT], recipients[MAX_OUT];
} flushed;

static void collect(const char *gateway, const uint8_t *data, size_t len, int events, int recipients, void *ctx)
{
    flushed *f = ctx;
    ck_assert_int_lt(f->n, MAX_OUT);
    snprintf(f->gateway[f->n], sizeof f->gateway[f->n], "%s", gateway);
    f->batch[f->n] = chat__v1__delivery_batch__unpack(NULL, len, data);
    ck_assert_ptr_nonnull(f->batch[f->n]);
    f->events[f->n] = events;
    f->recipients[f->n] = recipients;
    f->n++;
}

static void flushed_free(flushed *f)
{
    for (int i = 0; i < f->n; i++)
        chat__v1__delivery_batch__free_unpacked(f->batch[i], NULL);
    f->n = 0;
}

static Chat__V1__Event event(const char *conv, uint64_t seq)
{
    Chat__V1__Event e = CHAT__V1__EVENT__INIT;
    e.conv = (char *)conv;
    e.seq = seq;
    e.id = "id";
    return e;
}

/* The user at recipient r of event i of batch b. */
static const char *recipient(const Chat__V1__DeliveryBatch *b, size_t i, size_t r)
{
    ck_assert_uint_lt(i, b->n_events);
    ck_assert_uint_lt(r, b->events[i]->n_recipients);
    uint32_t k = b->events[i]->recipients[r];
    ck_assert_uint_lt(k, b->n_users);
    return b->users[k];
}

START_TEST(one_batch_per_gateway_each_event_once)
{
    wk_route_batches *rb = wk_route_batches_create();
    Chat__V1__Event e1 = event("c", 1), e2 = event("c", 2);
    /* e1: alice on g1 and g2, bob on g1; e2: alice on g1 and g2, carol on g2 */
    wk_route_batches_add(rb, "g1", &e1, "alice");
    wk_route_batches_add(rb, "g2", &e1, "alice");
    wk_route_batches_add(rb, "g1", &e1, "bob");
    wk_route_batches_add(rb, "g1", &e1, "bob"); /* twice: listed once */
    wk_route_batches_add(rb, "g1", &e2, "alice");
    wk_route_batches_add(rb, "g2", &e2, "alice");
    wk_route_batches_add(rb, "g2", &e2, "carol");
    flushed f = {0};
    ck_assert_int_eq(wk_route_batches_flush(rb, collect, &f), 2);
    ck_assert_int_eq(f.n, 2);
    ck_assert_str_eq(f.gateway[0], "g1");
    ck_assert_str_eq(f.gateway[1], "g2");
    const Chat__V1__DeliveryBatch *g1 = f.batch[0], *g2 = f.batch[1];
    ck_assert_uint_eq(g1->n_users, 2);
    ck_assert_uint_eq(g1->n_events, 2);
    ck_assert_uint_eq(g1->events[0]->event->seq, 1);
    ck_assert_uint_eq(g1->events[1]->event->seq, 2);
    ck_assert_uint_eq(g1->events[0]->n_recipients, 2);
    ck_assert_str_eq(recipient(g1, 0, 0), "alice");
    ck_assert_str_eq(recipient(g1, 0, 1), "bob");
    ck_assert_uint_eq(g1->events[1]->n_recipients, 1);
    ck_assert_str_eq(recipient(g1, 1, 0), "alice");
    ck_assert_int_eq(f.events[0], 2);
    ck_assert_int_eq(f.recipients[0], 3);
    ck_assert_uint_eq(g2->n_users, 2);
    ck_assert_uint_eq(g2->n_events, 2);
    ck_assert_str_eq(recipient(g2, 1, 1), "carol");
    ck_assert_int_eq(f.recipients[1], 3);
    flushed_free(&f);
    /* emptied by the flush; the next fanout starts afresh and reuses the memory */
    ck_assert_uint_eq(wk_route_batches_bytes(rb), 0);
    ck_assert_int_eq(wk_route_batches_flush(rb, collect, &f), 0);
    Chat__V1__Event e3 = event("d", 7);
    wk_route_batches_add(rb, "g2", &e3, "dave");
    ck_assert_uint_gt(wk_route_batches_bytes(rb), 0);
    ck_assert_int_eq(wk_route_batches_flush(rb, collect, &f), 1);
    ck_assert_str_eq(f.gateway[0], "g2");
    ck_assert_uint_eq(f.batch[0]->n_users, 1);
    ck_assert_str_eq(recipient(f.batch[0], 0, 0), "dave");
    ck_assert_uint_eq(f.batch[0]->events[0]->event->seq, 7);
    flushed_free(&f);
    wk_route_batches_destroy(rb);
    wk_route_batches_destroy(NULL);
}
END_TEST

START_TEST(many_events_and_users_keep_order)
{
    wk_route_batches *rb = wk_route_batches_create();
    enum { EVENTS = 300, USERS = 40 };
    static Chat__V1__Event ev[EVENTS];
    static char names[USERS][16];
    for (int u = 0; u < USERS; u++)
        snprintf(names[u], sizeof names[u], "u%d", u);
    for (int i = 0; i < EVENTS; i++) {
        ev[i] = event("c", (uint64_t)i + 1);
        for (int u = 0; u < USERS; u++)
            wk_route_batches_add(rb, u % 2 ? "odd" : "even", &ev[i], names[u]);
    }
    flushed f = {0};
    ck_assert_int_eq(wk_route_batches_flush(rb, collect, &f), 2);
    for (int g = 0; g < 2; g++) {
        ck_assert_uint_eq(f.batch[g]->n_users, USERS / 2);
        ck_assert_uint_eq(f.batch[g]->n_events, EVENTS);
        for (int i = 0; i < EVENTS; i++) {
            ck_assert_uint_eq(f.batch[g]->events[i]->event->seq, (uint64_t)i + 1);
            ck_assert_uint_eq(f.batch[g]->events[i]->n_recipients, USERS / 2);
        }
        ck_assert_int_eq(f.recipients[g], EVENTS * USERS / 2);
    }
    flushed_free(&f);
    wk_route_batches_destroy(rb);
}
END_TEST

/* What wk_routes_split hands out, one record per emit. */
typedef struct emitted {
    char gateway[32];
    Chat__V1__DeliveryBatch *db;
} emitted;

typedef struct emits {
    emitted e[16];
    int n;
} emits;

static void record(const char *gateway, const uint8_t *data, size_t len, void *ctx)
{
    emits *es = ctx;
    ck_assert_int_lt(es->n, 16);
    ck_assert_ptr_nonnull(gateway);
    emitted *e = &es->e[es->n++];
    snprintf(e->gateway, sizeof e->gateway, "%s", gateway);
    e->db = chat__v1__delivery_batch__unpack(NULL, len, data);
}

/* One delivery (a receipt) to four users: u1 on g1, u2 on g1 and g2, u3 without a route, u4 on g2.
 * g1 gets one batch for u1 and u2, g2 one for u2 and u4 (first-seen order), u3 nothing (there is
 * no per-user path); the item in each batch is the receipt, for every user listed. */
START_TEST(split_by_gateway_none_without_route)
{
    Chat__V1__Receipt rc = CHAT__V1__RECEIPT__INIT;
    rc.conv = "c1";
    rc.user = "reader";
    rc.read = 7;
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_RECEIPT;
    d.receipt = &rc;
    const char *users[] = {"u1", "u2", "u3", "u4"};
    char g1[] = "g1\0", g12[] = "g1\0g2\0", g2[] = "g2\0";
    char *gws[] = {g1, g12, NULL, g2};
    emits es = {0};
    int routed = wk_routes_split(&d, users, gws, 4, record, &es);
    ck_assert_int_eq(routed, 3);
    ck_assert_int_eq(es.n, 2);
    const char *want_gw[] = {"g1", "g2"};
    const char *want_users[2][2] = {{"u1", "u2"}, {"u2", "u4"}};
    for (int k = 0; k < 2; k++) {
        emitted *e = &es.e[k];
        ck_assert_str_eq(e->gateway, want_gw[k]);
        ck_assert_ptr_nonnull(e->db);
        ck_assert_uint_eq(e->db->n_users, 2);
        ck_assert_str_eq(e->db->users[0], want_users[k][0]);
        ck_assert_str_eq(e->db->users[1], want_users[k][1]);
        ck_assert_uint_eq(e->db->n_events, 0);
        ck_assert_uint_eq(e->db->n_items, 1);
        const Chat__V1__RoutedItem *ri = e->db->items[0];
        ck_assert_uint_eq(ri->n_recipients, 2);
        ck_assert_uint_eq(ri->recipients[0], 0);
        ck_assert_uint_eq(ri->recipients[1], 1);
        ck_assert_int_eq(ri->delivery->item_case, CHAT__V1__DELIVERY__ITEM_RECEIPT);
        ck_assert_str_eq(ri->delivery->receipt->user, "reader");
        ck_assert_uint_eq(ri->delivery->receipt->read, 7);
    }
    for (int i = 0; i < es.n; i++)
        chat__v1__delivery_batch__free_unpacked(es.e[i].db, NULL);
    /* nobody routed: nothing sent */
    char *none[] = {NULL, NULL};
    emits es2 = {0};
    ck_assert_int_eq(wk_routes_split(&d, users, none, 2, record, &es2), 0);
    ck_assert_int_eq(es2.n, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wk_route_batch");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, one_batch_per_gateway_each_event_once);
    tcase_add_test(tc, many_events_and_users_keep_order);
    tcase_add_test(tc, split_by_gateway_none_without_route);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
