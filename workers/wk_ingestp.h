/* The ingest role's private header: its state and the stages that share it, a file each:
 * wk_ingest_pull.c (the pull protocol), wk_ingest_batch.c (decoding, validation, drop reasons),
 * wk_ingest_store.c (the transaction), wk_ingest_fanout.c (deliveries, rejections), wk_ingest_events.c
 * (CHAT_EVENTS: publish, confirm, repair), wk_ingest_lease.c (leases, the coordinator), wk_ingest.c
 * (start, stop, the committer loop).
 * Not for other roles. Committer thread unless a comment names another. */
#ifndef WK_INGESTP_H
#define WK_INGESTP_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_map.h"
#include "chat_metrics.h"
#include "chat_nats.h"
#include "wk_events_trust.h"
#include "wk_ingest.h"
#include "wk_pg.h"
#include "wk_routes.h"

#define LEASE_CLASS 727001   /* pg_try_advisory_lock(LEASE_CLASS, partition) */
#define BATCH_MAX 256
#define ACK_WAIT_NS (10LL * 1000000000LL)
#define MAX_DELIVER 50
#define PULL_EXPIRES_MS 5000 /* an open pull request ends after this (408) and is made again */
#define PULL_RETRY_MS 1000   /* after a pull request was refused */
#define WAIT_MS 100          /* the committer looks at its partitions' leases this often */
#define HEARTBEAT_MS 2000
/* A fanout attempt waits at most FLUSH_WAIT_MS for the worker's connection; a wait for CHAT_EVENTS'
 * PubAcks goes in slices of PUBACK_SLICE_MS, heartbeating between: no wait may approach the lease
 * session's idle_session_timeout (10 s) */
#define FLUSH_WAIT_MS 3000
#define PUBACK_SLICE_MS 1000
/* CHAT_EVENTS off the ack path (wk_ingest_events.c): a committer confirms its publishes at most
 * every EVENTS_CONFIRM_MS, waiting EVENTS_CONFIRM_WAIT_MS for the PubAcks still due; a repair
 * republishes pages of EVENTS_REPAIR_PAGE rows and waits up to EVENTS_REPAIR_WAIT_MS for each
 * page's PubAcks, and after a failed one waits 1, 2, 4 ... EVENTS_REPAIR_BACKOFF_MS seconds before
 * the next (a silent broker must not hold the committer a page's wait every second); it starts
 * EVENTS_SLACK_US before the cursor (created_at is the broker timestamp
 * of a post, and two CHAT_IN leaders' clocks, or one clock stepped back, may disagree by that
 * much), and EVENTS_FIRST_REPAIR_US before now for a partition never confirmed (an existing
 * deployment: inside CHAT_EVENTS' duplicate window, so what is there already is dropped). A
 * confirmed publish moves a cursor only after the broker's sync interval (wk_events_trust.h), once
 * a read of the newest acknowledged write (waiting up to EVENTS_CHECK_WAIT_MS) finds it there:
 * CHAT_NATS_SYNC is at most 5 minutes, so a repair from a cursor stays inside the 10-minute window */
#define EVENTS_CONFIRM_MS 1000
#define EVENTS_CONFIRM_WAIT_MS 200
#define EVENTS_CHECK_WAIT_MS 1000
#define EVENTS_REPAIR_PAGE 1000
#define EVENTS_REPAIR_WAIT_MS 2000
#define EVENTS_REPAIR_BACKOFF_MS 30000
#define EVENTS_SLACK_US (5LL * 1000000)
#define EVENTS_FIRST_REPAIR_US (9LL * 60 * 1000000)
#define GROUP_MAX 2048 /* items in one commit of several partitions' batches */
/* Lanes: a partition's live posts (users' and backends', chat.in.<p>.<conv>[.backend], stream
 * CHAT_IN) and its bulk posts (imports, chat.bulk.<p>.<conv>, stream CHAT_BULK) come from two
 * consumers. A commit takes every live post that has arrived and at most BULK_PER_COMMIT bulk
 * posts of all the committer's partitions (fewer under CHAT_INGEST_BULK_RATE), so an import never
 * puts more than that ahead of a live post (256 left a live post's p99 at 50-65 ms beside an
 * import, 64 at 28-33: bench/findings.md item 20). A partition's bulk lane pulls BULK_PER_COMMIT at
 * a time and only while fewer wait here; what waits is kept from the broker's redelivery with an
 * in-progress ack every BULK_KEEP_MS. docs/architecture.md, "Ingest": lanes. */
