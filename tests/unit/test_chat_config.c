/* Settings: defaults, environment, flags over environment, and one clear error per bad value. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_config.h"
#include "unit_run.h"

static const char *vars[] = {"CHAT_HOME", "CHAT_GATEWAY_LISTEN", "CHAT_WORKER_LISTEN", "CHAT_NATS_URL",
                             "CHAT_PG_DSN", "CHAT_REDIS_URL", "CHAT_JWT_SECRET", "CHAT_PARTITIONS",
                             "CHAT_ARCHIVE_URL", "CHAT_PARTITION_SPAN", "CHAT_HOT_RETENTION",
                             "CHAT_PUSH_GRACE", "CHAT_ALLOWED_ORIGINS", "CHAT_DEV_MODE",
                             "CHAT_PUSH_WEBHOOK_URL", "CHAT_LOG", "CHAT_WORKER_ROLES", "CHAT_S3_ENDPOINT",
                             "CHAT_S3_ACCESS_KEY", "CHAT_S3_SECRET_KEY", "CHAT_INGEST_COMMITTERS", "CHAT_JWT_KEYS",
                             "CHAT_JWT_ISSUER", "CHAT_JWT_AUDIENCE", "CHAT_JWT_MAX_TTL", "CHAT_JWT_SIGNING_KEY", NULL};

static void clean_env(void)
{
    for (int i = 0; vars[i]; i++)
        unsetenv(vars[i]);
    setenv("CHAT_HOME", "/tmp/chat-test-home", 1);
    setenv("CHAT_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
}

static chat_status load(chat_cfg *cfg, unsigned prog, char *err, int argc, char **argv)
{
    return chat_cfg_load(cfg, prog, argc, argv, err, 512);
}

START_TEST(defaults_serve_the_embedded_stack)
{
    clean_env();
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x"};
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER | CHAT_PROG_GATEWAY, err, 1, argv), CHAT_OK);
    ck_assert_str_eq(cfg.gateway_listen.host, "127.0.0.1");
    ck_assert_int_eq(cfg.gateway_listen.port, 8080);
    ck_assert_int_eq(cfg.worker_listen.port, 9101);
    ck_assert_str_eq(cfg.nats_url, "nats://127.0.0.1:4222");
    ck_assert_str_eq(cfg.redis_host, "127.0.0.1");
    ck_assert_int_eq(cfg.redis_port, 6379);
    ck_assert_int_eq(cfg.partitions, 16);
    ck_assert_int_eq(cfg.partition_span_ms, 86400000);
    ck_assert_int_eq(cfg.hot_retention_ms, 30LL * 86400000);
    ck_assert_int_eq(cfg.push_grace_ms, 10000);
    ck_assert_str_eq(cfg.archive_url, "file:///tmp/chat-test-home/archive");
    ck_assert(!cfg.dev_mode);
    ck_assert_uint_eq(cfg.roles, CHAT_ROLE_ALL);
    ck_assert_int_eq(cfg.ingest_committers, 2);
    chat_cfg_free(&cfg);
}
END_TEST

/* The api role checks the gateways' route claims' tokens: a worker with it needs the token keys
 * (the HS256 secret from the environment or $CHAT_HOME/jwt_secret), one without it does not. */
START_TEST(api_role_needs_the_token_keys)
{
    clean_env();
    unsetenv("CHAT_JWT_SECRET");
    setenv("CHAT_HOME", "/nonexistent-chat-home", 1);
    chat_cfg cfg;
    char err[512] = "";
    char *argv[] = {"x"};
    setenv("CHAT_WORKER_ROLES", "ingest,notify,archive", 1);
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 1, argv), CHAT_OK);
    ck_assert_ptr_null(cfg.jwt);
    chat_cfg_free(&cfg);
    setenv("CHAT_WORKER_ROLES", "ingest,api", 1);
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 1, argv), CHAT_ERR_INVALID);
    ck_assert_msg(strncmp(err, "CHAT_JWT_SECRET:", 16) == 0, "%s", err);
    chat_cfg_free(&cfg);
    setenv("CHAT_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 1, argv), CHAT_OK);
    ck_assert_ptr_nonnull(cfg.jwt);
    chat_cfg_free(&cfg);
}
END_TEST

