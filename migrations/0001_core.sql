-- 0001_core: conversations, members, messages (partitioned by time), dedupe, partition upkeep.
--
-- Applied by `chat-worker migrate` as role `chat` (owner of database `chat`, not superuser),
-- the whole file in one transaction, sent as one multi-statement simple query: no BEGIN/COMMIT
-- and no psql meta-commands in here, and the last statement must not return rows (the runner
-- checks for a command status). The runner records the version in schema_migrations, so this
-- file runs once per database.
--
-- Identifiers (conversation and user ids) follow the protocol: 1 to 64 of [A-Za-z0-9_-].
-- All timestamps are timestamptz; partition boundaries are multiples of the span since the
-- Unix epoch (UTC), so they do not depend on the session's TimeZone.

------------------------------------------------------------------------------------------------
-- Conversations. last_seq is the per-conversation counter: the ingest worker that owns the
-- conversation's ordering partition bumps it in the same transaction that inserts the
-- messages (UPDATE conversations SET last_seq = last_seq + n ... RETURNING last_seq), so seq
-- starts at 1 and grows by exactly 1. Deleting a conversation sets deleted_at (soft delete);
-- its history stays until its partitions are archived.
------------------------------------------------------------------------------------------------
CREATE TABLE conversations (
    id          text        PRIMARY KEY
                            CONSTRAINT conversations_id_format CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    kind        text        NOT NULL DEFAULT 'group',
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    last_seq    bigint      NOT NULL DEFAULT 0
                            CONSTRAINT conversations_last_seq_nonneg CHECK (last_seq >= 0)
);

COMMENT ON TABLE conversations IS
    'One row per conversation; last_seq is the per-conversation seq counter bumped by the ingest worker in its insert transaction.';
COMMENT ON COLUMN conversations.last_seq IS
    'Highest seq assigned in this conversation (0 = no event yet).';

