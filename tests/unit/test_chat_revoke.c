/* Revocation keys and values (common/chat_revoke.c): what chatctl writes, the gateway reads; and the
 * set of revocations that the gateway and workers check tokens against (common/chat_revoke_set.c). */
#include <check.h>
#include <stdio.h>
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

/* Verified claims of user, issued at iat (0: none), with jti ("" : none). */
static chat_jwt_claims claims_of(const char *user, int64_t iat, const char *jti)
{
    chat_jwt_claims c = {.exp = 2000000000, .iat = iat};
    snprintf(c.user, sizeof c.user, "%s", user);
    snprintf(c.jti, sizeof c.jti, "%s", jti);
    return c;
}

START_TEST(set_user_and_token)
{
    chat_revoke_set *s = chat_revoke_set_create();
    char user[CHAT_ID_MAX + 1] = "", key[CHAT_REVOKE_KEY_MAX];
    ck_assert(!chat_revoke_set_is_loaded(s));
    ck_assert_int_eq(chat_revoke_set_put(s, "u.alice", 1000, 1, user), CHAT_REVOKE_USER);
    ck_assert_str_eq(user, "alice");
    /* a user's tokens issued before not_before, or without iat, are refused; later ones pass */
    chat_jwt_claims before = claims_of("alice", 999, ""), after = claims_of("alice", 1000, "");
    chat_jwt_claims none = claims_of("alice", 0, ""), bob = claims_of("bob", 1, "");
    ck_assert(chat_revoke_set_refuses(s, &before));
    ck_assert(chat_revoke_set_refuses(s, &none));
    ck_assert(!chat_revoke_set_refuses(s, &after));
    ck_assert(!chat_revoke_set_refuses(s, &bob));
    /* a later put moves not_before */
    ck_assert_int_eq(chat_revoke_set_put(s, "u.alice", 2000, 1, NULL), CHAT_REVOKE_USER);
    ck_assert(chat_revoke_set_refuses(s, &after));
    /* j.: the token whose jti hashes to the key, whoever it belongs to and whenever issued */
    chat_revoke_key_token(key, "tok-1");
    ck_assert_int_eq(chat_revoke_set_put(s, key, 1500, 1, user), CHAT_REVOKE_TOKEN);
    chat_jwt_claims t1 = claims_of("bob", 1, "tok-1"), t2 = claims_of("bob", 1, "tok-2");
    ck_assert(chat_revoke_set_refuses(s, &t1));
    ck_assert(!chat_revoke_set_refuses(s, &t2));
    ck_assert_uint_eq(chat_revoke_set_size(s), 2);
    /* delete */
    chat_revoke_set_delete(s, key);
    chat_revoke_set_delete(s, "u.nobody");
    ck_assert(!chat_revoke_set_refuses(s, &t1));
    ck_assert_uint_eq(chat_revoke_set_size(s), 1);
    /* keys that are neither form are not kept */
    ck_assert_int_eq(chat_revoke_set_put(s, "x.y", 1000, 1, user), 0);
    ck_assert_int_eq(chat_revoke_set_put(s, "j.abc", 1000, 1, NULL), 0);
    ck_assert_int_eq(chat_revoke_set_put(s, "u.a.b", 1000, 1, NULL), 0);
    ck_assert_uint_eq(chat_revoke_set_size(s), 1);
    chat_revoke_set_destroy(s);
    chat_revoke_set_destroy(NULL);
}
END_TEST

START_TEST(set_loaded_drops_older_watch)
{
    chat_revoke_set *s = chat_revoke_set_create();
    chat_revoke_set_put(s, "u.alice", 1000, 1, NULL);
    chat_revoke_set_put(s, "u.bob", 1000, 1, NULL);
    ck_assert_uint_eq(chat_revoke_set_loaded(s, 1), 0);
    ck_assert(chat_revoke_set_is_loaded(s));
    /* watch 2 re-delivers alice only (bob was deleted while no watch ran) and adds carol */
    chat_revoke_set_put(s, "u.alice", 1000, 2, NULL);
    chat_revoke_set_put(s, "u.carol", 1000, 2, NULL);
    ck_assert_uint_eq(chat_revoke_set_loaded(s, 2), 1);
    ck_assert(chat_revoke_set_is_loaded(s));
    ck_assert_uint_eq(chat_revoke_set_size(s), 2);
    chat_jwt_claims alice = claims_of("alice", 1, ""), bob = claims_of("bob", 1, ""), carol = claims_of("carol", 1, "");
    ck_assert(chat_revoke_set_refuses(s, &alice));
    ck_assert(!chat_revoke_set_refuses(s, &bob));
    ck_assert(chat_revoke_set_refuses(s, &carol));
    chat_revoke_set_destroy(s);
}
END_TEST

START_TEST(set_trim)
{
    chat_revoke_set *s = chat_revoke_set_create();
    char key[CHAT_REVOKE_KEY_MAX];
    chat_revoke_key_token(key, "tok-1");
    chat_revoke_set_put(s, "u.alice", 1000, 1, NULL); /* refuses until 1000 + 3600 + leeway */
    chat_revoke_set_put(s, key, 1000, 1, NULL);       /* until 1000 + leeway */
    ck_assert_uint_eq(chat_revoke_set_trim(s, 1000 + CHAT_JWT_LEEWAY_S, 3600), 0);
    ck_assert_uint_eq(chat_revoke_set_trim(s, 1000 + CHAT_JWT_LEEWAY_S + 1, 3600), 1);
    chat_jwt_claims alice = claims_of("alice", 1, "");
    ck_assert(chat_revoke_set_refuses(s, &alice));
    ck_assert_uint_eq(chat_revoke_set_trim(s, 1000 + 3600 + CHAT_JWT_LEEWAY_S, 3600), 0);
    ck_assert_uint_eq(chat_revoke_set_trim(s, 1000 + 3600 + CHAT_JWT_LEEWAY_S + 1, 3600), 1);
    ck_assert_uint_eq(chat_revoke_set_size(s), 0);
    chat_revoke_set_destroy(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_revoke");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, keys);
    tcase_add_test(tc, values_and_rule);
    tcase_add_test(tc, set_user_and_token);
    tcase_add_test(tc, set_loaded_drops_older_watch);
    tcase_add_test(tc, set_trim);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
