-- 0001 shared tables (SPEC §1.1)
-- The tables positions and position_snapshots belong to the shared database and may already
-- exist with rows (the ws-gateway migrations create them). Create them only if absent; add the
-- columns this service needs with ADD COLUMN IF NOT EXISTS; never drop or rewrite data.
-- Plain SQL: also runs with `psql -v ON_ERROR_STOP=1 -f`, and is safe to run twice.
-- Naive TIMESTAMP columns of these tables hold UTC.

CREATE TABLE IF NOT EXISTS public.positions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    asset VARCHAR(20) NOT NULL,
    size DECIMAL(20, 8) NOT NULL,
    average_entry_price DECIMAL(20, 8),
    unrealized_pnl DECIMAL(20, 8),
    realized_pnl DECIMAL(20, 8),
    mode VARCHAR(20) NOT NULL DEFAULT 'one-way',
    long_size DECIMAL(20, 8),
    short_size DECIMAL(20, 8),
    long_avg_price DECIMAL(20, 8),
    short_avg_price DECIMAL(20, 8),
    last_updated TIMESTAMP NOT NULL DEFAULT NOW(),
    last_snapshot_at TIMESTAMP,
    current_price DECIMAL(20, 8),
    version INTEGER NOT NULL DEFAULT 1,
    created_at TIMESTAMP,
    closed_at TIMESTAMP,
    CONSTRAINT positions_mode_check CHECK (mode IN ('one-way', 'hedge')),
    CONSTRAINT positions_average_entry_price_check CHECK (average_entry_price IS NULL OR average_entry_price > 0),
    CONSTRAINT positions_long_avg_price_check CHECK (long_avg_price IS NULL OR long_avg_price > 0),
    CONSTRAINT positions_short_avg_price_check CHECK (short_avg_price IS NULL OR short_avg_price > 0),
    CONSTRAINT positions_asset_mode_key UNIQUE (asset, mode)
);

-- Older shared schemas lack some columns (the seed plan added current_price and version later).
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS current_price DECIMAL(20, 8);
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS last_snapshot_at TIMESTAMP;
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS created_at TIMESTAMP;
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS closed_at TIMESTAMP;
-- This service's own columns: when the current holding was opened (time_held_minutes) and when
-- current_price was last set (price staleness).
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS opened_at TIMESTAMP;
ALTER TABLE public.positions ADD COLUMN IF NOT EXISTS price_updated_at TIMESTAMP;

CREATE INDEX IF NOT EXISTS idx_positions_asset ON public.positions (asset);
CREATE INDEX IF NOT EXISTS idx_positions_mode ON public.positions (mode);
CREATE INDEX IF NOT EXISTS idx_positions_last_updated ON public.positions (last_updated);
CREATE INDEX IF NOT EXISTS idx_positions_current_price ON public.positions (current_price);
CREATE INDEX IF NOT EXISTS idx_positions_version ON public.positions (version);

CREATE TABLE IF NOT EXISTS public.position_snapshots (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    position_id UUID NOT NULL REFERENCES public.positions (id) ON DELETE CASCADE,
    asset VARCHAR(20) NOT NULL,
    size DECIMAL(20, 8) NOT NULL,
    average_entry_price DECIMAL(20, 8),
    unrealized_pnl DECIMAL(20, 8),
    realized_pnl DECIMAL(20, 8),
    mode VARCHAR(20) NOT NULL,
    long_size DECIMAL(20, 8),
    short_size DECIMAL(20, 8),
    snapshot_timestamp TIMESTAMP NOT NULL DEFAULT NOW()
);

-- The wider system expects the full position as JSON beside the flat columns.
ALTER TABLE public.position_snapshots ADD COLUMN IF NOT EXISTS snapshot_data JSONB;

CREATE INDEX IF NOT EXISTS idx_position_snapshots_position_id ON public.position_snapshots (position_id);
CREATE INDEX IF NOT EXISTS idx_position_snapshots_asset ON public.position_snapshots (asset);
CREATE INDEX IF NOT EXISTS idx_position_snapshots_snapshot_timestamp ON public.position_snapshots (snapshot_timestamp);
-- History of one position, newest first, without a sort (GET .../snapshots at 4.4 M rows).
CREATE INDEX IF NOT EXISTS idx_position_snapshots_position_time
    ON public.position_snapshots (position_id, snapshot_timestamp DESC);

-- positions is small and updated in place thousands of times a second (every change moves the
-- indexed version and last_updated, so no update is HOT): vacuum it often so that lookups do not
-- walk long chains of dead row versions. A storage parameter only; no data is touched.
ALTER TABLE public.positions SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
                                  autovacuum_vacuum_cost_delay = 0, fillfactor = 50);
