/* The ingest's batches: a partition's pulled messages decoded, each post validated (the drop
 * reasons and what each is told and counted as), repeats of a (conv, cmid) pointed at their first
 * copy, the conversations listed once. No database and no broker: the store stage fills in the
 * rest. Runs on the committer thread; the validation and the drop table on any thread. */
#include "wk_ingestp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_id.h"
#include "chat_nats.h"
#include "chat_post.h"
#include "chat_time.h"

/* ------------------------------------------------------------------------------------------ */
/* Drop reasons and validation                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* What a post whose cmid names another sender's message gets: not an ack of someone else's
 * message, and nothing of its content (docs/protocol.md, "What an ack means, and retries"). */
#define CMID_TAKEN "cmid already names another sender's message in this conversation; send with a new cmid"

/* A non-member is told the same whether the conversation exists or not (the gateway's wording):
 * the log and the metric keep the difference. */
#define NOT_MEMBER_TOLD "not a member of this conversation"

#define BAD_POST(text) {text, "bad_request", text, DM_INVALID}

static const drop_info drops[DROP_REASON_COUNT] = {
    [DROP_NONE] = {"invalid", NULL, "invalid", DM_INVALID},
    [DROP_UNDECODABLE] = BAD_POST("undecodable"),
    [DROP_BAD_ID] = BAD_POST("bad id"),
    [DROP_BAD_KIND] = BAD_POST("bad kind"),
    [DROP_CHANGE_NO_TARGET] = BAD_POST("a change needs a target seq"),
    [DROP_BAD_EMOJI] = BAD_POST("a reaction needs an emoji of 1-64 bytes"),
    [DROP_BODY_TOO_LARGE] = BAD_POST("body too large"),
    [DROP_META_TOO_LARGE] = BAD_POST("meta too large"),
    [DROP_SUBJECT_MISMATCH] = BAD_POST("subject does not match conversation"),
    [DROP_META_NOT_OBJECT] = BAD_POST("meta is not a JSON object"),
    [DROP_TARGET_MISSING] = {"no such message to change", "not_found", "no such message to change", DM_NO_TARGET},
    [DROP_TARGET_DELETED] = {"the message was deleted", "not_found", "the message was deleted", DM_NO_TARGET},
    [DROP_TARGET_NOT_OWN] = BAD_POST("only the sender edits or deletes a message"),
    [DROP_ARCHIVING] = {"the stored message is being archived", "unavailable",
                        "the stored message is being archived", DM_INVALID},
    [DROP_NO_CONVERSATION] = {"no such conversation", "not_member", NOT_MEMBER_TOLD, DM_NO_CONVERSATION},
    [DROP_NOT_MEMBER] = {"sender not a member", "not_member", NOT_MEMBER_TOLD, DM_NOT_MEMBER},
    [DROP_CMID_TAKEN] = BAD_POST(CMID_TAKEN),
    [DROP_FIRST_REFUSED] = {"another post with this cmid was refused; send again", "unavailable",
                            "another post with this cmid was refused; send again", DM_INVALID},
    [DROP_POISON] = {"poison", NULL, "poison", DM_POISON},
};

const drop_info *wk_ingest_drop_info(drop_reason r)
{
    return (unsigned)r < DROP_REASON_COUNT ? &drops[r] : &drops[DROP_NONE];
}

/* The ingest's drop reason for each fault of the shared validator (every id fault is one). */
static drop_reason drop_of_fault(chat_post_fault f)
{
    switch (f) {
    case CHAT_POST_OK:
        return DROP_NONE;
    case CHAT_POST_BAD_CONV:
    case CHAT_POST_BAD_CMID:
    case CHAT_POST_BAD_SENDER:
        return DROP_BAD_ID;
    case CHAT_POST_BAD_KIND:
        return DROP_BAD_KIND;
    case CHAT_POST_CHANGE_NO_TARGET:
        return DROP_CHANGE_NO_TARGET;
    case CHAT_POST_BAD_EMOJI:
        return DROP_BAD_EMOJI;
    case CHAT_POST_BODY_TOO_LARGE:
        return DROP_BODY_TOO_LARGE;
    case CHAT_POST_META_TOO_LARGE:
        return DROP_META_TOO_LARGE;
    case CHAT_POST_META_NOT_OBJECT:
        return DROP_META_NOT_OBJECT;
    case CHAT_POST_MISSING:
    case CHAT_POST_BODY_NOT_UTF8: /* not asked for: the ingest stores the bytes it is given */
        break;
    }
    return DROP_UNDECODABLE;
}

/* The first fault of post p, DROP_NONE when it is fit to store; *backend from the subject. The
 * subject is compared before meta_json is parsed (the cheaper check first). */
static drop_reason post_fault(const Chat__V1__Post *p, const char *subject, bool *backend)
{
    drop_reason r = drop_of_fault(chat_post_validate(p, CHAT_POST_ANY_KIND | CHAT_POST_META_LATER));
    if (r != DROP_NONE)
        return r;
    const char *conv = NULL;
    size_t n = 0;
    if (!chat_subject_in_parse(subject, &conv, &n, backend) || n != strlen(p->conv) || memcmp(conv, p->conv, n) != 0)
        return DROP_SUBJECT_MISMATCH;
    return drop_of_fault(chat_post_meta_fault(p->meta_json));
}