enum { LANE_LIVE, LANE_BULK, LANES };
#define BULK_PER_COMMIT 64
#define BULK_ACK_PENDING (4 * BULK_PER_COMMIT)
#define BULK_KEEP_MS 3000

/* Partition states: the coordinator moves IDLE -> RUNNING (lease taken) and RUNNING -> RELEASE
 * (too many owned); the committer moves RUNNING or RELEASE -> DONE (given up, or lost); the
 * coordinator gives the lease back and moves DONE -> IDLE. */
enum { P_IDLE, P_RUNNING, P_RELEASE, P_DONE };

enum { SETUP_NONE, SETUP_RUNNING, SETUP_OK, SETUP_FAILED };

struct batch;
struct committer;

/* One consumer of a partition and what it brought (the committer's alone). */
typedef struct lane {
    bool on;                    /* its consumer is set up (the bulk lane's may not be: below) */
    const char *stream;         /* CHAT_IN, CHAT_BULK */
    char consumer[64];          /* ingest-<p>-<epoch> on its stream */
    char ack_key[96];           /* ".<stream>.<consumer>.", found in the ack subject of each of its messages */
    char next_subject[128];
    char reply[96];             /* <committer inbox>.<p>.<epoch>[.b]: its pull requests' ends */
    chat_js_puller pull;        /* its open pull requests */
    struct batch *buf;          /* messages arrived and not yet committed, in consumer order */
    int64_t fetched_ns;         /* when the first of them arrived */
    int64_t pending;            /* its broker lag, as last read */
} lane;

typedef struct partition {
    struct wk_ingest *in;
    int index;
    atomic_int state;
    struct committer *com;      /* pulls, stores and acks this partition */
    uint64_t gen;               /* the lease connection's generation this lease was taken on */
    bool lost;                  /* given up because the lease was lost */
    int64_t epoch;
    /* the committer's alone (and its set-up thread's while setup is SETUP_RUNNING) */
    atomic_int setup;           /* SETUP_*: the consumer set-up of a partition just leased */
    pthread_t setup_tid;
    bool active;                /* its consumer is set up and pulled */
    bool reset_due;             /* its consumer is to be made again (after a reconnect: pull.c) */
    int64_t reset_at_ms;        /* not before this (after a failed reset) */
    lane lanes[LANES];          /* its live posts and its bulk posts */
    jsCtx *js;                  /* consumer management and lag */
    int64_t lag_at_ms;          /* when the consumer's lag was last read */
    char label[32];             /* partition="N" */
    atomic_int_fast64_t *m_pending, *m_ack_pending, *m_bulk_pending; /* live lane; bulk lane */
    /* CHAT_EVENTS (wk_ingest_events.c; set by the coordinator when it takes the lease) */
    int64_t events_upto_us;     /* the cursor in ingest_leases.events_upto (0: none) */
    int64_t created_floor_us;   /* no event is stored with an earlier created_at (wk_ingest_store.c) */
    int64_t events_newest_us;   /* the newest created_us published (or republished) */
    int64_t events_from_us;     /* where the pending repair starts */
    bool events_dirty;          /* published since the last confirmation */
    bool events_repair;         /* a repair is due: the cursor stays until it is done */
    bool events_repair_tried;   /* a repair was tried since the lease was taken */
    /* set by the lease (coordinator, before the partition runs), taken by wk_ingest_events_tick */
    bool events_leased;             /* a lease was just taken: its repair is to be armed */
    int64_t events_leased_upto_us;  /* the cursor the lease read (0: none) */
} partition;

/* A committer, its partitions' pulls and its lease connection. `pg_mu` guards the connection,
 * which the coordinator also uses (lock, epoch, unlock) between commits. */
