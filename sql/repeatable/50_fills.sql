-- Applying fills: the one ending of an applied execution, one execution of a position, the
-- cumulative order events (per-order deltas), pm.apply_order_event for any order/fill message, and
-- pm.apply_batch for many messages in one call (the consumers' fast path).
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.apply_ledger_row(locked position, ledger row) -> jsonb
-- THE ending of an applied execution: ledger row (once per key), position write with its audit row, result.
CREATE OR REPLACE FUNCTION pm.apply_ledger_row(p_pos public.positions, e pm.executions) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    st pm.pos_state := pm.ledger_insert(p_pos, e);
    img pm.position_image;
BEGIN
    IF st IS NULL THEN
        RETURN jsonb_build_object('status', 'duplicate', 'reason', 'execution ' || e.exec_key || ' was applied before');
    END IF;
    img := pm.write_state(p_pos, st, e.source, e.kind, e.trace_id, NULL,
                          jsonb_build_object('exec_key', e.exec_key, 'side', e.side, 'qty', pm.dec(e.qty),
                                             'price', pm.dec(e.price), 'fee', pm.dec(e.fee)));
    -- (a variable, not the call itself, as argument: the SQL function is then inlined)
    RETURN jsonb_build_object('status', 'applied', 'execution', e.exec_key, 'position', pm.position_ref(img));
END
$$;
COMMENT ON FUNCTION pm.apply_ledger_row(public.positions, pm.executions) IS
    'pm.apply_ledger_row(locked position, ledger row) -> {"status": applied|duplicate, "reason"?, "execution"?, "position"?: {id, asset, mode, version}}: inserts the row into the ledger once (key exec_key; duplicate when it is there already), writes the position''s new state with one audit/outbox row (source and action from the row, detail {exec_key, side, qty, price, fee}). The one ending of pm.apply_execution and pm.apply_order_progress. Caller holds the row lock; raises 22023 when a hedge leg would go below zero.';

-- pm.apply_execution(asset, mode, ledger row) -> jsonb
-- One execution: lock (or create) the position, then the ending above.
CREATE OR REPLACE FUNCTION pm.apply_execution(p_asset text, p_mode text, e pm.executions) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN pm.apply_ledger_row(pm.lock_position(p_asset, p_mode), e);
END
$$;
COMMENT ON FUNCTION pm.apply_execution(text, text, pm.executions) IS
    'pm.apply_execution(asset, mode, ledger row) -> {"status": applied|duplicate, "execution", "position"?: {id, asset, mode, version}}: locks (or creates) the position, applies the row once (key exec_key), writes the position and records the change. Raises 22023 on a hedge leg reduced below zero.';

-- pm.apply_order_progress(asset, mode, cumulative request row) -> jsonb
-- An order event's cumulative figures turned into the new execution: the difference to what was applied.
CREATE OR REPLACE FUNCTION pm.apply_order_progress(p_asset text, p_mode text, c pm.executions) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions := pm.lock_position(p_asset, p_mode);
    prev pm.order_progress;
    dq numeric;
    price numeric;
BEGIN
    SELECT * INTO prev FROM pm.order_progress o WHERE o.order_id = c.order_id FOR UPDATE;
    dq := c.qty - coalesce(prev.cum_qty, 0);
    IF dq <= 0 THEN
        RETURN jsonb_build_object('status', CASE WHEN dq = 0 THEN 'duplicate' ELSE 'stale' END,
                                  'reason', format('order %s: %s already applied, event says %s', c.order_id, prev.cum_qty, c.qty));
    END IF;
    IF prev.position_id IS NOT NULL AND prev.position_id <> pos.id
       -- (the earlier row of this asset and mode, deleted since, is the same position to the order)
       AND NOT EXISTS (SELECT 1 FROM pm.deleted_positions d
                        WHERE d.id = prev.position_id AND d.asset = pos.asset AND d.mode = pos.mode) THEN
        PERFORM pm.bad_input('order.asset', format('order %s was applied to another position before', c.order_id));
    END IF;
    price := round((c.price * c.qty - coalesce(prev.cum_notional, 0)) / dq, 8);
    IF price <= 0 THEN
        PERFORM pm.bad_input('order.average_price',
            format('cumulative average %s over %s is inconsistent with the %s already applied for order %s',
                   c.price, c.qty, prev.cum_qty, c.order_id));
    END IF;
    INSERT INTO pm.order_progress AS o (order_id, position_id, cum_qty, cum_notional, cum_fee)
    VALUES (c.order_id, pos.id, c.qty, c.price * c.qty, c.fee)
    ON CONFLICT ON CONSTRAINT order_progress_pkey DO UPDATE
       SET cum_qty = excluded.cum_qty, cum_notional = excluded.cum_notional, cum_fee = excluded.cum_fee, updated_at = now();
    RETURN pm.apply_ledger_row(pos,
        pm.new_execution('trade', 'order_execution', c.leg, c.side, dq, price, c.fee - coalesce(prev.cum_fee, 0),
                         c.exec_time, NULL, 'order:' || c.order_id || ':' || trim_scale(c.qty)::text, c.order_id,
                         c.exec_type, c.trace_id, c.event_id));
END
$$;
COMMENT ON FUNCTION pm.apply_order_progress(text, text, pm.executions) IS
    'pm.apply_order_progress(asset, mode, cumulative figures of an order as pm.parse_order_progress gives them) -> result jsonb. Derives the new execution as the difference to what was applied for the order: dq = cum_qty - prev_qty, price = (cum_avg x cum_qty - prev_notional) / dq, fee likewise; dq = 0 is duplicate, dq < 0 stale (both without effect); key order:<id>:<cumulative qty>. Locks the position, then the order''s progress row. Raises 22023 when the order was applied to another position (a deleted row of the same asset and mode counts as this one) or the averages are inconsistent.';

-- pm.ignore_counted(counter, reason) -> jsonb
-- An acknowledged message without effect that operators should see: counts it, says why.
CREATE OR REPLACE FUNCTION pm.ignore_counted(p_counter text, p_reason text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pm.bump(p_counter);
    RETURN jsonb_build_object('status', 'ignored', 'reason', p_reason);
END
$$;
COMMENT ON FUNCTION pm.ignore_counted(text, text) IS
    'pm.ignore_counted(counter, reason) -> {"status": "ignored", "reason"}: the result of a message that is acknowledged without effect but must not pass unnoticed; adds 1 to pm.counters.<counter> (shown by /health). Used for order events that filled without an average price (counter order_events_without_price).';

-- pm.combine_results(results) -> jsonb
-- The result of a message that carried several records (Bybit sends arrays).
CREATE OR REPLACE FUNCTION pm.combine_results(p_results jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_array_length(p_results) = 1 THEN p_results -> 0
                ELSE jsonb_build_object(
                    'status', CASE WHEN jsonb_path_exists(p_results, '$[*] ? (@.status == "applied")') THEN 'applied'
                                   ELSE p_results -> 0 ->> 'status' END,
                    'results', p_results) END
$$;
COMMENT ON FUNCTION pm.combine_results(jsonb) IS
    'pm.combine_results(array of per-record results) -> the one result when there is one, else {"status": applied if any record applied else the first status, "results": [...]}. Pure.';

-- pm.apply_order_event(message) -> jsonb
-- PUBLIC: any order/fill message body, applied in the caller's transaction, once per execution.
CREATE OR REPLACE FUNCTION pm.apply_order_event(p_event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    reqs pm.exec_request[];
    r pm.exec_request;
    results jsonb := '[]'::jsonb;
BEGIN
    IF jsonb_typeof(p_event) = 'object' AND p_event ? 'execution_id' THEN
        -- shape A (one execution), the common case: no request array, no combined result
        r := pm.parse_execution_event(p_event);
        RETURN pm.apply_ledger_row(pm.lock_position(r.asset, r.mode), r.e);   -- (pm.apply_execution, inlined)
    END IF;
    reqs := pm.parse_order_event(p_event);   -- the whole message is valid before any write
    FOREACH r IN ARRAY reqs LOOP
        results := results || jsonb_build_array(CASE r.status
            WHEN 'trade' THEN pm.apply_execution(r.asset, r.mode, r.e)
            WHEN 'cumulative' THEN pm.apply_order_progress(r.asset, r.mode, r.e)
            WHEN 'unpriced' THEN pm.ignore_counted('order_events_without_price', r.reason)
            ELSE jsonb_build_object('status', r.status, 'reason', r.reason) END);
    END LOOP;
    RETURN pm.combine_results(results);
END
$$;
COMMENT ON FUNCTION pm.apply_order_event(jsonb) IS
    'pm.apply_order_event(message body) -> {"status": applied|duplicate|stale|ignored, "reason"?, "execution"?, "position"?: {id, asset, mode, version}, "results"?}: parses any order/fill shape (A per-execution event, B order-manager''s cumulative order event, C Bybit execution message or record) and applies it in the caller''s transaction, exactly once per execution; the position depends on the set of executions, not on their delivery order (a late execution re-folds the ledger after it), except that executions sharing their execution time and sequence are folded in their arrival order. An order event applies the growth of its order''s cumulative filled quantity whatever its event_type (a cancelled event can carry the last fills); one that filled without an average price is ignored and counted (pm.counters order_events_without_price). Invalid input raises 22023 (or another 22xxx) naming the field and writes nothing.';

-- pm.finish_batch_group(locked row carrying its new state, execution keys, trace) -> jsonb
-- Writes one position of a batch once: one version bump, one change listing its executions.
CREATE OR REPLACE FUNCTION pm.finish_batch_group(p_pos public.positions, p_keys jsonb, p_trace text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT pm.position_ref(pm.write_state(p_pos, pm.state_of(p_pos), 'order_execution', 'trade', p_trace, NULL,
                                          jsonb_build_object('executions', p_keys)))
$$;
COMMENT ON FUNCTION pm.finish_batch_group(public.positions, jsonb, text) IS
    'pm.finish_batch_group(locked row carrying its new state, execution keys, trace) -> {"id", "asset", "mode", "version"} of the position: writes the state once (version + 1) and records one change listing the executions. Used by pm.apply_batch.';

-- pm.ledger_append(rows) -> empty array
-- Ledger rows that come after the newest of their position, each with its state after, in one insert.
CREATE OR REPLACE FUNCTION pm.ledger_append(p_rows pm.executions[]) RETURNS pm.executions[]
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF cardinality(p_rows) = 0 THEN
        RETURN p_rows;
    END IF;
    INSERT INTO pm.executions (position_id, exec_key, kind, source, leg, side, qty, price, fee, exec_time, seq,
                               order_id, exec_type, target, state_after, trace_id, event_id)
    SELECT r.position_id, r.exec_key, r.kind, r.source, r.leg, r.side, r.qty, r.price, r.fee, r.exec_time, r.seq,
           r.order_id, r.exec_type, r.target, r.state_after, r.trace_id, r.event_id
      FROM unnest(p_rows) AS r
    ON CONFLICT (exec_key) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n < cardinality(p_rows) THEN
        -- the caller found none of the keys in the ledger: a concurrent transaction applied one since
        RAISE EXCEPTION 'an execution of this batch was applied by a concurrent transaction meanwhile'
            USING ERRCODE = '40001', HINT = 'Apply the batch again: it will be found applied.';
    END IF;
    RETURN '{}';
END
$$;
COMMENT ON FUNCTION pm.ledger_append(pm.executions[]) IS
    'pm.ledger_append(ledger rows, each with position_id and state_after set) -> an empty array (the caller''s queue, emptied). Inserts the rows in one statement, in array order (their arrival order). The caller holds the row lock of their positions, and each row comes after the newest of its position''s ledger with a key that was not in the ledger when it looked: a key that a concurrent transaction applied since raises 40001 (serialization failure; apply the batch again, and it is found applied). Used by pm.apply_batch.';

-- pm.apply_batch(kind, messages) -> jsonb
-- PUBLIC: many message bodies in one call and one transaction; each position written once per batch.
CREATE OR REPLACE FUNCTION pm.apply_batch(p_kind text, p_events jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    results jsonb[];
    reqs pm.exec_request[] := '{}';
    idxs integer[] := '{}';
    singles integer[] := '{}';
    single_keys text[] := '{}';
    x record;
    i integer;
    ev jsonb;
    one_req pm.exec_request[];
    pos public.positions;
    new_state pm.pos_state;
    group_idxs integer[] := '{}';
    group_keys text[] := '{}';
    group_trace text;
    newest_time timestamptz;
    newest_seq bigint;
    label text;
    queued pm.executions[] := '{}';
    r pm.executions;
    j jsonb;
BEGIN
    IF p_kind NOT IN ('order', 'position') THEN
        PERFORM pm.bad_input('kind', format('expected order or position, got %s', p_kind));
    END IF;
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
        PERFORM pm.bad_input('events', 'expected a JSON array of message bodies');
    END IF;
    n := jsonb_array_length(p_events);
    results := array_fill(NULL::jsonb, ARRAY[greatest(n, 1)]);

    IF p_kind = 'position' THEN
        FOR i IN 1 .. n LOOP
            results[i] := pm.apply_position_event(p_events -> (i - 1));
        END LOOP;
        RETURN to_jsonb(results[1:n]);
    END IF;

    -- orders: parse everything first (an invalid body raises before any write), then apply the
    -- single executions grouped by position, in (asset, mode) order so that concurrent batches lock
    -- positions in the same order; each position is written once per batch
    FOR i IN 1 .. n LOOP
        ev := p_events -> (i - 1);
        IF jsonb_typeof(ev) = 'object' AND ev ? 'execution_id' THEN
            -- shape A, the common case (as pm.parse_order_event parses it, without its array)
            reqs := reqs || pm.parse_execution_event(ev);
            idxs := idxs || i;
            CONTINUE;
        END IF;
        one_req := pm.parse_order_event(ev);
        IF cardinality(one_req) = 1 AND one_req[1].status = 'trade' THEN
            reqs := reqs || one_req[1];
            idxs := idxs || i;
        ELSE
            singles := singles || i;
            single_keys := single_keys || coalesce(one_req[1].asset, '');
        END IF;
    END LOOP;

    -- an execution is "suspect" when its key is in the ledger already or comes twice in the batch:
    -- it takes pm.ledger_insert, which finds it applied before; the others, in order after the
    -- newest row of their position, are queued and inserted by one statement per position
    -- (pm.ledger_append) before anything reads the ledger again. (The sort reads the whole result,
    -- and so the ledger, before the first insert.)
    FOR x IN SELECT u.asset, u.mode, u.e, u.i,
                    count(*) OVER (PARTITION BY (u.e).exec_key) > 1
                    OR EXISTS (SELECT 1 FROM pm.executions l WHERE l.exec_key = (u.e).exec_key) AS suspect
               FROM unnest(reqs, idxs) AS u(asset, mode, status, reason, e, i) ORDER BY 1, 2, 4
    LOOP
        IF pos.id IS NULL OR pos.asset IS DISTINCT FROM x.asset OR pos.mode IS DISTINCT FROM x.mode THEN
            queued := pm.ledger_append(queued);
            IF cardinality(group_idxs) > 0 THEN
                j := jsonb_build_object('status', 'applied', 'position', pm.finish_batch_group(pos, to_jsonb(group_keys), group_trace));
                FOREACH i IN ARRAY group_idxs LOOP results[i] := j; END LOOP;
            END IF;
            pos := pm.lock_position(x.asset, x.mode);
            label := pos.asset || '/' || pos.mode;
            group_idxs := '{}'; group_keys := '{}';
            -- the newest row of its ledger (none: NULL, and its first execution takes the full path);
            -- then each execution applied here is the newest unless it was late
            SELECT l.exec_time, l.seq INTO newest_time, newest_seq FROM pm.executions l
             WHERE l.position_id = pos.id ORDER BY l.exec_time DESC, l.seq DESC LIMIT 1;
        END IF;
        IF NOT x.suspect AND ((x.e).exec_time, (x.e).seq) > (newest_time, newest_seq) THEN
            -- after the newest row and not applied before: the step from the state in memory, the
            -- row queued (pm.ledger_insert's in-order case, without a statement of its own)
            new_state := pm.step(pm.state_of(pos), pos.mode, x.e, label);
            r := x.e;
            r.position_id := pos.id;
            r.state_after := new_state;
            queued := queued || r;
        ELSE
            -- late, tied with the newest, first of its ledger, or suspect: the queue goes in first
            -- (arrival order), then the row takes the path that reads the ledger
            queued := pm.ledger_append(queued);
            new_state := pm.ledger_insert(pos, x.e, newest_time, newest_seq);
            IF new_state IS NULL THEN
                results[x.i] := jsonb_build_object('status', 'duplicate', 'reason', 'execution ' || (x.e).exec_key || ' was applied before');
                CONTINUE;
            END IF;
        END IF;
        IF newest_time IS NULL OR ((x.e).exec_time, (x.e).seq) >= (newest_time, newest_seq) THEN
            newest_time := (x.e).exec_time;
            newest_seq := (x.e).seq;
        END IF;
        pos := pm.with_state(pos, new_state);
        group_idxs := group_idxs || x.i;
        group_keys := group_keys || (x.e).exec_key;
        group_trace := (x.e).trace_id;
    END LOOP;
    queued := pm.ledger_append(queued);
    IF cardinality(group_idxs) > 0 THEN
        j := jsonb_build_object('status', 'applied', 'position', pm.finish_batch_group(pos, to_jsonb(group_keys), group_trace));
        FOREACH i IN ARRAY group_idxs LOOP results[i] := j; END LOOP;
    END IF;

    -- the other messages (several records, cumulative order events) one by one, by symbol (one
    -- symbol's messages in their order), for the same reason
    FOR x IN SELECT u.i FROM unnest(singles, single_keys) AS u(i, k) ORDER BY u.k, u.i LOOP
        results[x.i] := pm.apply_order_event(p_events -> (x.i - 1));
    END LOOP;
    RETURN to_jsonb(results[1:n]);
END
$$;
COMMENT ON FUNCTION pm.apply_batch(text, jsonb) IS
    'pm.apply_batch(kind order|position, JSON array of message bodies) -> JSON array of results, one per body, in order, in the caller''s transaction. The first invalid body raises 22xxx and nothing is written (the consumer then applies the bodies one by one under savepoints). Order bodies are parsed first, then single executions are applied grouped by position in (asset, mode) order, and each position is written ONCE per batch: one version bump and one position_updated event (its detail lists the executions) for all of its executions in the batch; multi-record and cumulative bodies then go through pm.apply_order_event, ordered by the symbol of their first record (stable). Position bodies go through pm.apply_position_event in order. Executions strictly after the newest row of their position''s ledger, with keys not in the ledger when the batch looked them up and not repeated in it, are inserted per position in one statement (pm.ledger_append). Other errors (deadlock 40P01; serialization failure 40001 when a concurrent transaction applied one of its executions meanwhile; connection) abort the call: retry the batch.';
