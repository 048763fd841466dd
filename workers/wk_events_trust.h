/* Which CHAT_EVENTS publishes the ingest may trust to be on the broker's disk. A PubAck says a write
 * is in the broker; with a JetStream sync interval (CHAT_NATS_SYNC) it reaches the disk up to that
 * long after, and a broker that dies meanwhile (a power loss, a machine lost) comes back without
 * the newest writes: the stream loses a suffix, and later publishes reuse its sequence numbers.
 * So a confirmed publish moves its partition's cursor only once the interval has passed AND the
 * newest write acknowledged when it was confirmed is still in the stream, that very publish (its
 * Chat-Publish tag: the same event published again after a loss, a duplicate answered from the
 * store, lands under the same Nats-Msg-Id at a reused sequence): if it is, so is every write of
 * that life of the broker before it; if not, the cursors stay and the partitions are repaired from
 * them. Every due checkpoint is read, oldest first: a broker back from a loss takes new writes,
 * which say nothing of the ones it lost before them. A publish the broker answered
 * as a duplicate wrote nothing: what its sequence must hold is the earlier write of that
 * Nats-Msg-Id (a repair republishes the events it already has; their tags are not the stream's).
 *
 * This module is the queue of such checkpoints, oldest first: pure, one committer's thread. */
#ifndef WK_EVENTS_TRUST_H
#define WK_EVENTS_TRUST_H
#include <stdbool.h>
#include <stdint.h>

/* Checkpoints kept at once: at one confirmation a second and a sync interval of S seconds about
 * S + 2 are waiting; past this many the newest absorbs the next (trusted later, never earlier). */
#define WK_TRUST_MAX 16

typedef struct wk_trust_point {
    int64_t trusted_ms; /* monotonic ms from when the broker has synced every write of it */
    uint64_t seq;       /* the highest CHAT_EVENTS sequence acknowledged when it was made (0: none) */
    char tag[160];      /* that write's Chat-Publish tag (wk_ingest_events.c: one per publish), or
                         * with by_id its Nats-Msg-Id (the PubAck said duplicate) */
    bool by_id;
    int64_t *upto_us;   /* per partition: where its cursor may move (0: nowhere) */
} wk_trust_point;

typedef struct wk_trust {
    wk_trust_point q[WK_TRUST_MAX];
    int head, n;
    int nparts;
    uint64_t gen; /* the committer's connection generation the points belong to */
} wk_trust;

void wk_trust_init(wk_trust *t, int nparts);
void wk_trust_free(wk_trust *t);
/* Forgets every point (a lease lost, a loss found). */
void wk_trust_clear(wk_trust *t);
/* Queues a point: trusted from trusted_ms, checked by seq and tag (a Nats-Msg-Id when by_id), moving partition p's cursor to
 * upto_us[p] (nparts values, 0: not moved; copied). Full: merged into the newest point. */
void wk_trust_push(wk_trust *t, int64_t trusted_ms, uint64_t seq, const char *tag, bool by_id,
                   const int64_t *upto_us);
/* How many of the oldest points are trusted by now_ms. */
int wk_trust_due(const wk_trust *t, int64_t now_ms);
/* The i-th oldest point (i < t->n). */
const wk_trust_point *wk_trust_at(const wk_trust *t, int i);
/* Drops the n oldest points (after they were checked), merging what they move into upto_us
 * (nparts values: each the greatest of its own and theirs). */
void wk_trust_pop(wk_trust *t, int n, int64_t *upto_us);

/* The answer of one read of a checkpoint's write: there, gone (or another write at its sequence),
 * or no answer from the broker. */
typedef enum { WK_TRUST_KEPT, WK_TRUST_LOST, WK_TRUST_UNKNOWN } wk_trust_verdict;

/* Reads the first n checkpoints, oldest first, with check(point, arg), until one is not kept;
 * returns how many were (the caller pops them) and *stop the answer that stopped it (KEPT when all
 * were). Each is read, not only the newest: a broker back from losing its unsynced suffix takes
 * new writes, which vouch for nothing it lost before them. */
int wk_trust_check_run(const wk_trust *t, int n, wk_trust_verdict (*check)(const wk_trust_point *, void *),
                       void *arg, wk_trust_verdict *stop);

#endif
