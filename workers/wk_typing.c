/* The typing relay: chat.typing.<conv> in, Delivery{typing} to the other members out. Its
 * subscription's delivery thread runs every callback and owns the PostgreSQL connection. */
#include "wk_typing.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "chat.pb-c.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_pg.h"
#include "wk_routes.h"
#include "wk_sub.h"

#define TYPING_QUEUE "api"
#define PG_RETRY_MS 1000
#define DRAIN_TIMEOUT_MS 5000

struct wk_typing {
    wk_app *app;
    natsSubscription *sub;
    PGconn *pg;                 /* delivery thread only */
    int64_t pg_retry_at_ms;     /* monotonic; delivery thread only */
    pthread_mutex_t lock;       /* guards done */
    pthread_cond_t cv;
    bool done;                  /* the delivery thread returned from its last callback */
    atomic_uint_fast64_t *m_relayed, *m_refused;
    wk_routes *routes;          /* delivery thread only: the members' routes (wk_routes.h) */
};

/* The connection, (re)made at most once a second while PostgreSQL is away; NULL then. */
static PGconn *pg_of(wk_typing *t)
{
    if (t->pg && PQstatus(t->pg) == CONNECTION_OK)
        return t->pg;
    int64_t now = chat_mono_ms();
    if (now < t->pg_retry_at_ms)
        return NULL;
    t->pg_retry_at_ms = now + PG_RETRY_MS;
    PQfinish(t->pg);
    t->pg = NULL;
    if (wk_pg_connect(t->app->cfg->pg_dsn, "chat-typing", &t->pg) != CHAT_OK)
        t->pg = NULL;
    return t->pg;
}

/* The members of the live conversation conv (the caller PQclears), or NULL on a database error. */
static PGresult *members_of(wk_typing *t, const char *conv)
{
    PGconn *pg = pg_of(t);
    if (pg == NULL)
        return NULL;
    const char *p[] = {conv};
    PGresult *r = PQexecParams(pg,
                               "SELECT m.user_id FROM conversation_members m JOIN conversations c"
                               " ON c.id = m.conversation_id AND c.deleted_at IS NULL"
                               " WHERE m.conversation_id = $1",
                               1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        LOG_WARN("typing", "event=members_failed conv=%s detail=\"%s\"", conv, PQerrorMessage(pg));
        PQclear(r);
        return NULL;
    }
    return r;
}

static bool has_member(PGresult *r, const char *user)
{
    for (int i = 0; i < PQntuples(r); i++)
        if (strcmp(PQgetvalue(r, i, 0), user) == 0)
            return true;
    return false;
}

/* Sends the typing to every member but the typist. */
static void relay(wk_typing *t, PGresult *members, const Chat__V1__Typing *in)
{
    Chat__V1__Typing out = CHAT__V1__TYPING__INIT;
    out.conv = in->conv;
    out.user = in->user;
    out.ts_ms = chat_now_ms(); /* the relay's clock, not the publisher's */
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_TYPING;
    d.typing = &out;
    int n = 0;
    const char **to = chat_xcalloc((size_t)PQntuples(members) + 1, sizeof *to);
    for (int i = 0; i < PQntuples(members); i++)
        if (strcmp(PQgetvalue(members, i, 0), in->user) != 0)
            to[n++] = PQgetvalue(members, i, 0);
    wk_routes_deliver(t->routes, t->app->nc, &d, to, n);
    free(to);
}

static void on_typing(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    wk_typing *t = closure;
    const char *subject = natsMsg_GetSubject(msg);
    const char *conv = chat_subject_typing_parse(subject);
    if (conv == NULL)
        conv = "";
    Chat__V1__Typing *in = chat__v1__typing__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                    (const uint8_t *)natsMsg_GetData(msg));
    /* the subject names the conversation; a typing that says otherwise is refused, not believed */
    bool valid = in && chat_id_valid(in->conv) && chat_id_valid(in->user) && strcmp(in->conv, conv) == 0;
    PGresult *members = valid ? members_of(t, in->conv) : NULL;
    if (members && has_member(members, in->user)) {
        relay(t, members, in);
        atomic_fetch_add(t->m_relayed, 1);
    } else if (members || !valid) {
        LOG_DEBUG("typing", "event=typing_refused conv=%s reason=%s", conv, valid ? "not_member" : "malformed");
        atomic_fetch_add(t->m_refused, 1);
    } /* else the database is away: typing is a hint, dropped */
    PQclear(members);
    chat__v1__typing__free_unpacked(in, NULL);
    natsMsg_Destroy(msg);
}

static void on_complete(void *closure)
{
    wk_typing *t = closure;
    pthread_mutex_lock(&t->lock);
    t->done = true;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->lock);
}

chat_status wk_typing_start(wk_app *app, wk_typing **out)
{
    wk_typing *t = calloc(1, sizeof *t);
    if (t == NULL)
        return CHAT_ERR_NOMEM;
    t->app = app;
    pthread_mutex_init(&t->lock, NULL);
    chat_cond_init_mono(&t->cv);
    t->m_relayed = chat_metrics_counter(app->metrics, "chat_typing_total", "result=\"relayed\"",
                                        "Typing notices from gateways, relayed to the members or refused.");
    t->m_refused = chat_metrics_counter(app->metrics, "chat_typing_total", "result=\"refused\"",
                                        "Typing notices from gateways, relayed to the members or refused.");
    const char *help = "Recipients of relayed typing notices: reached through their gateways, or dropped because "
                       "Redis did not answer.";
    t->routes = wk_routes_create(
        app->cfg, "typing", chat_metrics_counter(app->metrics, "chat_typing_deliveries_total", "path=\"gateway\"", help),
        chat_metrics_counter(app->metrics, "chat_typing_deliveries_total", "path=\"dropped\"", help));
    chat_status st = chat_nats_check(
        natsConnection_QueueSubscribe(&t->sub, app->nc, CHAT_SUBJECT_TYPING_ALL, TYPING_QUEUE, on_typing, t), "typing",
        "subscribe");
    if (st == CHAT_OK)
        st = chat_nats_check(natsSubscription_SetOnCompleteCB(t->sub, on_complete, t), "typing", "on_complete");
    if (st != CHAT_OK) {
        wk_typing_destroy(t);
        return st;
    }
    *out = t;
    return CHAT_OK;
}

void wk_typing_destroy(wk_typing *t)
{
    if (t == NULL)
        return;
    bool done = t->sub == NULL || wk_sub_end(t->sub, DRAIN_TIMEOUT_MS, &t->lock, &t->cv, &t->done);
    if (!done) {
        /* a callback may still run: leave its state alone rather than free it under it */
        LOG_WARN("typing", "event=stop_timeout");
        return;
    }
    natsSubscription_Destroy(t->sub);
    PQfinish(t->pg);
    wk_routes_destroy(t->routes);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