START_TEST(flags_win_over_environment)
{
    clean_env();
    setenv("CHAT_PARTITIONS", "8", 1);
    setenv("CHAT_NATS_URL", "nats://127.0.0.1:1", 1);
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x", "--partitions=32", "--nats-url", "nats://10.0.0.1:4222,nats://10.0.0.2:4222",
                    "migrate", "--other"};
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 6, argv), CHAT_OK);
    ck_assert_int_eq(cfg.partitions, 32);
    ck_assert_str_eq(cfg.nats_url, "nats://10.0.0.1:4222,nats://10.0.0.2:4222");
    ck_assert_int_eq(cfg.nargs, 2);
    ck_assert_str_eq(cfg.args[0], "migrate");
    ck_assert_str_eq(cfg.args[1], "--other");
    chat_cfg_free(&cfg);
}
END_TEST

/* Each malformed value: the error starts with the variable's name. */
static const struct {
    const char *var, *value;
    unsigned prog;
} bad[] = {
    {"CHAT_PARTITIONS", "0", CHAT_PROG_WORKER},
    {"CHAT_PARTITIONS", "abc", CHAT_PROG_GATEWAY},
    {"CHAT_PARTITIONS", "2000", CHAT_PROG_CTL},
    {"CHAT_NATS_URL", "notaurl", CHAT_PROG_GATEWAY},
    {"CHAT_NATS_URL", "nats://host", CHAT_PROG_WORKER},
    {"CHAT_GATEWAY_LISTEN", "8080", CHAT_PROG_GATEWAY},
    {"CHAT_GATEWAY_LISTEN", "127.0.0.1:99999", CHAT_PROG_GATEWAY},
    {"CHAT_WORKER_LISTEN", "localhost:", CHAT_PROG_WORKER},
    {"CHAT_REDIS_URL", "http://x:1", CHAT_PROG_GATEWAY},
    {"CHAT_PG_DSN", "host=127.0.0.1 port", CHAT_PROG_WORKER},
    {"CHAT_PARTITION_SPAN", "30s", CHAT_PROG_WORKER},
    {"CHAT_PARTITION_SPAN", "8d", CHAT_PROG_WORKER},
    {"CHAT_HOT_RETENTION", "forever", CHAT_PROG_WORKER},
    {"CHAT_PUSH_GRACE", "10", CHAT_PROG_WORKER},
    {"CHAT_ARCHIVE_URL", "ftp://x", CHAT_PROG_WORKER},
    {"CHAT_S3_ACCESS_KEY", "", CHAT_PROG_WORKER}, /* s3 archive without keys: see below */
    {"CHAT_DEV_MODE", "yes", CHAT_PROG_GATEWAY},
    {"CHAT_LOG", "verbose", CHAT_PROG_CTL},
    {"CHAT_JWT_SECRET", "short", CHAT_PROG_GATEWAY},
    {"CHAT_JWT_SECRET", "changeme-changeme-changeme-changeme-0000", CHAT_PROG_CTL}, /* deploy/env.example's */
    {"CHAT_JWT_MAX_TTL", "forever", CHAT_PROG_GATEWAY},
    {"CHAT_JWT_MAX_TTL", "30s", CHAT_PROG_CTL},
    {"CHAT_JWT_KEYS", "/nonexistent/chat-jwt-keys", CHAT_PROG_GATEWAY},
    {"CHAT_JWT_SIGNING_KEY", "no-such-kid", CHAT_PROG_CTL},
    {"CHAT_PUSH_WEBHOOK_URL", "mailto:x", CHAT_PROG_WORKER},
    {"CHAT_WORKER_ROLES", "ingest,cook", CHAT_PROG_WORKER},
    {"CHAT_INGEST_COMMITTERS", "0", CHAT_PROG_WORKER},
    {"CHAT_INGEST_COMMITTERS", "65", CHAT_PROG_WORKER},
};

START_TEST(malformed_setting_is_named)
{
    clean_env();
    setenv(bad[_i].var, bad[_i].value, 1);
    if (strcmp(bad[_i].var, "CHAT_S3_ACCESS_KEY") == 0)
        setenv("CHAT_ARCHIVE_URL", "s3://bucket/prefix", 1);
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x"};
    ck_assert_int_eq(load(&cfg, bad[_i].prog, err, 1, argv), CHAT_ERR_INVALID);
    ck_assert_msg(strncmp(err, bad[_i].var, strlen(bad[_i].var)) == 0, "error \"%s\" does not name %s", err,
                  bad[_i].var);
    ck_assert_ptr_null(strchr(err, '\n'));
    chat_cfg_free(&cfg);
}
END_TEST

START_TEST(setting_unused_by_program_is_not_checked)
{
    clean_env();
    setenv("CHAT_PARTITION_SPAN", "bogus", 1); /* the gateway does not read it */
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x"};
    ck_assert_int_eq(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv), CHAT_OK);
    chat_cfg_free(&cfg);
}
END_TEST

