/* chat-bench: one worker process (see bench_worker.h). One thread, one epoll loop: the sockets,
 * a timerfd for the send schedule and the parent's pipe. Nothing is freed inside a socket
 * callback: a connection that fails is closed after bench_ws_read returns. */
#include "bench_worker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "bench_json.h"
#include "bench_peer.h"
#include "bench_ws.h"
#include "chat_jwt.h"
#include "chat_time.h"

#define SCRATCH_SIZE (256 * 1024)
#define FRAME_MAX (64 * 1024)
#define SYNC_FRAME_MAX 60000
#define CONNECT_TIMEOUT_NS (10 * NS_PER_S)
#define CONNECT_ATTEMPTS 5
#define RETRY_DELAY_NS (500 * NS_PER_MS)
#define RECONNECT_DELAY_NS NS_PER_S /* after a close the bench did not ask for */
#define CLOSE_SERVICE_RESTART 1012  /* the server asks the client to reconnect and sync (docs/protocol.md) */
#define SYNC_TRIES 10
#define TICK_NS (100 * NS_PER_MS)
#define LATE_NS (5 * NS_PER_MS)
#define PROGRESS_NS (5 * NS_PER_S)
#define MAX_EVENTS 1024
#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
#define RETRY_ANSWER_NS (5 * NS_PER_S) /* a resend is answered within the gateway's 5 s request deadline */

#define TAG_TIMER UINT64_C(0xffffffff00000001)
#define TAG_PARENT UINT64_C(0xffffffff00000002)

enum { ST_RAMP, ST_WAIT, ST_RUN, ST_DRAIN, ST_DONE };
enum { DEV_IDLE, DEV_CONNECTING, DEV_OPEN, DEV_DOWN, DEV_FAILED };
enum { MSG_PLANNED, MSG_SENT, MSG_ACKED, MSG_SKIPPED, MSG_FAILED };
enum { RETRY_SEND, RETRY_SYNC };
/* The handshake of a peer protocol (proto xmpp or socketio), after the TCP connect. */
enum {
    PS_NONE = 0,  /* proto chat: the gateway's hello ends the handshake */
    PS_WS,        /* waiting for the 101 */
    PX_OPEN1,     /* XMPP: <open/> sent, waiting for the features with SASL PLAIN */
    PX_AUTH,      /* XMPP: <auth/> sent */
    PX_OPEN2,     /* XMPP: <open/> sent again, waiting for the features with bind */
    PX_BIND,      /* XMPP: bind sent */
    PX_ENABLE,    /* XMPP: <enable/> (XEP-0198) and the initial <presence/> sent */
    PS_SIO_OPEN,  /* Socket.IO: waiting for the Engine.IO open packet */
    PS_SIO_CONN,  /* Socket.IO: CONNECT (with the user and its conversations) sent */
    PS_READY,
};

/* What one device has received of one conversation. */
typedef struct dev_conv {
    uint32_t conv;    /* local conversation index */
    uint32_t max_seq; /* highest seq received */
    uint32_t contig;  /* every seq <= contig received */
    uint32_t words;   /* capacity of bits in 64-bit words */
    uint64_t *bits;   /* bit s: seq s received */
} dev_conv;

/* One connection: a device of a user. */
typedef struct device {
    bench_ws ws;
    uint32_t n;    /* global connection index */
    uint32_t user; /* local user index */
    uint8_t phase, attempts;
    bool counted;   /* its deliveries are checked (it was not failed at the start) */
    bool syncing;   /* a sync is running: order checks wait for synced */
    bool reconnect; /* the next hello starts a resend and a sync */
    bool want_out;  /* EPOLLOUT registered */
    bool dirty;     /* in the flush list */
    bool collect;   /* its unacked messages go to resend */
    uint8_t sync_tries;
    int64_t connect_ns;   /* start of the current attempt */
    int64_t reconnect_ns; /* start of the reconnect after a drop or close */
    dev_conv *convs;
    uint32_t n_convs;
    uint32_t *resend;
    uint32_t n_resend, cap_resend;
    /* peer protocols */
    uint8_t pstage;       /* PS_* / PX_* */
    const char *fail_why; /* set inside a frame callback; the connection is failed after the read */
    uint32_t in_stanzas;  /* XMPP: stanzas received since <enabled/> (our <a h=.../>) */
    uint32_t acked_out;   /* XMPP: our messages the server acked (its <a h=.../> less the presence) */
    uint32_t *fifo;       /* XMPP: messages sent and not yet acked, in order */
    uint32_t fifo_head, fifo_len, fifo_cap;
} device;

typedef struct user_state {
    uint32_t *convs; /* local conversation indices, ascending */
    uint32_t n_convs;
    uint32_t *devices;
    uint32_t n_devices;
    char *target; /* "/ws?token=..." */
} user_state;

typedef struct conv_state {
    uint32_t max_seq;   /* highest seq seen committed (ack or delivery) */
    uint32_t n_counted; /* checked devices of its members */
    uint32_t *seq_msg;  /* seq_msg[s] = 1 + index of the message stored as seq s, 0 while unknown */
    uint32_t seq_cap;
} conv_state;

typedef struct bench_msg {
    int64_t sched_ns;
    uint64_t id_hash;
    uint32_t seq;
    uint32_t dev; /* local device index of the sender */
    uint8_t state, tries;
    bool resent; /* sent again after a reconnect or an error: kept out of the latencies */
} bench_msg;

typedef struct retry {
    int64_t due_ns;
    uint32_t what; /* message index (RETRY_SEND) or device index (RETRY_SYNC) */
    uint8_t kind;
} retry;

typedef struct worker {
    const bench_plan *plan;
    const bench_share *share;
    int proc;
    int ep, tfd, to_parent, from_parent;
    char *scratch, *frame;
    user_state *users;
    uint32_t n_users;
    device *devs;
    uint32_t n_devs;
    conv_state *convs;
    uint32_t n_convs;
    bench_msg *msgs;
    uint64_t n_msgs, next_msg;
    uint64_t outstanding; /* MSG_SENT */
    uint32_t *dirty;
    uint32_t n_dirty;
    /* connecting */
    uint32_t next_ramp, pending, max_pending;
    int64_t ramp_t0;
    double ramp_rate;
    uint32_t *requeue; /* ring of devices waiting to (re)connect, each at requeue_due */
    int64_t *requeue_due;
    uint32_t rq_head, rq_len;
    retry *retries;
    uint32_t n_retries, cap_retries;
    /* phases */
    int stage;
    int64_t t0, t_end, drop_ns, reconnect_ns, drain_until;
    int64_t t_measure; /* t0 + warmup: messages scheduled before it are kept out of latencies and throughput */
    bool say_measuring;
    bool dropped;
    bool need_collect; /* connections went down: collect their unacked messages */
    uint32_t n_syncing, n_down;
    int64_t armed_ns, next_tick_ns, next_progress_ns;
    bench_result r;
} worker;

/* ------------------------------------------------------------------ results */

void bench_result_init(bench_result *r)
{
    memset(r, 0, sizeof *r);
    bench_hist_init(&r->ack);
    bench_hist_init(&r->delivery);
    bench_hist_init(&r->lag);
    bench_hist_init(&r->connect);
    bench_hist_init(&r->resync);
}

static int64_t min_time(int64_t a, int64_t b)
{
    return a == 0 ? b : b == 0 ? a : a < b ? a : b;
}

