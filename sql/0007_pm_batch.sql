-- 0007 batches: many message bodies in one call (the consumers' fast path)
-- Plain SQL, safe to run twice.

CREATE OR REPLACE FUNCTION pm.apply_batch(p_kind text, p_events jsonb, p_isolate boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    results jsonb := '[]'::jsonb;
    ev jsonb;
    res jsonb;
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
    FOR ev IN SELECT e FROM jsonb_array_elements(p_events) e LOOP
        IF NOT p_isolate THEN
            res := CASE p_kind WHEN 'order' THEN pm.apply_order_event(ev) ELSE pm.apply_position_event(ev) END;
        ELSE
            BEGIN
                res := CASE p_kind WHEN 'order' THEN pm.apply_order_event(ev) ELSE pm.apply_position_event(ev) END;
            EXCEPTION WHEN data_exception THEN
                -- class 22: this message is invalid; its writes are rolled back, its neighbours stay
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, col = COLUMN_NAME;
                res := jsonb_build_object('status', 'invalid', 'error_code', st, 'reason', msg, 'field', nullif(col, ''));
            END;
        END IF;
        results := results || jsonb_build_array(res);
    END LOOP;
    RETURN results;
END
$$;
COMMENT ON FUNCTION pm.apply_batch(text, jsonb, boolean) IS
    'pm.apply_batch(kind order|position, JSON array of message bodies, isolate) -> JSON array of results, one per body, in order. Each body goes through pm.apply_order_event / pm.apply_position_event in the caller''s transaction. isolate (default): each body runs in its own subtransaction and an invalid one (SQLSTATE class 22) yields {"status": "invalid", "error_code", "reason", "field"} while the others apply; without isolate the first invalid body raises (cheaper; retry the batch isolated). Other errors (deadlock 40P01, connection) always abort the whole call: retry the batch. Keep batches at or below 64 bodies when isolating (PostgreSQL caches 64 subtransaction ids per backend).';
