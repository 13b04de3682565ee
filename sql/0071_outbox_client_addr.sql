-- 0071 the audit trail records where an API change came from: the client address beside the
-- actor, on the position_updated rows of pm.outbox (written by pm.write_state, which reads it
-- from the transaction's setting pm.client_addr; NULL for changes made by consumers and jobs).
-- Plain SQL, safe to run twice; no BEGIN/COMMIT. A nullable column without default: no rewrite.
ALTER TABLE pm.outbox ADD COLUMN IF NOT EXISTS client_addr inet;
COMMENT ON COLUMN pm.outbox.client_addr IS
    'Network address of the API client that made the change (NULL when it did not come over the API)';
