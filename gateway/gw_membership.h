/* The membership cache: conversation -> { user -> a member or not }, as the api role (members.check,
 * members.list, post.status), the ingest's rejections and committed posts answered it. An entry (one
 * conversation) goes on chat.members.<conv>, after its TTL, or, the oldest first, when the cache holds
 * its maximum of conversations: memory stays bounded by what was used in the last TTL. Opaque; lws
 * thread only (no lock). */
#ifndef GW_MEMBERSHIP_H
#define GW_MEMBERSHIP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_MEMBERSHIP_TTL_MS 60000

/* What the cache knows of one user in one conversation. */
typedef enum gw_member {
    GW_MEMBER_UNKNOWN = 0, /* not cached (or expired): ask, or let the ingest decide */
    GW_MEMBER,             /* a member */
    GW_NOT_MEMBER,         /* not a member: refused here */
} gw_member;

typedef struct gw_membership gw_membership;

/* A cache of at most max_convs conversations (CHAT_WS_MEMBERSHIP_CACHE), each kept ttl_ms
 * (GW_MEMBERSHIP_TTL_MS) from when it was first filled. The caller owns it (gw_membership_destroy). */
gw_membership *gw_membership_create(size_t max_convs, int64_t ttl_ms);
/* Frees every entry. NULL-safe. */
void gw_membership_destroy(gw_membership *c);

/* What is known of user in conv at now_ms (monotonic); an expired entry is dropped on the way. */
gw_member gw_membership_get(gw_membership *c, const char *conv, const char *user, int64_t now_ms);
/* Records user as a member of conv or not; a new conversation past the maximum pushes out the oldest
 * (asked again when next needed). */
void gw_membership_put(gw_membership *c, const char *conv, const char *user, bool member, int64_t now_ms);
/* Replaces what is cached of conv with its whole member list (members.list, for typing fanout);
 * users is borrowed (copied). */
void gw_membership_put_list(gw_membership *c, const char *conv, char *const *users, size_t n, int64_t now_ms);
/* The whole member list of conv is cached (gw_membership_put_list), so typing needs no lookup. */
bool gw_membership_has_list(const gw_membership *c, const char *conv);
/* Forgets conv (its members changed, or a cached answer proved stale). */
void gw_membership_invalidate(gw_membership *c, const char *conv);
/* Drops the entries past their TTL; every 10 s from the tick. */
void gw_membership_trim(gw_membership *c, int64_t now_ms);
/* Conversations cached now. */
size_t gw_membership_size(const gw_membership *c);

#endif
