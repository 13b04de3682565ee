-- 0050 the code layer: from here on, functions and views live in sql/repeatable/ (one file per
-- concern), which bin/migrate re-applies whenever a file's content changes; numbered migrations
-- like this one hold tables, columns, indexes, data changes and drops, and are never edited once
-- released (docs/migrations.md).
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction).

-- The upgrade gate. bin/migrate holds it ACCESS EXCLUSIVE for its whole transaction; every write
-- transaction of the service takes it ACCESS SHARE as its first statement (app/queries.sql:
-- upgrade_gate). So a transaction runs wholly on the functions before an upgrade or wholly on
-- those after it, never on a mix, and the upgrade waits for the transactions in flight. The table
-- holds no rows: only its lock matters.
CREATE TABLE IF NOT EXISTS pm.upgrade_gate ();
COMMENT ON TABLE pm.upgrade_gate IS
    'Upgrade gate (no rows): bin/migrate locks it ACCESS EXCLUSIVE for the whole upgrade; the service''s write transactions lock it ACCESS SHARE first, so none runs on a mix of old and new functions';

-- What bin/migrate applied of sql/repeatable/: one row per file with the SHA-256 of its content.
-- A file whose checksum differs from its row (or that has none) is applied again.
CREATE TABLE IF NOT EXISTS pm.schema_code (
    file text COLLATE "C" PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pm.schema_code IS
    'The repeatable code files (sql/repeatable/) as bin/migrate last applied them: file name, SHA-256 of the content, when';

-- Functions that nothing calls any more, or whose signature changed (their successors are in
-- sql/repeatable/): a function cannot change its arguments or result type in place.
DROP FUNCTION IF EXISTS pm.recompute_position(uuid, text);
DROP FUNCTION IF EXISTS pm.get_position_ext(text, text);
DROP FUNCTION IF EXISTS pm.position_meta_json(uuid);
DROP FUNCTION IF EXISTS pm.apply_batch(text, jsonb, boolean);
DROP FUNCTION IF EXISTS pm.apply_order_progress_event(jsonb);
DROP FUNCTION IF EXISTS pm.apply_position_record(jsonb, text, timestamptz, text, text);
