/* The fault suite's probe: one client that keeps one message in flight in each ordering
 * partition and measures, for every message, the time from its first send to its ack. Its
 * worst ack time is the outage a user saw: the scenario's recovery time. A real client's
 * behaviour: the same cmid again after `unavailable` (250 ms), `rate_limited` (1 s) or no ack
 * within 3 s; on a lost connection it reconnects (through the balancer, so to a live gateway)
 * and sends every unacked message again.
 *
 *   fault_probe --list PREFIX
 *       prints one conversation id per partition (CHAT_PARTITIONS): PREFIX-<i>
 *   fault_probe --gateway HOST:PORT --user U --prefix PREFIX --duration S --out FILE
 *               [--interval-ms 200] [--drain S]
 *       CHAT_JWT_SECRET signs the token. Writes a JSON report to FILE and a summary line to
 *       stdout; exits 0 when every message was acked, 1 otherwise. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_jwt.h"
#include "chat_partition.h"
#include "ws_client.h"

#define MAX_CONVS 256
#define RESEND_MS 3000
#define UNAVAILABLE_RETRY_MS 250
#define LIMITED_RETRY_MS 1000
#define TOP_STALLS 8

typedef struct conv {
    char id[80];
    uint64_t n;          /* the message in flight (or the next to send) */
    bool outstanding;
    int64_t first_ms;    /* first send of the message in flight (wall clock) */
    int64_t last_ms;     /* its last send */
    int64_t retry_at_ms; /* resend at (0: none scheduled) */
    int64_t next_ms;     /* when to send the next message */
} conv;

typedef struct stall {
    char conv[80];
    int64_t from_ms, ms;
} stall;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int partitions(void)
{
    const char *p = getenv("CHAT_PARTITIONS");
    int n = p ? atoi(p) : 16;
    return n > 0 && n <= MAX_CONVS ? n : 16;
}

