/* chatctl import: a backend's bulk import (history from another system, a backfill) as trusted posts
 * published to the bulk lane, chat.bulk.<p>.<conv> (stream CHAT_BULK; docs/nats.md), with a
 * bounded window of PubAcks outstanding instead of one request and one commit wait per message. The
 * ingest stores them after the live posts of the moment and at most CHAT_INGEST_BULK_RATE a second,
 * so an import does not hold up anyone's chat. Each line of the
 * input is one post; a line that is not one is named on stderr and skipped, the rest go on. Every
 * post carries a cmid, so an import run again after a failure stores nothing twice (the broker's
 * duplicate window, then the ingest's dedupe). Main thread, plus nats.c's PubAck thread in
 * on_ack (the counters and the retry list under a lock). */
#include "chatctl_import.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_id.h"
#include "chat_map.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_post.h"
#include "chat_time.h"

#define WINDOW_DEFAULT 128
#define WINDOW_MAX 65536
#define LINE_MAX_BYTES (64 * 1024) /* a body and a meta of 16 KiB each, escaped, fit */
#define RETRY_ROUNDS 5             /* publishes the broker did not take, sent again */
#define ACK_WAIT_MS 30000          /* for the last PubAcks of a round */
#define STATUS_WAIT_MS 120000      /* --wait: for the last post of each conversation to be stored */
#define STATUS_POLL_MS 200

typedef struct importer {
    pthread_mutex_t lock;
    uint64_t acked, duplicates; /* PubAcks, those of them the broker's duplicate window answered */
    natsMsg **retry;            /* publishes answered with an error: sent again after the round */
    size_t n_retry, cap_retry;
    char last_error[160];
} importer;

/* nats.c's PubAck thread: counts a PubAck, or keeps the message to send again. */
static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    importer *im = closure;
    pthread_mutex_lock(&im->lock);
    if (pa) {
        im->acked++;
        im->duplicates += pa->Duplicate;
    } else {
        if (im->n_retry == im->cap_retry) {
            im->cap_retry = im->cap_retry ? 2 * im->cap_retry : 64;
            im->retry = chat_xrealloc(im->retry, im->cap_retry * sizeof *im->retry);
        }
        im->retry[im->n_retry++] = msg;
        msg = NULL; /* kept: sent again by the main thread */
        snprintf(im->last_error, sizeof im->last_error, "%s%s%s", natsStatus_GetText(pae ? pae->Err : NATS_ERR),
                 pae && pae->ErrText ? ": " : "", pae && pae->ErrText ? pae->ErrText : "");
    }
    pthread_mutex_unlock(&im->lock);
    natsMsg_Destroy(msg);
}

static const char *str_field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* One input line to a Post, published; false with *why set when the line is not a post. */
static bool publish_line(const chat_cfg *cfg, jsCtx *js, const char *line, const char *id_prefix, bool live,
                         uint64_t lineno, chat_map *last_cmid, const char **why, char *whybuf, size_t whysz)
{
    json_error_t jerr;
    json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
    bool ok = false;
    char cmid_buf[CHAT_ID_MAX + 1];
    if (!json_is_object(o)) {
        snprintf(whybuf, whysz, "not a JSON object%s%s", o ? "" : ": ", o ? "" : jerr.text);
        *why = whybuf;
        goto out;
    }
    const char *conv = str_field(o, "conv"), *from = str_field(o, "from"), *text = str_field(o, "text");
    const char *cmid = str_field(o, "cmid");
    json_t *meta = json_object_get(o, "meta"), *system = json_object_get(o, "system");
    if (conv == NULL || from == NULL || text == NULL) {
        *why = "\"conv\", \"from\" and \"text\" (strings) are required";
        goto out;
    }
    if (cmid == NULL && id_prefix == NULL) {
        *why = "\"cmid\" missing (or give --id ID: cmids ID-<line>)";
        goto out;
    }
    if (cmid == NULL) {
        snprintf(cmid_buf, sizeof cmid_buf, "%s-%" PRIu64, id_prefix, lineno);
        cmid = cmid_buf;
    }
    if ((meta && !json_is_object(meta)) || (system && !json_is_boolean(system))) {
        *why = "\"meta\" must be an object and \"system\" a boolean";
        goto out;
    }
    char *meta_json = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)conv;
    p.cmid = (char *)cmid;
    p.sender = (char *)from;
    p.kind = json_is_true(system) ? CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM : CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = (char *)text;
    p.meta_json = meta_json ? meta_json : "";
    p.sent_ms = chat_now_ms();
    p.gateway = "";
    p.session = "";
    *why = chat_post_backend_fault(chat_post_validate(&p, CHAT_POST_UTF8));
    if (*why) {
        free(meta_json);
        goto out;
    }
    size_t len = chat__v1__post__get_packed_size(&p);
    uint8_t *buf = chat_xmalloc(len ? len : 1);
    chat__v1__post__pack(&p, buf);
    free(meta_json);
    char subject[128], msgid[2 * CHAT_ID_MAX + 2];
    int part = (int)chat_partition_of(conv, (uint32_t)cfg->partitions);
    if (live)
        chat_subject_in_backend(subject, sizeof subject, part, conv);
    else
        chat_subject_bulk(subject, sizeof subject, part, conv);
    snprintf(msgid, sizeof msgid, "%s/%s", conv, cmid);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
    free(buf);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(js, &msg, NULL); /* waits while the window is full */
    natsMsg_Destroy(msg);                       /* NULL once the library took it */
    if (s != NATS_OK) {
        snprintf(whybuf, whysz, "publish: %s", natsStatus_GetText(s));
        *why = whybuf;
        goto out;
    }
    void *old = NULL;
    chat_map_put(last_cmid, conv, chat_xstrdup(cmid), &old);
    free(old);
    ok = true;