------------------------------------------------------------------------------------------------
-- Members and their cursors. delivered_seq is the `seen` cursor (the client has received
-- everything up to it; sync starts after it), read_seq the `read` cursor (receipts).
-- updated_at is set by whoever moves a cursor or the role (no trigger: cursor updates are hot).
------------------------------------------------------------------------------------------------
CREATE TABLE conversation_members (
    conversation_id text        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         text        NOT NULL
                                CONSTRAINT conversation_members_user_id_format
                                CHECK (user_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    role            text        NOT NULL DEFAULT 'member'
                                CONSTRAINT conversation_members_role_check
                                CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    delivered_seq   bigint      NOT NULL DEFAULT 0
                                CONSTRAINT conversation_members_delivered_seq_nonneg
                                CHECK (delivered_seq >= 0),
    read_seq        bigint      NOT NULL DEFAULT 0
                                CONSTRAINT conversation_members_read_seq_nonneg
                                CHECK (read_seq >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);

-- A user's conversations (and their cursors) are read on every sync: by user first.
CREATE INDEX conversation_members_user_idx ON conversation_members (user_id, conversation_id);

COMMENT ON COLUMN conversation_members.delivered_seq IS
    'Delivery cursor (`seen`): the member''s devices have received every event up to this seq.';
COMMENT ON COLUMN conversation_members.read_seq IS
    'Read cursor (`read`): the user has read up to this seq.';

------------------------------------------------------------------------------------------------
-- Messages: every stored event of a conversation (text, edit, delete, reaction, system), one
-- row each, with its own seq. Range-partitioned by created_at, which is the broker's timestamp
-- of the message: the same on every redelivery, so a retried insert lands in the same
-- partition. There is deliberately NO default partition: a default partition would have to be
-- scanned (and would block) whenever a partition is attached or detached, and archiving
-- detaches old partitions. Partitions are created ahead by chat_ensure_partitions() below.
--
-- Indexes: only the primary key, a btree on (conversation_id, seq, created_at) in every
-- partition. Reads are by conversation and seq (history: seq < N newest first; sync: seq > N
-- oldest first), which the primary key serves in each partition. Every further index would
-- cost on each insert, and inserts are the hot path; reporting scans instead.
-- No foreign key to conversations either: the ingest worker checks membership before it
-- assigns a seq, and a foreign key would cost a lookup per row.
------------------------------------------------------------------------------------------------
CREATE TABLE messages (
    conversation_id text        NOT NULL,
    seq             bigint      NOT NULL CONSTRAINT messages_seq_positive CHECK (seq >= 1),
    id              text        NOT NULL,
    client_msg_id   text        NOT NULL,
    sender_id       text        NOT NULL,
    kind            text        NOT NULL DEFAULT 'text'
                                CONSTRAINT messages_kind_check
                                CHECK (kind IN ('text', 'edit', 'delete', 'reaction', 'system')),
    body            text        NOT NULL DEFAULT '',
    meta            jsonb,
    target_seq      bigint,     -- edit, delete, reaction: the seq of the message they change
    emoji           text,       -- reaction only
    reaction_on     boolean,    -- reaction only: true adds, false removes
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, seq, created_at)
) PARTITION BY RANGE (created_at);

COMMENT ON TABLE messages IS
    'Every stored event of every conversation, partitioned by range of created_at (the broker timestamp); partitions messages_p<start epoch seconds>, created by chat_ensure_partitions().';

------------------------------------------------------------------------------------------------
-- Dedupe. The protocol promises that the same (conversation, cmid) is stored once while it is
-- in hot storage. A unique key on (conversation_id, client_msg_id) cannot live on `messages`:
-- PostgreSQL refuses a unique constraint on a partitioned table unless it includes the
-- partition key (created_at), and with created_at in it the key would only be unique within
-- one partition, i.e. it would not catch the same cmid arriving with another timestamp.
-- So the uniqueness lives here, in an unpartitioned table:
--   * every stored event (message, edit, delete, reaction, system) has a row here while its
--     partition is hot, written in the same transaction as its `messages` row;
--   * primary key (conversation_id, client_msg_id): the ingest worker inserts here first
--     (INSERT ... ON CONFLICT (conversation_id, client_msg_id) DO NOTHING RETURNING ...); on a
--     conflict it reads back seq and id and acks the duplicate with them instead of storing it
--     again;
--   * unique (conversation_id, seq): a seq assigned twice (two writers for one conversation
--     after a lost lease, a counter bug) is an error even when the two rows would land in
--     different `messages` partitions, where the partitioned primary key cannot see it;
--   * created_at equals the event's messages.created_at, so when a partition is archived its
--     dedupe rows are pruned by the same range (DELETE ... WHERE created_at >= lo AND
--     created_at < hi; the BRIN index below keeps that cheap). After that a resent cmid is a
--     new message, which is what "while the message is in hot storage" allows.
------------------------------------------------------------------------------------------------
CREATE TABLE message_dedupe (
    conversation_id text        NOT NULL,
    client_msg_id   text        NOT NULL,
    seq             bigint      NOT NULL,
    id              text        NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, client_msg_id),
    CONSTRAINT message_dedupe_conversation_seq_key UNIQUE (conversation_id, seq)
);

-- Rows arrive in roughly created_at order, so a BRIN index is tiny, nearly free on insert,
-- and turns the archive pruning by time range into a scan of the matching blocks only.
CREATE INDEX message_dedupe_created_at_brin ON message_dedupe USING brin (created_at);

COMMENT ON TABLE message_dedupe IS
    'Unique (conversation_id, client_msg_id) and (conversation_id, seq) for every hot event; a partitioned table cannot hold these keys without created_at. Pruned by created_at range when a messages partition is archived.';

------------------------------------------------------------------------------------------------
-- Partition upkeep.
------------------------------------------------------------------------------------------------

-- The span in whole seconds, checked: 1 second to 366 days (settings allow 1m to 7d).
CREATE FUNCTION chat_span_seconds(span interval) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    secs numeric := extract(epoch FROM span);
BEGIN
    IF secs < 1 OR secs > 366 * 86400 OR secs <> trunc(secs) THEN
        RAISE EXCEPTION 'partition span % is not a whole number of seconds between 1 second and 366 days', span
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN secs::bigint;
END
$$;

-- Name of the partition of span `span` that holds `ts`: messages_p<start>, where start is
-- floor(epoch(ts) / span_seconds) * span_seconds, in seconds since the Unix epoch.
CREATE FUNCTION chat_partition_name(ts timestamptz, span interval) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    step bigint := chat_span_seconds(span);
BEGIN
    IF NOT isfinite(ts) THEN
        RAISE EXCEPTION 'partition timestamp must be finite' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN 'messages_p' || (floor(extract(epoch FROM ts) / step) * step)::bigint::text;