static int64_t max_time(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

void bench_result_merge(bench_result *into, const bench_result *f)
{
#define ADD(x) into->x += f->x
    ADD(conns), ADD(conns_open), ADD(conns_failed), ADD(connect_attempts), ADD(connect_retries);
    ADD(http_refused), ADD(unexpected_closes), ADD(restart_closes);
    ADD(scheduled), ADD(sent), ADD(acked), ADD(unacked), ADD(skipped_offline), ADD(failed_sends), ADD(resent);
    ADD(acked_warm), ADD(deliveries_warm);
    ADD(err_unavailable), ADD(err_rate_limited), ADD(err_not_member), ADD(err_other), ADD(late_sends);
    ADD(deliveries_expected), ADD(deliveries), ADD(missing_deliveries), ADD(redeliveries), ADD(duplicates);
    ADD(seq_conflicts), ADD(out_of_order), ADD(gaps), ADD(gap_seqs), ADD(sync_holes), ADD(body_mismatch);
    ADD(cross_sender_reorders);
    ADD(bad_frames), ADD(unexpected_frames), ADD(protocol_errors);
    ADD(dropped), ADD(reconnected), ADD(synced), ADD(sync_retries), ADD(unsynced);
#undef ADD
    if (into->unavailable_why[0] == '\0')
        memcpy(into->unavailable_why, f->unavailable_why, sizeof into->unavailable_why);
    into->ramp_start_ns = min_time(into->ramp_start_ns, f->ramp_start_ns);
    into->ramp_end_ns = max_time(into->ramp_end_ns, f->ramp_end_ns);
    into->send_start_ns = min_time(into->send_start_ns, f->send_start_ns);
    into->send_end_ns = max_time(into->send_end_ns, f->send_end_ns);
    into->last_ack_ns = max_time(into->last_ack_ns, f->last_ack_ns);
    into->last_delivery_ns = max_time(into->last_delivery_ns, f->last_delivery_ns);
    into->drop_ns = min_time(into->drop_ns, f->drop_ns);
    into->reconnect_start_ns = min_time(into->reconnect_start_ns, f->reconnect_start_ns);
    into->last_synced_ns = max_time(into->last_synced_ns, f->last_synced_ns);
    bench_hist_merge(&into->ack, &f->ack);
    bench_hist_merge(&into->delivery, &f->delivery);
    bench_hist_merge(&into->lag, &f->lag);
    bench_hist_merge(&into->connect, &f->connect);
    bench_hist_merge(&into->resync, &f->resync);
    if (into->problem[0] == '\0' && f->problem[0])
        memcpy(into->problem, f->problem, sizeof into->problem);
    else if (f->problem[0] && into->n_examples < BENCH_EXAMPLES)
        snprintf(into->examples[into->n_examples++], sizeof into->examples[0], "%.199s", f->problem);
    for (uint32_t i = 0; i < f->n_examples && into->n_examples < BENCH_EXAMPLES; i++)
        memcpy(into->examples[into->n_examples++], f->examples[i], sizeof into->examples[0]);
}

static void problem(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(worker *w, const char *fmt, ...)
{
    char *into;
    size_t size;
    if (w->r.problem[0] == '\0') {
        into = w->r.problem;
        size = sizeof w->r.problem;
    } else if (w->r.n_examples < BENCH_EXAMPLES) {
        into = w->r.examples[w->r.n_examples++];
        size = sizeof w->r.examples[0];
    } else {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(into, size, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ small helpers */

static uint64_t fnv64(const char *s, size_t len)
{
    uint64_t h = UINT64_C(14695981039346656037);
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

/* Parses decimal digits s[0..len) into *out; false on anything else. */
static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* The message index of a cmid of this worker ("p<proc>-<index>"), or -1. */
static int64_t cmid_index(const worker *w, const bench_json_member *m)
{
    if (m == NULL || m->kind != BENCH_JSON_STRING || m->val_len < 4 || m->val[0] != 'p')
        return -1;
    const char *dash = memchr(m->val, '-', m->val_len);
    uint64_t proc, k;
    if (dash == NULL || !parse_u64(m->val + 1, (size_t)(dash - m->val - 1), &proc) || proc != (uint64_t)w->proc ||
        !parse_u64(dash + 1, m->val_len - (size_t)(dash + 1 - m->val), &k) || k >= w->next_msg)
        return -1;
    return (int64_t)k;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "chat-bench: out of memory\n");
        exit(1);
    }
    return p;
}

static void mark_dirty(worker *w, device *d)
{
    if (!d->dirty) {
        d->dirty = true;
        w->dirty[w->n_dirty++] = (uint32_t)(d - w->devs);
    }
}

static void set_want_out(worker *w, device *d, bool want)
{
    if (d->want_out == want || d->ws.fd < 0)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u64 = (uint64_t)(d - w->devs)};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, d->ws.fd, &ev);
    d->want_out = want;
}

static dev_conv *find_dev_conv(device *d, uint32_t lc)
{
    uint32_t lo = 0, hi = d->n_convs;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (d->convs[mid].conv < lc)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < d->n_convs && d->convs[lo].conv == lc ? &d->convs[lo] : NULL;
}

static bool has_seq(const dev_conv *dc, uint32_t seq)
{
    uint32_t w = seq / 64;
    return w < dc->words && (dc->bits[w] >> (seq % 64) & 1);
}

static void set_seq(dev_conv *dc, uint32_t seq)
{
    uint32_t w = seq / 64;
    if (w >= dc->words) {
        uint32_t nw = dc->words ? dc->words : 2;
        while (nw <= w)
            nw *= 2;
        uint64_t *b = realloc(dc->bits, (size_t)nw * sizeof *b);
        if (b == NULL) {
            fprintf(stderr, "chat-bench: out of memory\n");
            exit(1);
        }
        memset(b + dc->words, 0, (size_t)(nw - dc->words) * sizeof *b);
        dc->bits = b;
        dc->words = nw;
    }
    dc->bits[w] |= UINT64_C(1) << (seq % 64);
    if (seq > dc->max_seq)
        dc->max_seq = seq;
    while (has_seq(dc, dc->contig + 1))
        dc->contig++;
}

/* Seqs from 1 to upto missing in dc. */
static uint64_t missing_upto(const dev_conv *dc, uint32_t upto)
{
    uint64_t have = 0;
    for (uint32_t s = 1; s <= upto; s++)
        if ((s & 63) == 0 && s + 63 <= upto && s / 64 < dc->words) {
            have += (uint64_t)__builtin_popcountll(dc->bits[s / 64]);
            s += 63;
        } else if (has_seq(dc, s)) {
            have++;
        }
    return upto - have;
}

/* The first seq from 1 missing in dc, or 0. */
static uint32_t first_missing(const dev_conv *dc, uint32_t upto)
{
    for (uint32_t s = dc->contig + 1; s <= upto; s++)
        if (!has_seq(dc, s))
            return s;
    return 0;
}

/* ------------------------------------------------------------------ set-up */

static void build(worker *w)
{
    const bench_plan *p = w->plan;
    const bench_share *s = w->share;
    w->n_users = s->u1 - s->u0;
    w->n_convs = s->c1 - s->c0;
    w->n_devs = s->n1 - s->n0;
    w->users = xcalloc(w->n_users, sizeof *w->users);
    w->convs = xcalloc(w->n_convs, sizeof *w->convs);
    w->devs = xcalloc(w->n_devs, sizeof *w->devs);
    w->dirty = xcalloc(w->n_devs, sizeof *w->dirty);
    w->requeue = xcalloc(w->n_devs, sizeof *w->requeue);
    w->requeue_due = xcalloc(w->n_devs, sizeof *w->requeue_due);
    w->scratch = xcalloc(SCRATCH_SIZE, 1);
    w->frame = xcalloc(FRAME_MAX + 64, 1);
    w->n_msgs = s->messages;
    w->msgs = xcalloc(w->n_msgs, sizeof *w->msgs);

    /* the conversations of each user */
    for (uint32_t c = 0; c < w->n_convs; c++)
        for (uint32_t i = p->conv_first[s->c0 + c]; i < p->conv_first[s->c0 + c + 1]; i++)
            w->users[p->member_of[i] - s->u0].n_convs++;
    for (uint32_t u = 0; u < w->n_users; u++) {
        w->users[u].convs = xcalloc(w->users[u].n_convs, sizeof(uint32_t));
        w->users[u].n_convs = 0;
    }
    for (uint32_t c = 0; c < w->n_convs; c++)
        for (uint32_t i = p->conv_first[s->c0 + c]; i < p->conv_first[s->c0 + c + 1]; i++) {
            user_state *us = &w->users[p->member_of[i] - s->u0];
            if (us->n_convs == 0 || us->convs[us->n_convs - 1] != c) /* a user twice in one group: once */
                us->convs[us->n_convs++] = c;
        }

    /* devices, and the devices of each user */
    for (uint32_t j = 0; j < w->n_devs; j++)
        w->users[bench_conn_user(p, w->proc, s->n0 + j) - s->u0].n_devices++;
    for (uint32_t u = 0; u < w->n_users; u++) {
        w->users[u].devices = xcalloc(w->users[u].n_devices, sizeof(uint32_t));
        w->users[u].n_devices = 0;
    }
    for (uint32_t j = 0; j < w->n_devs; j++) {
        device *d = &w->devs[j];
        d->n = s->n0 + j;
        d->user = bench_conn_user(p, w->proc, d->n) - s->u0;
        d->ws.fd = -1;
        user_state *us = &w->users[d->user];
        us->devices[us->n_devices++] = j;
        d->n_convs = us->n_convs;
        d->convs = xcalloc(d->n_convs, sizeof *d->convs);
        for (uint32_t k = 0; k < d->n_convs; k++)
            d->convs[k].conv = us->convs[k];
    }
}

/* Signs a token for every user that has a device. */
static bool sign_tokens(worker *w)
{
    if (w->plan->proto != BENCH_PROTO_CHAT)
        return true; /* the peers log in inside the connection (XMPP) or trust the CONNECT (Socket.IO) */
    int64_t now_s = chat_now_ms() / 1000;
    for (uint32_t u = 0; u < w->n_users; u++) {
        if (w->users[u].n_devices == 0)
            continue;
        char id[80];
        bench_user_id(w->plan, w->share->u0 + u, id, sizeof id);
        char *token = NULL;
        if (chat_jwt_sign(id, w->plan->cfg->jwt_secret, now_s, w->plan->opts.token_ttl, &token) != CHAT_OK) {
            fprintf(stderr, "chat-bench: cannot sign a token for %s (CHAT_JWT_SECRET)\n", id);
            return false;
        }
        size_t len = strlen(token) + 16;
        w->users[u].target = xcalloc(len, 1);
        snprintf(w->users[u].target, len, "/ws?token=%s", token);
        free(token);
    }
    return true;
}

/* ------------------------------------------------------------------ connecting */

static void requeue(worker *w, device *d, int64_t due)
{
    uint32_t at = (w->rq_head + w->rq_len) % w->n_devs;
    w->requeue[at] = (uint32_t)(d - w->devs);
    w->requeue_due[at] = due;
    w->rq_len++;
}

static void connect_failed(worker *w, device *d, const char *why);

static void start_connect(worker *w, device *d, int64_t now)
{
    const bench_plan *p = w->plan;
    struct sockaddr_in src;
    bench_conn_source(p, d->n, &src);
    bench_ws_reset(&d->ws);
    d->phase = DEV_CONNECTING;
    d->connect_ns = now;
    d->attempts++;
    d->want_out = true;
    w->pending++;
    w->r.connect_attempts++;
    if (w->r.ramp_start_ns == 0)
        w->r.ramp_start_ns = now;
    if (bench_ws_connect(&d->ws, &p->gateway_addr[d->n % (uint32_t)p->n_gateways], &src) != CHAT_OK) {
        connect_failed(w, d, d->ws.why);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)(d - w->devs)};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, d->ws.fd, &ev) != 0)
        connect_failed(w, d, "epoll_ctl failed");
}

/* An attempt failed before hello: try again later, or give up after CONNECT_ATTEMPTS. */
static void connect_failed(worker *w, device *d, const char *why)
{
    int status = d->ws.http_status;
    bench_ws_abort(&d->ws, true);
    w->pending--;
    if (status && status != 101)
        w->r.http_refused++;
    if (d->attempts >= CONNECT_ATTEMPTS) {
        d->phase = DEV_FAILED;
        if (d->reconnect)
            w->n_down--;
        if (w->stage == ST_RAMP)
            w->r.conns_failed++;
        char http[24] = "";
        if (status)
            snprintf(http, sizeof http, " (http %d)", status);
        problem(w, "connection %u: %s%s after %d attempts", d->n, why ? why : "failed", http, d->attempts);
        return;
    }
    w->r.connect_retries++;
    d->phase = DEV_IDLE;
    requeue(w, d, chat_mono_ns() + RETRY_DELAY_NS * d->attempts);
}

/* Collects the unacked messages of every device marked collect into its resend list. */
static void collect_resends(worker *w)
{
    for (uint64_t k = 0; k < w->next_msg; k++) {
        bench_msg *m = &w->msgs[k];
        device *d = &w->devs[m->dev];
        if (m->state != MSG_SENT || !d->collect)
            continue;
        if (d->n_resend == d->cap_resend) {
            d->cap_resend = d->cap_resend ? d->cap_resend * 2 : 16;
            d->resend = realloc(d->resend, d->cap_resend * sizeof *d->resend);
            if (d->resend == NULL)
                abort();
        }
        d->resend[d->n_resend++] = (uint32_t)k;
    }
    for (uint32_t j = 0; j < w->n_devs; j++)
        w->devs[j].collect = false;
}

