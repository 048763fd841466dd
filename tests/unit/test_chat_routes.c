/* common/chat_routes.h: when a gateway's delivery routes may have expired while the ingest kept
 * trusting Redis (the gateway then closes its sessions with 1012: gateway/gw_presence.c). */
#include <check.h>

#include "chat_routes.h"
#include "unit_run.h"

START_TEST(lost_only_after_a_long_failure_within_one_epoch)
{
    const int64_t ok = 1800000000000, since = ok - 60000, late = ok + CHAT_ROUTES_SINCE_TTL_MS + 1;
    ck_assert(chat_routes_lost(true, ok, since, late));
    /* no write failed: an idle gateway writes nothing, and loses nothing */
    ck_assert(!chat_routes_lost(false, ok, since, late));
    /* a short failure: no route expired (a route lives 30 s, rewritten every 10 s) */
    ck_assert(!chat_routes_lost(true, ok, since, ok + CHAT_ROUTES_SINCE_TTL_MS));
    /* the key was missing (Redis restarted empty, or nobody reached it): a new epoch, the ingest
     * distrusts every route until the gateways wrote them all again */
    ck_assert(!chat_routes_lost(true, ok, 0, late));
    /* a new epoch began while this gateway was cut off */
    ck_assert(!chat_routes_lost(true, ok, ok + 5000, late));
    /* the first write ever */
    ck_assert(!chat_routes_lost(true, 0, since, late));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_routes");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, lost_only_after_a_long_failure_within_one_epoch);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