typedef struct committer {
    struct wk_ingest *in;
    int index;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    char inbox[64];             /* <inbox>.<p>.<epoch>: pull request ends of partition p */
    natsSubscription *sub;      /* <inbox>.* */
    pthread_mutex_t pg_mu;
    PGconn *pg;
    atomic_uint_fast64_t gen;   /* bumped whenever pg is given up: its leases are gone with it */
    int64_t last_pg_ms;
    /* its own connection for CHAT_EVENTS publishes: nats-server stores a JetStream publish inline
     * in the publishing connection's read loop (with CHAT_NATS_SYNC=always, an fsync each), and
     * the worker's acks, pulls and deliveries must not wait behind them */
    natsConnection *enc;
    jsCtx *js;                  /* CHAT_EVENTS publishes, on enc */
    atomic_int publish_errors;  /* failed publishes since the last confirmation (the ack handler) */
    pthread_mutex_t acked_mu;   /* acked_seq and acked_tag (nats.c's thread writes them) */
    uint64_t acked_seq;         /* the highest CHAT_EVENTS sequence PubAcked (0: none since a loss) */
    char acked_tag[160];        /* its Chat-Publish header: this publish and no other; or, */
    bool acked_by_id;           /* when the broker answered duplicate, its Nats-Msg-Id */
    uint64_t publishes;         /* CHAT_EVENTS publishes so far (the committer's thread): the tags */
    wk_trust trust;             /* confirmed publishes waiting for the broker's sync (wk_events_trust.h) */
    bool events_dirty;          /* published since the last confirmation */
    int64_t events_tick_ms;     /* the last confirmation */
    int64_t repair_at_ms;       /* no repair before this after one failed (but one of a new lease) */
    int64_t repair_backoff_ms;  /* 0 after a repair that worked, doubling up to EVENTS_REPAIR_BACKOFF_MS */
    uint64_t enc_reconnects;    /* enc's reconnects seen so far: a new one makes every partition repair */
    /* routes (wk_ingest_routes.c): its own Redis connection, CHAT_REDIS_URL */
    wk_redis_link redis;        /* the routes' Redis connection (wk_routes.h) */
    struct wk_route_batches *routed; /* the per-gateway batches of a fanout (wk_route_batch.h) */
    chat_map *route_cache;      /* user -> its routes as last read (wk_ingest_routes.c) */
    int64_t route_since;        /* CHAT_ROUTES_SINCE_KEY when the cache was filled (0: missing) */
    int64_t route_settle_ms;    /* a new epoch: no delivery before this (Unix ms; chat_routes.h) */
    char route_log_id[48];      /* the last CHAT_ROUTES_LOG_KEY entry read ("": none; read its end) */
    int64_t route_log_read_ms;  /* when the log was last read (Unix ms) */
} committer;

/* Which chat_ingest_dropped_total{reason} counts a dropped message (registered in this order). */
typedef enum drop_metric {
    DM_INVALID,
    DM_NOT_MEMBER,
    DM_NO_CONVERSATION,
    DM_POISON,
    DM_NO_TARGET,
    DM_COUNT
} drop_metric;

struct wk_ingest {
    wk_app *app;
    char worker_id[40];
    pthread_t coordinator;
    committer *com;             /* CHAT_INGEST_COMMITTERS of them; partition p goes to p % ncom */
    int ncom;
    partition *parts;
    int nparts;
    int owned;
    atomic_int_fast64_t *m_owned;
    atomic_uint_fast64_t *m_events, *m_redelivered, *m_batches, *m_store_retries;
    atomic_uint_fast64_t *m_events_republished, *m_events_unconfirmed, *m_events_lost;
    atomic_uint_fast64_t *m_drop[DM_COUNT]; /* chat_ingest_dropped_total by drop_metric */
    /* chat_ingest_deliveries_total{path="gateway"|"user"}: (event, recipient) pairs by the way they
     * went; chat_ingest_route_errors_total: Redis reads of routes that failed */
    atomic_uint_fast64_t *m_deliveries_gateway, *m_route_errors;
    chat_histogram *h_commit, *h_fanout, *h_broker_to_commit;
};

/* ------------------------------------------------------------------------------------------ */
/* Drop reasons                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Why a message is dropped (acked without storing). wk_ingest_drop_info() gives each its log text,
 * the code told to the sending session and the metric that counts it. */
