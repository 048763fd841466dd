/* Partition hashing (FNV-1a 32). */
#include "chat_partition.h"

uint32_t chat_fnv1a32(const char *s)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

uint32_t chat_partition_of(const char *conv, uint32_t n)
{
    return chat_fnv1a32(conv) % (n ? n : 1);
}
