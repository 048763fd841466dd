/* typing frames (gw_typing.c). lws thread only. */
#ifndef GW_TYPING_H
#define GW_TYPING_H
#include <stdint.h>

#include "gw_budget.h"
#include "gw_frame.h"
#include "gw_membership.h"
#include "gw_server.h"
#include "gw_session.h"

/* A typing frame of s: dropped past the connection's budget (typing is a hint). */
void gw_typing_handle(gw_server *srv, gw_session *s, const gw_inframe *f);

/* What a typing frame leads to (gw_typing_decide). */
typedef enum gw_typing_action {
    GW_TYPING_DROP,       /* past the typing or the lookup budget: dropped silently */
    GW_TYPING_NOT_MEMBER, /* the cache says user is not a member: not_member */
    GW_TYPING_FANOUT,     /* the cache holds the member list with user in it: published now */
    GW_TYPING_LOOKUP,     /* ask members.list first; a lookup was taken (gw_budget_lookup_done) */
} gw_typing_action;

/* The decision for a typing frame of user in conv at now_ms (monotonic), from the connection's
 * budgets (*budget allocated at first use; what is used is taken) and the membership cache. */
gw_typing_action gw_typing_decide(gw_budget **budget, gw_membership *membership, const char *conv, const char *user,
                                  int64_t now_ms);

#endif
