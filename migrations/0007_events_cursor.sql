-- 0007_events_cursor: how far each ingest partition's events are known to be in CHAT_EVENTS.
--
-- The ingest acks a batch once PostgreSQL committed it and the live deliveries are out; its
-- CHAT_EVENTS publishes are confirmed later, about once a second (docs/architecture.md,
-- "Ingest"). events_upto is the partition's cursor: every event of the partition created at or
-- before it is in CHAT_EVENTS (created_at is the broker timestamp of the post). NULL: never
-- confirmed. The owner writes it on its lease connection, like everything else it writes; a new
-- owner, and an owner whose publishes were not confirmed, republishes from `messages` what was
-- created after it (less a few seconds of slack), by the same Nats-Msg-Id <conv>:<seq>.
ALTER TABLE ingest_leases ADD COLUMN events_upto timestamptz;

COMMENT ON COLUMN ingest_leases.events_upto IS
    'Every event of the partition created at or before this is in CHAT_EVENTS (NULL: never confirmed).';

-- The repair reads `messages` by created_at, a range no other index serves. A BRIN index costs
-- almost nothing on the insert path (rows arrive in created_at order, a page range is summarized
-- once it is full) and finds a time range by skipping the page ranges outside it. Built on the
-- partitioned table, so every partition, present and future, gets its own; on a large database
-- build it per partition first (as 0004 says for its index).
CREATE INDEX messages_created_brin ON messages USING brin (created_at) WITH (autosummarize = on);

COMMENT ON INDEX messages_created_brin IS
    'Events by time range: the ingest''s CHAT_EVENTS repair (0007).';
