/* chat-bench: load generator and checker for the WebSocket protocol (issue 7). The main process
 * reads the settings and the scenario, creates the conversations over NATS, forks the worker
 * processes (bench_worker.c), steps them through ramp, hold and send phase, reads the gateway's
 * RSS, adds their results up and reports. Exit 0: every check passed; 1: a check failed or the
 * run broke; 2: usage or settings. Main thread only. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_plan.h"
#include "bench_report.h"
#include "bench_selftest.h"
#include "bench_setup.h"
#include "bench_worker.h"
#include "chat_config.h"
#include "chat_log.h"
#include "chat_time.h"

static const char *usage =
    "chat-bench [SCENARIO] [--key value ...]\n"
    "  SCENARIO: a file of key=value lines, or a name in bench/scenarios/ (smoke, one_to_one_7k, ...).\n"
    "  Creates the conversations over NATS (chat.api.v1.conv.create), opens the connections, sends open\n"
    "  loop at --rate for --duration, checks every ack and delivery (lost, duplicated, out of order, gaps)\n"
    "  and prints a summary (--json FILE for the JSON). Exit 0 when every check passed, 1 when one failed.\n"
    "  --proto xmpp|socketio drives a peer instead (ejabberd over XMPP-over-WebSocket, a Socket.IO relay).";

typedef struct child {
    pid_t pid;
    int from; /* the worker's results */
    int to;   /* the go message */
} child;

/* ------------------------------------------------------------------ gateway RSS */

/* The gateway pids: --gateway-pid, else $CHAT_HOME/run/gateway.pid. Returns how many. */
static int gateway_pids(const bench_plan *p, pid_t *pids, int max, char *list, size_t listsz)
{
    int n = 0;
    list[0] = '\0';
    if (p->opts.gateway_pids[0]) {
        char copy[sizeof p->opts.gateway_pids], *save = NULL;
        snprintf(copy, sizeof copy, "%s", p->opts.gateway_pids);
        for (char *t = strtok_r(copy, ",", &save); t && n < max; t = strtok_r(NULL, ",", &save))
            if (atol(t) > 0)
                pids[n++] = (pid_t)atol(t);
    } else {
        char path[4200];
        snprintf(path, sizeof path, "%s/run/gateway.pid", p->cfg->home);
        FILE *f = fopen(path, "r");
        long pid = 0;
        if (f) {
            if (fscanf(f, "%ld", &pid) == 1 && pid > 0)
                pids[n++] = (pid_t)pid;
            fclose(f);
        }
    }
    for (int i = 0; i < n; i++) {
        size_t l = strlen(list);
        snprintf(list + l, listsz - l, "%s%d", i ? "," : "", (int)pids[i]);
    }
    return n;
}

/* Summed VmRSS in KiB of the pids, or -1 when one cannot be read. */
static int64_t rss_kib(const pid_t *pids, int n)
{
    if (n == 0)
        return -1;
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/status", (int)pids[i]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return -1;
        long kib = -1;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
                break;
        fclose(f);
        if (kib < 0)
            return -1;
        sum += kib;
    }
    return sum;
}

/* ------------------------------------------------------------------ workers */

static bool read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static bool start_workers(const bench_plan *p, child *kids)
{
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < p->n_procs; i++) {
        int up[2], down[2];
        if (pipe2(up, O_CLOEXEC) != 0 || pipe2(down, O_CLOEXEC) != 0) {
            fprintf(stderr, "chat-bench: pipe: %s\n", strerror(errno));
            return false;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "chat-bench: fork: %s\n", strerror(errno));
            return false;
        }
        if (pid == 0) {
            close(up[0]);
            close(down[1]);
            for (int j = 0; j < i; j++) {
                close(kids[j].from);
                close(kids[j].to);
            }
            int rc = bench_worker_main(p, i, up[1], down[0]);
            fflush(stderr);
            _exit(rc);
        }
        close(up[1]);
        close(down[0]);
        kids[i] = (child){.pid = pid, .from = up[0], .to = down[1]};
    }
    return true;
}

