/* NATS helpers shared by every binary: connecting from the settings, turning natsStatus into
 * chat_status, subject names. Connections reconnect forever; callers check the status. */
#ifndef CHAT_NATS_H
#define CHAT_NATS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "chat_config.h"
#include "chat_status.h"

/* Connects to cfg->nats_url with name `name`. With wait_initial false the call returns at once
 * even if no server answers yet and the library keeps trying in the background (the binary is
 * then not ready); with true it fails after the connect timeout. *out is set only on CHAT_OK;
 * the caller destroys it with natsConnection_Destroy. `name` is also the log component of the
 * connection's callbacks, which may run after the call returns (and after the destroy): give a
 * string that lives as long as the process, such as a literal. */
chat_status chat_nats_connect(const chat_cfg *cfg, const char *name, bool wait_initial, natsConnection **out);

/* The same, with the async subscriptions of this connection delivered by nats.c's shared pool of
 * delivery threads (nats_SetMessageDeliveryPoolSize) instead of one thread per subscription: for
 * the gateway, which holds one subscription per connected user and whose callbacks never block. */
chat_status chat_nats_connect_shared(const chat_cfg *cfg, const char *name, int pool_threads, natsConnection **out);

/* chat_nats_connect (not waiting) whose own inboxes (nats.c's requests, JetStream push consumers
 * such as a KV watcher's) are made under inbox_prefix instead of "_INBOX": for a credential that
 * may subscribe only under a prefix of its own (the gateway's "_INBOX.gw.>"). inbox_prefix NULL keeps
 * "_INBOX" (chat_nats_connect with wait_initial false). */
chat_status chat_nats_connect_inbox(const chat_cfg *cfg, const char *name, const char *inbox_prefix,
                                    natsConnection **out);

/* Maps a natsStatus (and logs its text under comp with the action that failed). */
chat_status chat_nats_check(natsStatus s, const char *comp, const char *action);

bool chat_nats_connected(natsConnection *nc);
/* How many times nc reconnected (nats.c counts every new socket); 0 when it cannot tell. */
uint64_t chat_nats_reconnects(natsConnection *nc);
/* At exit, after every NATS object is destroyed: tears nats.c down and waits (up to 2 s) for its
 * threads. nats_Close() alone returns at once, and a message a connection's threads destroy after
 * the library's garbage collector stopped is never freed (LeakSanitizer saw one at a gateway's
 * stop in a fault scenario). */
void chat_nats_shutdown(void);

/* Subject builders; return false if the result would not fit. */
bool chat_subject_in(char *buf, size_t size, int partition, const char *conv);   /* chat.in.<p>.<conv> */
/* chat.in.<p>.<conv>.backend: a trusted post (a backend's, the api role's `post`), which may name
 * any sender; only NATS users with that permission publish it (never a gateway, whose posts on
 * chat.in.<p>.<conv> are a user's: the sender must be a member). docs/nats.md. */
bool chat_subject_in_backend(char *buf, size_t size, int partition, const char *conv);
/* chat.bulk.<p>.<conv>: a trusted post of a bulk import (stream CHAT_BULK), stored after the live
 * posts of the moment and at most CHAT_INGEST_BULK_RATE a second per worker (docs/nats.md). */
bool chat_subject_bulk(char *buf, size_t size, int partition, const char *conv);
/* The conversation token of a post's subject (chat.in.<p>.<conv>, chat.in.<p>.<conv>.backend or
 * chat.bulk.<p>.<conv>) and whether it is a trusted form; false for any other subject. *conv
 * points into subject. */
bool chat_subject_in_parse(const char *subject, const char **conv, size_t *conv_len, bool *backend);
/* chat.deliver.g.<gateway>: a DeliveryBatch for the users routed to that gateway */
bool chat_subject_deliver_gateway(char *buf, size_t size, const char *gateway);
bool chat_subject_event(char *buf, size_t size, const char *conv);              /* chat.evt.<conv> */
bool chat_subject_typing(char *buf, size_t size, const char *conv);             /* chat.typing.<conv> */
bool chat_subject_members(char *buf, size_t size, const char *conv);            /* chat.members.<conv> */
/* chat.in.<p>.>: every post of partition p, users' and backends', in order (a consumer's filter). */
bool chat_subject_in_partition(char *buf, size_t size, int partition);
bool chat_subject_bulk_partition(char *buf, size_t size, int partition); /* chat.bulk.<p>.* */
bool chat_subject_api(char *buf, size_t size, const char *method); /* chat.api.v1.<method> */
/* What follows chat.typing. (resp. chat.members.) in subject, pointing into it: the conversation
 * of a typing notice (a membership change); NULL for any other subject. */
