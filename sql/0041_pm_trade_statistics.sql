-- 0041 trade statistics (issue 7): holdings derived from the fill ledger, and the statistics of
-- GET /api/v1/portfolio/summary and of Grafana (pm.v_trade_statistics).
-- Plain SQL, safe to run twice (CREATE OR REPLACE); no BEGIN/COMMIT.
--
-- A holding is the life of a position from opening (leaving flat, or a one-way flip) to flat or
-- the next flip. Its realized PnL is the sum of the differences of state_after.realized between
-- consecutive ledger rows that belong to it (fees and funding included). A flip's row closes the
-- old holding (its realized part and fee count there) and opens the new one. An opening balance
-- (a position that existed before its ledger) opens a holding whose earlier PnL is unknown: its
-- own difference counts as 0. Rows while flat (funding after the close) belong to no holding.

-- One row per ledger row with the holding it belongs to and what it adds to it.
CREATE OR REPLACE VIEW pm.v_holding_rows AS
WITH ordered AS (
    SELECT x.position_id, x.exec_key, x.kind, x.exec_time, x.seq, x.state_after,
           lag(x.state_after) OVER w AS prev_state,
           -- (a composite IS NOT NULL is true only when every field is: test the key instead)
           lag(x.exec_key) OVER w IS NOT NULL AS has_prev,
           p.mode
      FROM pm.executions x
      JOIN public.positions p ON p.id = x.position_id
    WINDOW w AS (PARTITION BY x.position_id ORDER BY x.exec_time, x.seq, x.exec_key)
), flagged AS (
    SELECT o.*,
           o.has_prev AND NOT pm.is_flat(o.prev_state) AS was_open,
           NOT pm.is_flat(o.state_after) AS now_open,
           o.mode = 'one-way' AND o.has_prev
               AND sign((o.prev_state).size) * sign((o.state_after).size) < 0 AS flipped
      FROM ordered o
), numbered AS (
    SELECT f.*,
           sum(CASE WHEN (NOT f.was_open AND f.now_open) OR f.flipped THEN 1 ELSE 0 END)
               OVER (PARTITION BY f.position_id ORDER BY f.exec_time, f.seq, f.exec_key) AS opened_count
      FROM flagged f
)
SELECT n.position_id, n.exec_key, n.kind, n.exec_time,
       -- the holding this row adds to: a flip's row closes the old one
       CASE WHEN n.flipped THEN n.opened_count - 1
            WHEN n.was_open OR n.now_open THEN n.opened_count END AS holding_no,
       CASE WHEN n.kind = 'opening' THEN 0
            ELSE (n.state_after).realized - coalesce((n.prev_state).realized, 0) END AS realized_delta,
       -- the holding this row opens (NULL when it opens none)
       CASE WHEN (NOT n.was_open AND n.now_open) OR n.flipped THEN n.opened_count END AS opens_holding_no,
       n.was_open AND (NOT n.now_open OR n.flipped) AS closes,
       CASE WHEN n.mode = 'hedge' THEN 'hedge'
            WHEN (n.state_after).size > 0 THEN 'long'
            WHEN (n.state_after).size < 0 THEN 'short' END AS side_after
  FROM numbered n;
COMMENT ON VIEW pm.v_holding_rows IS
    'Every ledger row with the holding (per position, numbered from 1) it adds realized PnL to, that PnL, the holding it opens (a one-way flip closes one and opens the next) and whether it closes its holding. Basis of pm.v_holdings.';

-- One row per holding: when it opened and closed, its side and realized PnL.
CREATE OR REPLACE VIEW pm.v_holdings AS
-- rows is referenced twice, so PostgreSQL computes the window pass once (a materialized CTE)
WITH hr AS (
    SELECT * FROM pm.v_holding_rows
), totals AS (
    SELECT r.position_id, r.holding_no,
           max(r.exec_time) FILTER (WHERE r.closes) AS closed_at,
           coalesce(bool_or(r.closes), false) AS is_closed,
           round(sum(r.realized_delta), 8) AS realized_pnl,
           count(*) AS ledger_rows
      FROM hr r
     WHERE r.holding_no IS NOT NULL
     GROUP BY r.position_id, r.holding_no
), openings AS (
    SELECT r.position_id, r.opens_holding_no AS holding_no, r.exec_time AS opened_at, r.side_after AS side,
           r.kind = 'opening' AS from_opening_balance
      FROM hr r
     WHERE r.opens_holding_no IS NOT NULL
)
-- every holding has its opening row; one opened by a flip may have no row of its own yet
SELECT o.position_id, p.asset, p.mode, o.holding_no, o.side,
       CASE WHEN o.opened_at = '-infinity' THEN NULL ELSE o.opened_at END AS opened_at,
       t.closed_at, coalesce(t.is_closed, false) AS is_closed, coalesce(t.realized_pnl, 0) AS realized_pnl,
       coalesce(t.ledger_rows, 0) AS ledger_rows, o.from_opening_balance
  FROM openings o
  LEFT JOIN totals t ON t.position_id = o.position_id AND t.holding_no = o.holding_no
  JOIN public.positions p ON p.id = o.position_id;
COMMENT ON VIEW pm.v_holdings IS
    'One row per holding of every position, from the ledger: side at opening (long|short|hedge), opened_at (NULL for a holding taken over as an opening balance), closed_at, is_closed, realized_pnl (fees and funding included; a flip''s realized part and fee count in the holding it closes), ledger_rows, from_opening_balance (its PnL before the ledger is unknown).';