void wk_ingest_validate(item *it, const char *subject)
{
    it->drop = post_fault(it->post, subject, &it->backend);
    if (it->drop != DROP_NONE)
        it->state = I_DROP;
}

void wk_ingest_reject(item *it, drop_reason r)
{
    it->state = I_DROP;
    it->drop = r;
}
/* ------------------------------------------------------------------------------------------ */
/* Batches                                                                                      */
/* ------------------------------------------------------------------------------------------ */

members *wk_ingest_find_conv(batch *b, const char *conv)
{
    intptr_t k = b->conv_ix ? (intptr_t)chat_map_get(b->conv_ix, conv) : 0;
    return k ? &b->convs[k - 1] : NULL;
}

/* Forgets what one attempt to store b found: its conversations with their members, and the
 * stored events of its duplicates (batch_prepare starts every attempt afresh). */
static void batch_clear_attempt(batch *b)
{
    PQclear(b->stored);
    b->stored = NULL;
    for (int i = 0; i < b->nconvs; i++) {
        for (int j = 0; j < b->convs[i].n; j++)
            free(b->convs[i].users[j]);
        free(b->convs[i].users);
        free(b->convs[i].conv);
    }
    free(b->convs);
    b->convs = NULL;
    b->nconvs = 0;
    chat_map_destroy(b->conv_ix);
    b->conv_ix = NULL;
}

void wk_ingest_batch_add(batch *b, const item *it)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->items = realloc(b->items, (size_t)b->cap * sizeof *b->items);
        if (b->items == NULL)
            CHAT_OOM();
    }
    b->items[b->n++] = *it;
}

void wk_ingest_view_free(batch *v)
{
    batch_clear_attempt(v);
    free(v->items);
    *v = (batch){0};
}

/* Empties a partition's batch (which owns its messages and posts). */
void wk_ingest_batch_reset(batch *b)
{
    for (int i = 0; i < b->n; i++) {
        if (b->items[i].post)
            chat__v1__post__free_unpacked(b->items[i].post, NULL);
        natsMsg_Destroy(b->items[i].msg);
    }
    b->n = 0;
    batch_clear_attempt(b);
}

void wk_ingest_batch_drop_front(batch *b, int n)
{
    if (n > b->n)
        n = b->n;
    if (n <= 0)
        return;
    for (int i = 0; i < n; i++) {
        if (b->items[i].post)
            chat__v1__post__free_unpacked(b->items[i].post, NULL);
        natsMsg_Destroy(b->items[i].msg);
    }
    if (b->n > n)
        memmove(b->items, b->items + n, (size_t)(b->n - n) * sizeof *b->items);
    b->n -= n;
    batch_clear_attempt(b);
}

/* Decodes the posts of a partition's fetched batch (undecodable ones stay NULL: validate drops
 * them); items left from an earlier commit (a lane's) are decoded already. */
void wk_ingest_batch_decode(batch *b, int part)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        it->part = part;
        if (it->post == NULL)
            it->post = chat__v1__post__unpack(NULL, (size_t)natsMsg_GetDataLength(it->msg),
                                              (const uint8_t *)natsMsg_GetData(it->msg));
    }
}

/* Validates and groups the items of b (again, when b is retried): a repeated (conv, cmid) points
 * at its first copy, every conversation is listed once. */
void wk_ingest_batch_prepare(batch *b)
{
    batch_clear_attempt(b);
    b->conv_ix = chat_map_create();
    chat_map *first = chat_map_create(); /* "conv/cmid" -> index + 1 */
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        it->state = I_NEW;
        it->dup_of = -1;
        it->stored_row = -1;
        it->seq = 0;
        it->id[0] = '\0';
        it->drop = DROP_NONE;
        chat_js_ack ack = {.ts_ns = chat_now_ms() * 1000000}; /* the broker's timestamp, else now */
        chat_js_ack_parse(natsMsg_GetReply(it->msg), &ack);
        it->ts_us = ack.ts_ns / 1000;
        wk_ingest_validate(it, natsMsg_GetSubject(it->msg));
        if (it->state == I_DROP)
            continue;
        char key[2 * CHAT_ID_MAX + 4];
        snprintf(key, sizeof key, "%s/%s", it->post->conv, it->post->cmid);
        intptr_t k = (intptr_t)chat_map_get(first, key);
        if (k) {
            it->state = I_DUP;
            it->dup_of = (int)k - 1;
        } else {
            chat_map_put(first, key, (void *)(intptr_t)(i + 1), NULL);
        }
        if (wk_ingest_find_conv(b, it->post->conv) == NULL) {
            b->convs = realloc(b->convs, (size_t)(b->nconvs + 1) * sizeof *b->convs);
            b->convs[b->nconvs++] = (members){.conv = strdup(it->post->conv)};
            chat_map_put(b->conv_ix, it->post->conv, (void *)(intptr_t)b->nconvs, NULL);
        }
    }
    chat_map_destroy(first);
}
