/* The notify role's webhook delivery: one POST of a push to CHAT_PUSH_WEBHOOK_URL through the
 * egress policy, timed and logged. Threads: the pullers, each with its own CURL handle. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>

#include "chat_egress_curl.h"
#include "chat_log.h"
#include "chat_time.h"
#include "wk_notifyp.h"

#define CONNECT_TIMEOUT_MS 2000
#define POST_TIMEOUT_MS 5000

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *ctx)
{
    (void)ptr;
    (void)ctx;
    return size * nmemb;
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* POSTs one push; true on a 2xx. One log line either way. */
bool ntf_post(ntf_puller *p, const char *user, const char *body, int nconvs, int64_t unread)
{
    wk_notify *w = p->n;
    if (p->curl == NULL && (p->curl = curl_easy_init()) == NULL) {
        LOG_ERROR("notify", "event=push_failed user=%s reason=curl_init", user);
        atomic_fetch_add(w->m_failures, 1);
        return false;
    }
    CURL *c = p->curl;
    char push_id[64];
    snprintf(push_id, sizeof push_id, "Chat-Push-Id: %016" PRIx64, fnv1a64(body));
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    headers = curl_slist_append(headers, push_id);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, w->app->cfg->push_webhook_url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "chat-notify/1");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)POST_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
    /* the webhook's address is someone else's choice: public addresses only, checked on the
     * address each connection goes to, no redirects, no proxy (chat_egress_curl.h) */
    chat_egress_guard guard = {.policy = w->egress};
    chat_egress_curl_guard(c, &guard);
    int64_t t0 = chat_mono_ns();
    CURLcode rc = curl_easy_perform(c);
    int64_t us = (chat_mono_ns() - t0) / 1000;
    chat_histogram_observe_us(w->h_webhook, us);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    bool ok = rc == CURLE_OK && status >= 200 && status < 300;
    if (ok) {
        atomic_fetch_add(w->m_pushes, 1);
        LOG_INFO("notify", "event=pushed user=%s conversations=%d unread=%lld status=%ld ms=%lld", user, nconvs,
                 (long long)unread, status, (long long)(us / 1000));
    } else {
        atomic_fetch_add(w->m_failures, 1);
        char error[160];
        if (guard.refused[0])
            snprintf(error, sizeof error, "egress refused: %s is not a public address (CHAT_EGRESS_ALLOW)",
                     guard.refused);
        else
            snprintf(error, sizeof error, "%s", rc == CURLE_OK ? "not 2xx" : curl_easy_strerror(rc));
        LOG_WARN("notify", "event=push_failed user=%s status=%ld error=\"%s\" ms=%lld", user, status, error,
                 (long long)(us / 1000));
    }
    return ok;
}
