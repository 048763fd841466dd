/* Allocation under the one out-of-memory policy (chat_status.h, docs/architecture.md): each
 * returns memory or ends the process with CHAT_OOM() naming the caller's file and line. A size
 * of 0 allocates 1 byte, so a result is never NULL. For the process's own bookkeeping; sizes a
 * peer chooses are bounded before they get here (docs/security.md). */
#ifndef CHAT_MEM_H
#define CHAT_MEM_H
#include <stdlib.h>
#include <string.h>

#include "chat_status.h"

static inline void *chat_xmalloc_at(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        chat_oom(file, line);
    return p;
}

static inline void *chat_xcalloc_at(size_t n, size_t size, const char *file, int line)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        chat_oom(file, line);
    return p;
}

static inline void *chat_xrealloc_at(void *old, size_t n, const char *file, int line)
{
    void *p = realloc(old, n ? n : 1);
    if (p == NULL)
        chat_oom(file, line);
    return p;
}

static inline char *chat_xstrdup_at(const char *s, const char *file, int line)
{
    char *p = strdup(s);
    if (p == NULL)
        chat_oom(file, line);
    return p;
}

#define chat_xmalloc(n) chat_xmalloc_at((n), __FILE__, __LINE__)
#define chat_xcalloc(n, size) chat_xcalloc_at((n), (size), __FILE__, __LINE__)
#define chat_xrealloc(p, n) chat_xrealloc_at((p), (n), __FILE__, __LINE__)
#define chat_xstrdup(s) chat_xstrdup_at((s), __FILE__, __LINE__)

#endif
