/* The string map: keys are copied (the caller's buffer may change), values are the caller's,
 * entries survive growth, removal returns the value, each visits every entry once. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_map.h"
#include "chat_partition.h"
#include "unit_run.h"

START_TEST(put_get_replace_remove)
{
    chat_map *m = chat_map_create();
    char key[16] = "alice";
    int a = 1, b = 2;
    void *old = &a;
    chat_map_put(m, key, &a, &old);
    ck_assert_ptr_null(old);
    strcpy(key, "zzzzz"); /* the map holds its own copy */
    ck_assert_ptr_eq(chat_map_get(m, "alice"), &a);
    ck_assert_ptr_null(chat_map_get(m, "zzzzz"));
    chat_map_put(m, "alice", &b, &old);
    ck_assert_ptr_eq(old, &a);
    ck_assert_ptr_eq(chat_map_get(m, "alice"), &b);
    ck_assert_uint_eq(chat_map_size(m), 1);
    ck_assert_ptr_eq(chat_map_remove(m, "alice"), &b);
    ck_assert_ptr_null(chat_map_remove(m, "alice"));
    ck_assert_ptr_null(chat_map_get(m, "alice"));
    ck_assert_uint_eq(chat_map_size(m), 0);
    chat_map_put(m, "", &a, NULL); /* the empty key is a key */
    ck_assert_ptr_eq(chat_map_get(m, ""), &a);
    chat_map_destroy(m);
    chat_map_destroy(NULL);
}
END_TEST

static void count_entry(const char *key, void *value, void *ctx)
{
    int *seen = ctx;
    int i = atoi(key + 2);
    ck_assert_int_eq((int)(intptr_t)value, i);
    seen[i]++;
}

START_TEST(growth_keeps_every_entry)
{
    enum { N = 20000 };
    chat_map *m = chat_map_create();
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "k-%d", i);
        chat_map_put(m, key, (void *)(intptr_t)i, NULL);
    }
    ck_assert_uint_eq(chat_map_size(m), N);
    for (int i = 0; i < N; i += 2) {
        snprintf(key, sizeof key, "k-%d", i);
        ck_assert_ptr_eq(chat_map_remove(m, key), (void *)(intptr_t)i);
    }
    ck_assert_uint_eq(chat_map_size(m), N / 2);
    int *seen = calloc(N, sizeof *seen);
    chat_map_each(m, count_entry, seen);
    for (int i = 0; i < N; i++)
        ck_assert_msg(seen[i] == i % 2, "k-%d visited %d times", i, seen[i]);
    free(seen);
    for (int i = 1; i < N; i += 2) {
        snprintf(key, sizeof key, "k-%d", i);
        ck_assert_ptr_eq(chat_map_get(m, key), (void *)(intptr_t)i);
    }
    chat_map_destroy(m);
}
END_TEST

/* Hash flooding (issue 19): 2,000 keys a client could choose because they all share the low 12
 * bits of their FNV-1a hash (the map's unkeyed hash before) must not end up in one chain, which
 * made every lookup a walk of all of them. With the keyed hash they spread like any keys. */
START_TEST(chosen_keys_do_not_share_a_chain)
{
    enum { N = 2000 };
    chat_map *m = chat_map_create();
    char key[32];
    int found = 0;
    for (long i = 0; found < N; i++) {
        snprintf(key, sizeof key, "c%ld", i);
        if ((chat_fnv1a32(key) & 4095) != 0)
            continue;
        chat_map_put(m, key, (void *)(intptr_t)(found + 1), NULL);
        found++;
    }
    ck_assert_uint_eq(chat_map_size(m), N);
    size_t longest = chat_map_longest_chain(m);
    ck_assert_msg(longest <= 16, "%d chosen keys: the longest chain holds %zu of them", N, longest);
    ck_assert_uint_eq(chat_map_hash("conv-1"), chat_map_hash("conv-1"));
    ck_assert_uint_ne(chat_map_hash("conv-1"), chat_map_hash("conv-2"));
    chat_map_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_map");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, put_get_replace_remove);
    tcase_add_test(tc, growth_keeps_every_entry);
    tcase_add_test(tc, chosen_keys_do_not_share_a_chain);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
