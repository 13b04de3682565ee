-- Exchange reports and prices. The order-fill path owns a position's size; the exchange stream owns
-- its price and unrealized PnL, may correct its average price, and has size differences recorded
-- (never applied). Prices also come from the refresh job and from price pushes.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.


-- pm.apply_exchange_report(asset, leg, size, avg, mark, unrealized, realized, time, seq, trace, event id) -> jsonb
-- One exchange report of one position leg, after parsing: staleness, price, average, size check, creation.
CREATE OR REPLACE FUNCTION pm.apply_exchange_report(
    p_asset text, p_leg smallint, p_size numeric, p_avg numeric, p_mark numeric, p_unrealized numeric,
    p_realized numeric, p_time timestamptz, p_seq bigint, p_trace text, p_event_id text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_mode text := CASE WHEN p_leg = 0 THEN 'one-way' ELSE 'hedge' END;
    pos public.positions;
    es pm.exchange_state;
    st pm.pos_state;
    ours numeric;
    our_avg numeric;
    new_price numeric;
    new_unrealized numeric;
    adopt_avg boolean := false;
    thr_avg numeric := pm.setting('avg_price_diff_threshold', '0.001')::numeric;
    thr_size numeric := pm.setting('size_validation_threshold', '0.0001')::numeric;
    discrepancy jsonb;
    v_at timestamp := p_time AT TIME ZONE 'UTC';
    e pm.executions;
BEGIN
    pos := pm.lock_position(p_asset, v_mode, false);
    IF pos.id IS NULL THEN
        IF p_size = 0 THEN
            RETURN jsonb_build_object('status', 'ignored', 'reason', format('%s/%s is flat and not tracked', p_asset, v_mode));
        END IF;
        -- created from the event: its size and average enter the ledger as a correction at the
        -- report's time (fills older than the report are already in it; later fills add to it)
        pos := pm.lock_position(p_asset, v_mode, true);
        st := pm.zero_state(v_mode);
        IF p_leg = 0 THEN
            st.size := p_size; st.avg_price := round(coalesce(p_avg, p_mark), 8);
        ELSIF p_leg = 1 THEN
            st.long_size := p_size; st.long_avg := round(coalesce(p_avg, p_mark), 8); st.size := p_size;
        ELSE
            st.short_size := p_size; st.short_avg := round(coalesce(p_avg, p_mark), 8); st.size := -p_size;
        END IF;
        IF coalesce(st.avg_price, st.long_avg, st.short_avg) IS NULL THEN
            RETURN jsonb_build_object('status', 'ignored',
                'reason', format('%s/%s: cannot create a position without an average or mark price', p_asset, v_mode));
        END IF;
        e := pm.new_execution('correction', 'exchange', p_leg, NULL, NULL, NULL, 0, p_time, p_seq,
                              'exchange:' || gen_random_uuid(), NULL, 'PositionReport', p_trace, p_event_id);
        e.target := st;
        st := pm.ledger_insert(pos, e);
        INSERT INTO pm.exchange_state (position_id, leg, updated_time, seq, size, avg_price, mark_price,
                                       unrealized_pnl, realized_pnl)
        VALUES (pos.id, p_leg, p_time, coalesce(p_seq, -1), p_size, p_avg, p_mark, p_unrealized, p_realized);
        RETURN jsonb_build_object('status', 'applied', 'reason', 'created from the exchange report',
            'position', pm.image_json(pm.write_state(pos, st, 'exchange', 'created', p_trace, NULL,
                                                     jsonb_build_object('leg', p_leg, 'size', pm.dec(p_size)),
                                                     CASE WHEN p_mark > 0 THEN p_mark END, v_at,
                                                     CASE WHEN p_leg = 0 THEN p_unrealized END)));
    END IF;

    SELECT * INTO es FROM pm.exchange_state WHERE position_id = pos.id AND leg = p_leg;
    IF FOUND AND (p_time, coalesce(p_seq, -1)) <= (es.updated_time, es.seq) THEN
        PERFORM pm.bump('exchange_stale_events');
        RETURN jsonb_build_object('status', 'stale',
            'reason', format('%s/%s leg %s: report of %s (seq %s) is not newer than %s (seq %s)', p_asset, v_mode, p_leg,
                             pm.iso(p_time), coalesce(p_seq, -1), pm.iso(es.updated_time), es.seq));
    END IF;

    st := pm.state_of(pos);
    ours := CASE p_leg WHEN 0 THEN st.size WHEN 1 THEN st.long_size ELSE st.short_size END;
    our_avg := CASE p_leg WHEN 0 THEN st.avg_price WHEN 1 THEN st.long_avg ELSE st.short_avg END;

    -- size: never overwritten; a difference is recorded once per reported value
    IF abs(ours - p_size) > thr_size AND es.discrepancy_size IS DISTINCT FROM p_size THEN
        discrepancy := pm.record_discrepancy(pos, CASE p_leg WHEN 0 THEN 'size' WHEN 1 THEN 'long_size' ELSE 'short_size' END,
                                             ours, p_size, 'exchange', 'exchange_event', p_trace);
        PERFORM pm.bump('exchange_size_discrepancies');
    END IF;

    INSERT INTO pm.exchange_state AS x (position_id, leg, updated_time, seq, size, avg_price, mark_price,
                                        unrealized_pnl, realized_pnl, discrepancy_size, received_at)
    VALUES (pos.id, p_leg, p_time, coalesce(p_seq, -1), p_size, p_avg, p_mark, p_unrealized, p_realized,
            CASE WHEN abs(ours - p_size) > thr_size THEN p_size END, now())
    ON CONFLICT (position_id, leg) DO UPDATE
       SET updated_time = excluded.updated_time, seq = excluded.seq, size = excluded.size,
           avg_price = excluded.avg_price, mark_price = excluded.mark_price,
           unrealized_pnl = excluded.unrealized_pnl, realized_pnl = excluded.realized_pnl,
           discrepancy_size = excluded.discrepancy_size, received_at = excluded.received_at;

    -- average: adopted from the exchange when configured and it differs by more than the threshold
    -- (coalesce: a report without an average gives NULL here, which must mean "no", not "unknown")
    adopt_avg := coalesce(pm.setting('use_ws_avg_price', 'true')::boolean AND p_avg > 0 AND ours <> 0
                          AND (our_avg IS NULL OR abs(p_avg - our_avg) / our_avg > thr_avg), false);
    IF adopt_avg THEN
        e := pm.new_execution('avg_correction', 'exchange', p_leg, NULL, NULL, round(p_avg, 8), 0, p_time, p_seq,
                              'exchange:' || gen_random_uuid(), NULL, 'PositionReport', p_trace, p_event_id);
        st := pm.ledger_insert(pos, e);
    END IF;

    new_price := CASE WHEN p_mark > 0 THEN round(p_mark, 8) ELSE pos.current_price END;
    new_unrealized := CASE WHEN p_leg = 0 AND p_unrealized IS NOT NULL AND NOT pm.is_flat(st) THEN round(p_unrealized, 8)
                           ELSE pm.unrealized(st, v_mode, new_price, pos.unrealized_pnl) END;

    IF NOT adopt_avg AND new_price IS NOT DISTINCT FROM pos.current_price
       AND new_unrealized IS NOT DISTINCT FROM pos.unrealized_pnl THEN
        -- nothing changed (Bybit repeats positions on every order create/amend/cancel): keep the
        -- price fresh, do not bump version, no audit, no event
        IF p_mark > 0 THEN
            PERFORM pm.own_writes(true);
            UPDATE public.positions SET price_updated_at = greatest(price_updated_at, v_at) WHERE id = pos.id;
            PERFORM pm.own_writes(false);
        END IF;
        RETURN jsonb_build_object('status', 'ignored', 'reason', 'no change')
               || CASE WHEN discrepancy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('discrepancy', discrepancy) END;
    END IF;

    RETURN jsonb_build_object('status', 'applied',
        'position', pm.image_json(pm.write_state(pos, st, 'exchange', CASE WHEN adopt_avg THEN 'avg_price' ELSE 'price' END,
                                                 p_trace, NULL,
                                                 jsonb_build_object('leg', p_leg, 'mark_price', pm.dec(p_mark),
                                                                    'avg_price', pm.dec(p_avg), 'size', pm.dec(p_size)),
                                                 CASE WHEN p_mark > 0 THEN round(p_mark, 8) END, v_at, new_unrealized)))
           || CASE WHEN discrepancy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('discrepancy', discrepancy) END;
END
$$;
COMMENT ON FUNCTION pm.apply_exchange_report(text, smallint, numeric, numeric, numeric, numeric, numeric, timestamptz, bigint, text, text) IS
    'pm.apply_exchange_report(asset, leg, size (signed for leg 0, leg size for 1/2), avg, mark, unrealized, realized, time, seq, trace, event id) -> result jsonb. Rules of the contract: stale unless newer by (time, seq); price from mark; average adopted over the threshold (as an avg_correction ledger row); size never overwritten, a difference recorded in pm.discrepancies; unknown position created from the report (as a correction ledger row); no change -> no version bump. Locks the position row.';

-- pm.apply_position_event(message) -> jsonb
-- PUBLIC: any exchange position message body, applied in the caller's transaction.
CREATE OR REPLACE FUNCTION pm.apply_position_event(p_event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    trace text;
    event_id text;
    env_time timestamptz;
    rec record;
    r record;
    results jsonb := '[]'::jsonb;
BEGIN
    -- (the ws-gateway envelope has a topic too: payload decides)
    IF jsonb_typeof(p_event) = 'object' AND (p_event ? 'payload' OR NOT p_event ? 'topic') THEN
        trace := pm.j_text(p_event, 'trace_id', 'trace_id');
        event_id := coalesce(pm.j_text(p_event, 'event_id', 'event_id'), pm.j_text(p_event, 'id', 'id'));
        env_time := pm.j_time(p_event, 'timestamp', 'timestamp');
        IF p_event ? 'payload' THEN
            -- the ws-gateway envelope (or the spec shape): one record in payload
            IF p_event ? 'event_type' AND pm.j_text(p_event, 'event_type', 'event_type') <> 'position' THEN
                PERFORM pm.bad_input('event_type', format('expected position, got %s', left(p_event ->> 'event_type', 40)));
            END IF;
            r := pm.parse_position_record(p_event -> 'payload', 'payload', env_time);
        ELSIF p_event ? 'symbol' THEN
            r := pm.parse_position_record(p_event, 'position', env_time);   -- one Bybit record
        ELSE
            PERFORM pm.bad_input('event', 'not a position event: expected payload (ws-gateway), topic/data (Bybit) or symbol');
        END IF;
        RETURN pm.apply_exchange_report(r.asset, r.leg, r.size, r.avg_price, r.mark_price, r.unrealized_pnl,
                                        r.realized_pnl, r.at, r.seq, trace, event_id);
    END IF;
    -- a Bybit position message (topic/data) or a bare array of records
    FOR rec IN SELECT * FROM pm.bybit_records(p_event, 'position') LOOP
        r := pm.parse_position_record(rec.rec, rec.path, rec.envelope_time);
        results := results || jsonb_build_array(
            pm.apply_exchange_report(r.asset, r.leg, r.size, r.avg_price, r.mark_price, r.unrealized_pnl,
                                     r.realized_pnl, r.at, r.seq, rec.trace_id, rec.event_id));
    END LOOP;
    RETURN pm.combine_results(results);
END
$$;
COMMENT ON FUNCTION pm.apply_position_event(jsonb) IS
    'pm.apply_position_event(message body) -> {"status": applied|stale|ignored, "reason"?, "position"?, "discrepancy"?, "results"?}: parses any exchange position shape (the ws-gateway envelope with payload, the spec shape, a raw Bybit position message or record, or an array of records) and applies it in the caller''s transaction (pm.apply_exchange_report per record). Invalid input raises 22023 (or another 22xxx) naming the field; a message is applied wholly or not at all.';

-- pm.set_prices({"SYMBOL": "price"}, source, trace, actor) -> jsonb
-- Prices from other sources (bin/refresh-prices, POST /api/v1/prices), all validated before any write.
CREATE OR REPLACE FUNCTION pm.set_prices(p_prices jsonb, p_source text DEFAULT 'manual', p_trace text DEFAULT NULL,
                                         p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    price numeric;
    pos public.positions;
    updated integer := 0;
    unchanged integer := 0;
    unknown jsonb := '[]'::jsonb;
    prices jsonb := '{}'::jsonb;
BEGIN
    IF jsonb_typeof(p_prices) IS DISTINCT FROM 'object' THEN
        PERFORM pm.bad_input('prices', 'expected an object {"SYMBOL": "price", ...}');
    END IF;
    IF p_source NOT IN ('exchange', 'manual', 'validation', 'order_execution') THEN
        PERFORM pm.bad_input('source', format('unknown update source %s', p_source));
    END IF;
    -- validate everything first: one bad price rejects the whole call
    FOR k IN SELECT jsonb_object_keys(p_prices) LOOP
        price := pm.positive(pm.j_num(p_prices, k, k), k);
        IF round(price, 8) = 0 THEN
            PERFORM pm.bad_input(k, format('%s is below the smallest price 0.00000001', price));
        END IF;
        prices := prices || jsonb_build_object(pm.norm_symbol(k, k), round(price, 8));
    END LOOP;
    FOR k IN SELECT jsonb_object_keys(prices) ORDER BY 1 LOOP
        price := (prices ->> k)::numeric;
        IF NOT EXISTS (SELECT 1 FROM public.positions WHERE asset = k) THEN
            unknown := unknown || to_jsonb(k);
            CONTINUE;
        END IF;
        FOR pos IN SELECT * FROM public.positions WHERE asset = k ORDER BY mode FOR NO KEY UPDATE LOOP
            -- the unrealized PnL at this price goes into DECIMAL(20,8): say so rather than overflow
            IF abs(pm.unrealized(pm.state_of(pos), pos.mode, price, 0)) >= 1e12 THEN
                PERFORM pm.bad_input(k, format('at %s the unrealized PnL of %s/%s would be beyond 10^12', pm.dec(price),
                                               pos.asset, pos.mode));
            END IF;
            IF pos.current_price = price THEN
                PERFORM pm.own_writes(true);
                UPDATE public.positions SET price_updated_at = pm.now_utc() WHERE id = pos.id;
                PERFORM pm.own_writes(false);
                unchanged := unchanged + 1;
                CONTINUE;
            END IF;
            PERFORM pm.write_state(pos, pm.state_of(pos), p_source, 'price', p_trace, p_actor,
                                   jsonb_build_object('price', pm.dec(price), 'previous', pm.dec(pos.current_price)),
                                   price);
            updated := updated + 1;
        END LOOP;
    END LOOP;
    RETURN jsonb_build_object('updated', updated, 'unchanged', unchanged, 'unknown', unknown);
END
$$;
COMMENT ON FUNCTION pm.set_prices(jsonb, text, text, text) IS
    'pm.set_prices({"SYMBOL": "price"}, source, trace, actor) -> {"updated", "unchanged", "unknown": [symbols without a position]}: sets current_price of every position of each symbol, recomputes unrealized PnL, bumps version, audits and emits position_updated; an unchanged price only refreshes price_updated_at. Validates all prices first (22023 naming the symbol; nothing written); 22023 naming the symbol too when the unrealized PnL of one of its positions at that price would not fit DECIMAL(20,8) (10^12). Locks the rows in (asset, mode) order.';

-- pm.stale_price_assets() -> SETOF text
-- Symbols of open positions whose price is missing or stale.
CREATE OR REPLACE FUNCTION pm.stale_price_assets() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT v.asset FROM pm.v_positions v WHERE v.is_open AND v.price_is_stale ORDER BY 1
$$;
COMMENT ON FUNCTION pm.stale_price_assets() IS
    'pm.stale_price_assets() -> symbols of open positions whose price is missing or older than pm.price_staleness_threshold seconds (default 300). Read only.';
