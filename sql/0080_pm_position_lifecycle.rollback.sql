-- Rollback of 0080_pm_position_lifecycle: the archive of deleted positions, and the cascade from
-- positions to pm.discrepancies again (discrepancies of deleted positions go first: they have no
-- row to refer to).
DROP TABLE IF EXISTS pm.deleted_position_snapshots;
DROP TABLE IF EXISTS pm.deleted_positions;
DO $$
BEGIN
    IF to_regclass('pm.discrepancies') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_constraint WHERE conname = 'discrepancies_position_id_fkey'
                                      AND conrelid = 'pm.discrepancies'::regclass) THEN
        DELETE FROM pm.discrepancies d
         WHERE d.position_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM public.positions p WHERE p.id = d.position_id);
        ALTER TABLE pm.discrepancies ADD CONSTRAINT discrepancies_position_id_fkey
            FOREIGN KEY (position_id) REFERENCES public.positions (id) ON DELETE CASCADE;
    END IF;
END
$$;
