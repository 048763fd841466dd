/* JSON frames of the client protocol (docs/protocol.md) rendered from protobuf envelopes, shared
 * by the gateway (frames to clients) and chatctl (history as JSON lines). Any thread. */
#ifndef CHAT_FRAMES_H
#define CHAT_FRAMES_H
#include <jansson.h>

#include "chat.pb-c.h"
#include "chat_buf.h"

/* "text", "edit", "delete", "reaction", "system"; NULL for anything else. */
const char *chat_kind_name(Chat__V1__EventKind kind);
/* The reverse; returns 0 (UNSPECIFIED) for an unknown name. */
Chat__V1__EventKind chat_kind_parse(const char *name);

/* The msg frame of an event as a new JSON object (caller decrefs): type, conv, seq, id, cmid,
 * from, ts, kind, body, meta (when present), target/emoji/on for changes, deleted in history. */
json_t *chat_event_json(const Chat__V1__Event *e);

/* Appends the compact JSON text of a frame to out and decrefs it. */
void chat_frame_render(json_t *frame, chat_buf *out);

#endif
