-- Every statement the Python processes send to PostgreSQL, by name (see app/db.py).
-- Almost all of them call one function or read one view of schema pm (sql/).

-- name: apply_order_event
-- One message body of the order queue (SPEC §2.3), applied in the caller's transaction.
SELECT pm.apply_order_event(%(event)s::jsonb)

-- name: apply_position_event
-- One message body of the position queue (SPEC §2.4), applied in the caller's transaction.
SELECT pm.apply_position_event(%(event)s::jsonb)

-- ===== Operations: the cron-style jobs of jobs/ (bin/snapshot, bin/cleanup-snapshots, ...) =====

-- name: job_try_lock
-- Session-level advisory lock of one job (jobs/common.py LOCK_KEYS): false when another run holds it.
SELECT pg_try_advisory_lock(%(key)s::bigint)

-- name: job_snapshot_all
-- One snapshot of every open position and of those closed since their last snapshot (bin/snapshot).
SELECT pm.snapshot_all(%(trace)s)

-- name: job_cleanup_snapshots
-- Delete ONE batch of snapshots older than the retention; returns how many (bin/cleanup-snapshots loops).
SELECT pm.cleanup_snapshots(%(retention_days)s, %(batch_size)s)

-- name: job_validate_all
-- Validate every position against its ledger and the exchange; fix when asked (bin/validate-positions).
SELECT pm.validate_all(%(fix)s, %(trace)s)

-- name: job_stale_price_assets
-- Symbols of open positions whose price is missing or stale (bin/refresh-prices).
SELECT pm.stale_price_assets()

-- name: job_set_prices
-- Mark prices fetched from the exchange, {"SYMBOL": "price"} (bin/refresh-prices).
SELECT pm.set_prices(%(prices)s::jsonb, 'exchange', %(trace)s, %(actor)s)

-- API (app/api/): the REST API of SPEC §3. Results that go out as they are come back as text,
-- so Python never parses and re-serialises a Position.

-- name: api_rate_limit_hit
-- One request of an API key (SHA-256 hex) in the current 60 s window; exact across workers/hosts.
SELECT allowed, hits, reset_seconds FROM pm.rate_limit_hit(%(key_hash)s, %(limit)s)

-- name: api_get_position
-- One Position as JSON text plus its version (ETag); both NULL when absent.
SELECT p::text AS body, (p ->> 'version') AS version FROM pm.get_position(%(asset)s, %(mode)s) AS p

-- name: api_list_positions
-- GET /api/v1/positions: filters and pagination, {"positions", "count", "total"} as JSON text.
SELECT pm.list_positions(%(asset)s, %(mode)s, %(size_min)s, %(size_max)s, %(status)s, %(limit)s, %(offset)s)::text

-- name: api_validate_position
-- POST /api/v1/positions/{asset}/validate; raises P0002 for an unknown position.
SELECT pm.validate_position(%(asset)s, %(mode)s, %(fix)s, %(trace)s, %(actor)s)::text

-- name: api_snapshot_position
-- POST /api/v1/positions/{asset}/snapshot; raises P0002 for an unknown position.
SELECT pm.snapshot_position(%(asset)s, %(mode)s, %(trace)s)::text

-- name: api_list_snapshots
-- GET /api/v1/positions/{asset}/snapshots, newest first; raises P0002 for an unknown position.
SELECT pm.list_snapshots(%(asset)s, %(mode)s, %(limit)s, %(offset)s, %(from)s, %(to)s)::text

-- name: api_portfolio
-- PortfolioMetrics (optionally of one asset) and the change id it was computed at, in one
-- snapshot, so that the per-process cache can tell later whether anything changed since.
SELECT pm.last_change_id() AS change_id, pm.portfolio_json(%(asset)s)::text AS body

-- name: api_portfolio_with_positions
-- As api_portfolio, plus "positions": the open positions (of the asset, when given).
SELECT pm.last_change_id() AS change_id,
       (pm.portfolio_json(%(asset)s)
        || jsonb_build_object('positions',
                              pm.list_positions(%(asset)s, NULL, NULL, NULL, 'open', NULL, 0) -> 'positions'))::text AS body

-- name: api_last_change_id
-- Grows on every committed change: a cached portfolio is served only while this is unchanged.
SELECT pm.last_change_id()

-- name: api_health
-- Counters and sizes for GET /health.
SELECT pm.health()

-- name: api_select_one
-- The benchmark's reference endpoint (POSITION_MANAGER_BENCH_REFERENCE=1): one trivial query.
SELECT 1
