/* chatctl: the admin and backend CLI. `token` signs a client JWT; the conversation, send and
 * history commands talk to the api role over NATS request/reply (chat.api.v1.*, docs/nats.md);
 * the archive commands work on PostgreSQL and the object storage themselves (docs/storage.md).
 * One JSON line per result. Exit 0 ok, 1 failure, 2 usage. Main thread only. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <jansson.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_buf.h"
#include "chat_config.h"
#include "chat_frames.h"
#include "chat_id.h"
#include "chat_jwt.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_redact.h"
#include "chat_revoke.h"
#include "chat_time.h"
#include "chatctl_import.h"
#include "wk_archive.h"
#include "wk_objstore.h"
#include "wk_pg.h"

#define REQUEST_TIMEOUT_MS 10000
#define POST_TIMEOUT_MS 35000

static const char *usage =
    "chatctl COMMAND ...\n"
    "  token USER [--ttl SECONDS]        print a client JWT (default ttl 3600, at most CHAT_JWT_MAX_TTL), signed\n"
    "                                    with CHAT_JWT_SIGNING_KEY's key or CHAT_JWT_SECRET\n"
    "  conv create CONV USER...          create a conversation (the first user is its owner)\n"
    "  conv add CONV USER...             add members\n"
    "  conv remove CONV USER...          remove members\n"
    "  conv delete CONV                  delete a conversation (soft: history stays)\n"
    "  conv members CONV                 list the members\n"
    "  conv check CONV USER              is USER a member?\n"
    "  send CONV --from USER [--cmid K] [--system] [--meta JSON] TEXT...\n"
    "                                    post as USER; prints {\"conv\",\"seq\",\"id\",\"cmid\"} once committed\n"
    "  import [--window N] [--id ID] [--wait] [--live]\n"
    "                                    bulk-post JSON lines from stdin, one post each: {\"conv\",\"from\",\"text\",\n"
    "                                    \"cmid\"[,\"system\":true][,\"meta\":{...}]} (with --id, cmid defaults to ID-<line>);\n"
    "                                    up to N (128) unacknowledged at once; a bad line is named and skipped;\n"
    "                                    --wait: until each conversation's last post is stored; --live: in the live\n"
    "                                    lane with users' posts (chat.in.*.*.backend) instead of the bulk lane.\n"
    "                                    Run again after a failure: nothing is stored twice. Prints a summary line\n"
    "  history CONV [--limit N] [--before SEQ] [--as USER]\n"
    "                                    events newest first, one msg frame (JSON) per line\n"
    "  archive run [--pause-at STEP]     one pass of partition upkeep and archiving now; prints a summary\n"
    "                                    (--pause-at: stop after STEP and wait to be killed, for crash tests;\n"
    "                                    STEP is one of " WK_ARCHIVE_STEPS ")\n"
    "  archive status                    partitions (hot) and archived partitions (cold) with their objects\n"
    "  archive restore PARTITION         put an archived partition (e.g. messages_p1732752000) back into\n"
    "                                    PostgreSQL and delete its objects\n"
    "  revoke user USER [--before UNIX|now]\n"
    "                                    refuse USER's tokens issued before the time (default now: every token\n"
    "                                    issued so far, this second's included); every gateway closes the live\n"
    "                                    sessions they opened (4001) within about a second\n"
    "  revoke token TOKEN                refuse one token (by its jti) until it expires; TOKEN is read, not checked\n"
    "  revoke token JTI --until UNIX     the same by jti, until UNIX (the token's exp)\n"
    "The conv, send, import --wait and history commands need a chat-worker running the api role; revoke needs the bucket\n"
    "CHAT_REVOKED (chat-worker streams makes it) and a NATS user that may write it; the archive commands\n"
    "need CHAT_PG_DSN and CHAT_ARCHIVE_URL (and CHAT_S3_* for s3://) as the workers have them.";

static bool valid_id(const char *cmd, const char *what, const char *id)
{
    if (chat_id_valid(id))
        return true;
    fprintf(stderr, "chatctl %s: %s must be 1-64 characters of [A-Za-z0-9_-] (got \"%s\")\n", cmd, what, id);
    return false;
}

/* Parses a non-negative integer option value; false (and a line on stderr) when malformed. */
static bool parse_u64(const char *cmd, const char *flag, const char *text, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (text[0] == '\0' || text[0] == '-' || *end || errno || v > max) {
        fprintf(stderr, "chatctl %s: %s must be a number from 0 to %" PRIu64 " (got \"%s\")\n", cmd, flag, max, text);
        return false;
    }
    *out = v;
    return true;
}

