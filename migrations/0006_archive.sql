-- 0006_archive: cold storage of `messages` partitions (docs/storage.md).
--
-- Applied by `chat-worker migrate` as role `chat` in one transaction (no BEGIN/COMMIT, no psql
-- meta-commands, no rows from the last statement).
--
-- A partition whose whole span is older than CHAT_HOT_RETENTION is written to object storage as
-- zstd chunks (one per conversation and partition, split past 5,000 events or 2 MiB), then
-- detached and dropped. Every step is a committed state of its archive_partitions row, so a pass
-- killed at any point is finished (or undone) by the next one:
--
--   planned    rows counted, objects and chunks recorded here BEFORE anything is uploaded, so no
--              object can exist that these tables do not name; the rows are still hot
--   uploaded   every object was PUT
--   verified   every object was read back: length and SHA-256 match, every chunk decodes to the
--              conversation, seq range and row count recorded for it
--   detached   one transaction: the partition is detached after its row count was checked under
--              lock, its chunks become `live` (readable by history and sync), the targets of its
--              delete events go to archive_tombstones
--   dropped    the detached table is dropped and its message_dedupe rows pruned
--   restoring  `chatctl archive restore` put the rows back into `messages` and took the chunks
--              out of service; its objects are being deleted
--   restored   the objects are deleted; the row stays as history (objects and chunks are gone)
--
-- A pass that finds a partition `planned`, `uploaded` or `verified` whose objects cannot be
-- verified deletes those objects first, then these rows, and plans it again; `uploaded` and
-- `verified` go on from where they were.

-- Exclusion constraint on (conversation, seq range) below: = on text inside a GiST index.
-- btree_gist is a trusted extension (PostgreSQL 13+), so the database owner may create it.
CREATE EXTENSION IF NOT EXISTS btree_gist;

------------------------------------------------------------------------------------------------
-- One row per archiving of a partition (a partition archived, restored and archived again has
-- two). At most one row per partition name is in progress or holds data in the archive.
------------------------------------------------------------------------------------------------
CREATE TABLE archive_partitions (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_name  text        NOT NULL,
    from_ts         timestamptz NOT NULL,
    until_ts        timestamptz NOT NULL,
    state           text        NOT NULL
                                CONSTRAINT archive_partitions_state_check
                                CHECK (state IN ('planned', 'uploaded', 'verified', 'detached', 'dropped',
                                                 'restoring', 'restored')),
    rows            bigint      NOT NULL DEFAULT 0,
    conversations   integer     NOT NULL DEFAULT 0,
    bytes           bigint      NOT NULL DEFAULT 0,  -- compressed: the sum of the objects
    raw_bytes       bigint      NOT NULL DEFAULT 0,  -- the chunks before compression
    planned_at      timestamptz NOT NULL DEFAULT now(),
    uploaded_at     timestamptz,
    verified_at     timestamptz,
    detached_at     timestamptz,
    dropped_at      timestamptz,
    restored_at     timestamptz,
    last_error      text,
    CONSTRAINT archive_partitions_span_check CHECK (until_ts > from_ts)
);

CREATE UNIQUE INDEX archive_partitions_current_idx ON archive_partitions (partition_name)
    WHERE state NOT IN ('dropped', 'restored');

COMMENT ON TABLE archive_partitions IS
    'Archive role: one row per archiving of a messages partition and the last step it reached (planned, uploaded, verified, detached, dropped; restoring, restored).';

------------------------------------------------------------------------------------------------
-- Objects: one or more per archived partition (a new part past 64 MiB), named
-- <CHAT_ARCHIVE_URL>/<partition>/<plan time ms>-<part>.chunks. The full URL is stored, so
-- objects written under an earlier CHAT_ARCHIVE_URL stay readable after it changes.
------------------------------------------------------------------------------------------------
CREATE TABLE archive_objects (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_id    bigint      NOT NULL REFERENCES archive_partitions (id) ON DELETE CASCADE,
    part            integer     NOT NULL,
    url             text        NOT NULL,
    bytes           bigint      NOT NULL,
    sha256          text        NOT NULL,
    chunks          integer     NOT NULL,
    rows            bigint      NOT NULL,
    CONSTRAINT archive_objects_url_key UNIQUE (url),
    CONSTRAINT archive_objects_part_key UNIQUE (partition_id, part)
);

COMMENT ON TABLE archive_objects IS
    'Objects in cold storage (full URL), their size and SHA-256; recorded before they are uploaded.';

