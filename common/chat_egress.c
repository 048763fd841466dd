/* The egress policy: one table of special-purpose ranges (IANA's IPv4 and IPv6 special-purpose
 * registries, plus the cloud metadata addresses) and the allow list. Every address is compared in
 * IPv6 form, an IPv4 address as ::ffff:a.b.c.d. Pure after create; any thread. */
#include "chat_egress.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct range {
    unsigned char net[16];
    int bits; /* prefix length in the IPv6 form (an IPv4 /n is /96+n) */
} range;

struct chat_egress {
    range allow[CHAT_EGRESS_ALLOW_MAX];
    int nallow;
};

static const unsigned char V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
static const unsigned char NAT64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};

/* The special-purpose ranges, most specific first: the first that holds an address names it. */
static const struct special {
    const char *cidr;
    chat_egress_class class;
} specials[] = {
    {"169.254.169.254/32", CHAT_EGRESS_METADATA}, /* AWS, GCP, Azure, OpenStack, ... */
    {"100.100.100.200/32", CHAT_EGRESS_METADATA}, /* Alibaba Cloud */
    {"fd00:ec2::254/128", CHAT_EGRESS_METADATA},  /* AWS over IPv6 */
    {"0.0.0.0/8", CHAT_EGRESS_UNSPECIFIED},
    {"10.0.0.0/8", CHAT_EGRESS_PRIVATE},
    {"100.64.0.0/10", CHAT_EGRESS_SHARED},
    {"127.0.0.0/8", CHAT_EGRESS_LOOPBACK},
    {"169.254.0.0/16", CHAT_EGRESS_LINK_LOCAL},
    {"172.16.0.0/12", CHAT_EGRESS_PRIVATE},
    {"192.0.0.0/24", CHAT_EGRESS_RESERVED},
    {"192.0.2.0/24", CHAT_EGRESS_RESERVED},
    {"192.88.99.0/24", CHAT_EGRESS_RESERVED},
    {"192.168.0.0/16", CHAT_EGRESS_PRIVATE},
    {"198.18.0.0/15", CHAT_EGRESS_RESERVED},
    {"198.51.100.0/24", CHAT_EGRESS_RESERVED},
    {"203.0.113.0/24", CHAT_EGRESS_RESERVED},
    {"224.0.0.0/4", CHAT_EGRESS_MULTICAST},
    {"240.0.0.0/4", CHAT_EGRESS_RESERVED}, /* and 255.255.255.255 */
    {"::/128", CHAT_EGRESS_UNSPECIFIED},
    {"::1/128", CHAT_EGRESS_LOOPBACK},
    {"fc00::/7", CHAT_EGRESS_PRIVATE},
    {"fe80::/10", CHAT_EGRESS_LINK_LOCAL},
    {"ff00::/8", CHAT_EGRESS_MULTICAST},
    {"2001::/23", CHAT_EGRESS_RESERVED},     /* IETF protocol assignments, Teredo */
    {"2001:db8::/32", CHAT_EGRESS_RESERVED}, /* documentation */
    {"2002::/16", CHAT_EGRESS_RESERVED},     /* 6to4: the IPv4 address inside could be anything */
    {"2000::/3", CHAT_EGRESS_PUBLIC},        /* global unicast */
    {"::/0", CHAT_EGRESS_RESERVED},          /* the rest of IPv6 (IPv4-compatible ::/96, 100::/64, ...) */
};
#define NSPECIALS (sizeof specials / sizeof specials[0])

/* "a.b.c.d[/n]" or "v6[/n]" into r; false when it is neither. */
static bool parse_range(const char *text, range *r)
{
    char addr[64];
    const char *slash = strchr(text, '/');
    size_t len = slash ? (size_t)(slash - text) : strlen(text);
    if (len == 0 || len >= sizeof addr)
        return false;
    memcpy(addr, text, len);
    addr[len] = '\0';
    int max;
    unsigned char v4[4];
    if (inet_pton(AF_INET, addr, v4) == 1) {
        memcpy(r->net, V4_MAPPED, 12);
        memcpy(r->net + 12, v4, 4);
        max = 32;
    } else if (inet_pton(AF_INET6, addr, r->net) == 1) {
        max = 128;
    } else {
        return false;
    }
    int bits = max;
    if (slash) {
        char *end;
        long n = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end || n < 0 || n > max)
            return false;
        bits = (int)n;
    }
    r->bits = bits + (max == 32 ? 96 : 0);
    return true;
}

