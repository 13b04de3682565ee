-- 0042 history (issue 7): the audit trail of a position, the position as it was at any time
-- (reconstructed from the fill ledger), and the reads behind the live stream (GET /api/v1/stream).
-- Plain SQL, safe to run twice (CREATE OR REPLACE); no BEGIN/COMMIT.

-- pm.position_history(asset, mode, limit, offset)
-- The audit trail of one position, newest first: every position_updated row of pm.outbox.
CREATE OR REPLACE FUNCTION pm.position_history(p_asset text, p_mode text DEFAULT 'one-way',
                                               p_limit integer DEFAULT 100, p_offset integer DEFAULT 0)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id uuid;
    v_items jsonb;
    v_more boolean;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('one-way', 'hedge') THEN
        PERFORM pm.bad_input('mode', format('expected one-way or hedge, got %s', coalesce(p_mode, 'nothing')));
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        PERFORM pm.bad_input('limit', format('must be between 1 and 1000, got %s', coalesce(p_limit::text, 'nothing')));
    END IF;
    IF p_offset IS NULL OR p_offset < 0 THEN
        PERFORM pm.bad_input('offset', format('must be >= 0, got %s', coalesce(p_offset::text, 'nothing')));
    END IF;
    SELECT p.id INTO v_id FROM public.positions p WHERE p.asset = upper(p_asset) AND p.mode = p_mode;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    -- one row more than asked tells whether another page exists; the index outbox_position_history
    -- (position_id, id) serves the order without a sort
    WITH page AS (
        SELECT o.*, pm.outbox_body(o) AS body FROM pm.outbox o
         WHERE o.position_id = v_id AND o.event_type = 'position_updated'
         ORDER BY o.id DESC
         LIMIT p_limit + 1 OFFSET p_offset
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', o.id, 'event_id', o.event_id, 'version', o.version, 'source', o.source, 'action', o.action,
               'actor', o.actor, 'trace_id', o.trace_id, 'created_at', pm.iso(o.created_at), 'detail', o.detail,
               'position', o.body - 'event_id' - 'event_type' - 'update_source' - 'trace_id' - 'timestamp')
               ORDER BY o.id DESC) FILTER (WHERE o.rn <= p_limit), '[]'::jsonb),
           count(*) > p_limit
      INTO v_items, v_more
      FROM (SELECT page.*, row_number() OVER (ORDER BY page.id DESC) AS rn FROM page) o;
    RETURN jsonb_build_object('history', v_items, 'count', jsonb_array_length(v_items), 'has_more', v_more);
END
$$;
COMMENT ON FUNCTION pm.position_history(text, text, integer, integer) IS
    'pm.position_history(asset, mode, limit 1..1000, offset >= 0) -> {"history": [{id, event_id, version, source, action, actor, trace_id, created_at, detail, position}], "count", "has_more"}: the audit trail (position_updated rows of pm.outbox), newest first; position is the Position as it was after that change. Read only. Errors: 22023 naming mode/limit/offset, P0002 when the position does not exist.';

-- pm.state_json(state, mode)
-- The accounting fields of a ledger state (pm.pos_state) as Position-like JSON.
CREATE OR REPLACE FUNCTION pm.state_json(st pm.pos_state, p_mode text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'side', CASE WHEN p_mode = 'hedge' THEN
                         CASE WHEN st.long_size > 0 AND st.short_size > 0 THEN 'hedged'
                              WHEN st.long_size > 0 THEN 'long'
                              WHEN st.short_size > 0 THEN 'short' ELSE 'flat' END
                     WHEN st.size > 0 THEN 'long' WHEN st.size < 0 THEN 'short' ELSE 'flat' END,
        'is_open', NOT pm.is_flat(st),
        'size', pm.dec(st.size), 'long_size', pm.dec(st.long_size), 'short_size', pm.dec(st.short_size),
        'average_entry_price', pm.dec(st.avg_price),
        'long_avg_price', pm.dec(st.long_avg), 'short_avg_price', pm.dec(st.short_avg),
        'realized_pnl', pm.dec(st.realized),
        'opened_at', CASE WHEN st.opened_at > '-infinity' THEN pm.iso(st.opened_at) END,
        'closed_at', pm.iso(st.closed_at))
