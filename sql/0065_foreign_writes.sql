-- 0065 foreign writers: a change of public.positions that did not come through this service's
-- functions is caught by a trigger (sql/repeatable/45_foreign_writes.sql) and recorded in
-- pm.discrepancies (field foreign_write) with who wrote it and the row before and after.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction). No function bodies here (docs/migrations.md): the trigger and its functions are
-- code and live in the repeatable file.

ALTER TABLE pm.discrepancies ADD COLUMN IF NOT EXISTS writer_role text;
ALTER TABLE pm.discrepancies ADD COLUMN IF NOT EXISTS application_name text;
ALTER TABLE pm.discrepancies ADD COLUMN IF NOT EXISTS row_before jsonb;
ALTER TABLE pm.discrepancies ADD COLUMN IF NOT EXISTS row_after jsonb;
COMMENT ON COLUMN pm.discrepancies.writer_role IS
    'foreign_write: the role that wrote (SET ROLE if any, else the session''s login role)';
COMMENT ON COLUMN pm.discrepancies.application_name IS
    'foreign_write: the writing session''s application_name (as the client set it)';
COMMENT ON COLUMN pm.discrepancies.row_before IS
    'foreign_write: the positions row before the change (NULL for an insert)';
COMMENT ON COLUMN pm.discrepancies.row_after IS
    'foreign_write: the positions row after the change, version bumped (NULL for a delete)';
COMMENT ON TABLE pm.discrepancies IS
    'Every discrepancy seen: size differences reported by the exchange stream, validation findings, and changes of positions by writers other than this service (field foreign_write)';
