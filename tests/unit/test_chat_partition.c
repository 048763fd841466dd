/* Partition hash: the documented FNV-1a 32 values (published test vectors), and a fair spread. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "chat_partition.h"
#include "unit_run.h"

START_TEST(fnv1a_vectors)
{
    ck_assert_uint_eq(chat_fnv1a32(""), 0x811c9dc5u);
    ck_assert_uint_eq(chat_fnv1a32("a"), 0xe40c292cu);
    ck_assert_uint_eq(chat_fnv1a32("foobar"), 0xbf9cf968u);
}
END_TEST

START_TEST(partition_in_range_and_stable)
{
    ck_assert_uint_eq(chat_partition_of("foobar", 16), 0xbf9cf968u % 16);
    ck_assert_uint_eq(chat_partition_of("anything", 1), 0);
    ck_assert_uint_eq(chat_partition_of("x", 0), 0);
}
END_TEST

START_TEST(spread_is_fair)
{
    int counts[16] = {0};
    char id[32];
    for (int i = 0; i < 16000; i++) {
        snprintf(id, sizeof id, "conv-%d", i);
        counts[chat_partition_of(id, 16)]++;
    }
    for (int p = 0; p < 16; p++)
        ck_assert_msg(counts[p] > 800 && counts[p] < 1200, "partition %d got %d of 16000", p, counts[p]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_partition");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, fnv1a_vectors);
    tcase_add_test(tc, partition_in_range_and_stable);
    tcase_add_test(tc, spread_is_fair);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
