/* libFuzzer target: the protobuf envelopes every process decodes from NATS (schema/chat.proto):
 * a Post from CHAT_IN, a Delivery on chat.deliver.u.*, the api requests. */
#include <stddef.h>
#include <stdint.h>

#include "chat.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Chat__V1__Post *p = chat__v1__post__unpack(NULL, size, data);
    if (p)
        chat__v1__post__free_unpacked(p, NULL);
    Chat__V1__Delivery *d = chat__v1__delivery__unpack(NULL, size, data);
    if (d)
        chat__v1__delivery__free_unpacked(d, NULL);
    Chat__V1__SyncRequest *s = chat__v1__sync_request__unpack(NULL, size, data);
    if (s)
        chat__v1__sync_request__free_unpacked(s, NULL);
    Chat__V1__CursorBatch *c = chat__v1__cursor_batch__unpack(NULL, size, data);
    if (c)
        chat__v1__cursor_batch__free_unpacked(c, NULL);
    Chat__V1__HistoryReply *h = chat__v1__history_reply__unpack(NULL, size, data);
    if (h)
        chat__v1__history_reply__free_unpacked(h, NULL);
    return 0;
}