/* Reads one fixed-size struct from every worker, in whatever order they come. */
static bool gather(const bench_plan *p, child *kids, void *out, size_t size)
{
    struct pollfd pf[BENCH_MAX_PROCS];
    bool got[BENCH_MAX_PROCS] = {false};
    int left = p->n_procs;
    while (left > 0) {
        int n = 0;
        for (int i = 0; i < p->n_procs; i++)
            if (!got[i])
                pf[n++] = (struct pollfd){.fd = kids[i].from, .events = POLLIN};
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        for (int i = 0, k = 0; i < p->n_procs; i++) {
            if (got[i])
                continue;
            struct pollfd *f = &pf[k++];
            if (!(f->revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (!read_all(kids[i].from, (char *)out + (size_t)i * size, size)) {
                fprintf(stderr, "chat-bench: worker %d (pid %d) ended without reporting\n", i, (int)kids[i].pid);
                return false;
            }
            got[i] = true;
            left--;
        }
    }
    return true;
}

static void stop_workers(const bench_plan *p, child *kids)
{
    for (int i = 0; i < p->n_procs; i++)
        if (kids[i].pid > 0)
            kill(kids[i].pid, SIGTERM);
}

static int wait_workers(const bench_plan *p, child *kids)
{
    int bad = 0;
    for (int i = 0; i < p->n_procs; i++) {
        int status = 0;
        if (kids[i].pid > 0 && waitpid(kids[i].pid, &status, 0) == kids[i].pid &&
            !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            bad++;
        close(kids[i].from);
        close(kids[i].to);
    }
    return bad;
}

static void sleep_s(double s)
{
    if (s > 0)
        chat_sleep_ms((int64_t)(s * 1000));
}

/* Lifts the soft limit of open files to the hard one; says so when it stays too low. */
static void raise_nofile(const bench_plan *p)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    uint32_t most = 0;
    for (int i = 0; i < p->n_procs; i++)
        if (p->shares[i].n1 - p->shares[i].n0 > most)
            most = p->shares[i].n1 - p->shares[i].n0;
    if (rl.rlim_cur != RLIM_INFINITY && (uint64_t)most + 64 > (uint64_t)rl.rlim_cur)
        fprintf(stderr,
                "chat-bench: warning: %u connections per process but only %llu open files allowed; use "
                "more --procs\n",
                most, (unsigned long long)rl.rlim_cur);
}

static void warn_limits(const bench_plan *p)
{
    const bench_opts *o = &p->opts;
    uint64_t senders = (uint64_t)o->connections;
    if (o->rate > 0 && (double)o->rate / (double)senders > 40)
        fprintf(stderr,
                "chat-bench: warning: %.1f messages/s per connection; the gateway allows %s (CHAT_WS_RATE, "
                "default 50 frames/s) and answers rate_limited above it\n",
                o->rate / (double)senders, "about 50");
    if (o->connections / o->users > 20)
        fprintf(stderr, "chat-bench: warning: more than 20 devices per user (CHAT_WS_MAX_PER_USER default 20)\n");
    if (o->conns_per_ip > 1000)
        fprintf(stderr,
                "chat-bench: warning: conns_per_ip %ld is above the gateway's CHAT_WS_MAX_PER_IP default "
                "(1000)\n",
                o->conns_per_ip);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            chat_cfg_print_help(CHAT_PROG_BENCH | CHAT_PROG_CTL, "chat-bench", usage);
            bench_opts_print_help();
            printf("  %-18s %s\n", "--self-test", "check the checker on synthetic frames (no server) and exit");
            return 0;
        }
        if (strcmp(argv[i], "--self-test") == 0)
            return bench_self_test();
    }
    chat_cfg cfg;
    chat_cfg_load_or_exit(&cfg, CHAT_PROG_BENCH | CHAT_PROG_CTL, "chat-bench", usage, argc, argv);
    signal(SIGPIPE, SIG_IGN);

    char err[1024];
    bench_opts opts;
    bench_opts_defaults(&opts);
    bench_plan plan;
    if (bench_opts_parse_args(&opts, cfg.nargs, cfg.args, err, sizeof err) != CHAT_OK ||
        bench_plan_build(&plan, &opts, &cfg, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chat-bench: %s\n", err);
        chat_cfg_free(&cfg);
        return 2;
    }
    raise_nofile(&plan);
    warn_limits(&plan);
    int64_t start = chat_mono_ns();
    bench_report rep;
    memset(&rep, 0, sizeof rep);
    bench_result_init(&rep.r);
    fprintf(stderr, "chat-bench: %s: %u users, %u conversations, %u connections, %d process%s, run %s, proto %s\n",
            plan.opts.scenario, plan.n_users, plan.n_convs, plan.n_conns, plan.n_procs, plan.n_procs == 1 ? "" : "es",
            plan.run_id, plan.opts.proto);

    int64_t t = chat_mono_ns();
    /* the peers have no conversations to create: XMPP users exist beforehand (bench/run creates
     * them in ejabberd's database), the Socket.IO relay takes them from the CONNECT */
    if (plan.proto == BENCH_PROTO_CHAT &&
        bench_setup_conversations(&plan, &rep.convs_created, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chat-bench: set-up: %s\n", err);
        bench_plan_free(&plan);
        chat_cfg_free(&cfg);
        return 1;
    }
    rep.setup_s = (double)(chat_mono_ns() - t) / 1e9;
    fprintf(stderr, "chat-bench: %u conversations ready in %.2f s; connecting\n", plan.n_convs, rep.setup_s);

    pid_t pids[16];
    rep.rss_pids = gateway_pids(&plan, pids, 16, rep.rss_pid_list, sizeof rep.rss_pid_list);
    rep.rss_before_kib = rss_kib(pids, rep.rss_pids);

    child kids[BENCH_MAX_PROCS];
    memset(kids, 0, sizeof kids);
    int rc = 1;
    bench_ready *ready = calloc((size_t)plan.n_procs, sizeof *ready);
    bench_result *results = calloc((size_t)plan.n_procs, sizeof *results);
    if (ready == NULL || results == NULL || !start_workers(&plan, kids) || !gather(&plan, kids, ready, sizeof *ready)) {
        stop_workers(&plan, kids);
        wait_workers(&plan, kids);
        goto out;
    }
    uint64_t open = 0, failed = 0;
    int64_t r0 = 0, r1 = 0;
    for (int i = 0; i < plan.n_procs; i++) {
        open += ready[i].open;
        failed += ready[i].failed;
        if (ready[i].ramp_start_ns && (r0 == 0 || ready[i].ramp_start_ns < r0))
            r0 = ready[i].ramp_start_ns;
        if (ready[i].ramp_end_ns > r1)
            r1 = ready[i].ramp_end_ns;
    }
    fprintf(stderr, "chat-bench: %" PRIu64 " connections open (%" PRIu64 " failed) in %.2f s\n", open, failed,
            r1 > r0 ? (double)(r1 - r0) / 1e9 : 0.0);
    sleep_s(plan.opts.settle);
    rep.rss_after_kib = rss_kib(pids, rep.rss_pids);
    if (plan.opts.hold > 0) {
        fprintf(stderr, "chat-bench: holding them for %.1f s\n", plan.opts.hold);
        sleep_s(plan.opts.hold);
    }
    if (plan.opts.rate > 0)
        fprintf(stderr, "chat-bench: sending %.0f msg/s for %.1f s\n", plan.opts.rate, plan.opts.duration);
    bench_go go = {.t0_ns = chat_mono_ns() + 200 * 1000000LL};
    for (int i = 0; i < plan.n_procs; i++)
        if (write(kids[i].to, &go, sizeof go) != (ssize_t)sizeof go) {
            fprintf(stderr, "chat-bench: worker %d is gone\n", i);
            stop_workers(&plan, kids);
            wait_workers(&plan, kids);
            goto out;
        }
    bool gathered = gather(&plan, kids, results, sizeof *results);
    if (gathered && plan.opts.rate > 0)
        fprintf(stderr, "chat-bench: drained\n");
    rep.rss_end_kib = rss_kib(pids, rep.rss_pids);
    if (!gathered)
        stop_workers(&plan, kids);
    int bad = wait_workers(&plan, kids);
    if (!gathered || bad) {
        fprintf(stderr, "chat-bench: %d worker%s failed\n", bad ? bad : 1, bad == 1 ? "" : "s");
        goto out;
    }
    for (int i = 0; i < plan.n_procs; i++)
        bench_result_merge(&rep.r, &results[i]);
    rep.wall_s = (double)(chat_mono_ns() - start) / 1e9;
    bench_report_print(stdout, &plan, &rep);
    fflush(stdout);
    if (plan.opts.json[0] && bench_report_write_json(plan.opts.json, &plan, &rep) != CHAT_OK)
        fprintf(stderr, "chat-bench: cannot write %s\n", plan.opts.json);
    rc = bench_report_ok(&rep) ? 0 : 1;
out:
    free(ready);
    free(results);
    bench_plan_free(&plan);
    chat_cfg_free(&cfg);
    return rc;
}
