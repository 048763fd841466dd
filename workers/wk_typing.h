/* The typing relay (part of the api role): a gateway publishes a member's typing once, on
 * chat.typing.<conv>; the relay checks the typist is a member of the live conversation and sends
 * Delivery{typing} to every other member's gateways (wk_routes.h). So no gateway needs to
 * publish deliveries (a compromised gateway could forge any frame to any user with that right,
 * docs/security.md). Queue group "api": each typing reaches one relay. Its own subscription
 * thread and PostgreSQL connection. */
#ifndef WK_TYPING_H
#define WK_TYPING_H

#include "chat_status.h"
#include "wk_app.h"

typedef struct wk_typing wk_typing;

/* Subscribes; *out set only on CHAT_OK. app is borrowed and outlives the relay. */
chat_status wk_typing_start(wk_app *app, wk_typing **out);

/* Drains the subscription, waits for its last callback, closes the connection. NULL-safe. */
void wk_typing_destroy(wk_typing *t);

#endif
