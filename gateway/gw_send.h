/* The send path (gw_send.c): posts and cursors of members, from the frame to the ack. lws thread
 * only. */
#ifndef GW_SEND_H
#define GW_SEND_H
#include <stdint.h>

#include "gw_frame.h"
#include "gw_server.h"
#include "gw_session.h"

/* The actions waiting for a member check ("conv/user" -> its waiting actions, in order). Opaque. */
typedef struct gw_send_checks gw_send_checks;

/* None waiting; the caller (gw_server.c) owns it. */
gw_send_checks *gw_send_create(void);
/* At stop: frees every action still waiting for a member check. NULL-safe. */
void gw_send_destroy(gw_send_checks *c);

/* send, edit, delete and react: each becomes a Post of its kind, published once its sender is
 * known to be (or may be) a member. */
void gw_send_post(gw_server *srv, gw_session *s, const gw_inframe *f);
/* seen and read: only a member's cursors are taken (a non-member gets not_member). */
void gw_send_cursor(gw_server *srv, gw_session *s, const gw_inframe *f);
/* The ack of a stored post to its sender's session s (it leaves admission control's count). */
void gw_send_ack(gw_server *srv, gw_session *s, const char *conv, const char *cmid, uint64_t seq, const char *id);

#endif
