/* The auth frame: a session renews its token (gw_auth.h). */
#include "gw_auth.h"

#include <inttypes.h>
#include <string.h>

#include <jansson.h>

#include "chat_jwt.h"
#include "chat_log.h"
#include "chat_time.h"
#include "gw_revoke.h"

void gw_auth_handle(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    chat_jwt_claims c;
    const char *why = NULL;
    bool ok = chat_jwt_verify(srv->cfg->jwt, f->token, chat_now_ms() / 1000, &c, &why) == CHAT_OK;
    if (ok && strcmp(c.user, gw_session_user(s)) != 0) {
        ok = false; /* a session speaks for one user: another's token is no renewal */
        why = "another user's token";
    }
    if (ok && gw_revoke_check(srv->revoke, &c) != GW_REVOKE_PASS) {
        ok = false;
        why = "revoked";
    }
    if (!ok) {
        LOG_INFO("gateway", "event=auth_refused session=%s-%" PRIu64 " user=%s why=\"%s\"", srv->gateway_id, s->id,
                 gw_session_user(s), why ? why : "");
        gw_session_send_error(srv, s, NULL, "bad_token",
                              "the token is not valid for this session (bad, expired, revoked or another user's); "
                              "the session still ends at its current token's exp");
        return;
    }
    gw_session_set_token(s, &c, f->token);
    gw_session_send_json(srv, s, json_pack("{s:s, s:I}", "type", "auth", "exp", (json_int_t)c.exp));
}
