/* Client frames in: one JSON object, parsed and validated in one place into a typed frame, so
 * every handler works on checked values and the parser can be fuzzed on its own (no lws, no NATS).
 * Pure functions; any thread. The limits are the protocol's (docs/protocol.md). */
#ifndef GW_FRAME_H
#define GW_FRAME_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "chat_post.h" /* CHAT_BODY_MAX, CHAT_META_MAX, CHAT_EMOJI_MAX: the same limits as the ingest's */

#define GW_SYNC_CURSORS_MAX 10000
#define GW_PRESENCE_USERS_MAX 100
#define GW_HISTORY_LIMIT_MAX 100
#define GW_HISTORY_LIMIT_DEFAULT 50
#define GW_REF_MAX 64

typedef enum gw_in_type {
    GW_IN_SEND,
    GW_IN_EDIT,
    GW_IN_DELETE,
    GW_IN_REACT,
    GW_IN_SYNC,
    GW_IN_SEEN,
    GW_IN_READ,
    GW_IN_HISTORY,
    GW_IN_TYPING,
    GW_IN_PRESENCE,
    GW_IN_CONVERSATIONS,
    GW_IN_PING,
    GW_IN_AUTH,
} gw_in_type;

/* A checked frame. Strings point into root, which the frame owns. */
typedef struct gw_inframe {
    gw_in_type type;
    json_t *root;
    const char *conv, *cmid, *body, *emoji;
    char *meta;          /* compact JSON text of the meta object, or NULL (owned) */
    uint64_t target;     /* edit, delete, react */
    uint64_t seq;        /* seen, read */
    uint64_t before;     /* history: 0 = from the newest */
    uint32_t limit;      /* history: 1..100 */
    bool on;             /* react */
    json_t *cursors;     /* sync: object of conv -> seq >= 0, or NULL */
    json_t *users;       /* presence: array of user ids */
    json_t *ref;         /* history: the client's ref (string or integer), or NULL */
    const char *token;   /* auth: the token the session goes on with */
} gw_inframe;

/* Why a frame was refused: the error frame's code and message, and its ref (a valid cmid of a
 * post, or the ref of a history request), all borrowed from the frame. */
typedef struct gw_frame_error {
    const char *code;    /* "bad_request" or "too_large" */
    const char *message;
    const char *ref;     /* or NULL */
    json_t *ref_json;    /* or NULL */
} gw_frame_error;

/* Parses data (one frame) into f. On false, err says why; either way f must be freed. */
bool gw_frame_parse(const char *data, size_t len, gw_inframe *f, gw_frame_error *err);
void gw_inframe_free(gw_inframe *f);

#endif
