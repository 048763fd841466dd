/* Deliveries to the users this gateway holds (gw_delivery.c). lws thread only. */
#ifndef GW_DELIVERY_H
#define GW_DELIVERY_H
#include <nats/nats.h>

#include "gw_server.h"

/* A delivery on chat.deliver.u.<user>, from the bus. msg is borrowed. */
void gw_delivery_handle(gw_server *srv, const char *user, natsMsg *msg);
/* A DeliveryBatch on chat.deliver.g.<this gateway>, from the bus: each event to the sessions of its
 * recipients held here, exactly as gw_delivery_handle would for each of them. msg is borrowed. */
void gw_delivery_handle_routed(gw_server *srv, natsMsg *msg);

#endif
