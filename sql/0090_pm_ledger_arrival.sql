-- 0090 the ledger's order among equal times: executions that share their execution time and
-- exchange sequence are kept in the order they were applied (their arrival), not re-sorted by key.
-- An execution arriving after others of its own time is therefore never "late" and re-folds
-- nothing (it re-folded about half of the ledger rows of its time before: quadratic when many
-- executions share one timestamp). docs/accounting.md states what is promised for equal times.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction).

-- arrival: a number from one sequence, in the order rows are applied (under the position's row
-- lock, so per position it is the order of application). Rows applied before this migration hold
-- 0 (a constant default: no table rewrite, no row written) and keep their previous order among
-- themselves (by key); every later row comes after them.
CREATE SEQUENCE IF NOT EXISTS pm.executions_arrival AS bigint;
ALTER TABLE pm.executions ADD COLUMN IF NOT EXISTS arrival bigint NOT NULL DEFAULT 0;
ALTER TABLE pm.executions ALTER COLUMN arrival SET DEFAULT nextval('pm.executions_arrival');
ALTER SEQUENCE pm.executions_arrival OWNED BY pm.executions.arrival;
COMMENT ON COLUMN pm.executions.arrival IS
    'Order of application (pm.executions_arrival); the ledger is ordered per position by (exec_time, seq, arrival, exec_key); 0 for rows applied before this column existed';

-- the ledger's order per position, served by one index (the newest row, a late row's place, folds)
CREATE INDEX IF NOT EXISTS executions_position_arrival_order
    ON pm.executions (position_id, exec_time, seq, arrival, exec_key);
DROP INDEX IF EXISTS pm.executions_position_order;
