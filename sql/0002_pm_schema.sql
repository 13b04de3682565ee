-- 0002 schema pm: this service's own state (SPEC §1.2)
-- The fill ledger, per-order progress, the exchange's last report per position leg, the outbox
-- (which doubles as the audit trail of every change), discrepancies, counters and dead letters.
-- Plain SQL, safe to run twice.

CREATE SCHEMA IF NOT EXISTS pm;
COMMENT ON SCHEMA pm IS 'position-manager: fill ledger, outbox/audit trail, counters; functions and views of the service';

-- The accounting state of one position: what a fold of its ledger produces (SPEC §2.2).
-- One-way rows use size/avg_price (long_* and short_* are NULL); hedge rows use the legs and
-- size = long_size - short_size. realized is cumulative over the row's life.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'pm' AND t.typname = 'pos_state') THEN
        CREATE TYPE pm.pos_state AS (
            size numeric,
            avg_price numeric,
            long_size numeric,
            long_avg numeric,
            short_size numeric,
            short_avg numeric,
            realized numeric,
            opened_at timestamptz,
            closed_at timestamptz
        );
    END IF;
END
$$;

-- The fill ledger. Rows are ordered per position by (exec_time, seq, exec_key); state_after is
-- the position's state after this row, so that an execution delivered late only re-folds the
-- rows after it (cost independent of history). The key is the execution's own identity (Bybit
-- execId, execution_id, order:<id>:<cumulative qty>, ...): applying it twice is impossible. Kinds:
--   trade           an execution (Trade, BustTrade, AdlTrade, Delivery; manual close)
--   funding         realized PnL only (Bybit Funding)
--   opening         a full state taken over from a position that existed before its ledger
--   correction      sets size and average price(s) (validation fix, creation from the exchange)
--   avg_correction  sets the average price of one leg (exchange average adopted, SPEC §2.4)
CREATE TABLE IF NOT EXISTS pm.executions (
    exec_key text COLLATE "C" NOT NULL,
    position_id uuid NOT NULL,
    kind text NOT NULL,
    source text NOT NULL,
    leg smallint NOT NULL DEFAULT 0,
    side text,
    qty numeric,
    price numeric,
    fee numeric NOT NULL DEFAULT 0,
    exec_time timestamptz NOT NULL,
    seq bigint NOT NULL DEFAULT -1,
    order_id text,
    exec_type text,
    target pm.pos_state,
    state_after pm.pos_state NOT NULL,
    trace_id text,
    event_id text,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT executions_pkey PRIMARY KEY (exec_key),
    CONSTRAINT executions_kind_check CHECK (kind IN ('trade', 'funding', 'opening', 'correction', 'avg_correction')),
    CONSTRAINT executions_source_check CHECK (source IN ('order_execution', 'exchange', 'validation', 'manual')),
    CONSTRAINT executions_leg_check CHECK (leg IN (0, 1, 2)),
    CONSTRAINT executions_side_check CHECK (side IS NULL OR side IN ('Buy', 'Sell')),
    CONSTRAINT executions_trade_check CHECK (kind <> 'trade' OR (side IS NOT NULL AND qty > 0 AND price > 0))
);
CREATE INDEX IF NOT EXISTS executions_position_order
    ON pm.executions (position_id, exec_time, seq, exec_key);
-- No foreign key to positions on the write path's tables (ledger, order progress, exchange state):
-- every insert would re-lock (FOR KEY SHARE) the position row that the writer already holds FOR
-- UPDATE: ~5% of a fill at one commit per 100 fills, and far more when one transaction writes the
-- same position many times. Rows are only written under that lock; this service never deletes a
-- position.
ALTER TABLE pm.executions DROP CONSTRAINT IF EXISTS executions_position_id_fkey;
-- A parsed execution, before it is applied: which position, and the ledger row (or why not).
-- status: trade (apply e), ignored (reason), cumulative (order event shape B: derived from order_progress).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'pm' AND t.typname = 'exec_request') THEN
        CREATE TYPE pm.exec_request AS (asset text, mode text, status text, reason text, e pm.executions);
    END IF;
END
$$;

COMMENT ON TABLE pm.executions IS 'Fill ledger: every execution, funding, opening balance and correction applied to a position';

