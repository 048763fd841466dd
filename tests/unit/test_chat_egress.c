/* chat_egress: the addresses a request to a URL someone else chose may connect to. Public unicast
 * yes; loopback, private, link-local, cloud metadata, CGNAT, unspecified, multicast and reserved
 * no, in IPv4, IPv6 and IPv6 forms of IPv4 addresses alike; CHAT_EGRESS_ALLOW opens named ranges. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "chat_egress.h"
#include "unit_run.h"

/* text as a sockaddr (IPv4 or IPv6) */
static struct sockaddr_storage addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, text, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, text, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    else
        ck_abort_msg("test address %s does not parse", text);
    return ss;
}

static chat_egress_class class_of(const char *text)
{
    struct sockaddr_storage ss = addr(text);
    return chat_egress_classify((struct sockaddr *)&ss);
}

static bool permits(const chat_egress *p, const char *text)
{
    struct sockaddr_storage ss = addr(text);
    return chat_egress_permits(p, (struct sockaddr *)&ss, NULL);
}

static const struct {
    const char *addr;
    chat_egress_class class;
} cases[] = {
    {"93.184.216.34", CHAT_EGRESS_PUBLIC},
    {"8.8.8.8", CHAT_EGRESS_PUBLIC},
    {"2606:4700:4700::1111", CHAT_EGRESS_PUBLIC},
    {"::ffff:8.8.8.8", CHAT_EGRESS_PUBLIC},
    {"127.0.0.1", CHAT_EGRESS_LOOPBACK},
    {"127.255.255.254", CHAT_EGRESS_LOOPBACK},
    {"::1", CHAT_EGRESS_LOOPBACK},
    {"::ffff:127.0.0.1", CHAT_EGRESS_LOOPBACK}, /* IPv4-mapped IPv6 */
    {"64:ff9b::7f00:1", CHAT_EGRESS_LOOPBACK},  /* NAT64 of 127.0.0.1 */
    {"10.1.2.3", CHAT_EGRESS_PRIVATE},
    {"172.16.0.1", CHAT_EGRESS_PRIVATE},
    {"172.31.255.255", CHAT_EGRESS_PRIVATE},
    {"172.32.0.1", CHAT_EGRESS_PUBLIC},
    {"192.168.1.1", CHAT_EGRESS_PRIVATE},
    {"::ffff:10.0.0.1", CHAT_EGRESS_PRIVATE},
    {"fd00::1", CHAT_EGRESS_PRIVATE},
    {"fc00::1", CHAT_EGRESS_PRIVATE},
    {"169.254.169.254", CHAT_EGRESS_METADATA},
    {"::ffff:169.254.169.254", CHAT_EGRESS_METADATA},
    {"100.100.100.200", CHAT_EGRESS_METADATA},
    {"fd00:ec2::254", CHAT_EGRESS_METADATA},
    {"169.254.1.1", CHAT_EGRESS_LINK_LOCAL},
    {"fe80::1", CHAT_EGRESS_LINK_LOCAL},
    {"100.64.0.1", CHAT_EGRESS_SHARED},
    {"100.127.255.255", CHAT_EGRESS_SHARED},
    {"100.128.0.1", CHAT_EGRESS_PUBLIC},
    {"0.0.0.0", CHAT_EGRESS_UNSPECIFIED},
    {"0.1.2.3", CHAT_EGRESS_UNSPECIFIED},
    {"::", CHAT_EGRESS_UNSPECIFIED},
    {"224.0.0.1", CHAT_EGRESS_MULTICAST},
    {"ff02::1", CHAT_EGRESS_MULTICAST},
    {"255.255.255.255", CHAT_EGRESS_RESERVED},
    {"240.0.0.1", CHAT_EGRESS_RESERVED},
    {"192.0.2.1", CHAT_EGRESS_RESERVED},
    {"198.18.0.1", CHAT_EGRESS_RESERVED},
    {"2001:db8::1", CHAT_EGRESS_RESERVED},
    {"2001::1", CHAT_EGRESS_RESERVED},       /* Teredo */
    {"2002:7f00:1::1", CHAT_EGRESS_RESERVED}, /* 6to4 of 127.0.0.1 */
    {"::127.0.0.1", CHAT_EGRESS_RESERVED},    /* IPv4-compatible (deprecated) */
    {"100::1", CHAT_EGRESS_RESERVED},
};

START_TEST(classifies)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(class_of(cases[i].addr) == cases[i].class, "%s: %s, want %s", cases[i].addr,
                      chat_egress_class_name(class_of(cases[i].addr)), chat_egress_class_name(cases[i].class));
}
END_TEST

START_TEST(default_policy_public_only)
{
    chat_egress *p = NULL;
    char err[160];
    ck_assert_int_eq(chat_egress_create("", &p, err, sizeof err), CHAT_OK);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(permits(p, cases[i].addr) == (cases[i].class == CHAT_EGRESS_PUBLIC), "%s", cases[i].addr);
    ck_assert(!permits(NULL, "127.0.0.1")); /* no policy: public only too */
    ck_assert(permits(NULL, "8.8.8.8"));
    struct sockaddr_storage unix_like;
    memset(&unix_like, 0, sizeof unix_like);
    unix_like.ss_family = AF_UNIX;
    chat_egress_class c;
    ck_assert(!chat_egress_permits(p, (struct sockaddr *)&unix_like, &c));
    ck_assert_int_eq(c, CHAT_EGRESS_NOT_IP);
    chat_egress_destroy(p);
}
END_TEST

START_TEST(allow_named_ranges)
{
    chat_egress *p = NULL;
    char err[160];
    ck_assert_int_eq(chat_egress_create(" 127.0.0.0/8 , ::1,10.1.0.0/16,fd12::/16", &p, err, sizeof err), CHAT_OK);
    ck_assert(permits(p, "127.0.0.1"));
    ck_assert(permits(p, "::ffff:127.0.0.2")); /* the IPv4 range holds its mapped form */
    ck_assert(permits(p, "::1"));
    ck_assert(permits(p, "10.1.200.3"));
    ck_assert(!permits(p, "10.2.0.1"));
    ck_assert(permits(p, "fd12:3::1"));
    ck_assert(!permits(p, "fd13::1"));
    ck_assert(!permits(p, "169.254.169.254"));
    ck_assert(!permits(p, "192.168.0.1"));
    ck_assert(permits(p, "8.8.8.8"));
    chat_egress_destroy(p);
    ck_assert_int_eq(chat_egress_create("127.0.0.1", &p, err, sizeof err), CHAT_OK); /* one address */
    ck_assert(permits(p, "127.0.0.1"));
    ck_assert(!permits(p, "127.0.0.2"));
    chat_egress_destroy(p);
    chat_egress_destroy(NULL);
}
END_TEST

START_TEST(refuses_bad_lists)
{
    const char *bad[] = {"localhost", "127.0.0.0/33", "::1/129", "10.0.0.0/", "1.2.3", "/8", "10.0.0.0/8x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        chat_egress *p = NULL;
        char err[160] = "";
        ck_assert_msg(chat_egress_create(bad[i], &p, err, sizeof err) == CHAT_ERR_INVALID, "%s accepted", bad[i]);
        ck_assert_ptr_null(p);
        ck_assert_msg(strstr(err, "is not an IPv4 or IPv6 address") != NULL, "%s: %s", bad[i], err);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_egress");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, classifies);
    tcase_add_test(tc, default_policy_public_only);
    tcase_add_test(tc, allow_named_ranges);
    tcase_add_test(tc, refuses_bad_lists);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
