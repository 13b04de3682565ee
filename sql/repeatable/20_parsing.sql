-- Parsing message bodies: field parsers whose every error names its field, the Bybit topic/data
-- wrapper, the order/fill shapes (A per-execution, B cumulative order event, C Bybit execution)
-- and the fields of an exchange position record. Nothing here writes.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.
--
-- Errors: invalid input raises SQLSTATE 22023 (invalid_parameter_value), or 22008 for an impossible
-- date, with a message "invalid field <field>: <problem>" and COLUMN = the field.

-- pm.j_text(obj, key, path) -> text
-- A string field, trimmed; NULL when absent, null or empty.
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

-- pm.j_num(obj, key, path) -> numeric
-- A JSON number or decimal string; NaN, Infinity and magnitudes of 10^12 or more are refused.
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

-- pm.req(value, path) -> value
-- The value, or 22023 "required" when it is NULL.
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

-- pm.positive(value, path) -> numeric
-- The value, or 22023 when it is NULL or not above zero.
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

-- pm.j_time(obj, key, path) -> timestamptz
-- ISO 8601 (UTC when it has no zone) or epoch milliseconds.
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

-- pm.norm_symbol(symbol, path) -> text
-- The upper-case symbol (BTCUSDT, 1000PEPEUSDT, BTC-27DEC24), or 22023.
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

-- pm.norm_side(side, path) -> text
-- Buy or Sell, whatever the case of the input.
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

-- pm.norm_leg(mode, position_idx, path) -> smallint
-- The leg from an optional mode and an optional positionIdx: 0 one-way, 1 hedge long, 2 hedge short.
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

-- pm.new_execution(kind, source, leg, side, qty, price, fee, time, seq, key, order id, exec type, trace, event id)
-- An unsaved ledger row, rounded to the shared tables' 8 decimals.
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

-- pm.parse_bybit_execution(record, path, trace, event id) -> pm.exec_request
-- Order shape C: one Bybit execution record (Trade/BustTrade/AdlTrade/Delivery, Funding; others ignored).
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

-- pm.parse_execution_event_checked(event) -> pm.exec_request
-- Order shape A (one execution), field by field: every check names its field.
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