typedef enum drop_reason {
    DROP_NONE, /* not dropped; a drop without a reason logs "invalid" */
    /* the post itself (wk_ingest_validate): bad_request */
    DROP_UNDECODABLE,
    DROP_BAD_ID,
    DROP_BAD_KIND,
    DROP_CHANGE_NO_TARGET,
    DROP_BAD_EMOJI,
    DROP_BODY_TOO_LARGE,
    DROP_META_TOO_LARGE,
    DROP_SUBJECT_MISMATCH,
    DROP_META_NOT_OBJECT,
    /* the target of an edit, delete or reaction */
    DROP_TARGET_MISSING,
    DROP_TARGET_DELETED,
    DROP_TARGET_NOT_OWN,
    /* the conversation, the sender, the cmid */
    DROP_ARCHIVING,
    DROP_NO_CONVERSATION,
    DROP_NOT_MEMBER,
    DROP_CMID_TAKEN,
    DROP_FIRST_REFUSED,
    /* the database refuses the message itself */
    DROP_POISON,
    DROP_REASON_COUNT
} drop_reason;

typedef struct drop_info {
    const char *text;        /* the log's reason="..." */
    const char *reject_code; /* told to the sending session, NULL: nothing told */
    const char *told;        /* the rejection's message */
    drop_metric metric;
} drop_info;

/* The row of r in the table (never NULL; out of range gives DROP_NONE's). Any thread. */
const drop_info *wk_ingest_drop_info(drop_reason r);

/* ------------------------------------------------------------------------------------------ */
/* Batches (wk_ingest_batch.c) and the store (wk_ingest_store.c)                               */
/* ------------------------------------------------------------------------------------------ */

enum { I_NEW, I_STORED, I_DUP, I_DROP };

typedef struct item {
    natsMsg *msg;
    Chat__V1__Post *post;
    int part;            /* partition index */
    int state;
    int dup_of;          /* I_DUP: index of the first item with the same (conv, cmid) */
    int stored_row;      /* I_STORED: its row in the batch's `stored` result (the stored event) */
    int64_t ts_us;       /* broker timestamp */
    uint64_t seq;
    char id[32];
    int64_t created_us;  /* stored created_at */
    drop_reason drop;    /* I_DROP: why */
    bool backend;        /* posted on chat.in.<p>.<conv>.backend or chat.bulk.<p>.<conv>: a trusted post, any sender */
} item;

/* store_batch(): S_DATA_ERROR is the batch's data refused (split it, drop the poison); S_RETRY the database
 * refusing for now what it would take later (a full disk, out of memory, a deadlock, read-only):
 * nothing is dropped, the batch is kept and stored again */
enum { S_OK, S_NO_PARTITION, S_LEASE_LOST, S_DATA_ERROR, S_RETRY };

typedef struct members {
    char *conv;
    char **users;
    int n, cap;
} members;

/* A partition's batch owns its messages and posts; a view (the committer's group of several
 * batches, or a piece of a batch split to isolate a message the database refuses) only points at
 * the items of others. */
typedef struct batch {
    item *items;
    int n, cap;
    bool view;
    int part;          /* partition index for the logs, -1 when several */
    members *convs;    /* distinct conversations of the batch with their members */
    int nconvs;
    chat_map *conv_ix; /* conversation -> index + 1 in convs */
    PGresult *stored;  /* Q_DEDUPE rows of this attempt: the stored events its duplicates answer with */
} batch;

/* Columns of Q_DEDUPE: the dedupe row, then the stored event (NULL when its row is no longer in
 * `messages`: archived), then whether it is deleted (a text or system message, or an edit of one,
 * whose delete event exists). */
enum { D_CONV, D_CMID, D_SEQ, D_ID, D_CREATED, D_SENDER, D_KIND, D_BODY, D_META, D_TARGET, D_EMOJI, D_ON, D_DELETED };

/* Appends a copy of *it (its message and post stay owned by whoever owned them). */
void wk_ingest_batch_add(batch *b, const item *it);
/* Empties a partition's batch (which owns its messages and posts). */
void wk_ingest_batch_reset(batch *b);
/* Frees the first n items of a partition's batch (committed and acked) and keeps the rest. */
void wk_ingest_batch_drop_front(batch *b, int n);
/* Frees a view's own memory (not the items' messages and posts) and zeroes it. */
void wk_ingest_view_free(batch *v);
/* Decodes the posts of a partition's fetched batch (undecodable ones stay NULL: validate drops them). */
void wk_ingest_batch_decode(batch *b, int part);
/* The conversation conv of b's current attempt with its members, NULL when not in b. */
members *wk_ingest_find_conv(batch *b, const char *conv);
/* Validates and groups the items of b afresh (each attempt to store it starts here). */
void wk_ingest_batch_prepare(batch *b);
/* Drops it for r (state I_DROP). */
void wk_ingest_reject(item *it, drop_reason r);
/* Checks the post of it (it->post, NULL when undecodable) against its subject: on a fault it is
 * I_DROP with the reason; it->backend is set from the subject. Any thread. */
