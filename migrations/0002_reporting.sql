-- 0002_reporting: reporting views and the read-only role chat_reporting.
--
-- Applied by `chat-worker migrate` as role `chat` in one transaction (no BEGIN/COMMIT, no psql
-- meta-commands, no rows from the last statement). The DO blocks are safe to run again.
-- Documented column by column in docs/reporting.md; change both together.
--
-- Days are UTC calendar days whatever the session's TimeZone. The views read what is in hot
-- storage (PostgreSQL); events whose partitions were archived no longer count.
-- The views are owned by `chat` and are not security_invoker views, so they read the tables
-- with the owner's rights: chat_reporting gets SELECT on these four views and nothing else.

------------------------------------------------------------------------------------------------
-- Events per UTC day. `messages` counts every stored event (all kinds: text, edit, delete,
-- reaction, system); the kinds are also counted one by one. `senders` is the number of distinct
-- users who stored a non-system event that day (system messages are posted by backends, not
-- people), the same number as report_active_users.active_users. Days without events are
-- absent.
------------------------------------------------------------------------------------------------
CREATE VIEW report_daily_messages AS
SELECT (m.created_at AT TIME ZONE 'UTC')::date                          AS day,
       count(*)                                                          AS messages,
       count(*) FILTER (WHERE m.kind = 'text')                           AS text_messages,
       count(*) FILTER (WHERE m.kind = 'edit')                           AS edits,
       count(*) FILTER (WHERE m.kind = 'delete')                         AS deletes,
       count(*) FILTER (WHERE m.kind = 'reaction')                       AS reactions,
       count(*) FILTER (WHERE m.kind = 'system')                         AS system_messages,
       count(DISTINCT m.sender_id) FILTER (WHERE m.kind <> 'system')     AS senders,
       count(DISTINCT m.conversation_id)                                 AS conversations
FROM messages m
GROUP BY 1;

COMMENT ON VIEW report_daily_messages IS
    'Per UTC day: all stored events, per kind, distinct non-system senders, distinct conversations (hot storage only).';

------------------------------------------------------------------------------------------------
-- Active users per UTC day: distinct senders of non-system events on that day, and over the
-- 7 and 30 days ending with it (rolling windows, the day included). Every day from the first
-- to the last day in hot storage has a row, quiet days included (with 0 that day).
------------------------------------------------------------------------------------------------
CREATE VIEW report_active_users AS
WITH user_days AS (
    SELECT DISTINCT (m.created_at AT TIME ZONE 'UTC')::date AS day, m.sender_id
    FROM messages m
    WHERE m.kind <> 'system'
), days AS (
    SELECT generate_series(min(day), max(day), interval '1 day')::date AS day
    FROM user_days
)
SELECT d.day,
       count(DISTINCT u.sender_id) FILTER (WHERE u.day = d.day)     AS active_users,
       count(DISTINCT u.sender_id) FILTER (WHERE u.day > d.day - 7) AS active_users_7d,
       count(DISTINCT u.sender_id)                                  AS active_users_30d
FROM days d
LEFT JOIN user_days u ON u.day > d.day - 30 AND u.day <= d.day
GROUP BY d.day;

COMMENT ON VIEW report_active_users IS
    'Per UTC day: distinct users who stored a non-system event that day, in the 7 days and in the 30 days ending that day (hot storage only).';

------------------------------------------------------------------------------------------------
-- One row per conversation (deleted ones too, see deleted_at): members now, last seq assigned,
-- and the events still in hot storage (all kinds) with the first and last of their times.
-- A filter on conversation_id reaches the aggregates, so one conversation is cheap to ask.
------------------------------------------------------------------------------------------------
CREATE VIEW report_conversation_stats AS
SELECT c.id                                 AS conversation_id,
       c.kind,
       c.created_at,
       c.deleted_at,
       coalesce(mb.members, 0)              AS members,
       c.last_seq,
       coalesce(ms.hot_messages, 0)         AS hot_messages,
       ms.first_message_at,
       ms.last_message_at
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
) ms ON ms.conversation_id = c.id;

COMMENT ON VIEW report_conversation_stats IS
    'Per conversation: kind, created/deleted times, member count, last seq, events in hot storage and their first/last time.';

------------------------------------------------------------------------------------------------
-- Delivery health: one row per live (not deleted) conversation with scope = 'conversation',
-- plus one row with scope = 'total' (conversation_id NULL) that sums the others (max for
-- max_delivery_lag). "Behind" compares a member's cursors with conversations.last_seq:
-- delivered_seq is the `seen` cursor the client acknowledges, so an offline member is behind
-- until its next sync; a lag that only grows for online members is the thing to look at.
------------------------------------------------------------------------------------------------
CREATE VIEW report_delivery_health AS
WITH per_conversation AS (
    SELECT c.id                                                              AS conversation_id,
           c.last_seq,
           count(cm.user_id)                                                 AS members,
           count(cm.user_id) FILTER (WHERE cm.delivered_seq < c.last_seq)    AS members_behind,
           count(cm.user_id) FILTER (WHERE cm.read_seq < c.last_seq)         AS members_unread,
           coalesce(max(GREATEST(c.last_seq - cm.delivered_seq, 0)), 0)      AS max_delivery_lag,
           coalesce(sum(GREATEST(c.last_seq - cm.read_seq, 0)), 0)::bigint   AS unread_total
    FROM conversations c
    LEFT JOIN conversation_members cm ON cm.conversation_id = c.id
    WHERE c.deleted_at IS NULL
    GROUP BY c.id, c.last_seq
)
SELECT 'conversation'::text AS scope,
       p.conversation_id,
       1::bigint            AS conversations,
       p.last_seq,
       p.members,
       p.members_behind,
       p.members_unread,
       p.max_delivery_lag,
       p.unread_total
FROM per_conversation p
UNION ALL
SELECT 'total'::text,
       NULL::text,
       count(*),
       coalesce(sum(p.last_seq), 0)::bigint,
       coalesce(sum(p.members), 0)::bigint,
       coalesce(sum(p.members_behind), 0)::bigint,
       coalesce(sum(p.members_unread), 0)::bigint,
       coalesce(max(p.max_delivery_lag), 0)::bigint,
       coalesce(sum(p.unread_total), 0)::bigint
FROM per_conversation p;

COMMENT ON VIEW report_delivery_health IS
    'Per live conversation (scope conversation) and overall (scope total): members, members behind on delivery / reading, largest delivery lag in seqs, unread total.';

------------------------------------------------------------------------------------------------
-- The reporting role: LOGIN, NOINHERIT, no password (the embedded stack trusts loopback;
-- production sets one with ALTER ROLE chat_reporting PASSWORD ...). Roles are cluster-wide:
-- create it only if missing (another database of the cluster may have made it already, even
-- at the same moment, hence the exception handler).
------------------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chat_reporting') THEN
        BEGIN
            CREATE ROLE chat_reporting LOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            RAISE NOTICE 'role chat_reporting was created concurrently';
        END;
    END IF;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO chat_reporting', current_database());
END
$$;

-- Nothing in the schema is readable or writable by PUBLIC or by chat_reporting directly
-- (tables get no PUBLIC rights by default; this says so and clears anything granted by hand).
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM chat_reporting;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM chat_reporting;

-- No new objects in public (PostgreSQL 15 already revokes CREATE from PUBLIC; say it anyway).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM chat_reporting;
GRANT USAGE ON SCHEMA public TO chat_reporting;

-- The four views, read-only (aggregating views are not updatable anyway).
GRANT SELECT ON report_daily_messages, report_active_users,
                report_conversation_stats, report_delivery_health
    TO chat_reporting;
