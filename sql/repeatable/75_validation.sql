-- Validation: a position compared with (a) a fold of its fill ledger and (b) the exchange's last
-- report; with fix, corrected by a correction row in the ledger (so that fold and row agree again).
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.validate_position(asset, mode, fix, trace, actor) -> jsonb
-- Every discrepancy of one position (field, stored, expected, source); with fix, the correction.
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
    pos := pm.lock_existing_position(p_asset, p_mode, NULL);
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

-- pm.validation_summary_add(summary, asset, mode, result) -> jsonb
-- One position's validation result added to the summary of pm.validate_all / pm.validate_positions.
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

-- pm.validate_all(fix, trace) -> jsonb
-- Every position validated in the caller's transaction (all row locks held to its end).
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

-- CALL pm.validate_positions(fix, trace, NULL)
-- Every position validated, committing after each one: one position locked at a time (bin/validate-positions).
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
