/* Outbound frames (gw_outframe.h). lws thread only. */
#include "gw_outframe.h"

#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_status.h"

gw_outframe *gw_outframe_new(const char *text, size_t len, int64_t event_ts_ms)
{
    gw_outframe *f = malloc(sizeof *f + LWS_PRE + len);
    if (f == NULL)
        CHAT_OOM();
    f->refs = 1;
    f->len = len;
    f->event_ts_ms = event_ts_ms;
    memcpy(f->data + LWS_PRE, text, len);
    return f;
}

void gw_outframe_release(gw_outframe *f)
{
    if (f && --f->refs == 0)
        free(f);
}

gw_outframe *gw_outframe_from_json(json_t *frame, int64_t event_ts_ms)
{
    chat_buf b = {0};
    chat_frame_render(frame, &b);
    gw_outframe *f = gw_outframe_new(b.data ? b.data : "{}", b.len ? b.len : 2, event_ts_ms);
    chat_buf_free(&b);
    return f;
}