/* One id per partition: PREFIX-<i> for the first i that lands in each partition. */
static int plan(const char *prefix, conv *convs)
{
    int np = partitions(), found = 0;
    bool have[MAX_CONVS] = {false};
    for (int i = 0; found < np && i < 100000; i++) {
        char id[80];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        uint32_t p = chat_partition_of(id, (uint32_t)np);
        if (have[p])
            continue;
        have[p] = true;
        memset(&convs[found], 0, sizeof convs[found]);
        snprintf(convs[found].id, sizeof convs[found].id, "%s", id);
        found++;
    }
    return found;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *gateway = NULL, *user = NULL, *prefix = NULL, *out = NULL, *list = NULL;
    double duration = 30, drain = 60;
    int interval = 200;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--list") == 0 && v)
            list = v, i++;
        else if (strcmp(a, "--gateway") == 0 && v)
            gateway = v, i++;
        else if (strcmp(a, "--user") == 0 && v)
            user = v, i++;
        else if (strcmp(a, "--prefix") == 0 && v)
            prefix = v, i++;
        else if (strcmp(a, "--out") == 0 && v)
            out = v, i++;
        else if (strcmp(a, "--duration") == 0 && v)
            duration = atof(v), i++;
        else if (strcmp(a, "--drain") == 0 && v)
            drain = atof(v), i++;
        else if (strcmp(a, "--interval-ms") == 0 && v)
            interval = atoi(v), i++;
        else {
            fprintf(stderr, "fault_probe: unknown argument %s\n", a);
            return 2;
        }
    }
    static conv convs[MAX_CONVS];
    if (list) {
        int n = plan(list, convs);
        for (int i = 0; i < n; i++)
            printf("%s\n", convs[i].id);
        return 0;
    }
    const char *secret = getenv("CHAT_JWT_SECRET");
    if (!gateway || !user || !prefix || !out || !secret || !secret[0]) {
        fprintf(stderr, "fault_probe: --gateway, --user, --prefix, --out and CHAT_JWT_SECRET are required\n");
        return 2;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", gateway);
    char *colon = strrchr(host, ':');
    if (!colon)
        return 2;
    *colon = '\0';
    int port = atoi(colon + 1);
    signal(SIGPIPE, SIG_IGN);
    int nconv = plan(prefix, convs);

    static int64_t lat[1 << 20];
    size_t nlat = 0;
    stall top[TOP_STALLS] = {0};
    uint64_t sent = 0, acked = 0, resent = 0, reconnects = 0, unavailable = 0, limited = 0, other_errors = 0;
    int64_t t0 = now_ms(), stop_sending = t0 + (int64_t)(duration * 1000), give_up = stop_sending + (int64_t)(drain * 1000);
    int64_t down_since = 0, longest_down = 0;
    ws_client *c = NULL;
    int64_t next_connect = 0;
    for (int i = 0; i < nconv; i++)
        convs[i].next_ms = t0 + (int64_t)i * interval / nconv;

    for (;;) {
        int64_t now = now_ms();
        bool busy = false;
        for (int i = 0; i < nconv; i++)
            busy |= convs[i].outstanding;
        if ((now >= stop_sending && !busy) || now >= give_up)
            break;
        if (c == NULL) {
            if (now < next_connect) {
                usleep(20000);
                continue;
            }
            char *token = NULL;
            if (chat_jwt_sign(user, secret, now / 1000, 3600, &token) != CHAT_OK) {
                fprintf(stderr, "fault_probe: cannot sign a token\n");
                return 2;
            }
            char auth[CHAT_JWT_MAX_LEN + 64];
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
            free(token);
            const char *headers[] = {auth, NULL};
            ws_connect_opts o = {.host = host, .port = port, .path = "/ws", .headers = headers, .timeout_ms = 3000};
            ws_connect_info info;
            if (ws_client_connect(&o, &c, &info) != CHAT_OK) {
                c = NULL;
                if (down_since == 0)
                    down_since = now;
                next_connect = now + 200;
                continue;
            }
            json_t *hello = NULL;
            if (ws_client_recv_json(c, 3000, &hello) != CHAT_OK) {
                ws_client_destroy(c);
                c = NULL;
                next_connect = now_ms() + 200;
                continue;
            }
            json_decref(hello);
            if (down_since) {
                if (now_ms() - down_since > longest_down)
                    longest_down = now_ms() - down_since;
                down_since = 0;
            }
            /* everything in flight goes out again */
            for (int i = 0; i < nconv; i++)
                if (convs[i].outstanding)
                    convs[i].retry_at_ms = now_ms();
        }
        /* sends due */
        bool failed = false;
        for (int i = 0; i < nconv && !failed; i++) {
            conv *v = &convs[i];
            bool fresh = !v->outstanding && now < stop_sending && now >= v->next_ms;
            bool again = v->outstanding && ((v->retry_at_ms && now >= v->retry_at_ms) ||
                                            (!v->retry_at_ms && now - v->last_ms >= RESEND_MS));
            if (!fresh && !again)
                continue;
            if (fresh) {
                v->n++;
                v->outstanding = true;
                v->first_ms = now;
                sent++;
            } else {
                resent++;
            }
            v->last_ms = now;
            v->retry_at_ms = 0;
            char frame[256];
            int len = snprintf(frame, sizeof frame,
                               "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"pr%d-%" PRIu64 "\",\"body\":\"probe\"}", v->id,
                               i, v->n);
            if (ws_client_send_text(c, frame, (size_t)len) != CHAT_OK)
                failed = true;
        }
        /* what came back */
        while (!failed) {
            ws_message m = {0};
            chat_status st = ws_client_recv(c, 0, &m);
            if (st == CHAT_ERR_TIMEOUT)
                break;
            if (st != CHAT_OK || m.opcode == WS_OP_CLOSE) {
                ws_message_clear(&m);
                failed = true;
                break;
            }
            json_t *f = json_loadb(m.data, m.len, 0, NULL);
            ws_message_clear(&m);
            const char *type = json_string_value(json_object_get(f, "type"));
            const char *ref = json_string_value(json_object_get(f, type && strcmp(type, "ack") == 0 ? "cmid" : "ref"));
            int ci = -1;
            uint64_t n = 0;
            if (ref && sscanf(ref, "pr%d-%" SCNu64, &ci, &n) == 2 && ci >= 0 && ci < nconv && convs[ci].outstanding &&
                convs[ci].n == n) {
                conv *v = &convs[ci];
                if (strcmp(type, "ack") == 0) {
                    int64_t ms = now_ms() - v->first_ms;
                    if (nlat < sizeof lat / sizeof lat[0])
                        lat[nlat++] = ms;
                    acked++;
                    v->outstanding = false;
                    v->next_ms = v->first_ms + interval > now_ms() ? v->first_ms + interval : now_ms();
                    /* keep the longest stalls */
                    int k = TOP_STALLS - 1;
                    if (ms > top[k].ms) {
                        while (k > 0 && ms > top[k - 1].ms) {
                            top[k] = top[k - 1];
                            k--;
                        }
                        snprintf(top[k].conv, sizeof top[k].conv, "%s", v->id);
                        top[k].from_ms = v->first_ms;
                        top[k].ms = ms;
                    }
                } else if (strcmp(type, "error") == 0) {
                    const char *code = json_string_value(json_object_get(f, "code"));
                    if (code && strcmp(code, "unavailable") == 0) {
                        unavailable++;
                        v->retry_at_ms = now_ms() + UNAVAILABLE_RETRY_MS;
                    } else if (code && strcmp(code, "rate_limited") == 0) {
                        limited++;
                        v->retry_at_ms = now_ms() + LIMITED_RETRY_MS;
                    } else {
                        other_errors++;
                        fprintf(stderr, "fault_probe: error for %s: %s\n", ref, code ? code : "?");
                        v->retry_at_ms = now_ms() + LIMITED_RETRY_MS;
                    }
                }
            }
            json_decref(f);
        }
        if (failed) {
            ws_client_destroy(c);
            c = NULL;
            reconnects++;
            down_since = now_ms();
            next_connect = now_ms() + 100;
            continue;
        }
        struct pollfd pfd = {.fd = ws_client_fd(c), .events = POLLIN};
        if (!ws_client_buffered(c))
            poll(&pfd, 1, 10);
    }
    ws_client_destroy(c);
    uint64_t unacked = 0;
    for (int i = 0; i < nconv; i++)
        unacked += convs[i].outstanding;
    qsort(lat, nlat, sizeof lat[0], cmp_i64);
    int64_t p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] : 0, max = nlat ? lat[nlat - 1] : 0;
    json_t *stalls = json_array();
    for (int k = 0; k < TOP_STALLS && top[k].ms > 0; k++)
        json_array_append_new(stalls, json_pack("{s:s, s:I, s:I}", "conv", top[k].conv, "from_ms", (json_int_t)top[k].from_ms,
                                                "ms", (json_int_t)top[k].ms));
    json_t *r = json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "conversations",
                          nconv, "sent", (json_int_t)sent, "acked", (json_int_t)acked, "unacked", (json_int_t)unacked,
                          "resent", (json_int_t)resent, "reconnects", (json_int_t)reconnects, "unavailable",
                          (json_int_t)unavailable, "rate_limited", (json_int_t)limited, "other_errors",
                          (json_int_t)other_errors, "p50_ms", (json_int_t)p50, "p99_ms", (json_int_t)p99, "max_ms",
                          (json_int_t)max, "longest_disconnect_ms", (json_int_t)longest_down, "start_ms",
                          (json_int_t)t0, "stalls", stalls);
    if (json_dump_file(r, out, JSON_INDENT(2)) != 0)
        fprintf(stderr, "fault_probe: cannot write %s\n", out);
    printf("probe: %d partitions, %" PRIu64 " sent, %" PRIu64 " acked, %" PRIu64 " unacked, %" PRIu64 " resent, %" PRIu64
           " reconnects; ack p50 %" PRId64 " ms, p99 %" PRId64 " ms, max %" PRId64 " ms\n",
           nconv, sent, acked, unacked, resent, reconnects, p50, p99, max);
    json_decref(r);
    return unacked == 0 ? 0 : 1;
}
