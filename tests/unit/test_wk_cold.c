/* Check suite for workers/wk_cold.c and workers/wk_objstore.c: the chunk format (round trip of
 * every column, NULLs, damage detection), the file:// store (put, range get, delete) and the
 * cached reader (hits, eviction while a chunk is in use). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wk_cold.h"
#include "wk_objstore.h"
#include "unit_run.h"

static char dir[256];
static chat_cfg cfg;

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_wk_cold.%d", (int)getpid());
    mkdir(dir, 0755);
    memset(&cfg, 0, sizeof cfg);
    cfg.s3_endpoint = "";
    cfg.s3_region = "us-east-1";
    cfg.s3_access_key = "";
    cfg.s3_secret_key = "";
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", dir);
}

/* A chunk of conv with n text events from seq first, every 3rd with meta; returns the frame. */
static void make_chunk(const char *conv, uint64_t first, int n, chat_buf *out)
{
    wk_cold_writer w = {0};
    wk_cold_writer_begin(&w, conv, 1000000, 61000000);
    for (int i = 0; i < n; i++) {
        Chat__V1__Event e = CHAT__V1__EVENT__INIT;
        char id[32], body[64];
        snprintf(id, sizeof id, "id-%d", i);
        snprintf(body, sizeof body, "body %d of %s", i, conv);
        e.seq = first + (uint64_t)i;
        e.id = id;
        e.cmid = id;
        e.sender = "alice";
        e.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
        e.body = body;
        e.meta_json = i % 3 == 0 ? "{\"k\": 1}" : "";
        ck_assert(wk_cold_writer_add(
            &w, &e, 1000000 + i,
            i % 3 == 0 ? 0 : WK_COLD_NULL_META | WK_COLD_NULL_TARGET | WK_COLD_NULL_EMOJI | WK_COLD_NULL_REACTION_ON));
    }
    ck_assert_int_eq(wk_cold_writer_finish(&w, out, NULL), CHAT_OK);
    wk_cold_writer_free(&w);
}

