/* typing frames (gw_typing.c). lws thread only. */
#ifndef GW_TYPING_H
#define GW_TYPING_H
#include "gw_frame.h"
#include "gw_server.h"
#include "gw_session.h"

/* A typing frame of s: dropped past the connection's budget (typing is a hint). */
void gw_typing_handle(gw_server *srv, gw_session *s, const gw_inframe *f);

#endif
