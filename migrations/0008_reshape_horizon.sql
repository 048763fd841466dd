-- 0008_reshape_horizon: the partition upkeep reshapes only the range it makes partitions for.
--
-- chat_reshape_partitions(span) (0006) drops every empty partition of another span that is not
-- yet over, however far ahead it starts: a partition someone made on purpose for a later range
-- (an operator, or the migrations test's 1-minute partitions in 2200) was dropped by the next
-- archive pass, a minute later at most. This one takes the horizon the upkeep makes partitions up
-- to (now + ahead: three spans, at least an hour; workers/wk_archive_upkeep.c) and leaves
-- partitions that start after it alone. The one-argument form stays for workers of the release
-- before (a rolling upgrade); this release no longer calls it.
CREATE FUNCTION chat_reshape_partitions(span interval, ahead interval) RETURNS integer
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
        WHERE b.until_ts > now() AND b.from_ts < now() + ahead AND NOT b.detach_pending
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

REVOKE EXECUTE ON FUNCTION chat_reshape_partitions(interval, interval) FROM PUBLIC;
