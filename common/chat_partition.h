/* Partition of a conversation: FNV-1a (32-bit) of the id's bytes, modulo the partition count.
 *   h = 2166136261; for each byte b: h = (h XOR b) * 16777619 (mod 2^32); partition = h % n
 * Stable and simple, so a backend in any language computes the same partition (docs/nats.md).
 * Any thread. */
#ifndef CHAT_PARTITION_H
#define CHAT_PARTITION_H
#include <stdint.h>

uint32_t chat_fnv1a32(const char *s);
/* n must be >= 1. */
uint32_t chat_partition_of(const char *conv, uint32_t n);

#endif