void wk_ingest_validate(item *it, const char *subject);
/* "YYYY-MM-DD hh:mm:ss.uuuuuu+00" of a time in microseconds, for a timestamptz parameter. */
void wk_ingest_format_ts(char *buf, size_t size, int64_t us);

/* ------------------------------------------------------------------------------------------ */
/* SQL (wk_ingest_sql.c): below the store and the lease                                         */
/* ------------------------------------------------------------------------------------------ */

/* The batch statements, prepared once per lease connection. */
enum { Q_SEEN, Q_DEDUPE, Q_MEMBERS, Q_TARGETS, Q_WRITE, Q_COUNT };
/* Prepares the batch statements on a fresh lease connection (outside any transaction). False
 * (logged) when PostgreSQL refuses one or the connection is gone: the caller closes it. */
bool wk_ingest_prepare_statements(PGconn *pg);
/* The store's pipeline (libpq pipeline mode, PostgreSQL 14+): a batch's statements are queued
 * and sent together, and their answers read in the order sent; a statement that fails makes the
 * server skip the rest up to the sync, leaving the transaction to roll back. Each call but
 * wk_ingest_pipe_end() is false (or NULL) with *e filled when it failed, and then only
 * wk_ingest_pipe_end() may follow. */
/* Enters pipeline mode and queues BEGIN. */
bool wk_ingest_pipe_begin(PGconn *pg, wk_pg_error *e);
/* Queues batch statement q (its parameters are copied: the caller may free them on return). */
bool wk_ingest_pipe_send(PGconn *pg, int q, const char *const *params, wk_pg_error *e);
/* Queues a sync and sends what is queued: the server answers everything so far, and the
 * transaction (BEGIN'd) goes on, idle in transaction until the next statement: a worker paused
 * between two round trips loses its session to idle_in_transaction_session_timeout. (A flush
 * request instead keeps the server reading the pipeline, "active", where no idle timeout applies:
 * a paused worker would keep its leases for good.) */
bool wk_ingest_pipe_sync(PGconn *pg, wk_pg_error *e);
/* Reads the answer of that sync, after the statements' results. */
bool wk_ingest_pipe_synced(PGconn *pg, wk_pg_error *e);
/* Queues COMMIT and the sync, and sends them. */
bool wk_ingest_pipe_commit(PGconn *pg, wk_pg_error *e);
/* The next statement's result (the caller PQclears it) when its status is `expect`; else NULL. */
PGresult *wk_ingest_pipe_result(PGconn *pg, ExecStatusType expect, wk_pg_error *e);
/* Ends the pipeline: queues the sync unless `synced` (wk_ingest_pipe_commit sent it), reads and
 * drops every answer up to it and leaves pipeline mode. False (logged) when the connection cannot
 * be used any more. */
bool wk_ingest_pipe_end(PGconn *pg, bool synced);
/* One-off statements (the lease, a missing partition): planned at each call. */
PGresult *wk_ingest_exec_params(PGconn *pg, const char *sql, int n, const char *const *params);

/* ------------------------------------------------------------------------------------------ */
/* Store (wk_ingest_store.c)                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Stores b (validated afresh) in one transaction under pg_mu, creating a missing `messages`
 * partition on the way: S_*; S_LEASE_LOST when the connection of generation gen is gone. */
int wk_ingest_store_locked(committer *c, batch *b, uint64_t gen);

/* ------------------------------------------------------------------------------------------ */
/* Fanout (wk_ingest_fanout.c)                                                                  */
/* ------------------------------------------------------------------------------------------ */

enum { F_DONE, F_STOPPING, F_LEASE_LOST };

/* Publishes the stored events of b to their members until the server took them, and to CHAT_EVENTS
 * (confirmed later, wk_ingest_events_tick): F_*. */
