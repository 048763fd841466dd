/* chat-bench: options and the plan (see bench_plan.h). Main thread, before any worker starts. */
#include "bench_plan.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_id.h"
#include "chat_time.h"

/* ------------------------------------------------------------------ the option table */

typedef enum opt_type { OPT_LONG, OPT_DOUBLE, OPT_STR } opt_type;

typedef struct opt {
    const char *key;
    opt_type type;
    size_t offset;
    size_t size; /* OPT_STR: buffer size */
    const char *def;
    const char *help;
} opt;

#define O(field) offsetof(bench_opts, field), sizeof(((bench_opts *)0)->field)

static const opt opts_table[] = {
    {"users", OPT_LONG, O(users), "100", "users (U)"},
    {"conversations", OPT_LONG, O(conversations), "50", "conversations (C), made of this run's users"},
    {"group_size", OPT_LONG, O(group_size), "2", "members of each group conversation (G)"},
    {"mix", OPT_DOUBLE, O(mix), "1", "share of the conversations that are 1:1 (1: all, 0: all groups of G)"},
    {"devices", OPT_LONG, O(devices), "1", "connections per user (when connections is 0)"},
    {"connections", OPT_LONG, O(connections), "0", "connections (N; 0: users x devices); connection i is user i mod U"},
    {"ramp_rate", OPT_DOUBLE, O(ramp_rate), "2000", "new connections per second (all processes)"},
    {"hold", OPT_DOUBLE, O(hold), "0", "seconds to hold the connections idle after the ramp"},
    {"settle", OPT_DOUBLE, O(settle), "2", "seconds after the ramp before the gateway RSS is read"},
    {"rate", OPT_DOUBLE, O(rate), "100", "messages per second, open loop (all processes)"},
    {"duration", OPT_DOUBLE, O(duration), "10", "seconds of sending"},
    {"warmup", OPT_DOUBLE, O(warmup), "0",
     "seconds of sending at rate before duration: checked like the rest, kept out of the latencies and throughput"},
    {"drain", OPT_DOUBLE, O(drain), "15", "seconds to wait for outstanding acks and deliveries at the end"},
    {"linger", OPT_DOUBLE, O(linger), "0",
     "seconds the connections stay open after the drain (after the line \"drained\"), so that counters "
     "read then do not include their closing"},
    {"body_size", OPT_LONG, O(body_size), "64", "bytes per message body (at least the send stamp)"},
    {"retries", OPT_LONG, O(retries), "4",
     "resends (same cmid, after 1, 2, 4, 8 s) of a send answered unavailable or rate_limited"},
    {"drop", OPT_LONG, O(drop), "0", "connections dropped (reset) during the send phase, then reconnected with sync"},
    {"drop_at", OPT_DOUBLE, O(drop_at), "-1", "seconds into the send phase for the drop (-1: half the duration)"},
    {"reconnect_after", OPT_DOUBLE, O(reconnect_after), "1", "seconds the dropped connections stay away"},
    {"procs", OPT_LONG, O(procs), "1", "worker processes (each holds at most 19,900 connections)"},
    {"conns_per_ip", OPT_LONG, O(conns_per_ip), "500", "connections per loopback source address (127.0.0.x)"},
    {"max_pending", OPT_LONG, O(max_pending), "256", "handshakes in flight per process"},
    {"token_ttl", OPT_LONG, O(token_ttl), "86400", "seconds the client tokens stay valid"},
    {"verbose", OPT_LONG, O(verbose), "0", "1: a progress line per worker every 5 s"},
    {"gateways", OPT_STR, O(gateways), "", "gateway addresses host:port,... (default: CHAT_GATEWAY_LISTEN)"},
    {"gateway_pid", OPT_STR, O(gateway_pids), "",
     "gateway pids for RSS, comma separated (default: $CHAT_HOME/run/gateway.pid)"},
    {"src_base", OPT_STR, O(src_base), "127.0.0.1", "first loopback source address; the next ones follow"},
    {"prefix", OPT_STR, O(prefix), "", "id prefix of this run's users and conversations (default: from the time)"},
    {"json", OPT_STR, O(json), "", "write the JSON report to this file"},
    {"proto", OPT_STR, O(proto), "chat",
     "protocol: chat (this platform), xmpp (XMPP over WebSocket, e.g. ejabberd), socketio (Socket.IO 4 relay)"},
    {"xmpp_domain", OPT_STR, O(xmpp_domain), "localhost", "XMPP: the server's domain; users are <id>@<domain>"},
    {"password", OPT_STR, O(password), "bench", "XMPP: the password of every user (SASL PLAIN)"},
    {"ws_path", OPT_STR, O(ws_path), "",
     "WebSocket request path (default: /ws; socketio: /socket.io/?EIO=4&transport=websocket)"},
};
#define N_OPTS (sizeof opts_table / sizeof opts_table[0])