/* An open connection is gone (dropped by us, or closed by the server): it will reconnect at due
 * and sync. */
static void go_down(worker *w, device *d, bool reset, int64_t due)
{
    bench_ws_abort(&d->ws, reset);
    if (d->syncing) {
        d->syncing = false;
        w->n_syncing--;
    }
    d->phase = DEV_DOWN;
    d->reconnect = true;
    d->reconnect_ns = 0;
    d->attempts = 0;
    d->collect = true;
    w->n_down++;
    requeue(w, d, due);
}

/* The connection of d failed (read, write or the server closed it). */
static void lost(worker *w, device *d)
{
    if (d->phase == DEV_CONNECTING) {
        connect_failed(w, d, d->ws.why);
        return;
    }
    if (d->phase != DEV_OPEN)
        return;
    if (d->ws.close_code == CLOSE_SERVICE_RESTART) {
        /* the server lost live deliveries (its NATS connection) and says so: reconnect and sync,
         * spread over a second so a gateway's clients do not all come back at once */
        w->r.restart_closes++;
        go_down(w, d, false, chat_mono_ns() + (int64_t)(d->n % 10 + 1) * 100 * NS_PER_MS);
        w->need_collect = true;
        return;
    }
    w->r.unexpected_closes++;
    problem(w, "connection %u closed by the server (%s, close code %d)", d->n, d->ws.why ? d->ws.why : "?",
            d->ws.close_code);
    go_down(w, d, false, chat_mono_ns() + RECONNECT_DELAY_NS);
    w->need_collect = true; /* once per loop turn, not once per connection */
}

/* ------------------------------------------------------------------ sending */

/* Writes the send frame of message k into w->frame; returns its length. */
/* The body of message k into out (at most cap - 1 bytes): "b:<connection>:<index>:<scheduled send
 * ns>:" and 'x' up to body_size bytes. The same in every protocol. Returns its length. */
static size_t render_body(const worker *w, uint64_t k, char *out, size_t cap)
{
    const bench_msg *m = &w->msgs[k];
    int n = snprintf(out, cap, "b:%u:%" PRIu64 ":%" PRId64 ":", w->devs[m->dev].n, k, m->sched_ns);
    size_t len = n > 0 && (size_t)n < cap ? (size_t)n : 0;
    size_t want = (size_t)w->plan->opts.body_size;
    while (len < want && len + 1 < cap)
        out[len++] = 'x';
    return len;
}

/* Writes the send frame of message k into w->frame; returns its length. */
static size_t render_send(worker *w, uint64_t k)
{
    char conv[80];
    uint32_t lc = (uint32_t)(k % w->n_convs);
    bench_conv_id(w->plan, w->share->c0 + lc, conv, sizeof conv);
    size_t len = (size_t)snprintf(w->frame, FRAME_MAX, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"p%d-%" PRIu64 "\",\"body\":\"",
                                  conv, w->proc, k);
    len += render_body(w, k, w->frame + len, FRAME_MAX - len - 4);
    memcpy(w->frame + len, "\"}", 3);
    return len + 2;
}

/* XMPP: the <message/> of message k to the other member of its 1:1 conversation. */
static size_t render_xmpp(worker *w, uint64_t k)
{
    const bench_plan *p = w->plan;
    uint32_t c = w->share->c0 + (uint32_t)(k % w->n_convs);
    uint32_t sender = w->share->u0 + w->devs[w->msgs[k].dev].user;
    uint32_t to = p->member_of[p->conv_first[c]];
    if (to == sender)
        to = p->member_of[p->conv_first[c] + 1];
    char user[80];
    bench_user_id(p, to, user, sizeof user);
    size_t len = (size_t)snprintf(w->frame, FRAME_MAX,
                                  "<message xmlns='jabber:client' to='%s@%s' type='chat' id='p%d-%" PRIu64 "'><body>",
                                  user, p->opts.xmpp_domain, w->proc, k);
    len += render_body(w, k, w->frame + len, FRAME_MAX - len - 32);
    len += (size_t)snprintf(w->frame + len, FRAME_MAX - len, "</body></message>");
    return len;
}

/* Socket.IO: EVENT "send" {conv, cmid, body} asking for ack id k. */
static size_t render_sio(worker *w, uint64_t k)
{
    char conv[80];
    bench_conv_id(w->plan, w->share->c0 + (uint32_t)(k % w->n_convs), conv, sizeof conv);
    size_t len = (size_t)snprintf(w->frame, FRAME_MAX,
                                  "42%" PRIu64 "[\"send\",{\"conv\":\"%s\",\"cmid\":\"p%d-%" PRIu64 "\",\"body\":\"", k,
                                  conv, w->proc, k);
    len += render_body(w, k, w->frame + len, FRAME_MAX - len - 8);
    memcpy(w->frame + len, "\"}]", 4);
    return len + 3;
}

static void fifo_push(device *d, uint32_t k)
{
    if (d->fifo_head + d->fifo_len == d->fifo_cap) {
        if (d->fifo_head > 0) {
            memmove(d->fifo, d->fifo + d->fifo_head, (size_t)d->fifo_len * sizeof *d->fifo);
            d->fifo_head = 0;
        }
        if (d->fifo_len == d->fifo_cap) {
            d->fifo_cap = d->fifo_cap ? d->fifo_cap * 2 : 16;
            d->fifo = realloc(d->fifo, (size_t)d->fifo_cap * sizeof *d->fifo);
            if (d->fifo == NULL)
                abort();
        }
    }
    d->fifo[d->fifo_head + d->fifo_len++] = k;
}

static void send_msg(worker *w, uint64_t k)
{
    bench_msg *m = &w->msgs[k];
    device *d = &w->devs[m->dev];
    switch (w->plan->proto) {
    case BENCH_PROTO_XMPP:
        bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, w->frame, render_xmpp(w, k));
        /* XEP-0198: ask at once for the server's ack; its <a h=.../> covers this message */
        bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, "<r xmlns='urn:xmpp:sm:3'/>", 26);
        fifo_push(d, (uint32_t)k);
        break;
    case BENCH_PROTO_SOCKETIO:
        bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, w->frame, render_sio(w, k));
        break;
    default:
        bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, w->frame, render_send(w, k));
        break;
    }
    mark_dirty(w, d);
}

/* Peers: the devices that must get message k of local conversation lc sent from device dev
 * (every counted device of the members; without echo, not those of the sender's user). */
static uint32_t peer_recipients(const worker *w, uint32_t lc, uint32_t dev)
{
    uint32_t n = w->convs[lc].n_counted;
    if (!w->plan->echo) {
        const user_state *us = &w->users[w->devs[dev].user];
        for (uint32_t i = 0; i < us->n_devices; i++)
            if (w->devs[us->devices[i]].counted && n > 0)
                n--;
    }
    return n;
}

/* The device that sends message k (conversations in turn; in each, members and their devices in
 * turn), or -1 when none of its members has a device here. */
static int64_t sender_of(worker *w, uint64_t k)
{
    const bench_plan *p = w->plan;
    uint32_t lc = (uint32_t)(k % w->n_convs);
    uint64_t turn = k / w->n_convs;
    uint32_t first = p->conv_first[w->share->c0 + lc], nm = p->conv_first[w->share->c0 + lc + 1] - first;
    for (uint32_t t = 0; t < nm; t++) {
        uint32_t member = p->member_of[first + (uint32_t)((turn + t) % nm)] - w->share->u0;
        const user_state *us = &w->users[member];
        if (us->n_devices)
            return us->devices[(turn / nm) % us->n_devices];
    }
    return -1;
}

static void send_due(worker *w, int64_t now)
{
    double step = 1e9 / w->share->rate;
    while (w->next_msg < w->n_msgs) {
        uint64_t k = w->next_msg;
        int64_t sched = w->t0 + w->share->offset_ns + (int64_t)(step * (double)k);
        if (sched > now)
            break;
        w->next_msg++;
        bench_msg *m = &w->msgs[k];
        m->sched_ns = sched;
        w->r.scheduled++;
        int64_t dev = sender_of(w, k);
        if (dev < 0 || w->devs[dev].phase != DEV_OPEN) {
            m->state = MSG_SKIPPED;
            m->dev = dev < 0 ? 0 : (uint32_t)dev;
            w->r.skipped_offline++;
            continue;
        }
        m->dev = (uint32_t)dev;
        m->state = MSG_SENT;
        m->tries = 1;
        w->outstanding++;
        w->r.sent++;
        if (w->plan->proto != BENCH_PROTO_CHAT)
            w->r.deliveries_expected += peer_recipients(w, (uint32_t)(k % w->n_convs), (uint32_t)dev);
        int64_t lag = now - sched;
        bench_hist_add(&w->r.lag, lag / 1000);
        if (lag > LATE_NS)
            w->r.late_sends++;
        send_msg(w, k);
    }
}

static void add_retry(worker *w, int kind, uint32_t what, int64_t due)
{
    if (w->n_retries == w->cap_retries) {
        w->cap_retries = w->cap_retries ? w->cap_retries * 2 : 64;
        w->retries = realloc(w->retries, w->cap_retries * sizeof *w->retries);
        if (w->retries == NULL)
            abort();
    }
    w->retries[w->n_retries++] = (retry){.due_ns = due, .what = what, .kind = (uint8_t)kind};
    if (w->stage == ST_DRAIN)
        w->drain_until = max_time(w->drain_until, due + RETRY_ANSWER_NS);
}

/* ------------------------------------------------------------------ sync */

static void send_sync(worker *w, device *d)
{
    size_t len = (size_t)snprintf(w->frame, FRAME_MAX, "{\"type\":\"sync\",\"cursors\":{");
    bool first = true;
    for (uint32_t i = 0; i < d->n_convs && len < SYNC_FRAME_MAX; i++) {
        char conv[80];
        bench_conv_id(w->plan, w->share->c0 + d->convs[i].conv, conv, sizeof conv);
        len += (size_t)snprintf(w->frame + len, FRAME_MAX - len, "%s\"%s\":%u", first ? "" : ",", conv,
                                d->convs[i].contig);
        first = false;
    }
    len += (size_t)snprintf(w->frame + len, FRAME_MAX - len, "}}");
    bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, w->frame, len);
    mark_dirty(w, d);
}