START_TEST(missing_secret_names_the_file)
{
    clean_env();
    unsetenv("CHAT_JWT_SECRET");
    setenv("CHAT_HOME", "/nonexistent-chat-home", 1);
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x"};
    ck_assert_int_eq(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv), CHAT_ERR_INVALID);
    ck_assert(strncmp(err, "CHAT_JWT_SECRET", 15) == 0);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent-chat-home/jwt_secret"));
    chat_cfg_free(&cfg);
}
END_TEST

START_TEST(flag_without_value)
{
    clean_env();
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x", "--nats-url"};
    ck_assert_int_eq(load(&cfg, CHAT_PROG_GATEWAY, err, 2, argv), CHAT_ERR_INVALID);
    ck_assert(strncmp(err, "CHAT_NATS_URL", 13) == 0);
    chat_cfg_free(&cfg);
}
END_TEST

START_TEST(redis_url_parts)
{
    clean_env();
    setenv("CHAT_REDIS_URL", "redis://:s3cret@10.1.2.3:6380/2", 1);
    chat_cfg cfg;
    char err[512];
    char *argv[] = {"x"};
    ck_assert_int_eq(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv), CHAT_OK);
    ck_assert_str_eq(cfg.redis_host, "10.1.2.3");
    ck_assert_int_eq(cfg.redis_port, 6380);
    ck_assert_int_eq(cfg.redis_db, 2);
    ck_assert_str_eq(cfg.redis_user, "");
    ck_assert_str_eq(cfg.redis_password, "s3cret");
    chat_cfg_free(&cfg);
}
END_TEST

/* A Redis ACL user (deploy/redis/users.sh) before the first ':' of the user information; the
 * password after it, ':' and '@' included (the host follows the last '@'). */
START_TEST(redis_url_user)
{
    static const struct {
        const char *url, *user, *password, *host;
    } ok[] = {
        {"redis://gateway:s3cret@redis:6379/0", "gateway", "s3cret", "redis"},
        {"redis://worker:a:b@c@10.0.0.1", "worker", "a:b@c", "10.0.0.1"},
        {"redis://:s3cret@redis", "", "s3cret", "redis"},     /* empty user: the password alone */
        {"redis://s3cret@redis", "", "s3cret", "redis"},      /* no ':': a password, not a user */
        {"redis://nopassuser:@redis", "nopassuser", "", "redis"}, /* a user with an empty password */
        {"redis://127.0.0.1:6379", "", "", "127.0.0.1"},
    };
    char *argv[] = {"x"};
    char err[512];
    chat_cfg cfg;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        clean_env();
        setenv("CHAT_REDIS_URL", ok[i].url, 1);
        ck_assert_msg(load(&cfg, CHAT_PROG_WORKER, err, 1, argv) == CHAT_OK, "%s: %s", ok[i].url, err);
        ck_assert_str_eq(cfg.redis_user, ok[i].user);
        ck_assert_str_eq(cfg.redis_password, ok[i].password);
        ck_assert_str_eq(cfg.redis_host, ok[i].host);
        chat_cfg_free(&cfg);
    }
    /* a user too long for its field is refused, not cut (AUTH would fail with no clue why) */
    char url[600];
    snprintf(url, sizeof url, "redis://%0300d:s3cretpw@redis", 0);
    clean_env();
    setenv("CHAT_REDIS_URL", url, 1);
    ck_assert_int_eq(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv), CHAT_ERR_INVALID);
    ck_assert(strncmp(err, "CHAT_REDIS_URL", 14) == 0);
    ck_assert_msg(strstr(err, "s3cretpw") == NULL, "%s", err);
    chat_cfg_free(&cfg);
}
END_TEST

START_TEST(origins)
{
    ck_assert(chat_origin_allowed("", "http://evil"));
    ck_assert(chat_origin_allowed("https://a.example, https://b.example", "https://b.example"));
    ck_assert(!chat_origin_allowed("https://a.example", "https://a.example.evil"));
    ck_assert(!chat_origin_allowed("https://a.example", NULL));
}
END_TEST