static chat_status failf(char *err, size_t errsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static chat_status failf(char *err, size_t errsz, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsz, fmt, ap);
    va_end(ap);
    return CHAT_ERR_INVALID;
}

static const opt *find_opt(const char *key, size_t len)
{
    char norm[64];
    if (len >= sizeof norm)
        return NULL;
    for (size_t i = 0; i < len; i++)
        norm[i] = key[i] == '-' ? '_' : key[i];
    norm[len] = '\0';
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(opts_table[i].key, norm) == 0)
            return &opts_table[i];
    return NULL;
}

static chat_status set_opt(bench_opts *o, const opt *d, const char *value, char *err, size_t errsz)
{
    char *field = (char *)o + d->offset;
    char *end;
    errno = 0;
    switch (d->type) {
    case OPT_LONG: {
        long v = strtol(value, &end, 10);
        if (errno || *value == '\0' || *end)
            return failf(err, errsz, "%s: must be an integer (got \"%s\")", d->key, value);
        memcpy(field, &v, sizeof v);
        break;
    }
    case OPT_DOUBLE: {
        double v = strtod(value, &end);
        if (errno || *value == '\0' || *end || !isfinite(v))
            return failf(err, errsz, "%s: must be a number (got \"%s\")", d->key, value);
        memcpy(field, &v, sizeof v);
        break;
    }
    case OPT_STR:
        if (strlen(value) >= d->size)
            return failf(err, errsz, "%s: longer than %zu characters", d->key, d->size - 1);
        snprintf(field, d->size, "%s", value);
        break;
    }
    return CHAT_OK;
}

void bench_opts_defaults(bench_opts *o)
{
    memset(o, 0, sizeof *o);
    char err[256];
    for (size_t i = 0; i < N_OPTS; i++)
        set_opt(o, &opts_table[i], opts_table[i].def, err, sizeof err);
    snprintf(o->scenario, sizeof o->scenario, "adhoc");
}

void bench_opts_print_help(void)
{
    printf("\noptions (scenario file keys; as flags --key value, '-' or '_' alike; flags win):\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char flag[40];
        snprintf(flag, sizeof flag, "--%s", opts_table[i].key);
        for (char *p = flag + 2; *p; p++)
            if (*p == '_')
                *p = '-';
        printf("  %-18s %s%s%s%s\n", flag, opts_table[i].help, opts_table[i].def[0] ? " [" : "", opts_table[i].def,
               opts_table[i].def[0] ? "]" : "");
    }
}

/* ------------------------------------------------------------------ scenario files */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

chat_status bench_opts_load_file(bench_opts *o, const char *path, char *err, size_t errsz)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errsz, "scenario %s: %s", path, strerror(errno));
        return CHAT_ERR_NOT_FOUND;
    }
    char line[2048];
    int lineno = 0;
    chat_status st = CHAT_OK;
    while (st == CHAT_OK && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (*s == '\0')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            st = failf(err, errsz, "%s:%d: expected key=value", path, lineno);
            break;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        const opt *d = find_opt(key, strlen(key));
        if (d == NULL) {
            st = failf(err, errsz, "%s:%d: unknown key \"%s\" (see chat-bench --help)", path, lineno, key);
            break;
        }
        char e2[256];
        if (set_opt(o, d, value, e2, sizeof e2) != CHAT_OK)
            st = failf(err, errsz, "%s:%d: %s", path, lineno, e2);
    }
    fclose(f);
    if (st == CHAT_OK) {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        snprintf(o->scenario, sizeof o->scenario, "%s", base);
        char *dot = strrchr(o->scenario, '.');
        if (dot && strcmp(dot, ".conf") == 0)
            *dot = '\0';
    }
    return st;
}

