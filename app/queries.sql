-- Every statement the Python processes send to PostgreSQL, by name (see app/db.py).
-- Almost all of them call one function or read one view of schema pm (sql/).

-- name: apply_order_event
-- One message body of the order queue, applied in the caller's transaction.
SELECT pm.apply_order_event(%(event)s::jsonb)

-- name: apply_position_event
-- One message body of the position queue, applied in the caller's transaction.
SELECT pm.apply_position_event(%(event)s::jsonb)

-- name: upgrade_gate
-- The first statement of every write transaction of the service: waits while bin/migrate upgrades
-- the schema (it holds pm.upgrade_gate ACCESS EXCLUSIVE), so that a transaction runs wholly on the
-- functions before an upgrade or wholly on those after it (docs/migrations.md).
LOCK TABLE pm.upgrade_gate IN ACCESS SHARE MODE

-- name: schema_version
-- {"migration", "code", "version", "code_applied_at"}: what the database was upgraded to (/health, bin/migrate --check).
SELECT pm.schema_version()

-- ===== Migrations: bin/migrate (jobs/migrate.py); one transaction per upgrade =====

-- name: migrate_lock_timeout
-- How long the upgrade waits for a lock (the gate, a view being read) before it gives up and rolls back.
SELECT set_config('lock_timeout', %(ms)s::text || 'ms', true)

-- name: migrate_has_gate
-- Whether the upgrade gate exists yet (a database from before the code layer has none).
SELECT to_regclass('pm.upgrade_gate') IS NOT NULL

-- name: migrate_take_gate
-- Held to the commit: write transactions of the service wait here, in-flight ones finish first.
LOCK TABLE pm.upgrade_gate IN ACCESS EXCLUSIVE MODE

-- name: migrate_has_code_table
-- Whether pm.schema_code exists yet.
SELECT to_regclass('pm.schema_code') IS NOT NULL

-- name: migrate_has_schema_version
-- Whether pm.schema_version() exists yet (a database from before the code layer has none).
SELECT to_regprocedure('pm.schema_version()') IS NOT NULL

-- name: migrate_applied_code
-- {file: checksum} of the repeatable files as last applied.
SELECT file, checksum FROM pm.schema_code

-- name: migrate_applied_ids
-- Ids of the numbered migrations this database has applied (yoyo's bookkeeping; search_path is pm).
SELECT migration_id FROM pm._yoyo_migration

-- name: migrate_record_code
-- A repeatable file was applied with this content.
INSERT INTO pm.schema_code (file, checksum) VALUES (%(file)s, %(checksum)s)
ON CONFLICT (file) DO UPDATE SET checksum = excluded.checksum, applied_at = now()

-- name: migrate_forget_code
-- Bookkeeping rows of repeatable files that no longer exist (all of them when given none).
DELETE FROM pm.schema_code WHERE NOT (file = ANY (%(files)s::text[]))

-- name: migrate_drop_code_layer
-- Before a rollback: every function, procedure and view of schema pm (the code layer, which the
-- next bin/migrate re-applies whole), so that the numbered rollbacks can drop tables and types.
DO $$
DECLARE
    stmts text[];
    stmt text;
BEGIN
    -- the names first: a CASCADE below may drop objects listed after it
    SELECT array_agg(s) INTO stmts FROM (
        SELECT format('DROP VIEW IF EXISTS %s CASCADE', c.oid::regclass) AS s
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'pm' AND c.relkind = 'v'
        UNION ALL
        SELECT format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::regprocedure)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'pm') x;
    FOREACH stmt IN ARRAY coalesce(stmts, '{}') LOOP
        EXECUTE stmt;
    END LOOP;
END
$$

-- name: migrate_grafana_access
-- How Grafana reaches the read-only role pm_grafana: granted to the operator's login role, and/or a password.
SELECT pm.grafana_access(%(login_role)s, %(password)s)

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
-- A procedure that commits after each position (the job's connection is in autocommit).
CALL pm.validate_positions(%(fix)s, %(trace)s, NULL)

-- name: job_stale_price_assets
-- Symbols of open positions whose price is missing or stale (bin/refresh-prices).
SELECT pm.stale_price_assets()

-- name: job_set_prices
-- Mark prices fetched from the exchange, {"SYMBOL": "price"} (bin/refresh-prices).
SELECT pm.set_prices(%(prices)s::jsonb, 'exchange', %(trace)s, %(actor)s)

-- API (app/api/): the REST API. Results that go out as they are come back as text,
-- so Python never parses and re-serialises a Position.

-- name: api_admit
-- Admission of a request: a stored key looked up (scope NULL) or one vouched for by the API, its
-- scope against the route's, then up to `tokens` tokens of its rate limit (0: not limited, or the
-- request spends a token its process holds already); one round trip.
SELECT outcome, key_name, scope, rate_limit, remaining, retry_after, granted
  FROM pm.api_admit(%(key_hash)s, %(scope)s, %(limit)s, %(default_limit)s, %(needed)s, %(tokens)s)