END
$$;

-- The attached partitions of `messages` with their bounds, parsed from
-- pg_get_expr(relpartbound). A MINVALUE / MAXVALUE bound reads as -infinity / infinity; a
-- DEFAULT partition (there should be none) has both bounds null. detach_pending is true while
-- a DETACH PARTITION ... CONCURRENTLY is in progress. The SET clauses make the bound text
-- ISO/UTC whatever the caller's settings, so the literals parse back exactly.
CREATE FUNCTION chat_partition_bounds()
RETURNS TABLE (partition_name text, from_ts timestamptz, until_ts timestamptz,
               detach_pending boolean, partition_oid oid)
LANGUAGE plpgsql STABLE
SET datestyle = 'ISO, YMD' SET timezone = 'UTC' AS $$
DECLARE
    r     record;
    lo    text[];
    hi    text[];
BEGIN
    FOR r IN
        SELECT c.oid, c.relname::text AS relname, i.inhdetachpending,
               pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'messages'::regclass
    LOOP
        partition_name := r.relname;
        detach_pending := r.inhdetachpending;
        partition_oid := r.oid;
        lo := regexp_match(r.bound, 'FROM \((?:''([^'']*)''|(MINVALUE|MAXVALUE))\)');
        hi := regexp_match(r.bound, 'TO \((?:''([^'']*)''|(MINVALUE|MAXVALUE))\)');
        from_ts := CASE WHEN lo IS NULL THEN NULL
                        WHEN lo[1] IS NOT NULL THEN lo[1]::timestamptz
                        WHEN lo[2] = 'MINVALUE' THEN '-infinity'::timestamptz
                        ELSE 'infinity'::timestamptz END;
        until_ts := CASE WHEN hi IS NULL THEN NULL
                         WHEN hi[1] IS NOT NULL THEN hi[1]::timestamptz
                         WHEN hi[2] = 'MINVALUE' THEN '-infinity'::timestamptz
                         ELSE 'infinity'::timestamptz END;
        RETURN NEXT;
    END LOOP;
END
$$;

-- One partition [lo, hi) in epoch seconds, named messages_p<lo>; returns 1 if created, 0 if a
-- table of that name already exists (then nothing changes). For chat_ensure_partitions() only,
-- which holds the advisory lock and has checked that the range is free.
CREATE FUNCTION chat_create_partition(nsp text, lo bigint, hi bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    pname text := 'messages_p' || lo::text;
BEGIN
    IF to_regclass(format('%I.%I', nsp, pname)) IS NOT NULL THEN
        RAISE NOTICE 'chat_ensure_partitions: table %.% exists but is not attached over its range (detached?); left alone',
            nsp, pname;
        RETURN 0;
    END IF;
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.messages'
        ' FOR VALUES FROM (to_timestamp(%s)) TO (to_timestamp(%s))',
        nsp, pname, nsp, lo, hi);
    RETURN 1;
END
$$;

-- Creates the missing partitions of `messages` covering [from_ts, until_ts), each `span` long
-- and aligned to multiples of the span since the Unix epoch, named messages_p<start epoch
-- seconds>; returns how many it created (0 when all exist). Called by this migration for a
-- fresh database and by the worker at start and periodically with CHAT_PARTITION_SPAN.
--
-- Safe to call from several sessions at once: the transaction-scoped advisory lock serialises
-- callers, and the later one (READ COMMITTED) sees what the earlier one committed.
--
-- If the span was changed, a slot may overlap partitions made with the old span; then only
-- the uncovered parts of that slot are created (one partition per gap, named after the gap's
-- start), so a switch never fails on an overlap and never leaves a hole. A table that has a
-- slot's name but is not attached (a detached partition waiting to be archived) is left alone.
--
-- Keep the window a modest number of spans: every partition is a table plus an index, and all
-- the ones made in one call hold locks until commit. CREATE TABLE ... PARTITION OF also takes
-- a lock on `messages` that waits for running queries on it and holds up inserts behind it; a
-- caller on the hot path may SET LOCAL lock_timeout first and retry later.
CREATE FUNCTION chat_ensure_partitions(from_ts timestamptz, until_ts timestamptz, span interval)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    step     bigint;
    lo       bigint;
    hi       bigint;
    stop     numeric;
    gap_lo   numeric;
    created  integer := 0;
    nsp      text;
    pf       numeric[];   -- existing partitions, sorted: start and end in epoch seconds
    pu       numeric[];
    k        integer := 1;
    n        integer;
