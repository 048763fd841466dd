/* libFuzzer target: the gateway's client frame parser (gateway/gw_frame.c). Any input must give
 * either a checked frame or an error, never a crash, a leak or undefined behaviour. */
#include <stddef.h>
#include <stdint.h>

#include "gw_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_inframe f;
    gw_frame_error err;
    if (gw_frame_parse((const char *)data, size, &f, &err)) {
        /* a checked frame keeps its promises */
        if (f.conv && f.conv[0] == '\0')
            __builtin_trap();
        if (f.type == GW_IN_HISTORY && (f.limit < 1 || f.limit > GW_HISTORY_LIMIT_MAX))
            __builtin_trap();
    } else if (err.code == NULL || err.message == NULL) {
        __builtin_trap();
    }
    gw_inframe_free(&f);
    return 0;
}
