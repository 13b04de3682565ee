-- Writing a position: the row lock (writers queue on it, no update is lost), the position image an
-- outbox row keeps, THE writer of every change (row + audit/outbox row in one statement), and the
-- record of a discrepancy.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.lock_position(asset, mode, create) -> positions row
-- The row locked FOR NO KEY UPDATE; with create, a missing row is inserted flat first (race-safe).
CREATE OR REPLACE FUNCTION pm.lock_position(p_asset text, p_mode text, p_create boolean DEFAULT true)
RETURNS public.positions
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
BEGIN
    -- (the mode is tested as an expression that no index serves, so the plan always looks the row up
    -- by its asset, one or two rows. PL/pgSQL keeps the plan it made at its first calls: made while
    -- the table was new and had no statistics, it could take the shared table's index on mode alone
    -- and visit every position of that mode, and every dead version of them, at each call)
    SELECT * INTO pos FROM public.positions WHERE asset = p_asset AND (mode = p_mode) IS TRUE
     FOR NO KEY UPDATE;
    IF FOUND OR NOT p_create THEN
        RETURN pos;
    END IF;
    -- versions continue across a deletion of the same asset and mode (pm.delete_position), so an
    -- ETag or If-Match of the deleted row never matches the new one
    PERFORM pm.own_writes(true);
    INSERT INTO public.positions (asset, mode, size, realized_pnl, unrealized_pnl, long_size, short_size,
                                  version, created_at, last_updated)
    VALUES (p_asset, p_mode, 0, 0, 0,
            CASE WHEN p_mode = 'hedge' THEN 0 END, CASE WHEN p_mode = 'hedge' THEN 0 END,
            coalesce((SELECT max(d.version) FROM pm.deleted_positions d WHERE d.asset = p_asset AND d.mode = p_mode), 0),
            pm.now_utc(), pm.now_utc())
    ON CONFLICT (asset, mode) DO NOTHING;
    PERFORM pm.own_writes(false);
    SELECT * INTO pos FROM public.positions WHERE asset = p_asset AND (mode = p_mode) IS TRUE
     FOR NO KEY UPDATE;
    RETURN pos;
END
$$;
COMMENT ON FUNCTION pm.lock_position(text, text, boolean) IS
    'pm.lock_position(asset, mode, create) -> the positions row locked FOR NO KEY UPDATE (concurrent writers queue here, no update is lost; inserts that only reference the row, like snapshots, are not blocked); with create, a missing row is inserted flat first (race-safe; marked as our own write, pm.own_writes), with version 0, or the version at which the same asset and mode was last deleted (pm.deleted_positions), so versions never repeat. Returns an all-NULL row when absent and not created.';

-- pm.existing_position(asset, mode) -> positions row
-- A position by its identity (asset any case), not locked; P0002 when there is none.
CREATE OR REPLACE FUNCTION pm.existing_position(p_asset text, p_mode text) RETURNS public.positions
LANGUAGE plpgsql STABLE AS $$
DECLARE
    pos public.positions;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('one-way', 'hedge') THEN
        PERFORM pm.bad_input('mode', format('expected one-way or hedge, got %s', coalesce(left(p_mode, 20), 'nothing')));
    END IF;
    SELECT * INTO pos FROM public.positions p WHERE p.asset = upper(p_asset) AND p.mode = p_mode;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    RETURN pos;
END
$$;
COMMENT ON FUNCTION pm.existing_position(text, text) IS
    'pm.existing_position(asset, mode) -> the positions row (asset case-insensitive), without a lock. Raises 22023 for a mode other than one-way/hedge, P0002 when there is no such position. Read only.';