/* A scenario given by name: NAME as a path, else bench/scenarios/NAME.conf from the current
 * directory, else from the checkout the binary was built in (<build>/bin/../../bench). */
static bool find_scenario(const char *name, char *out, size_t size)
{
    if (access(name, R_OK) == 0) {
        snprintf(out, size, "%s", name);
        return true;
    }
    snprintf(out, size, "bench/scenarios/%s.conf", name);
    if (access(out, R_OK) == 0)
        return true;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        for (int up = 0; up < 3; up++) {
            char *slash = strrchr(exe, '/');
            if (slash == NULL)
                break;
            *slash = '\0';
            int n = snprintf(out, size, "%.*s/bench/scenarios/%s.conf", (int)(size / 2), exe, name);
            if (n > 0 && (size_t)n < size && access(out, R_OK) == 0)
                return true;
        }
    }
    return false;
}

/* True for a non-empty string of digits (the value of a flag that may stand alone). */
static bool numeric(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

chat_status bench_opts_parse_args(bench_opts *o, int argc, char **argv, char *err, size_t errsz)
{
    /* pass 1: the scenario, so that flags win over it wherever they stand */
    const char *scenario = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--scenario") == 0 && i + 1 < argc) {
            scenario = argv[++i];
        } else if (strncmp(argv[i], "--scenario=", 11) == 0) {
            scenario = argv[i] + 11;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            const char *eq = strchr(argv[i], '=');
            const opt *d = find_opt(argv[i] + 2, eq ? (size_t)(eq - argv[i] - 2) : strlen(argv[i] + 2));
            if (d == NULL)
                return failf(err, errsz, "unknown option \"%s\" (see chat-bench --help)", argv[i]);
            bool bare = strcmp(d->key, "verbose") == 0 && !eq && !numeric(i + 1 < argc ? argv[i + 1] : NULL);
            if (!eq && !bare)
                i++; /* skip its value */
        } else if (strcmp(argv[i], "-v") != 0) {
            if (scenario)
                return failf(err, errsz, "unexpected argument \"%s\" (one scenario at most)", argv[i]);
            scenario = argv[i];
        }
    }
    if (scenario) {
        char path[PATH_MAX];
        if (!find_scenario(scenario, path, sizeof path))
            return failf(err, errsz, "scenario \"%s\": no such file, nor bench/scenarios/%s.conf", scenario, scenario);
        chat_status st = bench_opts_load_file(o, path, err, errsz);
        if (st != CHAT_OK)
            return st;
    }
    /* pass 2: the flags */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--scenario") == 0) {
            i++;
            continue;
        }
        if (strcmp(a, "-v") == 0) {
            o->verbose = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || strncmp(a, "--scenario=", 11) == 0)
            continue;
        const char *eq = strchr(a, '=');
        const opt *d = find_opt(a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
        if (d == NULL)
            return failf(err, errsz, "unknown option \"%s\" (see chat-bench --help)", a);
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (strcmp(d->key, "verbose") == 0 && !numeric(i + 1 < argc ? argv[i + 1] : NULL)) {
            value = "1";
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return failf(err, errsz, "option %s needs a value", a);
        }
        chat_status st = set_opt(o, d, value, err, errsz);
        if (st != CHAT_OK)
            return st;
    }
    return CHAT_OK;
}

/* ------------------------------------------------------------------ the plan */

static uint32_t share_of(uint64_t total, int parts, int i)
{
    return (uint32_t)(total / (uint64_t)parts + ((uint64_t)i < total % (uint64_t)parts ? 1 : 0));
}

static void base36(uint64_t v, char *out, size_t size)
{
    char tmp[32];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdefghijklmnopqrstuvwxyz"[v % 36];
        v /= 36;
    } while (v && n < (int)sizeof tmp);
    size_t o = 0;
    while (n > 0 && o + 1 < size)
        out[o++] = tmp[--n];
    out[o] = '\0';
}

