-- Grafana: the views its dashboard reads besides the read contract (snapshot and portfolio history,
-- discrepancies, foreign writes, dead letters, counters, consumers and outbox backlog), and what the
-- read-only role pm_grafana may read. A view
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
    'Every discrepancy recorded (exchange stream, validation, foreign writes: their writer is in pm.v_foreign_writes), with whether it was fixed. Read by Grafana.';

-- pm.v_foreign_writes
-- Every change of a position by a writer other than this service (pm.record_foreign_write).
CREATE OR REPLACE VIEW pm.v_foreign_writes AS
SELECT d.id, d.detected_at, d.position_id, d.asset, d.mode,
       CASE WHEN d.row_before IS NULL THEN 'insert' WHEN d.row_after IS NULL THEN 'delete' ELSE 'update' END AS operation,
       d.writer_role, d.application_name,
       (d.row_before ->> 'size')::numeric AS size_before,
       (d.row_after ->> 'size')::numeric AS size_after,
       (d.row_before ->> 'average_entry_price')::numeric AS average_entry_price_before,
       (d.row_after ->> 'average_entry_price')::numeric AS average_entry_price_after,
       (SELECT string_agg(c.key, ', ' ORDER BY c.key)
          FROM jsonb_each(coalesce(d.row_after, '{}'::jsonb)) a
          FULL JOIN jsonb_each(coalesce(d.row_before, '{}'::jsonb)) b ON b.key = a.key
          CROSS JOIN LATERAL (SELECT coalesce(a.key, b.key) AS key) c
         WHERE a.value IS DISTINCT FROM b.value AND c.key NOT IN ('version')) AS changed,
       d.row_before, d.row_after
  FROM pm.discrepancies d
 WHERE d.field = 'foreign_write';
COMMENT ON VIEW pm.v_foreign_writes IS
    'Changes of positions that did not come through this service''s functions: when, which position, insert/update/delete, the writing role and application_name, size and average before and after, the columns changed (version aside: the trigger bumps it), the rows. Read by Grafana.';

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

