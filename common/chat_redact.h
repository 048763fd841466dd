/* Secrets out of printed connection strings: every URL or libpq DSN that reaches a log line, an
 * error or a command's output goes through here first. Pure functions, any thread. */
#ifndef CHAT_REDACT_H
#define CHAT_REDACT_H
#include <stddef.h>

/* Copies a URL, or a comma separated list of URLs (CHAT_NATS_URL), into out with the user
 * information of each (user:password before the '@', or a token alone) shown as ***, and the value
 * of every query parameter whose name speaks of a secret (password, pass, token, secret, key, sig,
 * auth) as ***. A URL cut short by size never ends inside a secret. out is always terminated. */
void chat_redact_url(const char *urls, char *out, size_t size);

/* Copies a libpq connection string (keyword=value or postgresql:// URI) into out as keyword=value
 * pairs of the options it sets, each password-type option (password, sslpassword) shown as ***.
 * A string libpq cannot parse is shown as "(malformed connection string, not shown)": its
 * parts could be a password. out is always terminated. */
void chat_redact_dsn(const char *dsn, char *out, size_t size);

/* Copies an error message of libpq's connection-string parser (PQconninfoParse) into out with each
 * double-quoted piece that is not an option name or a single character shown as ***: libpq quotes
 * the string's own pieces ('missing "=" after "..."'), which may be a password. */
void chat_redact_pq_message(const char *msg, char *out, size_t size);

#endif
