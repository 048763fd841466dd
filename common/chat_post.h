/* A post's limits, defined once, and the one validator of a Chat__V1__Post (the api role's
 * backend post, the ingest's batches; the gateway's frame parser checks the same limits on JSON).
 * Pure: any thread. The caller turns a fault into its own words (error text, drop reason). */
#ifndef CHAT_POST_H
#define CHAT_POST_H
#include <stdbool.h>

#include "chat.pb-c.h"

#define CHAT_BODY_MAX (16 * 1024) /* bytes of a post's body */
#define CHAT_META_MAX (16 * 1024) /* bytes of a post's meta_json */
#define CHAT_EMOJI_MAX 64         /* bytes of a reaction's emoji (at least 1) */

/* The first fault the validator finds, in the order it checks them. */
typedef enum chat_post_fault {
    CHAT_POST_OK = 0,
    CHAT_POST_MISSING,  /* no post at all (undecodable) */
    CHAT_POST_BAD_CONV, /* conv, cmid, sender: 1-64 characters of [A-Za-z0-9_-] */
    CHAT_POST_BAD_CMID,
    CHAT_POST_BAD_SENDER,
    CHAT_POST_BAD_KIND,         /* not a kind these rules take */
    CHAT_POST_CHANGE_NO_TARGET, /* an edit, delete or reaction without a target seq */
    CHAT_POST_BAD_EMOJI,        /* a reaction without an emoji of 1-CHAT_EMOJI_MAX bytes */
    CHAT_POST_BODY_TOO_LARGE,   /* more than CHAT_BODY_MAX bytes */
    CHAT_POST_BODY_NOT_UTF8,    /* only with CHAT_POST_UTF8 */
    CHAT_POST_META_TOO_LARGE,   /* more than CHAT_META_MAX bytes */
    CHAT_POST_META_NOT_OBJECT,  /* meta_json neither empty nor a JSON object (no duplicate keys) */
} chat_post_fault;

/* The rules that differ between callers, or'ed together (0: the strictest common part). */
enum {
    /* Every named kind (text, edit, delete, reaction, system; not unspecified). Without it only
     * text and system, with unspecified counting as text (a backend's post). */
    CHAT_POST_ANY_KIND = 1 << 0,
    /* The body must be valid UTF-8 (protobuf strings are not checked on the wire). */
    CHAT_POST_UTF8 = 1 << 1,
    /* Leave meta_json's being an object to chat_post_meta_fault, for a caller that checks
     * something cheaper first (the ingest: the subject). */
    CHAT_POST_META_LATER = 1 << 2,
};

/* The first fault of p (NULL: CHAT_POST_MISSING) under the rules `flags`, CHAT_POST_OK if none.
 * Order: ids, kind, change target, emoji, body size, body UTF-8, meta size, meta object. */
chat_post_fault chat_post_validate(const Chat__V1__Post *p, unsigned flags);

/* An edit, delete or reaction: a change of the message whose seq is its target. */
bool chat_post_is_change(Chat__V1__EventKind kind);

/* CHAT_POST_META_NOT_OBJECT unless meta_json is "" or a JSON object without duplicate keys. */
chat_post_fault chat_post_meta_fault(const char *meta_json);

/* What a backend is told of a fault of its post under the rules without CHAT_POST_ANY_KIND (text
 * and system only): one line, NULL for CHAT_POST_OK. The api role's post and `chatctl import`. */
const char *chat_post_backend_fault(chat_post_fault f);

#endif
