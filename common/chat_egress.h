/* Egress policy: which addresses a server-side request to a URL someone else chose (the push
 * webhook, later hooks) may connect to. Public unicast only, unless CHAT_EGRESS_ALLOW names a
 * range. A policy is immutable after chat_egress_create and may be read from any thread. */
#ifndef CHAT_EGRESS_H
#define CHAT_EGRESS_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "chat_status.h"

/* What an address is; everything but CHAT_EGRESS_PUBLIC is refused unless allowed by name. */
typedef enum chat_egress_class {
    CHAT_EGRESS_PUBLIC = 0,   /* global unicast */
    CHAT_EGRESS_LOOPBACK,     /* 127.0.0.0/8, ::1 */
    CHAT_EGRESS_PRIVATE,      /* 10/8, 172.16/12, 192.168/16, fc00::/7 */
    CHAT_EGRESS_LINK_LOCAL,   /* 169.254/16, fe80::/10 */
    CHAT_EGRESS_METADATA,     /* cloud instance metadata: 169.254.169.254, 100.100.100.200, fd00:ec2::254 */
    CHAT_EGRESS_SHARED,       /* 100.64/10, carrier-grade NAT */
    CHAT_EGRESS_UNSPECIFIED,  /* 0.0.0.0/8, :: */
    CHAT_EGRESS_MULTICAST,    /* 224/4, ff00::/8 */
    CHAT_EGRESS_RESERVED,     /* documentation, benchmarking, 240/4, IPv6 outside 2000::/3, 6to4, Teredo */
    CHAT_EGRESS_NOT_IP,       /* a socket family other than IPv4 and IPv6 */
} chat_egress_class;

typedef struct chat_egress chat_egress;

/* Most ranges CHAT_EGRESS_ALLOW may name. */
#define CHAT_EGRESS_ALLOW_MAX 32

/* Parses allow, a comma separated list of addresses or CIDR ranges, IPv4 or IPv6 (e.g.
 * "127.0.0.0/8,::1"; "" allows nothing beyond public addresses). On CHAT_ERR_INVALID writes one
 * line naming the bad entry into err. *out, set only on CHAT_OK, is the caller's to destroy. */
chat_status chat_egress_create(const char *allow, chat_egress **out, char *err, size_t errsz);
void chat_egress_destroy(chat_egress *policy); /* NULL-safe */

/* What addr is. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) and one under the NAT64 prefix
 * 64:ff9b::/96 are what their IPv4 address is: that is where the connection ends up. */
chat_egress_class chat_egress_classify(const struct sockaddr *addr);
/* "public", "loopback", "private", ... for log lines. */
const char *chat_egress_class_name(chat_egress_class c);

/* Whether a connection to addr is allowed: a public address, or one inside a range the policy
 * allows. *class (may be NULL) gets what addr is. */
bool chat_egress_permits(const chat_egress *policy, const struct sockaddr *addr, chat_egress_class *class_out);

#endif