-- name: api_rate_return
-- Tokens of a lease this process took but never spent, back to the key's bucket (before its next take).
SELECT pm.rate_limit_return(%(key_hash)s, %(limit)s, %(tokens)s)

-- name: api_get_position
-- One Position (pm.get_position, the one reader) as JSON text plus its version (ETag); no row when
-- absent. asset is a symbol or a position id (pm.position_key; P0002 for an unknown id).
SELECT p::text AS body, (p ->> 'version')::integer AS version
  FROM pm.position_key(%(asset)s, %(mode)s) k, pm.get_position(k.asset, k.mode) p
 WHERE p IS NOT NULL

-- name: api_read_position
-- GET /api/v1/positions/{asset}: admission (as api_admit) and the read of one Position in one round
-- trip; version NULL when there is no such position, body NULL too when it is the known version.
SELECT outcome, key_name, scope, rate_limit, remaining, retry_after, granted, version, body
  FROM pm.api_read_position(%(key_hash)s, %(scope)s, %(limit)s, %(default_limit)s, %(needed)s, %(tokens)s,
                            %(asset)s, %(mode)s, %(known)s)

-- name: api_read_position_admitted
-- GET /api/v1/positions/{asset} when nothing is left to ask the database about the caller (a key the
-- API checked itself, with a token its process holds, or no rate limit): the read of
-- pm.api_read_position alone; no row when there is no such position.
SELECT version, body FROM pm.position_if_changed(%(asset)s, %(mode)s, %(known)s)

-- name: api_live_key_digests
-- bin/serve at start: the digests of the live stored keys (overrides that match none are warned about).
SELECT key_hash FROM pm.api_keys WHERE revoked_at IS NULL

-- name: api_client_addr
-- The client address of an API write, for the audit trail (pm.write_state reads it); transaction-local.
SELECT set_config('pm.client_addr', %(addr)s, true)

-- name: api_list_positions
-- GET /api/v1/positions: admission (as api_admit) and one page of the list in one round trip; body
-- NULL when the positions fingerprint is the known one (the caller holds that page already).
SELECT outcome, key_name, scope, rate_limit, remaining, retry_after, granted, fingerprint, body
  FROM pm.api_list_positions(%(key_hash)s, %(scope)s, %(limit)s, %(default_limit)s, %(needed)s, %(tokens)s,
                             %(asset)s, %(mode)s, %(size_min)s, %(size_max)s, %(status)s, %(page_limit)s,
                             %(offset)s, %(known)s)

-- name: api_validate_position
-- POST /api/v1/positions/{asset}/validate; raises P0002 for an unknown position.
SELECT pm.validate_position(k.asset, k.mode, %(fix)s, %(trace)s, %(actor)s)::text FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: api_snapshot_position
-- POST /api/v1/positions/{asset}/snapshot; raises P0002 for an unknown position.
SELECT pm.snapshot_position(k.asset, k.mode, %(trace)s)::text FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: api_list_snapshots
-- GET /api/v1/positions/{asset}/snapshots, newest first; raises P0002 for an unknown position.
SELECT pm.list_snapshots(k.asset, k.mode, %(limit)s, %(offset)s, %(from)s, %(to)s)::text
  FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: api_portfolio
-- PortfolioMetrics (optionally of one asset) and the positions fingerprint (see
-- api_positions_fingerprint) in one snapshot, so that the per-process cache can tell later whether
-- anything changed since.
SELECT pm.positions_fingerprint() AS fingerprint, pm.portfolio_json(%(asset)s)::text AS body

-- name: api_portfolio_with_positions
-- As api_portfolio, plus "positions": the open positions (of the asset, when given).
SELECT pm.positions_fingerprint() AS fingerprint,
       (pm.portfolio_json(%(asset)s)
        || jsonb_build_object('positions',
                              pm.list_positions(%(asset)s, NULL, NULL, NULL, 'open', NULL, 0) -> 'positions'))::text AS body