static bool in_range(const unsigned char *a, const range *r)
{
    int full = r->bits / 8, rest = r->bits % 8;
    if (memcmp(a, r->net, (size_t)full) != 0)
        return false;
    return rest == 0 || ((a[full] ^ r->net[full]) & (0xff << (8 - rest))) == 0;
}

/* addr in IPv6 form, with a NAT64 address turned into the IPv4 address it reaches; false when
 * addr is neither IPv4 nor IPv6. */
static bool normalize(const struct sockaddr *addr, unsigned char out[16])
{
    if (addr->sa_family == AF_INET) {
        memcpy(out, V4_MAPPED, 12);
        memcpy(out + 12, &((const struct sockaddr_in *)(const void *)addr)->sin_addr, 4);
        return true;
    }
    if (addr->sa_family != AF_INET6)
        return false;
    memcpy(out, &((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr, 16);
    if (memcmp(out, NAT64, 12) == 0)
        memcpy(out, V4_MAPPED, 12);
    return true;
}

/* An IPv4 address is compared with the IPv4 rows only (the IPv6 catch-all must not hold it),
 * an IPv6 one with the IPv6 rows. The table is parsed on each call: a few microseconds per
 * connection, and no state to set up. */
static chat_egress_class classify16(const unsigned char a[16])
{
    bool v4 = memcmp(a, V4_MAPPED, 12) == 0;
    for (size_t i = 0; i < NSPECIALS; i++) {
        range r;
        if (!parse_range(specials[i].cidr, &r) || (memcmp(r.net, V4_MAPPED, 12) == 0 && r.bits >= 96) != v4)
            continue;
        if (in_range(a, &r))
            return specials[i].class;
    }
    return CHAT_EGRESS_PUBLIC; /* an IPv4 address in no special range */
}

chat_egress_class chat_egress_classify(const struct sockaddr *addr)
{
    unsigned char a[16];
    return normalize(addr, a) ? classify16(a) : CHAT_EGRESS_NOT_IP;
}

const char *chat_egress_class_name(chat_egress_class c)
{
    static const char *names[] = {"public",      "loopback",  "private",  "link_local", "metadata",
                                  "shared_cgnat", "unspecified", "multicast", "reserved",   "not_ip"};
    return (unsigned)c < sizeof names / sizeof names[0] ? names[c] : "unknown";
}

bool chat_egress_permits(const chat_egress *policy, const struct sockaddr *addr, chat_egress_class *class_out)
{
    unsigned char a[16];
    chat_egress_class c = normalize(addr, a) ? classify16(a) : CHAT_EGRESS_NOT_IP;
    if (class_out)
        *class_out = c;
    if (c == CHAT_EGRESS_PUBLIC)
        return true;
    for (int i = 0; policy && c != CHAT_EGRESS_NOT_IP && i < policy->nallow; i++)
        if (in_range(a, &policy->allow[i]))
            return true;
    return false;
}

chat_status chat_egress_create(const char *allow, chat_egress **out, char *err, size_t errsz)
{
    chat_egress *p = calloc(1, sizeof *p);
    if (p == NULL)
        return CHAT_ERR_NOMEM;
    char *copy = strdup(allow ? allow : ""), *save = NULL;
    chat_status st = copy ? CHAT_OK : CHAT_ERR_NOMEM;
    for (char *e = copy ? strtok_r(copy, ",", &save) : NULL; e && st == CHAT_OK; e = strtok_r(NULL, ",", &save)) {
        e += strspn(e, " \t");
        size_t n = strlen(e);
        while (n > 0 && (e[n - 1] == ' ' || e[n - 1] == '\t'))
            e[--n] = '\0';
        if (n == 0)
            continue;
        if (p->nallow == CHAT_EGRESS_ALLOW_MAX) {
            snprintf(err, errsz, "at most %d ranges", CHAT_EGRESS_ALLOW_MAX);
            st = CHAT_ERR_INVALID;
        } else if (!parse_range(e, &p->allow[p->nallow++])) {
            snprintf(err, errsz, "\"%.64s\" is not an IPv4 or IPv6 address or CIDR range like 127.0.0.0/8 or ::1", e);
            st = CHAT_ERR_INVALID;
        }
    }
    free(copy);
    if (st != CHAT_OK) {
        free(p);
        return st;
    }
    *out = p;
    return CHAT_OK;
}

void chat_egress_destroy(chat_egress *policy)
{
    free(policy);
}
