-- The statements the benchmarks and the soak send, by name (read with app.db.load_queries, like
-- app/queries.sql; bench.common.q(name)). The service's own statements stay in app/queries.sql and
-- the benchmarks call those by their names there (app.db.q) when they measure the service's path.

-- ===== bench/sql_bench.py: the SQL core on one connection =====

-- name: sql_apply_order_event
-- One execution through the public function, exactly as a caller on one connection sends it.
SELECT pm.apply_order_event(%s::jsonb)

-- name: sql_apply_batch
-- The consumers' path: a JSON array of executions in one call, each position written once.
SELECT pm.apply_batch('order', %s::jsonb)

-- name: sql_grow_ledger_positions
-- Positions for the grown ledger: the benchmark's own assets and 950 others, flat.
INSERT INTO public.positions (asset, mode, size, realized_pnl, unrealized_pnl, version, created_at)
SELECT a, 'one-way', 0, 0, 0, 1, now()
  FROM (SELECT 'H' || lpad(g::text, 4, '0') || 'USDT' FROM generate_series(1, 950) g
        UNION ALL SELECT unnest(%(assets)s::text[])) AS n(a)
    ON CONFLICT DO NOTHING

-- name: sql_grow_ledger_rows
-- Historical ledger rows, older than anything measured, spread over every position (set-based:
-- folding a million fills through the function would take minutes and measure the same thing).
INSERT INTO pm.executions (position_id, exec_key, kind, source, side, qty, price, fee, exec_time, state_after)
SELECT ids.a[1 + g %% array_length(ids.a, 1)], 'hist-' || g, 'trade', 'order_execution',
       CASE WHEN g %% 2 = 0 THEN 'Buy' ELSE 'Sell' END,
       1, 100 + (g %% 50), 0.01, timestamptz '2020-01-01' + g * interval '1 millisecond',
       ROW(0, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)::pm.pos_state
  FROM generate_series(1, %(rows)s) g,
       (SELECT array_agg(id ORDER BY asset) AS a FROM public.positions) ids