START_TEST(chunk_round_trip)
{
    wk_cold_writer w = {0};
    wk_cold_writer_begin(&w, "conv-1", 1732752000000000LL, 1732752060000000LL);
    Chat__V1__Event a = CHAT__V1__EVENT__INIT, b = CHAT__V1__EVENT__INIT, c = CHAT__V1__EVENT__INIT;
    a.conv = "ignored";
    a.seq = 7;
    a.id = "id7";
    a.cmid = "cm7";
    a.sender = "alice";
    a.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    a.body = "héllo \xF0\x9F\x91\x8B";
    a.meta_json = "{\"a\": [1, 2]}";
    a.ts_ms = 1732752000123;
    a.deleted = true; /* not stored */
    b.seq = 8;
    b.id = "id8";
    b.cmid = "cm8";
    b.sender = "bob";
    b.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION;
    b.target = 7;
    b.emoji = "\xF0\x9F\x91\x8D";
    b.reaction_on = false;
    b.ts_ms = 1732752000200;
    c.seq = 10;
    c.id = "id10";
    c.cmid = "cm10";
    c.sender = "alice";
    c.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT;
    c.target = 7;
    c.body = "edited";
    c.ts_ms = 1732752000300;
    ck_assert(wk_cold_writer_add(&w, &a, 1732752000123456LL,
                                 WK_COLD_NULL_TARGET | WK_COLD_NULL_EMOJI | WK_COLD_NULL_REACTION_ON));
    ck_assert(wk_cold_writer_add(&w, &b, 1732752000200001LL, WK_COLD_NULL_META));
    ck_assert(!wk_cold_writer_add(&w, &a, 1, 0)); /* seq 7 again: refused */
    ck_assert(wk_cold_writer_add(&w, &c, 1732752000300999LL,
                                 WK_COLD_NULL_META | WK_COLD_NULL_EMOJI | WK_COLD_NULL_REACTION_ON));
    chat_buf out = {0};
    size_t raw = 0;
    ck_assert_int_eq(wk_cold_writer_finish(&w, &out, &raw), CHAT_OK);
    ck_assert_uint_gt(raw, WK_COLD_HEADER_FIXED);
    wk_cold_writer_free(&w);

    wk_cold_chunk *ch = NULL;
    char err[256] = "";
    ck_assert_msg(wk_cold_chunk_decode(out.data, out.len, &ch, err, sizeof err) == CHAT_OK, "%s", err);
    ck_assert_str_eq(ch->h.conv, "conv-1");
    ck_assert_uint_eq(ch->h.count, 3);
    ck_assert_uint_eq(ch->h.seq_lo, 7);
    ck_assert_uint_eq(ch->h.seq_hi, 10);
    ck_assert(ch->h.from_us == 1732752000000000LL && ch->h.until_us == 1732752060000000LL);
    ck_assert_uint_eq(ch->n, 3);
    ck_assert_str_eq(ch->events[0]->body, a.body);
    ck_assert_str_eq(ch->events[0]->meta_json, a.meta_json);
    ck_assert_str_eq(ch->events[0]->conv, "");
    ck_assert(!ch->events[0]->deleted);
    ck_assert(ch->events[0]->ts_ms == 1732752000123);
    ck_assert(ch->created_us[0] == 1732752000123456LL);
    ck_assert_uint_eq(ch->nulls[0], WK_COLD_NULL_TARGET | WK_COLD_NULL_EMOJI | WK_COLD_NULL_REACTION_ON);
    ck_assert_int_eq(ch->events[1]->kind, CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION);
    ck_assert_str_eq(ch->events[1]->emoji, b.emoji);
    ck_assert_uint_eq(ch->events[1]->target, 7);
    ck_assert(!ch->events[1]->reaction_on);
    ck_assert_uint_eq(ch->nulls[1], WK_COLD_NULL_META);
    ck_assert_str_eq(ch->events[2]->body, "edited");
    ck_assert_str_eq(ch->events[2]->sender, "alice");
    ck_assert(ch->created_us[2] == 1732752000300999LL);
    wk_cold_ref ref = {.url = "x", .conv = "conv-1", .seq_lo = 7, .seq_hi = 10, .rows = 3};
    ck_assert(wk_cold_chunk_matches(ch, &ref, err, sizeof err));
    ref.seq_hi = 11;
    ck_assert(!wk_cold_chunk_matches(ch, &ref, err, sizeof err));
    ref.seq_hi = 10;
    ref.conv = "conv-2";
    ck_assert(!wk_cold_chunk_matches(ch, &ref, err, sizeof err));
    wk_cold_chunk_free(ch);
    chat_buf_free(&out);
}
END_TEST

START_TEST(chunk_damage_is_detected)
{
    chat_buf out = {0};
    make_chunk("conv-d", 1, 50, &out);
    wk_cold_chunk *ch = NULL;
    char err[256];
    ck_assert_int_eq(wk_cold_chunk_decode(out.data, out.len, &ch, err, sizeof err), CHAT_OK);
    wk_cold_chunk_free(ch);
    /* cut short, one byte flipped in the middle, two frames back to back, nothing */
    ck_assert_int_eq(wk_cold_chunk_decode(out.data, out.len - 3, &ch, err, sizeof err), CHAT_ERR_INVALID);
    chat_buf two = {0};
    chat_buf_append(&two, out.data, out.len);
    chat_buf_append(&two, out.data, out.len);
    ck_assert_int_eq(wk_cold_chunk_decode(two.data, two.len, &ch, err, sizeof err), CHAT_ERR_INVALID);
    out.data[out.len / 2] ^= 0x5a;
    ck_assert_int_eq(wk_cold_chunk_decode(out.data, out.len, &ch, err, sizeof err), CHAT_ERR_INVALID);
    ck_assert_int_eq(wk_cold_chunk_decode("", 0, &ch, err, sizeof err), CHAT_ERR_INVALID);
    ck_assert_int_eq(wk_cold_chunk_decode("garbage!", 8, &ch, err, sizeof err), CHAT_ERR_INVALID);
    chat_buf_free(&two);
    chat_buf_free(&out);
}
END_TEST

