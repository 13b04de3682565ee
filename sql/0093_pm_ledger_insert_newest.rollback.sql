-- Rollback of 0093_pm_ledger_insert_newest: nothing to undo in the schema (the function is part of
-- the code layer, which a rollback removes first).
SELECT 1;