static void print_json(json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(j);
}

static json_t *string_array(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static int connect_nats(const chat_cfg *cfg, natsConnection **nc)
{
    if (chat_nats_connect(cfg, "chatctl", true, nc) != CHAT_OK) {
        char shown[1024];
        chat_redact_url(cfg->nats_url, shown, sizeof shown);
        fprintf(stderr, "chatctl: cannot connect to NATS at %s (CHAT_NATS_URL)\n", shown);
        return 1;
    }
    return 0;
}

/* Sends req to chat.api.v1.<method> and waits for the reply (*out, destroyed by the caller).
 * Returns 0, or 1 after one line on stderr. */
static int api_request(natsConnection *nc, const char *method, const ProtobufCMessage *req, int64_t timeout_ms,
                       natsMsg **out)
{
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    protobuf_c_message_pack(req, buf);
    char subject[128];
    chat_subject_api(subject, sizeof subject, method);
    natsStatus s = natsConnection_Request(out, nc, subject, buf, (int)len, timeout_ms);
    free(buf);
    if (s == NATS_OK)
        return 0;
    if (s == NATS_NO_RESPONDERS)
        fprintf(stderr,
                "chatctl: no api worker answers on chat.api.v1.* (is chat-worker running with the api role?)\n");
    else if (s == NATS_TIMEOUT)
        fprintf(stderr, "chatctl: no answer on %s within %lld s\n", subject, (long long)(timeout_ms / 1000));
    else
        fprintf(stderr, "chatctl: request on %s failed: %s\n", subject, natsStatus_GetText(s));
    return 1;
}

/* Returns 0 for a success status; else prints "chatctl: <code>: <message>" and returns 1. */
static int check_status(const ProtobufCMessage *reply, const Chat__V1__Status *st)
{
    if (reply == NULL) {
        fprintf(stderr, "chatctl: malformed reply from the api role\n");
        return 1;
    }
    if (st == NULL || st->code[0] == '\0')
        return 0;
    fprintf(stderr, "chatctl: %s: %s\n", st->code, st->message);
    return 1;
}

#define REPLY_DATA(m) (size_t) natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m)

/* ------------------------------------------------------------------------------------------ */
/* conv                                                                                         */
/* ------------------------------------------------------------------------------------------ */

static int conv_create(natsConnection *nc, const char *conv, int argc, char **argv)
{
    Chat__V1__ConvCreateRequest q = CHAT__V1__CONV_CREATE_REQUEST__INIT;
    q.conv = (char *)conv;
    q.members = argv;
    q.n_members = (size_t)argc;
    q.owner = argv[0];
    natsMsg *m = NULL;
    int rc = api_request(nc, "conv.create", &q.base, REQUEST_TIMEOUT_MS, &m);
    if (rc)
        return rc;
    Chat__V1__ConvCreateReply *r = chat__v1__conv_create_reply__unpack(NULL, REPLY_DATA(m));
    rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
    if (rc == 0)
        print_json(json_pack("{s:s, s:b}", "conv", conv, "created", r->created));
    chat__v1__conv_create_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
    return rc;
}

static int conv_change(natsConnection *nc, const char *conv, bool add, int argc, char **argv)
{
    Chat__V1__MembersChangeRequest q = CHAT__V1__MEMBERS_CHANGE_REQUEST__INIT;
    q.conv = (char *)conv;
    q.users = argv;
    q.n_users = (size_t)argc;
    natsMsg *m = NULL;
    int rc = api_request(nc, add ? "members.add" : "members.remove", &q.base, REQUEST_TIMEOUT_MS, &m);
    if (rc)
        return rc;
    Chat__V1__MembersChangeReply *r = chat__v1__members_change_reply__unpack(NULL, REPLY_DATA(m));
    rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
    if (rc == 0)
        print_json(
            json_pack("{s:s, s:o}", "conv", conv, add ? "added" : "removed", string_array(r->changed, r->n_changed)));
    chat__v1__members_change_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
    return rc;
}

static int conv_delete(natsConnection *nc, const char *conv)
{
    Chat__V1__ConvDeleteRequest q = CHAT__V1__CONV_DELETE_REQUEST__INIT;
    q.conv = (char *)conv;
    natsMsg *m = NULL;
    int rc = api_request(nc, "conv.delete", &q.base, REQUEST_TIMEOUT_MS, &m);
    if (rc)
        return rc;
    Chat__V1__ConvDeleteReply *r = chat__v1__conv_delete_reply__unpack(NULL, REPLY_DATA(m));
    rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
    if (rc == 0)
        print_json(json_pack("{s:s, s:b}", "conv", conv, "deleted", 1));
    chat__v1__conv_delete_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
    return rc;
}

static int conv_members(natsConnection *nc, const char *conv)
{
    Chat__V1__MembersListRequest q = CHAT__V1__MEMBERS_LIST_REQUEST__INIT;
    q.conv = (char *)conv;
    natsMsg *m = NULL;
    int rc = api_request(nc, "members.list", &q.base, REQUEST_TIMEOUT_MS, &m);
    if (rc)
        return rc;
    Chat__V1__MembersListReply *r = chat__v1__members_list_reply__unpack(NULL, REPLY_DATA(m));
    rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
    if (rc == 0)
        print_json(json_pack("{s:s, s:o}", "conv", conv, "members", string_array(r->users, r->n_users)));
    chat__v1__members_list_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
    return rc;
}

static int conv_check(natsConnection *nc, const char *conv, const char *user)
{
    Chat__V1__MemberCheckRequest q = CHAT__V1__MEMBER_CHECK_REQUEST__INIT;
    q.conv = (char *)conv;
    q.user = (char *)user;
    natsMsg *m = NULL;
    int rc = api_request(nc, "members.check", &q.base, REQUEST_TIMEOUT_MS, &m);
    if (rc)
        return rc;
    Chat__V1__MemberCheckReply *r = chat__v1__member_check_reply__unpack(NULL, REPLY_DATA(m));
    rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
    if (rc == 0)
        print_json(json_pack("{s:s, s:s, s:b}", "conv", conv, "user", user, "member", r->member));
    chat__v1__member_check_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(m);
    return rc;
}

static int cmd_conv(const chat_cfg *cfg, int argc, char **argv)
{
    static const struct {
        const char *name;
        int min_users, max_users;
    } subs[] = {{"create", 1, 1 << 20}, {"add", 1, 1 << 20}, {"remove", 1, 1 << 20},
                {"delete", 0, 0},       {"members", 0, 0},   {"check", 1, 1}};
    int k = -1;
    for (int i = 0; argc > 0 && i < (int)(sizeof subs / sizeof subs[0]); i++)
        if (strcmp(argv[0], subs[i].name) == 0)
            k = i;
    if (k < 0) {
        fprintf(stderr, "chatctl conv: expected create, add, remove, delete, members or check (try --help)\n");
        return 2;
    }
    char cmd[32];
    snprintf(cmd, sizeof cmd, "conv %s", subs[k].name);
    int nusers = argc - 2;
    if (argc < 2 || nusers < subs[k].min_users || nusers > subs[k].max_users) {
        fprintf(stderr, "chatctl %s: expected CONV%s (try --help)\n", cmd,
                subs[k].max_users == 0   ? ""
                : subs[k].max_users == 1 ? " USER"
                                         : " USER...");
        return 2;
    }
    const char *conv = argv[1];
    if (!valid_id(cmd, "CONV", conv))
        return 2;
    for (int i = 2; i < argc; i++)
        if (strncmp(argv[i], "--", 2) == 0) {
            fprintf(stderr, "chatctl %s: unknown option \"%s\" (try --help)\n", cmd, argv[i]);
            return 2;
        } else if (!valid_id(cmd, "USER", argv[i])) {
            return 2;
        }
    natsConnection *nc = NULL;
    int rc = connect_nats(cfg, &nc);
    if (rc)
        return rc;
    switch (k) {
    case 0: rc = conv_create(nc, conv, nusers, argv + 2); break;
    case 1: rc = conv_change(nc, conv, true, nusers, argv + 2); break;
    case 2: rc = conv_change(nc, conv, false, nusers, argv + 2); break;
    case 3: rc = conv_delete(nc, conv); break;
    case 4: rc = conv_members(nc, conv); break;
    default: rc = conv_check(nc, conv, argv[2]); break;
    }
    natsConnection_Destroy(nc);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* send                                                                                         */
/* ------------------------------------------------------------------------------------------ */

static void random_cmid(char out[17])
{
    unsigned char r[8];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        uint64_t t = (uint64_t)chat_mono_ns() ^ (uint64_t)chat_now_ms() << 20;
        memcpy(r, &t, sizeof r);
    }
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
}

static int cmd_send(const chat_cfg *cfg, int argc, char **argv)
{
    const char *conv = NULL, *from = NULL, *cmid = NULL, *meta = NULL;
    bool system = false;
    chat_buf text = {0};
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--from") == 0 && has_value) {
            from = argv[++i];
        } else if (strcmp(a, "--cmid") == 0 && has_value) {
            cmid = argv[++i];
        } else if (strcmp(a, "--meta") == 0 && has_value) {
            meta = argv[++i];
        } else if (strcmp(a, "--system") == 0) {
            system = true;
        } else if (strncmp(a, "--", 2) == 0) {
            fprintf(stderr, "chatctl send: unknown option or missing value \"%s\" (try --help)\n", a);
            goto out;
        } else if (conv == NULL) {
            conv = a;
        } else {
            if (text.len)
                chat_buf_putc(&text, ' ');
            chat_buf_puts(&text, a);
        }
    }
    if (conv == NULL || from == NULL || text.len == 0) {
        fprintf(stderr, "chatctl send: expected CONV --from USER TEXT (try --help)\n");
        goto out;
    }
    if (!valid_id("send", "CONV", conv) || !valid_id("send", "--from", from) ||
        (cmid && !valid_id("send", "--cmid", cmid)))
        goto out;
    if (meta) {
        json_t *j = json_loads(meta, JSON_REJECT_DUPLICATES, NULL);
        bool object = j && json_is_object(j);
        json_decref(j);
        if (!object) {
            fprintf(stderr, "chatctl send: --meta must be a JSON object\n");
            goto out;
        }
    }
    char generated[17];
    if (cmid == NULL) {
        random_cmid(generated);
        cmid = generated;
    }
    natsConnection *nc = NULL;
    rc = connect_nats(cfg, &nc);
    if (rc)
        goto out;
    Chat__V1__Post post = CHAT__V1__POST__INIT;
    post.conv = (char *)conv;
    post.cmid = (char *)cmid;
    post.sender = (char *)from;
    post.kind = system ? CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM : CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    post.body = text.data;
    post.meta_json = (char *)(meta ? meta : "");
    Chat__V1__PostRequest q = CHAT__V1__POST_REQUEST__INIT;
    q.post = &post;
    natsMsg *m = NULL;
    rc = api_request(nc, "post", &q.base, POST_TIMEOUT_MS, &m);
    if (rc == 0) {
        Chat__V1__PostReply *r = chat__v1__post_reply__unpack(NULL, REPLY_DATA(m));
        rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
        if (rc == 0)
            print_json(
                json_pack("{s:s, s:I, s:s, s:s}", "conv", conv, "seq", (json_int_t)r->seq, "id", r->id, "cmid", cmid));
        chat__v1__post_reply__free_unpacked(r, NULL);
        natsMsg_Destroy(m);
    }
    natsConnection_Destroy(nc);