START_TEST(objstore_file)
{
    wk_objstore *os = NULL;
    ck_assert_int_eq(wk_objstore_create(&cfg, &os), CHAT_OK);
    char base[300], url[600], err[512];
    snprintf(base, sizeof base, "file://%s/archive/", dir);
    ck_assert(wk_objstore_join(base, "/messages_p60/1-000.chunks", url, sizeof url));
    char want[600];
    snprintf(want, sizeof want, "file://%s/archive/messages_p60/1-000.chunks", dir);
    ck_assert_str_eq(url, want);
    ck_assert(!wk_objstore_join("http://x", "k", url, sizeof url));
    ck_assert(wk_objstore_join(base, "messages_p60/1-000.chunks", url, sizeof url));

    chat_buf got = {0};
    ck_assert_int_eq(wk_objstore_get(os, url, 0, 0, &got, err, sizeof err), CHAT_ERR_NOT_FOUND);
    ck_assert_int_eq(wk_objstore_put(os, url, "0123456789", 10, err, sizeof err), CHAT_OK);
    ck_assert_int_eq(wk_objstore_get(os, url, 0, 0, &got, err, sizeof err), CHAT_OK);
    ck_assert_uint_eq(got.len, 10);
    ck_assert_int_eq(wk_objstore_get(os, url, 3, 4, &got, err, sizeof err), CHAT_OK);
    ck_assert_uint_eq(got.len, 4);
    ck_assert(memcmp(got.data, "3456", 4) == 0);
    ck_assert_int_eq(wk_objstore_get(os, url, 8, 5, &got, err, sizeof err), CHAT_ERR_IO);
    ck_assert_int_eq(wk_objstore_put(os, url, "abc", 3, err, sizeof err), CHAT_OK); /* replaced whole */
    ck_assert_int_eq(wk_objstore_get(os, url, 0, 0, &got, err, sizeof err), CHAT_OK);
    ck_assert_uint_eq(got.len, 3);
    ck_assert_int_eq(wk_objstore_delete(os, url, err, sizeof err), CHAT_OK);
    ck_assert_int_eq(wk_objstore_delete(os, url, err, sizeof err), CHAT_OK); /* already gone: fine */
    ck_assert_int_eq(wk_objstore_get(os, url, 0, 0, &got, err, sizeof err), CHAT_ERR_NOT_FOUND);

    /* a path through a regular file cannot be written: an error, not a crash */
    char blocker[300], bad[600];
    snprintf(blocker, sizeof blocker, "%s/blocker", dir);
    FILE *f = fopen(blocker, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(bad, sizeof bad, "file://%s/blocker/archive/x.chunks", dir);
    ck_assert_int_eq(wk_objstore_put(os, bad, "x", 1, err, sizeof err), CHAT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "x.chunks"));
    chat_buf_free(&got);
    wk_objstore_destroy(os);
}
END_TEST

