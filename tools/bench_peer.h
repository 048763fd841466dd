/* chat-bench: the wire details of the peers it is compared with (bench/README.md, "Peers"):
 * XMPP over WebSocket (RFC 7395: one whole XML element per frame) and Socket.IO 4 packets
 * (Engine.IO 4 over WebSocket). Scanners only, no trees and no copies: enough for the elements
 * and packets the servers send to a client that logs in, sends and receives chat messages. Any
 * thread, no state. */
#ifndef BENCH_PEER_H
#define BENCH_PEER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ XMPP */

/* The name of the root element of an XML frame (prefix included: "stream:features"), after
 * white space and an <?xml ...?> declaration. False when the frame does not start an element. */
bool bench_xml_root(const char *text, size_t len, const char **name, size_t *name_len);

/* The value (raw, entities left as they are) of attribute attr of the root element's start tag;
 * false when it has none. */
bool bench_xml_attr(const char *text, size_t len, const char *attr, const char **val, size_t *val_len);

/* The text of the first element named child anywhere in the frame (<child ...>TEXT</child>,
 * raw); false when there is none. An empty element gives an empty text. */
bool bench_xml_child_text(const char *text, size_t len, const char *child, const char **val, size_t *val_len);

/* True when needle occurs in text[0..len). */
bool bench_mem_has(const char *text, size_t len, const char *needle);

/* The SASL PLAIN initial response for user and password (authorization id empty), base64, into
 * out (NUL-terminated). False when out is too small. */
bool bench_sasl_plain(const char *user, const char *password, char *out, size_t size);

/* ------------------------------------------------------------------ Socket.IO */

typedef enum bench_sio_kind {
    BENCH_SIO_OTHER = 0,   /* anything else (upgrade probes, noop, ...) */
    BENCH_SIO_OPEN,        /* Engine.IO "0{...}": the transport is open */
    BENCH_SIO_CLOSE,       /* Engine.IO "1" */
    BENCH_SIO_PING,        /* Engine.IO "2" (answer "3") */
    BENCH_SIO_CONNECTED,   /* Socket.IO "40{...}": the namespace accepted the connection */
    BENCH_SIO_DISCONNECT,  /* Socket.IO "41" */
    BENCH_SIO_EVENT,       /* Socket.IO "42[...]": name and data set */
    BENCH_SIO_ACK,         /* Socket.IO "43<id>[...]": ack_id set */
    BENCH_SIO_CONNECT_ERR, /* Socket.IO "44{...}" */
} bench_sio_kind;

typedef struct bench_sio_packet {
    bench_sio_kind kind;
    uint64_t ack_id;  /* BENCH_SIO_ACK; also an EVENT that asks for an ack (has_ack) */
    bool has_ack;
    const char *name; /* EVENT: the event name, without quotes */
    size_t name_len;
    const char *data; /* EVENT: the first argument as raw JSON (an object for our events) */
    size_t data_len;
} bench_sio_packet;

/* Classifies one text frame. False when it is not an Engine.IO / Socket.IO packet at all. */
bool bench_sio_parse(const char *text, size_t len, bench_sio_packet *out);

#endif
