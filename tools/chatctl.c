/* chatctl: the admin and backend CLI. `token` signs a client JWT; the conversation, send and
 * history commands talk to the api role over NATS request/reply. Main thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_config.h"
#include "chat_jwt.h"
#include "chat_time.h"

static const char *usage =
    "chatctl COMMAND ...\n"
    "  token USER [--ttl SECONDS]       print a client JWT (default ttl 3600)";

static int cmd_token(const chat_cfg *cfg, int argc, char **argv)
{
    const char *user = NULL;
    long ttl = 3600;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc) {
            char *end;
            ttl = strtol(argv[++i], &end, 10);
            if (*end || ttl <= 0) {
                fprintf(stderr, "chatctl token: --ttl must be a positive number of seconds\n");
                return 2;
            }
        } else if (user == NULL) {
            user = argv[i];
        } else {
            fprintf(stderr, "chatctl token: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (user == NULL || !chat_id_valid(user)) {
        fprintf(stderr, "chatctl token: USER must be 1-64 characters of [A-Za-z0-9_-]\n");
        return 2;
    }
    char *token = NULL;
    if (chat_jwt_sign(user, cfg->jwt_secret, chat_now_ms() / 1000, ttl, &token) != CHAT_OK) {
        fprintf(stderr, "chatctl token: cannot sign\n");
        return 1;
    }
    printf("%s\n", token);
    free(token);
    return 0;
}

int main(int argc, char **argv)
{
    chat_cfg cfg;
    chat_cfg_load_or_exit(&cfg, CHAT_PROG_CTL, "chatctl", usage, argc, argv);
    int rc = 2;
    if (cfg.nargs == 0) {
        chat_cfg_print_help(CHAT_PROG_CTL, "chatctl", usage);
    } else if (strcmp(cfg.args[0], "token") == 0) {
        rc = cmd_token(&cfg, cfg.nargs - 1, cfg.args + 1);
    } else {
        fprintf(stderr, "chatctl: unknown command \"%s\" (try --help)\n", cfg.args[0]);
    }
    chat_cfg_free(&cfg);
    return rc;
}