/* ------------------------------------------------------------------ frames from the server */

/* A committed seq of local conversation lc became known. */
static void conv_seen(worker *w, uint32_t lc, uint32_t seq)
{
    conv_state *c = &w->convs[lc];
    if (seq > c->max_seq) {
        w->r.deliveries_expected += (uint64_t)(seq - c->max_seq) * c->n_counted;
        c->max_seq = seq;
    }
}

/* Records or checks which message seq holds in local conversation lc. */
static void note_seq(worker *w, uint32_t lc, uint32_t seq, uint64_t k)
{
    conv_state *c = &w->convs[lc];
    if (seq >= c->seq_cap) {
        uint32_t cap = c->seq_cap ? c->seq_cap : 64;
        while (cap <= seq)
            cap *= 2;
        uint32_t *p = realloc(c->seq_msg, (size_t)cap * sizeof *p);
        if (p == NULL)
            abort();
        memset(p + c->seq_cap, 0, (size_t)(cap - c->seq_cap) * sizeof *p);
        c->seq_msg = p;
        c->seq_cap = cap;
    }
    if (c->seq_msg[seq] == 0) {
        c->seq_msg[seq] = (uint32_t)k + 1;
    } else if (c->seq_msg[seq] != (uint32_t)k + 1) {
        w->r.seq_conflicts++;
        char conv[80];
        bench_conv_id(w->plan, w->share->c0 + lc, conv, sizeof conv);
        problem(w, "%s seq %u holds two messages: cmid p%d-%u and p%d-%" PRIu64, conv, seq, w->proc,
                c->seq_msg[seq] - 1, w->proc, k);
    }
}

/* Records or checks the (seq, id) message k was stored under. */
static void note_identity(worker *w, uint64_t k, bench_msg *m, uint32_t seq, uint64_t h)
{
    note_seq(w, (uint32_t)(k % w->n_convs), seq, k);
    if (m->seq == 0) {
        m->seq = seq;
        m->id_hash = h;
    } else if (m->id_hash != h) {
        w->r.duplicates++;
        problem(w, "cmid p%d-%" PRIu64 " stored twice: two ids, as seq %u and seq %u", w->proc, k, m->seq, seq);
    } else if (m->seq != seq) {
        w->r.seq_conflicts++;
        problem(w, "cmid p%d-%" PRIu64 " id seen as seq %u and as seq %u", w->proc, k, m->seq, seq);
    }
}

static void on_hello(worker *w, device *d, int64_t now)
{
    if (d->phase != DEV_CONNECTING) {
        w->r.protocol_errors++;
        problem(w, "connection %u: a second hello", d->n);
        return;
    }
    d->phase = DEV_OPEN;
    w->pending--;
    if (!d->reconnect) {
        bench_hist_add(&w->r.connect, (now - d->connect_ns) / 1000);
        if (w->stage == ST_RAMP)
            w->r.ramp_end_ns = max_time(w->r.ramp_end_ns, now);
        return;
    }
    d->reconnect = false;
    w->n_down--;
    w->r.reconnected++;
    for (uint32_t i = 0; i < d->n_resend; i++) {
        bench_msg *m = &w->msgs[d->resend[i]];
        if (m->state != MSG_SENT)
            continue;
        m->resent = true;
        w->r.resent++;
        send_msg(w, d->resend[i]);
    }
    d->n_resend = 0;
    if (w->stage >= ST_RUN && w->plan->proto == BENCH_PROTO_CHAT) { /* the peers have no sync */
        d->syncing = true;
        d->sync_tries = 1;
        w->n_syncing++;
        send_sync(w, d);
    }
}

static void on_synced(worker *w, device *d, int64_t now)
{
    if (!d->syncing) {
        w->r.protocol_errors++;
        problem(w, "connection %u: synced without a sync", d->n);
        return;
    }
    d->syncing = false;
    w->n_syncing--;
    w->r.synced++;
    w->r.last_synced_ns = max_time(w->r.last_synced_ns, now);
    bench_hist_add(&w->r.resync, (now - d->reconnect_ns) / 1000);
    for (uint32_t i = 0; i < d->n_convs; i++) {
        dev_conv *dc = &d->convs[i];
        if (dc->contig < dc->max_seq) {
            uint32_t s = first_missing(dc, dc->max_seq);
            w->r.sync_holes += missing_upto(dc, dc->max_seq);
            char conv[80];
            bench_conv_id(w->plan, w->share->c0 + dc->conv, conv, sizeof conv);
            problem(w, "connection %u: after synced, %s still misses seq %u (has up to %u)", d->n, conv, s,
                    dc->max_seq);
        }
    }
}

/* Message m was acked at now: counted, and timed unless it was sent again or in the warm-up. */
static void count_ack(worker *w, const bench_msg *m, int64_t now)
{
    w->r.acked++;
    w->r.acked_warm += m->sched_ns < w->t_measure;
    w->r.last_ack_ns = now;
    if (!m->resent && m->sched_ns >= w->t_measure)
        bench_hist_add(&w->r.ack, (now - m->sched_ns) / 1000);
}

static void on_ack(worker *w, device *d, const bench_json_member *f, int n, int64_t now)
{
    int64_t k = cmid_index(w, bench_json_get(f, n, "cmid"));
    const bench_json_member *id = bench_json_get(f, n, "id");
    uint64_t seq = 0;
    if (k < 0 || id == NULL || id->kind != BENCH_JSON_STRING || !bench_json_u64(bench_json_get(f, n, "seq"), &seq) ||
        seq < 1 || seq > UINT32_MAX) {
        w->r.protocol_errors++;
        problem(w, "connection %u: an ack that names no message of this run or has no seq/id", d->n);
        return;
    }
    bench_msg *m = &w->msgs[k];
    const bench_json_member *conv = bench_json_get(f, n, "conv");
    int64_t gc = conv ? bench_conv_index(w->plan, conv->val, conv->val_len) : -1;
    if (gc != (int64_t)(w->share->c0 + (uint32_t)((uint64_t)k % w->n_convs)) || &w->devs[m->dev] != d) {
        w->r.protocol_errors++;
        problem(w, "connection %u: ack of cmid p%d-%" PRId64 " for another conversation or device", d->n, w->proc, k);
        return;
    }
    uint64_t h = fnv64(id->val, id->val_len);
    if (m->state == MSG_ACKED) { /* acked again after a resend */
        note_identity(w, (uint64_t)k, m, (uint32_t)seq, h);
        return;
    }
    if (m->state != MSG_SENT) {
        w->r.protocol_errors++;
        problem(w, "connection %u: ack of cmid p%d-%" PRId64 " that is not outstanding", d->n, w->proc, k);
        return;
    }
    note_identity(w, (uint64_t)k, m, (uint32_t)seq, h);
    m->state = MSG_ACKED;
    w->outstanding--;
    count_ack(w, m, now);
    conv_seen(w, (uint32_t)((uint64_t)k % w->n_convs), (uint32_t)seq);
}

/* Checks a body "b:<connection>:<index>:<send ns>:xxx" against message k; returns the send
 * stamp, or -1 when it does not match. */
static int64_t body_stamp(const worker *w, const bench_json_member *body, uint64_t k)
{
    if (body == NULL || body->kind != BENCH_JSON_STRING || body->val_len < 8 || memcmp(body->val, "b:", 2) != 0)
        return -1;
    const char *p = body->val + 2, *end = body->val + body->val_len;
    uint64_t v[3];
    for (int i = 0; i < 3; i++) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon == NULL || !parse_u64(p, (size_t)(colon - p), &v[i]))
            return -1;
        p = colon + 1;
    }
    const bench_msg *m = &w->msgs[k];
    if (v[0] != w->devs[m->dev].n || v[1] != k || (int64_t)v[2] != m->sched_ns)
        return -1;
    for (; p < end; p++)
        if (*p != 'x')
            return -1;
    return (int64_t)v[2];
}

static void on_msg(worker *w, device *d, const bench_json_member *f, int n, int64_t now)
{
    const bench_json_member *conv = bench_json_get(f, n, "conv");
    int64_t gc = conv && conv->kind == BENCH_JSON_STRING ? bench_conv_index(w->plan, conv->val, conv->val_len) : -1;
    if (gc < (int64_t)w->share->c0 || gc >= (int64_t)w->share->c1) {
        w->r.unexpected_frames++;
        return;
    }
    uint32_t lc = (uint32_t)(gc - w->share->c0);
    dev_conv *dc = find_dev_conv(d, lc);
    const bench_json_member *id = bench_json_get(f, n, "id");
    uint64_t seq = 0;
    if (dc == NULL || id == NULL || id->kind != BENCH_JSON_STRING ||
        !bench_json_u64(bench_json_get(f, n, "seq"), &seq) || seq < 1 || seq > UINT32_MAX - 1) {
        w->r.protocol_errors++;
        problem(w, "connection %u: a msg for a conversation it is not in, or without seq/id", d->n);
        return;
    }
    if (!d->counted)
        return;
    int64_t k = cmid_index(w, bench_json_get(f, n, "cmid"));
    bench_msg *m = k >= 0 ? &w->msgs[k] : NULL;
    if (m && (uint32_t)((uint64_t)k % w->n_convs) != lc)
        m = NULL;
    uint64_t h = fnv64(id->val, id->val_len);
    if (has_seq(dc, (uint32_t)seq)) {
        if (m == NULL || (m->seq == (uint32_t)seq && m->id_hash == h)) {
            w->r.redeliveries++;
        } else {
            w->r.seq_conflicts++;
            problem(w, "connection %u: seq %" PRIu64 " of %.*s delivered with two different messages", d->n, seq,
                    (int)conv->val_len, conv->val);
        }
        return;
    }
    int64_t stamp = -1;
    if (m == NULL) {
        w->r.unexpected_frames++; /* an event of our conversation that the bench did not send */
    } else {
        stamp = body_stamp(w, bench_json_get(f, n, "body"), (uint64_t)k);
        if (stamp < 0) {
            w->r.body_mismatch++;
            problem(w, "connection %u: the body of cmid p%d-%" PRId64 " arrived changed", d->n, w->proc, k);
        }
        note_identity(w, (uint64_t)k, m, (uint32_t)seq, h);
    }
    uint32_t before = dc->max_seq;
    set_seq(dc, (uint32_t)seq);
    w->r.deliveries++;
    w->r.last_delivery_ns = now;
    w->r.deliveries_warm += stamp >= 0 && stamp < w->t_measure;
    conv_seen(w, lc, (uint32_t)seq);
    if (d->syncing)
        return; /* sync pages and live messages interleave: checked at synced */
    if ((uint32_t)seq <= before) {
        w->r.out_of_order++;
        problem(w, "connection %u: %.*s seq %" PRIu64 " after seq %u", d->n, (int)conv->val_len, conv->val, seq,
                before);
    } else if ((uint32_t)seq > before + 1) {
        w->r.gaps++;
        w->r.gap_seqs += (uint32_t)seq - before - 1;
        problem(w, "connection %u: %.*s seq %" PRIu64 " right after seq %u (a gap)", d->n, (int)conv->val_len,
                conv->val, seq, before);
    }
    if (m && !m->resent && stamp >= w->t_measure)
        bench_hist_add(&w->r.delivery, (now - stamp) / 1000);
}

