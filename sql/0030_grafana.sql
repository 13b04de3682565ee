-- 0030 Grafana: a read-only login role and the views its dashboard reads (SPEC §7)
-- Grafana is pointed directly at the database. It logs in as pm_grafana, which can read the
-- views of schema pm and nothing else: no table, no function that writes. A view runs with the
-- privileges of its owner (the migration owner), so the role reads positions through
-- pm.v_positions without any privilege on public.positions.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT.
--
-- Password: the role is created once per PostgreSQL cluster with the password taken from the
-- custom setting pm.grafana_password when set (e.g. PGOPTIONS='-c pm.grafana_password=...'
-- psql -f ...), else the documented default 'pm_grafana'. Change it afterwards with
-- ALTER ROLE pm_grafana PASSWORD '...'; re-running this file never resets it.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        BEGIN
            EXECUTE format('CREATE ROLE pm_grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT '
                           'NOREPLICATION CONNECTION LIMIT 20 PASSWORD %L',
                           coalesce(nullif(current_setting('pm.grafana_password', true), ''), 'pm_grafana'));
            -- A dashboard never writes, and a runaway panel query must not hold the database.
            ALTER ROLE pm_grafana SET default_transaction_read_only = on;
            ALTER ROLE pm_grafana SET statement_timeout = '30s';
            ALTER ROLE pm_grafana SET TimeZone = 'UTC';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            -- Another database of the same cluster created it at the same moment: fine.
            NULL;
        END;
    END IF;
END
$$;

-- Snapshot history, one row per snapshot. snapshot_timestamp stays the naive UTC column of the
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

-- Portfolio history: one row per snapshot instant. bin/snapshot writes every open position in one
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

CREATE OR REPLACE VIEW pm.v_discrepancies AS
SELECT d.id, d.detected_at, d.position_id, d.asset, d.mode, d.field, d.stored_value, d.expected_value,
       d.source, d.detected_by, d.fixed, d.trace_id
  FROM pm.discrepancies d;
COMMENT ON VIEW pm.v_discrepancies IS
    'Every discrepancy recorded (exchange stream and validation), with whether it was fixed. Read by Grafana.';

-- Bodies are cut to 2000 characters: a dashboard table needs the start of a bad message, not all of it.
CREATE OR REPLACE VIEW pm.v_dead_letters AS
SELECT d.id, d.created_at, d.queue, d.reason, d.error_code, d.message_id,
       left(d.body, 2000) AS body, d.headers
  FROM pm.dead_letters d;
COMMENT ON VIEW pm.v_dead_letters IS
    'Messages sent to the dead-letter queue (body truncated to 2000 characters). Read by Grafana.';

CREATE OR REPLACE VIEW pm.v_counters AS
SELECT c.name, c.value, c.updated_at
  FROM pm.counters c;
COMMENT ON VIEW pm.v_counters IS
    'Monotonic counters (validations, discrepancies, fixes, stale events, ...). Read by Grafana and /health.';

-- Privileges: USAGE on the schema (to name its views and call the STABLE helpers they use) and
-- SELECT on the views of the read contract only. Views added later are not granted implicitly:
-- each is a decision. A view that does not exist (yet) is skipped.
GRANT USAGE ON SCHEMA pm TO pm_grafana;
DO $$
DECLARE
    v text;
BEGIN
    FOREACH v IN ARRAY ARRAY['pm.v_positions', 'pm.v_portfolio', 'pm.v_portfolio_by_asset',
                             'pm.v_snapshot_history', 'pm.v_portfolio_history', 'pm.v_discrepancies',
                             'pm.v_dead_letters', 'pm.v_counters'] LOOP
        IF to_regclass(v) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO pm_grafana', v);
        END IF;
    END LOOP;
END
$$;
