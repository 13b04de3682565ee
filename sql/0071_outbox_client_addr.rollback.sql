-- Rollback of 0071_outbox_client_addr: the client address column of the audit trail.
ALTER TABLE pm.outbox DROP COLUMN IF EXISTS client_addr;