-- name: api_positions_fingerprint
-- Whether anything changed since the cached portfolio was read (pm.positions_fingerprint).
SELECT pm.positions_fingerprint()

-- name: api_health
-- Counters and sizes for GET /health, and whether each expected consumer role is alive (heartbeats).
SELECT pm.health() || jsonb_build_object('consumers', pm.liveness(%(roles)s::text[]))

-- name: api_metrics
-- The service-wide figures of GET /metrics: counters, outbox backlog, dead letters, foreign writes,
-- and per consumer role its liveness and the figures its processes wrote with their heartbeats.
SELECT pm.metrics(%(roles)s::text[])

-- name: api_select_one
-- The benchmark's reference endpoint (POSITION_MANAGER_BENCH_REFERENCE=1): one trivial query.
SELECT 1

-- ===== Pipeline: the consumers and the outbox relay (consumers/) =====

-- name: pipeline_apply_batch
-- A batch of message bodies of one queue (kind order or position), sent as one text[] (binary: no
-- escaping, ~0.5 us a body), parsed as JSON here (the consumer does not parse them in Python on this path) and applied in the
-- caller's transaction by pm.apply_batch (each position is written once per batch). One row per
-- body, in order, as plain columns: (ordinal, status, reason, asset and version of the position
-- written, the last one of a multi-record message; event id and trace id for the log line). Any
-- body that is not JSON, or any invalid message, fails the whole statement (the consumer then sets
-- aside the bodies that are not JSON and applies the rest one by one under savepoints).
WITH b AS MATERIALIZED (
    SELECT u.i, u.body::jsonb AS j FROM unnest(%(bodies)b::text[]) WITH ORDINALITY AS u(body, i))
SELECT t.i, t.r ->> 'status', t.r ->> 'reason', p.p ->> 'asset', (p.p ->> 'version')::bigint,
       (SELECT v #>> '{}' FROM unnest(ARRAY[b.j -> 'event_id', b.j -> 'execution_id', b.j -> 'execId', b.j -> 'id']) AS v
         WHERE jsonb_typeof(v) IN ('string', 'number') LIMIT 1),
       CASE WHEN jsonb_typeof(b.j -> 'trace_id') = 'string' THEN b.j ->> 'trace_id' END
  FROM jsonb_array_elements(pm.apply_batch(%(kind)s, (SELECT jsonb_agg(j ORDER BY i) FROM b))) WITH ORDINALITY AS t(r, i)
  JOIN b USING (i)
  CROSS JOIN LATERAL (SELECT coalesce(t.r -> 'position', jsonb_path_query_array(t.r, '$.results[*].position') -> -1) AS p) AS p

-- name: pipeline_schema_ready
-- Whether the database is migrated far enough for the consumers (checked on every connect).
SELECT to_regprocedure('pm.apply_batch(text,jsonb)') IS NOT NULL
   AND to_regprocedure('pm.record_dead_letter(text,text,text,text,text,jsonb)') IS NOT NULL

-- name: heartbeat
-- A consumer role's or the relay's heartbeat with its cumulative figures (app/figures.py).
SELECT pm.heartbeat(%(role)s, %(instance)s, %(started_at)s, %(figures)s::jsonb)

-- name: pipeline_record_dead_letter
-- Keep a message sent to the dead-letter queue for operators and Grafana.
SELECT pm.record_dead_letter(%(queue)s, %(reason)s, %(error_code)s, %(message_id)s, %(body)s, %(headers)s::jsonb)

-- name: pipeline_listen_outbox
-- The relay's wake-up: the outbox insert trigger notifies pm_outbox at commit.
LISTEN pm_outbox

-- name: pipeline_outbox_claim
-- The oldest unpublished outbox rows, locked (SKIP LOCKED); the payload as text, sent as it is.
SELECT c.id, c.event_id, c.event_type, c.trace_id, c.payload::text FROM pm.outbox_claim(%(limit)s) AS c

-- name: pipeline_outbox_mark_published
-- After the broker confirmed them, in the same transaction as the claim.
SELECT pm.outbox_mark_published(%(ids)s::bigint[])

-- name: pipeline_enqueue_portfolio_event
-- One coalesced portfolio_updated event if positions changed and the interval elapsed.
SELECT pm.enqueue_portfolio_event(%(interval)s::numeric)

-- name: pipeline_record_subscription
-- The outcome of one request to ws-gateway for its position topic (shown by /health).
SELECT pm.record_subscription(%(provider)s, %(channel)s, %(subscribed)s, %(status)s)