out:
    json_decref(o);
    return ok;
}

/* Waits for every PubAck, then sends again what the broker refused, up to RETRY_ROUNDS times.
 * Returns the publishes never taken. */
static size_t settle(jsCtx *js, importer *im)
{
    for (int round = 0;; round++) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = ACK_WAIT_MS;
        js_PublishAsyncComplete(js, &po);
        pthread_mutex_lock(&im->lock);
        natsMsg **again = im->retry;
        size_t n = im->n_retry;
        im->retry = NULL;
        im->n_retry = im->cap_retry = 0;
        pthread_mutex_unlock(&im->lock);
        if (n == 0 || round == RETRY_ROUNDS) {
            for (size_t i = 0; i < n; i++)
                natsMsg_Destroy(again[i]);
            free(again);
            return n;
        }
        chat_sleep_ms(200 << round);
        for (size_t i = 0; i < n; i++) {
            natsMsg *m = again[i];
            if (js_PublishMsgAsync(js, &m, NULL) != NATS_OK) {
                pthread_mutex_lock(&im->lock); /* counted as refused again at the next round */
                if (im->n_retry == im->cap_retry) {
                    im->cap_retry = im->cap_retry ? 2 * im->cap_retry : 64;
                    im->retry = chat_xrealloc(im->retry, im->cap_retry * sizeof *im->retry);
                }
                im->retry[im->n_retry++] = m;
                pthread_mutex_unlock(&im->lock);
            }
        }
        free(again);
    }
}

typedef struct status_walk {
    natsConnection *nc;
    int64_t deadline;
    uint64_t stored, missing;
} status_walk;

/* --wait: polls post.status for one conversation's last cmid until it is stored. */
static void wait_stored(const char *conv, void *value, void *ctx)
{
    status_walk *w = ctx;
    Chat__V1__PostStatusRequest q = CHAT__V1__POST_STATUS_REQUEST__INIT;
    q.conv = (char *)conv;
    q.cmid = value;
    q.user = "";
    size_t len = chat__v1__post_status_request__get_packed_size(&q);
    uint8_t buf[512];
    if (len > sizeof buf) {
        w->missing++;
        return;
    }
    chat__v1__post_status_request__pack(&q, buf);
    char subject[64];
    chat_subject_api(subject, sizeof subject, "post.status");
    for (;;) {
        natsMsg *m = NULL;
        bool stored = false;
        if (natsConnection_Request(&m, w->nc, subject, buf, (int)len, 5000) == NATS_OK) {
            Chat__V1__PostReply *r = chat__v1__post_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                                  (const uint8_t *)natsMsg_GetData(m));
            stored = r && (r->status == NULL || r->status->code[0] == '\0') && r->seq > 0;
            chat__v1__post_reply__free_unpacked(r, NULL);
            natsMsg_Destroy(m);
        }
        if (stored) {
            w->stored++;
            return;
        }
        if (chat_mono_ms() >= w->deadline) {
            fprintf(stderr, "chatctl import: %s: the last post (cmid %s) is not stored\n", conv, (const char *)value);
            w->missing++;
            return;
        }
        chat_sleep_ms(STATUS_POLL_MS);
    }
}

