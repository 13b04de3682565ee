-- 0003 views: the public read contract (SPEC §1.3, §2.1). Grafana and other services query them.
-- Plain SQL, safe to run twice. Column lists are explicit so that re-running never changes them.

-- pm.setting(name, default): a threshold from the custom setting pm.<name> (set per connection by
-- the service from its environment), else the documented default, so psql behaves like the service.
CREATE OR REPLACE FUNCTION pm.setting(p_name text, p_default text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('pm.' || p_name, true), ''), p_default)
$$;
COMMENT ON FUNCTION pm.setting(text, text) IS
    'pm.setting(name, default) -> text: custom setting pm.<name> when set and non-empty, else default. Never raises.';

CREATE OR REPLACE FUNCTION pm.now_utc() RETURNS timestamp
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT (now() AT TIME ZONE 'UTC') $$;
COMMENT ON FUNCTION pm.now_utc() IS
    'pm.now_utc() -> timestamp: the transaction time as naive UTC, the convention of the shared tables.';

-- The derived fields of a Position (SPEC §1.3, §2.1), each defined once: pm.v_positions computes
-- them from the table, pm.image_position from an outbox image. Plain SQL expressions that the
-- planner inlines into the view (no call per row).
CREATE OR REPLACE FUNCTION pm.pos_is_open(p_size numeric, p_long numeric, p_short numeric) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_size <> 0 OR coalesce(p_long, 0) <> 0 OR coalesce(p_short, 0) <> 0
$$;
COMMENT ON FUNCTION pm.pos_is_open(numeric, numeric, numeric) IS
    'pm.pos_is_open(size, long_size, short_size) -> true when the size or any leg is non-zero.';