out:
    chat_buf_free(&text);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* history                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int cmd_history(const chat_cfg *cfg, int argc, char **argv)
{
    const char *conv = NULL, *as = "";
    uint64_t limit = 0, before = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--limit") == 0 && has_value) {
            if (!parse_u64("history", "--limit", argv[++i], 100, &limit))
                return 2;
        } else if (strcmp(a, "--before") == 0 && has_value) {
            if (!parse_u64("history", "--before", argv[++i], INT64_MAX, &before))
                return 2;
        } else if (strcmp(a, "--as") == 0 && has_value) {
            as = argv[++i];
            if (!valid_id("history", "--as", as))
                return 2;
        } else if (strncmp(a, "--", 2) == 0) {
            fprintf(stderr, "chatctl history: unknown option or missing value \"%s\" (try --help)\n", a);
            return 2;
        } else if (conv == NULL) {
            conv = a;
        } else {
            fprintf(stderr, "chatctl history: unexpected argument \"%s\"\n", a);
            return 2;
        }
    }
    if (conv == NULL) {
        fprintf(stderr, "chatctl history: expected CONV (try --help)\n");
        return 2;
    }
    if (!valid_id("history", "CONV", conv))
        return 2;
    natsConnection *nc = NULL;
    int rc = connect_nats(cfg, &nc);
    if (rc)
        return rc;
    Chat__V1__HistoryRequest q = CHAT__V1__HISTORY_REQUEST__INIT;
    q.conv = (char *)conv;
    q.user = (char *)as;
    q.before = before;
    q.limit = (uint32_t)limit;
    natsMsg *m = NULL;
    rc = api_request(nc, "history", &q.base, REQUEST_TIMEOUT_MS, &m);
    if (rc == 0) {
        Chat__V1__HistoryReply *r = chat__v1__history_reply__unpack(NULL, REPLY_DATA(m));
        rc = check_status(r ? &r->base : NULL, r ? r->status : NULL);
        chat_buf line = {0};
        for (size_t i = 0; rc == 0 && i < r->n_events; i++) {
            chat_buf_reset(&line);
            chat_frame_render(chat_event_json(r->events[i]), &line);
            printf("%s\n", line.data);
        }
        chat_buf_free(&line);
        chat__v1__history_reply__free_unpacked(r, NULL);
        natsMsg_Destroy(m);
    }
    natsConnection_Destroy(nc);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* archive                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static json_t *report_json(const wk_archive_report *r)
{
    double secs = (double)r->archive_ms / 1000.0;
    return json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:f, s:I, s:s}", "partitions_created",
                     r->partitions_created, "partitions_reshaped", r->partitions_reshaped, "archived", r->archived,
                     "resumed", r->resumed, "undone", r->abandoned, "failed", r->failed, "rows", (json_int_t)r->rows,
                     "bytes", (json_int_t)r->bytes, "raw_bytes", (json_int_t)r->raw_bytes, "seconds", secs,
                     "rows_per_second", (json_int_t)(secs > 0 ? (double)r->rows / secs : 0.0), "error", r->error);
}

