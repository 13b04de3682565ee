-- Rollback of 0065_foreign_writes: the trigger (normally gone with the code layer already) and the
-- columns that record a foreign write.
DROP TRIGGER IF EXISTS positions_foreign_write ON public.positions;
ALTER TABLE pm.discrepancies DROP COLUMN IF EXISTS row_after;
ALTER TABLE pm.discrepancies DROP COLUMN IF EXISTS row_before;
ALTER TABLE pm.discrepancies DROP COLUMN IF EXISTS application_name;
ALTER TABLE pm.discrepancies DROP COLUMN IF EXISTS writer_role;
COMMENT ON TABLE pm.discrepancies IS 'Every discrepancy seen: size differences reported by the exchange stream and validation findings';
