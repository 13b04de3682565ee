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