-- name: demo_open_positions
-- bin/demo: which open positions exist yet, and whether they have a price.
SELECT asset, current_price FROM pm.v_positions WHERE is_open

-- name: demo_portfolio
-- bin/demo: the portfolio it prints at the end.
SELECT pm.portfolio_json(NULL)

-- Extras (app/api/extras/, jobs/api_keys.py): manual control, price pushes, trade
-- statistics, history and as-of, scoped API keys, the live stream.

-- name: extras_update_position_meta
-- PATCH /api/v1/positions/{asset}: merge patch of the metadata (and current_price); PM412 on a version mismatch.
SELECT pm.update_position_meta(k.asset, k.mode, %(patch)s::jsonb, %(expected_version)s, %(trace)s, %(actor)s)::text
  FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: extras_close_position
-- POST /api/v1/positions/{asset}/close: manual executions closing every open leg.
SELECT pm.close_position(k.asset, k.mode, %(exit_price)s, %(expected_version)s, %(trace)s, %(actor)s)::text
  FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: extras_open_position
-- POST /api/v1/positions: a position opened by hand (one manual execution); 55000 when it is open already.
SELECT pm.open_position(%(body)s::jsonb, %(trace)s, %(actor)s)::text

-- name: extras_delete_position
-- DELETE /api/v1/positions/{asset}: a flat position removed (archived; ledger and history kept); 55000 when open.
SELECT pm.delete_position(k.asset, k.mode, %(expected_version)s, %(trace)s, %(actor)s)::text
  FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: extras_bulk_update_positions
-- POST /api/v1/positions/bulk-update: one metadata patch for many positions by id, all or nothing.
SELECT pm.bulk_update_positions(%(body)s::jsonb, %(trace)s, %(actor)s)::text

-- name: extras_set_prices
-- POST /api/v1/prices: {"SYMBOL": "price"} set by an operator or another system (source manual).
SELECT pm.set_prices(%(prices)s::jsonb, 'manual', %(trace)s, %(actor)s)::text

-- name: extras_trade_statistics
-- GET /api/v1/portfolio/summary: holdings statistics from the ledger.
SELECT pm.trade_statistics_json()::text

-- name: extras_position_history
-- GET /api/v1/positions/{asset}/history: the audit trail, newest first.
SELECT pm.position_history(k.asset, k.mode, %(limit)s, %(offset)s)::text FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: extras_position_as_of
-- GET /api/v1/positions/{asset}?as_of=...: the position at that time, from the ledger.
SELECT pm.position_as_of(k.asset, k.mode, %(as_of)s)::text FROM pm.position_key(%(asset)s, %(mode)s) k

-- name: extras_api_key_lookup
-- The stored key behind a presented key (SHA-256 hex): name, scope, own rate limit; NULLs when unknown.
SELECT name, scope, rate_limit FROM pm.api_key_lookup(%(key_hash)s)

-- name: extras_api_key_create
-- bin/api-keys create: the digest only; the key itself is printed once and never stored.
SELECT pm.api_key_create(%(name)s, %(key_hash)s, %(scope)s, %(rate_limit)s)

-- name: extras_api_key_list
-- bin/api-keys list
SELECT pm.api_key_list(%(include_revoked)s)

-- name: extras_api_key_revoke
-- bin/api-keys revoke NAME
SELECT pm.api_key_revoke(%(name)s)

-- name: extras_stream_slot
-- One of the key's live-stream slots for this connection (NULL: the key holds all of them already).
SELECT pm.stream_take_slot(%(key_hash)s, %(cap)s)

-- name: extras_stream_listen
-- The live stream's wake-up: the outbox insert trigger notifies pm_outbox at commit.
LISTEN pm_outbox

-- name: extras_stream_head
-- Where a stream with a Last-Event-ID beyond the newest outbox id resumes: the newest outbox id.
SELECT pm.stream_head()

-- name: extras_stream_start
-- A stream without Last-Event-ID: {"cursor", "positions"}, its initial_data (the open positions) and where it goes on.
SELECT pm.stream_start(%(assets)s::text[], %(grace)s)

-- name: extras_stream_fetch
-- The next events after an outbox id (typed, price changes coalesced, of the assets or all), never
-- skipping one still in flight.
SELECT pm.stream_fetch(%(after)s, %(limit)s, %(hold)s::jsonb, %(grace)s, %(assets)s::text[])
