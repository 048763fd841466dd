/* A TLS client for the tests that does not touch ws_client: a local plain TCP port whose every
 * connection is carried over its own TLS connection (OpenSSL) to a server, which verifies the
 * server's certificate. ws_client (and test_ops_http_get) connected to the tunnel's port thus speak
 * wss:// (https://) to the server with every framing feature of ws_client. Threads of its own;
 * start and stop from one thread. */
#ifndef TLS_TUNNEL_H
#define TLS_TUNNEL_H
#include <stdbool.h>
#include <stddef.h>

#include "chat_status.h"

typedef struct tls_tunnel tls_tunnel;

/* Listens on 127.0.0.1:<free port>. Each accepted connection opens TCP to host:port (an IPv4
 * address) and a TLS handshake with SNI server_name (may be NULL); with ca_file the server's
 * chain must verify against it and its certificate must match verify_ip (an IP address SAN),
 * else the handshake fails and the plain connection is closed at once. CHAT_OK with *out, or a
 * line in why. */
chat_status tls_tunnel_start(const char *host, int port, const char *ca_file, const char *server_name,
                             const char *verify_ip, tls_tunnel **out, char *why, size_t whysz);

/* The local plain port. */
int tls_tunnel_port(const tls_tunnel *t);

/* Handshakes that succeeded and failed so far. */
unsigned tls_tunnel_handshakes(tls_tunnel *t);
unsigned tls_tunnel_failures(tls_tunnel *t);

/* A line about the last handshake: protocol, cipher and the server certificate's subject on
 * success ("TLSv1.3 TLS_AES_256_GCM_SHA384 subject=CN=localhost"), the OpenSSL error otherwise. */
void tls_tunnel_last(tls_tunnel *t, char *out, size_t outsz);

/* Closes the listener and every carried connection, joins the threads, frees. NULL-safe. */
void tls_tunnel_stop(tls_tunnel *t);

#endif
