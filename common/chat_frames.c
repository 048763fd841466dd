/* Client protocol frames from envelopes. */
#include "chat_frames.h"

#include <stdlib.h>
#include <string.h>

static const char *kind_names[] = {NULL, "text", "edit", "delete", "reaction", "system"};

const char *chat_kind_name(Chat__V1__EventKind kind)
{
    return kind >= 1 && kind <= 5 ? kind_names[kind] : NULL;
}

Chat__V1__EventKind chat_kind_parse(const char *name)
{
    for (int k = 1; k <= 5; k++)
        if (name && strcmp(name, kind_names[k]) == 0)
            return (Chat__V1__EventKind)k;
    return CHAT__V1__EVENT_KIND__EVENT_KIND_UNSPECIFIED;
}

json_t *chat_event_json(const Chat__V1__Event *e)
{
    json_t *f = json_object();
    json_object_set_new(f, "type", json_string("msg"));
    json_object_set_new(f, "conv", json_string(e->conv));
    json_object_set_new(f, "seq", json_integer((json_int_t)e->seq));
    json_object_set_new(f, "id", json_string(e->id));
    json_object_set_new(f, "cmid", json_string(e->cmid));
    json_object_set_new(f, "from", json_string(e->sender));
    json_object_set_new(f, "ts", json_integer((json_int_t)e->ts_ms));
    const char *kind = chat_kind_name(e->kind);
    json_object_set_new(f, "kind", json_string(kind ? kind : "text"));
    json_object_set_new(f, "body", json_stringn_nocheck(e->body, strlen(e->body)));
    if (e->meta_json && e->meta_json[0]) {
        json_t *meta = json_loads(e->meta_json, 0, NULL);
        json_object_set_new(f, "meta", meta ? meta : json_object());
    }
    if (e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT || e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE ||
        e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION)
        json_object_set_new(f, "target", json_integer((json_int_t)e->target));
    if (e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION) {
        json_object_set_new(f, "emoji", json_string(e->emoji));
        json_object_set_new(f, "on", json_boolean(e->reaction_on));
    }
    if (e->deleted)
        json_object_set_new(f, "deleted", json_true());
    return f;
}

void chat_frame_render(json_t *frame, chat_buf *out)
{
    char *text = json_dumps(frame, JSON_COMPACT);
    if (text) {
        chat_buf_puts(out, text);
        free(text);
    }
    json_decref(frame);
}
