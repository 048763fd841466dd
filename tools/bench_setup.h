/* chat-bench: creates the plan's conversations through the api role (chat.api.v1.conv.create,
 * protobuf over NATS request/reply), many requests in flight, before any worker starts. Main
 * thread; it closes the NATS library when done so the process can fork cleanly. */
#ifndef BENCH_SETUP_H
#define BENCH_SETUP_H
#include <stddef.h>
#include <stdint.h>

#include "bench_plan.h"
#include "chat_status.h"

/* Creates every conversation of the plan (idempotent: an existing one gets the members added).
 * CHAT_OK with the count of newly created ones in *created; otherwise a status and a line in err. */
chat_status bench_setup_conversations(const bench_plan *p, uint64_t *created, char *err, size_t errsz);

#endif