------------------------------------------------------------------------------------------------
-- The index of the cold tier: (conversation, seq range) -> object and byte range. A chunk is a
-- whole zstd frame, readable alone with one range GET. Only `live` chunks are read by history and
-- sync; chunks become live in the transaction that detaches their partition, so a reader sees
-- each event in the hot tier or in a live chunk (or, between its two statements, in both: readers
-- drop the repeat by seq). Live chunks of a conversation never overlap: an event is never
-- archived twice.
------------------------------------------------------------------------------------------------
CREATE TABLE archive_chunks (
    object_id       bigint      NOT NULL REFERENCES archive_objects (id) ON DELETE CASCADE,
    byte_offset     bigint      NOT NULL CONSTRAINT archive_chunks_offset_check CHECK (byte_offset >= 0),
    byte_length     bigint      NOT NULL CONSTRAINT archive_chunks_length_check CHECK (byte_length > 0),
    raw_length      bigint      NOT NULL,
    conversation_id text        NOT NULL,
    seq_lo          bigint      NOT NULL,
    seq_hi          bigint      NOT NULL,
    rows            integer     NOT NULL,
    live            boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (object_id, byte_offset),
    CONSTRAINT archive_chunks_seq_check CHECK (seq_lo >= 1 AND seq_hi >= seq_lo),
    CONSTRAINT archive_chunks_no_overlap EXCLUDE USING gist
        (conversation_id WITH =, int8range(seq_lo, seq_hi, '[]') WITH &&) WHERE (live)
);

-- history: the chunks of a conversation below a seq, newest first; sync: from a seq, oldest first
CREATE INDEX archive_chunks_read_idx ON archive_chunks (conversation_id, seq_hi) WHERE live;

COMMENT ON TABLE archive_chunks IS
    'Cold index: each chunk (one zstd frame) of an object with its conversation, seq range and byte range; live = readable.';

------------------------------------------------------------------------------------------------
-- Tombstones of the cold tier: the targets of the delete events of archived partitions, so
-- history still blanks a deleted message (and its edits) once the delete event itself is cold.
------------------------------------------------------------------------------------------------
CREATE TABLE archive_tombstones (
    conversation_id text        NOT NULL,
    target_seq      bigint      NOT NULL,
    partition_id    bigint      NOT NULL REFERENCES archive_partitions (id) ON DELETE CASCADE,
    PRIMARY KEY (conversation_id, target_seq)
);

COMMENT ON TABLE archive_tombstones IS
    'Messages deleted by delete events that are archived (conversation, target seq).';

------------------------------------------------------------------------------------------------
-- Partition upkeep: partitions of another span than CHAT_PARTITION_SPAN (the migration's daily
-- ones on a fresh database, or after the span was changed) that are still empty and not yet
-- over are dropped, so chat_ensure_partitions() can put partitions of the configured span in
-- their place in the same transaction. A partition with rows is never touched. Called by the
-- archive role before chat_ensure_partitions(), in one transaction with it (the caller sets a
-- lock_timeout: the DROP needs a moment of ACCESS EXCLUSIVE on `messages`, taken before the
-- partition is checked again, so no insert can slip in between the check and the drop).
-- Returns how many it dropped.
------------------------------------------------------------------------------------------------
CREATE FUNCTION chat_reshape_partitions(span interval) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    step    bigint := chat_span_seconds(span);
    r       record;
    lo      numeric;
    hi      numeric;
    nsp     text;
    empty   boolean;
    dropped integer := 0;
    locked  boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('chat_partitions'));
    SELECT ns.nspname INTO nsp
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
    WHERE c.oid = 'messages'::regclass;
    FOR r IN
        SELECT b.partition_name, b.from_ts, b.until_ts
        FROM chat_partition_bounds() b
        WHERE b.until_ts > now() AND NOT b.detach_pending
          AND isfinite(b.from_ts) AND isfinite(b.until_ts)
        ORDER BY b.from_ts
    LOOP
        lo := extract(epoch FROM r.from_ts);
        hi := extract(epoch FROM r.until_ts);
        CONTINUE WHEN hi - lo = step AND mod(lo, step) = 0;
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I.%I)', nsp, r.partition_name) INTO empty;
        CONTINUE WHEN NOT empty;
        IF NOT locked THEN
            EXECUTE format('LOCK TABLE %I.messages IN ACCESS EXCLUSIVE MODE', nsp);
            locked := true;
            EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I.%I)', nsp, r.partition_name) INTO empty;
            CONTINUE WHEN NOT empty;
        END IF;
        EXECUTE format('DROP TABLE %I.%I', nsp, r.partition_name);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