/* Dev mode mints a token for any user: only on a loopback listen address (issue 19, finding 6). */
START_TEST(dev_mode_needs_loopback)
{
    const char *refused[] = {"0.0.0.0:8080", "10.0.0.5:8080", "gateway.example:8080", "[::]:8080"};
    const char *allowed[] = {"127.0.0.1:8080", "127.0.0.2:8080", "localhost:8080", "[::1]:8080"};
    char *argv[] = {"x"};
    char err[512];
    chat_cfg cfg;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        clean_env();
        setenv("CHAT_DEV_MODE", "1", 1);
        setenv("CHAT_GATEWAY_LISTEN", refused[i], 1);
        ck_assert_msg(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv) == CHAT_ERR_INVALID, "%s accepted", refused[i]);
        ck_assert_msg(strncmp(err, "CHAT_DEV_MODE: ", 15) == 0 && strstr(err, "loopback"), "%s: %s", refused[i], err);
        ck_assert_ptr_null(strchr(err, '\n'));
        chat_cfg_free(&cfg);
        setenv("CHAT_DEV_MODE", "0", 1); /* the same address without dev mode starts */
        ck_assert_int_eq(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv), CHAT_OK);
        chat_cfg_free(&cfg);
    }
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        clean_env();
        setenv("CHAT_DEV_MODE", "1", 1);
        setenv("CHAT_GATEWAY_LISTEN", allowed[i], 1);
        ck_assert_msg(load(&cfg, CHAT_PROG_GATEWAY, err, 1, argv) == CHAT_OK, "%s: %s", allowed[i], err);
        chat_cfg_free(&cfg);
    }
}
END_TEST

/* CHAT_EGRESS_ALLOW: ranges, checked at start (issue 19, finding 9). */
START_TEST(egress_allow_checked)
{
    char *argv[] = {"x"};
    char err[512];
    chat_cfg cfg;
    clean_env();
    unsetenv("CHAT_EGRESS_ALLOW");
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 1, argv), CHAT_OK);
    ck_assert_str_eq(cfg.egress_allow, ""); /* public addresses only */
    chat_cfg_free(&cfg);
    setenv("CHAT_EGRESS_ALLOW", "127.0.0.0/8,::1", 1);
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 1, argv), CHAT_OK);
    chat_cfg_free(&cfg);
    setenv("CHAT_EGRESS_ALLOW", "127.0.0.0/8,intranet", 1);
    ck_assert_int_eq(load(&cfg, CHAT_PROG_WORKER, err, 1, argv), CHAT_ERR_INVALID);
    ck_assert_msg(strncmp(err, "CHAT_EGRESS_ALLOW: ", 19) == 0 && strstr(err, "intranet"), "%s", err);
    chat_cfg_free(&cfg);
    unsetenv("CHAT_EGRESS_ALLOW");
}
END_TEST

/* A malformed URL or DSN is named in the error without its secret (issue 19, finding 7). */
START_TEST(errors_mask_secrets)
{
    static const struct {
        const char *var, *value;
        unsigned prog;
    } leaky[] = {
        {"CHAT_NATS_URL", "nats://gw:s3cretpw@host", CHAT_PROG_GATEWAY},
        {"CHAT_REDIS_URL", "redis://:s3cretpw@host:notaport", CHAT_PROG_GATEWAY},
        {"CHAT_REDIS_URL", "redis://gateway:s3cretpw@host:notaport", CHAT_PROG_GATEWAY},
        {"CHAT_PUSH_WEBHOOK_URL", "ftp://u:s3cretpw@hooks.example/x", CHAT_PROG_WORKER},
        {"CHAT_PG_DSN", "host=h password=s3cretpw port", CHAT_PROG_WORKER},
        {"CHAT_PG_DSN", "host=h password s3cretpw", CHAT_PROG_WORKER},
    };
    char *argv[] = {"x"};
    for (size_t i = 0; i < sizeof leaky / sizeof leaky[0]; i++) {
        clean_env();
        setenv(leaky[i].var, leaky[i].value, 1);
        chat_cfg cfg;
        char err[512];
        ck_assert_int_eq(load(&cfg, leaky[i].prog, err, 1, argv), CHAT_ERR_INVALID);
        ck_assert_msg(strncmp(err, leaky[i].var, strlen(leaky[i].var)) == 0, "%s", err);
        ck_assert_msg(strstr(err, "s3cretpw") == NULL, "%s shows its secret: %s", leaky[i].var, err);
        chat_cfg_free(&cfg);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults_serve_the_embedded_stack);
    tcase_add_test(tc, flags_win_over_environment);
    tcase_add_loop_test(tc, malformed_setting_is_named, 0, (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, setting_unused_by_program_is_not_checked);
    tcase_add_test(tc, missing_secret_names_the_file);
    tcase_add_test(tc, flag_without_value);
    tcase_add_test(tc, redis_url_parts);
    tcase_add_test(tc, redis_url_user);
    tcase_add_test(tc, origins);
    tcase_add_test(tc, dev_mode_needs_loopback);
    tcase_add_test(tc, egress_allow_checked);
    tcase_add_test(tc, errors_mask_secrets);
    tcase_add_test(tc, api_role_needs_the_token_keys);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
