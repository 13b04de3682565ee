-- 0006 snapshots and retention (SPEC §5), validation (§5.3), portfolio JSON, the outbox relay's
-- side (§4.2), dead letters and health counters.
-- Plain SQL, safe to run twice.

------------------------------------------------------------------------------------------------
-- Portfolio
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.portfolio_json(p_asset text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'total_exposure_usdt', pm.dec(t.total_exposure_usdt), 'net_exposure_usdt', pm.dec(t.net_exposure_usdt),
        'total_unrealized_pnl_usdt', pm.dec(t.total_unrealized_pnl_usdt),
        'total_realized_pnl_usdt', pm.dec(t.total_realized_pnl_usdt), 'total_pnl_usdt', pm.dec(t.total_pnl_usdt),
        'portfolio_value_usdt', pm.dec(t.portfolio_value_usdt), 'open_positions_count', t.open_positions_count,
        'long_positions_count', t.long_positions_count, 'short_positions_count', t.short_positions_count,
        'calculated_at', pm.iso(t.calculated_at),
        'by_asset', coalesce((SELECT jsonb_object_agg(b.asset, jsonb_build_object(
                                  'exposure_usdt', pm.dec(b.exposure_usdt), 'net_exposure_usdt', pm.dec(b.net_exposure_usdt),
                                  'unrealized_pnl_usdt', pm.dec(b.unrealized_pnl_usdt),
                                  'realized_pnl_usdt', pm.dec(b.realized_pnl_usdt), 'size', pm.dec(b.size)))
                                FROM pm.v_portfolio_by_asset b
                               WHERE p_asset IS NULL OR b.asset = upper(p_asset)), '{}'::jsonb))
      FROM pm.portfolio_totals(p_asset) t
$$;
COMMENT ON FUNCTION pm.portfolio_json(text) IS
    'pm.portfolio_json(asset or NULL) -> PortfolioMetrics jsonb: the pm.v_portfolio columns (decimals as strings) plus by_asset {ASSET: {exposure_usdt, net_exposure_usdt, unrealized_pnl_usdt, realized_pnl_usdt, size}}, for all positions or one asset. Read only.';

------------------------------------------------------------------------------------------------
-- Snapshots
------------------------------------------------------------------------------------------------

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

-- Snapshot the given positions (ids) in one statement: rows, last_snapshot_at, outbox events.
CREATE OR REPLACE FUNCTION pm.snapshot_ids(p_ids uuid[], p_trace text) RETURNS SETOF jsonb
LANGUAGE sql AS $$
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
    SELECT pm.snapshot_json(ins) FROM ins
$$;
COMMENT ON FUNCTION pm.snapshot_ids(uuid[], text) IS
    'pm.snapshot_ids(position ids, trace) -> one Snapshot jsonb per position: inserts the snapshots (snapshot_data = Position), sets last_snapshot_at and enqueues position_snapshot_created events (payload event_id = outbox event_id is added by the relay from the row), all in one statement. Row-locks the positions briefly.';

