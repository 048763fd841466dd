/* Metric registry and Prometheus text rendering. */
#include "chat_metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_status.h"

enum { M_COUNTER, M_GAUGE, M_GAUGE_FN, M_HIST };

typedef struct series {
    int type;
    const char *name, *labels, *help;
    union {
        atomic_uint_fast64_t counter;
        atomic_int_fast64_t gauge;
        chat_histogram hist;
        struct {
            chat_gauge_fn fn;
            void *ctx;
        } gfn;
    } v;
    struct series *next;
} series;

struct chat_metrics {
    pthread_mutex_t lock;
    series *head, *tail;
};

/* Upper bounds in microseconds: 100us .. 60s, roughly x2 steps. */
static const int64_t hist_bounds_us[CHAT_HIST_BUCKETS] = {
    100, 250, 500, 1000, 2000, 3000, 5000, 7500, 10000, 15000, 25000, 50000, 75000,
    100000, 250000, 500000, 1000000, 2000000, 5000000, 10000000, 30000000, 60000000};

chat_metrics *chat_metrics_create(void)
{
    chat_metrics *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void chat_metrics_destroy(chat_metrics *m)
{
    if (m == NULL)
        return;
    for (series *s = m->head, *n; s; s = n) {
        n = s->next;
        free(s);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static series *add(chat_metrics *m, int type, const char *name, const char *labels, const char *help)
{
    series *s = calloc(1, sizeof *s);
    if (s == NULL)
        CHAT_OOM();
    s->type = type;
    s->name = name;
    s->labels = labels;
    s->help = help;
    pthread_mutex_lock(&m->lock);
    if (m->tail)
        m->tail->next = s;
    else
        m->head = s;
    m->tail = s;
    pthread_mutex_unlock(&m->lock);
    return s;
}

atomic_uint_fast64_t *chat_metrics_counter(chat_metrics *m, const char *name, const char *labels,
                                           const char *help)
{
    return &add(m, M_COUNTER, name, labels, help)->v.counter;
}

atomic_int_fast64_t *chat_metrics_gauge(chat_metrics *m, const char *name, const char *labels,
                                        const char *help)
{
    return &add(m, M_GAUGE, name, labels, help)->v.gauge;
}

void chat_metrics_gauge_fn(chat_metrics *m, const char *name, const char *labels, const char *help,
                           chat_gauge_fn fn, void *ctx)
{
    series *s = add(m, M_GAUGE_FN, name, labels, help);
    s->v.gfn.fn = fn;
    s->v.gfn.ctx = ctx;
}

chat_histogram *chat_metrics_histogram(chat_metrics *m, const char *name, const char *labels,
                                       const char *help)
{
    return &add(m, M_HIST, name, labels, help)->v.hist;
}

void chat_histogram_observe_us(chat_histogram *h, int64_t us)
{
    if (us < 0)
        us = 0;
    int i = 0;
    while (i < CHAT_HIST_BUCKETS && us > hist_bounds_us[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)us, memory_order_relaxed);
}

/* ---- process basics from /proc/self ---- */

static double proc_rss(void *ctx)
{
    (void)ctx;
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static double count_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    double n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static double proc_fds(void *ctx)
{
    (void)ctx;
    return count_dir("/proc/self/fd") - 1; /* minus the one opendir holds */
}

static double proc_threads(void *ctx)
{
    (void)ctx;
    return count_dir("/proc/self/task");
}

static double start_time;
static double proc_start(void *ctx)
{
    (void)ctx;
    return start_time;
}

void chat_metrics_add_process(chat_metrics *m)
{
    start_time = (double)time(NULL);
    chat_metrics_gauge_fn(m, "process_resident_memory_bytes", NULL, "Resident memory size in bytes.",
                          proc_rss, NULL);
    chat_metrics_gauge_fn(m, "process_open_fds", NULL, "Number of open file descriptors.", proc_fds, NULL);
    chat_metrics_gauge_fn(m, "process_threads", NULL, "Number of OS threads.", proc_threads, NULL);
    chat_metrics_gauge_fn(m, "process_start_time_seconds", NULL, "Start time since the Unix epoch.",
                          proc_start, NULL);
}

/* ---- rendering ---- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void bprintf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(n > 0 ? n : 256);
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL)
            CHAT_OOM();
    }
}

static const char *type_name(int t)
{
    return t == M_COUNTER ? "counter" : t == M_HIST ? "histogram" : "gauge";
}

static void series_name(buf *b, const series *s, const char *suffix, const char *extra)
{
    bprintf(b, "%s%s", s->name, suffix);
    bool l = s->labels && s->labels[0];
    if (l || extra)
        bprintf(b, "{%s%s%s}", l ? s->labels : "", l && extra ? "," : "", extra ? extra : "");
}

char *chat_metrics_render(chat_metrics *m, size_t *len)
{
    buf b = {.p = malloc(4096), .cap = 4096};
    if (b.p == NULL)
        CHAT_OOM();
    b.p[0] = '\0';
    const char *last = "";
    pthread_mutex_lock(&m->lock);
    for (series *s = m->head; s; s = s->next) {
        if (strcmp(s->name, last) != 0) {
            bprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name, type_name(s->type));
            last = s->name;
        }
        switch (s->type) {
        case M_COUNTER:
            series_name(&b, s, "", NULL);
            bprintf(&b, " %llu\n", (unsigned long long)atomic_load(&s->v.counter));
            break;
        case M_GAUGE:
            series_name(&b, s, "", NULL);
            bprintf(&b, " %lld\n", (long long)atomic_load(&s->v.gauge));
            break;
        case M_GAUGE_FN:
            series_name(&b, s, "", NULL);
            bprintf(&b, " %.17g\n", s->v.gfn.fn(s->v.gfn.ctx));
            break;
        case M_HIST: {
            uint64_t cum = 0;
            char le[48];
            for (int i = 0; i <= CHAT_HIST_BUCKETS; i++) {
                cum += atomic_load(&s->v.hist.buckets[i]);
                if (i < CHAT_HIST_BUCKETS)
                    snprintf(le, sizeof le, "le=\"%g\"", (double)hist_bounds_us[i] / 1e6);
                else
                    snprintf(le, sizeof le, "le=\"+Inf\"");
                series_name(&b, s, "_bucket", le);
                bprintf(&b, " %llu\n", (unsigned long long)cum);
            }
            series_name(&b, s, "_sum", NULL);
            bprintf(&b, " %.6f\n", (double)atomic_load(&s->v.hist.sum_us) / 1e6);
            series_name(&b, s, "_count", NULL);
            bprintf(&b, " %llu\n", (unsigned long long)atomic_load(&s->v.hist.count));
            break;
        }
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (len)
        *len = b.len;
    return b.p;
}
