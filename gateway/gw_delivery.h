/* Deliveries to the users this gateway holds (gw_delivery.c). lws thread only. */
#ifndef GW_DELIVERY_H
#define GW_DELIVERY_H
#include <nats/nats.h>

#include "gw_server.h"

/* A DeliveryBatch on chat.deliver.g.<this gateway>, from the bus (the only way deliveries come):
 * each event and item to the sessions of its recipients held here. msg is borrowed. */
void gw_delivery_handle_routed(gw_server *srv, natsMsg *msg);

#endif
