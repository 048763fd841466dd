/* chat_egress_curl_guard: libcurl's open-socket callback asks chat_egress before each connect. */
#include "chat_egress_curl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* CURLOPT_OPENSOCKETFUNCTION: called with the resolved address of every connection attempt (each
 * address of a name, IPv4 and IPv6 alike); CURL_SOCKET_BAD refuses it. */
static curl_socket_t open_checked(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    chat_egress_guard *g = clientp;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, &a->addr, a->addrlen < sizeof ss ? a->addrlen : sizeof ss);
    chat_egress_class c;
    if (purpose != CURLSOCKTYPE_IPCXN || !chat_egress_permits(g->policy, (struct sockaddr *)&ss, &c)) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
        snprintf(g->refused, sizeof g->refused, "%s (%s)", ip,
                 purpose != CURLSOCKTYPE_IPCXN ? "not a connection" : chat_egress_class_name(c));
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

void chat_egress_curl_guard(CURL *c, chat_egress_guard *guard)
{
    guard->refused[0] = '\0';
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_checked);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, guard);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
}
