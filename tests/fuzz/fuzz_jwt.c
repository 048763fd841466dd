/* libFuzzer target: token verification (common/chat_jwt.c). Nothing but a token signed with the
 * secret, HS256, with live claims within the maximum lifetime may pass. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_jwt.h"

static chat_jwt_policy *policy(void)
{
    static chat_jwt_policy *p;
    if (p == NULL) {
        chat_jwt_settings s = {.secret = "fuzz-secret-0123456789abcdef0123456789", .keys_file = "", .issuer = "",
                               .audience = "chat", .max_ttl_s = 86400, .signing_kid = ""};
        char err[256];
        if (chat_jwt_policy_create(&s, err, sizeof err, &p) != CHAT_OK)
            __builtin_trap();
    }
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *token = malloc(size + 1);
    memcpy(token, data, size);
    token[size] = '\0';
    chat_jwt_claims c;
    const char *why = NULL;
    chat_status st = chat_jwt_verify(policy(), token, 1800000000, &c, &why);
    if (st == CHAT_OK && (!chat_id_valid(c.user) || c.exp > 1800000000 + 86400 + CHAT_JWT_LEEWAY_S))
        __builtin_trap();
    if (st != CHAT_OK && why == NULL)
        __builtin_trap();
    free(token);
    return 0;
}
