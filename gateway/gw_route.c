/* The router of inbound frames: a whole frame of a session, its rate token, the parse
 * (gw_frame.h) and the module of its type. lws thread only. */
#include "gw_route.h"

#include <string.h>

#include <jansson.h>

#include "chat_time.h"
#include "gw_auth.h"
#include "gw_budget.h"
#include "gw_frame.h"
#include "gw_send.h"
#include "gw_sync.h"
#include "gw_typing.h"
#include "gw_watch.h"

void gw_route_frame(gw_server *srv, gw_session *s, const char *data, size_t len)
{
    atomic_fetch_add(srv->m.frames_in, 1);
    /* the token before the parse: a frame over the rate costs no JSON parse, so its answer cannot
     * name its cmid (docs/protocol.md: rate_limited without ref) */
    if (!gw_bucket_take(&s->frame_tokens, &s->frame_refill_ms, srv->cfg->ws_rate, chat_mono_ms())) {
        gw_session_send_error(srv, s, NULL, "rate_limited", "too many frames on this connection; slow down");
        return;
    }
    if (lws_frame_is_binary(s->wsi)) { /* binary frames cost their token too */
        gw_session_send_error(srv, s, NULL, "bad_request", "frames are JSON text, not binary");
        return;
    }
    gw_inframe f;
    gw_frame_error err;
    bool ok = gw_frame_parse(data, len, &f, &err);
    if (!ok) {
        json_t *e = json_pack("{s:s, s:s, s:s}", "type", "error", "code", err.code, "message", err.message);
        if (err.ref)
            json_object_set_new(e, "ref", json_string(err.ref));
        else if (err.ref_json)
            json_object_set(e, "ref", err.ref_json);
        atomic_fetch_add(strcmp(err.code, "too_large") == 0 ? srv->m.fail_too_large : srv->m.fail_bad_request, 1);
        gw_session_send_json(srv, s, e);
        gw_inframe_free(&f);
        return;
    }
    switch (f.type) {
    case GW_IN_SEND:
    case GW_IN_EDIT:
    case GW_IN_DELETE:
    case GW_IN_REACT:
        gw_send_post(srv, s, &f);
        break;
    case GW_IN_SYNC:
        gw_sync_handle(srv, s, &f);
        break;
    case GW_IN_HISTORY:
        gw_history_handle(srv, s, &f);
        break;
    case GW_IN_CONVERSATIONS:
        gw_conversations_handle(srv, s);
        break;
    case GW_IN_SEEN:
    case GW_IN_READ:
        gw_send_cursor(srv, s, &f);
        break;
    case GW_IN_TYPING:
        gw_typing_handle(srv, s, &f);
        break;
    case GW_IN_PRESENCE:
        gw_watch_handle(srv, s, &f);
        break;
    case GW_IN_PING:
        gw_session_send_json(srv, s, json_pack("{s:s}", "type", "pong"));
        break;
    case GW_IN_AUTH:
        gw_auth_handle(srv, s, &f);
        break;
    }
    gw_inframe_free(&f);
}

