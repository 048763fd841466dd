/* The egress policy on a libcurl handle: every socket the transfer opens is checked against the
 * policy with the address it is about to connect to (after DNS, so a name that resolves to a
 * private address is refused too), redirects are not followed, and no proxy from the environment
 * is used (the check must see the address actually connected). Thread: the transfer's. */
#ifndef CHAT_EGRESS_CURL_H
#define CHAT_EGRESS_CURL_H
#include <curl/curl.h>

#include "chat_egress.h"

/* What the guard of one transfer saw; set policy, then pass it to chat_egress_curl_guard. */
typedef struct chat_egress_guard {
    const chat_egress *policy; /* borrowed; must outlive the transfer */
    char refused[96];          /* "10.0.0.1 (private)" when a connection was refused, else "" */
} chat_egress_guard;

/* Applies the guard to c for its next transfers (again after every curl_easy_reset). guard is
 * borrowed and must outlive them. A refused connection makes the transfer fail with
 * CURLE_COULDNT_CONNECT and fills guard->refused. */
void chat_egress_curl_guard(CURL *c, chat_egress_guard *guard);

#endif
