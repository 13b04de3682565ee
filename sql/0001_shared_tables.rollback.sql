-- Rollback of 0001: removes only what this service added for itself. The shared tables, their
-- rows and the columns the wider system expects (current_price, version, snapshot_data, ...) stay.
DROP INDEX IF EXISTS public.idx_position_snapshots_position_time;
ALTER TABLE public.positions DROP COLUMN IF EXISTS opened_at;
ALTER TABLE public.positions DROP COLUMN IF EXISTS price_updated_at;