REVOKE EXECUTE ON FUNCTION chat_reshape_partitions(interval) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- `chatctl archive status`: every attached partition (tier hot) and every archiving (tier cold
-- once detached, archiving before), oldest first, with the objects of each as a JSON array.
------------------------------------------------------------------------------------------------
CREATE VIEW chat_archive_status AS
SELECT p.partition_name                                   AS partition,
       p.from_ts                                          AS "from",
       p.until_ts                                         AS until,
       'hot'::text                                        AS tier,
       CASE WHEN a.id IS NULL THEN 'attached' ELSE a.state END AS state,
       p.estimated_rows                                   AS rows,
       p.total_bytes                                      AS bytes,
       NULL::bigint                                       AS raw_bytes,
       NULL::timestamptz                                  AS archived_at,
       a.last_error                                       AS error,
       '[]'::jsonb                                        AS objects
FROM chat_partitions p
LEFT JOIN archive_partitions a
       ON a.partition_name = p.partition_name AND a.state IN ('planned', 'uploaded', 'verified')
UNION ALL
SELECT a.partition_name,
       a.from_ts,
       a.until_ts,
       CASE WHEN a.state IN ('detached', 'dropped') THEN 'cold' ELSE 'archiving' END,
       a.state,
       a.rows,
       a.bytes,
       a.raw_bytes,
       a.detached_at,
       a.last_error,
       coalesce((SELECT jsonb_agg(jsonb_build_object('url', o.url, 'bytes', o.bytes, 'chunks', o.chunks,
                                                     'rows', o.rows, 'sha256', o.sha256) ORDER BY o.part)
                 FROM archive_objects o WHERE o.partition_id = a.id), '[]'::jsonb)
FROM archive_partitions a
WHERE a.state NOT IN ('planned', 'uploaded', 'verified', 'restored')
ORDER BY 2, 1;

COMMENT ON VIEW chat_archive_status IS
    'chatctl archive status: attached partitions (hot) and archived ones (cold) with their objects.';

------------------------------------------------------------------------------------------------
-- Reporting (docs/storage.md, "Reporting"): the archived volume.
-- report_archive_volume: per UTC day of the partitions' start, what is in cold storage now.
-- report_conversation_stats gains archived_messages (events of the conversation in live chunks),
-- added at the end so CREATE OR REPLACE keeps its columns and chat_reporting's grant.
------------------------------------------------------------------------------------------------
CREATE VIEW report_archive_volume AS
SELECT (a.from_ts AT TIME ZONE 'UTC')::date                 AS day,
       count(*)                                             AS partitions,
       sum(a.rows)::bigint                                  AS messages,
       coalesce(sum(o.objects), 0)::bigint                  AS objects,
       coalesce(sum(o.chunks), 0)::bigint                   AS chunks,
       sum(a.bytes)::bigint                                 AS compressed_bytes,
       sum(a.raw_bytes)::bigint                             AS raw_bytes,
       min(a.detached_at)                                   AS first_archived_at,
       max(a.detached_at)                                   AS last_archived_at
FROM archive_partitions a
LEFT JOIN (
    SELECT x.partition_id, count(*) AS objects, sum(x.chunks) AS chunks
    FROM archive_objects x
    GROUP BY x.partition_id
) o ON o.partition_id = a.id
WHERE a.state IN ('detached', 'dropped')
GROUP BY 1;

COMMENT ON VIEW report_archive_volume IS
    'Per UTC day (of the partitions'' start): archived partitions, events, objects, chunks, compressed and raw bytes, first/last archiving time (cold storage only).';

CREATE OR REPLACE VIEW report_conversation_stats AS
SELECT c.id                                 AS conversation_id,
       c.kind,
       c.created_at,
       c.deleted_at,
       coalesce(mb.members, 0)              AS members,
       c.last_seq,
       coalesce(ms.hot_messages, 0)         AS hot_messages,
       ms.first_message_at,
       ms.last_message_at,
       coalesce(ar.archived_messages, 0)    AS archived_messages
FROM conversations c
LEFT JOIN (
    SELECT cm.conversation_id, count(*) AS members
    FROM conversation_members cm
    GROUP BY cm.conversation_id
) mb ON mb.conversation_id = c.id
LEFT JOIN (
    SELECT m.conversation_id,
           count(*)          AS hot_messages,
           min(m.created_at) AS first_message_at,
           max(m.created_at) AS last_message_at
    FROM messages m
    GROUP BY m.conversation_id
) ms ON ms.conversation_id = c.id
LEFT JOIN (
    SELECT k.conversation_id, sum(k.rows)::bigint AS archived_messages
    FROM archive_chunks k
    WHERE k.live
    GROUP BY k.conversation_id
) ar ON ar.conversation_id = c.id;

COMMENT ON VIEW report_conversation_stats IS
    'Per conversation: kind, created/deleted times, member count, last seq, events in hot storage and their first/last time, events in cold storage.';

GRANT SELECT ON report_archive_volume TO chat_reporting;
