-- 0007 batches: many message bodies in one call (the consumers' fast path)
-- Plain SQL, safe to run twice.

CREATE OR REPLACE FUNCTION pm.finish_batch_group(p_pos public.positions, p_keys jsonb, p_trace text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT pm.position_ref(pm.write_state(p_pos, pm.state_of(p_pos), 'order_execution', 'trade', p_trace, NULL,
                                          jsonb_build_object('executions', p_keys)))
$$;
COMMENT ON FUNCTION pm.finish_batch_group(public.positions, jsonb, text) IS
    'pm.finish_batch_group(locked row carrying its new state, execution keys, trace) -> {"id", "asset", "mode", "version"} of the position: writes the state once (version + 1) and records one change listing the executions. Used by pm.apply_batch.';

CREATE OR REPLACE FUNCTION pm.apply_batch(p_kind text, p_events jsonb, p_isolate boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    results jsonb[];
    reqs pm.exec_request[] := '{}';
    idxs integer[] := '{}';
    singles integer[] := '{}';
    r pm.exec_request;
    x record;
    i integer;
    one_req pm.exec_request[];
    pos public.positions;
    new_state pm.pos_state;
    group_idxs integer[] := '{}';
    group_keys jsonb := '[]'::jsonb;
    group_trace text;
    j jsonb;
    st text;
    msg text;
    col text;
BEGIN
    IF p_kind NOT IN ('order', 'position') THEN
        PERFORM pm.bad_input('kind', format('expected order or position, got %s', p_kind));
    END IF;
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
        PERFORM pm.bad_input('events', 'expected a JSON array of message bodies');
    END IF;
    n := jsonb_array_length(p_events);
    results := array_fill(NULL::jsonb, ARRAY[greatest(n, 1)]);

    IF p_isolate THEN
        FOR i IN 1 .. n LOOP
            BEGIN
                results[i] := CASE p_kind WHEN 'order' THEN pm.apply_order_event(p_events -> (i - 1))
                                          ELSE pm.apply_position_event(p_events -> (i - 1)) END;
            EXCEPTION WHEN data_exception THEN
                -- class 22: this message is invalid; its writes are rolled back, its neighbours stay
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, col = COLUMN_NAME;
                results[i] := jsonb_build_object('status', 'invalid', 'error_code', st, 'reason', msg, 'field', nullif(col, ''));
            END;
        END LOOP;
        RETURN to_jsonb(results[1:n]);
    END IF;

    IF p_kind = 'position' THEN
        FOR i IN 1 .. n LOOP
            results[i] := pm.apply_position_event(p_events -> (i - 1));
        END LOOP;
        RETURN to_jsonb(results[1:n]);
    END IF;

    -- orders, not isolated: parse everything first (an invalid body raises before any write), then
    -- apply the single executions grouped by position, in (asset, mode) order so that concurrent
    -- batches lock positions in the same order; each position is written once per batch
    FOR i IN 1 .. n LOOP
        one_req := pm.parse_order_event(p_events -> (i - 1));
        IF cardinality(one_req) = 1 AND one_req[1].status = 'trade' THEN
            reqs := reqs || one_req[1];
            idxs := idxs || i;
        ELSE
            singles := singles || i;
        END IF;
    END LOOP;

    FOR x IN SELECT u.asset, u.mode, u.e, u.i
               FROM unnest(reqs, idxs) AS u(asset, mode, status, reason, e, i) ORDER BY 1, 2, 4
    LOOP
        IF pos.id IS NULL OR pos.asset IS DISTINCT FROM x.asset OR pos.mode IS DISTINCT FROM x.mode THEN
            IF cardinality(group_idxs) > 0 THEN
                j := jsonb_build_object('status', 'applied', 'position', pm.finish_batch_group(pos, group_keys, group_trace));
                FOREACH i IN ARRAY group_idxs LOOP results[i] := j; END LOOP;
            END IF;
            pos := pm.lock_position(x.asset, x.mode);
            group_idxs := '{}'; group_keys := '[]'::jsonb;
        END IF;
        new_state := pm.ledger_insert(pos, x.e);
        IF new_state IS NULL THEN
            results[x.i] := jsonb_build_object('status', 'duplicate', 'reason', 'execution ' || (x.e).exec_key || ' was applied before');
            CONTINUE;
        END IF;
        pos := pm.with_state(pos, new_state);
        group_idxs := group_idxs || x.i;
        group_keys := group_keys || to_jsonb((x.e).exec_key);
        group_trace := (x.e).trace_id;
    END LOOP;
    IF cardinality(group_idxs) > 0 THEN
        j := jsonb_build_object('status', 'applied', 'position', pm.finish_batch_group(pos, group_keys, group_trace));
        FOREACH i IN ARRAY group_idxs LOOP results[i] := j; END LOOP;
    END IF;

    FOREACH i IN ARRAY singles LOOP
        results[i] := pm.apply_order_event(p_events -> (i - 1));
    END LOOP;
    RETURN to_jsonb(results[1:n]);
END
$$;
COMMENT ON FUNCTION pm.apply_batch(text, jsonb, boolean) IS
    'pm.apply_batch(kind order|position, JSON array of message bodies, isolate) -> JSON array of results, one per body, in order, in the caller''s transaction. isolate (default): each body goes through pm.apply_order_event / pm.apply_position_event in its own subtransaction; an invalid one (SQLSTATE class 22) yields {"status": "invalid", "error_code", "reason", "field"} while the others apply (keep such batches at or below 64 bodies: PostgreSQL caches 64 subtransaction ids per backend). Not isolated: the first invalid body raises 22xxx and nothing is written (retry the batch isolated); order bodies are parsed first, then single executions are applied grouped by position in (asset, mode) order, and each position is written ONCE per batch: one version bump and one position_updated event (its detail lists the executions) for all of its executions in the batch. Other errors (deadlock 40P01, connection) abort the call: retry the batch.';