-- pm.v_consumers
-- Per role (order, position, relay): liveness from the heartbeats and the figures its processes wrote.
CREATE OR REPLACE VIEW pm.v_consumers AS
SELECT h.role,
       max(h.beat_at) FILTER (WHERE h.instance <> '') AS last_heartbeat_at,
       round(extract(epoch FROM now() - max(h.beat_at) FILTER (WHERE h.instance <> ''))::numeric, 3) AS seconds_since_heartbeat,
       coalesce(max(h.beat_at) FILTER (WHERE h.instance <> '') > now() - pm.heartbeat_timeout(), false) AS alive,
       count(*) FILTER (WHERE h.instance <> '' AND h.beat_at > now() - pm.heartbeat_timeout()) AS instances,
       coalesce(sum((h.figures #>> '{counters,messages:applied}')::numeric), 0) AS messages_applied,
       coalesce(sum((h.figures #>> '{counters,messages:duplicate}')::numeric), 0) AS messages_duplicate,
       coalesce(sum((h.figures #>> '{counters,messages:stale}')::numeric), 0) AS messages_stale,
       coalesce(sum((h.figures #>> '{counters,messages:ignored}')::numeric), 0) AS messages_ignored,
       coalesce(sum((h.figures #>> '{counters,messages:invalid}')::numeric), 0) AS messages_invalid,
       coalesce(sum((h.figures #>> '{counters,messages:failed}')::numeric), 0) AS messages_failed,
       coalesce(sum(p.published), 0) AS events_published,
       coalesce(sum((h.figures #>> '{counters,batch_seconds_count}')::numeric), 0) AS batches,
       round(sum((h.figures #>> '{counters,batch_seconds_sum}')::numeric)
             / nullif(sum((h.figures #>> '{counters,batch_seconds_count}')::numeric), 0), 6) AS batch_seconds_avg,
       round(sum((h.figures #>> '{counters,message_seconds_sum}')::numeric)
             / nullif(sum((h.figures #>> '{counters,message_seconds_count}')::numeric), 0), 6) AS message_seconds_avg,
       round(sum((h.figures #>> '{counters,publish_seconds_sum}')::numeric)
             / nullif(sum((h.figures #>> '{counters,publish_seconds_count}')::numeric), 0), 6) AS publish_seconds_avg,
       max((h.figures #>> '{gauges,lag_seconds}')::numeric) FILTER (WHERE h.beat_at > now() - pm.heartbeat_timeout()) AS lag_seconds,
       max((h.figures #>> '{gauges,oldest_unprocessed_seconds}')::numeric)
           FILTER (WHERE h.beat_at > now() - pm.heartbeat_timeout()) AS oldest_unprocessed_seconds,
       max((h.figures #>> '{gauges,queue_depth}')::numeric) FILTER (WHERE h.beat_at > now() - pm.heartbeat_timeout()) AS queue_depth
  FROM pm.heartbeats h
 CROSS JOIN LATERAL (SELECT sum(e.value::numeric) AS published
                       FROM jsonb_each_text(coalesce(h.figures -> 'counters', '{}'::jsonb)) e
                      WHERE e.key LIKE 'published:%') p
 GROUP BY h.role;
COMMENT ON VIEW pm.v_consumers IS
    'Per consumer role and the relay: newest heartbeat, alive (within pm.heartbeat_timeout()), live instances, messages by outcome, events published, batches, average batch / message / publish seconds (since the processes started; Prometheus has the rates), and the gauges of the live instances (lag, oldest unprocessed message, queue depth). Read by Grafana.';

-- pm.v_outbox_backlog
-- Outbox events the relay has not published yet: how many, and the age of the oldest.
CREATE OR REPLACE VIEW pm.v_outbox_backlog AS
SELECT count(*) AS pending,
       coalesce(round(extract(epoch FROM now() - min(o.created_at))::numeric, 3), 0) AS oldest_pending_seconds
  FROM pm.outbox o
 WHERE o.published_at IS NULL;
COMMENT ON VIEW pm.v_outbox_backlog IS
    'Unpublished outbox events (the relay''s backlog) and the age of the oldest in seconds (0 when none). Read by Grafana.';

-- Privileges of pm_grafana: USAGE on the schema (to name its views and call the STABLE helpers they
-- use) and SELECT on the views it reads, nothing else. A view added later is not granted
-- implicitly: each is a decision, listed here. Skipped where the role does not exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        GRANT USAGE ON SCHEMA pm TO pm_grafana;
        GRANT SELECT ON pm.v_positions, pm.v_portfolio, pm.v_portfolio_by_asset, pm.v_snapshot_history,
                        pm.v_portfolio_history, pm.v_discrepancies, pm.v_dead_letters, pm.v_counters,
                        pm.v_trade_statistics, pm.v_holdings, pm.v_foreign_writes, pm.v_consumers,
                        pm.v_outbox_backlog
           TO pm_grafana;
    END IF;
END
$$;

-- pm.grafana_access(login role, password) -> jsonb
-- How Grafana reaches pm_grafana (NOLOGIN by default): granted to the operator's login role, and/or a password.
CREATE OR REPLACE FUNCTION pm.grafana_access(p_login_role text, p_password text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    l_role text := nullif(btrim(p_login_role), '');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        RAISE EXCEPTION 'the role pm_grafana does not exist (sql/0030_grafana.sql creates it)' USING ERRCODE = 'P0002';
    END IF;
    IF l_role IS NOT NULL THEN
        IF l_role = 'pm_grafana' THEN
            PERFORM pm.bad_input('login_role', 'name a login role of your own, not pm_grafana itself');
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = l_role) THEN
            PERFORM pm.bad_input('login_role', format('no role named %s: create it first (CREATE ROLE %I LOGIN PASSWORD ...)',
                                                      left(l_role, 63), left(l_role, 63)));
        END IF;
        EXECUTE format('GRANT pm_grafana TO %I', l_role);
    END IF;
    IF nullif(p_password, '') IS NOT NULL THEN
        EXECUTE format('ALTER ROLE pm_grafana LOGIN PASSWORD %L', p_password);
    END IF;
    RETURN jsonb_build_object('login_role', l_role, 'pm_grafana_can_login',
                              (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana'));
END
$$;
COMMENT ON FUNCTION pm.grafana_access(text, text) IS
    'pm.grafana_access(login role or NULL, password or NULL) -> {"login_role", "pm_grafana_can_login"}: grants pm_grafana (NOLOGIN since 0072) to an existing login role of the operator''s, and/or lets pm_grafana log in with the given password. Nothing given: nothing changes. Called by bin/migrate from POSITION_MANAGER_GRAFANA_LOGIN_ROLE / POSITION_MANAGER_GRAFANA_PASSWORD; needs a migration user that may manage roles. The role is cluster-wide. Errors: 22023 naming login_role (pm_grafana itself, or no such role); P0002 when pm_grafana does not exist.';
