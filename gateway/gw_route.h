/* The router of inbound frames (gw_route.c). lws thread only. */
#ifndef GW_ROUTE_H
#define GW_ROUTE_H
#include <stddef.h>

#include "gw_server.h"
#include "gw_session.h"

/* A whole frame of s (data is borrowed): answered, or handed to the module of its type. */
void gw_route_frame(gw_server *srv, gw_session *s, const char *data, size_t len);

#endif