-- The statistics as numbers (Grafana, pm.trade_statistics_json). Exactly one row, zeros when empty.
CREATE OR REPLACE VIEW pm.v_trade_statistics AS
WITH holdings AS (
    SELECT * FROM pm.v_holdings        -- referenced twice: computed once
), closed AS (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE h.realized_pnl > 0) AS wins,
           count(*) FILTER (WHERE h.realized_pnl < 0) AS losses,
           coalesce(sum(h.realized_pnl) FILTER (WHERE h.realized_pnl > 0), 0) AS gross_profit,
           coalesce(sum(h.realized_pnl) FILTER (WHERE h.realized_pnl < 0), 0) AS gross_loss,
           coalesce(sum(h.realized_pnl), 0) AS net,
           max(h.realized_pnl) FILTER (WHERE h.realized_pnl > 0) AS largest_win,
           min(h.realized_pnl) FILTER (WHERE h.realized_pnl < 0) AS largest_loss
      FROM holdings h WHERE h.is_closed
), open_h AS (
    SELECT count(*) AS n FROM holdings h WHERE NOT h.is_closed
), exposure AS (
    SELECT coalesce(sum(v.exposure_usdt), 0) AS total, max(v.exposure_usdt) AS largest
      FROM pm.v_positions v WHERE v.is_open AND v.exposure_usdt IS NOT NULL
), risk AS (
    SELECT count(*) AS n,
           coalesce(array_agg(v.asset || CASE WHEN v.mode = 'hedge' THEN '/hedge' ELSE '' END ORDER BY v.asset, v.mode),
                    ARRAY[]::text[]) AS assets
      FROM pm.v_positions v
      JOIN pm.position_meta m ON m.position_id = v.id
     WHERE v.is_open AND v.current_price IS NOT NULL AND m.stop_loss IS NOT NULL
       AND ((v.side = 'long' AND v.current_price <= m.stop_loss)
            OR (v.side = 'short' AND v.current_price >= m.stop_loss))
)
SELECT (SELECT count(*) FROM pm.v_positions v WHERE v.is_open)::integer AS open_positions,
       open_h.n::integer AS open_holdings,
       closed.n::integer AS closed_holdings,
       closed.wins::integer AS winning_holdings,
       closed.losses::integer AS losing_holdings,
       round(closed.wins * 100.0 / nullif(closed.n, 0), 4) AS win_rate_pct,
       round(closed.gross_profit / nullif(-closed.gross_loss, 0), 8) AS profit_factor,
       round(closed.gross_profit / nullif(closed.wins, 0), 8) AS average_win,
       round(closed.gross_loss / nullif(closed.losses, 0), 8) AS average_loss,
       closed.largest_win,
       closed.largest_loss,
       closed.gross_profit,
       closed.gross_loss,
       closed.net AS closed_realized_pnl,
       round(exposure.largest * 100 / nullif(exposure.total, 0), 4) AS largest_position_pct,
       risk.n::integer AS positions_at_risk,
       risk.assets AS positions_at_risk_assets,
       now() AS calculated_at
  FROM closed, open_h, exposure, risk;
COMMENT ON VIEW pm.v_trade_statistics IS
    'Exactly one row of trade statistics over the holdings of the ledger: open_positions, open/closed holdings, wins, losses, win_rate_pct (of closed holdings, NULL when none), profit_factor (gross profit / gross loss, NULL without losses), average_win, average_loss (negative), largest win/loss, closed_realized_pnl, largest_position_pct (largest open exposure / total exposure x 100), positions_at_risk (open long at or below its stop_loss, open short at or above it). Read by Grafana and GET /api/v1/portfolio/summary.';

-- pm.trade_statistics_json()
-- GET /api/v1/portfolio/summary: pm.v_trade_statistics with decimals as strings.
CREATE OR REPLACE FUNCTION pm.trade_statistics_json() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'open_positions', s.open_positions, 'open_holdings', s.open_holdings, 'closed_holdings', s.closed_holdings,
        'winning_holdings', s.winning_holdings, 'losing_holdings', s.losing_holdings,
        'win_rate_pct', pm.dec(s.win_rate_pct), 'profit_factor', pm.dec(s.profit_factor),
        'average_win', pm.dec(s.average_win), 'average_loss', pm.dec(s.average_loss),
        'largest_win', pm.dec(s.largest_win), 'largest_loss', pm.dec(s.largest_loss),
        'gross_profit', pm.dec(s.gross_profit), 'gross_loss', pm.dec(s.gross_loss),
        'closed_realized_pnl', pm.dec(s.closed_realized_pnl),
        'largest_position_pct', pm.dec(s.largest_position_pct),
        'positions_at_risk', s.positions_at_risk, 'positions_at_risk_assets', to_jsonb(s.positions_at_risk_assets),
        'calculated_at', pm.iso(s.calculated_at))
      FROM pm.v_trade_statistics s
$$;
COMMENT ON FUNCTION pm.trade_statistics_json() IS
    'pm.trade_statistics_json() -> jsonb of pm.v_trade_statistics (decimals as strings, NULL when undefined, timestamp ISO Z). Reads the whole ledger (one pass with window functions). Read only.';

-- Grafana reads the statistics view (and the holdings) like the other views of 0030.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        GRANT SELECT ON pm.v_trade_statistics, pm.v_holdings TO pm_grafana;
    END IF;
END
$$;
