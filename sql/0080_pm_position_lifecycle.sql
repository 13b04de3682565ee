-- 0080 a position's end of life: deleting a flat position keeps everything that audits it.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction). The functions that use these tables are in sql/repeatable/88_manual.sql.
--
-- pm.delete_position removes the row from public.positions (so it leaves every view, the API and
-- the wider system's reads of the shared table; a later fill or exchange report of the same asset
-- and mode creates a new row). What audits the position stays: its fill ledger (pm.executions) and
-- audit trail (pm.outbox) keep their rows under the old id, and so do its discrepancies; the row as
-- it was, its Position, its exchange state and its snapshots (which the shared table's foreign key
-- would delete with it) are copied here first.

-- One row per deleted position, keyed by the id its ledger and audit trail keep.
CREATE TABLE IF NOT EXISTS pm.deleted_positions (
    id uuid PRIMARY KEY,
    asset text NOT NULL,
    mode text NOT NULL,
    version integer NOT NULL,
    position jsonb NOT NULL,
    row_data jsonb NOT NULL,
    exchange_state jsonb,
    snapshots integer NOT NULL DEFAULT 0,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    deleted_by text,
    trace_id text
);
COMMENT ON TABLE pm.deleted_positions IS
    'Deleted positions (pm.delete_position): id (its ledger rows and audit trail keep it), asset, mode, version at deletion (a new row of the same asset and mode continues from it), the Position as the API showed it, the positions row as stored, the exchange''s last reports, how many snapshots were archived, when, by whom, trace';
CREATE INDEX IF NOT EXISTS deleted_positions_identity ON pm.deleted_positions (asset, mode);

-- The snapshots of deleted positions (the shared table's ON DELETE CASCADE would drop them).
CREATE TABLE IF NOT EXISTS pm.deleted_position_snapshots (
    id uuid PRIMARY KEY,
    position_id uuid NOT NULL,
    asset text NOT NULL,
    mode text NOT NULL,
    snapshot_timestamp timestamp NOT NULL,
    snapshot jsonb NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pm.deleted_position_snapshots IS
    'Snapshots of deleted positions, archived by pm.delete_position: key columns plus the whole position_snapshots row as jsonb (columns the shared table gains later come along). Same retention as position_snapshots (pm.cleanup_snapshots)';
CREATE INDEX IF NOT EXISTS deleted_position_snapshots_position
    ON pm.deleted_position_snapshots (position_id, snapshot_timestamp DESC);
CREATE INDEX IF NOT EXISTS deleted_position_snapshots_time ON pm.deleted_position_snapshots (snapshot_timestamp);

-- Discrepancies outlive their position, like the ledger and the audit trail (no cascade).
ALTER TABLE pm.discrepancies DROP CONSTRAINT IF EXISTS discrepancies_position_id_fkey;
