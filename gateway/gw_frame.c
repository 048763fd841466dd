/* Frame parsing and validation. */
#include "gw_frame.h"

#include <stdlib.h>
#include <string.h>

#include "chat_id.h"
#include "chat_jwt.h"

static const struct {
    const char *name;
    gw_in_type type;
} types[] = {
    {"send", GW_IN_SEND}, {"edit", GW_IN_EDIT}, {"delete", GW_IN_DELETE}, {"react", GW_IN_REACT},
    {"sync", GW_IN_SYNC}, {"seen", GW_IN_SEEN}, {"read", GW_IN_READ}, {"history", GW_IN_HISTORY},
    {"typing", GW_IN_TYPING}, {"presence", GW_IN_PRESENCE}, {"conversations", GW_IN_CONVERSATIONS},
    {"ping", GW_IN_PING}, {"auth", GW_IN_AUTH},
};

static bool fail(gw_frame_error *err, const char *code, const char *message)
{
    err->code = code;
    err->message = message;
    return false;
}

static const char *string_of(json_t *root, const char *name)
{
    return json_string_value(json_object_get(root, name));
}

/* An optional non-negative integer; absent or null gives def. */
static bool uint_field(json_t *root, const char *name, uint64_t min, uint64_t def, uint64_t *out)
{
    json_t *v = json_object_get(root, name);
    if (v == NULL || json_is_null(v)) {
        *out = def;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < min)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static bool parse_post(gw_inframe *f, gw_frame_error *err)
{
    json_t *root = f->root;
    f->conv = string_of(root, "conv");
    f->cmid = string_of(root, "cmid");
    if (chat_id_valid(f->cmid))
        err->ref = f->cmid;
    if (!chat_id_valid(f->conv))
        return fail(err, "bad_request", "conv must be 1-64 characters of [A-Za-z0-9_-]");
    if (err->ref == NULL)
        return fail(err, "bad_request", "cmid must be 1-64 characters of [A-Za-z0-9_-]");
    json_t *body = json_object_get(root, "body");
    bool body_optional = f->type == GW_IN_DELETE || f->type == GW_IN_REACT;
    if (body == NULL && body_optional)
        f->body = "";
    else if (!json_is_string(body))
        return fail(err, "bad_request", "body must be a string");
    else if (json_string_length(body) > CHAT_BODY_MAX)
        return fail(err, "too_large", "body is larger than 16 KiB");
    else if (strlen(json_string_value(body)) != json_string_length(body))
        return fail(err, "bad_request", "body must not contain NUL characters");
    else
        f->body = json_string_value(body);
    json_t *meta = json_object_get(root, "meta");
    if (meta && !json_is_null(meta)) {
        if (!json_is_object(meta))
            return fail(err, "bad_request", "meta must be a JSON object");
        f->meta = json_dumps(meta, JSON_COMPACT);
        if (f->meta == NULL || strlen(f->meta) > CHAT_META_MAX)
            return fail(err, "too_large", "meta is larger than 16 KiB");
    }
    if (f->type != GW_IN_SEND && !uint_field(root, "target", 1, 0, &f->target))
        return fail(err, "bad_request", "target must be the seq of a message (an integer >= 1)");
    if (f->type != GW_IN_SEND && f->target == 0)
        return fail(err, "bad_request", "target must be the seq of a message (an integer >= 1)");
    if (f->type == GW_IN_REACT) {
        json_t *emoji = json_object_get(root, "emoji");
        json_t *on = json_object_get(root, "on");
        if (!json_is_string(emoji) || json_string_length(emoji) == 0 || json_string_length(emoji) > CHAT_EMOJI_MAX ||
            strlen(json_string_value(emoji)) != json_string_length(emoji))
            return fail(err, "bad_request", "emoji must be a string of 1-64 bytes");
        if (on != NULL && !json_is_boolean(on))
            return fail(err, "bad_request", "on must be true or false");
        f->emoji = json_string_value(emoji);
        f->on = on == NULL || json_is_true(on);
    }
    return true;
}

static bool parse_sync(gw_inframe *f, gw_frame_error *err)
{
    json_t *cursors = json_object_get(f->root, "cursors");
    if (cursors == NULL || json_is_null(cursors))
        return true;
    if (!json_is_object(cursors))
        return fail(err, "bad_request", "cursors must be an object of conv: seq");
    if (json_object_size(cursors) > GW_SYNC_CURSORS_MAX)
        return fail(err, "too_large", "at most 10000 cursors");
    const char *conv;
    json_t *seq;
    json_object_foreach(cursors, conv, seq)
    {
        if (!chat_id_valid(conv) || !json_is_integer(seq) || json_integer_value(seq) < 0)
            return fail(err, "bad_request", "each cursor is conv (an id): seq (an integer >= 0)");
    }
    f->cursors = cursors;
    return true;
}

static bool parse_history(gw_inframe *f, gw_frame_error *err)
{
    json_t *ref = json_object_get(f->root, "ref");
    if (ref && !json_is_null(ref)) {
        bool ok = json_is_integer(ref) || (json_is_string(ref) && json_string_length(ref) <= GW_REF_MAX &&
                                           strlen(json_string_value(ref)) == json_string_length(ref));
        if (!ok)
            return fail(err, "bad_request", "ref must be an integer or a string of at most 64 bytes");
        f->ref = ref;
        err->ref_json = ref;
    }
    f->conv = string_of(f->root, "conv");
    if (!chat_id_valid(f->conv))
        return fail(err, "bad_request", "conv must be 1-64 characters of [A-Za-z0-9_-]");
    if (!uint_field(f->root, "before", 0, 0, &f->before))
        return fail(err, "bad_request", "before must be an integer >= 0");
    uint64_t limit;
    if (!uint_field(f->root, "limit", 1, GW_HISTORY_LIMIT_DEFAULT, &limit))
        return fail(err, "bad_request", "limit must be an integer from 1 to 100");
    f->limit = (uint32_t)(limit > GW_HISTORY_LIMIT_MAX ? GW_HISTORY_LIMIT_MAX : limit);
    return true;
}

static bool parse_presence(gw_inframe *f, gw_frame_error *err)
{
    json_t *users = json_object_get(f->root, "users");
    if (!json_is_array(users) || json_array_size(users) > GW_PRESENCE_USERS_MAX)
        return fail(err, "bad_request", "users must be an array of at most 100 user ids");
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u)
    {
        if (!chat_id_valid(json_string_value(u)))
            return fail(err, "bad_request", "users must be an array of at most 100 user ids");
    }
    f->users = users;
    return true;
}

