-- 0004 accounting: parsing helpers, the fill step, the ledger, apply_order_event (SPEC §2.2, §2.3)
-- Plain SQL, safe to run twice (CREATE OR REPLACE throughout).
-- Errors: invalid input raises SQLSTATE 22023 (invalid_parameter_value) or another 22xxx with a
-- message that names the field; a missing position raises P0002 (no_data_found).

------------------------------------------------------------------------------------------------
-- Formatting
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.dec(p numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT trim_scale(p)::text $$;
COMMENT ON FUNCTION pm.dec(numeric) IS 'pm.dec(x) -> text: a decimal as a JSON string without trailing zeros; NULL stays NULL.';

CREATE OR REPLACE FUNCTION pm.iso(p timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(p AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
COMMENT ON FUNCTION pm.iso(timestamptz) IS 'pm.iso(ts) -> text: ISO 8601 in UTC with Z; NULL stays NULL.';

-- STABLE like to_char itself, so that the planner inlines it
CREATE OR REPLACE FUNCTION pm.iso_utc(p timestamp) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT to_char(p, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;
COMMENT ON FUNCTION pm.iso_utc(timestamp) IS 'pm.iso_utc(naive UTC timestamp) -> text: ISO 8601 with Z; NULL stays NULL.';

CREATE OR REPLACE FUNCTION pm.position_json(v pm.v_positions, p_with_norm boolean DEFAULT true) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', v.id, 'asset', v.asset, 'mode', v.mode, 'side', v.side, 'is_open', v.is_open,
        'size', pm.dec(v.size), 'long_size', pm.dec(v.long_size), 'short_size', pm.dec(v.short_size),
        'average_entry_price', pm.dec(v.average_entry_price),
        'long_avg_price', pm.dec(v.long_avg_price), 'short_avg_price', pm.dec(v.short_avg_price),
        'current_price', pm.dec(v.current_price), 'price_updated_at', pm.iso_utc(v.price_updated_at),
        'price_is_stale', v.price_is_stale,
        'unrealized_pnl', pm.dec(v.unrealized_pnl), 'realized_pnl', pm.dec(v.realized_pnl),
        'unrealized_pnl_pct', pm.dec(v.unrealized_pnl_pct), 'time_held_minutes', v.time_held_minutes,
        'position_size_norm', CASE WHEN p_with_norm THEN pm.dec(v.position_size_norm) END,
        'exposure_usdt', pm.dec(v.exposure_usdt),
        'version', v.version, 'created_at', pm.iso_utc(v.created_at), 'opened_at', pm.iso_utc(v.opened_at),
        'last_updated', pm.iso_utc(v.last_updated), 'closed_at', pm.iso_utc(v.closed_at),
        'last_snapshot_at', pm.iso_utc(v.last_snapshot_at))
$$;
COMMENT ON FUNCTION pm.position_json(pm.v_positions, boolean) IS
    'pm.position_json(row of pm.v_positions, with_norm default true) -> jsonb: the Position representation of the API and of position_updated (decimals as strings, timestamps ISO Z). with_norm false leaves position_size_norm NULL and skips the portfolio total (the write path: the relay fills it in when it publishes).';

CREATE OR REPLACE FUNCTION pm.get_position(p_asset text, p_mode text DEFAULT 'one-way') RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- PL/pgSQL: its query plan is cached per session (a SQL function with a FROM is planned per call)
    RETURN (SELECT pm.position_json(v) FROM pm.v_positions v WHERE v.asset = upper(p_asset) AND v.mode = p_mode);
END
$$;
COMMENT ON FUNCTION pm.get_position(text, text) IS
    'pm.get_position(asset, mode) -> jsonb Position, or NULL when there is no such position. Read only.';

CREATE OR REPLACE FUNCTION pm.image_of(p public.positions) RETURNS pm.position_image
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p.id, p.asset, p.mode, p.size, p.average_entry_price, p.unrealized_pnl, p.realized_pnl, p.long_size,
               p.short_size, p.long_avg_price, p.short_avg_price, p.last_updated, p.last_snapshot_at, p.current_price,
               p.version, p.created_at, p.closed_at, p.opened_at, p.price_updated_at)::pm.position_image
$$;
COMMENT ON FUNCTION pm.image_of(public.positions) IS
    'pm.image_of(positions row) -> its pm.position_image (what pm.outbox keeps of the position after a change). Pure.';

CREATE OR REPLACE FUNCTION pm.image_json(i pm.position_image) RETURNS jsonb
LANGUAGE sql STABLE AS $$ SELECT pm.position_json(pm.image_position(i, pm.now_utc()), false) $$;
COMMENT ON FUNCTION pm.image_json(pm.position_image) IS
    'pm.image_json(image) -> the Position jsonb of a position image as of now (position_size_norm null). Read only.';

CREATE OR REPLACE FUNCTION pm.position_ref(i pm.position_image) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', i.id, 'asset', i.asset, 'mode', i.mode, 'version', i.version)
$$;
COMMENT ON FUNCTION pm.position_ref(pm.position_image) IS
    'pm.position_ref(image) -> {"id", "asset", "mode", "version"}: which position a fill changed and its new version (the result of pm.apply_order_event; the whole Position is pm.get_position).';

------------------------------------------------------------------------------------------------
-- Input parsing: every helper raises 22023 naming the field (p_path) on malformed input
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.bad_input(p_path text, p_problem text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'invalid field %: %', p_path, p_problem USING ERRCODE = '22023', COLUMN = p_path;
END
$$;
COMMENT ON FUNCTION pm.bad_input(text, text) IS 'pm.bad_input(field, problem): always raises 22023 "invalid field <field>: <problem>".';

CREATE OR REPLACE FUNCTION pm.j_text(p_obj jsonb, p_key text, p_path text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_obj -> p_key;
BEGIN
    IF v IS NULL OR v = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    CASE jsonb_typeof(v)
        WHEN 'string' THEN RETURN nullif(btrim(v #>> '{}'), '');
        WHEN 'number', 'boolean' THEN RETURN v #>> '{}';
        ELSE PERFORM pm.bad_input(p_path, 'expected a string, got ' || jsonb_typeof(v));
    END CASE;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.j_text(jsonb, text, text) IS
    'pm.j_text(obj, key, path) -> text: a string (or number, or boolean as true/false) field, trimmed; NULL when absent, null or empty. Raises 22023 for objects and arrays.';

CREATE OR REPLACE FUNCTION pm.j_num(p_obj jsonb, p_key text, p_path text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_obj -> p_key;
    s text;
BEGIN
    IF v IS NULL OR v = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    CASE jsonb_typeof(v)
        WHEN 'number' THEN
            s := v #>> '{}';
        WHEN 'string' THEN
            s := btrim(v #>> '{}');
            IF s = '' THEN
                RETURN NULL;
            END IF;
            IF s !~ '^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$' THEN
                PERFORM pm.bad_input(p_path, format('not a finite decimal number: %s', left(s, 40)));
            END IF;
        ELSE PERFORM pm.bad_input(p_path, 'expected a decimal number, got ' || jsonb_typeof(v));
    END CASE;
    -- the shared tables hold DECIMAL(20,8): anything of 10^12 or more could never be stored
    IF s ~ '[eE]' AND abs(split_part(lower(s), 'e', 2)::integer) > 30 OR abs(s::numeric) >= 1e12 THEN
        PERFORM pm.bad_input(p_path, format('out of range (must be below 10^12): %s', left(s, 40)));
    END IF;
    RETURN s::numeric;
END
$$;
COMMENT ON FUNCTION pm.j_num(jsonb, text, text) IS
    'pm.j_num(obj, key, path) -> numeric: a JSON number or decimal string; NULL when absent, null or ""; raises 22023 for NaN, Infinity, non-numeric text, other types, and magnitudes of 10^12 or more (they do not fit DECIMAL(20,8)).';

CREATE OR REPLACE FUNCTION pm.req(p_value anyelement, p_path text) RETURNS anyelement
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL THEN
        PERFORM pm.bad_input(p_path, 'required');
    END IF;
    RETURN p_value;
END
$$;
COMMENT ON FUNCTION pm.req(anyelement, text) IS 'pm.req(value, path) -> value; raises 22023 "<path>: required" when NULL.';

CREATE OR REPLACE FUNCTION pm.positive(p_value numeric, p_path text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL THEN
        PERFORM pm.bad_input(p_path, 'required');
    ELSIF p_value <= 0 THEN
        PERFORM pm.bad_input(p_path, format('must be > 0, got %s', p_value));
    END IF;
    RETURN p_value;
END
$$;
COMMENT ON FUNCTION pm.positive(numeric, text) IS 'pm.positive(value, path) -> value; raises 22023 when NULL or <= 0.';

CREATE OR REPLACE FUNCTION pm.j_time(p_obj jsonb, p_key text, p_path text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v jsonb := p_obj -> p_key;
    s text;
BEGIN
    IF v IS NULL OR v = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) NOT IN ('string', 'number') THEN
        PERFORM pm.bad_input(p_path, 'expected a timestamp, got ' || jsonb_typeof(v));
    END IF;
    s := btrim(v #>> '{}');
    IF s = '' THEN
        RETURN NULL;
    END IF;
    IF s ~ '^[0-9]{10,16}(\.[0-9]+)?$' THEN
        -- epoch milliseconds (Bybit's updatedTime, execTime); 10 digits = seconds
        IF length(split_part(s, '.', 1)) <= 10 THEN
            RETURN to_timestamp(s::numeric::double precision);
        END IF;
        RETURN to_timestamp(s::numeric::double precision / 1000.0);
    END IF;
    IF s !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)?$' THEN
        PERFORM pm.bad_input(p_path, format('not an ISO 8601 timestamp or epoch milliseconds: %s', left(s, 40)));
    END IF;
    BEGIN
        IF s ~ '(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$' AND s ~ '[T ]' THEN
            RETURN s::timestamptz;
        END IF;
        RETURN s::timestamp AT TIME ZONE 'UTC';   -- no zone given: UTC, whatever the session says
    EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
        PERFORM pm.bad_input(p_path, format('not a valid date and time: %s', left(s, 40)));
    END;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.j_time(jsonb, text, text) IS
    'pm.j_time(obj, key, path) -> timestamptz: ISO 8601 (UTC when no zone) or epoch milliseconds; NULL when absent; raises 22023/22008 when malformed.';

CREATE OR REPLACE FUNCTION pm.norm_symbol(p_symbol text, p_path text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text := upper(btrim(p_symbol));
BEGIN
    IF p_symbol IS NULL THEN
        PERFORM pm.bad_input(p_path, 'required');
    END IF;
    IF length(s) > 20 OR s !~ '^[A-Z0-9]{2,20}$|^[A-Z0-9]{2,12}-[A-Z0-9]{2,8}$' OR s !~ '[A-Z]' THEN
        PERFORM pm.bad_input(p_path, format('unknown symbol format: %s', left(p_symbol, 40)));
    END IF;
    RETURN s;
END
$$;
COMMENT ON FUNCTION pm.norm_symbol(text, text) IS
    'pm.norm_symbol(symbol, path) -> upper-case symbol (BTCUSDT, 1000PEPEUSDT, BTC-27DEC24); raises 22023 for anything else.';

CREATE OR REPLACE FUNCTION pm.norm_side(p_side text, p_path text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE lower(p_side)
        WHEN 'buy' THEN RETURN 'Buy';
        WHEN 'sell' THEN RETURN 'Sell';
        ELSE
            IF p_side IS NULL THEN
                PERFORM pm.bad_input(p_path, 'required');
            END IF;
            PERFORM pm.bad_input(p_path, format('expected Buy or Sell, got %s', left(p_side, 20)));
    END CASE;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.norm_side(text, text) IS 'pm.norm_side(side, path) -> Buy|Sell (any case accepted); raises 22023 otherwise.';

-- mode and leg from an optional mode text and an optional positionIdx
CREATE OR REPLACE FUNCTION pm.norm_leg(p_mode text, p_idx text, p_path text) RETURNS smallint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    idx smallint;
BEGIN
    IF p_idx IS NOT NULL THEN
        IF p_idx NOT IN ('0', '1', '2') THEN
            PERFORM pm.bad_input(p_path, format('position index must be 0, 1 or 2, got %s', left(p_idx, 20)));
        END IF;
        idx := p_idx::smallint;
    END IF;
    IF p_mode IS NULL OR p_mode = 'one-way' THEN
        IF idx IN (1, 2) AND p_mode IS NOT NULL THEN
            PERFORM pm.bad_input(p_path, format('position index %s contradicts mode one-way', idx));
        END IF;
        RETURN coalesce(idx, 0);
    ELSIF p_mode = 'hedge' THEN
        IF idx IS NULL OR idx = 0 THEN
            PERFORM pm.bad_input(p_path, 'hedge mode needs position index 1 (long leg) or 2 (short leg)');
        END IF;
        RETURN idx;
    END IF;
    PERFORM pm.bad_input(p_path, format('mode must be one-way or hedge, got %s', left(p_mode, 20)));
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.norm_leg(text, text, text) IS
    'pm.norm_leg(mode, position_idx, path) -> 0 (one-way), 1 (hedge long leg) or 2 (hedge short leg); raises 22023 on contradictions.';

------------------------------------------------------------------------------------------------
-- The accounting step (SPEC §2.2): one ledger row applied to a state. Pure.
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.zero_state(p_mode text) RETURNS pm.pos_state
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_mode = 'hedge'
                THEN ROW(0, NULL, 0, NULL, 0, NULL, 0, NULL, NULL)::pm.pos_state
                ELSE ROW(0, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)::pm.pos_state END
$$;
COMMENT ON FUNCTION pm.zero_state(text) IS 'pm.zero_state(mode) -> the state of a position before any ledger row.';

CREATE OR REPLACE FUNCTION pm.state_of(p public.positions) RETURNS pm.pos_state
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p.mode = 'hedge'
        THEN ROW(coalesce(p.long_size, 0) - coalesce(p.short_size, 0), NULL,
                 coalesce(p.long_size, 0), p.long_avg_price, coalesce(p.short_size, 0), p.short_avg_price,
                 coalesce(p.realized_pnl, 0), p.opened_at AT TIME ZONE 'UTC', p.closed_at AT TIME ZONE 'UTC')::pm.pos_state
        ELSE ROW(p.size, p.average_entry_price, NULL, NULL, NULL, NULL,
                 coalesce(p.realized_pnl, 0), p.opened_at AT TIME ZONE 'UTC', p.closed_at AT TIME ZONE 'UTC')::pm.pos_state
    END
$$;
COMMENT ON FUNCTION pm.state_of(public.positions) IS 'pm.state_of(positions row) -> its accounting state (pm.pos_state).';

CREATE OR REPLACE FUNCTION pm.is_flat(st pm.pos_state) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(st.size, 0) = 0 AND coalesce(st.long_size, 0) = 0 AND coalesce(st.short_size, 0) = 0
$$;
COMMENT ON FUNCTION pm.is_flat(pm.pos_state) IS 'pm.is_flat(state) -> true when the size and both legs are zero.';

CREATE OR REPLACE FUNCTION pm.step(st pm.pos_state, p_mode text, e pm.executions, p_label text DEFAULT NULL)
RETURNS pm.pos_state
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    was_flat boolean := pm.is_flat(st);
    d numeric;
    c numeric;
    s_new numeric;
BEGIN
    CASE e.kind
    WHEN 'funding' THEN
        st.realized := st.realized - e.fee;
        RETURN st;
    WHEN 'opening' THEN
        RETURN e.target;
    WHEN 'correction' THEN
        IF p_mode = 'hedge' THEN
            st.long_size := (e.target).long_size;
            st.long_avg := CASE WHEN (e.target).long_size = 0 THEN NULL ELSE (e.target).long_avg END;
            st.short_size := (e.target).short_size;
            st.short_avg := CASE WHEN (e.target).short_size = 0 THEN NULL ELSE (e.target).short_avg END;
            st.size := st.long_size - st.short_size;
        ELSE
            st.size := (e.target).size;
            st.avg_price := CASE WHEN (e.target).size = 0 THEN NULL ELSE (e.target).avg_price END;
        END IF;
    WHEN 'avg_correction' THEN
        IF e.leg = 0 AND st.size <> 0 THEN
            st.avg_price := e.price;
        ELSIF e.leg = 1 AND st.long_size > 0 THEN
            st.long_avg := e.price;
        ELSIF e.leg = 2 AND st.short_size > 0 THEN
            st.short_avg := e.price;
        END IF;
        RETURN st;
    WHEN 'trade' THEN
        IF p_mode = 'hedge' THEN
            IF e.leg = 1 AND e.side = 'Buy' THEN
                st.long_avg := round((st.long_size * coalesce(st.long_avg, 0) + e.qty * e.price) / (st.long_size + e.qty), 8);
                st.long_size := st.long_size + e.qty;
            ELSIF e.leg = 1 THEN
                IF e.qty > st.long_size THEN
                    RAISE EXCEPTION 'invalid field execution quantity: a Sell of % reduces the long leg of % (size %) below zero',
                        e.qty, coalesce(p_label, e.position_id::text), st.long_size
                        USING ERRCODE = '22023', COLUMN = 'quantity';
                END IF;
                st.realized := st.realized + e.qty * (e.price - coalesce(st.long_avg, e.price));
                st.long_size := st.long_size - e.qty;
                IF st.long_size = 0 THEN st.long_avg := NULL; END IF;
            ELSIF e.leg = 2 AND e.side = 'Sell' THEN
                st.short_avg := round((st.short_size * coalesce(st.short_avg, 0) + e.qty * e.price) / (st.short_size + e.qty), 8);
                st.short_size := st.short_size + e.qty;
            ELSIF e.leg = 2 THEN
                IF e.qty > st.short_size THEN
                    RAISE EXCEPTION 'invalid field execution quantity: a Buy of % reduces the short leg of % (size %) below zero',
                        e.qty, coalesce(p_label, e.position_id::text), st.short_size
                        USING ERRCODE = '22023', COLUMN = 'quantity';
                END IF;
                st.realized := st.realized + e.qty * (coalesce(st.short_avg, e.price) - e.price);
                st.short_size := st.short_size - e.qty;
                IF st.short_size = 0 THEN st.short_avg := NULL; END IF;
            ELSE
                RAISE EXCEPTION 'invalid field position_idx: a hedge position % needs leg 1 or 2', coalesce(p_label, e.position_id::text)
                    USING ERRCODE = '22023', COLUMN = 'position_idx';
            END IF;
            st.size := st.long_size - st.short_size;
        ELSE
            IF e.leg <> 0 THEN
                RAISE EXCEPTION 'invalid field position_idx: one-way position % takes position index 0', coalesce(p_label, e.position_id::text)
                    USING ERRCODE = '22023', COLUMN = 'position_idx';
            END IF;
            d := CASE WHEN e.side = 'Buy' THEN e.qty ELSE -e.qty END;
            IF st.size = 0 OR sign(st.size) = sign(d) THEN
                st.avg_price := round((abs(st.size) * coalesce(st.avg_price, 0) + e.qty * e.price) / (abs(st.size) + e.qty), 8);
                st.size := st.size + d;
            ELSE
                c := least(abs(st.size), e.qty);
                st.realized := st.realized + c * (e.price - coalesce(st.avg_price, e.price)) * sign(st.size);
                s_new := st.size + d;
                IF s_new = 0 THEN
                    st.avg_price := NULL;
                ELSIF sign(s_new) <> sign(st.size) THEN
                    st.avg_price := e.price;          -- flipped: a new holding opens at this fill
                    st.opened_at := e.exec_time;
                    st.closed_at := NULL;
                END IF;
                st.size := s_new;
            END IF;
        END IF;
        st.realized := round(st.realized - e.fee, 8);
    ELSE
        RAISE EXCEPTION 'unknown ledger kind %', e.kind USING ERRCODE = '22023';
    END CASE;
    -- the holding's life: opened when leaving flat, closed when reaching flat
    IF was_flat AND NOT pm.is_flat(st) THEN
        st.opened_at := e.exec_time;
        st.closed_at := NULL;
    ELSIF NOT was_flat AND pm.is_flat(st) THEN
        st.closed_at := e.exec_time;
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION pm.step(pm.pos_state, text, pm.executions, text) IS
    'pm.step(state, mode, ledger row, label) -> state after the row (SPEC §2.2): add/reduce/flip with average price and realized PnL, fees, funding, opening balances and corrections; hedge legs. Pure. Raises 22023 when a hedge leg would go below zero. Averages and realized PnL are rounded to 8 decimals, the scale of the shared tables.';

------------------------------------------------------------------------------------------------
-- Position rows: lock or create, write a state, record a change (audit + outbox)
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.lock_position(p_asset text, p_mode text, p_create boolean DEFAULT true)
RETURNS public.positions
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
BEGIN
    SELECT * INTO pos FROM public.positions WHERE asset = p_asset AND mode = p_mode FOR NO KEY UPDATE;
    IF FOUND OR NOT p_create THEN
        RETURN pos;
    END IF;
    INSERT INTO public.positions (asset, mode, size, realized_pnl, unrealized_pnl, long_size, short_size,
                                  version, created_at, last_updated)
    VALUES (p_asset, p_mode, 0, 0, 0,
            CASE WHEN p_mode = 'hedge' THEN 0 END, CASE WHEN p_mode = 'hedge' THEN 0 END,
            0, pm.now_utc(), pm.now_utc())
    ON CONFLICT (asset, mode) DO NOTHING;
    SELECT * INTO pos FROM public.positions WHERE asset = p_asset AND mode = p_mode FOR NO KEY UPDATE;
    RETURN pos;
END
$$;
COMMENT ON FUNCTION pm.lock_position(text, text, boolean) IS
    'pm.lock_position(asset, mode, create) -> the positions row locked FOR NO KEY UPDATE (concurrent writers queue here, no update is lost; inserts that only reference the row, like snapshots, are not blocked); with create, a missing row is inserted flat with version 0 first (race-safe). Returns an all-NULL row when absent and not created.';

CREATE OR REPLACE FUNCTION pm.unrealized(st pm.pos_state, p_mode text, p_price numeric, p_previous numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN pm.is_flat(st) THEN 0
        WHEN p_price IS NULL THEN p_previous
        WHEN p_mode = 'hedge' THEN round(coalesce(st.long_size * (p_price - st.long_avg), 0)
                                         + coalesce(st.short_size * (st.short_avg - p_price), 0), 8)
        ELSE round(st.size * (p_price - st.avg_price), 8)
    END
$$;
COMMENT ON FUNCTION pm.unrealized(pm.pos_state, text, numeric, numeric) IS
    'pm.unrealized(state, mode, price, previous) -> unrealized PnL (SPEC §2.1): 0 when flat, previous when no price is known.';

-- Signatures of earlier versions (the change is now recorded by pm.write_state itself)
DROP FUNCTION IF EXISTS pm.write_state(public.positions, pm.pos_state, numeric, timestamp, numeric);
DROP FUNCTION IF EXISTS pm.record_change(uuid, text, text, text, text, jsonb);

CREATE OR REPLACE FUNCTION pm.write_state(p_pos public.positions, st pm.pos_state, p_source text, p_action text,
                                          p_trace text, p_actor text DEFAULT NULL, p_detail jsonb DEFAULT NULL,
                                          p_price numeric DEFAULT NULL, p_price_at timestamp DEFAULT NULL,
                                          p_unrealized numeric DEFAULT NULL)
RETURNS pm.position_image
LANGUAGE plpgsql AS $$
DECLARE
    img pm.position_image;
BEGIN
    -- one statement: the row update and its audit/outbox row (PL/pgSQL: the plan is prepared once
    -- per session). The outbox keeps the position as an image; pm.outbox_body renders it on read.
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
    INSERT INTO pm.outbox (event_type, position_id, asset, mode, version, source, action, actor, trace_id, detail, image)
    SELECT 'position_updated', (c.i).id, (c.i).asset, (c.i).mode, (c.i).version, p_source, p_action, p_actor, p_trace,
           p_detail, c.i
      FROM changed c
    RETURNING (image).* INTO img;
    RETURN img;
END
$$;
COMMENT ON FUNCTION pm.write_state(public.positions, pm.pos_state, text, text, text, text, jsonb, numeric, timestamp, numeric) IS
    'pm.write_state(locked row, state, source, action, trace, actor?, detail?, price?, price time?, unrealized?) -> the position image after the change. Stores the state, optionally a new price, recomputes unrealized PnL (or takes the given one), bumps version and last_updated, and appends the audit row / position_updated outbox event (pm.outbox, same statement). source: order_execution|exchange|validation|manual. Every change of a position goes through here. Caller holds the row lock.';

CREATE OR REPLACE FUNCTION pm.with_state(p_pos public.positions, st pm.pos_state) RETURNS public.positions
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    p_pos.size := st.size; p_pos.average_entry_price := st.avg_price;
    p_pos.long_size := st.long_size; p_pos.long_avg_price := st.long_avg;
    p_pos.short_size := st.short_size; p_pos.short_avg_price := st.short_avg;
    p_pos.realized_pnl := st.realized;
    p_pos.opened_at := st.opened_at AT TIME ZONE 'UTC'; p_pos.closed_at := st.closed_at AT TIME ZONE 'UTC';
    RETURN p_pos;
END
$$;
COMMENT ON FUNCTION pm.with_state(public.positions, pm.pos_state) IS
    'pm.with_state(positions row, state) -> the same row (in memory) carrying the state''s size, averages, realized PnL and holding times. Pure; writes nothing.';

CREATE OR REPLACE FUNCTION pm.bump(p_name text, p_by bigint DEFAULT 1) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pm.counters AS c (name, value) VALUES (p_name, p_by)
    ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value, updated_at = now()
$$;
COMMENT ON FUNCTION pm.bump(text, bigint) IS 'pm.bump(name, by) : adds to counter pm.counters.name (created at 0). For rare events only: it is one hot row.';

------------------------------------------------------------------------------------------------
-- The ledger: insert a row in order, re-folding only the rows after it
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.ledger_insert(p_pos public.positions, e pm.executions) RETURNS pm.pos_state
LANGUAGE plpgsql AS $$
DECLARE
    l_time timestamptz;
    l_seq bigint;
    l_key text;
    st pm.pos_state;
    r pm.executions;
    v_label text := p_pos.asset || '/' || p_pos.mode;
    v_late boolean;
    v_dup boolean;
BEGIN
    -- one statement: the newest row of this position's ledger, and whether the key was applied
    -- before (to any position). Read after the row lock, so a writer that held it is visible.
    SELECT n.exec_time, n.seq, n.exec_key, EXISTS (SELECT 1 FROM pm.executions d WHERE d.exec_key = e.exec_key)
      INTO l_time, l_seq, l_key, v_dup
      FROM (VALUES (1)) one
      LEFT JOIN LATERAL (SELECT x.exec_time, x.seq, x.exec_key FROM pm.executions x WHERE x.position_id = p_pos.id
                          ORDER BY x.exec_time DESC, x.seq DESC, x.exec_key DESC LIMIT 1) n ON true;
    IF v_dup THEN
        RETURN NULL;
    END IF;

    IF l_key IS NULL THEN
        st := pm.state_of(p_pos);
        IF NOT pm.is_flat(st) OR st.realized <> 0 THEN
            -- a position that existed before its ledger: its state becomes the opening balance
            l_time := '-infinity'; l_seq := -1; l_key := 'opening:' || p_pos.id;
            INSERT INTO pm.executions (position_id, exec_key, kind, source, exec_time, seq, target, state_after)
            VALUES (p_pos.id, l_key, 'opening', 'validation', l_time, l_seq, st, st);
        END IF;
    END IF;

    v_late := l_key IS NOT NULL AND (e.exec_time, e.seq, e.exec_key) < (l_time, l_seq, l_key);
    IF NOT v_late THEN
        -- in order: the stored position is the state before this row
        st := pm.step(pm.state_of(p_pos), p_pos.mode, e, v_label);
    ELSE
        -- late: start from the state after the row just before it
        st := pm.step(coalesce((SELECT x.state_after FROM pm.executions x
                                 WHERE x.position_id = p_pos.id
                                   AND (x.exec_time, x.seq, x.exec_key) < (e.exec_time, e.seq, e.exec_key)
                                 ORDER BY x.exec_time DESC, x.seq DESC, x.exec_key DESC LIMIT 1),
                                pm.zero_state(p_pos.mode)),
                      p_pos.mode, e, v_label);
    END IF;
    -- a second delivery racing this one for another position (same key) waits here for it to
    -- commit or abort, then inserts nothing
    INSERT INTO pm.executions (position_id, exec_key, kind, source, leg, side, qty, price, fee, exec_time, seq,
                               order_id, exec_type, target, state_after, trace_id, event_id)
    VALUES (p_pos.id, e.exec_key, e.kind, e.source, e.leg, e.side, e.qty, e.price, e.fee, e.exec_time, e.seq,
            e.order_id, e.exec_type, e.target, st, e.trace_id, e.event_id)
    ON CONFLICT (exec_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_late THEN
        -- re-fold every row after it
        FOR r IN SELECT * FROM pm.executions x
                  WHERE x.position_id = p_pos.id AND (x.exec_time, x.seq, x.exec_key) > (e.exec_time, e.seq, e.exec_key)
                  ORDER BY x.exec_time, x.seq, x.exec_key
        LOOP
            st := pm.step(st, p_pos.mode, r, v_label);
            UPDATE pm.executions SET state_after = st WHERE exec_key = r.exec_key;
        END LOOP;
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION pm.ledger_insert(public.positions, pm.executions) IS
    'pm.ledger_insert(locked position, ledger row) -> state after the whole ledger. Appends the row in (exec_time, seq, exec_key) order; a row older than the newest re-folds only the rows after it, so the result depends on the set of rows, not on delivery order. A position with state but no ledger gets an opening balance first. Returns NULL, and adds no row for it, when exec_key is in the ledger already (checked first; a concurrent delivery of the same key for another position is caught by the insert): the execution was applied before. Caller holds the row lock; raises 22023 from pm.step.';

CREATE OR REPLACE FUNCTION pm.fold_ledger(p_position_id uuid) RETURNS pm.pos_state
LANGUAGE plpgsql STABLE AS $$
DECLARE
    p_mode text;
    st pm.pos_state;
    r pm.executions;
BEGIN
    SELECT mode INTO p_mode FROM public.positions WHERE id = p_position_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    st := pm.zero_state(p_mode);
    FOR r IN SELECT * FROM pm.executions WHERE position_id = p_position_id ORDER BY exec_time, seq, exec_key LOOP
        st := pm.step(st, p_mode, r);
    END LOOP;
    RETURN st;
END
$$;
COMMENT ON FUNCTION pm.fold_ledger(uuid) IS
    'pm.fold_ledger(position id) -> the state that a fold of the whole ledger gives, from scratch (ignores stored state_after). Read only; NULL for an unknown position.';

-- Re-fold the whole ledger from scratch, repairing every stored state_after; returns the final state.
CREATE OR REPLACE FUNCTION pm.refold_ledger(p_pos public.positions) RETURNS pm.pos_state
LANGUAGE plpgsql AS $$
DECLARE
    st pm.pos_state := pm.zero_state(p_pos.mode);
    r pm.executions;
BEGIN
    FOR r IN SELECT * FROM pm.executions WHERE position_id = p_pos.id ORDER BY exec_time, seq, exec_key LOOP
        st := pm.step(st, p_pos.mode, r, p_pos.asset || '/' || p_pos.mode);
        IF r.state_after IS DISTINCT FROM st THEN
            UPDATE pm.executions SET state_after = st WHERE exec_key = r.exec_key;
        END IF;
    END LOOP;
    RETURN st;
END
$$;
COMMENT ON FUNCTION pm.refold_ledger(public.positions) IS
    'pm.refold_ledger(locked position) -> its ledger folded from scratch; rewrites any stored state_after that differs. Caller holds the row lock.';

CREATE OR REPLACE FUNCTION pm.recompute_position(p_position_id uuid, p_trace text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
    st pm.pos_state;
BEGIN
    SELECT * INTO pos FROM public.positions WHERE id = p_position_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'position % not found', p_position_id USING ERRCODE = 'P0002';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pm.executions WHERE position_id = pos.id) THEN
        RETURN jsonb_build_object('status', 'ignored', 'reason', 'no ledger rows: nothing to recompute from');
    END IF;
    st := pm.refold_ledger(pos);
    IF st IS NOT DISTINCT FROM pm.state_of(pos) THEN
        RETURN jsonb_build_object('status', 'unchanged', 'position', pm.get_position(pos.asset, pos.mode));
    END IF;
    RETURN jsonb_build_object('status', 'applied',
                              'position', pm.image_json(pm.write_state(pos, st, 'validation', 'recompute', p_trace)));
END
$$;
COMMENT ON FUNCTION pm.recompute_position(uuid, text) IS
    'pm.recompute_position(position id, trace) -> {"status": applied|unchanged|ignored, "position"}: re-folds the whole ledger from scratch, repairs every stored state_after, and writes the position (audited, version bumped) when it differs. Raises P0002 for an unknown id.';

------------------------------------------------------------------------------------------------
-- One execution (any shape, after parsing)
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pm.apply_execution(p_asset text, p_mode text, e pm.executions) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    pos public.positions;
    st pm.pos_state;
    img pm.position_image;
BEGIN
    pos := pm.lock_position(p_asset, p_mode);
    st := pm.ledger_insert(pos, e);
    IF st IS NULL THEN
        RETURN jsonb_build_object('status', 'duplicate', 'reason', 'execution ' || e.exec_key || ' was applied before');
    END IF;
    img := pm.write_state(pos, st, e.source, e.kind, e.trace_id, NULL,
                          jsonb_build_object('exec_key', e.exec_key, 'side', e.side, 'qty', pm.dec(e.qty),
                                             'price', pm.dec(e.price), 'fee', pm.dec(e.fee)));
    -- (a variable, not the call itself, as argument: the SQL function is then inlined)
    RETURN jsonb_build_object('status', 'applied', 'execution', e.exec_key, 'position', pm.position_ref(img));
END
$$;
COMMENT ON FUNCTION pm.apply_execution(text, text, pm.executions) IS
    'pm.apply_execution(asset, mode, ledger row) -> {"status": applied|duplicate, "execution", "position"?: {id, asset, mode, version}}: locks (or creates) the position, applies the row once (key exec_key), writes the position and records the change. Raises 22023 on a hedge leg reduced below zero.';

CREATE OR REPLACE FUNCTION pm.new_execution(p_kind text, p_source text, p_leg smallint, p_side text, p_qty numeric,
                                            p_price numeric, p_fee numeric, p_time timestamptz, p_seq bigint,
                                            p_key text, p_order_id text, p_exec_type text, p_trace text, p_event_id text)
RETURNS pm.executions
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    e pm.executions;
BEGIN
    IF p_kind = 'trade' AND round(p_qty, 8) <= 0 THEN
        PERFORM pm.bad_input('quantity', format('%s is below the smallest quantity 0.00000001', p_qty));
    END IF;
    IF p_kind = 'trade' AND round(p_price, 8) <= 0 THEN
        PERFORM pm.bad_input('price', format('%s is below the smallest price 0.00000001', p_price));
    END IF;
    -- the shared tables keep 8 decimals: the ledger does too, so that fold and stored state agree exactly
    e.kind := p_kind; e.source := p_source; e.leg := p_leg; e.side := p_side;
    e.qty := round(p_qty, 8); e.price := round(p_price, 8);
    e.fee := round(coalesce(p_fee, 0), 8); e.exec_time := p_time; e.seq := coalesce(p_seq, -1); e.exec_key := p_key;
    e.order_id := p_order_id; e.exec_type := p_exec_type; e.trace_id := p_trace; e.event_id := p_event_id;
    RETURN e;
END
$$;
COMMENT ON FUNCTION pm.new_execution(text, text, smallint, text, numeric, numeric, numeric, timestamptz, bigint, text, text, text, text, text) IS
    'pm.new_execution(kind, source, leg, side, qty, price, fee, time, seq, key, order id, exec type, trace, event id) -> an unsaved ledger row. Pure.';

------------------------------------------------------------------------------------------------
-- apply_order_event: the three shapes of SPEC §2.3
------------------------------------------------------------------------------------------------

-- Shape C: one Bybit execution record
CREATE OR REPLACE FUNCTION pm.parse_bybit_execution(p_rec jsonb, p_path text, p_trace text, p_event_id text)
RETURNS pm.exec_request
LANGUAGE plpgsql STABLE AS $$
DECLARE
    exec_type text;
    kind text;
    asset text;
    leg smallint;
    exec_id text;
    category text;
BEGIN
    IF jsonb_typeof(p_rec) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input(p_path, 'expected an execution object');
    END IF;
    exec_id := pm.req(pm.j_text(p_rec, 'execId', p_path || '.execId'), p_path || '.execId');
    asset := pm.norm_symbol(pm.j_text(p_rec, 'symbol', p_path || '.symbol'), p_path || '.symbol');
    exec_type := coalesce(pm.j_text(p_rec, 'execType', p_path || '.execType'), 'Trade');
    category := pm.j_text(p_rec, 'category', p_path || '.category');
    IF category IS NOT NULL AND category <> 'linear' THEN
        RETURN ROW(asset, NULL, 'ignored', format('category %s is not traded by this service', category), NULL)::pm.exec_request;
    END IF;
    kind := CASE WHEN exec_type IN ('Trade', 'BustTrade', 'AdlTrade', 'Delivery') THEN 'trade'
                 WHEN exec_type = 'Funding' THEN 'funding' END;
    IF kind IS NULL THEN
        RETURN ROW(asset, NULL, 'ignored', format('execType %s does not change positions', exec_type), NULL)::pm.exec_request;
    END IF;
    leg := pm.norm_leg(NULL, pm.j_text(p_rec, 'positionIdx', p_path || '.positionIdx'), p_path || '.positionIdx');
    RETURN ROW(asset, CASE WHEN leg = 0 THEN 'one-way' ELSE 'hedge' END, 'trade', NULL,
        pm.new_execution(kind, 'order_execution', leg,
            CASE WHEN kind = 'trade' THEN pm.norm_side(pm.j_text(p_rec, 'side', p_path || '.side'), p_path || '.side') END,
            CASE WHEN kind = 'trade' THEN pm.positive(pm.j_num(p_rec, 'execQty', p_path || '.execQty'), p_path || '.execQty') END,
            CASE WHEN kind = 'trade' THEN pm.positive(pm.j_num(p_rec, 'execPrice', p_path || '.execPrice'), p_path || '.execPrice') END,
            pm.req(pm.j_num(p_rec, 'execFee', p_path || '.execFee'), p_path || '.execFee'),
            pm.req(pm.j_time(p_rec, 'execTime', p_path || '.execTime'), p_path || '.execTime'),
            pm.j_num(p_rec, 'seq', p_path || '.seq')::bigint,
            exec_id, pm.j_text(p_rec, 'orderId', p_path || '.orderId'), exec_type, p_trace, p_event_id))::pm.exec_request;
END
$$;
COMMENT ON FUNCTION pm.parse_bybit_execution(jsonb, text, text, text) IS
    'pm.parse_bybit_execution(record, path, trace, event id) -> pm.exec_request for one Bybit execution record (shape C): Trade/BustTrade/AdlTrade/Delivery become trade rows, Funding a funding row (realized PnL only), other execTypes and non-linear categories status ignored. Key: execId. Writes nothing; raises 22023 naming the field.';

-- Shape A: our per-execution event, field by field (every check names its field)
CREATE OR REPLACE FUNCTION pm.parse_execution_event_checked(p_ev jsonb) RETURNS pm.exec_request
LANGUAGE plpgsql STABLE AS $$
DECLARE
    leg smallint;
BEGIN
    leg := pm.norm_leg(pm.j_text(p_ev, 'mode', 'mode'), pm.j_text(p_ev, 'position_idx', 'position_idx'), 'position_idx');
    RETURN ROW(
        pm.norm_symbol(pm.j_text(p_ev, 'asset', 'asset'), 'asset'),
        CASE WHEN leg = 0 THEN 'one-way' ELSE 'hedge' END, 'trade', NULL,
        pm.new_execution('trade', 'order_execution', leg,
            pm.norm_side(pm.j_text(p_ev, 'side', 'side'), 'side'),
            pm.positive(pm.j_num(p_ev, 'execution_quantity', 'execution_quantity'), 'execution_quantity'),
            pm.positive(pm.j_num(p_ev, 'execution_price', 'execution_price'), 'execution_price'),
            pm.req(pm.j_num(p_ev, 'execution_fees', 'execution_fees'), 'execution_fees'),
            pm.req(pm.j_time(p_ev, 'executed_at', 'executed_at'), 'executed_at'),
            NULL,
            pm.req(pm.j_text(p_ev, 'execution_id', 'execution_id'), 'execution_id'),
            pm.j_text(p_ev, 'order_id', 'order_id'), 'Trade',
            pm.j_text(p_ev, 'trace_id', 'trace_id'), pm.j_text(p_ev, 'event_id', 'event_id')))::pm.exec_request;
END
$$;
COMMENT ON FUNCTION pm.parse_execution_event_checked(jsonb) IS
    'pm.parse_execution_event_checked(event) -> pm.exec_request for order event shape A, each field parsed and checked on its own (22023 naming the field). pm.parse_execution_event gives the same result, faster for the plain form. Writes nothing.';

-- Shape A: the same, with a fast path for the plain form that every producer sends
CREATE OR REPLACE FUNCTION pm.parse_execution_event(p_ev jsonb) RETURNS pm.exec_request
LANGUAGE plpgsql STABLE AS $$
DECLARE
    leg smallint;
    v_asset text := p_ev ->> 'asset';
    v_side text := lower(p_ev ->> 'side');
    v_qty text := p_ev ->> 'execution_quantity';
    v_price text := p_ev ->> 'execution_price';
    v_fee text := p_ev ->> 'execution_fees';
    v_time text := p_ev ->> 'executed_at';
    v_id text := p_ev ->> 'execution_id';
    v_order text := p_ev ->> 'order_id';
    v_trace text := p_ev ->> 'trace_id';
    v_event text := p_ev ->> 'event_id';
    v_mode text := p_ev ->> 'mode';
    v_idx text := p_ev ->> 'position_idx';
BEGIN
    -- Fast path: the plain form every producer sends (upper/lower-case symbol and side, decimals
    -- without sign or exponent, ISO time with zone, ids without surrounding blanks). It accepts
    -- nothing the field-by-field parse would reject and yields the same values; anything
    -- else (unusual but valid, or invalid) goes to pm.parse_execution_event_checked, which names
    -- the bad field. tests/sql/test_parse_fast_path.py holds the two to the same results.
    leg := CASE WHEN v_idx IS NULL OR v_idx = '0' THEN CASE WHEN v_mode IS NULL OR v_mode = 'one-way' THEN 0 END
                WHEN v_idx IN ('1', '2') THEN CASE WHEN v_mode IS NULL OR v_mode = 'hedge' THEN v_idx::smallint END END;
    IF leg IS NOT NULL
       AND v_asset ~ '^[A-Za-z0-9]{2,20}$' AND v_asset ~ '[A-Za-z]'
       AND v_side IN ('buy', 'sell')
       AND v_qty ~ '^[0-9]{1,12}(\.[0-9]*)?$' AND v_price ~ '^[0-9]{1,12}(\.[0-9]*)?$'
       AND v_fee ~ '^-?[0-9]{1,12}(\.[0-9]*)?$'
       -- days 29-31 and leap seconds take the checked parse: this cast cannot fail
       AND v_time ~ '^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-4]):?[0-5][0-9])$'
       AND v_id ~ '^[^\s{\[](.*\S)?$'
       AND (v_order IS NULL OR v_order ~ '^[^\s{\[](.*\S)?$')
       AND (v_trace IS NULL OR v_trace ~ '^[^\s{\[](.*\S)?$')
       AND (v_event IS NULL OR v_event ~ '^[^\s{\[](.*\S)?$')
    THEN
        -- (the casts only once every pattern matched: SQL does not promise an order within AND)
        IF v_qty::numeric > 0 AND v_price::numeric > 0 THEN
            RETURN ROW(upper(v_asset), CASE WHEN leg = 0 THEN 'one-way' ELSE 'hedge' END, 'trade', NULL,
                pm.new_execution('trade', 'order_execution', leg, CASE v_side WHEN 'buy' THEN 'Buy' ELSE 'Sell' END,
                                 v_qty::numeric, v_price::numeric, v_fee::numeric, v_time::timestamptz, NULL,
                                 v_id, v_order, 'Trade', v_trace, v_event))::pm.exec_request;
        END IF;
    END IF;
    RETURN pm.parse_execution_event_checked(p_ev);
END
$$;
COMMENT ON FUNCTION pm.parse_execution_event(jsonb) IS
    'pm.parse_execution_event(event) -> pm.exec_request for order event shape A (one execution; key execution_id): the plain form (symbol and side in any case, unsigned decimals, ISO time with zone) is checked by patterns in one step, anything else by pm.parse_execution_event_checked, with the same results. Writes nothing; raises 22023 naming the field.';

-- Shape B: order-manager's order event with cumulative figures
CREATE OR REPLACE FUNCTION pm.apply_order_progress_event(p_ev jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    ord jsonb := p_ev -> 'order';
    ev_type text := pm.j_text(p_ev, 'event_type', 'event_type');
    v_order_id text;
    asset text;
    side text;
    leg smallint;
    mode text;
    cum_q numeric;
    cum_avg numeric;
    cum_fee numeric;
    prev pm.order_progress;
    dq numeric;
    price numeric;
    pos public.positions;
    st pm.pos_state;
    e pm.executions;
    img pm.position_image;
    trace text := pm.j_text(p_ev, 'trace_id', 'trace_id');
BEGIN
    IF jsonb_typeof(ord) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input('order', 'expected an object');
    END IF;
    IF ev_type IS NULL THEN
        PERFORM pm.bad_input('event_type', 'required');
    END IF;
    IF ev_type NOT IN ('filled', 'partially_filled') THEN
        RETURN jsonb_build_object('status', 'ignored', 'reason', format('event_type %s does not fill', ev_type));
    END IF;
    IF lower(pm.j_text(ord, 'is_dry_run', 'order.is_dry_run')) IN ('true', '1') THEN
        RETURN jsonb_build_object('status', 'ignored', 'reason', 'dry-run order');
    END IF;
    v_order_id := pm.req(coalesce(pm.j_text(ord, 'order_id', 'order.order_id'), pm.j_text(ord, 'id', 'order.id')), 'order.order_id');
    asset := pm.norm_symbol(pm.j_text(ord, 'asset', 'order.asset'), 'order.asset');
    side := pm.norm_side(pm.j_text(ord, 'side', 'order.side'), 'order.side');
    leg := pm.norm_leg(pm.j_text(ord, 'mode', 'order.mode'), pm.j_text(ord, 'position_idx', 'order.position_idx'), 'order.position_idx');
    mode := CASE WHEN leg = 0 THEN 'one-way' ELSE 'hedge' END;
    cum_q := coalesce(pm.j_num(ord, 'filled_quantity', 'order.filled_quantity'),
                      CASE WHEN ev_type = 'filled' THEN pm.j_num(ord, 'quantity', 'order.quantity') END);
    cum_q := pm.req(cum_q, 'order.filled_quantity');
    IF cum_q < 0 THEN
        PERFORM pm.bad_input('order.filled_quantity', format('must be >= 0, got %s', cum_q));
    END IF;
    cum_fee := coalesce(pm.j_num(ord, 'fees', 'order.fees'), 0);
    IF cum_q = 0 THEN
        RETURN jsonb_build_object('status', 'ignored', 'reason', 'nothing filled yet');
    END IF;
    cum_avg := pm.positive(pm.j_num(ord, 'average_price', 'order.average_price'), 'order.average_price');

    pos := pm.lock_position(asset, mode);
    SELECT * INTO prev FROM pm.order_progress o WHERE o.order_id = v_order_id FOR UPDATE;
    dq := cum_q - coalesce(prev.cum_qty, 0);
    IF dq <= 0 THEN
        RETURN jsonb_build_object('status', CASE WHEN dq = 0 THEN 'duplicate' ELSE 'stale' END,
                                  'reason', format('order %s: %s already applied, event says %s', v_order_id, prev.cum_qty, cum_q));
    END IF;
    IF prev.position_id IS NOT NULL AND prev.position_id <> pos.id THEN
        PERFORM pm.bad_input('order.asset', format('order %s was applied to another position before', v_order_id));
    END IF;
    price := round((cum_avg * cum_q - coalesce(prev.cum_notional, 0)) / dq, 8);
    IF price <= 0 THEN
        PERFORM pm.bad_input('order.average_price',
            format('cumulative average %s over %s is inconsistent with the %s already applied for order %s',
                   cum_avg, cum_q, prev.cum_qty, v_order_id));
    END IF;
    INSERT INTO pm.order_progress AS o (order_id, position_id, cum_qty, cum_notional, cum_fee)
    VALUES (v_order_id, pos.id, cum_q, cum_avg * cum_q, cum_fee)
    ON CONFLICT ON CONSTRAINT order_progress_pkey DO UPDATE
       SET cum_qty = excluded.cum_qty, cum_notional = excluded.cum_notional, cum_fee = excluded.cum_fee, updated_at = now();

    e := pm.new_execution('trade', 'order_execution', leg, side, dq, price, cum_fee - coalesce(prev.cum_fee, 0),
                          pm.req(coalesce(pm.j_time(ord, 'executed_at', 'order.executed_at'),
                                          pm.j_time(p_ev, 'timestamp', 'timestamp')), 'order.executed_at'),
                          NULL, 'order:' || v_order_id || ':' || trim_scale(cum_q)::text, v_order_id, ev_type, trace,
                          pm.j_text(p_ev, 'event_id', 'event_id'));
    st := pm.ledger_insert(pos, e);
    IF st IS NULL THEN
        RETURN jsonb_build_object('status', 'duplicate', 'reason', 'execution ' || e.exec_key || ' was applied before');
    END IF;
    img := pm.write_state(pos, st, 'order_execution', 'trade', trace, NULL,
                          jsonb_build_object('exec_key', e.exec_key, 'side', side, 'qty', pm.dec(dq),
                                             'price', pm.dec(price), 'fee', pm.dec(e.fee)));
    RETURN jsonb_build_object('status', 'applied', 'execution', e.exec_key, 'position', pm.position_ref(img));
END
$$;
COMMENT ON FUNCTION pm.apply_order_progress_event(jsonb) IS
    'pm.apply_order_progress_event(event) -> result jsonb for order event shape B: derives the new execution as the difference of the cumulative filled_quantity / average_price / fees to what was applied for order_id (per-order row lock); Δq <= 0 is duplicate/stale; non-fill event types and dry runs are ignored. Raises 22023 naming the field.';

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

-- Every shape of SPEC §2.3 parsed into requests, in message order. Shape B (cumulative per order)
-- comes back as one request with status 'cumulative': its execution depends on pm.order_progress.
CREATE OR REPLACE FUNCTION pm.parse_order_event(p_event jsonb) RETURNS pm.exec_request[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    data jsonb;
    i integer;
    trace text;
    event_id text;
    reqs pm.exec_request[] := '{}';
BEGIN
    IF p_event IS NULL OR jsonb_typeof(p_event) NOT IN ('object', 'array') THEN
        PERFORM pm.bad_input('event', 'expected a JSON object, got ' || coalesce(jsonb_typeof(p_event), 'nothing'));
    END IF;
    IF jsonb_typeof(p_event) = 'object' THEN
        IF p_event ? 'order' AND NOT p_event ? 'execution_id' THEN
            RETURN ARRAY[ROW(NULL, NULL, 'cumulative', NULL, NULL)::pm.exec_request];
        ELSIF p_event ? 'execution_id' OR p_event ->> 'event_type' = 'order_executed' THEN
            RETURN ARRAY[pm.parse_execution_event(p_event)];
        ELSIF p_event ? 'execId' THEN
            RETURN ARRAY[pm.parse_bybit_execution(p_event, 'execution', NULL, NULL)];
        ELSIF NOT p_event ? 'topic' THEN
            PERFORM pm.bad_input('event', 'not an order event: expected execution_id (per-execution event), order (order event) or execId/topic (Bybit execution)');
        END IF;
        IF pm.j_text(p_event, 'topic', 'topic') NOT LIKE 'execution%' THEN
            PERFORM pm.bad_input('topic', format('expected execution, got %s', left(p_event ->> 'topic', 40)));
        END IF;
        data := p_event -> 'data';
        trace := pm.j_text(p_event, 'trace_id', 'trace_id');
        event_id := pm.j_text(p_event, 'id', 'id');
    ELSE
        data := p_event;
    END IF;
    IF jsonb_typeof(data) = 'object' THEN
        RETURN ARRAY[pm.parse_bybit_execution(data, 'data', trace, event_id)];
    END IF;
    IF jsonb_typeof(data) IS DISTINCT FROM 'array' OR jsonb_array_length(data) = 0 THEN
        PERFORM pm.bad_input('data', 'expected a non-empty array of execution records');
    END IF;
    FOR i IN 0 .. jsonb_array_length(data) - 1 LOOP
        reqs := reqs || pm.parse_bybit_execution(data -> i, format('data[%s]', i), trace, event_id);
    END LOOP;
    RETURN reqs;
END
$$;
COMMENT ON FUNCTION pm.parse_order_event(jsonb) IS
    'pm.parse_order_event(message body) -> array of pm.exec_request, one per execution in the message (shape A: one; shape C: one per record; shape B: one with status cumulative). Validates everything first: raises 22023 naming the field before anything is written.';

CREATE OR REPLACE FUNCTION pm.apply_order_event(p_event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    reqs pm.exec_request[];
    r pm.exec_request;
    res jsonb;
    results jsonb := '[]'::jsonb;
BEGIN
    IF jsonb_typeof(p_event) = 'object' AND p_event ? 'execution_id' THEN
        -- shape A (one execution), the common case: no request array, no combined result
        r := pm.parse_execution_event(p_event);
        RETURN pm.apply_execution(r.asset, r.mode, r.e);
    END IF;
    reqs := pm.parse_order_event(p_event);   -- the whole message is valid before any write
    FOREACH r IN ARRAY reqs LOOP
        res := CASE r.status
                   WHEN 'trade' THEN pm.apply_execution(r.asset, r.mode, r.e)
                   WHEN 'cumulative' THEN pm.apply_order_progress_event(p_event)
                   ELSE jsonb_build_object('status', r.status, 'reason', r.reason) END;
        results := results || jsonb_build_array(res);
    END LOOP;
    RETURN pm.combine_results(results);
END
$$;
COMMENT ON FUNCTION pm.apply_order_event(jsonb) IS
    'pm.apply_order_event(message body) -> {"status": applied|duplicate|stale|ignored, "reason"?, "position"?, "results"?}: parses any order/fill shape of SPEC §2.3 (A per-execution, B cumulative order event, C Bybit execution message or record) and applies it in the caller''s transaction, exactly once per execution, independent of delivery order. Invalid input raises 22023 (or another 22xxx) naming the field and writes nothing.';