static void on_error(worker *w, device *d, const bench_json_member *f, int n, int64_t now)
{
    const bench_json_member *code = bench_json_get(f, n, "code");
    const bench_json_member *ref = bench_json_get(f, n, "ref");
    int64_t k = cmid_index(w, ref);
    if (k < 0) {
        if (d->syncing && bench_json_str_is(code, "unavailable") && d->sync_tries < SYNC_TRIES) {
            w->r.sync_retries++;
            add_retry(w, RETRY_SYNC, (uint32_t)(d - w->devs), now + 500 * NS_PER_MS);
            return;
        }
        w->r.protocol_errors++;
        problem(w, "connection %u: error %.*s without a ref", d->n, code ? (int)code->val_len : 1,
                code ? code->val : "?");
        return;
    }
    bench_msg *m = &w->msgs[k];
    if (m->state != MSG_SENT)
        return; /* answered already (an ack came first) */
    bool retry = false;
    if (bench_json_str_is(code, "unavailable")) {
        w->r.err_unavailable++;
        retry = true;
        const bench_json_member *why = bench_json_get(f, n, "message");
        if (w->r.unavailable_why[0] == '\0' && why && why->kind == BENCH_JSON_STRING)
            snprintf(w->r.unavailable_why, sizeof w->r.unavailable_why, "%.*s", (int)why->val_len, why->val);
    } else if (bench_json_str_is(code, "rate_limited")) {
        w->r.err_rate_limited++;
        retry = true;
    } else if (bench_json_str_is(code, "not_member")) {
        w->r.err_not_member++;
    } else {
        w->r.err_other++;
    }
    if (retry && m->tries <= w->plan->opts.retries) {
        add_retry(w, RETRY_SEND, (uint32_t)k, now + (NS_PER_S << (m->tries > 0 ? m->tries - 1 : 0)));
        return;
    }
    m->state = MSG_FAILED;
    w->outstanding--;
    w->r.failed_sends++;
    problem(w, "cmid p%d-%" PRId64 " refused: %.*s", w->proc, k, code ? (int)code->val_len : 1, code ? code->val : "?");
}

/* ------------------------------------------------------------------ frames from a peer */

/* A peer acknowledged message k sent on device d. */
static void peer_ack(worker *w, device *d, uint64_t k, int64_t now)
{
    bench_msg *m = k < w->next_msg ? &w->msgs[k] : NULL;
    if (m == NULL || m->state != MSG_SENT || &w->devs[m->dev] != d) {
        w->r.protocol_errors++;
        problem(w, "connection %u: an ack of p%d-%" PRIu64 ", which is not outstanding there", d->n, w->proc, k);
        return;
    }
    m->state = MSG_ACKED;
    w->outstanding--;
    count_ack(w, m, now);
}

/* A peer delivered message k (-1: not one of this run) with body[0..len) to device d. The peers
 * have no server seq: a message's place in its conversation (k / conversations + 1) stands in. */
static void peer_delivery(worker *w, device *d, int64_t k, const char *body, size_t len, int64_t now)
{
    if (k < 0) {
        w->r.unexpected_frames++;
        return;
    }
    bench_msg *m = &w->msgs[k];
    uint32_t lc = (uint32_t)((uint64_t)k % w->n_convs);
    dev_conv *dc = find_dev_conv(d, lc);
    if (dc == NULL || m->state == MSG_PLANNED || m->state == MSG_SKIPPED) {
        w->r.protocol_errors++;
        problem(w, "connection %u: got p%d-%" PRId64 ", which was not sent to it", d->n, w->proc, k);
        return;
    }
    if (!d->counted)
        return;
    uint32_t seq = (uint32_t)((uint64_t)k / w->n_convs) + 1;
    if (has_seq(dc, seq)) {
        w->r.redeliveries++;
        return;
    }
    bench_json_member b = {.val = body, .val_len = len, .kind = BENCH_JSON_STRING};
    int64_t stamp = body_stamp(w, &b, (uint64_t)k);
    if (stamp < 0) {
        w->r.body_mismatch++;
        problem(w, "connection %u: the body of cmid p%d-%" PRId64 " arrived changed", d->n, w->proc, k);
    }
    uint32_t before = dc->max_seq;
    set_seq(dc, seq);
    w->r.deliveries++;
    w->r.last_delivery_ns = now;
    w->r.deliveries_warm += stamp >= 0 && stamp < w->t_measure;
    if (seq < before) {
        /* out of order only against a later message of the same sender */
        uint64_t kb = (uint64_t)(before - 1) * w->n_convs + lc;
        if (kb < w->next_msg && w->msgs[kb].dev == m->dev) {
            w->r.out_of_order++;
            problem(w, "connection %u: p%d-%" PRId64 " arrived after p%d-%" PRIu64 ", sent later by the same device",
                    d->n, w->proc, k, w->proc, kb);
        } else {
            w->r.cross_sender_reorders++;
        }
    }
    if (stamp >= w->t_measure && !m->resent)
        bench_hist_add(&w->r.delivery, (now - stamp) / 1000);
}

static void queue_text(worker *w, device *d, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void queue_text(worker *w, device *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->frame, FRAME_MAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= FRAME_MAX) {
        d->fail_why = "a frame too long to send";
        return;
    }
    bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, w->frame, (size_t)n);
    mark_dirty(w, d);
}

/* XMPP: the WebSocket is open: open the stream (RFC 7395). */
static void xmpp_start(worker *w, device *d)
{
    queue_text(w, d, "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='%s' version='1.0'/>",
               w->plan->opts.xmpp_domain);
    d->pstage = PX_OPEN1;
}

/* XMPP: the server's <a h=.../>: it handled h stanzas since <enable/>, the first being our
 * initial presence, then our messages in the order of the fifo. */
static void xmpp_acked(worker *w, device *d, uint64_t h, int64_t now)
{
    uint64_t msgs = h > 0 ? h - 1 : 0;
    while (d->acked_out < msgs && d->fifo_len > 0) {
        uint32_t k = d->fifo[d->fifo_head++];
        d->fifo_len--;
        d->acked_out++;
        peer_ack(w, d, k, now);
    }
    if (d->fifo_len == 0)
        d->fifo_head = 0;
}

static bool xml_attr_is(const char *data, size_t len, const char *attr, const char *want)
{
    const char *v;
    size_t vl;
    return bench_xml_attr(data, len, attr, &v, &vl) && vl == strlen(want) && memcmp(v, want, vl) == 0;
}

static void xmpp_frame(worker *w, device *d, const char *data, size_t len, int64_t now)
{
    const char *name, *v;
    size_t nl, vl;
    if (!bench_xml_root(data, len, &name, &nl)) {
        w->r.bad_frames++;
        problem(w, "connection %u: a frame that is not an XML element: %.*s", d->n, (int)(len > 120 ? 120 : len), data);
        return;
    }
#define IS(s) (nl == sizeof(s) - 1 && memcmp(name, s, nl) == 0)
    if (IS("message")) {
        if (d->pstage == PS_READY)
            d->in_stanzas++;
        if (xml_attr_is(data, len, "type", "error")) {
            w->r.err_other++;
            w->r.protocol_errors++;
            problem(w, "connection %u: a message bounced: %.*s", d->n, (int)(len > 160 ? 160 : len), data);
            return;
        }
        const char *body;
        size_t bl;
        if (!bench_xml_attr(data, len, "id", &v, &vl) || !bench_xml_child_text(data, len, "body", &body, &bl)) {
            w->r.unexpected_frames++; /* a message without id or body: not one of ours */
            return;
        }
        bench_json_member cm = {.val = v, .val_len = vl, .kind = BENCH_JSON_STRING};
        peer_delivery(w, d, cmid_index(w, &cm), body, bl, now);
    } else if (IS("a")) {
        uint64_t h;
        if (!bench_xml_attr(data, len, "h", &v, &vl) || !parse_u64(v, vl, &h)) {
            w->r.protocol_errors++;
            problem(w, "connection %u: an <a/> without h", d->n);
            return;
        }
        xmpp_acked(w, d, h, now);
    } else if (IS("r")) {
        queue_text(w, d, "<a xmlns='urn:xmpp:sm:3' h='%u'/>", d->in_stanzas);
    } else if (IS("open")) {
        /* the stream header of the server */
    } else if (IS("stream:features") || IS("features")) {
        if (d->pstage == PX_OPEN1) {
            char user[80], b64[400];
            bench_user_id(w->plan, w->share->u0 + d->user, user, sizeof user);
            if (!bench_mem_has(data, len, ">PLAIN<") || !bench_sasl_plain(user, w->plan->opts.password, b64, sizeof b64)) {
                d->fail_why = "the server offers no SASL PLAIN";
                return;
            }
            queue_text(w, d, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>", b64);
            d->pstage = PX_AUTH;
        } else if (d->pstage == PX_OPEN2) {
            queue_text(w, d,
                       "<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                       "<resource>d%u</resource></bind></iq>",
                       d->n);
            d->pstage = PX_BIND;
        }
    } else if (IS("success") && d->pstage == PX_AUTH) {
        xmpp_start(w, d);
        d->pstage = PX_OPEN2;
    } else if (IS("failure") && d->pstage == PX_AUTH) {
        d->fail_why = "SASL PLAIN refused (is the user there, the password right?)";
    } else if (IS("iq") && d->pstage == PX_BIND) {
        if (!xml_attr_is(data, len, "type", "result")) {
            d->fail_why = "resource bind refused";
            return;
        }
        queue_text(w, d, "<enable xmlns='urn:xmpp:sm:3'/>");
        queue_text(w, d, "<presence xmlns='jabber:client'/>");
        d->pstage = PX_ENABLE;
    } else if (IS("enabled") && d->pstage == PX_ENABLE) {
        d->pstage = PS_READY;
        on_hello(w, d, now);
    } else if (IS("failed") && d->pstage == PX_ENABLE) {
        d->fail_why = "stream management (XEP-0198) refused";
    } else if (IS("presence") || IS("iq")) {
        if (d->pstage == PS_READY)
            d->in_stanzas++;
        w->r.unexpected_frames++;
    } else if (IS("close") || IS("stream:error")) {
        problem(w, "connection %u: the server ended the stream: %.*s", d->n, (int)(len > 160 ? 160 : len), data);
        d->fail_why = "stream closed by the server";
    } else {
        w->r.unexpected_frames++;
    }
#undef IS
}

/* Socket.IO: CONNECT to the default namespace with the user and its conversations (the relay
 * joins a room per conversation). */
static void sio_connect(worker *w, device *d)
{
    char user[80], conv[80];
    bench_user_id(w->plan, w->share->u0 + d->user, user, sizeof user);
    size_t len = (size_t)snprintf(w->frame, FRAME_MAX, "40{\"user\":\"%s\",\"convs\":[", user);
    for (uint32_t i = 0; i < d->n_convs; i++) {
        bench_conv_id(w->plan, w->share->c0 + d->convs[i].conv, conv, sizeof conv);
        if (len + strlen(conv) + 8 >= FRAME_MAX) {
            d->fail_why = "too many conversations for one CONNECT";
            return;
        }
        len += (size_t)snprintf(w->frame + len, FRAME_MAX - len, "%s\"%s\"", i ? "," : "", conv);
    }
    len += (size_t)snprintf(w->frame + len, FRAME_MAX - len, "]}");
    bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, w->frame, len);
    mark_dirty(w, d);
    d->pstage = PS_SIO_CONN;
}

