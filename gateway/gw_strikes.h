/* Refused upgrades per client address (CHAT_WS_REFUSED_PER_IP): each refusal (a bad, expired or
 * missing token, a wrong path or Origin) takes a token from the address's bucket (refilled at
 * that rate, holding ten times it); an address whose bucket is empty is refused at once, before
 * its token is looked at, so a client trying tokens costs at most that many signature checks a
 * second. At most GW_STRIKES_MAX addresses are followed (full buckets are forgotten first); past
 * that a new address is not limited. Opaque; lws thread only. */
#ifndef GW_STRIKES_H
#define GW_STRIKES_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_STRIKES_MAX 65536
#define GW_STRIKES_BURST 10 /* a bucket holds this many seconds of the rate */

typedef struct gw_strikes gw_strikes;

/* per_s refusals a second per address (0: no limit: every call below answers as if unlimited);
 * max_addrs addresses followed at most. The caller owns the result (gw_strikes_destroy). */
gw_strikes *gw_strikes_create(int per_s, size_t max_addrs);
void gw_strikes_destroy(gw_strikes *t); /* NULL-safe */
/* True when addr has used up its refusals: refuse it without looking further. */
bool gw_strikes_exhausted(gw_strikes *t, const char *addr, int64_t now_ms);
/* One refusal of addr. */
void gw_strikes_add(gw_strikes *t, const char *addr, int64_t now_ms);
/* Forgets the addresses whose bucket is full again (they would be limited no more than a new
 * one); call now and then. Returns how many are still followed. */
size_t gw_strikes_sweep(gw_strikes *t, int64_t now_ms);

#endif
