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

CREATE OR REPLACE VIEW pm.v_positions AS
WITH base AS (
    SELECT p.*,
           p.size <> 0 OR coalesce(p.long_size, 0) <> 0 OR coalesce(p.short_size, 0) <> 0 AS open_,
           CASE WHEN p.current_price IS NULL THEN NULL
                WHEN p.mode = 'hedge' THEN (coalesce(p.long_size, 0) + coalesce(p.short_size, 0)) * p.current_price
                ELSE abs(p.size) * p.current_price END AS exposure_
      FROM public.positions p
)
SELECT b.id, b.asset, b.size, b.average_entry_price, b.unrealized_pnl, b.realized_pnl, b.mode,
       b.long_size, b.short_size, b.long_avg_price, b.short_avg_price, b.last_updated, b.last_snapshot_at,
       b.current_price, b.version, b.created_at, b.closed_at, b.opened_at, b.price_updated_at,
       CASE WHEN b.mode = 'hedge' THEN
                CASE WHEN coalesce(b.long_size, 0) > 0 AND coalesce(b.short_size, 0) > 0 THEN 'hedged'
                     WHEN coalesce(b.long_size, 0) > 0 THEN 'long'
                     WHEN coalesce(b.short_size, 0) > 0 THEN 'short'
                     ELSE 'flat' END
            WHEN b.size > 0 THEN 'long'
            WHEN b.size < 0 THEN 'short'
            ELSE 'flat' END AS side,
       b.open_ AS is_open,
       b.exposure_ AS exposure_usdt,
       round(CASE WHEN b.mode = 'hedge' THEN
                      b.unrealized_pnl / nullif(coalesce(b.long_size, 0) * coalesce(b.long_avg_price, 0)
                                                + coalesce(b.short_size, 0) * coalesce(b.short_avg_price, 0), 0)
                  WHEN b.size <> 0 THEN b.unrealized_pnl / nullif(abs(b.size) * b.average_entry_price, 0)
             END * 100, 8) AS unrealized_pnl_pct,
       CASE WHEN coalesce(b.opened_at, b.created_at) IS NULL THEN NULL
            WHEN b.open_ THEN floor(extract(epoch FROM pm.now_utc() - coalesce(b.opened_at, b.created_at)) / 60)::integer
            WHEN b.closed_at IS NOT NULL THEN
                greatest(floor(extract(epoch FROM b.closed_at - coalesce(b.opened_at, b.created_at)) / 60), 0)::integer
       END AS time_held_minutes,
       -- CASE first: the portfolio total (an InitPlan, evaluated once per query and only when
       -- needed) is not computed for a position without exposure
       CASE WHEN b.exposure_ IS NOT NULL THEN
           round(b.exposure_ / nullif((SELECT sum(CASE WHEN t.mode = 'hedge'
                                                       THEN (coalesce(t.long_size, 0) + coalesce(t.short_size, 0))
                                                       ELSE abs(t.size) END * t.current_price)
                                         FROM public.positions t WHERE t.current_price IS NOT NULL), 0), 8)
       END AS position_size_norm,
       b.current_price IS NULL OR b.price_updated_at IS NULL
           OR b.price_updated_at < pm.now_utc()
              - make_interval(secs => pm.setting('price_staleness_threshold', '300')::numeric::double precision)
           AS price_is_stale
  FROM base b;
COMMENT ON VIEW pm.v_positions IS
    'One row per position: every column of positions plus side, is_open, exposure_usdt, unrealized_pnl_pct, time_held_minutes, position_size_norm, price_is_stale (SPEC §1.3, §2.1)';

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
