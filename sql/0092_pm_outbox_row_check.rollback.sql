-- Rollback of 0092_pm_outbox_row_check: the outbox's two CHECK constraints of 0002 again, in place
-- of the one that joined them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'pm.outbox'::regclass
                                                 AND conname = 'outbox_event_type_check') THEN
        ALTER TABLE pm.outbox ADD CONSTRAINT outbox_event_type_check CHECK (event_type IN
            ('position_updated', 'portfolio_updated', 'position_snapshot_created'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'pm.outbox'::regclass
                                                 AND conname = 'outbox_body_check') THEN
        ALTER TABLE pm.outbox ADD CONSTRAINT outbox_body_check CHECK (payload IS NOT NULL OR NOT image IS NULL);
    END IF;
END
$$;
ALTER TABLE pm.outbox DROP CONSTRAINT IF EXISTS outbox_row_check;