-- pm.parse_execution_event(event) -> pm.exec_request
-- Order shape A with a fast path for the plain form every producer sends; the same results as the checked parse.
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
       -- 2 to 20 letters and digits, a letter among them. (PostgreSQL's regex engine pays for the
       -- length of a pattern at every match, a lookahead and capturing groups most: these patterns
       -- are written for it, without either.)
       AND v_asset ~ '^[0-9]*[A-Za-z][A-Za-z0-9]*$' AND length(v_asset) BETWEEN 2 AND 20
       AND v_side IN ('buy', 'sell')
       -- quantity, price and fee in one match (none of them can hold the blank between them)
       AND (v_qty || ' ' || v_price || ' ' || v_fee) ~ '^[0-9]{1,12}(?:\.[0-9]*)? [0-9]{1,12}(?:\.[0-9]*)? -?[0-9]{1,12}(?:\.[0-9]*)?$'
       -- days 29-31 and leap seconds take the checked parse: this cast cannot fail
       AND v_time ~ '^[12][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:0[0-9]|1[0-4]):?[0-5][0-9])$'
       -- ids as they are: not empty, no blank at either end (the checked parse trims blanks), not
       -- starting with { or [ (an object or array, which ->> gives as JSON text); no regex, cheaper
       AND v_id <> '' AND left(v_id, 1) NOT IN (' ', '{', '[') AND right(v_id, 1) <> ' '
       AND (v_order IS NULL OR v_order <> '' AND left(v_order, 1) NOT IN (' ', '{', '[') AND right(v_order, 1) <> ' ')
       AND (v_trace IS NULL OR v_trace <> '' AND left(v_trace, 1) NOT IN (' ', '{', '[') AND right(v_trace, 1) <> ' ')
       AND (v_event IS NULL OR v_event <> '' AND left(v_event, 1) NOT IN (' ', '{', '[') AND right(v_event, 1) <> ' ')
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

-- pm.bybit_records(message, topic) -> SETOF (rec, path, trace_id, event_id, envelope_time)
-- The records of a Bybit-style message: {"topic", "data": [...] or {...}} or a bare array of records.
CREATE OR REPLACE FUNCTION pm.bybit_records(p_event jsonb, p_topic text,
                                            OUT rec jsonb, OUT path text, OUT trace_id text, OUT event_id text,
                                            OUT envelope_time timestamptz)
RETURNS SETOF record
LANGUAGE plpgsql STABLE AS $$
DECLARE
    data jsonb := p_event;
    i integer;
BEGIN
    IF jsonb_typeof(p_event) = 'object' THEN
        IF pm.j_text(p_event, 'topic', 'topic') IS NULL OR pm.j_text(p_event, 'topic', 'topic') NOT LIKE p_topic || '%' THEN
            PERFORM pm.bad_input('topic', format('expected %s, got %s', p_topic, coalesce(left(p_event ->> 'topic', 40), 'nothing')));
        END IF;
        data := p_event -> 'data';
        trace_id := pm.j_text(p_event, 'trace_id', 'trace_id');
        event_id := coalesce(pm.j_text(p_event, 'event_id', 'event_id'), pm.j_text(p_event, 'id', 'id'));
        envelope_time := coalesce(pm.j_time(p_event, 'creationTime', 'creationTime'), pm.j_time(p_event, 'timestamp', 'timestamp'));
    ELSIF jsonb_typeof(p_event) IS DISTINCT FROM 'array' THEN
        PERFORM pm.bad_input('event', format('expected a %s message, got %s', p_topic, coalesce(jsonb_typeof(p_event), 'nothing')));
    END IF;
    IF jsonb_typeof(data) = 'object' THEN
        rec := data; path := 'data';
        RETURN NEXT;
        RETURN;
    END IF;
    IF jsonb_typeof(data) IS DISTINCT FROM 'array' OR jsonb_array_length(data) = 0 THEN
        PERFORM pm.bad_input('data', format('expected a non-empty array of %s records', p_topic));
    END IF;
    FOR i IN 0 .. jsonb_array_length(data) - 1 LOOP
        rec := data -> i; path := format('data[%s]', i);
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pm.bybit_records(jsonb, text) IS
    'pm.bybit_records(message, topic) -> one row per record (rec, path for error messages, trace_id, event_id, envelope_time) of a Bybit-style message: an object {"topic": "<topic>...", "data": [records] or {record}, "id"|"event_id"?, "trace_id"?, "creationTime"|"timestamp"?} or a bare array of records. The one unwrapper of both order (topic execution) and position (topic position) messages. Raises 22023 naming topic or data when the envelope is malformed; the records themselves are not checked. Writes nothing.';

-- pm.parse_order_progress(event) -> pm.exec_request
-- Order shape B (order-manager's order event): the order's CUMULATIVE figures, or why it is ignored.
--
-- order-manager publishes an event only when the order's status changes, but its cumulative figures
-- follow every exchange update: fills made after the last partially_filled event arrive only with
-- the next event, whatever its type (filled, cancelled, even rejected). So the event type does not
-- decide whether anything filled; the cumulative quantity does.
CREATE OR REPLACE FUNCTION pm.parse_order_progress(p_ev jsonb) RETURNS pm.exec_request
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ord jsonb := p_ev -> 'order';
    ev_type text := pm.j_text(p_ev, 'event_type', 'event_type');
    leg smallint;
    cum_q numeric;
    avg_p numeric;
    asset text;
    e pm.executions;
BEGIN
    IF jsonb_typeof(ord) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input('order', 'expected an object');
    END IF;
    IF ev_type IS NULL THEN
        PERFORM pm.bad_input('event_type', 'required');
    END IF;
    IF lower(pm.j_text(ord, 'is_dry_run', 'order.is_dry_run')) IN ('true', '1') THEN
        RETURN ROW(NULL, NULL, 'ignored', 'dry-run order', NULL)::pm.exec_request;
    END IF;
    e.order_id := pm.req(coalesce(pm.j_text(ord, 'order_id', 'order.order_id'), pm.j_text(ord, 'id', 'order.id')), 'order.order_id');
    e.side := pm.norm_side(pm.j_text(ord, 'side', 'order.side'), 'order.side');
    leg := pm.norm_leg(pm.j_text(ord, 'mode', 'order.mode'), pm.j_text(ord, 'position_idx', 'order.position_idx'), 'order.position_idx');
    asset := pm.norm_symbol(pm.j_text(ord, 'asset', 'order.asset'), 'order.asset');
    cum_q := pm.req(coalesce(pm.j_num(ord, 'filled_quantity', 'order.filled_quantity'),
                             CASE WHEN ev_type = 'filled' THEN pm.j_num(ord, 'quantity', 'order.quantity') END),
                    'order.filled_quantity');
    IF cum_q < 0 THEN
        PERFORM pm.bad_input('order.filled_quantity', format('must be >= 0, got %s', cum_q));
    END IF;
    e.fee := coalesce(pm.j_num(ord, 'fees', 'order.fees'), 0);
    avg_p := pm.j_num(ord, 'average_price', 'order.average_price');
    IF avg_p < 0 THEN
        PERFORM pm.bad_input('order.average_price', format('must be > 0, got %s', avg_p));
    END IF;
    IF cum_q = 0 THEN
        RETURN ROW(asset, NULL, 'ignored', format('%s: nothing filled yet', ev_type), NULL)::pm.exec_request;
    END IF;
    IF coalesce(avg_p, 0) = 0 THEN
        -- order-manager sends null for a zero average: the order's next event carries the figures again
        RETURN ROW(asset, NULL, 'unpriced',
                   format('order %s (%s): filled_quantity %s without average_price, nothing applied; its next event carries the cumulative figures',
                          e.order_id, ev_type, pm.dec(cum_q)), NULL)::pm.exec_request;
    END IF;
    e.qty := cum_q;
    e.price := avg_p;
    e.kind := 'trade'; e.source := 'order_execution'; e.leg := leg; e.seq := -1; e.exec_type := ev_type;
    e.exec_time := pm.req(coalesce(pm.j_time(ord, 'executed_at', 'order.executed_at'), pm.j_time(p_ev, 'timestamp', 'timestamp')),
                          'order.executed_at');
    e.trace_id := pm.j_text(p_ev, 'trace_id', 'trace_id');
    e.event_id := pm.j_text(p_ev, 'event_id', 'event_id');
    RETURN ROW(asset, CASE WHEN leg = 0 THEN 'one-way' ELSE 'hedge' END, 'cumulative', NULL, e)::pm.exec_request;
END
$$;
COMMENT ON FUNCTION pm.parse_order_progress(jsonb) IS
    'pm.parse_order_progress(event) -> pm.exec_request for order shape B, order-manager''s order event {event_type, timestamp, trace_id, order: {order_id|id, asset, side, mode?, position_idx?, filled_quantity, average_price, fees, executed_at, is_dry_run}}, whatever its event_type (filled, partially_filled, cancelled, rejected, ...): status cumulative with e carrying the order''s CUMULATIVE quantity (qty), average price (price) and fee (fee), unrounded, plus order_id, side, leg, exec_time (executed_at, else the event timestamp), exec_type (the event_type), trace and event id; status unpriced (with the reason) when something filled but average_price is null or 0; or status ignored with a reason (dry runs, nothing filled yet). pm.apply_order_progress turns a cumulative request into the new execution. Writes nothing; raises 22023 naming the field.';

-- pm.parse_order_event(message) -> pm.exec_request[]
-- Any order/fill message parsed into requests, in message order, before anything is written.
CREATE OR REPLACE FUNCTION pm.parse_order_event(p_event jsonb) RETURNS pm.exec_request[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF jsonb_typeof(p_event) = 'object' THEN
        IF p_event ? 'order' AND NOT p_event ? 'execution_id' THEN
            RETURN ARRAY[pm.parse_order_progress(p_event)];
        ELSIF p_event ? 'execution_id' OR p_event ->> 'event_type' = 'order_executed' THEN
            RETURN ARRAY[pm.parse_execution_event(p_event)];
        ELSIF p_event ? 'execId' THEN
            RETURN ARRAY[pm.parse_bybit_execution(p_event, 'execution', NULL, NULL)];
        ELSIF NOT p_event ? 'topic' THEN
            PERFORM pm.bad_input('event', 'not an order event: expected execution_id (per-execution event), order (order event) or execId/topic (Bybit execution)');
        END IF;
    ELSIF jsonb_typeof(p_event) IS DISTINCT FROM 'array' THEN
        PERFORM pm.bad_input('event', 'expected a JSON object, got ' || coalesce(jsonb_typeof(p_event), 'nothing'));
    END IF;
    RETURN ARRAY(SELECT pm.parse_bybit_execution(b.rec, b.path, b.trace_id, b.event_id)
                   FROM pm.bybit_records(p_event, 'execution') WITH ORDINALITY AS b(rec, path, trace_id, event_id, envelope_time, n)
                  ORDER BY b.n);
END
$$;
COMMENT ON FUNCTION pm.parse_order_event(jsonb) IS
    'pm.parse_order_event(message body) -> array of pm.exec_request, one per execution in the message: shape A (per-execution event) one trade; shape B (order event) one request of status cumulative, unpriced (filled without an average price) or ignored; shape C (Bybit execution message, array or record) one per record. Validates everything first: raises 22023 naming the field before anything is written.';

-- pm.parse_position_record(record, path, envelope time) -> (asset, leg, size, avg, mark, unrealized, realized, at, seq)
-- The fields of one exchange position record (ws-gateway payload, spec shape, or Bybit data element).
CREATE OR REPLACE FUNCTION pm.parse_position_record(p_rec jsonb, p_path text, p_envelope_time timestamptz,
                                                    OUT asset text, OUT leg smallint, OUT size numeric, OUT avg_price numeric,
                                                    OUT mark_price numeric, OUT unrealized_pnl numeric,
                                                    OUT realized_pnl numeric, OUT at timestamptz, OUT seq bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    raw jsonb;
    v_side text;
    v_mode_txt text;
    v_idx text;
    rp text := p_path || '.raw';
BEGIN
    IF jsonb_typeof(p_rec) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input(p_path, 'expected a position object');
    END IF;
    raw := CASE WHEN jsonb_typeof(p_rec -> 'raw') = 'object' THEN p_rec -> 'raw' ELSE '{}'::jsonb END;

    -- mode / leg: positionIdx wins; "mode" may be the Bybit positionIdx or one-way/hedge
    v_idx := coalesce(pm.j_text(raw, 'positionIdx', rp || '.positionIdx'), pm.j_text(p_rec, 'positionIdx', p_path || '.positionIdx'));
    v_mode_txt := pm.j_text(p_rec, 'mode', p_path || '.mode');
    IF v_mode_txt IN ('0', '1', '2') THEN
        v_idx := coalesce(v_idx, v_mode_txt);
        v_mode_txt := NULL;
    END IF;
    -- side: "" is meaningful (flat), so it is not folded into "absent"
    v_side := CASE WHEN coalesce(p_rec -> 'side', 'null'::jsonb) <> 'null'::jsonb
                   THEN coalesce(pm.j_text(p_rec, 'side', p_path || '.side'), '')
                   WHEN coalesce(raw -> 'side', 'null'::jsonb) <> 'null'::jsonb
                   THEN coalesce(pm.j_text(raw, 'side', rp || '.side'), '') END;
    IF v_mode_txt = 'hedge' AND v_idx IS NULL THEN
        v_idx := CASE lower(v_side) WHEN 'buy' THEN '1' WHEN 'sell' THEN '2' END;
    END IF;
    leg := pm.norm_leg(v_mode_txt, v_idx, p_path || '.positionIdx');

    size := pm.req(coalesce(pm.j_num(p_rec, 'size', p_path || '.size'), pm.j_num(raw, 'size', rp || '.size')), p_path || '.size');
    IF v_side IS NULL OR (v_side = '' AND size = 0) THEN
        NULL;  -- no side: the size is taken as signed (spec shape); "" with 0: flat
    ELSIF v_side = '' THEN
        PERFORM pm.bad_input(p_path || '.side', format('empty side with non-zero size %s', size));
    ELSIF lower(v_side) = 'buy' THEN
        size := abs(size);
    ELSIF lower(v_side) = 'sell' THEN
        size := CASE WHEN leg = 0 THEN -abs(size) ELSE abs(size) END;
    ELSE
        PERFORM pm.bad_input(p_path || '.side', format('expected Buy, Sell or "", got %s', left(v_side, 20)));
    END IF;
    IF leg <> 0 AND size < 0 THEN
        PERFORM pm.bad_input(p_path || '.size', 'a hedge leg size cannot be negative');
    END IF;
    size := round(size, 8);

    avg_price := coalesce(nullif(pm.j_num(p_rec, 'avgPrice', p_path || '.avgPrice'), 0),
                          nullif(pm.j_num(p_rec, 'avg_price', p_path || '.avg_price'), 0),
                          nullif(pm.j_num(p_rec, 'entryPrice', p_path || '.entryPrice'), 0),
                          nullif(pm.j_num(raw, 'avgPrice', rp || '.avgPrice'), 0),
                          nullif(pm.j_num(raw, 'entryPrice', rp || '.entryPrice'), 0));
    IF avg_price < 0 THEN
        PERFORM pm.bad_input(p_path || '.avgPrice', format('must be >= 0, got %s', avg_price));
    END IF;
    at := pm.req(coalesce(pm.j_time(raw, 'updatedTime', rp || '.updatedTime'),
                          pm.j_time(p_rec, 'updatedTime', p_path || '.updatedTime'),
                          pm.j_time(p_rec, 'timestamp', p_path || '.timestamp'),
                          p_envelope_time), p_path || '.updatedTime');
    asset := pm.norm_symbol(coalesce(pm.j_text(p_rec, 'symbol', p_path || '.symbol'), pm.j_text(raw, 'symbol', rp || '.symbol')),
                            p_path || '.symbol');
    mark_price := coalesce(pm.j_num(p_rec, 'markPrice', p_path || '.markPrice'), pm.j_num(raw, 'markPrice', rp || '.markPrice'));
    unrealized_pnl := coalesce(pm.j_num(p_rec, 'unrealisedPnl', p_path || '.unrealisedPnl'),
                               pm.j_num(p_rec, 'unrealised_pnl', p_path || '.unrealised_pnl'),
                               pm.j_num(raw, 'unrealisedPnl', rp || '.unrealisedPnl'));
    realized_pnl := coalesce(pm.j_num(raw, 'cumRealisedPnl', rp || '.cumRealisedPnl'),
                             pm.j_num(p_rec, 'cumRealisedPnl', p_path || '.cumRealisedPnl'),
                             pm.j_num(p_rec, 'realisedPnl', p_path || '.realisedPnl'),
                             pm.j_num(p_rec, 'realised_pnl', p_path || '.realised_pnl'));
    seq := coalesce(pm.j_num(raw, 'seq', rp || '.seq'), pm.j_num(p_rec, 'seq', p_path || '.seq'))::bigint;
END
$$;
COMMENT ON FUNCTION pm.parse_position_record(jsonb, text, timestamptz) IS
    'pm.parse_position_record(record, path, envelope time) -> (asset, leg 0|1|2, size (signed for leg 0, the leg''s size for 1/2, 8 decimals), avg_price (NULL when unknown), mark_price, unrealized_pnl, realized_pnl, at, seq) of one position record: the ws-gateway payload, the spec shape or a Bybit data element, fields from the record and its "raw" object. Average from avgPrice | avg_price | entryPrice (0 or "" = unknown); size signed by side (Sell negative, "" flat); positionIdx 0 one-way, 1/2 the hedge legs; time from updatedTime, else timestamp, else the envelope''s. Writes nothing; raises 22023 naming the field.';
