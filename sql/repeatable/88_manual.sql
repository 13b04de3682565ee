-- Manual control: the operator's metadata of a position (stop-loss, take-profit, strategy, notes)
-- and the manual close, recorded as manual executions in the fill ledger so that validation,
-- history and as-of reconstruction stay consistent with it.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.
--
-- Errors raised here (the API maps them to HTTP statuses through app/api/errors.py):
--   22023  invalid input, the message names the field
--   P0002  no such position
--   PM412  the caller's expected version (If-Match) is not the current one (DETAIL = current version)
--   55000  the position is flat: there is nothing to close

-- pm.update_position_meta(asset, mode, patch, expected version, trace, actor) -> jsonb
-- JSON merge patch of the operator metadata; audited as a manual change.
CREATE OR REPLACE FUNCTION pm.update_position_meta(p_asset text, p_mode text, p_patch jsonb,
                                                   p_expected_version integer DEFAULT NULL,
                                                   p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    allowed CONSTANT text[] := ARRAY['stop_loss', 'take_profit', 'strategy', 'notes'];
    pos public.positions;
    v_old pm.position_meta;
    v_new pm.position_meta;
    k text;
    changes jsonb := '{}'::jsonb;
BEGIN
    IF jsonb_typeof(p_patch) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input('body', 'expected a JSON object with stop_loss, take_profit, strategy and/or notes');
    END IF;
    FOR k IN SELECT jsonb_object_keys(p_patch) LOOP
        IF NOT k = ANY (allowed) THEN
            PERFORM pm.bad_input(k, 'unknown field; accepted: stop_loss, take_profit, strategy, notes');
        END IF;
    END LOOP;
    IF p_patch = '{}'::jsonb THEN
        PERFORM pm.bad_input('body', 'nothing to change: give stop_loss, take_profit, strategy and/or notes');
    END IF;

    -- validate everything before taking the lock
    v_new.stop_loss := CASE WHEN p_patch -> 'stop_loss' <> 'null'::jsonb
                          THEN pm.positive(pm.j_num(p_patch, 'stop_loss', 'stop_loss'), 'stop_loss') END;
    v_new.take_profit := CASE WHEN p_patch -> 'take_profit' <> 'null'::jsonb
                            THEN pm.positive(pm.j_num(p_patch, 'take_profit', 'take_profit'), 'take_profit') END;
    IF p_patch ? 'strategy' AND jsonb_typeof(p_patch -> 'strategy') NOT IN ('string', 'null') THEN
        PERFORM pm.bad_input('strategy', 'expected a string or null');
    END IF;
    IF p_patch ? 'notes' AND jsonb_typeof(p_patch -> 'notes') NOT IN ('string', 'null') THEN
        PERFORM pm.bad_input('notes', 'expected a string or null');
    END IF;
    v_new.strategy := nullif(btrim(p_patch ->> 'strategy'), '');
    v_new.notes := nullif(p_patch ->> 'notes', '');
    IF length(v_new.strategy) > 64 THEN
        PERFORM pm.bad_input('strategy', format('at most 64 characters, got %s', length(v_new.strategy)));
    END IF;
    IF length(v_new.notes) > 2000 THEN
        PERFORM pm.bad_input('notes', format('at most 2000 characters, got %s', length(v_new.notes)));
    END IF;
    v_new.stop_loss := round(v_new.stop_loss, 8);
    v_new.take_profit := round(v_new.take_profit, 8);
    IF v_new.stop_loss = 0 OR v_new.take_profit = 0 THEN
        PERFORM pm.bad_input(CASE WHEN v_new.stop_loss = 0 THEN 'stop_loss' ELSE 'take_profit' END,
                             'below the smallest price 0.00000001');
    END IF;

    pos := pm.lock_existing_position(p_asset, p_mode, p_expected_version);
    SELECT * INTO v_old FROM pm.position_meta WHERE position_id = pos.id FOR UPDATE;
    -- fields absent from the patch keep their value (merge patch: null clears)
    IF NOT p_patch ? 'stop_loss' THEN v_new.stop_loss := v_old.stop_loss; END IF;
    IF NOT p_patch ? 'take_profit' THEN v_new.take_profit := v_old.take_profit; END IF;
    IF NOT p_patch ? 'strategy' THEN v_new.strategy := v_old.strategy; END IF;
    IF NOT p_patch ? 'notes' THEN v_new.notes := v_old.notes; END IF;

    IF v_new.stop_loss IS DISTINCT FROM v_old.stop_loss THEN
        changes := changes || jsonb_build_object('stop_loss', jsonb_build_object('from', pm.dec(v_old.stop_loss), 'to', pm.dec(v_new.stop_loss)));
    END IF;
    IF v_new.take_profit IS DISTINCT FROM v_old.take_profit THEN
        changes := changes || jsonb_build_object('take_profit', jsonb_build_object('from', pm.dec(v_old.take_profit), 'to', pm.dec(v_new.take_profit)));
    END IF;
    IF v_new.strategy IS DISTINCT FROM v_old.strategy THEN
        changes := changes || jsonb_build_object('strategy', jsonb_build_object('from', v_old.strategy, 'to', v_new.strategy));
    END IF;
    IF v_new.notes IS DISTINCT FROM v_old.notes THEN
        changes := changes || jsonb_build_object('notes', jsonb_build_object('from', v_old.notes, 'to', v_new.notes));
    END IF;
    IF changes = '{}'::jsonb THEN
        -- the same values again: no new version, no audit row (like the exchange's no-change path)
        RETURN jsonb_build_object('status', 'unchanged', 'position', pm.get_position(pos.asset, pos.mode));
    END IF;

    INSERT INTO pm.position_meta AS m (position_id, stop_loss, take_profit, strategy, notes, updated_at, updated_by)
    VALUES (pos.id, v_new.stop_loss, v_new.take_profit, v_new.strategy, v_new.notes, now(), p_actor)
    ON CONFLICT (position_id) DO UPDATE
       SET stop_loss = excluded.stop_loss, take_profit = excluded.take_profit, strategy = excluded.strategy,
           notes = excluded.notes, updated_at = excluded.updated_at, updated_by = excluded.updated_by;
    -- the position's figures stay as they are (unrealized PnL too: it may be the exchange's)
    PERFORM pm.write_state(pos, pm.state_of(pos), 'manual', 'metadata', p_trace, p_actor,
                           jsonb_build_object('changes', changes), NULL, NULL, pos.unrealized_pnl);
    RETURN jsonb_build_object('status', 'applied', 'position', pm.get_position(pos.asset, pos.mode));
END
$$;
COMMENT ON FUNCTION pm.update_position_meta(text, text, jsonb, integer, text, text) IS
    'pm.update_position_meta(asset, mode, patch {stop_loss?, take_profit?, strategy?, notes?}, expected version or NULL, trace, actor) -> {"status": applied|unchanged, "position": Position + metadata}. JSON merge patch: absent keys are kept, null clears. stop_loss/take_profit decimals > 0 (8 decimals), strategy <= 64 chars, notes <= 2000 chars. A real change bumps version, sets last_updated and is audited via pm.write_state (source manual, action metadata, actor, detail {"changes": {field: {from, to}}}), which also emits position_updated; the same values again change nothing. Locks the position row. Errors: 22023 naming the field (nothing written), P0002 absent, PM412 version mismatch (DETAIL = current version).';

-- pm.close_position(asset, mode, exit price, expected version, trace, actor) -> jsonb
-- Closes the whole position (both legs in hedge mode) with manual executions in the ledger.
CREATE OR REPLACE FUNCTION pm.close_position(p_asset text, p_mode text DEFAULT 'one-way', p_exit_price numeric DEFAULT NULL,
                                             p_expected_version integer DEFAULT NULL, p_trace text DEFAULT NULL,
                                             p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
    st pm.pos_state;
    realized_before numeric;
    price numeric;
    last_time timestamptz;
    v_at timestamptz;
    e pm.executions;
    legs jsonb := '[]'::jsonb;
    leg record;
BEGIN
    IF p_exit_price IS NOT NULL AND p_exit_price <= 0 THEN
        PERFORM pm.bad_input('exit_price', format('must be > 0, got %s', p_exit_price));
    END IF;
    IF p_exit_price >= 1e12 THEN
        PERFORM pm.bad_input('exit_price', format('out of range (must be below 10^12): %s', p_exit_price));
    END IF;
    pos := pm.lock_existing_position(p_asset, p_mode, p_expected_version);
    st := pm.state_of(pos);
    IF pm.is_flat(st) THEN
        RAISE EXCEPTION 'position %/% is flat: nothing to close', pos.asset, pos.mode USING ERRCODE = '55000';
    END IF;
    price := coalesce(p_exit_price, pos.current_price);
    IF price IS NULL THEN
        PERFORM pm.bad_input('exit_price', format('required: no current price is known for %s', pos.asset));
    END IF;
    realized_before := st.realized;

    -- after every row already in the ledger, so that the close applies to the whole position as
    -- it stands (a ledger row with a later exchange time would otherwise be folded after it)
    SELECT max(x.exec_time) INTO last_time FROM pm.executions x WHERE x.position_id = pos.id;
    v_at := greatest(now(), last_time + interval '1 microsecond');

    FOR leg IN
        SELECT * FROM (VALUES
            (0::smallint, CASE WHEN st.size > 0 THEN 'Sell' ELSE 'Buy' END, abs(st.size), pos.mode = 'one-way'),
            (1::smallint, 'Sell', st.long_size, pos.mode = 'hedge' AND st.long_size > 0),
            (2::smallint, 'Buy', st.short_size, pos.mode = 'hedge' AND st.short_size > 0)) AS l(leg, side, qty, wanted)
         WHERE l.wanted
    LOOP
        e := pm.new_execution('trade', 'manual', leg.leg, leg.side, leg.qty, price, 0, v_at, -1,
                              'manual:' || gen_random_uuid(), NULL, 'ManualClose', p_trace, NULL);
        st := pm.ledger_insert(pos, e);
        -- pm.ledger_insert reads the position's state from the row it is given: carry the new
        -- state over for the second leg of a hedge position
        pos := pm.with_state(pos, st);
        legs := legs || jsonb_build_object('exec_key', e.exec_key, 'leg', e.leg, 'side', e.side,
                                           'qty', pm.dec(e.qty), 'price', pm.dec(e.price), 'exec_time', pm.iso(e.exec_time));
    END LOOP;
    PERFORM pm.write_state(pos, st, 'manual', 'close', p_trace, p_actor,
                           jsonb_build_object('exit_price', pm.dec(price), 'executions', legs,
                                              'realized_pnl', pm.dec(st.realized - realized_before)));
    RETURN jsonb_build_object('status', 'closed', 'exit_price', pm.dec(price),
                              'realized_pnl', pm.dec(st.realized - realized_before),
                              'executions', legs, 'position', pm.get_position(pos.asset, pos.mode));
END
$$;
COMMENT ON FUNCTION pm.close_position(text, text, numeric, integer, text, text) IS
    'pm.close_position(asset, mode, exit price or NULL = current price, expected version or NULL, trace, actor) -> {"status": "closed", "exit_price", "realized_pnl" (of this close), "executions": [...], "position": Position + metadata}. Appends one manual trade per open leg (opposite side, full size, fee 0, key manual:<uuid>) to the ledger after its newest row, so fold and validation agree; one version bump and one audited change (source manual, action close, actor) with a position_updated event. Locks the position row. Errors: 22023 exit_price <= 0 / out of range / absent with no known price; P0002 absent; PM412 version mismatch; 55000 already flat. A fill with an older exchange time that arrives after the close is folded before it, so the position is then no longer flat: the close has a fixed quantity, like a real order.';