-- Shape B of the order events carries cumulative figures per order: what was applied so far.
CREATE TABLE IF NOT EXISTS pm.order_progress (
    order_id text COLLATE "C" PRIMARY KEY,
    position_id uuid NOT NULL,
    cum_qty numeric NOT NULL,
    cum_notional numeric NOT NULL,
    cum_fee numeric NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pm.order_progress DROP CONSTRAINT IF EXISTS order_progress_position_id_fkey;
COMMENT ON TABLE pm.order_progress IS 'Cumulative quantity, notional and fee already applied per order (order event shape B)';

-- The last state the exchange reported per position leg (leg 0 one-way, 1 long, 2 short).
CREATE TABLE IF NOT EXISTS pm.exchange_state (
    position_id uuid NOT NULL,
    leg smallint NOT NULL,
    updated_time timestamptz NOT NULL,
    seq bigint NOT NULL DEFAULT -1,
    size numeric NOT NULL,
    avg_price numeric,
    mark_price numeric,
    unrealized_pnl numeric,
    realized_pnl numeric,
    discrepancy_size numeric,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (position_id, leg)
);
ALTER TABLE pm.exchange_state DROP CONSTRAINT IF EXISTS exchange_state_position_id_fkey;
COMMENT ON TABLE pm.exchange_state IS 'Last exchange report per position leg: ordering (updated_time, seq) and the reported figures for validation';

-- Outbox and audit trail in one: every change of a position appends one position_updated row in
-- the same transaction; snapshot and portfolio events are appended here too. The relay publishes
-- rows whose published_at is NULL and then sets it; rows are kept as the audit trail.
CREATE TABLE IF NOT EXISTS pm.outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL DEFAULT gen_random_uuid(),
    event_type text NOT NULL,
    position_id uuid,
    asset text,
    mode text,
    version integer,
    source text,
    action text,
    actor text,
    trace_id text,
    detail jsonb,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    CONSTRAINT outbox_event_type_check CHECK (event_type IN
        ('position_updated', 'portfolio_updated', 'position_snapshot_created'))
);
-- position_updated rows written by pm.write_state carry the position as it was after the change
-- (image, binary) instead of a rendered payload: rendering the Position JSON is a fifth of the cost
-- of a fill, so pm.outbox_body renders it when the row is read (relay, history, stream). Other
-- events, and rows written before this column existed, carry payload.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'pm' AND t.typname = 'position_image') THEN
        -- the stored columns of public.positions that a Position shows (its own type, not the
        -- table's row type: the shared table may gain columns)
        CREATE TYPE pm.position_image AS (
            id uuid, asset text, mode text, size numeric, average_entry_price numeric, unrealized_pnl numeric,
            realized_pnl numeric, long_size numeric, short_size numeric, long_avg_price numeric,
            short_avg_price numeric, last_updated timestamp, last_snapshot_at timestamp, current_price numeric,
            version integer, created_at timestamp, closed_at timestamp, opened_at timestamp,
            price_updated_at timestamp
        );
    END IF;
END
$$;
ALTER TABLE pm.outbox ADD COLUMN IF NOT EXISTS image pm.position_image;
ALTER TABLE pm.outbox ALTER COLUMN payload DROP NOT NULL;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'outbox_body_check' AND conrelid = 'pm.outbox'::regclass) THEN
        ALTER TABLE pm.outbox ADD CONSTRAINT outbox_body_check CHECK (payload IS NOT NULL OR NOT image IS NULL);
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS outbox_pending ON pm.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_position_history ON pm.outbox (position_id, id) WHERE position_id IS NOT NULL;
COMMENT ON TABLE pm.outbox IS 'Transactional outbox of published events; position_updated rows are also the audit trail of every change. The message body is pm.outbox_body(row): payload as stored, or rendered from image (the position after the change) as of created_at';

-- The relay wakes on this notification instead of polling (consumers/relay.py).
CREATE OR REPLACE FUNCTION pm.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pm_outbox', '');
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.outbox_notify() IS
    'Trigger: NOTIFY pm_outbox once per inserting statement (delivered at commit, coalesced per transaction).';
DROP TRIGGER IF EXISTS outbox_notify ON pm.outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON pm.outbox FOR EACH STATEMENT EXECUTE FUNCTION pm.outbox_notify();

-- When the relay last emitted portfolio_updated (coalescing, SPEC §4.2). One row.
CREATE TABLE IF NOT EXISTS pm.portfolio_event_state (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_emitted_at timestamptz,
    last_change_id bigint NOT NULL DEFAULT 0
);
-- dirty: position changes were published since the last portfolio_updated (set by
-- pm.outbox_mark_published; outbox ids are taken before commit, so "newest id" cannot tell)
ALTER TABLE pm.portfolio_event_state ADD COLUMN IF NOT EXISTS dirty boolean NOT NULL DEFAULT false;
INSERT INTO pm.portfolio_event_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- Differences found between a position and an authoritative source.
CREATE TABLE IF NOT EXISTS pm.discrepancies (
    id bigserial PRIMARY KEY,
    position_id uuid REFERENCES public.positions (id) ON DELETE CASCADE,
    asset text NOT NULL,
    mode text NOT NULL,
    field text NOT NULL,
    stored_value text,
    expected_value text,
    source text NOT NULL,
    detected_by text NOT NULL,
    fixed boolean NOT NULL DEFAULT false,
    trace_id text,
    detected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS discrepancies_detected_at ON pm.discrepancies (detected_at);
COMMENT ON TABLE pm.discrepancies IS 'Every discrepancy seen: size differences reported by the exchange stream and validation findings';

-- Monotonic counters shown by /health and Grafana (validations, discrepancies, fixes, stale events, ...).
CREATE TABLE IF NOT EXISTS pm.counters (
    name text PRIMARY KEY,
    value bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Messages the consumers sent to the dead-letter queue, kept for operators and Grafana.
CREATE TABLE IF NOT EXISTS pm.dead_letters (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    reason text NOT NULL,
    error_code text,
    message_id text,
    body text,
    headers jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_created_at ON pm.dead_letters (created_at);