static void sio_frame(worker *w, device *d, const char *data, size_t len, int64_t now)
{
    bench_sio_packet pk;
    if (!bench_sio_parse(data, len, &pk)) {
        w->r.bad_frames++;
        problem(w, "connection %u: a frame that is not a Socket.IO packet: %.*s", d->n, (int)(len > 120 ? 120 : len),
                data);
        return;
    }
    switch (pk.kind) {
    case BENCH_SIO_OPEN:
        if (d->pstage == PS_SIO_OPEN)
            sio_connect(w, d);
        break;
    case BENCH_SIO_PING:
        bench_ws_queue(&d->ws, BENCH_WS_OP_TEXT, "3", 1);
        mark_dirty(w, d);
        break;
    case BENCH_SIO_CONNECTED:
        if (d->pstage == PS_SIO_CONN) {
            d->pstage = PS_READY;
            on_hello(w, d, now);
        }
        break;
    case BENCH_SIO_CONNECT_ERR:
        d->fail_why = "Socket.IO CONNECT refused";
        break;
    case BENCH_SIO_CLOSE:
    case BENCH_SIO_DISCONNECT:
        d->fail_why = "Socket.IO closed by the server";
        break;
    case BENCH_SIO_ACK:
        peer_ack(w, d, pk.ack_id, now);
        break;
    case BENCH_SIO_EVENT: {
        bench_json_member f[16];
        int n = pk.data ? bench_json_scan(pk.data, pk.data_len, f, 16) : -1;
        const bench_json_member *body = n > 0 ? bench_json_get(f, n, "body") : NULL;
        if (pk.name_len != 3 || memcmp(pk.name, "msg", 3) != 0 || body == NULL || body->kind != BENCH_JSON_STRING) {
            w->r.unexpected_frames++;
            break;
        }
        peer_delivery(w, d, cmid_index(w, bench_json_get(f, n, "cmid")), body->val, body->val_len, now);
        break;
    }
    default:
        w->r.unexpected_frames++;
        break;
    }
}

typedef struct read_ctx {
    worker *w;
    device *d;
    int64_t now;
} read_ctx;

static void on_message(void *ctx, int opcode, const char *data, size_t len)
{
    read_ctx *rc = ctx;
    worker *w = rc->w;
    if (opcode != BENCH_WS_OP_TEXT) {
        w->r.bad_frames++;
        return;
    }
    if (w->plan->proto != BENCH_PROTO_CHAT) {
        if (rc->d->fail_why == NULL) {
            if (w->plan->proto == BENCH_PROTO_XMPP)
                xmpp_frame(w, rc->d, data, len, rc->now);
            else
                sio_frame(w, rc->d, data, len, rc->now);
        }
        return;
    }
    bench_json_member f[24];
    int n = bench_json_scan(data, len, f, 24);
    const bench_json_member *type = n > 0 ? bench_json_get(f, n, "type") : NULL;
    if (type == NULL || type->kind != BENCH_JSON_STRING) {
        w->r.bad_frames++;
        problem(w, "connection %u: a frame that is not a JSON object with a type: %.*s", rc->d->n,
                (int)(len > 120 ? 120 : len), data);
        return;
    }
    if (bench_json_str_is(type, "msg"))
        on_msg(w, rc->d, f, n, rc->now);
    else if (bench_json_str_is(type, "ack"))
        on_ack(w, rc->d, f, n, rc->now);
    else if (bench_json_str_is(type, "hello"))
        on_hello(w, rc->d, rc->now);
    else if (bench_json_str_is(type, "synced"))
        on_synced(w, rc->d, rc->now);
    else if (bench_json_str_is(type, "error"))
        on_error(w, rc->d, f, n, rc->now);
    else
        w->r.unexpected_frames++; /* members, receipt, typing, presence: not asked for */
}

/* ------------------------------------------------------------------ the loop */

static void flush_dirty(worker *w)
{
    for (uint32_t i = 0; i < w->n_dirty; i++) {
        device *d = &w->devs[w->dirty[i]];
        d->dirty = false;
        if (d->ws.fd < 0 || d->ws.state < BENCH_WS_UPGRADING)
            continue;
        int rc = bench_ws_flush(&d->ws);
        if (rc < 0)
            lost(w, d);
        else
            set_want_out(w, d, rc == 1);
    }
    w->n_dirty = 0;
}

static void on_socket(worker *w, device *d, uint32_t events, int64_t now)
{
    if (d->ws.fd < 0)
        return; /* closed earlier in this batch */
    if (d->ws.state == BENCH_WS_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        const bench_plan *p = w->plan;
        const char *target = p->proto == BENCH_PROTO_CHAT ? w->users[d->user].target : p->opts.ws_path;
        if (bench_ws_upgrade(&d->ws, p->gateway_host[d->n % (uint32_t)p->n_gateways], target,
                             p->proto == BENCH_PROTO_XMPP ? "xmpp" : NULL) != CHAT_OK) {
            connect_failed(w, d, d->ws.why);
            return;
        }
        d->pstage = p->proto == BENCH_PROTO_XMPP ? PS_WS : p->proto == BENCH_PROTO_SOCKETIO ? PS_SIO_OPEN : PS_NONE;
        d->fail_why = NULL;
        d->in_stanzas = d->acked_out = 0;
        d->fifo_head = d->fifo_len = 0;
        mark_dirty(w, d);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        read_ctx rc = {w, d, now};
        bench_ws_event ev = bench_ws_read(&d->ws, w->scratch, SCRATCH_SIZE, on_message, &rc);
        if (d->fail_why) { /* a peer refused the log-in, or closed the stream */
            d->ws.why = d->fail_why;
            d->fail_why = NULL;
            lost(w, d);
            return;
        }
        if (ev == BENCH_WS_AGAIN && d->pstage == PS_WS && d->ws.state == BENCH_WS_OPEN)
            xmpp_start(w, d);
        if (ev == BENCH_WS_REFUSED || ev == BENCH_WS_BROKEN || (ev == BENCH_WS_EOF && d->phase == DEV_CONNECTING)) {
            if (ev == BENCH_WS_BROKEN && d->phase == DEV_OPEN) {
                w->r.protocol_errors++;
                problem(w, "connection %u: %s", d->n, d->ws.why);
            }
            lost(w, d);
            return;
        }
        if (ev == BENCH_WS_EOF) {
            lost(w, d);
            return;
        }
        if (bench_ws_pending(&d->ws))
            mark_dirty(w, d);
    }
    if ((events & EPOLLOUT) && d->ws.fd >= 0)
        mark_dirty(w, d);
}

/* Starts connections: the ramp (at its rate) and the requeued ones (when due), both within
 * max_pending handshakes in flight. */
static void connect_due(worker *w, int64_t now)
{
    while (w->rq_len > 0 && w->pending < w->max_pending && w->requeue_due[w->rq_head] <= now) {
        device *d = &w->devs[w->requeue[w->rq_head]];
        w->rq_head = (w->rq_head + 1) % w->n_devs;
        w->rq_len--;
        if (d->phase != DEV_IDLE && d->phase != DEV_DOWN)
            continue;
        if (d->reconnect && d->reconnect_ns == 0) {
            d->reconnect_ns = now;
            if (w->r.reconnect_start_ns == 0 && w->dropped)
                w->r.reconnect_start_ns = now;
        }
        start_connect(w, d, now);
    }
    if (w->stage != ST_RAMP)
        return;
    while (w->next_ramp < w->n_devs && w->pending < w->max_pending) {
        int64_t due = w->ramp_t0 + (int64_t)((double)w->next_ramp * 1e9 / w->ramp_rate);
        if (due > now)
            break;
        start_connect(w, &w->devs[w->next_ramp++], now);
    }
}

static void drop_some(worker *w, int64_t now)
{
    uint32_t k = w->share->drop, done = 0;
    w->dropped = true;
    w->r.drop_ns = now;
    for (uint32_t i = 0; i < k; i++) {
        uint32_t j = (uint32_t)((uint64_t)i * w->n_devs / k);
        for (uint32_t t = 0; t < w->n_devs; t++) {
            device *d = &w->devs[(j + t) % w->n_devs];
            if (d->phase == DEV_OPEN && !d->reconnect) {
                go_down(w, d, true, now + (int64_t)(w->plan->opts.reconnect_after * 1e9));
                done++;
                break;
            }
        }
    }
    w->r.dropped = done;
    collect_resends(w);
}

