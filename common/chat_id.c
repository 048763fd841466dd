/* Identifier validation. */
#include "chat_id.h"

#include <string.h>

bool chat_id_valid_n(const char *id, size_t len)
{
    if (id == NULL || len == 0 || len > CHAT_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

bool chat_id_valid(const char *id)
{
    return id != NULL && chat_id_valid_n(id, strnlen(id, CHAT_ID_MAX + 1));
}