int wk_ingest_fanout(committer *c, batch *b, uint64_t gen, int64_t committed_ms);
/* Publishes `what` ("+WPI", ...) to the reply subject of every message of b. */
void wk_ingest_reply_all(natsConnection *nc, batch *b, const char *what);
/* Counts and logs the dropped items of b and tells their sessions why. */
void wk_ingest_count_drops(wk_ingest *in, batch *b);

/* ------------------------------------------------------------------------------------------ */
/* Routes (wk_ingest_routes.c)                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* The gateways holding the members of b's conversations, read from Redis in one pipelined round trip
 * (two when the log named cached users): *out a map user -> "g1\0g2\0\0" (the gateway ids) for the
 * users with a live route (NULL: b has no member). False when Redis is down or slow: the caller
 * holds the batch and asks again (no live delivery can be addressed without the routes). Free *out
 * with wk_ingest_routes_free. */
bool wk_ingest_routes_read(committer *c, const batch *b, chat_map **out);
/* NULL-safe. Any thread. */
void wk_ingest_routes_free(chat_map *routes);
/* Closes c's Redis connection (at the committer's end). */
void wk_ingest_routes_close(committer *c);

/* ------------------------------------------------------------------------------------------ */
/* CHAT_EVENTS (wk_ingest_events.c)                                                             */
/* ------------------------------------------------------------------------------------------ */

/* Every CHAT_EVENTS PubAck of c's JetStream context (a jsPubAckHandler, closure c; nats.c's
 * thread): a failure counts in publish_errors, a success raises acked_seq. */
void wk_ingest_on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);
/* Event e of partition pt, stored with created_us, to CHAT_EVENTS (Nats-Msg-Id <conv>:<seq>); its
 * PubAck is not awaited here but confirmed by wk_ingest_events_tick(). e is borrowed. */
void wk_ingest_publish_event(committer *c, partition *pt, const Chat__V1__Event *e, int64_t created_us);
/* The cursor of a partition whose lease was just taken (upto_us 0: NULL, never confirmed): a repair
 * is due before its first batch. Coordinator thread, before the partition is P_RUNNING. */
/* Between batches and when idle: confirms c's publishes (at most every EVENTS_CONFIRM_MS), moves
 * the cursors of its partitions, and runs the repairs that are due (at once for a partition just
 * leased, before its first batch). */
void wk_ingest_events_tick(committer *c);

/* ------------------------------------------------------------------------------------------ */
/* Pulling (wk_ingest_pull.c)                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Where a message of a committer's inbox belongs: a pulled message (chat.in.<p>.<conv>[.backend],
 * chat.bulk.<p>.<conv>) or a pull request's end or lag answer (<inbox>.<p>.<epoch>[.b][.lag]). */
typedef struct inbox_subject {
    int part;
    int lane;     /* LANE_*: a pulled message's by its subject, a request's end by its reply's ".b" */
    bool pulled;  /* chat.in.<p>...: no epoch */
    int64_t epoch;
    bool lag;     /* <inbox>.<p>.<epoch>.lag */
} inbox_subject;

/* Parses subject against the committer inbox `inbox`; false when it is neither form or its
 * partition is not in [0, nparts). Any thread. */
bool wk_ingest_inbox_subject(const char *inbox, int nparts, const char *subject, inbox_subject *out);
/* Subscribes the committer's inbox (c->sub stays NULL on failure: tried again). */
void wk_ingest_subscribe_inbox(committer *c);
/* Follows the coordinator's decisions for c's partitions, and keeps their pull requests open. */
void wk_ingest_tend(committer *c, bool stopping, bool reconnected);
/* Waits up to wait_ms for the first message, then buffers what else is there: how many. */
int wk_ingest_collect(committer *c, int64_t wait_ms);

/* ------------------------------------------------------------------------------------------ */
/* Leases (wk_ingest_lease.c)                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Gives up the lease connection of generation gen. Caller holds pg_mu. */
void wk_ingest_lose_connection(committer *c, uint64_t gen);
/* Keeps the lease session alive; false when generation gen is no longer the live one. */
bool wk_ingest_heartbeat(committer *c, uint64_t gen);
/* The coordinator thread (arg: the wk_ingest): takes, spreads and gives back leases. */
void *wk_ingest_coordinator_thread(void *arg);

#endif