static void free_value(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

int chatctl_import(const chat_cfg *cfg, int argc, char **argv)
{
    uint64_t window = WINDOW_DEFAULT;
    const char *id_prefix = NULL;
    bool wait = false, live = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--window") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            window = strtoull(argv[++i], &end, 10);
            if (*end || errno || window == 0 || window > WINDOW_MAX || argv[i][0] == '-') {
                fprintf(stderr, "chatctl import: --window must be a number from 1 to %d (got \"%s\")\n", WINDOW_MAX,
                        argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--id") == 0 && i + 1 < argc) {
            id_prefix = argv[++i];
            if (!chat_id_valid(id_prefix) || strlen(id_prefix) > CHAT_ID_MAX - 21) {
                fprintf(stderr, "chatctl import: --id must be 1-%d characters of [A-Za-z0-9_-] (got \"%s\")\n",
                        CHAT_ID_MAX - 21, id_prefix);
                return 2;
            }
        } else if (strcmp(a, "--wait") == 0) {
            wait = true;
        } else if (strcmp(a, "--live") == 0) {
            live = true;
        } else {
            fprintf(stderr, "chatctl import: unknown option or missing value \"%s\" (try --help)\n", a);
            return 2;
        }
    }
    natsConnection *nc = NULL;
    if (chat_nats_connect(cfg, "chatctl-import", true, &nc) != CHAT_OK) {
        fprintf(stderr, "chatctl import: cannot connect to NATS (CHAT_NATS_URL)\n");
        return 1;
    }
    importer im = {0};
    pthread_mutex_init(&im.lock, NULL);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = (int64_t)window;
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.AckHandlerClosure = &im;
    jo.PublishAsync.StallWait = ACK_WAIT_MS;
    jsCtx *js = NULL;
    if (natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
        fprintf(stderr, "chatctl import: no JetStream context on the NATS connection\n");
        natsConnection_Destroy(nc);
        pthread_mutex_destroy(&im.lock);
        return 1;
    }
    chat_map *last_cmid = chat_map_create();
    char *line = chat_xmalloc(LINE_MAX_BYTES + 2);
    uint64_t lineno = 0, published = 0, bad = 0;
    int64_t t0 = chat_mono_ms();
    while (fgets(line, LINE_MAX_BYTES + 2, stdin)) {
        lineno++;
        size_t n = strlen(line);
        if (n == LINE_MAX_BYTES + 1 && line[n - 1] != '\n') { /* too long: skip the rest of it */
            int ch;
            while ((ch = getchar()) != EOF && ch != '\n')
                ;
            fprintf(stderr, "chatctl import: line %" PRIu64 ": longer than %d bytes, skipped\n", lineno, LINE_MAX_BYTES);
            bad++;
            continue;
        }
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        const char *why = NULL;
        char whybuf[200];
        if (publish_line(cfg, js, line, id_prefix, live, lineno, last_cmid, &why, whybuf, sizeof whybuf)) {
            published++;
        } else {
            fprintf(stderr, "chatctl import: line %" PRIu64 ": %s, skipped\n", lineno, why);
            bad++;
        }
    }
    free(line);
    size_t lost = settle(js, &im);
    double took = (double)(chat_mono_ms() - t0) / 1000.0;
    status_walk w = {.nc = nc, .deadline = chat_mono_ms() + STATUS_WAIT_MS};
    if (wait && lost == 0)
        chat_map_each(last_cmid, wait_stored, &w);
    double stored_after = (double)(chat_mono_ms() - t0) / 1000.0;
    if (lost)
        fprintf(stderr, "chatctl import: %zu posts not taken by the broker after %d tries (last: %s); run the import "
                        "again: what was taken is stored once\n",
                lost, RETRY_ROUNDS + 1, im.last_error);
    json_t *out = json_pack("{s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "published", (json_int_t)published, "accepted",
                            (json_int_t)im.acked, "duplicates", (json_int_t)im.duplicates, "refused",
                            (json_int_t)lost, "bad_lines", (json_int_t)bad, "seconds", took, "per_second",
                            took > 0 ? (double)im.acked / took : 0.0);
    if (wait) {
        json_object_set_new(out, "conversations_stored", json_integer((json_int_t)w.stored));
        json_object_set_new(out, "conversations_not_stored", json_integer((json_int_t)(w.missing)));
        json_object_set_new(out, "stored_after_seconds", json_real(stored_after));
    }
    char *text = json_dumps(out, JSON_COMPACT);
    printf("%s\n", text ? text : "{}");
    free(text);
    json_decref(out);
    chat_map_each(last_cmid, free_value, NULL);
    chat_map_destroy(last_cmid);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    pthread_mutex_destroy(&im.lock);
    return lost || bad || w.missing ? 1 : 0;
}