static void run_retries(worker *w, int64_t now)
{
    uint32_t keep = 0;
    for (uint32_t i = 0; i < w->n_retries; i++) {
        retry rt = w->retries[i];
        if (rt.due_ns > now) {
            w->retries[keep++] = rt;
            continue;
        }
        if (rt.kind == RETRY_SYNC) {
            device *d = &w->devs[rt.what];
            if (d->phase == DEV_OPEN && d->syncing) {
                d->sync_tries++;
                send_sync(w, d);
            }
            continue;
        }
        bench_msg *m = &w->msgs[rt.what];
        device *d = &w->devs[m->dev];
        if (m->state != MSG_SENT)
            continue;
        if (d->phase != DEV_OPEN)
            continue; /* it goes out again with the reconnect */
        m->tries++;
        m->resent = true;
        w->r.resent++;
        send_msg(w, rt.what);
    }
    w->n_retries = keep;
}

static void tick(worker *w, int64_t now)
{
    uint32_t open = 0;
    for (uint32_t j = 0; j < w->n_devs; j++) {
        device *d = &w->devs[j];
        if (d->phase == DEV_CONNECTING && now - d->connect_ns > CONNECT_TIMEOUT_NS)
            connect_failed(w, d, "no hello within 10 s");
        open += d->phase == DEV_OPEN;
    }
    run_retries(w, now);
    if (w->plan->opts.verbose && now >= w->next_progress_ns) {
        w->next_progress_ns = now + PROGRESS_NS;
        fprintf(stderr,
                "chat-bench[%d]: open=%u connecting=%u sent=%" PRIu64 " acked=%" PRIu64 " deliveries=%" PRIu64
                "/%" PRIu64 " syncing=%u down=%u\n",
                w->proc, open, w->pending, w->r.sent, w->r.acked, w->r.deliveries, w->r.deliveries_expected,
                w->n_syncing, w->n_down);
    }
}

static bool all_open(const worker *w)
{
    if (w->next_ramp < w->n_devs || w->pending > 0 || w->rq_len > 0)
        return false;
    for (uint32_t j = 0; j < w->n_devs; j++)
        if (w->devs[j].phase != DEV_OPEN && w->devs[j].phase != DEV_FAILED)
            return false;
    return true;
}

static bool complete(const worker *w)
{
    return w->next_msg == w->n_msgs && w->outstanding == 0 && w->n_retries == 0 && w->n_syncing == 0 &&
           w->n_down == 0 && w->r.deliveries == w->r.deliveries_expected;
}

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static void start_run(worker *w, int64_t t0)
{
    w->t0 = t0;
    w->t_measure = t0 + (int64_t)(w->plan->opts.warmup * 1e9);
    w->t_end = w->t_measure + (int64_t)(w->plan->opts.duration * 1e9);
    w->r.send_start_ns = w->t_measure; /* the throughput's start */
    w->say_measuring = w->plan->opts.warmup > 0 && w->proc == 0;
    for (uint32_t j = 0; j < w->n_devs; j++) {
        device *d = &w->devs[j];
        d->counted = d->phase != DEV_FAILED;
        if (d->counted)
            for (uint32_t i = 0; i < d->n_convs; i++)
                w->convs[d->convs[i].conv].n_counted++;
    }
    w->drop_ns = w->share->drop ? t0 + (int64_t)(w->plan->opts.drop_at * 1e9) : 0;
    w->reconnect_ns = w->drop_ns ? w->drop_ns + (int64_t)(w->plan->opts.reconnect_after * 1e9) : 0;
    w->stage = ST_RUN;
}

/* Handles the timers and moves the stages on. */
static void advance(worker *w, int64_t now)
{
    connect_due(w, now);
    if (now >= w->next_tick_ns) {
        w->next_tick_ns = now + TICK_NS;
        tick(w, now);
    }
    if (w->stage == ST_RAMP && all_open(w)) {
        bench_ready rd = {.open = 0,
                          .failed = w->r.conns_failed,
                          .ramp_start_ns = w->r.ramp_start_ns,
                          .ramp_end_ns = w->r.ramp_end_ns};
        for (uint32_t j = 0; j < w->n_devs; j++)
            rd.open += w->devs[j].phase == DEV_OPEN;
        w->r.conns_open = rd.open;
        if (!write_all(w->to_parent, &rd, sizeof rd))
            exit(1);
        w->stage = ST_WAIT;
    }
    if (w->stage == ST_RUN) {
        if (w->say_measuring && now >= w->t_measure) {
            fprintf(stderr, "chat-bench: measuring\n"); /* the warm-up is over (bench/run's sampler) */
            w->say_measuring = false;
        }
        if (w->drop_ns && !w->dropped && now >= w->drop_ns)
            drop_some(w, now);
        if (w->n_msgs > 0)
            send_due(w, now);
        if (w->next_msg == w->n_msgs && now >= w->t_end) {
            w->r.send_end_ns = now;
            w->drain_until = max_time(w->t_end, w->reconnect_ns) + (int64_t)(w->plan->opts.drain * 1e9);
            /* a send refused (rate_limited, unavailable) and waiting out its back-off is still
             * being sent: the drain gives its last try time for an answer (add_retry does the
             * same for refusals during the drain), or it would be counted as never acked */
            for (uint32_t i = 0; i < w->n_retries; i++)
                w->drain_until = max_time(w->drain_until, w->retries[i].due_ns + RETRY_ANSWER_NS);
            w->stage = ST_DRAIN;
        }
    }
    if (w->stage == ST_DRAIN && (complete(w) || now >= w->drain_until))
        w->stage = ST_DONE;
}

/* When the loop must wake next (0: now). */
static int64_t next_wake(const worker *w, int64_t now)
{
    int64_t t = w->next_tick_ns;
    if (w->rq_len > 0 && w->pending < w->max_pending)
        t = min_time(t, w->requeue_due[w->rq_head]);
    if (w->stage == ST_RAMP && w->next_ramp < w->n_devs && w->pending < w->max_pending)
        t = min_time(t, w->ramp_t0 + (int64_t)((double)w->next_ramp * 1e9 / w->ramp_rate));
    if (w->stage == ST_RUN) {
        if (w->next_msg < w->n_msgs)
            t = min_time(t, w->t0 + w->share->offset_ns + (int64_t)(1e9 / w->share->rate * (double)w->next_msg));
        else
            t = min_time(t, w->t_end);
        if (w->drop_ns && !w->dropped)
            t = min_time(t, w->drop_ns);
    }
    if (w->stage == ST_DRAIN)
        t = min_time(t, w->drain_until);
    return t <= now ? 0 : t;
}

static void arm(worker *w, int64_t at)
{
    if (at == w->armed_ns)
        return;
    struct itimerspec its = {.it_value = {.tv_sec = at / NS_PER_S, .tv_nsec = at % NS_PER_S}};
    timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL);
    w->armed_ns = at;
}

/* Peers: every sent message must be at every counted device of its members (without echo,
 * not at the sender's user's own devices). */
static void peer_missing(worker *w)
{
    const bench_plan *p = w->plan;
    for (uint64_t k = 0; k < w->next_msg; k++) {
        const bench_msg *m = &w->msgs[k];
        if (m->state != MSG_SENT && m->state != MSG_ACKED)
            continue;
        uint32_t lc = (uint32_t)(k % w->n_convs), c = w->share->c0 + lc;
        uint32_t seq = (uint32_t)(k / w->n_convs) + 1, from = w->devs[m->dev].user;
        for (uint32_t i = p->conv_first[c]; i < p->conv_first[c + 1]; i++) {
            const user_state *us = &w->users[p->member_of[i] - w->share->u0];
            if (!p->echo && p->member_of[i] - w->share->u0 == from)
                continue;
            for (uint32_t j = 0; j < us->n_devices; j++) {
                device *d = &w->devs[us->devices[j]];
                dev_conv *dc = find_dev_conv(d, lc);
                if (!d->counted || dc == NULL || has_seq(dc, seq))
                    continue;
                w->r.missing_deliveries++;
                problem(w, "connection %u never got p%d-%" PRIu64, d->n, w->proc, k);
            }
        }
    }
}

static void finish(worker *w)
{
    bench_result *r = &w->r;
    r->conns = w->n_devs;
    for (uint64_t k = 0; k < w->next_msg; k++)
        if (w->msgs[k].state == MSG_SENT) {
            r->unacked++;
            /* name them (the examples are few): their way can be followed in the server's logs */
            if (r->unacked <= 50)
                fprintf(stderr, "chat-bench[%d]: never answered: cmid p%d-%" PRIu64 " connection %u tries %u%s\n",
                        w->proc, w->proc, k, w->devs[w->msgs[k].dev].n, w->msgs[k].tries,
                        w->msgs[k].resent ? " (resent)" : "");
        }
    if (r->unacked)
        problem(w, "%" PRIu64 " sent messages never acked", r->unacked);
    if (w->plan->proto != BENCH_PROTO_CHAT) {
        peer_missing(w);
        return;
    }
    for (uint32_t j = 0; j < w->n_devs; j++) {
        device *d = &w->devs[j];
        if (!d->counted)
            continue;
        if (d->syncing || d->reconnect)
            r->unsynced++;
        for (uint32_t i = 0; i < d->n_convs; i++) {
            dev_conv *dc = &d->convs[i];
            uint32_t upto = w->convs[dc->conv].max_seq;
            uint64_t miss = missing_upto(dc, upto);
            if (miss) {
                r->missing_deliveries += miss;
                char conv[80];
                bench_conv_id(w->plan, w->share->c0 + dc->conv, conv, sizeof conv);
                problem(w, "connection %u never got seq %u of %s (%" PRIu64 " missing there, up to seq %u)", d->n,
                        first_missing(dc, upto), conv, miss, upto);
            }
        }
    }
    if (r->unsynced)
        problem(w, "%" PRIu64 " reconnected connections never got synced", r->unsynced);
}