static chat_status parse_gateways(bench_plan *p, const char *list, char *err, size_t errsz)
{
    char *copy = strdup(list), *save = NULL;
    chat_status st = CHAT_OK;
    for (char *g = strtok_r(copy, ",", &save); g && st == CHAT_OK; g = strtok_r(NULL, ",", &save)) {
        g = trim(g);
        if (p->n_gateways == BENCH_MAX_GATEWAYS) {
            st = failf(err, errsz, "gateways: at most %d", BENCH_MAX_GATEWAYS);
            break;
        }
        chat_listen l;
        if (chat_parse_listen(g, &l) != CHAT_OK) {
            st = failf(err, errsz, "gateways: \"%s\" is not host:port", g);
            break;
        }
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
        char port[16];
        snprintf(port, sizeof port, "%d", l.port);
        if (getaddrinfo(l.host, port, &hints, &res) != 0 || res == NULL) {
            st = failf(err, errsz, "gateways: cannot resolve \"%s\" (IPv4)", l.host);
            break;
        }
        memcpy(&p->gateway_addr[p->n_gateways], res->ai_addr, sizeof(struct sockaddr_in));
        freeaddrinfo(res);
        snprintf(p->gateway_host[p->n_gateways], sizeof p->gateway_host[0], "%s", g);
        p->n_gateways++;
    }
    free(copy);
    if (st == CHAT_OK && p->n_gateways == 0)
        st = failf(err, errsz, "gateways: none given");
    return st;
}

