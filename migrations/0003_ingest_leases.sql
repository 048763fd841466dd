-- 0003_ingest_leases: the epoch of each ingest partition's lease.
--
-- The lease itself is a PostgreSQL advisory lock held by the partition owner's own connection
-- (pg_try_advisory_lock(727001, partition)); every write of the owner goes through that same
-- connection, so an owner whose session is gone (killed, or terminated by
-- idle_session_timeout while its process was paused) can no longer write: that is the fencing.
-- The epoch names the owner's JetStream consumer (ingest-<partition>-<epoch>): a new owner bumps
-- it, deletes the old consumer and creates its own, so a stale owner's pull requests reach no
-- consumer at all and cannot take messages out of order.
CREATE TABLE ingest_leases (
    partition   integer     PRIMARY KEY CONSTRAINT ingest_leases_partition_nonneg CHECK (partition >= 0),
    epoch       bigint      NOT NULL DEFAULT 1,
    owner       text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE ingest_leases IS
    'Epoch of each ingest partition lease; the lease is an advisory lock on the owner''s connection.';