bool gw_frame_parse(const char *data, size_t len, gw_inframe *f, gw_frame_error *err)
{
    memset(f, 0, sizeof *f);
    memset(err, 0, sizeof *err);
    json_error_t jerr;
    f->root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (f->root == NULL || !json_is_object(f->root))
        return fail(err, "bad_request", "a frame must be one JSON object");
    const char *type = string_of(f->root, "type");
    if (type == NULL)
        return fail(err, "bad_request", "missing type");
    size_t k = 0;
    while (k < sizeof types / sizeof types[0] && strcmp(types[k].name, type) != 0)
        k++;
    if (k == sizeof types / sizeof types[0])
        return fail(err, "bad_request", "unknown type");
    f->type = types[k].type;
    switch (f->type) {
    case GW_IN_SEND:
    case GW_IN_EDIT:
    case GW_IN_DELETE:
    case GW_IN_REACT:
        return parse_post(f, err);
    case GW_IN_SYNC:
        return parse_sync(f, err);
    case GW_IN_SEEN:
    case GW_IN_READ:
        f->conv = string_of(f->root, "conv");
        if (!chat_id_valid(f->conv) || !json_is_integer(json_object_get(f->root, "seq")) ||
            !uint_field(f->root, "seq", 0, 0, &f->seq))
            return fail(err, "bad_request", "seen and read need conv (an id) and seq (an integer >= 0)");
        return true;
    case GW_IN_HISTORY:
        return parse_history(f, err);
    case GW_IN_TYPING:
        f->conv = string_of(f->root, "conv");
        if (!chat_id_valid(f->conv))
            return fail(err, "bad_request", "conv must be 1-64 characters of [A-Za-z0-9_-]");
        return true;
    case GW_IN_PRESENCE:
        return parse_presence(f, err);
    case GW_IN_CONVERSATIONS:
    case GW_IN_PING:
        return true;
    case GW_IN_AUTH:
        f->token = string_of(f->root, "token");
        if (f->token == NULL || f->token[0] == '\0' || strlen(f->token) > CHAT_JWT_MAX_LEN)
            return fail(err, "bad_request", "auth needs token (a JWT)");
        return true;
    }
    return fail(err, "bad_request", "unknown type");
}

void gw_inframe_free(gw_inframe *f)
{
    free(f->meta);
    f->meta = NULL;
    json_decref(f->root);
    f->root = NULL;
}
