/* The delivery routes the gateways keep in Redis and the ingest reads (docs/architecture.md, "The
 * hot path", step 4): presence:<user> (ZSET gateway id -> expiry ms, gateway/gw_presence.h) and
 * the key below. Constants only; any thread. */
#ifndef CHAT_ROUTES_H
#define CHAT_ROUTES_H

/* When Redis started holding routes (Unix ms): every gateway sets it if missing (SET NX) and
 * renews its expiry with each heartbeat. A Redis that restarted empty, or that no gateway reached
 * for CHAT_ROUTES_SINCE_TTL_MS, has lost routes of users still connected; the ingest trusts the
 * routes only once the key is CHAT_ROUTES_SETTLE_MS old, when every gateway has written all its
 * users again (a heartbeat, every 10 s, rewrites them), and delivers per user until then. */
#define CHAT_ROUTES_SINCE_KEY "routes:since"
#define CHAT_ROUTES_SINCE_TTL_MS 60000
#define CHAT_ROUTES_SETTLE_MS 15000

#endif
