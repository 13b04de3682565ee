-- Rollback of 0091_pm_ledger_row_check: the five CHECK constraints of the ledger again (the one
-- that replaced them went with the code layer, pm.ledger_row_valid, before this runs).
ALTER TABLE pm.executions DROP CONSTRAINT IF EXISTS executions_row_check;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'pm.executions'::regclass
                                                 AND conname = 'executions_kind_check') THEN
        ALTER TABLE pm.executions
            ADD CONSTRAINT executions_kind_check CHECK (kind IN ('trade', 'funding', 'opening', 'correction', 'avg_correction')),
            ADD CONSTRAINT executions_source_check CHECK (source IN ('order_execution', 'exchange', 'validation', 'manual')),
            ADD CONSTRAINT executions_leg_check CHECK (leg IN (0, 1, 2)),
            ADD CONSTRAINT executions_side_check CHECK (side IS NULL OR side IN ('Buy', 'Sell')),
            ADD CONSTRAINT executions_trade_check CHECK (kind <> 'trade' OR (side IS NOT NULL AND qty > 0 AND price > 0));
    END IF;
END
$$;
