/* The post validator: the limits at their edges, each fault in its order, and the rules that
 * differ between callers (kinds, UTF-8, meta_json left for later). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_post.h"
#include "unit_run.h"

static Chat__V1__Post text_post(void)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = "c1";
    p.cmid = "k1";
    p.sender = "alice";
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = "hello";
    return p;
}

/* A string of n 'x' (malloc'd, the caller frees it). */
static char *filler(size_t n)
{
    char *s = malloc(n + 1);
    memset(s, 'x', n);
    s[n] = '\0';
    return s;
}

START_TEST(accepts)
{
    Chat__V1__Post p = text_post();
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_OK);
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND | CHAT_POST_UTF8), CHAT_POST_OK);
    p.meta_json = "{\"a\":[1,2],\"b\":{}}";
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_UTF8), CHAT_POST_OK);
    p.body = "";
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_OK);
    char *body = filler(CHAT_BODY_MAX), *meta = filler(CHAT_META_MAX);
    meta[0] = '{';
    memcpy(meta + 1, "\"k\":\"", 5);
    meta[CHAT_META_MAX - 2] = '"';
    meta[CHAT_META_MAX - 1] = '}'; /* exactly the limit: {"k":"xxx...x"} */
    p.body = body;
    p.meta_json = meta;
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_UTF8), CHAT_POST_OK);
    free(body);
    free(meta);
}
END_TEST

START_TEST(kinds)
{
    Chat__V1__Post p = text_post();
    /* a backend's rules: text, system, and unspecified as text */
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM;
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_OK);
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_UNSPECIFIED;
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_OK);
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_BAD_KIND);
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT;
    p.target = 3;
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_BAD_KIND);
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_OK);
    p.kind = (Chat__V1__EventKind)99;
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_BAD_KIND);
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_BAD_KIND);

    /* changes need a target, reactions an emoji of 1-64 bytes */
    p = text_post();
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE;
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_CHANGE_NO_TARGET);
    p.target = 1;
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_OK);
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION;
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_BAD_EMOJI);
    char *emoji = filler(CHAT_EMOJI_MAX + 1);
    p.emoji = emoji;
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_BAD_EMOJI);
    emoji[CHAT_EMOJI_MAX] = '\0';
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_ANY_KIND), CHAT_POST_OK);
    free(emoji);
    ck_assert(chat_post_is_change(CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT));
    ck_assert(chat_post_is_change(CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION));
    ck_assert(!chat_post_is_change(CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT));
    ck_assert(!chat_post_is_change(CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM));
}
END_TEST

START_TEST(faults_in_order)
{
    ck_assert_int_eq(chat_post_validate(NULL, 0), CHAT_POST_MISSING);
    Chat__V1__Post p = text_post();
    p.conv = "a.b";
    p.sender = "";
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_BAD_CONV);
    p = text_post();
    p.cmid = "";
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_BAD_CMID);
    p = text_post();
    p.sender = "a b";
    p.kind = (Chat__V1__EventKind)42;
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_BAD_SENDER);

    char *big = filler(CHAT_BODY_MAX + 1);
    p = text_post();
    p.body = big;
    p.meta_json = "[1]";
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_BODY_TOO_LARGE);
    p = text_post();
    p.meta_json = big;
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_META_TOO_LARGE);
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_META_LATER), CHAT_POST_META_TOO_LARGE);
    free(big);

    /* UTF-8 only when asked for, and before meta_json */
    p = text_post();
    p.body = "\xff\xfe";
    p.meta_json = "[1]";
    ck_assert_int_eq(chat_post_validate(&p, CHAT_POST_UTF8), CHAT_POST_BODY_NOT_UTF8);
    ck_assert_int_eq(chat_post_validate(&p, 0), CHAT_POST_META_NOT_OBJECT);
}
END_TEST

START_TEST(meta)
{
    const char *bad[] = {"[1]", "1", "\"x\"", "{", "{\"a\":1,\"a\":2}", "null", NULL};
    Chat__V1__Post p = text_post();
    for (int i = 0; bad[i]; i++) {
        p.meta_json = (char *)bad[i];
        ck_assert_msg(chat_post_validate(&p, 0) == CHAT_POST_META_NOT_OBJECT, "accepted meta %s", bad[i]);
        ck_assert_msg(chat_post_validate(&p, CHAT_POST_META_LATER) == CHAT_POST_OK, "parsed meta %s", bad[i]);
        ck_assert_int_eq(chat_post_meta_fault(bad[i]), CHAT_POST_META_NOT_OBJECT);
    }
    ck_assert_int_eq(chat_post_meta_fault(""), CHAT_POST_OK);
    ck_assert_int_eq(chat_post_meta_fault("{}"), CHAT_POST_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_post");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, accepts);
    tcase_add_test(tc, kinds);
    tcase_add_test(tc, faults_in_order);
    tcase_add_test(tc, meta);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