const char *chat_subject_typing_parse(const char *subject);
const char *chat_subject_members_parse(const char *subject);
/* chat.route.<gateway>: a gateway's route requests (RouteRequest, workers/wk_claims.h) */
bool chat_subject_route(char *buf, size_t size, const char *gateway);
/* The gateway of a route request's subject (pointing into it), NULL for any other subject. */
const char *chat_subject_route_parse(const char *subject);
#define CHAT_SUBJECT_ROUTE_ALL "chat.route.*"     /* every gateway's route requests */
#define CHAT_SUBJECT_TYPING_ALL "chat.typing.*"   /* every conversation's typing notices */
#define CHAT_SUBJECT_MEMBERS_ALL "chat.members.*" /* every conversation's membership changes */

/* The JetStream API of a consumer: $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> (a pull
 * request) and $JS.API.CONSUMER.INFO.<stream>.<consumer> (its state). */
bool chat_subject_js_next(char *buf, size_t size, const char *stream, const char *consumer);
bool chat_subject_js_info(char *buf, size_t size, const char *stream, const char *consumer);

/* A JetStream message's ack subject (its reply): $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
 * <cseq>.<ts>.<pending> (v1), or with <domain>.<account hash> after ACK and a trailing token (v2).
 * False unless it is one, with a delivery count of at least 1 and a timestamp after the epoch;
 * *out set only then. The one parser of the ingest's and the notify role's pulls. */
typedef struct chat_js_ack {
    uint64_t delivered; /* how many times this message was delivered, this one included */
    int64_t ts_ns;      /* the broker's timestamp of the message (Unix ns) */
    int64_t pending;    /* messages of the consumer still waiting when this one was delivered */
} chat_js_ack;
bool chat_js_ack_parse(const char *reply, chat_js_ack *out);

/* A status message of NATS or JetStream (no payload, a "Status" header): its code (404 no
 * messages now, 408 a pull request expired, 409 its consumer was deleted or changed leader, 503
 * no responders), 0 for any other message. The one reader of status headers. */
int chat_nats_status(natsMsg *m);

/* Asks a pull consumer (next_subject: chat_subject_js_next) for up to batch messages, delivered
 * to reply: those that come within expires_ms, or with expires_ms 0 only those there now (a 404
 * when there are none). Each request ends with a status message (or the batch's last message). */
natsStatus chat_js_pull(natsConnection *nc, const char *next_subject, const char *reply, int batch,
                        int64_t expires_ms);

/* How many messages a pull request ended by m (a 408) did not bring: its Nats-Pending-Messages
 * header; -1 without one. */
int64_t chat_js_pull_left(natsMsg *m);

/* Pull requests kept open on a pull consumer (the ingest's partitions, the notify role's pullers):
 * a new one for `batch` messages as soon as the open ones may bring no more than half that, so a
 * busy consumer never waits for a request to reach the broker, and an idle one renews a request
 * once per expiry. One owner thread; zero it to forget every request (a reconnect, a new consumer). */
typedef struct chat_js_puller {
    int credit;          /* messages the open requests may still bring */
    int64_t deadline_ms; /* the newest request's expiry and a second (chat_mono_ms): past it, with
                          * no word, they are taken as lost (a connection that went away) */
    int64_t retry_at_ms; /* no request before this (one failed, or one ended early) */
} chat_js_puller;

/* Sends a request for `batch` messages expiring after expires_ms when the credit is low; after a
 * failure to send, not again for retry_ms. */
void chat_js_keep_pulling(chat_js_puller *p, natsConnection *nc, const char *next_subject, const char *reply,
                          int batch, int64_t expires_ms, int64_t retry_ms);

/* Accounts for m, a message on the requests' reply subject: a pulled message (its status 0) takes
 * one from the credit; a request's end (a status) gives back what it did not bring (408, expired,
 * says how many) and, when it ended otherwise (409: the consumer deleted, a leader change), holds
 * the next request for retry_ms. Returns m's status (0: a pulled message). */
int chat_js_pull_took(chat_js_puller *p, natsMsg *m, int64_t retry_ms);

/* How long after the broker acknowledged a JetStream write it is on its disk, for a sync interval
 * of sync_ms (CHAT_NATS_SYNC; 0: always, synced before the PubAck): the interval, half of it again
 * for the broker's timer and its fsyncs, and a second. */
int64_t chat_nats_synced_after_ms(int64_t sync_ms);

#define CHAT_STREAM_IN "CHAT_IN"
#define CHAT_STREAM_BULK "CHAT_BULK"
#define CHAT_STREAM_EVENTS "CHAT_EVENTS"
#define CHAT_API_PREFIX "chat.api.v1."
/* The gateway form of a method, chat.api.v1.gw.<method>: the only api subjects a gateway's NATS
 * user may publish to. The api role answers it for the named user only (no trusted forms), so a
 * gateway can never read or act as a backend (docs/security.md). */
#define CHAT_API_GW_PREFIX CHAT_API_PREFIX "gw."

#endif