/* Frees what build and the run allocated, closing any socket left. */
static void worker_free(worker *w)
{
    for (uint32_t j = 0; j < w->n_devs; j++) {
        device *d = &w->devs[j];
        bench_ws_abort(&d->ws, false);
        for (uint32_t i = 0; i < d->n_convs; i++)
            free(d->convs[i].bits);
        free(d->convs);
        free(d->resend);
        free(d->fifo);
    }
    for (uint32_t u = 0; u < w->n_users; u++) {
        free(w->users[u].convs);
        free(w->users[u].devices);
        free(w->users[u].target);
    }
    for (uint32_t c = 0; c < w->n_convs; c++)
        free(w->convs[c].seq_msg);
    free(w->users);
    free(w->convs);
    free(w->devs);
    free(w->dirty);
    free(w->requeue);
    free(w->requeue_due);
    free(w->scratch);
    free(w->frame);
    free(w->msgs);
    free(w->retries);
    if (w->ep > 0)
        close(w->ep);
    if (w->tfd > 0)
        close(w->tfd);
    memset(w, 0, sizeof *w);
}

int bench_worker_main(const bench_plan *plan, int proc, int to_parent, int from_parent)
{
    worker w_, *w = &w_;
    memset(w, 0, sizeof *w);
    w->plan = plan;
    w->share = &plan->shares[proc];
    w->proc = proc;
    w->to_parent = to_parent;
    w->from_parent = from_parent;
    bench_result_init(&w->r);
    build(w);
    if (!sign_tokens(w))
        return 1;
    w->max_pending = (uint32_t)plan->opts.max_pending;
    w->ramp_rate = plan->opts.ramp_rate / plan->n_procs;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (w->ep < 0 || w->tfd < 0) {
        fprintf(stderr, "chat-bench: epoll/timerfd: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, w->tfd, &ev);
    ev.data.u64 = TAG_PARENT;
    epoll_ctl(w->ep, EPOLL_CTL_ADD, from_parent, &ev);

    struct epoll_event events[MAX_EVENTS];
    int64_t now = chat_mono_ns();
    w->ramp_t0 = now;
    w->next_tick_ns = now;
    w->next_progress_ns = now + PROGRESS_NS;
    w->stage = ST_RAMP;
    while (w->stage != ST_DONE) {
        now = chat_mono_ns();
        advance(w, now);
        flush_dirty(w);
        if (w->stage == ST_DONE)
            break;
        now = chat_mono_ns();
        int64_t wake = next_wake(w, now);
        if (wake)
            arm(w, wake);
        int n = epoll_wait(w->ep, events, MAX_EVENTS, wake ? -1 : 0);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "chat-bench: epoll_wait: %s\n", strerror(errno));
            return 1;
        }
        now = chat_mono_ns();
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == TAG_TIMER) {
                uint64_t expirations;
                if (read(w->tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    return 1;
                w->armed_ns = 0;
            } else if (tag == TAG_PARENT) {
                bench_go go;
                ssize_t r = read(from_parent, &go, sizeof go);
                if (r != (ssize_t)sizeof go)
                    return 1; /* the parent is gone */
                if (w->stage == ST_WAIT)
                    start_run(w, go.t0_ns);
                epoll_ctl(w->ep, EPOLL_CTL_DEL, from_parent, NULL);
            } else {
                on_socket(w, &w->devs[tag], events[i].events, now);
            }
        }
        flush_dirty(w); /* a failed write marks its connection down too */
        if (w->need_collect) {
            collect_resends(w);
            w->need_collect = false;
        }
    }
    finish(w);
    int rc = write_all(to_parent, &w->r, sizeof w->r) ? 0 : 1;
    /* the parent says "drained" once every worker has reported; the connections stay open for
     * linger seconds after that, so that what closing them costs the server (presence, unsubscribe)
     * stays out of counters read at that line (bench/run) */
    if (w->plan->opts.linger > 0)
        chat_sleep_ms((int64_t)(w->plan->opts.linger * 1000));
    worker_free(w);
    return rc;
}

/* ------------------------------------------------------------------ self-test */

/* Feeds one text frame to device dev as if the server had sent it. */
static void feed(worker *w, uint32_t dev, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void feed(worker *w, uint32_t dev, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    read_ctx rc = {w, &w->devs[dev], chat_mono_ns()};
    on_message(&rc, BENCH_WS_OP_TEXT, buf, strlen(buf));
}

/* A msg frame of message k as seq, with id, to device dev; good_body false changes the body. */
static void feed_msg(worker *w, uint32_t dev, uint32_t seq, const char *id, uint64_t k, bool good_body)
{
    const bench_msg *m = &w->msgs[k];
    feed(w, dev,
         "{\"type\":\"msg\",\"conv\":\"t-c0\",\"seq\":%u,\"id\":\"%s\",\"cmid\":\"p0-%" PRIu64
         "\",\"from\":\"t-u0\",\"ts\":1,\"kind\":\"text\",\"body\":\"b:%u:%" PRIu64 ":%" PRId64 ":%s\"}",
         seq, id, k, w->devs[m->dev].n, k, m->sched_ns, good_body ? "xx" : "xy");
}

static int expect(const char *what, uint64_t got, uint64_t want)
{
    if (got == want)
        return 0;
    fprintf(stderr, "self-test: %s is %" PRIu64 ", expected %" PRIu64 "\n", what, got, want);
    return 1;
}

int bench_worker_self_test(void)
{
    /* two users, one 1:1 conversation "t-c0", one device each, 8 messages sent */
    static uint32_t first[2] = {0, 2}, members[2] = {0, 1};
    static uint8_t direct[1] = {1};
    static bench_plan p;
    memset(&p, 0, sizeof p);
    bench_opts_defaults(&p.opts);
    snprintf(p.run_id, sizeof p.run_id, "t");
    p.n_users = 2, p.n_convs = 1, p.n_conns = 2, p.n_procs = 1;
    p.conv_first = first, p.member_of = members, p.conv_direct = direct;
    p.shares[0] = (bench_share){.u0 = 0, .u1 = 2, .c0 = 0, .c1 = 1, .n0 = 0, .n1 = 2, .rate = 10, .messages = 8};
    worker w_, *w = &w_;
    memset(w, 0, sizeof *w);
    w->plan = &p;
    w->share = &p.shares[0];
    bench_result_init(&w->r);
    build(w);
    int64_t now = chat_mono_ns();
    w->stage = ST_RUN;
    for (uint32_t j = 0; j < 2; j++) {
        w->devs[j].phase = DEV_OPEN;
        w->devs[j].counted = true;
    }
    w->convs[0].n_counted = 2;
    for (uint64_t k = 0; k < 8; k++) {
        w->next_msg++;
        w->msgs[k] = (bench_msg){.sched_ns = now - 1000000, .dev = (uint32_t)sender_of(w, k), .state = MSG_SENT};
        w->outstanding++;
        w->r.sent++;
    }
    int bad = 0;
    bad += expect("sender of message 1", w->msgs[1].dev, 1);

    /* device 0 */
    feed_msg(w, 0, 1, "A", 0, true);
    feed_msg(w, 0, 1, "A", 0, true); /* the same id again: a redelivery */
    feed_msg(w, 0, 3, "C", 2, true); /* a gap */
    feed_msg(w, 0, 2, "B", 1, true); /* out of order */
    feed_msg(w, 0, 4, "D", 3, true);
    feed_msg(w, 0, 5, "E", 0, true);  /* cmid p0-0 again under another seq: a duplicate */
    feed_msg(w, 0, 6, "F", 5, false); /* a changed body */
    /* device 1 */
    feed_msg(w, 1, 1, "A", 0, true);
    feed_msg(w, 1, 2, "B", 1, true);
    feed_msg(w, 1, 3, "Z", 2, true); /* cmid p0-2 with another id than device 0 saw: a duplicate */
    feed_msg(w, 1, 4, "H", 4, true); /* seq 4 holds another message than on device 0 */
    w->devs[1].syncing = true;       /* a reconnect: order is checked at synced */
    w->devs[1].reconnect_ns = now;
    w->n_syncing = 1;
    feed_msg(w, 1, 6, "F", 5, true);
    feed(w, 1, "{\"type\":\"synced\"}"); /* seq 5 still missing: a hole */
    /* acks and errors */
    feed(w, 0, "{\"type\":\"ack\",\"conv\":\"t-c0\",\"cmid\":\"p0-0\",\"seq\":1,\"id\":\"A\"}");
    feed(w, 0, "{\"type\":\"ack\",\"conv\":\"t-c0\",\"cmid\":\"p0-1\",\"seq\":2,\"id\":\"B\"}");  /* wrong device */
    feed(w, 0, "{\"type\":\"ack\",\"conv\":\"t-c0\",\"cmid\":\"p0-99\",\"seq\":9,\"id\":\"Q\"}"); /* unknown cmid */
    feed(w, 0, "{\"type\":\"error\",\"code\":\"not_member\",\"message\":\"no\",\"ref\":\"p0-6\"}");
    feed(w, 0, "{\"type\":\"error\",\"code\":\"unavailable\",\"message\":\"later\",\"ref\":\"p0-4\"}");
    feed(w, 0, "{\"type\":\"pong\"}");
    feed(w, 0, "not json");
    finish(w);

    const bench_result *r = &w->r;
    bad += expect("deliveries", r->deliveries, 11);
    bad += expect("deliveries expected", r->deliveries_expected, 12);
    bad += expect("missing deliveries", r->missing_deliveries, 1);
    bad += expect("redeliveries", r->redeliveries, 1);
    bad += expect("gaps", r->gaps, 1);
    bad += expect("gap seqs", r->gap_seqs, 1);
    bad += expect("out of order", r->out_of_order, 1);
    bad += expect("duplicates", r->duplicates, 2);
    bad += expect("body mismatches", r->body_mismatch, 1);
    bad += expect("seq conflicts", r->seq_conflicts, 1);
    bad += expect("sync holes", r->sync_holes, 1);
    bad += expect("synced", r->synced, 1);
    bad += expect("acked", r->acked, 1);
    bad += expect("protocol errors", r->protocol_errors, 2);
    bad += expect("refused sends", r->failed_sends, 1);
    bad += expect("unavailable errors", r->err_unavailable, 1);
    bad += expect("retries pending", w->n_retries, 1);
    bad += expect("unacked", r->unacked, 6);
    bad += expect("bad frames", r->bad_frames, 1);
    bad += expect("other frames", r->unexpected_frames, 1);
    bad += expect("ack latencies", r->ack.count, 1);
    bad += expect("delivery latencies", r->delivery.count, 9);
    if (r->problem[0] == '\0')
        bad += expect("a problem text", 0, 1);
    worker_free(w);
    return bad;
}
