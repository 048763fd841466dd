-- 0004_change_targets: find the changes (edit, delete, reaction) of a message by its seq.
--
-- History marks a deleted message with EXISTS (SELECT 1 FROM messages d WHERE
-- d.conversation_id = m.conversation_id AND d.kind = 'delete' AND d.target_seq = m.seq) for each
-- row it returns, and the ingest asks the same for every change it stores ("was the target
-- deleted?"). With only the primary key (conversation_id, seq, created_at) each of those probes
-- reads every row of the conversation in every partition: 100 rows of history in a conversation
-- of a million events would read 100 million rows. This index answers each probe with one index
-- lookup per partition.
--
-- Partial: only change events are in it (a small share of all events), so storing an ordinary
-- text or system message (the hot insert path) costs nothing more than the predicate check;
-- that is why `messages` otherwise keeps to its primary key (docs/architecture.md, Storage).
-- Created on the partitioned table, so every partition, present and future, gets its own.
-- Plain CREATE INDEX (CONCURRENTLY is not possible on a partitioned table nor inside the
-- migration's transaction): it blocks inserts while it builds, which on a fresh or small
-- database is a moment. On a large one, build it first on each partition with CREATE INDEX
-- CONCURRENTLY, then CREATE INDEX ... ON ONLY messages and ALTER INDEX ... ATTACH PARTITION.
CREATE INDEX messages_changes_target_idx ON messages (conversation_id, target_seq)
    WHERE kind IN ('delete', 'edit', 'reaction');

COMMENT ON INDEX messages_changes_target_idx IS
    'Changes (edit, delete, reaction) by their target message: tombstones in history, target checks in ingest.';
