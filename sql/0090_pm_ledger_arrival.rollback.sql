-- Rollback of 0090_pm_ledger_arrival: the ledger's order by (exec_time, seq, exec_key) again (rows
-- that share a time and sequence are then folded by key: pm.refold_ledger repairs their states).
CREATE INDEX IF NOT EXISTS executions_position_order ON pm.executions (position_id, exec_time, seq, exec_key);
DROP INDEX IF EXISTS pm.executions_position_arrival_order;
ALTER TABLE pm.executions DROP COLUMN IF EXISTS arrival;
DROP SEQUENCE IF EXISTS pm.executions_arrival;