$$;
COMMENT ON FUNCTION pm.state_json(pm.pos_state, text) IS
    'pm.state_json(ledger state, mode) -> {side, is_open, size, long_size, short_size, average_entry_price, long_avg_price, short_avg_price, realized_pnl, opened_at, closed_at} with decimals as strings. Pure.';

-- pm.position_as_of(asset, mode, as_of)
-- The position as it was at a moment, from the state_after of the last ledger row at or before it.
CREATE OR REPLACE FUNCTION pm.position_as_of(p_asset text, p_mode text, p_as_of timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    pos public.positions;
    r pm.executions;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('one-way', 'hedge') THEN
        PERFORM pm.bad_input('mode', format('expected one-way or hedge, got %s', coalesce(p_mode, 'nothing')));
    END IF;
    IF p_as_of IS NULL OR NOT isfinite(p_as_of) THEN
        PERFORM pm.bad_input('as_of', 'expected a finite timestamp');
    END IF;
    SELECT * INTO pos FROM public.positions p WHERE p.asset = upper(p_asset) AND p.mode = p_mode;
    IF pos.id IS NULL THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    -- the ledger's own order; the index executions_position_order serves it backwards
    SELECT * INTO r FROM pm.executions x
     WHERE x.position_id = pos.id AND x.exec_time <= p_as_of
     ORDER BY x.exec_time DESC, x.seq DESC, x.exec_key DESC
     LIMIT 1;
    -- an opening balance (a position older than its ledger) is known from the row's creation on
    IF r.exec_key IS NULL OR (r.kind = 'opening' AND pos.created_at IS NOT NULL
                              AND p_as_of < pos.created_at AT TIME ZONE 'UTC') THEN
        RAISE EXCEPTION 'position %/% did not exist at % (no ledger row at or before it)', pos.asset, pos.mode, pm.iso(p_as_of)
            USING ERRCODE = 'P0002';
    END IF;
    RETURN jsonb_build_object('id', pos.id, 'asset', pos.asset, 'mode', pos.mode, 'as_of', pm.iso(p_as_of))
        || pm.state_json(r.state_after, pos.mode)
        || jsonb_build_object('last_execution', jsonb_build_object(
               'exec_key', r.exec_key, 'kind', r.kind, 'source', r.source,
               'exec_time', CASE WHEN r.exec_time > '-infinity' THEN pm.iso(r.exec_time) END),
               'reconstructed_from', 'ledger');
END
$$;
COMMENT ON FUNCTION pm.position_as_of(text, text, timestamptz) IS
    'pm.position_as_of(asset, mode, as_of) -> {id, asset, mode, as_of, side, is_open, size, legs, average prices, realized_pnl, opened_at, closed_at, last_execution {exec_key, kind, source, exec_time}, reconstructed_from}: the state_after of the last ledger row (by execution time, then sequence) at or before as_of, so late-delivered fills count at their execution time. Prices and unrealized PnL are not part of the ledger and are not reconstructed. Read only. Errors: 22023 bad mode or as_of, P0002 when the position does not exist or did not exist at as_of (an opening balance counts from the row''s created_at).';

-- pm.stream_head()
-- Where a new live stream starts: the newest outbox id.
CREATE OR REPLACE FUNCTION pm.stream_head() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT o.id FROM pm.outbox o ORDER BY o.id DESC LIMIT 1), 0)
$$;
COMMENT ON FUNCTION pm.stream_head() IS
    'pm.stream_head() -> the newest outbox id (0 when empty): a live stream without Last-Event-ID starts after it. Read only, cheap (primary key backwards).';

