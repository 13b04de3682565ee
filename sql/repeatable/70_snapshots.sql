-- Snapshots and their retention: one snapshot of a position or of every open one (with its
-- position_snapshot_created event), the list of a position's snapshots, and deletion in batches.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.snapshot_json(snapshot row) -> jsonb
-- The Snapshot representation (decimals as strings, time ISO with Z, snapshot_data = the Position then).
CREATE OR REPLACE FUNCTION pm.snapshot_json(s public.position_snapshots) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'position_id', s.position_id, 'asset', s.asset, 'mode', s.mode,
        'size', pm.dec(s.size), 'average_entry_price', pm.dec(s.average_entry_price),
        'unrealized_pnl', pm.dec(s.unrealized_pnl), 'realized_pnl', pm.dec(s.realized_pnl),
        'long_size', pm.dec(s.long_size), 'short_size', pm.dec(s.short_size),
        'snapshot_timestamp', pm.iso_utc(s.snapshot_timestamp), 'snapshot_data', s.snapshot_data)
$$;
COMMENT ON FUNCTION pm.snapshot_json(public.position_snapshots) IS
    'pm.snapshot_json(snapshot row) -> Snapshot jsonb (decimals as strings, timestamp ISO Z, snapshot_data = the Position at that time).';

-- pm.snapshot_ids(position ids, trace) -> SETOF jsonb
-- Snapshots of the given positions in one statement: rows, last_snapshot_at, outbox events.
CREATE OR REPLACE FUNCTION pm.snapshot_ids(p_ids uuid[], p_trace text) RETURNS SETOF jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pm.own_writes(true);   -- last_snapshot_at is our own write
    RETURN QUERY
    WITH targets AS (
        SELECT v.id, v.asset, v.size, v.average_entry_price, v.unrealized_pnl, v.realized_pnl, v.mode,
               v.long_size, v.short_size, pm.position_json(v) AS j
          FROM pm.v_positions v WHERE v.id = ANY (p_ids)
    ), ins AS (
        INSERT INTO public.position_snapshots (position_id, asset, size, average_entry_price, unrealized_pnl,
                                               realized_pnl, mode, long_size, short_size, snapshot_timestamp,
                                               snapshot_data)
        SELECT t.id, t.asset, t.size, t.average_entry_price, t.unrealized_pnl, t.realized_pnl, t.mode,
               t.long_size, t.short_size, pm.now_utc(), t.j
          FROM targets t
        RETURNING *
    ), upd AS (
        UPDATE public.positions p SET last_snapshot_at = ins.snapshot_timestamp
          FROM ins WHERE p.id = ins.position_id
    ), events AS (
        INSERT INTO pm.outbox (event_type, position_id, asset, mode, version, source, action, trace_id, payload)
        SELECT 'position_snapshot_created', ins.position_id, ins.asset, ins.mode, (ins.snapshot_data ->> 'version')::integer,
               NULL, 'snapshot', p_trace,
               pm.snapshot_json(ins) || jsonb_build_object('event_type', 'position_snapshot_created',
                                                           'trace_id', p_trace, 'timestamp', pm.iso(now()))
          FROM ins
        RETURNING 1
    )
    SELECT pm.snapshot_json(ins) FROM ins;
    PERFORM pm.own_writes(false);
END
$$;
COMMENT ON FUNCTION pm.snapshot_ids(uuid[], text) IS
    'pm.snapshot_ids(position ids, trace) -> one Snapshot jsonb per position: inserts the snapshots (snapshot_data = Position), sets last_snapshot_at and enqueues position_snapshot_created events (payload event_id = outbox event_id is added by the relay from the row), all in one statement, marked as our own write (pm.own_writes). Row-locks the positions briefly.';