chat_status bench_plan_build(bench_plan *p, const bench_opts *o, const chat_cfg *cfg, char *err, size_t errsz)
{
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    p->opts = *o;
    bench_opts *op = &p->opts;
    if (op->procs < 1 || op->procs > BENCH_MAX_PROCS)
        return failf(err, errsz, "procs: must be from 1 to %d", BENCH_MAX_PROCS);
    if (op->users < 2 * op->procs || op->users > 10000000)
        return failf(err, errsz, "users: must be from 2 per process (%ld) to 10,000,000", 2 * op->procs);
    if (op->conversations < 0 || op->conversations > 10000000)
        return failf(err, errsz, "conversations: must be from 0 to 10,000,000");
    if (op->mix < 0 || op->mix > 1)
        return failf(err, errsz, "mix: must be from 0 to 1 (the share of 1:1 conversations)");
    if (op->devices < 1 || op->devices > 1000)
        return failf(err, errsz, "devices: must be from 1 to 1000");
    if (op->connections == 0)
        op->connections = op->users * op->devices;
    if (op->connections < 1 || op->connections > (long)BENCH_FDS_PER_PROC * op->procs)
        return failf(err, errsz,
                     "connections: %ld is more than %d per process; use --procs %ld or more (each process may "
                     "hold 20,000 open files)",
                     op->connections, BENCH_FDS_PER_PROC,
                     (op->connections + BENCH_FDS_PER_PROC - 1) / BENCH_FDS_PER_PROC);
    long users_per_proc = op->users / op->procs;
    if (op->conversations > 0 && op->mix < 1 && (op->group_size < 2 || op->group_size > users_per_proc))
        return failf(err, errsz,
                     "group_size: must be from 2 to the users of one process (%ld): a process's conversations "
                     "are made of its own users",
                     users_per_proc);
    if (op->rate < 0 || op->duration < 0 || op->drain < 0 || op->hold < 0 || op->settle < 0 || op->linger < 0 ||
        op->warmup < 0)
        return failf(err, errsz, "rate, duration, warmup, drain, hold, settle and linger must not be negative");
    if (op->rate > 0 && op->conversations < op->procs)
        return failf(err, errsz, "conversations: sending needs at least one per process (%ld)", op->procs);
    if (op->ramp_rate <= 0)
        return failf(err, errsz, "ramp_rate: must be more than 0");
    if (op->retries < 0 || op->retries > 20)
        return failf(err, errsz, "retries: must be from 0 to 20");
    if (op->body_size < 0 || op->body_size > 16000)
        return failf(err, errsz, "body_size: must be from 0 to 16000");
    if (op->drop < 0 || op->drop > op->connections)
        return failf(err, errsz, "drop: must be from 0 to the connections (%ld)", op->connections);
    if (op->drop_at < 0)
        op->drop_at = op->duration / 2;
    if (op->drop > 0 && op->drop_at > op->duration)
        return failf(err, errsz, "drop_at: must be within the send phase (0 to duration %g s)", op->duration);
    if (op->reconnect_after < 0)
        return failf(err, errsz, "reconnect_after: must not be negative");
    if (op->conns_per_ip < 1 || op->max_pending < 1 || op->token_ttl < 60)
        return failf(err, errsz, "conns_per_ip and max_pending must be at least 1, token_ttl at least 60");
    if (strcmp(op->proto, "chat") == 0)
        p->proto = BENCH_PROTO_CHAT;
    else if (strcmp(op->proto, "xmpp") == 0)
        p->proto = BENCH_PROTO_XMPP;
    else if (strcmp(op->proto, "socketio") == 0)
        p->proto = BENCH_PROTO_SOCKETIO;
    else
        return failf(err, errsz, "proto: chat, xmpp or socketio (got \"%s\")", op->proto);
    p->echo = p->proto != BENCH_PROTO_XMPP;
    if (p->proto != BENCH_PROTO_CHAT && op->drop > 0)
        return failf(err, errsz, "drop: only with proto chat (the peers have no sync to check a reconnect with)");
    if (p->proto == BENCH_PROTO_XMPP && op->conversations > 0 && op->mix < 1)
        return failf(err, errsz, "mix: proto xmpp drives 1:1 conversations only (mix 1)");
    if (p->proto == BENCH_PROTO_XMPP && (op->xmpp_domain[0] == '\0' || strpbrk(op->xmpp_domain, "'\"<>&/@ ")))
        return failf(err, errsz, "xmpp_domain: a plain domain name");
    if (strpbrk(op->password, "'\"<>&"))
        return failf(err, errsz, "password: no quotes, <, > or &");
    if (op->ws_path[0] == '\0')
        snprintf(op->ws_path, sizeof op->ws_path, "%s",
                 p->proto == BENCH_PROTO_SOCKETIO ? "/socket.io/?EIO=4&transport=websocket" : "/ws");
    if (op->ws_path[0] != '/' || strpbrk(op->ws_path, " \r\n"))
        return failf(err, errsz, "ws_path: a request target starting with /");
    if (inet_pton(AF_INET, op->src_base, &p->src_base) != 1)
        return failf(err, errsz, "src_base: \"%s\" is not an IPv4 address", op->src_base);
    uint64_t last = (uint64_t)ntohl(p->src_base.s_addr) + (uint64_t)(op->connections - 1) / (uint64_t)op->conns_per_ip;
    if ((last >> 24) != 127 || (ntohl(p->src_base.s_addr) >> 24) != 127)
        return failf(err, errsz, "src_base: the source addresses must stay in 127.0.0.0/8");

    if (op->prefix[0]) {
        if (!chat_id_valid_n(op->prefix, strlen(op->prefix)) || strlen(op->prefix) > 24)
            return failf(err, errsz, "prefix: 1-24 characters of [A-Za-z0-9_-]");
        snprintf(p->run_id, sizeof p->run_id, "%s", op->prefix);
    } else {
        char t[16], q[8];
        base36((uint64_t)chat_now_ms(), t, sizeof t);
        base36((uint64_t)getpid() % 1296, q, sizeof q);
        snprintf(p->run_id, sizeof p->run_id, "b%s%s", t, q);
    }
    chat_status st = parse_gateways(p, op->gateways[0] ? op->gateways : cfg->gateway_listen_raw, err, errsz);
    if (st != CHAT_OK)
        return st;

    p->n_procs = (int)op->procs;
    p->n_users = (uint32_t)op->users;
    p->n_convs = (uint32_t)op->conversations;
    p->n_conns = (uint32_t)op->connections;
    uint32_t u = 0, c = 0, n = 0;
    for (int i = 0; i < p->n_procs; i++) {
        bench_share *s = &p->shares[i];
        s->u0 = u, s->u1 = u += share_of(p->n_users, p->n_procs, i);
        s->c0 = c, s->c1 = c += share_of(p->n_convs, p->n_procs, i);
        s->n0 = n, s->n1 = n += share_of(p->n_conns, p->n_procs, i);
        s->drop = share_of((uint64_t)op->drop, p->n_procs, i);
        if (s->drop > s->n1 - s->n0)
            s->drop = s->n1 - s->n0;
        s->rate = p->n_convs ? op->rate * (double)(s->c1 - s->c0) / (double)p->n_convs : 0;
        s->messages = (uint64_t)llround(s->rate * (op->warmup + op->duration));
        s->offset_ns = s->rate > 0 ? (int64_t)(1e9 / s->rate * i / p->n_procs) : 0;
    }

    /* conversations: a process's conversations are made only of its own users */
    p->conv_first = calloc((size_t)p->n_convs + 1, sizeof *p->conv_first);
    p->conv_direct = calloc((size_t)p->n_convs + 1, 1);
    size_t slots = 0;
    for (int i = 0; i < p->n_procs; i++) {
        const bench_share *s = &p->shares[i];
        uint32_t nc = s->c1 - s->c0;
        uint32_t nd = (uint32_t)llround(op->mix * nc);
        slots += (size_t)nd * 2 + (size_t)(nc - nd) * (size_t)op->group_size;
    }
    p->member_of = calloc(slots ? slots : 1, sizeof *p->member_of);
    if (!p->conv_first || !p->conv_direct || !p->member_of)
        return failf(err, errsz, "out of memory for the plan");
    size_t at = 0;
    for (int i = 0; i < p->n_procs; i++) {
        const bench_share *s = &p->shares[i];
        uint32_t nu = s->u1 - s->u0, nc = s->c1 - s->c0;
        uint32_t nd = (uint32_t)llround(op->mix * nc);
        for (uint32_t k = 0; k < nc; k++) {
            uint32_t cv = s->c0 + k;
            p->conv_first[cv] = (uint32_t)at;
            if (k < nd) {
                uint64_t idx = 2 * (uint64_t)k;
                uint32_t a = (uint32_t)(idx % nu);
                uint32_t b = (uint32_t)((a + 1 + idx / nu) % nu);
                if (b == a)
                    b = (a + 1) % nu;
                p->member_of[at++] = s->u0 + a;
                p->member_of[at++] = s->u0 + b;
                p->conv_direct[cv] = 1;
            } else {
                uint64_t start = ((uint64_t)(k - nd) * (uint64_t)op->group_size) % nu;
                for (long j = 0; j < op->group_size; j++)
                    p->member_of[at++] = s->u0 + (uint32_t)((start + (uint64_t)j) % nu);
            }
        }
    }
    p->conv_first[p->n_convs] = (uint32_t)at;
    return CHAT_OK;
}