-- pm.stream_fetch(after, limit, hold)
-- The next position_updated events after an outbox id, in id order, never skipping one that a
-- transaction still in flight will commit.
--
-- Outbox ids come from a sequence, so they are taken in one order and committed in another: id 11
-- can be visible while id 10 is still being written. A reader that moved past 11 would never see
-- 10. So a gap stops the read, and the caller gets a "hold": the newest visible id h and the xmax
-- of a snapshot taken after reading it. Every missing id below h was taken before that snapshot,
-- by a transaction that had finished then or was in progress (its xid below xmax). Once the
-- oldest running transaction is at or above xmax, those gaps are final (committed rows are now
-- visible, the rest were rolled back) and reading continues past them. A hold older than
-- p_grace_seconds is given up (a session idle in a transaction must not stall every stream).
-- Non-position outbox rows move the cursor but are not returned.
CREATE OR REPLACE FUNCTION pm.stream_fetch(p_after bigint, p_limit integer DEFAULT 500, p_hold jsonb DEFAULT NULL,
                                           p_grace_seconds numeric DEFAULT 10)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_cursor bigint := p_after;
    v_hold_id bigint := (p_hold ->> 'id')::bigint;
    v_hold_xmax xid8 := (p_hold ->> 'xmax')::xid8;
    v_hold_since timestamptz := (p_hold ->> 'since')::timestamptz;
    -- decided BEFORE the rows are read: a transaction that finished before this point is
    -- visible to the read below
    v_resolved boolean := v_hold_id IS NOT NULL
        AND (pg_snapshot_xmin(pg_current_snapshot()) >= v_hold_xmax
             OR clock_timestamp() - v_hold_since > make_interval(secs => p_grace_seconds::double precision));
    v_events jsonb := '[]'::jsonb;
    v_newest bigint;
    r record;
BEGIN
    IF p_after IS NULL OR p_after < 0 THEN
        PERFORM pm.bad_input('last_event_id', format('must be an outbox id >= 0, got %s', coalesce(p_after::text, 'nothing')));
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        PERFORM pm.bad_input('limit', format('must be between 1 and 10000, got %s', coalesce(p_limit::text, 'nothing')));
    END IF;
    FOR r IN SELECT o.id, o.event_type, CASE WHEN o.event_type = 'position_updated' THEN pm.outbox_body(o) END AS payload
               FROM pm.outbox o WHERE o.id > p_after ORDER BY o.id LIMIT p_limit LOOP
        IF r.id > v_cursor + 1 AND NOT (v_resolved AND r.id <= v_hold_id) THEN
            IF v_hold_id IS NULL OR v_resolved THEN
                -- a new gap: hold at the newest visible id, then take the snapshot
                SELECT max(o.id) INTO v_newest FROM pm.outbox o;
                v_hold_id := v_newest;
                v_hold_xmax := pg_snapshot_xmax(pg_current_snapshot());
                v_hold_since := clock_timestamp();
            END IF;
            RETURN jsonb_build_object('events', v_events, 'cursor', v_cursor,
                'hold', jsonb_build_object('id', v_hold_id, 'xmax', v_hold_xmax::text, 'since', v_hold_since));
        END IF;
        v_cursor := r.id;
        IF r.event_type = 'position_updated' THEN
            v_events := v_events || jsonb_build_object('id', r.id, 'payload', r.payload);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('events', v_events, 'cursor', v_cursor,
        'hold', CASE WHEN v_hold_id IS NOT NULL AND NOT v_resolved AND v_cursor < v_hold_id
                     THEN jsonb_build_object('id', v_hold_id, 'xmax', v_hold_xmax::text, 'since', v_hold_since) END);
END
$$;
COMMENT ON FUNCTION pm.stream_fetch(bigint, integer, jsonb, numeric) IS
    'pm.stream_fetch(after outbox id, limit 1..10000, hold or NULL, grace seconds) -> {"events": [{"id", "payload"}], "cursor", "hold"}: position_updated rows with id > after in id order, stopping at a gap that a transaction in flight may still fill; pass cursor and hold back on the next call (poll soon while hold is not null). A gap is final once every transaction running when it was seen has ended, or after grace seconds. Read only, no locks. Errors: 22023 for a negative after or a bad limit.';