static int archive_status(PGconn *pg)
{
    PGresult *r = PQexec(pg, "SELECT row_to_json(s)::text FROM chat_archive_status s");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "chatctl archive status: %s", PQresultErrorMessage(r));
        PQclear(r);
        return 1;
    }
    for (int i = 0; i < PQntuples(r); i++)
        printf("%s\n", PQgetvalue(r, i, 0));
    PQclear(r);
    return 0;
}

static int cmd_archive(const chat_cfg *cfg, int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "";
    const char *pause_at = NULL, *partition = NULL;
    bool run = strcmp(sub, "run") == 0, status = strcmp(sub, "status") == 0, restore = strcmp(sub, "restore") == 0;
    if (!run && !status && !restore) {
        fprintf(stderr, "chatctl archive: expected run, status or restore (try --help)\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (run && strcmp(argv[i], "--pause-at") == 0 && i + 1 < argc) {
            pause_at = argv[++i];
            char steps[] = WK_ARCHIVE_STEPS;
            bool known = false;
            for (char *save = NULL, *t = strtok_r(steps, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
                known = known || strcmp(t, pause_at) == 0;
            if (!known) {
                fprintf(stderr, "chatctl archive run: --pause-at must be one of %s (got \"%s\")\n", WK_ARCHIVE_STEPS,
                        pause_at);
                return 2;
            }
        } else if (restore && partition == NULL && strncmp(argv[i], "--", 2) != 0) {
            partition = argv[i];
        } else {
            fprintf(stderr, "chatctl archive %s: unexpected argument \"%s\" (try --help)\n", sub, argv[i]);
            return 2;
        }
    }
    if (restore && partition == NULL) {
        fprintf(stderr, "chatctl archive restore: expected PARTITION, e.g. messages_p1732752000 (see chatctl archive "
                        "status)\n");
        return 2;
    }
    PGconn *pg = NULL;
    if (wk_pg_connect(cfg->pg_dsn, "chatctl-archive", &pg) != CHAT_OK) {
        char shown[1024];
        chat_redact_dsn(cfg->pg_dsn, shown, sizeof shown);
        fprintf(stderr, "chatctl archive: cannot connect to PostgreSQL (CHAT_PG_DSN %s)\n", shown);
        return 1;
    }
    int rc = 0;
    if (status) {
        rc = archive_status(pg);
        PQfinish(pg);
        return rc;
    }
    wk_objstore *os = NULL;
    if (wk_objstore_create(cfg, &os) != CHAT_OK) {
        fprintf(stderr, "chatctl archive: cannot set up the object storage\n");
        PQfinish(pg);
        return 1;
    }
    wk_archive_options opt = {.pause_at = pause_at, .lock_wait_ms = 60000};
    wk_archive_report rep;
    chat_status st =
        restore ? wk_archive_restore(cfg, pg, os, partition, &opt, &rep) : wk_archive_pass(cfg, pg, os, &opt, &rep);
    json_t *j = report_json(&rep);
    if (restore)
        json_object_set_new(j, "partition", json_string(partition));
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(4));
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(j);
    if (st != CHAT_OK) {
        fprintf(stderr, "chatctl archive %s: %s: %s\n", sub, chat_status_str(st), rep.error[0] ? rep.error : "failed");
        rc = st == CHAT_ERR_NOT_FOUND && restore ? 2 : 1;
    }
    wk_objstore_destroy(os);
    PQfinish(pg);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* token                                                                                        */
/* ------------------------------------------------------------------------------------------ */

static int cmd_token(const chat_cfg *cfg, int argc, char **argv)
{
    const char *user = NULL;
    int64_t max_ttl = chat_jwt_policy_max_ttl(cfg->jwt);
    long ttl = max_ttl < 3600 ? (long)max_ttl : 3600;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc) {
            char *end;
            ttl = strtol(argv[++i], &end, 10);
            if (*end || ttl <= 0) {
                fprintf(stderr, "chatctl token: --ttl must be a positive number of seconds\n");
                return 2;
            }
        } else if (user == NULL) {
            user = argv[i];
        } else {
            fprintf(stderr, "chatctl token: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (user == NULL || !chat_id_valid(user)) {
        fprintf(stderr, "chatctl token: USER must be 1-64 characters of [A-Za-z0-9_-]\n");
        return 2;
    }
    if (ttl > max_ttl) {
        fprintf(stderr, "chatctl token: --ttl %ld is over CHAT_JWT_MAX_TTL (%lld s): gateways would refuse it\n", ttl,
                (long long)max_ttl);
        return 2;
    }
    if (!chat_jwt_policy_can_sign(cfg->jwt)) {
        fprintf(stderr, "chatctl token: no key to sign with: set CHAT_JWT_SECRET, or CHAT_JWT_SIGNING_KEY to a kid "
                        "of CHAT_JWT_KEYS with its private key\n");
        return 2;
    }
    char *token = NULL;
    if (chat_jwt_issue(cfg->jwt, user, chat_now_ms() / 1000, ttl, &token) != CHAT_OK) {
        fprintf(stderr, "chatctl token: cannot sign\n");
        return 1;
    }
    printf("%s\n", token);
    free(token);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* revoke                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* How a revocation written to CHAT_REVOKED is confirmed on the broker's disk (revoke_put). */
#define REVOKE_WRITES 5     /* writes at most (a broker that keeps losing them is not trusted) */
#define REVOKE_READ_TRIES 60 /* reads back, a second apart, while the broker does not answer */

/* Whether CHAT_REVOKED still has key at revision rev or later with a value at least `value`
 * (a later revocation of the same key is as strong): 1 yes, 0 no (lost), -1 the broker does not
 * answer now. */
static int revoke_kept(kvStore *kv, const char *key, uint64_t rev, int64_t value)
{
    kvEntry *e = NULL;
    natsStatus s = kvStore_Get(&e, kv, key);
    if (s == NATS_NOT_FOUND)
        return 0;
    if (s != NATS_OK)
        return -1;
    bool kept = kvEntry_Revision(e) >= rev && kvEntry_ValueString(e) != NULL &&
                strtoll(kvEntry_ValueString(e), NULL, 10) >= value;
    kvEntry_Destroy(e);
    return kept ? 1 : 0;
}

/* Writes key = value and, with a broker that fsyncs on an interval (CHAT_NATS_SYNC), waits until
 * the write is on its disk: once the interval has passed (chat_nats_synced_after_ms) it reads the
 * key back, and writes it again when a broker that lost its unsynced writes (a power loss) no
 * longer has it. Nothing else keeps a copy of a revocation, so chatctl answers only for one that
 * holds. NATS_OK, or what failed. */
static natsStatus revoke_write_synced(const chat_cfg *cfg, kvStore *kv, const char *key, int64_t value)
{
    char text[24];
    snprintf(text, sizeof text, "%lld", (long long)value);
    for (int write = 0; write < REVOKE_WRITES; write++) {
        uint64_t rev = 0;
        natsStatus s = kvStore_PutString(&rev, kv, key, text);
        if (s != NATS_OK || cfg->nats_sync_ms == 0)
            return s; /* `always`: on disk before its PubAck */
        chat_sleep_ms(chat_nats_synced_after_ms(cfg->nats_sync_ms));
        int kept = -1;
        for (int read = 0; read < REVOKE_READ_TRIES && (kept = revoke_kept(kv, key, rev, value)) < 0; read++)
            chat_sleep_ms(1000);
        if (kept > 0)
            return NATS_OK;
        if (kept < 0)
            return NATS_TIMEOUT;
        fprintf(stderr, "chatctl revoke: the broker lost the revocation before it was on its disk; writing it again\n");
    }
    return NATS_ERR;
}

/* Puts key = value (unix seconds) into the CHAT_REVOKED bucket, on the broker's disk. 0, or 1
 * after one line. */
static int revoke_put(const chat_cfg *cfg, const char *key, int64_t value)
{
    natsConnection *nc = NULL;
    if (connect_nats(cfg, &nc) != 0)
        return 1;
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    natsStatus s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK)
        s = js_KeyValue(&kv, js, CHAT_REVOKE_BUCKET);
    if (s == NATS_NOT_FOUND)
        fprintf(stderr, "chatctl revoke: the bucket " CHAT_REVOKE_BUCKET " does not exist (chat-worker streams "
                        "creates it)\n");
    else if (s == NATS_OK && (s = revoke_write_synced(cfg, kv, key, value)) != NATS_OK)
        fprintf(stderr, "chatctl revoke: not confirmed on the broker's disk: %s (%s); run it again\n",
                natsStatus_GetText(s), nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
    else if (s != NATS_OK)
        fprintf(stderr, "chatctl revoke: cannot open the bucket " CHAT_REVOKE_BUCKET ": %s\n", natsStatus_GetText(s));
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return s == NATS_OK ? 0 : 1;
}

/* revoke user USER [--before UNIX|now] */
static int revoke_user(const chat_cfg *cfg, int argc, char **argv)
{
    int64_t now = chat_now_ms() / 1000;
    /* "now" refuses this second's tokens too: iat has whole seconds, and one issued a moment
     * before the revocation must not pass */
    int64_t before = now + 1;
    const char *user = NULL;
    for (int i = 0; i < argc; i++) {
        uint64_t v;
        if (strcmp(argv[i], "--before") == 0 && i + 1 < argc) {
            if (strcmp(argv[++i], "now") != 0 && !parse_u64("revoke user", "--before", argv[i], 1ULL << 40, &v))
                return 2;
            before = strcmp(argv[i], "now") == 0 ? now + 1 : (int64_t)v;
        } else if (user == NULL) {
            user = argv[i];
        } else {
            fprintf(stderr, "chatctl revoke user: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    char key[CHAT_REVOKE_KEY_MAX];
    if (user == NULL || !chat_revoke_key_user(key, user)) {
        fprintf(stderr, "chatctl revoke user: USER must be 1-64 characters of [A-Za-z0-9_-]\n");
        return 2;
    }
    /* the bucket keeps an entry CHAT_JWT_MAX_TTL + 5 minutes from now: a later time would be forgotten
     * while tokens it refuses are still valid */
    if (before < 1 || before > now + 1 + CHAT_JWT_LEEWAY_S) {
        fprintf(stderr, "chatctl revoke user: --before must be a past unix time or now\n");
        return 2;
    }
    int rc = revoke_put(cfg, key, before);
    if (rc == 0)
        print_json(json_pack("{s:s, s:s, s:I}", "revoked", "user", "user", user, "not_before", (json_int_t)before));
    return rc;
}

/* revoke token TOKEN | revoke token JTI --until UNIX */
static int revoke_token(const chat_cfg *cfg, int argc, char **argv)
{
    const char *arg = NULL;
    int64_t until = 0;
    for (int i = 0; i < argc; i++) {
        uint64_t v;
        if (strcmp(argv[i], "--until") == 0 && i + 1 < argc) {
            if (!parse_u64("revoke token", "--until", argv[++i], 1ULL << 40, &v))
                return 2;
            until = (int64_t)v;
        } else if (arg == NULL) {
            arg = argv[i];
        } else {
            fprintf(stderr, "chatctl revoke token: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    chat_jwt_claims c;
    memset(&c, 0, sizeof c);
    if (arg && strchr(arg, '.') && chat_jwt_peek(arg, &c) == CHAT_OK) {
        if (c.jti[0] == '\0') {
            fprintf(stderr, "chatctl revoke token: the token has no jti: revoke its user (%s) instead\n", c.user);
            return 2;
        }
        until = until ? until : c.exp;
    } else if (arg && arg[0] && strlen(arg) <= CHAT_JWT_JTI_MAX && until > 0) {
        snprintf(c.jti, sizeof c.jti, "%s", arg);
    } else {
        fprintf(stderr, "chatctl revoke token: give a token, or a jti (1-%d characters) with --until UNIX\n",
                CHAT_JWT_JTI_MAX);
        return 2;
    }
    int64_t now = chat_now_ms() / 1000;
    if (until > now + cfg->jwt_max_ttl_s + CHAT_JWT_LEEWAY_S) {
        fprintf(stderr, "chatctl revoke token: --until is more than CHAT_JWT_MAX_TTL away: the bucket would forget "
                        "it first; revoke the user instead\n");
        return 2;
    }
    char key[CHAT_REVOKE_KEY_MAX];
    chat_revoke_key_token(key, c.jti);
    int rc = revoke_put(cfg, key, until);
    if (rc == 0)
        print_json(json_pack("{s:s, s:s, s:s, s:I}", "revoked", "token", "jti", c.jti, "key", key, "until",
                             (json_int_t)until));
    return rc;
}

static int cmd_revoke(const chat_cfg *cfg, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "user") == 0)
        return revoke_user(cfg, argc - 1, argv + 1);
    if (argc >= 1 && strcmp(argv[0], "token") == 0)
        return revoke_token(cfg, argc - 1, argv + 1);
    fprintf(stderr, "chatctl revoke: user USER [--before UNIX|now] | token TOKEN | token JTI --until UNIX\n");
    return 2;
}

int main(int argc, char **argv)
{
    chat_cfg cfg;
    chat_cfg_load_or_exit(&cfg, CHAT_PROG_CTL, "chatctl", usage, argc, argv);
    /* chatctl reports a failure in one line of its own; the library's log lines (connects,
     * disconnects) only with CHAT_LOG=debug */
    if (cfg.log_level < CHAT_LOG_DEBUG)
        chat_log_set_level((chat_log_level)(CHAT_LOG_ERROR - 1));
    int rc = 2;
    const char *cmd = cfg.nargs > 0 ? cfg.args[0] : "";
    if (cfg.nargs == 0) {
        chat_cfg_print_help(CHAT_PROG_CTL, "chatctl", usage);
    } else if (strcmp(cmd, "token") == 0) {
        rc = cmd_token(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else if (strcmp(cmd, "conv") == 0) {
        rc = cmd_conv(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else if (strcmp(cmd, "send") == 0) {
        rc = cmd_send(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else if (strcmp(cmd, "import") == 0) {
        rc = chatctl_import(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else if (strcmp(cmd, "history") == 0) {
        rc = cmd_history(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else if (strcmp(cmd, "archive") == 0) {
        rc = cmd_archive(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else if (strcmp(cmd, "revoke") == 0) {
        rc = cmd_revoke(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else {
        fprintf(stderr, "chatctl: unknown command \"%s\" (try --help)\n", cmd);
    }
    chat_cfg_free(&cfg);
    chat_nats_shutdown();
    return rc;
}
