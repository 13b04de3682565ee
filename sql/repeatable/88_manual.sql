-- Manual control: the operator's metadata of a position (stop-loss, take-profit, strategy, notes),
-- also for many positions at once, a price set by hand, and a position's life by hand: opened and
-- closed as manual executions in the fill ledger (so that validation, history and as-of
-- reconstruction treat them like any fill), and deleted once flat (its ledger, audit trail and
-- discrepancies stay; the row, its Position and its snapshots are archived in pm.deleted_positions
-- and pm.deleted_position_snapshots).
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.
--
-- Errors raised here (the API maps them to HTTP statuses through app/api/errors.py):
--   22023  invalid input, the message names the field
--   P0002  no such position
--   PM412  the caller's expected version (If-Match) is not the current one (DETAIL = current version)
--   55000  the state forbids it: nothing to close (flat), already open (open), not flat (delete)

-- pm.check_fields(object, accepted fields, shape)
-- 22023 unless the JSON is an object whose fields are all accepted (the error names the first other one).
CREATE OR REPLACE FUNCTION pm.check_fields(p_obj jsonb, p_accepted text[], p_shape text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
BEGIN
    IF jsonb_typeof(p_obj) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input('body', 'expected a JSON object ' || p_shape);
    END IF;
    FOR k IN SELECT jsonb_object_keys(p_obj) LOOP
        IF NOT k = ANY (p_accepted) THEN
            PERFORM pm.bad_input(k, 'unknown field; accepted: ' || array_to_string(p_accepted, ', '));
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pm.check_fields(jsonb, text[], text) IS
    'pm.check_fields(json, accepted field names, shape for the message): raises 22023 "body: expected a JSON object <shape>" for anything but an object, and 22023 naming the first field not accepted (listing the accepted ones). Pure.';

-- pm.meta_patch(patch, accepted fields) -> pm.position_meta
-- The operator metadata a JSON patch sets, checked; fields it does not name are NULL.
CREATE OR REPLACE FUNCTION pm.meta_patch(p_patch jsonb, p_accepted text[]) RETURNS pm.position_meta
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v pm.position_meta;
BEGIN
    PERFORM pm.check_fields(p_patch, p_accepted, 'with ' || array_to_string(p_accepted, ', '));
    v.stop_loss := CASE WHEN p_patch -> 'stop_loss' <> 'null'::jsonb
                        THEN pm.positive(pm.j_num(p_patch, 'stop_loss', 'stop_loss'), 'stop_loss') END;
    v.take_profit := CASE WHEN p_patch -> 'take_profit' <> 'null'::jsonb
                          THEN pm.positive(pm.j_num(p_patch, 'take_profit', 'take_profit'), 'take_profit') END;
    IF p_patch ? 'strategy' AND jsonb_typeof(p_patch -> 'strategy') NOT IN ('string', 'null') THEN
        PERFORM pm.bad_input('strategy', 'expected a string or null');
    END IF;
    IF p_patch ? 'notes' AND jsonb_typeof(p_patch -> 'notes') NOT IN ('string', 'null') THEN
        PERFORM pm.bad_input('notes', 'expected a string or null');
    END IF;
    v.strategy := nullif(btrim(p_patch ->> 'strategy'), '');
    v.notes := nullif(p_patch ->> 'notes', '');
    IF length(v.strategy) > 64 THEN
        PERFORM pm.bad_input('strategy', format('at most 64 characters, got %s', length(v.strategy)));
    END IF;
    IF length(v.notes) > 2000 THEN
        PERFORM pm.bad_input('notes', format('at most 2000 characters, got %s', length(v.notes)));
    END IF;
    v.stop_loss := round(v.stop_loss, 8);
    v.take_profit := round(v.take_profit, 8);
    IF v.stop_loss = 0 OR v.take_profit = 0 THEN
        PERFORM pm.bad_input(CASE WHEN v.stop_loss = 0 THEN 'stop_loss' ELSE 'take_profit' END,
                             'below the smallest price 0.00000001');
    END IF;
    RETURN v;
END
$$;
COMMENT ON FUNCTION pm.meta_patch(jsonb, text[]) IS
    'pm.meta_patch(patch object, accepted field names) -> pm.position_meta with the stop_loss, take_profit, strategy and notes the patch gives (NULL for fields it does not name or sets to null; the caller tells them apart with ?). Raises 22023 naming the field: not an object, a field not accepted, stop_loss/take_profit not a decimal > 0 (rounded to 8 decimals, at least 0.00000001), strategy not a string of at most 64 characters, notes not a string of at most 2000. Pure.';

-- pm.meta_json(metadata) -> jsonb
-- {stop_loss, take_profit, strategy, notes} with decimals as strings.
CREATE OR REPLACE FUNCTION pm.meta_json(m pm.position_meta) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('stop_loss', pm.dec(m.stop_loss), 'take_profit', pm.dec(m.take_profit),
                              'strategy', m.strategy, 'notes', m.notes)
$$;
COMMENT ON FUNCTION pm.meta_json(pm.position_meta) IS
    'pm.meta_json(metadata) -> {"stop_loss", "take_profit", "strategy", "notes"} (decimals as strings, null when unset). Pure.';

-- pm.update_position_meta(asset, mode, patch, expected version, trace, actor) -> jsonb
-- JSON merge patch of the operator metadata, and a current price set by hand; audited as manual changes.
CREATE OR REPLACE FUNCTION pm.update_position_meta(p_asset text, p_mode text, p_patch jsonb,
                                                   p_expected_version integer DEFAULT NULL,
                                                   p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
    v_old pm.position_meta;
    v_new pm.position_meta;
    v_price numeric;
    price_changed boolean := false;
    changes jsonb := '{}'::jsonb;
BEGIN
    -- validate everything before taking a lock
    v_new := pm.meta_patch(p_patch, ARRAY['stop_loss', 'take_profit', 'strategy', 'notes', 'current_price']);
    IF p_patch = '{}'::jsonb THEN
        PERFORM pm.bad_input('body', 'nothing to change: give stop_loss, take_profit, strategy, notes and/or current_price');
    END IF;
    IF p_patch ? 'current_price' THEN
        IF p_patch -> 'current_price' = 'null'::jsonb THEN
            PERFORM pm.bad_input('current_price', 'a price cannot be cleared; give a decimal > 0');
        END IF;
        v_price := pm.positive(pm.j_num(p_patch, 'current_price', 'current_price'), 'current_price');
        IF round(v_price, 8) = 0 THEN
            PERFORM pm.bad_input('current_price', format('%s is below the smallest price 0.00000001', v_price));
        END IF;
        -- the price path (pm.set_prices) locks every row of the symbol in mode order: take them in
        -- that order first, so that this call and a price push never wait for each other crosswise
        PERFORM 1 FROM public.positions p WHERE p.asset = upper(p_asset) ORDER BY p.mode FOR NO KEY UPDATE;
    END IF;

    pos := pm.lock_existing_position(p_asset, p_mode, p_expected_version);
    IF v_price IS NOT NULL THEN
        -- the same path as POST /api/v1/prices: every position of the symbol gets the price
        price_changed := (pm.set_prices(jsonb_build_object(pos.asset, v_price), 'manual', p_trace, p_actor)
                          ->> 'updated')::integer > 0;
        SELECT * INTO pos FROM public.positions p WHERE p.id = pos.id;
    END IF;

    IF p_patch - 'current_price' <> '{}'::jsonb THEN
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
    END IF;
    IF changes = '{}'::jsonb THEN
        -- the same values again: no new version, no audit row (like the exchange's no-change path)
        RETURN jsonb_build_object('status', CASE WHEN price_changed THEN 'applied' ELSE 'unchanged' END,
                                  'position', pm.get_position(pos.asset, pos.mode));
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
    'pm.update_position_meta(asset, mode, patch {stop_loss?, take_profit?, strategy?, notes?, current_price?}, expected version or NULL, trace, actor) -> {"status": applied|unchanged, "position": Position + metadata}. JSON merge patch of the metadata: absent keys are kept, null clears (pm.meta_patch checks the values). current_price (a decimal > 0, never null) goes through the price path of POST /api/v1/prices (pm.set_prices, source manual): every position of the symbol, both modes, gets it, each change audited (action price); the expected version is checked before it. A real metadata change bumps version, sets last_updated and is audited via pm.write_state (source manual, action metadata, actor, detail {"changes": {field: {from, to}}}), which also emits position_updated; the same values again change nothing. Locks the position row (with current_price, every row of the symbol in mode order first). Errors: 22023 naming the field (nothing written), P0002 absent, PM412 version mismatch (DETAIL = current version).';

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

-- pm.open_position(body, trace, actor) -> jsonb
-- Opens a flat or new position by hand: one manual execution in the ledger, the metadata as given.
CREATE OR REPLACE FUNCTION pm.open_position(p_body jsonb, p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    accepted CONSTANT text[] := ARRAY['asset', 'side', 'quantity', 'entry_price', 'mode',
                                      'stop_loss', 'take_profit', 'strategy', 'notes'];
    meta_fields CONSTANT text[] := ARRAY['stop_loss', 'take_profit', 'strategy', 'notes'];
    k text;
    v_asset text;
    v_side text;
    v_mode text;
    v_qty numeric;
    v_price numeric;
    v_meta pm.position_meta;
    v_at timestamptz;
    pos public.positions;
    st pm.pos_state;
    e pm.executions;
BEGIN
    PERFORM pm.check_fields(p_body, accepted,
                            '{asset, side, quantity, entry_price, mode?, stop_loss?, take_profit?, strategy?, notes?}');
    -- the text fields exactly as documented (a JSON string; no case folding but the symbol's)
    FOREACH k IN ARRAY ARRAY['asset', 'side', 'mode'] LOOP
        IF p_body ? k AND jsonb_typeof(p_body -> k) <> 'string' THEN
            PERFORM pm.bad_input(k, 'expected a string, got ' || jsonb_typeof(p_body -> k));
        END IF;
    END LOOP;
    IF p_body ->> 'asset' <> btrim(p_body ->> 'asset') THEN
        PERFORM pm.bad_input('asset', 'a symbol has no spaces');
    END IF;
    v_asset := pm.norm_symbol(p_body ->> 'asset', 'asset');
    v_side := pm.req(p_body ->> 'side', 'side');
    IF v_side NOT IN ('long', 'short') THEN
        PERFORM pm.bad_input('side', format('expected long or short, got %s', left(v_side, 20)));
    END IF;
    v_mode := coalesce(p_body ->> 'mode', 'one-way');
    IF v_mode NOT IN ('one-way', 'hedge') THEN
        PERFORM pm.bad_input('mode', format('expected one-way or hedge, got %s', left(v_mode, 20)));
    END IF;
    -- 8 decimals, the scale of the shared tables and of the ledger (as for fills)
    v_qty := round(pm.positive(pm.j_num(p_body, 'quantity', 'quantity'), 'quantity'), 8);
    v_price := round(pm.positive(pm.j_num(p_body, 'entry_price', 'entry_price'), 'entry_price'), 8);
    IF v_qty = 0 THEN
        PERFORM pm.bad_input('quantity', format('%s is below the smallest quantity 0.00000001', p_body ->> 'quantity'));
    END IF;
    IF v_price = 0 THEN
        PERFORM pm.bad_input('entry_price', format('%s is below the smallest price 0.00000001', p_body ->> 'entry_price'));
    END IF;
    v_meta := pm.meta_patch((SELECT coalesce(jsonb_object_agg(j.key, j.value), '{}'::jsonb)
                               FROM jsonb_each(p_body) j WHERE j.key = ANY (meta_fields)), meta_fields);

    pos := pm.lock_position(v_asset, v_mode, true);
    st := pm.state_of(pos);
    IF NOT pm.is_flat(st) THEN
        RAISE EXCEPTION 'position %/% is already open (%, size %): add to it with fills, or close it first',
            pos.asset, pos.mode, pm.pos_side(pos.mode, pos.size, pos.long_size, pos.short_size), pm.dec(pos.size)
            USING ERRCODE = '55000';
    END IF;
    -- unrealized PnL at the symbol's known price goes into DECIMAL(20,8): say so rather than overflow
    IF abs(v_qty * (coalesce(pos.current_price, v_price) - v_price)) >= 1e12 THEN
        PERFORM pm.bad_input('quantity', format('%s at %s would have an unrealized PnL beyond 10^12 at the current price %s',
                                                v_qty, v_price, pm.dec(pos.current_price)));
    END IF;
    -- after every row already in the ledger (as the manual close), so it opens the position as it stands
    v_at := greatest(now(), (SELECT max(x.exec_time) FROM pm.executions x WHERE x.position_id = pos.id)
                            + interval '1 microsecond');
    e := pm.new_execution('trade', 'manual',
                          (CASE WHEN v_mode = 'one-way' THEN 0 WHEN v_side = 'long' THEN 1 ELSE 2 END)::smallint,
                          CASE WHEN v_side = 'long' THEN 'Buy' ELSE 'Sell' END, v_qty, v_price, 0, v_at, -1,
                          'manual:' || gen_random_uuid(), NULL, 'ManualOpen', p_trace, NULL);
    st := pm.ledger_insert(pos, e);
    -- a new holding gets exactly the metadata given (a stop-loss of an earlier holding is not carried over)
    IF v_meta IS NULL THEN
        DELETE FROM pm.position_meta WHERE position_id = pos.id;
    ELSE
        INSERT INTO pm.position_meta AS m (position_id, stop_loss, take_profit, strategy, notes, updated_at, updated_by)
        VALUES (pos.id, v_meta.stop_loss, v_meta.take_profit, v_meta.strategy, v_meta.notes, now(), p_actor)
        ON CONFLICT (position_id) DO UPDATE
           SET stop_loss = excluded.stop_loss, take_profit = excluded.take_profit, strategy = excluded.strategy,
               notes = excluded.notes, updated_at = excluded.updated_at, updated_by = excluded.updated_by;
    END IF;
    PERFORM pm.write_state(pos, st, 'manual', 'open', p_trace, p_actor,
                           jsonb_build_object('execution', jsonb_build_object(
                                                  'exec_key', e.exec_key, 'leg', e.leg, 'side', e.side, 'qty', pm.dec(e.qty),
                                                  'price', pm.dec(e.price), 'exec_time', pm.iso(e.exec_time)),
                                              'metadata', pm.meta_json(v_meta)));
    RETURN jsonb_build_object('status', 'created', 'position', pm.get_position(pos.asset, pos.mode));
END
$$;
COMMENT ON FUNCTION pm.open_position(jsonb, text, text) IS
    'pm.open_position({asset, side long|short, quantity, entry_price, mode? one-way|hedge, stop_loss?, take_profit?, strategy?, notes?}, trace, actor) -> {"status": "created", "position": Position + metadata}. Opens the position (a new row, or a flat one again) with one manual trade in the fill ledger (Buy for long, Sell for short; hedge: the long or short leg; fee 0; key manual:<uuid>; after the ledger''s newest row), so fold, validation, history and statistics treat it like any fill; the metadata is exactly what is given; one version bump, audited (source manual, action open, actor) with its position_updated event. quantity and entry_price decimals > 0 (below 10^12, rounded to 8 decimals as fills are). Errors: 22023 naming the field (nothing written), 55000 when the position is open already (add to it with fills).';

-- pm.delete_position(asset, mode, expected version, trace, actor) -> jsonb
-- Deletes a flat position: archived with its snapshots; its ledger, audit trail and discrepancies stay.
CREATE OR REPLACE FUNCTION pm.delete_position(p_asset text, p_mode text, p_expected_version integer DEFAULT NULL,
                                              p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions := pm.existing_position(p_asset, p_mode);
    v_snapshots integer;
    v_ledger integer;
    v_history integer;
BEGIN
    -- FOR UPDATE (not the writers' FOR NO KEY UPDATE): it also waits for inserts that refer to the
    -- row (a snapshot being written) and keeps new ones out, so the archive below is complete
    SELECT * INTO pos FROM public.positions p WHERE p.id = pos.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    PERFORM pm.expect_version(pos, p_expected_version);
    IF NOT pm.is_flat(pm.state_of(pos)) THEN
        RAISE EXCEPTION 'position %/% is open (%, size %): close it first, then delete it', pos.asset, pos.mode,
            pm.pos_side(pos.mode, pos.size, pos.long_size, pos.short_size), pm.dec(pos.size)
            USING ERRCODE = '55000';
    END IF;

    INSERT INTO pm.deleted_position_snapshots (id, position_id, asset, mode, snapshot_timestamp, snapshot)
    SELECT s.id, s.position_id, s.asset, s.mode, s.snapshot_timestamp, to_jsonb(s)
      FROM public.position_snapshots s WHERE s.position_id = pos.id;
    GET DIAGNOSTICS v_snapshots = ROW_COUNT;
    INSERT INTO pm.deleted_positions (id, asset, mode, version, position, row_data, exchange_state, snapshots,
                                      deleted_by, trace_id)
    VALUES (pos.id, pos.asset, pos.mode, pos.version, pm.get_position(pos.asset, pos.mode), to_jsonb(pos),
            (SELECT jsonb_agg(to_jsonb(x) ORDER BY x.leg) FROM pm.exchange_state x WHERE x.position_id = pos.id),
            v_snapshots, p_actor, p_trace);
    -- the exchange's last report belongs to this row; a new row of the asset starts without one
    DELETE FROM pm.exchange_state x WHERE x.position_id = pos.id;
    -- cascades to its snapshots (archived above) and its metadata (in the archived Position)
    PERFORM pm.own_writes(true);
    DELETE FROM public.positions p WHERE p.id = pos.id;
    PERFORM pm.own_writes(false);
    PERFORM pm.bump('positions_deleted');

    SELECT count(*) INTO v_ledger FROM pm.executions x WHERE x.position_id = pos.id;
    SELECT count(*) INTO v_history FROM pm.outbox o WHERE o.position_id = pos.id AND o.event_type = 'position_updated';
    RETURN jsonb_build_object('status', 'deleted', 'id', pos.id, 'asset', pos.asset, 'mode', pos.mode,
                              'version', pos.version, 'deleted_at', pm.iso(now()),
                              'kept', jsonb_build_object('ledger_rows', v_ledger, 'history_entries', v_history,
                                                         'snapshots_archived', v_snapshots));
END
$$;
COMMENT ON FUNCTION pm.delete_position(text, text, integer, text, text) IS
    'pm.delete_position(asset, mode, expected version or NULL, trace, actor) -> {"status": "deleted", "id", "asset", "mode", "version", "deleted_at", "kept": {"ledger_rows", "history_entries", "snapshots_archived"}}. Only a flat position (size 0, no legs). Removes its row from public.positions, so it leaves the API, every view and the shared table; a later fill, exchange report or manual open of the asset and mode makes a new row (new id) whose versions continue after this one. Kept for audit: the ledger rows (pm.executions), the audit trail (pm.outbox) and discrepancies under the old id; archived first: the row, its Position with metadata and its exchange state (pm.deleted_positions), its snapshots (pm.deleted_position_snapshots, which the shared table''s ON DELETE CASCADE would lose). Locks the row FOR UPDATE (waits for snapshots being written). Counter positions_deleted. Errors: 22023 bad mode, P0002 absent, PM412 version mismatch, 55000 not flat (close it first).';

-- pm.bulk_update_positions(body, trace, actor) -> jsonb
-- The same metadata change for many positions by id, all or nothing, each audited.
CREATE OR REPLACE FUNCTION pm.bulk_update_positions(p_body jsonb, p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    meta_fields CONSTANT text[] := ARRAY['stop_loss', 'take_profit', 'strategy', 'notes'];
    max_ids CONSTANT integer := 1000;
    k text;
    v_ids jsonb := p_body -> 'position_ids';
    v_updates jsonb := p_body -> 'updates';
    v_missing text;
    r record;
    v_result jsonb;
    v_positions jsonb := '{}'::jsonb;
    v_updated integer := 0;
BEGIN
    PERFORM pm.check_fields(p_body, ARRAY['position_ids', 'updates'], '{"position_ids": [...], "updates": {...}}');
    IF jsonb_typeof(v_ids) IS DISTINCT FROM 'array' OR jsonb_array_length(v_ids) = 0 THEN
        PERFORM pm.bad_input('position_ids', 'expected a non-empty array of position ids');
    END IF;
    IF jsonb_array_length(v_ids) > max_ids THEN
        PERFORM pm.bad_input('position_ids', format('at most %s ids per request, got %s', max_ids, jsonb_array_length(v_ids)));
    END IF;
    SELECT format('position_ids[%s]', i - 1) INTO k FROM jsonb_array_elements(v_ids) WITH ORDINALITY AS t(v, i)
     WHERE jsonb_typeof(t.v) <> 'string'
        OR t.v #>> '{}' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
     ORDER BY i LIMIT 1;
    IF k IS NOT NULL THEN
        PERFORM pm.bad_input(k, 'expected a position id (UUID)');
    END IF;
    SELECT min(t.v #>> '{}') INTO k FROM jsonb_array_elements(v_ids) AS t(v)
     GROUP BY lower(t.v #>> '{}') HAVING count(*) > 1 LIMIT 1;
    IF k IS NOT NULL THEN
        PERFORM pm.bad_input('position_ids', format('%s is given more than once', k));
    END IF;
    IF jsonb_typeof(v_updates) IS DISTINCT FROM 'object' OR v_updates = '{}'::jsonb THEN
        PERFORM pm.bad_input('updates', 'expected a non-empty object with ' || array_to_string(meta_fields, ', '));
    END IF;
    PERFORM pm.meta_patch(v_updates, meta_fields);   -- every value checked before any lock

    SELECT t.v #>> '{}' INTO v_missing FROM jsonb_array_elements(v_ids) WITH ORDINALITY AS t(v, i)
     WHERE NOT EXISTS (SELECT 1 FROM public.positions p WHERE p.id = (t.v #>> '{}')::uuid)
     ORDER BY i LIMIT 1;
    IF v_missing IS NOT NULL THEN
        PERFORM pm.position_key(v_missing);   -- raises P0002 naming it (and when it was deleted)
    END IF;
    -- in (asset, mode) order, as every multi-position writer locks, so two of them never deadlock
    FOR r IN SELECT p.id, p.asset, p.mode FROM public.positions p
              WHERE p.id IN (SELECT (t.v #>> '{}')::uuid FROM jsonb_array_elements(v_ids) AS t(v))
              ORDER BY p.asset, p.mode LOOP
        v_result := pm.update_position_meta(r.asset, r.mode, v_updates, NULL, p_trace, p_actor);
        IF v_result ->> 'status' = 'applied' THEN
            v_updated := v_updated + 1;
        END IF;
        v_positions := v_positions || jsonb_build_object(r.id::text, v_result -> 'position');
    END LOOP;
    IF (SELECT count(*) FROM jsonb_object_keys(v_positions)) <> jsonb_array_length(v_ids) THEN
        -- deleted between the check and the lock
        RAISE EXCEPTION 'a position of position_ids was deleted meanwhile; nothing was changed' USING ERRCODE = 'P0002';
    END IF;
    RETURN jsonb_build_object('updated', v_updated, 'unchanged', jsonb_array_length(v_ids) - v_updated,
                              'positions', (SELECT jsonb_agg(v_positions -> ((t.v #>> '{}')::uuid::text) ORDER BY t.i)
                                              FROM jsonb_array_elements(v_ids) WITH ORDINALITY AS t(v, i)));
END
$$;
COMMENT ON FUNCTION pm.bulk_update_positions(jsonb, text, text) IS
    'pm.bulk_update_positions({"position_ids": [1..1000 distinct UUIDs], "updates": {stop_loss?, take_profit?, strategy?, notes?}}, trace, actor) -> {"updated", "unchanged", "positions": [Position + metadata, in the order of position_ids]}. The same JSON merge patch as pm.update_position_meta for every position, in one transaction: all or nothing. Each position that changes gets its own version bump and audit row (source manual, action metadata, actor, the same trace) with its position_updated event. Locks the rows in (asset, mode) order. Errors: 22023 naming the field (a malformed or repeated id, an unknown field, a bad value; nothing written), P0002 naming the first id that is no position (nothing written).';
