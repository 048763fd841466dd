/* The post validator: the limits and the order of the checks (chat_post.h). Pure, any thread. */
#include "chat_post.h"

#include <string.h>

#include <jansson.h>

#include "chat_frames.h"
#include "chat_id.h"

bool chat_post_is_change(Chat__V1__EventKind k)
{
    return k == CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT || k == CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE ||
           k == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION;
}

static bool kind_ok(Chat__V1__EventKind k, unsigned flags)
{
    if (flags & CHAT_POST_ANY_KIND)
        return chat_kind_name(k) != NULL;
    return k == CHAT__V1__EVENT_KIND__EVENT_KIND_UNSPECIFIED || k == CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT ||
           k == CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM;
}

static bool utf8_ok(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len); /* NULL for invalid UTF-8 */
    json_decref(j);
    return j != NULL;
}

chat_post_fault chat_post_meta_fault(const char *meta_json)
{
    if (meta_json[0] == '\0')
        return CHAT_POST_OK;
    json_error_t err;
    json_t *meta = json_loads(meta_json, JSON_REJECT_DUPLICATES, &err);
    bool object = meta != NULL && json_is_object(meta);
    json_decref(meta);
    return object ? CHAT_POST_OK : CHAT_POST_META_NOT_OBJECT;
}

chat_post_fault chat_post_validate(const Chat__V1__Post *p, unsigned flags)
{
    if (p == NULL)
        return CHAT_POST_MISSING;
    if (!chat_id_valid(p->conv))
        return CHAT_POST_BAD_CONV;
    if (!chat_id_valid(p->cmid))
        return CHAT_POST_BAD_CMID;
    if (!chat_id_valid(p->sender))
        return CHAT_POST_BAD_SENDER;
    if (!kind_ok(p->kind, flags))
        return CHAT_POST_BAD_KIND;
    if (chat_post_is_change(p->kind) && p->target == 0)
        return CHAT_POST_CHANGE_NO_TARGET;
    if (p->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION &&
        (p->emoji[0] == '\0' || strlen(p->emoji) > CHAT_EMOJI_MAX))
        return CHAT_POST_BAD_EMOJI;
    size_t body_len = strlen(p->body);
    if (body_len > CHAT_BODY_MAX)
        return CHAT_POST_BODY_TOO_LARGE;
    if ((flags & CHAT_POST_UTF8) && !utf8_ok(p->body, body_len))
        return CHAT_POST_BODY_NOT_UTF8;
    if (strlen(p->meta_json) > CHAT_META_MAX)
        return CHAT_POST_META_TOO_LARGE;
    if (flags & CHAT_POST_META_LATER)
        return CHAT_POST_OK;
    return chat_post_meta_fault(p->meta_json);
}

/* What a backend is told of each fault of its post. The rules (text and system only) leave no
 * change without a target and no reaction without an emoji: those are kinds it may not post. */
static const char *const backend_fault_text[] = {
    [CHAT_POST_OK] = NULL,
    [CHAT_POST_MISSING] = "post is missing",
    [CHAT_POST_BAD_CONV] = "post.conv must be 1-64 characters of [A-Za-z0-9_-]",
    [CHAT_POST_BAD_CMID] = "post.cmid must be 1-64 characters of [A-Za-z0-9_-]",
    [CHAT_POST_BAD_SENDER] = "post.sender must be 1-64 characters of [A-Za-z0-9_-]",
    [CHAT_POST_BAD_KIND] = "post.kind must be text or system",
    [CHAT_POST_CHANGE_NO_TARGET] = "post.kind must be text or system",
    [CHAT_POST_BAD_EMOJI] = "post.kind must be text or system",
    [CHAT_POST_BODY_TOO_LARGE] = "post.body is larger than 16 KiB",
    [CHAT_POST_BODY_NOT_UTF8] = "post.body is not valid UTF-8",
    [CHAT_POST_META_TOO_LARGE] = "post.meta_json is larger than 16 KiB",
    [CHAT_POST_META_NOT_OBJECT] = "post.meta_json must be empty or a JSON object",
};

const char *chat_post_backend_fault(chat_post_fault f)
{
    return (unsigned)f < sizeof backend_fault_text / sizeof backend_fault_text[0] ? backend_fault_text[f] : "post is invalid";
}