BEGIN
    IF from_ts IS NULL OR until_ts IS NULL OR span IS NULL THEN
        RAISE EXCEPTION 'chat_ensure_partitions: arguments must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT isfinite(from_ts) OR NOT isfinite(until_ts) THEN
        RAISE EXCEPTION 'chat_ensure_partitions: bounds must be finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    step := chat_span_seconds(span);
    IF until_ts <= from_ts THEN
        RETURN 0;
    END IF;
    lo := floor(extract(epoch FROM from_ts) / step)::bigint * step;
    stop := extract(epoch FROM until_ts);
    IF (stop - lo) / step > 100000 THEN
        RAISE EXCEPTION 'chat_ensure_partitions: [%, %) in spans of % is more than 100000 partitions',
            from_ts, until_ts, span USING ERRCODE = 'program_limit_exceeded';
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('chat_partitions'));

    -- Partitions go next to `messages`, whatever the search_path.
    SELECT ns.nspname INTO nsp
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
    WHERE c.oid = 'messages'::regclass;

    -- The existing ranges (they never overlap), read once, after taking the lock.
    SELECT coalesce(array_agg(extract(epoch FROM b.from_ts) ORDER BY b.from_ts), '{}'),
           coalesce(array_agg(extract(epoch FROM b.until_ts) ORDER BY b.from_ts), '{}')
      INTO pf, pu
    FROM chat_partition_bounds() b
    WHERE b.from_ts IS NOT NULL AND b.until_ts IS NOT NULL;
    n := cardinality(pf);

    WHILE lo < stop LOOP
        hi := lo + step;
        gap_lo := lo;
        WHILE k <= n AND pu[k] <= lo LOOP          -- ranges wholly before this slot
            k := k + 1;
        END LOOP;
        WHILE k <= n AND pf[k] < hi LOOP           -- ranges overlapping [lo, hi), in order
            IF pf[k] > gap_lo THEN
                created := created + chat_create_partition(nsp, gap_lo::bigint, floor(pf[k])::bigint);
            END IF;
            gap_lo := GREATEST(gap_lo, LEAST(hi, ceil(pu[k])));
            EXIT WHEN pu[k] > hi;                  -- reaches into the next slot: keep it
            k := k + 1;
        END LOOP;
        IF gap_lo < hi THEN
            created := created + chat_create_partition(nsp, gap_lo::bigint, hi);
        END IF;
        lo := hi;
    END LOOP;
    RETURN created;
END
$$;

-- Partitions of `messages` with their bounds and sizes, oldest first; for
-- `chatctl archive status` and admins. span = until_ts - from_ts.
CREATE VIEW chat_partitions AS
SELECT b.partition_name,
       b.from_ts,
       b.until_ts,
       b.until_ts - b.from_ts                       AS span,
       b.detach_pending,
       GREATEST(c.reltuples, 0)::bigint             AS estimated_rows,
       pg_total_relation_size(b.partition_oid)      AS total_bytes
FROM chat_partition_bounds() b
JOIN pg_class c ON c.oid = b.partition_oid
ORDER BY b.from_ts NULLS FIRST, b.partition_name;

COMMENT ON VIEW chat_partitions IS
    'Attached partitions of messages with their [from_ts, until_ts) bounds, estimated rows and size.';

-- Only the owner (the services' role) creates partitions.
REVOKE EXECUTE ON FUNCTION chat_ensure_partitions(timestamptz, timestamptz, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION chat_create_partition(text, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION chat_partition_bounds() FROM PUBLIC;

-- A fresh database can take messages at once: yesterday, today and the next two days (the
-- worker's archive role keeps creating them ahead with CHAT_PARTITION_SPAN). PERFORM in a DO
-- block, not SELECT: the runner wants a command status, not rows, from the file's last statement.
DO $$
BEGIN
    PERFORM chat_ensure_partitions(now() - interval '1 day', now() + interval '2 days', interval '1 day');
END
$$;
