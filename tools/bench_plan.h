/* chat-bench: the options (scenario file, then flags) and the plan every worker follows. Each
 * worker process owns a range of users, the conversations made only of those users and their
 * connections, so it checks everything it sends and receives by itself; the parent only adds
 * results up. Built on the main thread before fork; read-only afterwards. */
#ifndef BENCH_PLAN_H
#define BENCH_PLAN_H
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_status.h"

#define BENCH_MAX_PROCS 64
#define BENCH_MAX_GATEWAYS 16
#define BENCH_FDS_PER_PROC 19900 /* 20,000 open files per process on these machines, less a margin */

/* The protocol chat-bench speaks over its WebSocket connections: the platform's (CONTRACT
 * section 3), or one of the peers it is compared with (bench/README.md, "Peers"). */
typedef enum bench_proto {
    BENCH_PROTO_CHAT = 0, /* the platform: token in the URL, hello, send/ack/msg with server seqs */
    BENCH_PROTO_XMPP,     /* XMPP over WebSocket (RFC 7395): SASL PLAIN, bind, XEP-0198 acks, <message> */
    BENCH_PROTO_SOCKETIO, /* Socket.IO 4 (Engine.IO 4 over WebSocket) to bench/peers/socketio/relay.js */
} bench_proto;

typedef struct bench_opts {
    char scenario[256];     /* name shown in reports (the file's base name) */
    long users;             /* U */
    long conversations;     /* C */
    long group_size;        /* G, members of a group conversation */
    double mix;             /* share of the conversations that are 1:1 (0..1) */
    long devices;           /* connections per user when connections is 0 */
    long connections;       /* N; 0: users * devices */
    double ramp_rate;       /* new connections per second, all processes together */
    double hold;            /* seconds to hold the connections idle after the ramp */
    double settle;          /* seconds after the ramp before the gateway's RSS is read */
    double rate;            /* messages per second, all processes together (open loop) */
    double duration;        /* seconds of sending, measured */
    double warmup;          /* seconds of sending before them: checked, kept out of latencies and throughput */
    double drain;           /* seconds to wait for outstanding acks and deliveries */
    double linger;          /* seconds the connections stay open after the drain */
    long body_size;         /* bytes of each message body (at least the stamp) */
    long retries;           /* resends of a message answered unavailable or rate_limited */
    long drop;              /* connections dropped during the send phase */
    double drop_at;         /* seconds into the send phase; < 0: half the duration */
    double reconnect_after; /* seconds between the drop and the reconnect */
    long procs;             /* worker processes */
    long conns_per_ip;      /* connections per loopback source address */
    long max_pending;       /* handshakes in flight per process */
    long token_ttl;         /* seconds */
    long verbose;
    char gateways[1024];    /* host:port,...; "" = CHAT_GATEWAY_LISTEN */
    char gateway_pids[256]; /* pid,...; "" = $CHAT_HOME/run/gateway.pid */
    char src_base[64];      /* first loopback source address */
    char prefix[40];        /* id prefix of this run; "" = made from the time */
    char json[1024];        /* write the JSON report here ("" = none) */
    char proto[16];         /* chat, xmpp, socketio */
    char xmpp_domain[128];  /* XMPP: the server's domain (JIDs are <user id>@<domain>) */
    char password[64];      /* XMPP: every user's password (SASL PLAIN) */
    char ws_path[256];      /* request target of the upgrade ("" = the protocol's usual one) */
} bench_opts;

/* One process's share: users [u0, u1), conversations [c0, c1), connections [n0, n1). */
typedef struct bench_share {
    uint32_t u0, u1, c0, c1, n0, n1;
    uint32_t drop;     /* connections this process drops */
    double rate;       /* messages per second */
    uint64_t messages; /* messages it schedules */
    int64_t offset_ns; /* its schedule starts this much after t0 (interleaves processes) */
} bench_share;

typedef struct bench_plan {
    const chat_cfg *cfg;
    bench_opts opts;
    char run_id[48]; /* prefix of every id of this run */
    uint32_t n_users, n_convs, n_conns;
    uint32_t *member_of;  /* members of conversation c: member_of[conv_first[c] .. conv_first[c + 1]) */
    uint32_t *conv_first; /* n_convs + 1 entries */
    uint8_t *conv_direct; /* 1: a 1:1 conversation */
    int n_procs;
    bench_share shares[BENCH_MAX_PROCS];
    int n_gateways;
    struct sockaddr_in gateway_addr[BENCH_MAX_GATEWAYS];
    char gateway_host[BENCH_MAX_GATEWAYS][64]; /* "host:port" for the Host header */
    struct in_addr src_base;
    bench_proto proto;
    bool echo; /* the sender's own devices get its messages too (chat, socketio; not XMPP) */
} bench_plan;

/* Defaults for every option. */
void bench_opts_defaults(bench_opts *o);

/* Reads key=value lines (# comments, blank lines) of a scenario file into o. CHAT_OK, or
 * CHAT_ERR_INVALID / CHAT_ERR_NOT_FOUND with a line in err. */
chat_status bench_opts_load_file(bench_opts *o, const char *path, char *err, size_t errsz);

/* Applies "--key value" / "--key=value" flags (keys with '-' or '_'), "--scenario FILE" and a
 * positional scenario (a path, or a name looked up as bench/scenarios/NAME.conf). Flags win over
 * the file wherever they stand. CHAT_OK or CHAT_ERR_INVALID with a line in err. */
chat_status bench_opts_parse_args(bench_opts *o, int argc, char **argv, char *err, size_t errsz);

/* Prints the option table (key, default, meaning). */
void bench_opts_print_help(void);

/* Checks the options and builds the plan (no I/O but name resolution of the gateways). The plan
 * keeps a pointer to cfg. CHAT_OK or CHAT_ERR_INVALID with a line in err. */
chat_status bench_plan_build(bench_plan *p, const bench_opts *o, const chat_cfg *cfg, char *err, size_t errsz);
void bench_plan_free(bench_plan *p);

/* Ids of this run: "<run>-u<index>", "<run>-c<index>". */
void bench_user_id(const bench_plan *p, uint32_t user, char *out, size_t size);
void bench_conv_id(const bench_plan *p, uint32_t conv, char *out, size_t size);
/* The conversation index of an id of this run, or -1. */
int64_t bench_conv_index(const bench_plan *p, const char *id, size_t len);

/* The user of connection n (global index), and its source address. */
uint32_t bench_conn_user(const bench_plan *p, int proc, uint32_t n);
void bench_conn_source(const bench_plan *p, uint32_t n, struct sockaddr_in *out);

#endif