-- name: sql_without_foreign_write_detection
-- The comparison database of the fill path without foreign-write detection: the trigger of
-- public.positions dropped and the own-write marker a no-op (what a fill cost before them).
DO $$
BEGIN
    DROP TRIGGER IF EXISTS positions_foreign_write ON public.positions;
    CREATE OR REPLACE FUNCTION pm.own_writes(p_on boolean) RETURNS text LANGUAGE sql VOLATILE AS 'SELECT ''''::text';
END
$$

-- name: sql_vacuum_ledger
VACUUM (ANALYZE) pm.executions

-- name: sql_vacuum_positions
VACUUM (ANALYZE) public.positions

-- name: sql_checkpoint
-- The bulk insert's dirty pages are written now, not billed to the next measurement.
CHECKPOINT

-- name: ledger_rows
-- Every ledger row (executions, funding, corrections).
SELECT count(*) FROM pm.executions

-- name: ledger_trades
-- Trade executions in the ledger: the pipeline benchmarks wait for all they published.
SELECT count(*) FROM pm.executions WHERE kind = 'trade'

-- name: dead_letter_count
SELECT count(*) FROM pm.dead_letters

-- ===== Soak (bench/soak): read-only checks of the end state after a run under injected faults =====

-- name: soak_sample
-- One point of the soak's time series: ledger rows (executions + funding), outbox rows not yet relayed.
SELECT (SELECT count(*) FROM pm.executions) AS ledger_rows,
       (SELECT count(*) FROM pm.outbox WHERE published_at IS NULL) AS outbox_pending,
       (SELECT count(*) FROM pm.dead_letters) AS dead_letters

-- name: soak_positions_count
-- How many positions exist (the warm-up waits for one per asset).
SELECT count(*) FROM public.positions

-- name: soak_ledger_keys
-- Every ledger row's key and kind: compared with the keys of the executions the soak published.
SELECT exec_key, kind FROM pm.executions

-- name: soak_positions_with_fold
-- Every position as stored, beside a fold of its whole ledger from scratch (pm.fold_ledger).
SELECT p.asset, p.mode, p.size, p.average_entry_price, p.realized_pnl,
       p.long_size, p.long_avg_price, p.short_size, p.short_avg_price, p.current_price,
       f.size AS fold_size, f.avg_price AS fold_avg, f.realized AS fold_realized,
       f.long_size AS fold_long_size, f.long_avg AS fold_long_avg,
       f.short_size AS fold_short_size, f.short_avg AS fold_short_avg
  FROM public.positions p CROSS JOIN LATERAL pm.fold_ledger(p.id) f
 ORDER BY p.asset, p.mode

-- name: soak_position_events
-- The audit rows of every committed change: each must have reached the position_updated queue.
SELECT event_id::text, asset, mode, version FROM pm.outbox WHERE event_type = 'position_updated'

-- ===== bench/e2e_bench.py and bench/scaleout_bench.py: the pipeline =====

-- name: client_backends
-- The other client backends of this database and what they last ran (their CPU time is read from /proc).
SELECT pid, left(regexp_replace(query, '\s+', ' ', 'g'), 60) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'

-- name: applied_span
-- When the first and the last ledger row were committed (applied_at is the transaction's time).
SELECT min(applied_at), max(applied_at) FROM pm.executions

-- name: outbox_pending
-- Changes not yet relayed to the broker.
SELECT count(*) FROM pm.outbox WHERE published_at IS NULL

-- name: one_way_positions
-- Every one-way position's size, average and realized PnL: compared with the reference fold.
SELECT asset, size, average_entry_price, realized_pnl FROM public.positions WHERE mode = 'one-way' ORDER BY asset

-- ===== bench/http_bench.py: the API =====

-- name: analyze
ANALYZE

-- name: database_backends
-- The backends connected to a database (the API's pool): their CPU time is the server's too.
SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()

-- name: list_render
-- http_bench: the SQL of GET /api/v1/positions, every position rendered (timed on a direct connection).
SELECT pm.list_positions_text(NULL, NULL, NULL, NULL, 'all', 1000, 0)

-- name: explain_analyze_prefix
-- http_bench: put before a statement, its execution time in the server (no per-node timing overhead).
EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, FORMAT JSON)

-- name: list_rows
-- http_bench: the same rows read without rendering them, the floor beside list_render.
SELECT * FROM public.positions ORDER BY asset, mode LIMIT 1000

-- ===== bench/snapshot_bench.py: a year of snapshots =====

-- name: snapshot_generate_day
-- One day of hourly snapshots of every position (rows like bin/snapshot's; snapshot_data only
-- when %(with_data)s), `day` days back from now: generated, not taken through the API.
INSERT INTO public.position_snapshots (position_id, asset, size, average_entry_price, unrealized_pnl,
       realized_pnl, mode, long_size, short_size, snapshot_timestamp, snapshot_data)
SELECT p.id, p.asset, p.size, p.average_entry_price, 0, p.realized_pnl, p.mode, NULL, NULL, ts,
       CASE WHEN %(with_data)s THEN jsonb_build_object(
           'id', p.id, 'asset', p.asset, 'mode', p.mode, 'side', CASE WHEN p.size > 0 THEN 'long' ELSE 'short' END,
           'size', p.size::text, 'average_entry_price', p.average_entry_price::text,
           'current_price', p.current_price::text, 'exposure_usdt', (abs(p.size) * p.current_price)::text,
           'unrealized_pnl', '0', 'realized_pnl', p.realized_pnl::text, 'unrealized_pnl_pct', '0',
           'time_held_minutes', 60, 'version', p.version, 'last_updated', pm.iso_utc(ts),
           'created_at', pm.iso_utc(p.created_at), 'price_updated_at', pm.iso_utc(ts)) END
  FROM public.positions p
 CROSS JOIN generate_series(date_trunc('hour', now() AT TIME ZONE 'UTC') - make_interval(days => %(day)s),
                            date_trunc('hour', now() AT TIME ZONE 'UTC') - make_interval(days => %(day)s - 1)
                              - interval '1 hour', interval '1 hour') ts

-- name: snapshot_vacuum
VACUUM (ANALYZE) public.position_snapshots

-- name: snapshot_table_size
SELECT count(*), pg_total_relation_size('public.position_snapshots') FROM public.position_snapshots

-- name: snapshot_history_window
-- The snapshots of one position in a window of time (what GET .../snapshots?from=&to= runs).
SELECT pm.list_snapshots(%(asset)s, 'one-way', 1000, 0, now() - interval '14 days', now() - interval '7 days')

-- name: grafana_portfolio_history
-- The dashboard's "Portfolio history" panel, its time filter and grouping expanded: %(bucket)s
-- seconds per point over the last %(hours)s hours.
SELECT floor(extract(epoch FROM snapshot_timestamp) / %(bucket)s) * %(bucket)s AS time,
       avg(total_exposure_usdt), avg(total_pnl_usdt)
  FROM pm.v_portfolio_history
 WHERE snapshot_timestamp BETWEEN (now() AT TIME ZONE 'UTC') - make_interval(hours => %(hours)s)
                              AND (now() AT TIME ZONE 'UTC')
 GROUP BY 1 ORDER BY 1

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %s

-- ===== bench/extras_bench.py: trade statistics, history, as-of, the live stream =====

-- name: extras_load_holdings
-- H closed holdings (buy then sell) over A assets in one statement; exec times increase per asset.
SELECT count(pm.apply_order_event(jsonb_build_object(
           'event_type', 'order_executed', 'execution_id', 'bench-' || g || '-' || leg,
           'order_id', 'bench-' || g || '-' || leg, 'asset', 'BENCH' || (g %% %(assets)s) || 'USDT',
           'side', CASE WHEN leg = 1 THEN 'Buy' ELSE 'Sell' END, 'execution_quantity', '1',
           'execution_price', CASE WHEN leg = 1 THEN '100' ELSE (95 + (g %% 11))::text END,
           'execution_fees', '0.01',
           'executed_at', to_char(timestamptz '2025-01-01' + make_interval(mins => g * 2 + leg), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))))
  FROM generate_series(1, %(holdings)s) g, (VALUES (1), (2)) l(leg)

-- ===== bench/latency_bench.py: from a message to its row and its event =====

-- name: latency_listen
-- The row watcher wakes on the outbox's notification (sent at commit, in the writing transaction).
LISTEN pm_outbox

-- name: latency_probe_versions
-- The probe symbols' one-way versions, read at each notification.
SELECT asset, version FROM public.positions WHERE asset = ANY(%(assets)s::text[]) AND mode = 'one-way'

-- name: latency_role_figures
-- The consumers' and the relay's cumulative figures, as their heartbeats wrote them (app/figures.py).
SELECT role, figures FROM pm.heartbeats
