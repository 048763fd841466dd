/* A session's token after the upgrade: a session lives until its token's exp (the sweep closes it
 * then with 4003, gw_session.c) unless the client sends a newer token of the same user first:
 *   {"type":"auth","token":"<JWT>"}  ->  {"type":"auth","exp":<unix s>}
 * checked as the upgrade checks one (signature, kid, iss, aud, lifetime, revocations), or refused
 * with error `bad_token` (the session keeps its old exp). lws thread. */
#ifndef GW_AUTH_H
#define GW_AUTH_H
#include "gw_frame.h"
#include "gw_server.h"
#include "gw_session.h"

/* An auth frame f of session s. */
void gw_auth_handle(gw_server *srv, gw_session *s, const gw_inframe *f);

#endif
