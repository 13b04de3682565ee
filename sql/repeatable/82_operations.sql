-- Operations: dead letters kept for operators, the figures of /health, and the schema version.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.record_dead_letter(queue, reason, error code, message id, body, headers) -> bigint
-- Keeps a message the consumers sent to the dead-letter queue, and counts it.
CREATE OR REPLACE FUNCTION pm.record_dead_letter(p_queue text, p_reason text, p_error_code text, p_message_id text,
                                                 p_body text, p_headers jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO pm.dead_letters (queue, reason, error_code, message_id, body, headers)
    VALUES (p_queue, left(p_reason, 2000), p_error_code, p_message_id, left(p_body, 100000), p_headers)
    RETURNING id INTO new_id;
    PERFORM pm.bump('dead_letters');
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION pm.record_dead_letter(text, text, text, text, text, jsonb) IS
    'pm.record_dead_letter(queue, reason, error code, message id, body, headers) -> id: keeps a dead-lettered message (body cut at 100 kB) for operators and Grafana, counts it.';

-- pm.subscription_json(record) -> jsonb
-- One upstream subscription as /health shows it.
CREATE OR REPLACE FUNCTION pm.subscription_json(s pm.upstream_subscriptions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('subscribed', s.subscribed, 'last_status', s.last_status, 'failures', s.failures,
                              'last_attempt_at', pm.iso(s.last_attempt_at), 'last_success_at', pm.iso(s.last_success_at),
                              'seconds_since_attempt', round(extract(epoch FROM now() - s.last_attempt_at)::numeric, 3))
$$;
COMMENT ON FUNCTION pm.subscription_json(pm.upstream_subscriptions) IS
    'pm.subscription_json(record) -> {subscribed, last_status, failures, last_attempt_at, last_success_at, seconds_since_attempt}. Read only.';

-- pm.record_subscription(provider, channel, subscribed, status) -> jsonb
-- The outcome of one request for an upstream subscription (ws-gateway's position topic), for /health.
CREATE OR REPLACE FUNCTION pm.record_subscription(p_provider text, p_channel text, p_subscribed boolean,
                                                  p_status text)
RETURNS jsonb
LANGUAGE sql AS $$
    INSERT INTO pm.upstream_subscriptions AS s (provider, channel, subscribed, last_status, failures,
                                                last_attempt_at, last_success_at)
    VALUES (p_provider, p_channel, p_subscribed, left(p_status, 500), CASE WHEN p_subscribed THEN 0 ELSE 1 END,
            now(), CASE WHEN p_subscribed THEN now() END)
    ON CONFLICT ON CONSTRAINT upstream_subscriptions_pkey DO UPDATE
       SET subscribed = excluded.subscribed, last_status = excluded.last_status,
           failures = CASE WHEN excluded.subscribed THEN 0 ELSE s.failures + 1 END,
           last_attempt_at = excluded.last_attempt_at,
           last_success_at = coalesce(excluded.last_success_at, s.last_success_at)
    RETURNING pm.subscription_json(s)
$$;
COMMENT ON FUNCTION pm.record_subscription(text, text, boolean, text) IS
    'pm.record_subscription(provider, channel, subscribed, status text) -> the record as pm.subscription_json gives it: the latest attempt''s outcome and status (cut at 500 characters), consecutive failures (reset by a success), last attempt and last success times. Called by the position consumer after each request to ws-gateway.';

-- pm.schema_version() -> jsonb
-- What this database was upgraded to: the newest numbered migration and the version of the code files.
CREATE OR REPLACE FUNCTION pm.schema_version() RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_migration text;
    v_code text;
    v_code_at timestamptz;
BEGIN
    -- yoyo's bookkeeping exists only where bin/migrate ran (not after a plain psql run)
    IF to_regclass('pm._yoyo_migration') IS NOT NULL THEN
        EXECUTE 'SELECT max(migration_id) FROM pm._yoyo_migration' INTO v_migration;
    END IF;
    SELECT left(encode(sha256(convert_to(string_agg(c.file || ':' || c.checksum || E'\n', '' ORDER BY c.file COLLATE "C"),
                                          'UTF8')), 'hex'), 16),
           max(c.applied_at)
      INTO v_code, v_code_at
      FROM pm.schema_code c;
    RETURN jsonb_build_object('migration', v_migration, 'code', v_code,
                              'version', CASE WHEN v_code IS NULL THEN v_migration ELSE v_migration || '+' || v_code END,
                              'code_applied_at', pm.iso(v_code_at));
END
$$;
COMMENT ON FUNCTION pm.schema_version() IS
    'pm.schema_version() -> {"migration": newest numbered migration applied by bin/migrate, "code": version of the repeatable code files applied (first 16 hex digits of SHA-256 over "file:sha256\n" in file order, as app/schema.py computes it from the files), "version": "<migration>+<code>", "code_applied_at"}. NULLs where bin/migrate never ran (files applied with psql). Read only.';

-- pm.health() -> jsonb
-- Counters and sizes for GET /health.
CREATE OR REPLACE FUNCTION pm.health() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'positions_count', (SELECT count(*) FROM public.positions),
        'open_positions_count', (SELECT count(*) FROM pm.v_positions WHERE is_open),
        -- counters an operator must see at 0 too, then every counter there is
        'counters', jsonb_build_object('order_events_without_price', 0, 'foreign_writes', 0)
                    || coalesce((SELECT jsonb_object_agg(name, value) FROM pm.counters), '{}'::jsonb),
        'outbox_pending', (SELECT count(*) FROM pm.outbox WHERE published_at IS NULL),
        'outbox_oldest_pending_seconds',
            (SELECT round(extract(epoch FROM now() - min(created_at))::numeric, 3) FROM pm.outbox WHERE published_at IS NULL),
        'dead_letters', (SELECT count(*) FROM pm.dead_letters),
        'discrepancies_24h', (SELECT count(*) FROM pm.discrepancies WHERE detected_at > now() - interval '24 hours'),
        'foreign_writes_24h', (SELECT count(*) FROM pm.discrepancies
                                WHERE field = 'foreign_write' AND detected_at > now() - interval '24 hours'),
        'schema', pm.schema_version(),
        'subscriptions', coalesce((SELECT jsonb_object_agg(s.provider || '/' || s.channel, pm.subscription_json(s))
                                     FROM pm.upstream_subscriptions s), '{}'::jsonb))
$$;
COMMENT ON FUNCTION pm.health() IS
    'pm.health() -> {positions_count, open_positions_count, counters{order_events_without_price and foreign_writes (always present), validations, validation_discrepancies, validation_fixes, exchange_stale_events, exchange_size_discrepancies, dead_letters, ...}, outbox_pending, outbox_oldest_pending_seconds, dead_letters, discrepancies_24h (foreign writes included), foreign_writes_24h (changes of positions by other writers, pm.record_foreign_write), schema (pm.schema_version()), subscriptions {"<provider>/<channel>": pm.subscription_json}}. Read only.';