-- pm.position_key(reference, mode) -> (asset, mode)
-- Which position a path names: a symbol (mode default one-way) or the position's id (its own mode).
CREATE OR REPLACE FUNCTION pm.position_key(p_ref text, p_mode text DEFAULT NULL)
RETURNS TABLE (asset text, mode text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id uuid;
    v_deleted timestamptz;
BEGIN
    IF p_ref IS NULL OR p_ref !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        -- a symbol: the function it is passed to checks it and the mode, and raises P0002
        RETURN QUERY SELECT upper(p_ref), coalesce(p_mode, 'one-way');
        RETURN;
    END IF;
    v_id := p_ref::uuid;
    RETURN QUERY SELECT p.asset::text, p.mode::text FROM public.positions p
                  WHERE p.id = v_id AND (p_mode IS NULL OR p.mode = p_mode);
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT d.deleted_at INTO v_deleted FROM pm.deleted_positions d WHERE d.id = v_id;
    IF FOUND THEN
        RAISE EXCEPTION 'position % was deleted at %', v_id, pm.iso(v_deleted) USING ERRCODE = 'P0002';
    END IF;
    RAISE EXCEPTION 'position % not found%', v_id,
        CASE WHEN p_mode IS NOT NULL AND EXISTS (SELECT 1 FROM public.positions p WHERE p.id = v_id)
             THEN ' in mode ' || p_mode ELSE '' END USING ERRCODE = 'P0002';
END
$$;
COMMENT ON FUNCTION pm.position_key(text, text) IS
    'pm.position_key(reference, mode or NULL) -> one row (asset, mode): the position a path names. A reference that is a UUID is a position id: its asset and mode (P0002 when no position has that id, with the time of its deletion when it was deleted, or when mode is given and differs). Anything else is a symbol: (upper case, mode or one-way), unchecked (the function it is passed to validates it). Read only.';

-- pm.expect_version(positions row, expected version)
-- The If-Match check: PM412 naming both versions when an expected version is given and differs.
CREATE OR REPLACE FUNCTION pm.expect_version(p_pos public.positions, p_expected_version integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_expected_version IS NOT NULL AND p_expected_version <> p_pos.version THEN
        RAISE EXCEPTION 'version mismatch on %/%: expected %, current %', p_pos.asset, p_pos.mode,
                        p_expected_version, p_pos.version
            USING ERRCODE = 'PM412', DETAIL = p_pos.version::text;
    END IF;
END
$$;
COMMENT ON FUNCTION pm.expect_version(public.positions, integer) IS
    'pm.expect_version(positions row, expected version or NULL): raises PM412 (DETAIL = current version) when an expected version is given and is not the row''s; nothing otherwise. Pure.';

-- pm.lock_existing_position(asset, mode, expected version) -> positions row
-- An existing row locked (pm.lock_position), after the optional expected-version check (If-Match).
CREATE OR REPLACE FUNCTION pm.lock_existing_position(p_asset text, p_mode text, p_expected_version integer)
RETURNS public.positions
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
BEGIN
    pos := pm.lock_position((pm.existing_position(p_asset, p_mode)).asset, p_mode, false);
    IF pos.id IS NULL THEN   -- (deleted between the lookup and the lock)
        RAISE EXCEPTION 'position %/% not found', upper(p_asset), p_mode USING ERRCODE = 'P0002';
    END IF;
    PERFORM pm.expect_version(pos, p_expected_version);
    RETURN pos;
END
$$;
COMMENT ON FUNCTION pm.lock_existing_position(text, text, integer) IS
    'pm.lock_existing_position(asset, mode, expected version or NULL) -> the positions row locked FOR NO KEY UPDATE. Raises 22023 for a bad mode, P0002 when absent, PM412 (DETAIL = current version) when expected version is given and differs. Never creates.';

-- pm.image_of(positions row) -> pm.position_image
-- What an outbox row keeps of the position after a change. Pure.
CREATE OR REPLACE FUNCTION pm.image_of(p public.positions) RETURNS pm.position_image
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p.id, p.asset, p.mode, p.size, p.average_entry_price, p.unrealized_pnl, p.realized_pnl, p.long_size,
               p.short_size, p.long_avg_price, p.short_avg_price, p.last_updated, p.last_snapshot_at, p.current_price,
               p.version, p.created_at, p.closed_at, p.opened_at, p.price_updated_at)::pm.position_image
$$;
COMMENT ON FUNCTION pm.image_of(public.positions) IS
    'pm.image_of(positions row) -> its pm.position_image (what pm.outbox keeps of the position after a change). Pure.';

-- pm.write_state(locked row, state, source, action, trace, actor, detail, price, price time, unrealized) -> image
-- THE writer of a change: stores the state, bumps version, appends the audit/outbox row, in one statement.
CREATE OR REPLACE FUNCTION pm.write_state(p_pos public.positions, st pm.pos_state, p_source text, p_action text,
                                          p_trace text, p_actor text DEFAULT NULL, p_detail jsonb DEFAULT NULL,
                                          p_price numeric DEFAULT NULL, p_price_at timestamp DEFAULT NULL,
                                          p_unrealized numeric DEFAULT NULL)
RETURNS pm.position_image
LANGUAGE plpgsql AS $$
DECLARE
    img pm.position_image;
    mark text;
BEGIN
    -- one statement: the row update and its audit/outbox row (PL/pgSQL: the plan is prepared once
    -- per session). The outbox keeps the position as an image; pm.outbox_body renders it on read.
    -- Marked as our own write around it (pm.own_writes; an assignment is cheaper than PERFORM).
    mark := pm.own_writes(true);
    WITH changed AS (
        UPDATE public.positions p
           SET size = st.size,
               average_entry_price = st.avg_price,
               long_size = st.long_size, long_avg_price = st.long_avg,
               short_size = st.short_size, short_avg_price = st.short_avg,
               realized_pnl = st.realized,
               opened_at = st.opened_at AT TIME ZONE 'UTC',
               closed_at = st.closed_at AT TIME ZONE 'UTC',
               current_price = coalesce(p_price, p_pos.current_price),
               price_updated_at = CASE WHEN p_price IS NULL THEN p_pos.price_updated_at ELSE coalesce(p_price_at, pm.now_utc()) END,
               unrealized_pnl = coalesce(p_unrealized,
                                         pm.unrealized(st, p_pos.mode, coalesce(p_price, p_pos.current_price), p_pos.unrealized_pnl)),
               version = p.version + 1,
               last_updated = pm.now_utc()
         WHERE p.id = p_pos.id
        RETURNING pm.image_of(p) AS i
    )
    INSERT INTO pm.outbox (event_type, position_id, asset, mode, version, source, action, actor, trace_id, detail, image,
                           client_addr)
    SELECT 'position_updated', (c.i).id, (c.i).asset, (c.i).mode, (c.i).version, p_source, p_action, p_actor, p_trace,
           p_detail, c.i, nullif(current_setting('pm.client_addr', true), '')::inet  -- set by the API per transaction
      FROM changed c
    RETURNING (image).* INTO img;
    mark := pm.own_writes(false);
    RETURN img;
END
$$;
COMMENT ON FUNCTION pm.write_state(public.positions, pm.pos_state, text, text, text, text, jsonb, numeric, timestamp, numeric) IS
    'pm.write_state(locked row, state, source, action, trace, actor?, detail?, price?, price time?, unrealized?) -> the position image after the change. Stores the state, optionally a new price, recomputes unrealized PnL (or takes the given one), bumps version and last_updated, and appends the audit row / position_updated outbox event (pm.outbox, same statement) with the client address of an API change (the transaction''s setting pm.client_addr, NULL when unset). source: order_execution|exchange|validation|manual. Every change of a position goes through here (marked as our own write, pm.own_writes). Caller holds the row lock.';

-- pm.record_discrepancy(position, field, stored, expected, source, detected_by, trace, fixed) -> jsonb
-- Appends a discrepancy to pm.discrepancies and returns it as {field, stored, expected, source}.
CREATE OR REPLACE FUNCTION pm.record_discrepancy(p_pos public.positions, p_field text, p_stored numeric,
                                                 p_expected numeric, p_source text, p_detected_by text,
                                                 p_trace text, p_fixed boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pm.discrepancies (position_id, asset, mode, field, stored_value, expected_value, source,
                                  detected_by, fixed, trace_id)
    VALUES (p_pos.id, p_pos.asset, p_pos.mode, p_field, pm.dec(p_stored), pm.dec(p_expected), p_source,
            p_detected_by, p_fixed, p_trace);
    RETURN jsonb_build_object('field', p_field, 'stored', pm.dec(p_stored), 'expected', pm.dec(p_expected),
                              'source', p_source);
END
$$;
COMMENT ON FUNCTION pm.record_discrepancy(public.positions, text, numeric, numeric, text, text, text, boolean) IS
    'pm.record_discrepancy(position, field, stored, expected, source, detected_by, trace, fixed) -> {field, stored, expected, source}: appends to pm.discrepancies (the audit of discrepancies). Does not count: callers bump their counter.';