CREATE OR REPLACE FUNCTION pm.snapshot_position(p_asset text, p_mode text DEFAULT 'one-way', p_trace text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    result jsonb;
BEGIN
    SELECT id INTO v_id FROM public.positions WHERE asset = upper(p_asset) AND mode = p_mode;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    SELECT s INTO result FROM pm.snapshot_ids(ARRAY[v_id], p_trace) s;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pm.snapshot_position(text, text, text) IS
    'pm.snapshot_position(asset, mode, trace) -> Snapshot jsonb of one position (any state), with its position_snapshot_created event. Raises P0002 when the position does not exist.';

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
    SELECT id INTO v_id FROM public.positions WHERE asset = upper(p_asset) AND mode = p_mode;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
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

CREATE OR REPLACE FUNCTION pm.cleanup_snapshots(p_retention_days integer, p_batch_size integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
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
    RETURN n;
END
$$;
COMMENT ON FUNCTION pm.cleanup_snapshots(integer, integer) IS
    'pm.cleanup_snapshots(retention days, batch size) -> rows deleted: ONE batch of the oldest snapshots older than the retention. Call it repeatedly, committing in between, until it returns less than the batch size: locks stay short and fills are never stalled.';

------------------------------------------------------------------------------------------------
-- Validation (SPEC §5.3)
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.validate_position(p_asset text, p_mode text DEFAULT 'one-way', p_fix boolean DEFAULT false,
                                                p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
    st pm.pos_state;
    fold pm.pos_state;
    target pm.pos_state;
    has_ledger boolean;
    last_exec timestamptz;
    es pm.exchange_state;
    found_any_exchange boolean := false;
    exchange_time timestamptz;
    thr_avg numeric := pm.setting('avg_price_diff_threshold', '0.001')::numeric;
    thr_size numeric := pm.setting('size_validation_threshold', '0.0001')::numeric;
    thr_realized numeric := pm.setting('realized_pnl_tolerance', '0.01')::numeric;
    v_found jsonb := '[]'::jsonb;
    last_any timestamptz;
    notes jsonb := '[]'::jsonb;
    fixable boolean := false;
    ex_realized numeric;
    ours numeric;
    our_avg numeric;
    e pm.executions;
    f record;
    updated jsonb;
BEGIN
    SELECT * INTO pos FROM public.positions WHERE asset = upper(p_asset) AND mode = p_mode FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    PERFORM pm.bump('validations');
    st := pm.state_of(pos);
    SELECT count(*) > 0, max(exec_time) FILTER (WHERE kind IN ('trade', 'funding')), max(exec_time)
      INTO has_ledger, last_exec, last_any FROM pm.executions WHERE position_id = pos.id;

    -- (a) the fold of the ledger
    IF has_ledger THEN
        fold := pm.fold_ledger(pos.id);
        FOR f IN SELECT * FROM (VALUES
                ('size', st.size, fold.size), ('average_entry_price', st.avg_price, fold.avg_price),
                ('long_size', st.long_size, fold.long_size), ('long_avg_price', st.long_avg, fold.long_avg),
                ('short_size', st.short_size, fold.short_size), ('short_avg_price', st.short_avg, fold.short_avg),
                ('realized_pnl', st.realized, fold.realized)) AS x(field, stored, expected)
            WHERE x.stored IS DISTINCT FROM x.expected
        LOOP
            v_found := v_found || pm.record_discrepancy(pos, f.field, f.stored, f.expected, 'ledger', 'validation', p_trace, p_fix);
            fixable := true;
        END LOOP;
    END IF;
    target := coalesce(fold, st);

    -- (b) the last exchange report of each leg, when it is not older than the last fill
    FOR es IN SELECT * FROM pm.exchange_state WHERE position_id = pos.id ORDER BY leg LOOP
        found_any_exchange := true;
        ex_realized := coalesce(ex_realized, 0) + coalesce(es.realized_pnl, 0);
        IF last_exec IS NOT NULL AND es.updated_time < last_exec THEN
            notes := notes || to_jsonb(format('exchange report of leg %s (%s) is older than the last fill (%s): not compared',
                                              es.leg, pm.iso(es.updated_time), pm.iso(last_exec)));
            CONTINUE;
        END IF;
        exchange_time := greatest(exchange_time, es.updated_time);
        ours := CASE es.leg WHEN 0 THEN st.size WHEN 1 THEN st.long_size ELSE st.short_size END;
        our_avg := CASE es.leg WHEN 0 THEN st.avg_price WHEN 1 THEN st.long_avg ELSE st.short_avg END;
        IF abs(ours - es.size) > thr_size THEN
            v_found := v_found || pm.record_discrepancy(pos, CASE es.leg WHEN 0 THEN 'size' WHEN 1 THEN 'long_size' ELSE 'short_size' END,
                                                    ours, es.size, 'exchange', 'validation', p_trace, p_fix);
            fixable := true;
        END IF;
        IF es.avg_price > 0 AND es.size <> 0 AND (our_avg IS NULL OR abs(es.avg_price - our_avg) / our_avg > thr_avg) THEN
            v_found := v_found || pm.record_discrepancy(pos, CASE es.leg WHEN 0 THEN 'average_entry_price' WHEN 1 THEN 'long_avg_price'
                                                         ELSE 'short_avg_price' END,
                                                    our_avg, es.avg_price, 'exchange', 'validation', p_trace, p_fix);
            fixable := true;
        END IF;
        -- the exchange wins for size and average price
        IF es.leg = 0 THEN
            target.size := es.size;
            target.avg_price := CASE WHEN es.size = 0 THEN NULL ELSE coalesce(nullif(round(es.avg_price, 8), 0), target.avg_price) END;
        ELSIF es.leg = 1 THEN
            target.long_size := es.size;
            target.long_avg := CASE WHEN es.size = 0 THEN NULL ELSE coalesce(nullif(round(es.avg_price, 8), 0), target.long_avg) END;
        ELSE
            target.short_size := es.size;
            target.short_avg := CASE WHEN es.size = 0 THEN NULL ELSE coalesce(nullif(round(es.avg_price, 8), 0), target.short_avg) END;
        END IF;
    END LOOP;
    IF ex_realized IS NOT NULL AND abs(ex_realized - st.realized) > thr_realized THEN
        -- reported, never fixed: realized PnL is ours (the exchange's may include history before us)
        v_found := v_found || pm.record_discrepancy(pos, 'realized_pnl', st.realized, ex_realized, 'exchange', 'validation', p_trace, false);
    END IF;

    IF NOT has_ledger AND NOT found_any_exchange THEN
        IF pm.is_flat(st) THEN
            RETURN jsonb_build_object('is_valid', true, 'discrepancies', '[]'::jsonb, 'error_message', NULL,
                                      'updated_position', NULL, 'notes', jsonb_build_array('flat, nothing to verify'));
        END IF;
        RETURN jsonb_build_object('is_valid', false, 'discrepancies', '[]'::jsonb, 'no_authoritative_source', true,
            'error_message', format('%s/%s has no authoritative source (no ledger rows, no exchange report): not verified, never fixed',
                                    pos.asset, pos.mode),
            'updated_position', NULL);
    END IF;
    IF jsonb_array_length(v_found) > 0 THEN
        PERFORM pm.bump('validation_discrepancies', jsonb_array_length(v_found));
    END IF;

    IF p_fix AND fixable THEN
        IF pos.mode = 'hedge' THEN
            target.size := target.long_size - target.short_size;
        END IF;
        -- the ledger first (stored state may be the broken part), then a correction row at the end
        pos := pm.with_state(pos, pm.refold_ledger(pos));
        e := pm.new_execution('correction', 'validation', 0::smallint, NULL, NULL, NULL, 0,
                              -- right after everything it accounts for: a fill older than it that arrives later is
                              -- already in the exchange's size; a newer one adds to it
                              coalesce(greatest(exchange_time, last_any), '-infinity'),
                              9223372036854775807, 'validation:' || gen_random_uuid(), NULL, 'Correction', p_trace, NULL);
        e.target := target;
        st := pm.ledger_insert(pos, e);
        updated := pm.image_json(pm.write_state(pos, st, 'validation', 'fix', p_trace, p_actor,
                                                jsonb_build_object('discrepancies', v_found)));
        PERFORM pm.bump('validation_fixes');
    END IF;

    RETURN jsonb_build_object(
        'is_valid', jsonb_array_length(v_found) = 0,
        'discrepancies', v_found,
        'error_message', CASE WHEN jsonb_array_length(v_found) > 0
                              THEN format('%s discrepanc%s on %s/%s', jsonb_array_length(v_found),
                                          CASE WHEN jsonb_array_length(v_found) = 1 THEN 'y' ELSE 'ies' END, pos.asset, pos.mode) END,
        'updated_position', updated,
        'fixed', updated IS NOT NULL,
        'notes', notes);
END
$$;
COMMENT ON FUNCTION pm.validate_position(text, text, boolean, text, text) IS
    'pm.validate_position(asset, mode, fix, trace, actor) -> {"is_valid", "discrepancies": [{field, stored, expected, source: ledger|exchange}], "error_message", "updated_position", "fixed", "notes"}. Compares the stored position with (a) a fold of its ledger and (b) the exchange''s last report per leg (when not older than the last fill). With fix: the exchange''s size and average win (the ledger where the exchange never reported), realized PnL comes from the ledger; the fix is a correction row in the ledger, audited, version bumped. No authoritative source: reported, never fixed. Locks the row; counts validations, discrepancies, fixes. Raises P0002 when absent.';

-- Adds one position's validation result to a summary of pm.validate_all / pm.validate_positions.
CREATE OR REPLACE FUNCTION pm.validation_summary_add(p_summary jsonb, p_asset text, p_mode text, p_result jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'positions', (s ->> 'positions')::integer + 1,
        'invalid', (s ->> 'invalid')::integer
                   + CASE WHEN NOT p_result ? 'no_authoritative_source' AND NOT (p_result ->> 'is_valid')::boolean THEN 1 ELSE 0 END,
        'no_authoritative_source', (s ->> 'no_authoritative_source')::integer
                   + CASE WHEN p_result ? 'no_authoritative_source' THEN 1 ELSE 0 END,
        'discrepancies', (s ->> 'discrepancies')::integer + jsonb_array_length(p_result -> 'discrepancies'),
        'fixed', (s ->> 'fixed')::integer + CASE WHEN (p_result ->> 'fixed')::boolean THEN 1 ELSE 0 END,
        'details', (s -> 'details') || CASE WHEN (p_result ->> 'is_valid')::boolean THEN '[]'::jsonb
            ELSE jsonb_build_array(jsonb_build_object('asset', p_asset, 'mode', p_mode,
                     'error_message', p_result -> 'error_message', 'discrepancies', p_result -> 'discrepancies',
                     'fixed', coalesce(p_result -> 'fixed', 'false'::jsonb))) END)
      FROM (SELECT coalesce(p_summary, '{"positions": 0, "invalid": 0, "no_authoritative_source": 0,
                                        "discrepancies": 0, "fixed": 0, "details": []}'::jsonb) AS s) x
$$;
COMMENT ON FUNCTION pm.validation_summary_add(jsonb, text, text, jsonb) IS
    'pm.validation_summary_add(summary or NULL, asset, mode, pm.validate_position result) -> summary {"positions", "invalid", "no_authoritative_source", "discrepancies", "fixed", "details": [...]}. Pure.';

CREATE OR REPLACE FUNCTION pm.validate_all(p_fix boolean DEFAULT false, p_trace text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos record;
    summary jsonb := pm.validation_summary_add(NULL, NULL, NULL, '{"is_valid": true, "discrepancies": []}');
BEGIN
    summary := jsonb_set(summary, '{positions}', '0');
    FOR pos IN SELECT asset, mode FROM public.positions ORDER BY asset, mode LOOP
        summary := pm.validation_summary_add(summary, pos.asset, pos.mode,
                                             pm.validate_position(pos.asset, pos.mode, p_fix, p_trace, 'validate-positions'));
    END LOOP;
    RETURN summary;
END
$$;
COMMENT ON FUNCTION pm.validate_all(boolean, text) IS
    'pm.validate_all(fix, trace) -> {"positions", "invalid", "no_authoritative_source", "discrepancies", "fixed", "details": [...]}: pm.validate_position for every position in (asset, mode) order, in the caller''s transaction (every row lock is held until it ends: for a large book prefer CALL pm.validate_positions, which commits per position).';

CREATE OR REPLACE PROCEDURE pm.validate_positions(p_fix boolean, p_trace text, INOUT summary jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    pos record;
BEGIN
    summary := jsonb_set(pm.validation_summary_add(NULL, NULL, NULL, '{"is_valid": true, "discrepancies": []}'),
                         '{positions}', '0');
    FOR pos IN SELECT asset, mode FROM public.positions ORDER BY asset, mode LOOP
        summary := pm.validation_summary_add(summary, pos.asset, pos.mode,
                                             pm.validate_position(pos.asset, pos.mode, p_fix, p_trace, 'validate-positions'));
        COMMIT;   -- one position's lock at a time: fills never wait for the whole run
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pm.validate_positions(boolean, text, jsonb) IS
    'CALL pm.validate_positions(fix, trace, NULL) -> summary as pm.validate_all, but committing after each position so that only one position is locked at a time. Must be called outside an explicit transaction block (autocommit). A position created during the run is validated next time.';

------------------------------------------------------------------------------------------------
-- Outbox relay (SPEC §4.2)
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.outbox_body(o pm.outbox) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(o.payload,
                    pm.position_json(pm.image_position(o.image, o.created_at AT TIME ZONE 'UTC'), false)
                    || jsonb_build_object('event_type', o.event_type, 'update_source', o.source, 'trace_id', o.trace_id,
                                          'timestamp', pm.iso(o.created_at)))
           || jsonb_build_object('event_id', o.event_id)
$$;
COMMENT ON FUNCTION pm.outbox_body(pm.outbox) IS
    'pm.outbox_body(outbox row) -> the message body of the event (position_size_norm aside): the stored payload, or for a change stored as an image (pm.write_state) the Position as it was after the change (time_held_minutes and price_is_stale as of created_at, the time of the change) with event_type, update_source, trace_id and timestamp; event_id always from the row. Read only.';

CREATE OR REPLACE FUNCTION pm.outbox_claim(p_limit integer)
RETURNS TABLE (id bigint, event_id uuid, event_type text, trace_id text, payload jsonb)
LANGUAGE sql AS $$
    WITH claimed AS (
        SELECT o.id, o.event_id, o.event_type, o.trace_id, pm.outbox_body(o) AS body
          FROM pm.outbox o
         WHERE o.published_at IS NULL
         ORDER BY o.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), total AS (
        SELECT nullif(sum(v.exposure_usdt), 0) AS exposure FROM pm.v_positions v WHERE v.exposure_usdt IS NOT NULL
    )
    SELECT c.id, c.event_id, c.event_type, c.trace_id,
           c.body
           || CASE WHEN c.event_type = 'position_updated'
                   THEN jsonb_build_object('position_size_norm',
                                           pm.dec(round((c.body ->> 'exposure_usdt')::numeric / t.exposure, 8)))
                   ELSE '{}'::jsonb END
      FROM claimed c CROSS JOIN total t
     ORDER BY c.id
$$;
COMMENT ON FUNCTION pm.outbox_claim(integer) IS
    'pm.outbox_claim(limit) -> the oldest unpublished outbox rows with the message body to publish (pm.outbox_body; for position_updated plus position_size_norm against the portfolio total at publish time), locked FOR UPDATE SKIP LOCKED (two relays never take the same row). Publish them, call pm.outbox_mark_published in the same transaction, commit: a crash before the commit publishes them again (duplicate), never loses one.';

CREATE OR REPLACE FUNCTION pm.outbox_mark_published(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    changes integer;
BEGIN
    WITH u AS (UPDATE pm.outbox SET published_at = now() WHERE id = ANY (p_ids) AND published_at IS NULL
               RETURNING event_type)
    SELECT count(*), count(*) FILTER (WHERE event_type = 'position_updated') INTO n, changes FROM u;
    IF changes > 0 THEN
        UPDATE pm.portfolio_event_state SET dirty = true WHERE id = 1 AND NOT dirty;
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION pm.outbox_mark_published(bigint[]) IS
    'pm.outbox_mark_published(ids) -> rows marked: sets published_at on those not yet published; when position changes were among them, marks the portfolio dirty for pm.enqueue_portfolio_event.';

CREATE OR REPLACE FUNCTION pm.enqueue_portfolio_event(p_min_interval_seconds numeric, p_trace text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s pm.portfolio_event_state;
BEGIN
    SELECT * INTO s FROM pm.portfolio_event_state WHERE id = 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR NOT s.dirty
       OR (s.last_emitted_at IS NOT NULL AND now() - s.last_emitted_at < make_interval(secs => p_min_interval_seconds::double precision)) THEN
        RETURN false;
    END IF;
    INSERT INTO pm.outbox (event_type, action, trace_id, payload)
    VALUES ('portfolio_updated', 'portfolio', p_trace,
            pm.portfolio_json(NULL) || jsonb_build_object('event_type', 'portfolio_updated', 'trace_id', p_trace,
                                                          'timestamp', pm.iso(now())));
    UPDATE pm.portfolio_event_state
       SET last_emitted_at = now(), dirty = false,
           last_change_id = coalesce((SELECT o.id FROM pm.outbox o WHERE o.event_type = 'position_updated'
                                       ORDER BY o.id DESC LIMIT 1), 0)
     WHERE id = 1;
    RETURN true;
END
$$;
COMMENT ON FUNCTION pm.enqueue_portfolio_event(numeric, text) IS
    'pm.enqueue_portfolio_event(min interval seconds, trace) -> true when it enqueued one portfolio_updated event: only if position changes were published since the last one (pm.outbox_mark_published marks them) and the interval has elapsed (coalescing, SPEC §4.2). Called by the relay after publishing, never on a read.';

------------------------------------------------------------------------------------------------
-- Dead letters and health
------------------------------------------------------------------------------------------------

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

CREATE OR REPLACE FUNCTION pm.health() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'positions_count', (SELECT count(*) FROM public.positions),
        'open_positions_count', (SELECT count(*) FROM pm.v_positions WHERE is_open),
        'counters', coalesce((SELECT jsonb_object_agg(name, value) FROM pm.counters), '{}'::jsonb),
        'outbox_pending', (SELECT count(*) FROM pm.outbox WHERE published_at IS NULL),
        'outbox_oldest_pending_seconds',
            (SELECT round(extract(epoch FROM now() - min(created_at))::numeric, 3) FROM pm.outbox WHERE published_at IS NULL),
        'dead_letters', (SELECT count(*) FROM pm.dead_letters),
        'discrepancies_24h', (SELECT count(*) FROM pm.discrepancies WHERE detected_at > now() - interval '24 hours'))
$$;
COMMENT ON FUNCTION pm.health() IS
    'pm.health() -> {positions_count, open_positions_count, counters{validations, validation_discrepancies, validation_fixes, exchange_stale_events, exchange_size_discrepancies, dead_letters}, outbox_pending, outbox_oldest_pending_seconds, dead_letters, discrepancies_24h}. Read only.';
