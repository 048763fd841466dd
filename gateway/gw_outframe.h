/* An outbound frame: the text of one server frame (docs/protocol.md), rendered once and shared by
 * every session it is queued for (one render per delivery, however many devices get it); freed
 * with its last reference. lws thread only (the count is not atomic). The inbound parser is
 * gw_frame.h. */
#ifndef GW_OUTFRAME_H
#define GW_OUTFRAME_H
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef struct gw_outframe {
    int refs;
    size_t len;
    int64_t event_ts_ms; /* broker timestamp of the event it carries, or 0 */
    unsigned char data[]; /* LWS_PRE bytes, then the text */
} gw_outframe;

/* A frame of len bytes of text, with one reference (the caller's). */
gw_outframe *gw_outframe_new(const char *text, size_t len, int64_t event_ts_ms);
/* Renders frame (and takes its reference) into a frame with one reference (the caller's). */
gw_outframe *gw_outframe_from_json(json_t *frame, int64_t event_ts_ms);
/* Drops one reference; the last frees it. NULL-safe. */
void gw_outframe_release(gw_outframe *f);

#endif