CREATE OR REPLACE FUNCTION pm.pos_side(p_mode text, p_size numeric, p_long numeric, p_short numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_mode = 'hedge' THEN
                    CASE WHEN coalesce(p_long, 0) > 0 AND coalesce(p_short, 0) > 0 THEN 'hedged'
                         WHEN coalesce(p_long, 0) > 0 THEN 'long'
                         WHEN coalesce(p_short, 0) > 0 THEN 'short'
                         ELSE 'flat' END
                WHEN p_size > 0 THEN 'long'
                WHEN p_size < 0 THEN 'short'
                ELSE 'flat' END
$$;
COMMENT ON FUNCTION pm.pos_side(text, numeric, numeric, numeric) IS
    'pm.pos_side(mode, size, long_size, short_size) -> long|short|flat|hedged (hedged: both legs open).';

CREATE OR REPLACE FUNCTION pm.pos_exposure(p_mode text, p_size numeric, p_long numeric, p_short numeric, p_price numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_price IS NULL THEN NULL
                WHEN p_mode = 'hedge' THEN (coalesce(p_long, 0) + coalesce(p_short, 0)) * p_price
                ELSE abs(p_size) * p_price END
$$;
COMMENT ON FUNCTION pm.pos_exposure(text, numeric, numeric, numeric, numeric) IS
    'pm.pos_exposure(mode, size, long_size, short_size, price) -> exposure in USDT: |size| x price (one-way), (long + short) x price (hedge); NULL without a price.';

CREATE OR REPLACE FUNCTION pm.pos_pnl_pct(p_mode text, p_size numeric, p_avg numeric, p_long numeric, p_long_avg numeric,
                                          p_short numeric, p_short_avg numeric, p_unrealized numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT round(CASE WHEN p_mode = 'hedge' THEN
                          p_unrealized / nullif(coalesce(p_long, 0) * coalesce(p_long_avg, 0)
                                                + coalesce(p_short, 0) * coalesce(p_short_avg, 0), 0)
                      WHEN p_size <> 0 THEN p_unrealized / nullif(abs(p_size) * p_avg, 0)
                 END * 100, 8)
$$;
COMMENT ON FUNCTION pm.pos_pnl_pct(text, numeric, numeric, numeric, numeric, numeric, numeric, numeric) IS
    'pm.pos_pnl_pct(mode, size, avg, long_size, long_avg, short_size, short_avg, unrealized) -> unrealized PnL in % of the entry notional; NULL when flat or without an entry price.';

CREATE OR REPLACE FUNCTION pm.pos_time_held(p_open boolean, p_opened timestamp, p_created timestamp, p_closed timestamp,
                                            p_at timestamp)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN coalesce(p_opened, p_created) IS NULL THEN NULL
                WHEN p_open THEN floor(extract(epoch FROM p_at - coalesce(p_opened, p_created)) / 60)::integer
                WHEN p_closed IS NOT NULL THEN
                    greatest(floor(extract(epoch FROM p_closed - coalesce(p_opened, p_created)) / 60), 0)::integer
           END
$$;
COMMENT ON FUNCTION pm.pos_time_held(boolean, timestamp, timestamp, timestamp, timestamp) IS
    'pm.pos_time_held(open, opened_at, created_at, closed_at, at) -> whole minutes the current holding has been held at time at (to closed_at when closed); NULL without a start.';

CREATE OR REPLACE FUNCTION pm.pos_price_stale(p_price numeric, p_price_at timestamp, p_at timestamp) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT p_price IS NULL OR p_price_at IS NULL
           OR p_price_at < p_at - make_interval(secs => pm.setting('price_staleness_threshold', '300')::numeric::double precision)
$$;
COMMENT ON FUNCTION pm.pos_price_stale(numeric, timestamp, timestamp) IS
    'pm.pos_price_stale(price, price_updated_at, at) -> true without a price or when it is older than pm.price_staleness_threshold seconds (default 300) at time at.';

CREATE OR REPLACE VIEW pm.v_positions AS
WITH base AS (
    SELECT p.*,
           pm.pos_is_open(p.size, p.long_size, p.short_size) AS open_,
           pm.pos_exposure(p.mode, p.size, p.long_size, p.short_size, p.current_price) AS exposure_
      FROM public.positions p
)
SELECT b.id, b.asset, b.size, b.average_entry_price, b.unrealized_pnl, b.realized_pnl, b.mode,
       b.long_size, b.short_size, b.long_avg_price, b.short_avg_price, b.last_updated, b.last_snapshot_at,
       b.current_price, b.version, b.created_at, b.closed_at, b.opened_at, b.price_updated_at,
       pm.pos_side(b.mode, b.size, b.long_size, b.short_size) AS side,
       b.open_ AS is_open,
       b.exposure_ AS exposure_usdt,
       pm.pos_pnl_pct(b.mode, b.size, b.average_entry_price, b.long_size, b.long_avg_price, b.short_size,
                      b.short_avg_price, b.unrealized_pnl) AS unrealized_pnl_pct,
       pm.pos_time_held(b.open_, b.opened_at, b.created_at, b.closed_at, pm.now_utc()) AS time_held_minutes,
       -- CASE first: the portfolio total (an InitPlan, evaluated once per query and only when
       -- needed) is not computed for a position without exposure
       CASE WHEN b.exposure_ IS NOT NULL THEN
           round(b.exposure_ / nullif((SELECT sum(pm.pos_exposure(t.mode, t.size, t.long_size, t.short_size, t.current_price))
                                         FROM public.positions t WHERE t.current_price IS NOT NULL), 0), 8)
       END AS position_size_norm,
       pm.pos_price_stale(b.current_price, b.price_updated_at, pm.now_utc()) AS price_is_stale
  FROM base b;
COMMENT ON VIEW pm.v_positions IS
    'One row per position: every column of positions plus side, is_open, exposure_usdt, unrealized_pnl_pct, time_held_minutes, position_size_norm, price_is_stale (SPEC §1.3, §2.1)';

-- A position as it was after a change (an outbox image), as a row of pm.v_positions with the
-- time-dependent fields taken at p_at; position_size_norm is NULL (it needs the portfolio total).
CREATE OR REPLACE FUNCTION pm.image_position(i pm.position_image, p_at timestamp) RETURNS pm.v_positions
LANGUAGE sql STABLE AS $$
    SELECT i.id, i.asset::varchar(20), i.size, i.average_entry_price, i.unrealized_pnl, i.realized_pnl, i.mode::varchar(20),
           i.long_size, i.short_size, i.long_avg_price, i.short_avg_price, i.last_updated, i.last_snapshot_at,
           i.current_price, i.version, i.created_at, i.closed_at, i.opened_at, i.price_updated_at,
           pm.pos_side(i.mode, i.size, i.long_size, i.short_size),
           pm.pos_is_open(i.size, i.long_size, i.short_size),
           pm.pos_exposure(i.mode, i.size, i.long_size, i.short_size, i.current_price),
           pm.pos_pnl_pct(i.mode, i.size, i.average_entry_price, i.long_size, i.long_avg_price, i.short_size,
                          i.short_avg_price, i.unrealized_pnl),
           pm.pos_time_held(pm.pos_is_open(i.size, i.long_size, i.short_size), i.opened_at, i.created_at, i.closed_at, p_at),
           NULL::numeric,
           pm.pos_price_stale(i.current_price, i.price_updated_at, p_at)
$$;
COMMENT ON FUNCTION pm.image_position(pm.position_image, timestamp) IS
    'pm.image_position(image, at) -> the pm.v_positions row of a stored position image (pm.outbox.image), time_held_minutes and price_is_stale as of at (naive UTC), position_size_norm NULL. Pure apart from the staleness setting.';

-- Portfolio totals (SPEC §2.1), over all positions or one asset: one row, zeros when empty.
CREATE OR REPLACE FUNCTION pm.portfolio_totals(p_asset text DEFAULT NULL)
RETURNS TABLE (total_exposure_usdt numeric, net_exposure_usdt numeric, total_unrealized_pnl_usdt numeric,
               total_realized_pnl_usdt numeric, total_pnl_usdt numeric, portfolio_value_usdt numeric,
               open_positions_count integer, long_positions_count integer, short_positions_count integer,
               calculated_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(v.exposure_usdt) FILTER (WHERE v.is_open), 0)::numeric,
           coalesce(sum(v.size * v.current_price) FILTER (WHERE v.is_open), 0)::numeric,
           coalesce(sum(v.unrealized_pnl), 0)::numeric,
           coalesce(sum(v.realized_pnl), 0)::numeric,
           (coalesce(sum(v.unrealized_pnl), 0) + coalesce(sum(v.realized_pnl), 0))::numeric,
           coalesce(sum(v.size * v.current_price) FILTER (WHERE v.is_open), 0)::numeric,
           (count(*) FILTER (WHERE v.is_open))::integer,
           (count(*) FILTER (WHERE v.size > 0))::integer,
           (count(*) FILTER (WHERE v.size < 0))::integer,
           now()
      FROM pm.v_positions v
     WHERE p_asset IS NULL OR v.asset = upper(p_asset)
$$;
COMMENT ON FUNCTION pm.portfolio_totals(text) IS
    'pm.portfolio_totals(asset or NULL) -> exactly one row of portfolio totals (SPEC §2.1), over all positions or one asset; zeros, never NULLs, when empty. Positions without a price are excluded from exposure. Read only.';

CREATE OR REPLACE VIEW pm.v_portfolio AS
SELECT t.total_exposure_usdt, t.net_exposure_usdt, t.total_unrealized_pnl_usdt, t.total_realized_pnl_usdt,
       t.total_pnl_usdt, t.portfolio_value_usdt, t.open_positions_count, t.long_positions_count,
       t.short_positions_count, t.calculated_at
  FROM pm.portfolio_totals(NULL) t;
COMMENT ON VIEW pm.v_portfolio IS
    'Exactly one row of portfolio totals (zeros on an empty table). Positions without a price are excluded from exposure.';

CREATE OR REPLACE VIEW pm.v_portfolio_by_asset AS
SELECT v.asset,
       sum(v.size) AS size,
       coalesce(sum(v.exposure_usdt), 0) AS exposure_usdt,
       coalesce(sum(v.size * v.current_price), 0) AS net_exposure_usdt,
       coalesce(sum(v.unrealized_pnl), 0) AS unrealized_pnl_usdt,
       coalesce(sum(v.realized_pnl), 0) AS realized_pnl_usdt
  FROM pm.v_positions v
 WHERE v.is_open
 GROUP BY v.asset;
COMMENT ON VIEW pm.v_portfolio_by_asset IS 'Per asset totals over open positions (both modes summed).';
