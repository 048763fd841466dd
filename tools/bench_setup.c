/* chat-bench: conversation set-up over NATS (see bench_setup.h). Requests go out with
 * natsConnection_PublishRequest on reply subjects <inbox>.<conversation index>, read back from
 * one synchronous subscription; a request unanswered for 10 s is sent again (conv.create is
 * idempotent). Main thread only. */
#include "bench_setup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_redact.h"
#include "chat_time.h"

#define WINDOW 256
#define REQUEST_TIMEOUT_NS (10 * 1000000000LL)
#define TRIES 3

typedef struct pending {
    int64_t sent_ns; /* 0: not in flight */
    uint8_t tries;
    uint8_t done;
} pending;

static chat_status publish_create(natsConnection *nc, const bench_plan *p, uint32_t c, const char *inbox)
{
    char conv[80];
    bench_conv_id(p, c, conv, sizeof conv);
    uint32_t first = p->conv_first[c], n = p->conv_first[c + 1] - first;
    char **members = calloc(n, sizeof *members);
    char *ids = calloc(n, 80);
    if (members == NULL || ids == NULL) {
        free(members);
        free(ids);
        return CHAT_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        members[i] = ids + (size_t)i * 80;
        bench_user_id(p, p->member_of[first + i], members[i], 80);
    }
    Chat__V1__ConvCreateRequest q = CHAT__V1__CONV_CREATE_REQUEST__INIT;
    q.conv = conv;
    q.members = members;
    q.n_members = n;
    q.kind = p->conv_direct[c] ? "direct" : "group";
    q.owner = members[0];
    size_t len = chat__v1__conv_create_request__get_packed_size(&q);
    uint8_t *buf = malloc(len ? len : 1);
    chat_status st = CHAT_ERR_NOMEM;
    if (buf) {
        chat__v1__conv_create_request__pack(&q, buf);
        char reply[128];
        snprintf(reply, sizeof reply, "%s.%u", inbox, c);
        natsStatus s = natsConnection_PublishRequest(nc, CHAT_API_PREFIX "conv.create", reply, buf, (int)len);
        st = s == NATS_OK ? CHAT_OK : CHAT_ERR_UNAVAILABLE;
    }
    free(buf);
    free(members);
    free(ids);
    return st;
}

/* Checks one reply; CHAT_OK, or a line in err. */
static chat_status take_reply(natsMsg *msg, const bench_plan *p, pending *pend, uint64_t *created, char *err,
                              size_t errsz, int *finished)
{
    const char *subj = natsMsg_GetSubject(msg);
    const char *dot = strrchr(subj, '.');
    char *end = NULL;
    unsigned long c = dot ? strtoul(dot + 1, &end, 10) : 0;
    if (dot == NULL || end == dot + 1 || *end || c >= p->n_convs || pend[c].done)
        return CHAT_OK; /* a late answer to a request sent again */
    int status = chat_nats_status(msg);
    if (status != 0) {
        snprintf(err, errsz,
                 "no api worker answers chat.api.v1.conv.create (status %d): is chat-worker running with "
                 "the api role?",
                 status);
        return CHAT_ERR_UNAVAILABLE;
    }
    Chat__V1__ConvCreateReply *r = chat__v1__conv_create_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                                       (const uint8_t *)natsMsg_GetData(msg));
    if (r == NULL) {
        snprintf(err, errsz, "conv.create: a malformed reply");
        return CHAT_ERR_INVALID;
    }
    chat_status st = CHAT_OK;
    if (r->status && r->status->code[0]) {
        char conv[80];
        bench_conv_id(p, (uint32_t)c, conv, sizeof conv);
        snprintf(err, errsz, "conv.create %s: %s: %s", conv, r->status->code, r->status->message);
        st = CHAT_ERR_INVALID;
    } else {
        *created += r->created;
        pend[c].done = 1;
        pend[c].sent_ns = 0;
        (*finished)++;
    }
    chat__v1__conv_create_reply__free_unpacked(r, NULL);
    return st;
}

chat_status bench_setup_conversations(const bench_plan *p, uint64_t *created, char *err, size_t errsz)
{
    *created = 0;
    if (p->n_convs == 0)
        return CHAT_OK;
    natsConnection *nc = NULL;
    if (chat_nats_connect(p->cfg, "chat-bench", true, &nc) != CHAT_OK) {
        char shown[1024];
        chat_redact_url(p->cfg->nats_url, shown, sizeof shown);
        snprintf(err, errsz, "cannot connect to NATS at %s (CHAT_NATS_URL)", shown);
        nats_CloseAndWait(2000);
        return CHAT_ERR_UNAVAILABLE;
    }
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    char subject[128];
    chat_status st = CHAT_OK;
    pending *pend = calloc(p->n_convs, sizeof *pend);
    if (pend == NULL || natsInbox_Create(&inbox) != NATS_OK) {
        snprintf(err, errsz, "out of memory");
        st = CHAT_ERR_NOMEM;
        goto out;
    }
    snprintf(subject, sizeof subject, "%s.*", (const char *)inbox);
    if (natsConnection_SubscribeSync(&sub, nc, subject) != NATS_OK ||
        natsSubscription_SetPendingLimits(sub, -1, -1) != NATS_OK) {
        snprintf(err, errsz, "cannot subscribe to the reply inbox");
        st = CHAT_ERR_UNAVAILABLE;
        goto out;
    }
    uint32_t next = 0;
    int in_flight = 0, finished = 0;
    int64_t last_scan = chat_mono_ns();
    while (finished < (int)p->n_convs && st == CHAT_OK) {
        while (in_flight < WINDOW && next < p->n_convs && st == CHAT_OK) {
            st = publish_create(nc, p, next, (const char *)inbox);
            pend[next].sent_ns = chat_mono_ns();
            pend[next].tries = 1;
            next++;
            in_flight++;
        }
        if (st != CHAT_OK) {
            snprintf(err, errsz, "cannot publish conv.create requests to NATS");
            break;
        }
        natsMsg *msg = NULL;
        natsStatus s = natsSubscription_NextMsg(&msg, sub, 1000);
        if (s == NATS_OK) {
            int before = finished;
            st = take_reply(msg, p, pend, created, err, errsz, &finished);
            in_flight -= finished - before;
            natsMsg_Destroy(msg);
        } else if (s != NATS_TIMEOUT) {
            snprintf(err, errsz, "waiting for conv.create replies: %s", natsStatus_GetText(s));
            st = CHAT_ERR_UNAVAILABLE;
        }
        int64_t now = chat_mono_ns();
        if (st != CHAT_OK || now - last_scan < 1000000000LL)
            continue;
        last_scan = now;
        for (uint32_t c = 0; c < next && st == CHAT_OK; c++) {
            if (pend[c].done || pend[c].sent_ns == 0 || now - pend[c].sent_ns < REQUEST_TIMEOUT_NS)
                continue;
            if (pend[c].tries >= TRIES) {
                char conv[80];
                bench_conv_id(p, c, conv, sizeof conv);
                snprintf(err, errsz, "conv.create %s: no answer after %d tries of 10 s (is the api role up?)", conv,
                         TRIES);
                st = CHAT_ERR_TIMEOUT;
                break;
            }
            pend[c].tries++;
            pend[c].sent_ns = now;
            st = publish_create(nc, p, c, (const char *)inbox);
        }
    }
out:
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    int level = chat_log_current;
    chat_log_set_level(CHAT_LOG_ERROR); /* closing is not a disconnect worth a warning */
    natsConnection_Destroy(nc);
    chat_log_set_level((chat_log_level)level);
    free(pend);
    nats_CloseAndWait(2000);
    return st;
}