void bench_plan_free(bench_plan *p)
{
    if (p == NULL)
        return;
    free(p->member_of);
    free(p->conv_first);
    free(p->conv_direct);
    p->member_of = p->conv_first = NULL;
    p->conv_direct = NULL;
}

void bench_user_id(const bench_plan *p, uint32_t user, char *out, size_t size)
{
    snprintf(out, size, "%s-u%u", p->run_id, user);
}

void bench_conv_id(const bench_plan *p, uint32_t conv, char *out, size_t size)
{
    snprintf(out, size, "%s-c%u", p->run_id, conv);
}

int64_t bench_conv_index(const bench_plan *p, const char *id, size_t len)
{
    size_t rl = strlen(p->run_id);
    if (len < rl + 3 || memcmp(id, p->run_id, rl) != 0 || id[rl] != '-' || id[rl + 1] != 'c')
        return -1;
    int64_t v = 0;
    for (size_t i = rl + 2; i < len; i++) {
        if (id[i] < '0' || id[i] > '9' || v > (int64_t)UINT32_MAX)
            return -1;
        v = v * 10 + (id[i] - '0');
    }
    return v < (int64_t)p->n_convs ? v : -1;
}

uint32_t bench_conn_user(const bench_plan *p, int proc, uint32_t n)
{
    const bench_share *s = &p->shares[proc];
    return s->u0 + (n - s->n0) % (s->u1 - s->u0);
}

void bench_conn_source(const bench_plan *p, uint32_t n, struct sockaddr_in *out)
{
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_addr.s_addr = htonl(ntohl(p->src_base.s_addr) + n / (uint32_t)p->opts.conns_per_ip);
    out->sin_port = 0;
}
