-- Grafana: the views its dashboard reads besides the read contract (snapshot and portfolio history,
-- discrepancies, dead letters, counters), and what the read-only role pm_grafana may read. A view
-- runs with its owner's privileges, so the role reads positions through pm.v_positions without any
-- privilege on public.positions.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.v_snapshot_history
-- One row per snapshot. snapshot_timestamp stays the naive UTC column of the
-- shared table so that a time filter on it uses the table's index; Grafana reads naive
-- timestamps as UTC. Figures that only the JSON copy carries (price, exposure) are read from
-- snapshot_data when they are decimal strings or numbers, NULL otherwise.
CREATE OR REPLACE VIEW pm.v_snapshot_history AS
SELECT s.id AS snapshot_id,
       s.position_id,
       s.asset,
       s.mode,
       s.snapshot_timestamp,
       s.size,
       s.long_size,
       s.short_size,
       s.average_entry_price,
       s.unrealized_pnl,
       s.realized_pnl,
       coalesce(s.unrealized_pnl, 0) + coalesce(s.realized_pnl, 0) AS total_pnl,
       CASE WHEN s.snapshot_data->>'current_price' ~ '^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$'
            THEN (s.snapshot_data->>'current_price')::numeric END AS current_price,
       CASE WHEN s.snapshot_data->>'exposure_usdt' ~ '^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$'
            THEN (s.snapshot_data->>'exposure_usdt')::numeric END AS exposure_usdt
  FROM public.position_snapshots s;
COMMENT ON VIEW pm.v_snapshot_history IS
    'One row per position snapshot (naive UTC snapshot_timestamp, indexed); price and exposure from snapshot_data when present. Read by Grafana.';

-- pm.v_portfolio_history
-- One row per snapshot instant. bin/snapshot writes every open position in one
-- statement, so all rows of a run share one snapshot_timestamp and a group is one portfolio state.
-- (A single snapshot taken through the API is a group of one; positions_count tells them apart.)
-- A filter on snapshot_timestamp is pushed below the grouping and uses the index.
CREATE OR REPLACE VIEW pm.v_portfolio_history AS
SELECT h.snapshot_timestamp,
       count(*)::integer AS positions_count,
       coalesce(sum(h.exposure_usdt), 0) AS total_exposure_usdt,
       coalesce(sum(h.size * h.current_price), 0) AS net_exposure_usdt,
       coalesce(sum(h.unrealized_pnl), 0) AS total_unrealized_pnl_usdt,
       coalesce(sum(h.realized_pnl), 0) AS total_realized_pnl_usdt,
       coalesce(sum(h.total_pnl), 0) AS total_pnl_usdt
  FROM pm.v_snapshot_history h
 GROUP BY h.snapshot_timestamp;
COMMENT ON VIEW pm.v_portfolio_history IS
    'Portfolio totals per snapshot instant (one bin/snapshot run = one row); positions_count = positions in that instant.';

-- pm.v_discrepancies
-- Every discrepancy recorded, with whether it was fixed.
CREATE OR REPLACE VIEW pm.v_discrepancies AS
SELECT d.id, d.detected_at, d.position_id, d.asset, d.mode, d.field, d.stored_value, d.expected_value,
       d.source, d.detected_by, d.fixed, d.trace_id
  FROM pm.discrepancies d;
COMMENT ON VIEW pm.v_discrepancies IS
    'Every discrepancy recorded (exchange stream and validation), with whether it was fixed. Read by Grafana.';

-- pm.v_dead_letters
-- Bodies are cut to 2000 characters: a dashboard table needs the start of a bad message, not all of it.
CREATE OR REPLACE VIEW pm.v_dead_letters AS
SELECT d.id, d.created_at, d.queue, d.reason, d.error_code, d.message_id,
       left(d.body, 2000) AS body, d.headers
  FROM pm.dead_letters d;
COMMENT ON VIEW pm.v_dead_letters IS
    'Messages sent to the dead-letter queue (body truncated to 2000 characters). Read by Grafana.';

-- pm.v_counters
-- The monotonic counters.
CREATE OR REPLACE VIEW pm.v_counters AS
SELECT c.name, c.value, c.updated_at
  FROM pm.counters c;
COMMENT ON VIEW pm.v_counters IS
    'Monotonic counters (validations, discrepancies, fixes, stale events, ...). Read by Grafana and /health.';

-- Privileges of pm_grafana: USAGE on the schema (to name its views and call the STABLE helpers they
-- use) and SELECT on the views it reads, nothing else. A view added later is not granted
-- implicitly: each is a decision, listed here. Skipped where the role does not exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        GRANT USAGE ON SCHEMA pm TO pm_grafana;
        GRANT SELECT ON pm.v_positions, pm.v_portfolio, pm.v_portfolio_by_asset, pm.v_snapshot_history,
                        pm.v_portfolio_history, pm.v_discrepancies, pm.v_dead_letters, pm.v_counters,
                        pm.v_trade_statistics, pm.v_holdings
           TO pm_grafana;
    END IF;
END
$$;