START_TEST(objstore_helpers)
{
    char out[256], sha[65];
    ck_assert(wk_objstore_s3_http_url("http://127.0.0.1:9000/", "s3://bucket/pre fix/messages_p60/1-000.chunks", out,
                                      sizeof out));
    ck_assert_str_eq(out, "http://127.0.0.1:9000/bucket/pre%20fix/messages_p60/1-000.chunks");
    ck_assert(!wk_objstore_s3_http_url("http://h", "s3:///nobucket", out, sizeof out));
    ck_assert(!wk_objstore_s3_http_url("http://h", "file:///x", out, sizeof out));
    wk_objstore_sha256_hex("abc", 3, sha);
    ck_assert_str_eq(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    wk_objstore_sha256_hex("", 0, sha);
    ck_assert_str_eq(sha, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}
END_TEST

START_TEST(reader_caches_and_evicts)
{
    wk_objstore *os = NULL;
    ck_assert_int_eq(wk_objstore_create(&cfg, &os), CHAT_OK);
    /* one object with three chunks back to back */
    chat_buf obj = {0};
    uint64_t off[4] = {0};
    const char *convs[3] = {"c-a", "c-b", "c-c"};
    for (int i = 0; i < 3; i++) {
        make_chunk(convs[i], 1, 200, &obj);
        off[i + 1] = obj.len;
    }
    char url[600], err[512];
    snprintf(url, sizeof url, "file://%s/obj.chunks", dir);
    ck_assert_int_eq(wk_objstore_put(os, url, obj.data, obj.len, err, sizeof err), CHAT_OK);
    wk_objstore_destroy(os);

    /* a cache big enough for about two decoded chunks */
    wk_cold_chunk *probe = NULL;
    ck_assert_int_eq(wk_cold_chunk_decode(obj.data, off[1], &probe, err, sizeof err), CHAT_OK);
    size_t one = probe->mem;
    wk_cold_chunk_free(probe);
    wk_cold *cold = NULL;
    ck_assert_int_eq(wk_cold_create(&cfg, one * 2 + one / 2, NULL, &cold), CHAT_OK);
    wk_cold_ref ref[3];
    for (int i = 0; i < 3; i++)
        ref[i] = (wk_cold_ref){.url = url,
                               .offset = off[i],
                               .length = off[i + 1] - off[i],
                               .conv = convs[i],
                               .seq_lo = 1,
                               .seq_hi = 200,
                               .rows = 200};
    const wk_cold_chunk *a = NULL, *a2 = NULL, *b = NULL, *c = NULL;
    uint64_t hits, misses;
    size_t bytes, entries;
    ck_assert_msg(wk_cold_read(cold, &ref[0], &a, err, sizeof err) == CHAT_OK, "%s", err);
    ck_assert_str_eq(a->h.conv, "c-a");
    ck_assert_int_eq(wk_cold_read(cold, &ref[0], &a2, err, sizeof err), CHAT_OK);
    ck_assert_ptr_eq(a, a2);
    wk_cold_stats(cold, &hits, &misses, &bytes, &entries);
    ck_assert_uint_eq(hits, 1);
    ck_assert_uint_eq(misses, 1);
    wk_cold_release(cold, a2);
    /* b and c push a out while it is still in use: it must stay valid until released */
    ck_assert_int_eq(wk_cold_read(cold, &ref[1], &b, err, sizeof err), CHAT_OK);
    ck_assert_int_eq(wk_cold_read(cold, &ref[2], &c, err, sizeof err), CHAT_OK);
    wk_cold_stats(cold, &hits, &misses, &bytes, &entries);
    ck_assert_uint_eq(entries, 2);
    ck_assert_uint_le(bytes, one * 2 + one / 2);
    ck_assert_str_eq(a->events[199]->body, "body 199 of c-a");
    wk_cold_release(cold, a);
    wk_cold_release(cold, b);
    wk_cold_release(cold, c);
    /* a is read again from storage */
    ck_assert_int_eq(wk_cold_read(cold, &ref[0], &a, err, sizeof err), CHAT_OK);
    wk_cold_stats(cold, &hits, &misses, NULL, NULL);
    ck_assert_uint_eq(misses, 4);
    wk_cold_release(cold, a);
    /* a cache of 0 bytes still reads (and frees on release) */
    wk_cold *nocache = NULL;
    ck_assert_int_eq(wk_cold_create(&cfg, 0, NULL, &nocache), CHAT_OK);
    ck_assert_int_eq(wk_cold_read(nocache, &ref[2], &c, err, sizeof err), CHAT_OK);
    wk_cold_stats(nocache, NULL, NULL, &bytes, &entries);
    ck_assert_uint_eq(entries, 0);
    wk_cold_release(nocache, c);
    /* an index row that does not describe the chunk read from storage is refused */
    wk_cold_ref wrong = ref[1];
    wrong.rows = 199;
    ck_assert_int_eq(wk_cold_read(nocache, &wrong, &b, err, sizeof err), CHAT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "the index says"));
    wrong = ref[0];
    wrong.offset = 1; /* not the start of a chunk */
    wrong.length = off[1] - 1;
    ck_assert_int_eq(wk_cold_read(nocache, &wrong, &b, err, sizeof err), CHAT_ERR_INVALID);
    wk_cold_destroy(nocache);
    wk_cold_destroy(cold);
    chat_buf_free(&obj);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("wk_cold");
    TCase *t = tcase_create("core");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, chunk_round_trip);
    tcase_add_test(t, chunk_damage_is_detected);
    tcase_add_test(t, objstore_file);
    tcase_add_test(t, objstore_helpers);
    tcase_add_test(t, reader_caches_and_evicts);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return unit_run(suite());
}
