/* The running stack as the integration tests see it: settings, tokens, unique ids, chatctl and
 * connections. Main thread of a test program (or its Check child). */
#include "test_stack.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat_jwt.h"

/* ------------------------------------------------------------------ settings */

/* Parses one shell word as chat_shell_quote writes it ('...' runs, \x escapes, plain
 * characters) into out; false on an unterminated quote. */
static bool shell_word(const char *s, char *out, size_t outsz)
{
    size_t o = 0;
    while (*s && *s != '\n' && *s != ' ' && *s != '\t') {
        if (*s == '\'') {
            s++;
            while (*s && *s != '\'') {
                if (o + 1 < outsz)
                    out[o++] = *s;
                s++;
            }
            if (*s != '\'')
                return false;
            s++;
        } else if (*s == '\\' && s[1]) {
            if (o + 1 < outsz)
                out[o++] = s[1];
            s += 2;
        } else {
            if (o + 1 < outsz)
                out[o++] = *s;
            s++;
        }
    }
    out[o] = '\0';
    return true;
}

/* Sets every `export NAME=value` of file that the environment does not have. */
static void load_env_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        const char *p = line;
        if (strncmp(p, "export ", 7) != 0)
            continue;
        p += 7;
        const char *eq = strchr(p, '=');
        if (!eq || eq == p || (size_t)(eq - p) > 128)
            continue;
        char name[129], value[8192];
        memcpy(name, p, (size_t)(eq - p));
        name[eq - p] = '\0';
        if (shell_word(eq + 1, value, sizeof value) && getenv(name) == NULL)
            setenv(name, value, 0);
    }
    fclose(f);
}

static bool is_executable(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && access(path, X_OK) == 0;
}

chat_status test_stack_load(test_stack *st, char *err, size_t errsz)
{
    memset(st, 0, sizeof *st);
    const char *home = getenv("CHAT_HOME");
    if (home && home[0]) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/env", home);
        load_env_file(path);
    }
    if (!getenv("CHAT_GATEWAY_LISTEN")) {
        snprintf(err, errsz,
                 "no running stack: neither CHAT_GATEWAY_LISTEN nor $CHAT_HOME/env (%s) is set; "
                 "run through scripts/test, or `. .local/env` after scripts/up",
                 home ? home : "CHAT_HOME unset");
        return CHAT_ERR_NOT_FOUND;
    }
    char *argv[] = {"test", NULL};
    if (chat_cfg_load(&st->cfg, CHAT_PROG_CTL | CHAT_PROG_GATEWAY, 1, argv, err, errsz) != CHAT_OK)
        return CHAT_ERR_INVALID;
    snprintf(st->gateway_host, sizeof st->gateway_host, "%s", st->cfg.gateway_listen.host);
    st->gateway_port = st->cfg.gateway_listen.port;

    const char *build = getenv("CHAT_BUILD_DIR");
    if (build && build[0]) {
        snprintf(st->build_dir, sizeof st->build_dir, "%s", build);
        snprintf(st->chatctl, sizeof st->chatctl, "%s/bin/chatctl", st->build_dir);
    } else {
        /* next to this test's own binary (build/bin) */
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = '\0';
            char *slash = strrchr(self, '/');
            if (slash)
                *slash = '\0';
            snprintf(st->chatctl, sizeof st->chatctl, "%s/chatctl", self);
            slash = strrchr(self, '/');
            if (slash)
                *slash = '\0';
            snprintf(st->build_dir, sizeof st->build_dir, "%s", self);
        }
    }
    if (!is_executable(st->chatctl)) {
        snprintf(err, errsz, "chatctl not found at \"%s\" (CHAT_BUILD_DIR=%s)", st->chatctl, build ? build : "unset");
        return CHAT_ERR_INVALID;
    }
    return CHAT_OK;
}

void test_stack_load_or_exit(test_stack *st, const char *progname)
{
    char err[512];
    chat_status s = test_stack_load(st, err, sizeof err);
    if (s == CHAT_ERR_NOT_FOUND) {
        printf("SKIP: %s: %s\n", progname, err);
        test_stack_free(st);
        exit(TEST_STACK_SKIP);
    }
    if (s != CHAT_OK) {
        fprintf(stderr, "%s: %s\n", progname, err);
        test_stack_free(st);
        exit(1);
    }
}

void test_stack_free(test_stack *st)
{
    if (st)
        chat_cfg_free(&st->cfg);
}

/* ------------------------------------------------------------------ ids and tokens */

static void base36(unsigned long long v, char *out, size_t outsz)
{
    char tmp[32];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdefghijklmnopqrstuvwxyz"[v % 36];
        v /= 36;
    } while (v && n < sizeof tmp);
    size_t o = 0;
    while (n > 0 && o + 1 < outsz)
        out[o++] = tmp[--n];
    out[o] = '\0';
}

