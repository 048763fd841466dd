/* Identifiers: conversation ids, user ids and cmids are 1 to 64 characters of [A-Za-z0-9_-].
 * That keeps them safe as NATS subject tokens (no '.', '*', '>' or spaces). Any thread. */
#ifndef CHAT_ID_H
#define CHAT_ID_H
#include <stdbool.h>
#include <stddef.h>

#define CHAT_ID_MAX 64

bool chat_id_valid(const char *id);
/* The same for a string of known length that need not be NUL-terminated. */
bool chat_id_valid_n(const char *id, size_t len);

#endif
