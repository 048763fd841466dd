/* chatctl import (chatctl_import.c): trusted posts read as JSON lines from stdin, published to
 * CHAT_IN with a bounded window of PubAcks outstanding. */
#ifndef CHATCTL_IMPORT_H
#define CHATCTL_IMPORT_H

#include "chat_config.h"

/* argv: the options after "import". Exit code: 0, 1 (a line skipped, a post not taken or not
 * stored), 2 (usage). Prints one JSON summary line. Main thread. */
int chatctl_import(const chat_cfg *cfg, int argc, char **argv);

#endif
