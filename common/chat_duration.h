/* Durations as settings write them: an integer and a unit, "250ms", "30s", "5m", "12h", "30d",
 * "1w"; several may follow each other ("1h30m"). Pure functions, any thread. */
#ifndef CHAT_DURATION_H
#define CHAT_DURATION_H
#include <stddef.h>
#include <stdint.h>

#include "chat_status.h"

/* Parses text into milliseconds; *out_ms is set only on CHAT_OK. Zero, negative numbers,
 * missing units, unknown units and overflow give CHAT_ERR_INVALID. */
chat_status chat_duration_parse(const char *text, int64_t *out_ms);

/* Writes the shortest exact form of ms ("90s" -> "1m30s", 0 -> "0ms") into buf. */
void chat_duration_format(int64_t ms, char *buf, size_t size);

#endif
