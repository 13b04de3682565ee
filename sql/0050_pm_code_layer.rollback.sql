-- Rollback of 0050: the gate and the code bookkeeping. (The dropped functions of 0050 are not
-- recreated: rolling back further re-runs the older migrations that define them.)
DROP TABLE IF EXISTS pm.upgrade_gate;
DROP TABLE IF EXISTS pm.schema_code;
