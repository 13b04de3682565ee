-- 0093 pm.ledger_insert takes the newest time and sequence of the position's ledger when its caller
-- knows them (pm.apply_batch, for the second and later executions of a position in one batch), so
-- that an execution in order is inserted without reading the ledger first. Its old signature is
-- dropped here; sql/repeatable/30_ledger.sql defines the new one (the two added arguments default
-- to NULL: every other caller is unchanged). Plain SQL, safe to run twice; no BEGIN/COMMIT.
DROP FUNCTION IF EXISTS pm.ledger_insert(public.positions, pm.executions);