-- pm.snapshot_position(asset, mode, trace) -> jsonb
-- One snapshot of one position (any state).
CREATE OR REPLACE FUNCTION pm.snapshot_position(p_asset text, p_mode text DEFAULT 'one-way', p_trace text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
BEGIN
    SELECT s INTO result FROM pm.snapshot_ids(ARRAY[(pm.existing_position(p_asset, p_mode)).id], p_trace) s;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pm.snapshot_position(text, text, text) IS
    'pm.snapshot_position(asset, mode, trace) -> Snapshot jsonb of one position (any state), with its position_snapshot_created event. Raises P0002 when the position does not exist, 22023 for a bad mode.';

-- pm.snapshot_all(trace) -> jsonb
-- One snapshot of every open position and of those closed since their last snapshot, in one statement.
CREATE OR REPLACE FUNCTION pm.snapshot_all(p_trace text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('snapshots', count(*))
      FROM pm.snapshot_ids(ARRAY(
               SELECT v.id FROM pm.v_positions v
                WHERE v.is_open
                   -- closed since its last snapshot, judged by our own change time: closed_at is the
                   -- fill's execution time, and a close can be delivered after a later snapshot run
                   OR (v.closed_at IS NOT NULL AND (v.last_snapshot_at IS NULL OR v.last_updated > v.last_snapshot_at))),
           p_trace)
$$;
COMMENT ON FUNCTION pm.snapshot_all(text) IS
    'pm.snapshot_all(trace) -> {"snapshots": n}: one snapshot of every open position and of every position closed since its last snapshot, in one statement, with position_snapshot_created events.';

-- pm.list_snapshots(asset, mode, limit, offset, from, to) -> jsonb
-- A position's snapshots, newest first, one page.
CREATE OR REPLACE FUNCTION pm.list_snapshots(p_asset text, p_mode text DEFAULT 'one-way', p_limit integer DEFAULT 100,
                                             p_offset integer DEFAULT 0, p_from timestamptz DEFAULT NULL,
                                             p_to timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id uuid;
    items jsonb;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        PERFORM pm.bad_input('limit', format('must be between 1 and 1000, got %s', p_limit));
    END IF;
    IF p_offset IS NULL OR p_offset < 0 THEN
        PERFORM pm.bad_input('offset', format('must be >= 0, got %s', p_offset));
    END IF;
    v_id := (pm.existing_position(p_asset, p_mode)).id;
    SELECT coalesce(jsonb_agg(pm.snapshot_json(s) ORDER BY s.snapshot_timestamp DESC, s.id), '[]'::jsonb) INTO items
      FROM (SELECT * FROM public.position_snapshots s
             WHERE s.position_id = v_id
               AND (p_from IS NULL OR s.snapshot_timestamp >= p_from AT TIME ZONE 'UTC')
               AND (p_to IS NULL OR s.snapshot_timestamp <= p_to AT TIME ZONE 'UTC')
             ORDER BY s.snapshot_timestamp DESC, s.id
             LIMIT p_limit OFFSET p_offset) s;
    RETURN jsonb_build_object('snapshots', items, 'count', jsonb_array_length(items));
END
$$;
COMMENT ON FUNCTION pm.list_snapshots(text, text, integer, integer, timestamptz, timestamptz) IS
    'pm.list_snapshots(asset, mode, limit 1..1000, offset >= 0, from, to) -> {"snapshots": [Snapshot, newest first], "count": n in this page}. Raises P0002 for an unknown position, 22023 for a bad limit/offset. Uses the (position_id, snapshot_timestamp) index.';

-- pm.cleanup_snapshots(retention days, batch size) -> integer
-- ONE batch of the oldest snapshots past the retention, deleted; call it until it returns less than the batch.
CREATE OR REPLACE FUNCTION pm.cleanup_snapshots(p_retention_days integer, p_batch_size integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    m integer;
BEGIN
    IF p_retention_days IS NULL OR p_retention_days < 1 THEN
        PERFORM pm.bad_input('retention_days', format('must be >= 1, got %s', p_retention_days));
    END IF;
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        PERFORM pm.bad_input('batch_size', format('must be >= 1, got %s', p_batch_size));
    END IF;
    DELETE FROM public.position_snapshots s
     WHERE s.id IN (SELECT d.id FROM public.position_snapshots d
                     WHERE d.snapshot_timestamp < pm.now_utc() - make_interval(days => p_retention_days)
                     ORDER BY d.snapshot_timestamp
                     LIMIT p_batch_size
                     FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n < p_batch_size THEN
        -- the archived snapshots of deleted positions keep the same retention
        DELETE FROM pm.deleted_position_snapshots s
         WHERE s.id IN (SELECT d.id FROM pm.deleted_position_snapshots d
                         WHERE d.snapshot_timestamp < pm.now_utc() - make_interval(days => p_retention_days)
                         ORDER BY d.snapshot_timestamp
                         LIMIT p_batch_size - n
                         FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION pm.cleanup_snapshots(integer, integer) IS
    'pm.cleanup_snapshots(retention days, batch size) -> rows deleted: ONE batch of the oldest snapshots older than the retention (position_snapshots first, then the archived snapshots of deleted positions, pm.deleted_position_snapshots). Call it repeatedly, committing in between, until it returns less than the batch size: locks stay short and fills are never stalled.';