void test_stack_unique_id(const char *prefix, char *out, size_t outsz)
{
    static unsigned long counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char t[16], p[16], n[16];
    base36((unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000, t, sizeof t);
    base36((unsigned long long)getpid(), p, sizeof p);
    base36(counter++, n, sizeof n);
    snprintf(out, outsz, "%s-%s%s%s", prefix, t, p, n);
}

char *test_stack_token(const test_stack *st, const char *user, int64_t ttl_s)
{
    char *token = NULL;
    if (chat_jwt_sign(user, st->cfg.jwt_secret, (int64_t)time(NULL), ttl_s, &token) != CHAT_OK) {
        fprintf(stderr, "test_stack_token: cannot sign a token for \"%s\"\n", user);
        abort();
    }
    return token;
}

/* ------------------------------------------------------------------ chatctl */

/* Appends s as one single-quoted shell word. */
static void append_quoted(char **cmd, size_t *len, size_t *cap, const char *s)
{
    size_t need = *len + 4 * strlen(s) + 4;
    if (need > *cap) {
        while (*cap < need)
            *cap = *cap ? *cap * 2 : 256;
        *cmd = realloc(*cmd, *cap);
        if (!*cmd)
            abort();
    }
    char *o = *cmd + *len;
    *o++ = ' ';
    *o++ = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            memcpy(o, "'\\''", 4);
            o += 4;
        } else {
            *o++ = *s;
        }
    }
    *o++ = '\'';
    *o = '\0';
    *len = (size_t)(o - *cmd);
}

int test_stack_chatctl(const test_stack *st, char **out, const char *arg, ...)
{
    char *cmd = NULL;
    size_t len = 0, cap = 0;
    append_quoted(&cmd, &len, &cap, st->chatctl);
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a; a = va_arg(ap, const char *))
        append_quoted(&cmd, &len, &cap, a);
    va_end(ap);
    if (out)
        *out = NULL;
    fflush(NULL);
    FILE *p = popen(cmd, "r");
    if (!p) {
        fprintf(stderr, "test_stack_chatctl: popen(%s): %s\n", cmd, strerror(errno));
        free(cmd);
        return -1;
    }
    char *buf = NULL;
    size_t blen = 0, bcap = 0;
    for (;;) {
        if (bcap - blen < 4096) {
            bcap = bcap ? bcap * 2 : 8192;
            buf = realloc(buf, bcap);
            if (!buf)
                abort();
        }
        size_t n = fread(buf + blen, 1, bcap - blen - 1, p);
        if (n == 0)
            break;
        blen += n;
    }
    buf[blen] = '\0';
    int status = pclose(p);
    free(cmd);
    if (out)
        *out = buf;
    else
        free(buf);
    if (status < 0 || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

/* ------------------------------------------------------------------ connections */

chat_status test_stack_connect(const test_stack *st, const char *user, int timeout_ms, ws_client **out, json_t **hello,
                               char *why, size_t whysz)
{
    *out = NULL;
    *hello = NULL;
    char *token = test_stack_token(st, user, 3600);
    char auth[CHAT_JWT_MAX_LEN + 64];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    free(token);
    const char *headers[] = {auth, NULL};
    ws_connect_opts o = {.host = st->gateway_host,
                         .port = st->gateway_port,
                         .path = "/ws",
                         .headers = headers,
                         .timeout_ms = timeout_ms};
    ws_connect_info info;
    ws_client *c = NULL;
    chat_status s = ws_client_connect(&o, &c, &info);
    if (s != CHAT_OK) {
        snprintf(why, whysz, "connect as %s to %s:%d/ws: %s (HTTP %d) %.200s", user, st->gateway_host, st->gateway_port,
                 info.error, info.http_status, info.body);
        return s;
    }
    s = ws_client_recv_json(c, timeout_ms, hello);
    if (s != CHAT_OK) {
        snprintf(why, whysz, "connected as %s, but no first frame within %d ms: %s (%s)", user, timeout_ms,
                 chat_status_str(s), ws_client_error(c));
        ws_client_destroy(c);
        return s;
    }
    *out = c;
    return CHAT_OK;
}

/* ------------------------------------------------------------------ frames */

chat_status test_recv_type(ws_client *c, const char *type, int timeout_ms, json_t **out, json_t *skipped)
{
    int64_t deadline = test_mono_ms() + timeout_ms;
    *out = NULL;
    for (;;) {
        int64_t left = deadline - test_mono_ms();
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(c, left < 0 ? 0 : (int)left, &f);
        if (s != CHAT_OK)
            return s;
        const char *t = test_str(f, "type");
        if (t && strcmp(t, type) == 0) {
            *out = f;
            return CHAT_OK;
        }
        if (skipped)
            json_array_append_new(skipped, f);
        else
            json_decref(f);
    }
}

const char *test_json(const json_t *j)
{
    static char bufs[16][640];
    static unsigned next;
    char *b = bufs[next++ % 16];
    if (!j) {
        snprintf(b, sizeof bufs[0], "(none)");
        return b;
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        snprintf(b, sizeof bufs[0], "(unprintable)");
        return b;
    }
    size_t n = strlen(text);
    if (n > sizeof bufs[0] - 1) {
        size_t keep = sizeof bufs[0] - 32;
        memcpy(b, text, keep);
        snprintf(b + keep, 32, "...(%zu bytes)", n);
    } else {
        memcpy(b, text, n + 1);
    }
    free(text);
    return b;
}

const char *test_str(const json_t *frame, const char *key)
{
    return json_string_value(json_object_get(frame, key));
}

int64_t test_int(const json_t *frame, const char *key)
{
    json_t *v = json_object_get(frame, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

int64_t test_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

chat_status test_recv_by(ws_client *c, int64_t deadline_ms, json_t **out)
{
    *out = NULL;
    int64_t left = deadline_ms - test_mono_ms();
    if (left <= 0)
        return CHAT_ERR_TIMEOUT;
    return ws_client_recv_json(c, (int)left, out);
}
