/* libFuzzer target: token verification (common/chat_jwt.c). Nothing but a token signed with the
 * secret, HS256, with live claims may pass. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *token = malloc(size + 1);
    memcpy(token, data, size);
    token[size] = '\0';
    char user[CHAT_ID_MAX + 1];
    const char *why = NULL;
    chat_status st = chat_jwt_verify(token, "fuzz-secret-0123456789abcdef0123456789", 1800000000, user, NULL, &why);
    if (st == CHAT_OK && !chat_id_valid(user))
        __builtin_trap();
    if (st != CHAT_OK && why == NULL)
        __builtin_trap();
    free(token);
    return 0;
}
