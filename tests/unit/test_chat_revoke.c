/* Revocation keys and values (common/chat_revoke.c): what chatctl writes, the gateway reads. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_revoke.h"
#include "unit_run.h"

START_TEST(keys)
{
    char key[CHAT_REVOKE_KEY_MAX], user[CHAT_ID_MAX + 1];
    ck_assert(chat_revoke_key_user(key, "alice_1"));
    ck_assert_str_eq(key, "u.alice_1");
    ck_assert_int_eq(chat_revoke_key_parse(key, user), CHAT_REVOKE_USER);
    ck_assert_str_eq(user, "alice_1");
    ck_assert(!chat_revoke_key_user(key, "a.b"));
    ck_assert(!chat_revoke_key_user(key, ""));
    /* any jti, dots and spaces included, becomes a valid KV key: SHA-256 in hex (of "abc" here) */
    chat_revoke_key_token(key, "abc");
    ck_assert_str_eq(key, "j.ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ck_assert_int_eq(chat_revoke_key_parse(key, NULL), CHAT_REVOKE_TOKEN);
    ck_assert(chat_revoke_jti_id("abc") == 0xba7816bf8f01cfeaULL);
    ck_assert(chat_revoke_key_jti_id(key) == chat_revoke_jti_id("abc"));
    ck_assert(chat_revoke_jti_id("a b.c*>") != 0);
    ck_assert_int_eq(chat_revoke_key_parse("x.y", NULL), 0);
    ck_assert_int_eq(chat_revoke_key_parse("j.abc", NULL), 0);
    ck_assert_int_eq(chat_revoke_key_parse("u.", NULL), 0);
}
END_TEST

START_TEST(values_and_rule)
{
    int64_t v = 0;
    ck_assert(chat_revoke_value_parse("1767225600", 10, &v));
    ck_assert_int_eq(v, 1767225600);
    ck_assert(!chat_revoke_value_parse("", 0, &v));
    ck_assert(!chat_revoke_value_parse("-1", 2, &v));
    ck_assert(!chat_revoke_value_parse("0", 1, &v));
    ck_assert(!chat_revoke_value_parse("12a", 3, &v));
    ck_assert(!chat_revoke_value_parse("99999999999999", 14, &v));
    /* a user's tokens issued before not_before, or without iat, are refused */
    ck_assert(chat_revoke_user_refuses(100, 99));
    ck_assert(chat_revoke_user_refuses(100, 0));
    ck_assert(!chat_revoke_user_refuses(100, 100));
    /* an entry refuses nothing once every token it refuses has expired (leeway included) */
    ck_assert_int_eq(chat_revoke_entry_until(CHAT_REVOKE_USER, 1000, 3600), 1000 + 3600 + CHAT_JWT_LEEWAY_S);
    ck_assert_int_eq(chat_revoke_entry_until(CHAT_REVOKE_TOKEN, 5000, 3600), 5000 + CHAT_JWT_LEEWAY_S);
    ck_assert_int_eq(chat_revoke_keep_s(86400), 86400 + CHAT_REVOKE_KEEP_EXTRA_S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_revoke");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, keys);
    tcase_add_test(tc, values_and_rule);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
