-- The fill ledger and its fold: a position's accounting state, the accounting step (one ledger row
-- applied to a state), inserting a row in the ledger's order (re-folding only the rows after a late
-- one), and folding a whole ledger.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.ledger_row_valid(kind, source, leg, side, qty, price) -> boolean
-- The rules every ledger row obeys: the CHECK constraint executions_row_check of pm.executions.
CREATE OR REPLACE FUNCTION pm.ledger_row_valid(p_kind text, p_source text, p_leg smallint, p_side text,
                                               p_qty numeric, p_price numeric)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN p_kind IN ('trade', 'funding', 'opening', 'correction', 'avg_correction')
       AND p_source IN ('order_execution', 'exchange', 'validation', 'manual')
       AND p_leg IN (0, 1, 2)
       AND (p_side IS NULL OR p_side IN ('Buy', 'Sell'))
       AND (p_kind <> 'trade' OR (p_side IS NOT NULL AND p_qty > 0 AND p_price > 0));
END
$$;
COMMENT ON FUNCTION pm.ledger_row_valid(text, text, smallint, text, numeric, numeric) IS
    'pm.ledger_row_valid(kind, source, leg, side, qty, price) -> whether a ledger row obeys the rules of pm.executions: kind trade|funding|opening|correction|avg_correction, source order_execution|exchange|validation|manual, leg 0|1|2, side NULL|Buy|Sell, and a trade has a side and a positive quantity and price (NULL where a CHECK passes on NULL). The CHECK constraint executions_row_check calls it: one call costs an insert less than the stored expressions of five constraints, which PostgreSQL reads anew for every writing statement (0091). Changing the rules needs a numbered migration that re-validates the ledger. Pure.';

-- the constraint (the five it replaces are dropped by 0091; added here, after the function, and
-- checked against every row already in the ledger)
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'pm.executions'::regclass
                                                 AND conname = 'executions_row_check') THEN
        ALTER TABLE pm.executions ADD CONSTRAINT executions_row_check
            CHECK (pm.ledger_row_valid(kind, source, leg, side, qty, price));
    END IF;
END
$$;

-- pm.zero_state(mode) -> pm.pos_state
-- The state of a position before any ledger row.
CREATE OR REPLACE FUNCTION pm.zero_state(p_mode text) RETURNS pm.pos_state
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_mode = 'hedge'
                THEN ROW(0, NULL, 0, NULL, 0, NULL, 0, NULL, NULL)::pm.pos_state
                ELSE ROW(0, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)::pm.pos_state END
$$;
COMMENT ON FUNCTION pm.zero_state(text) IS 'pm.zero_state(mode) -> the state of a position before any ledger row.';

-- pm.state_of(positions row) -> pm.pos_state
-- The accounting state a stored position row holds.
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

-- pm.is_flat(state) -> boolean
-- True when the size and both legs are zero.
CREATE OR REPLACE FUNCTION pm.is_flat(st pm.pos_state) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(st.size, 0) = 0 AND coalesce(st.long_size, 0) = 0 AND coalesce(st.short_size, 0) = 0
$$;
COMMENT ON FUNCTION pm.is_flat(pm.pos_state) IS 'pm.is_flat(state) -> true when the size and both legs are zero.';

-- pm.step(state, mode, ledger row, label) -> pm.pos_state
-- THE accounting step: one ledger row (trade, funding, opening, correction) applied to a state. Pure.
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
    'pm.step(state, mode, ledger row, label) -> state after the row: add/reduce/flip with average price and realized PnL, fees, funding, opening balances and corrections; hedge legs. Pure. Raises 22023 when a hedge leg would go below zero. Averages and realized PnL are rounded to 8 decimals, the scale of the shared tables.';

-- pm.unrealized(state, mode, price, previous) -> numeric
-- Unrealized PnL at a price: 0 when flat, the previous value when no price is known.
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
    'pm.unrealized(state, mode, price, previous) -> unrealized PnL: 0 when flat, previous when no price is known.';

-- pm.with_state(positions row, state) -> positions row
-- The row (in memory only) carrying the state's size, averages, realized PnL and holding times.
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

-- pm.ledger_insert(locked position, ledger row, newest time, newest sequence) -> pm.pos_state
-- Inserts a row in the ledger's order, once per key; a late row re-folds only the rows after it.
-- The order: execution time, then exchange sequence, then arrival (rows sharing a time and a
-- sequence stay in the order they were applied, so such a row is never late).
CREATE OR REPLACE FUNCTION pm.ledger_insert(p_pos public.positions, e pm.executions,
                                            p_newest_time timestamptz DEFAULT NULL, p_newest_seq bigint DEFAULT NULL)
RETURNS pm.pos_state
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
    IF (e.exec_time, e.seq) > (p_newest_time, p_newest_seq) THEN
        -- the caller holds the lock and knows the ledger's newest row (pm.apply_batch: the one it
        -- applied before, or read): this row comes strictly after it, so it is neither late nor in
        -- this position's ledger already, and nothing is read before the insert (the key applied
        -- to another position is caught by the insert itself)
        v_late := false;
    ELSE
        -- one statement: the newest row of this position's ledger, and whether the key was applied
        -- before (to any position). Read after the row lock, so a writer that held it is visible.
        SELECT n.exec_time, n.seq, n.exec_key, EXISTS (SELECT 1 FROM pm.executions d WHERE d.exec_key = e.exec_key)
          INTO l_time, l_seq, l_key, v_dup
          FROM (VALUES (1)) one
          LEFT JOIN LATERAL (SELECT x.exec_time, x.seq, x.exec_key FROM pm.executions x WHERE x.position_id = p_pos.id
                              ORDER BY x.exec_time DESC, x.seq DESC, x.arrival DESC, x.exec_key DESC LIMIT 1) n ON true;
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

        -- late: older than the newest row by time or sequence; a row of the newest one's time and
        -- sequence goes after it (arrival order) and is not late
        v_late := l_key IS NOT NULL AND (e.exec_time, e.seq) < (l_time, l_seq);
    END IF;
    IF NOT v_late THEN
        -- in order: the stored position is the state before this row
        st := pm.step(pm.state_of(p_pos), p_pos.mode, e, v_label);
    ELSE
        -- late: start from the state after the last row at or before its time and sequence
        st := pm.step(coalesce((SELECT x.state_after FROM pm.executions x
                                 WHERE x.position_id = p_pos.id AND (x.exec_time, x.seq) <= (e.exec_time, e.seq)
                                 ORDER BY x.exec_time DESC, x.seq DESC, x.arrival DESC, x.exec_key DESC LIMIT 1),
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
        -- re-fold every row after its time and sequence
        FOR r IN SELECT * FROM pm.executions x
                  WHERE x.position_id = p_pos.id AND (x.exec_time, x.seq) > (e.exec_time, e.seq)
                  ORDER BY x.exec_time, x.seq, x.arrival, x.exec_key
        LOOP
            st := pm.step(st, p_pos.mode, r, v_label);
            UPDATE pm.executions SET state_after = st WHERE exec_key = r.exec_key;
        END LOOP;
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION pm.ledger_insert(public.positions, pm.executions, timestamptz, bigint) IS
    'pm.ledger_insert(locked position, ledger row, newest time and sequence of its ledger when the caller knows them, default NULL) -> state after the whole ledger. Places the row in the ledger''s order: execution time, then exchange sequence, then arrival (rows sharing a time and a sequence keep the order in which they were applied; the new row goes after them). A row older than the newest by time or sequence re-folds only the rows after it, so executions of distinct (time, sequence) give a state that depends on their set, not on delivery order; a row of the newest row''s time and sequence re-folds nothing. A position with state but no ledger gets an opening balance first. Returns NULL, and adds no row for it, when exec_key is in the ledger already (checked first; a concurrent delivery of the same key for another position is caught by the insert): the execution was applied before. Caller holds the row lock; raises 22023 from pm.step. Given the newest time and sequence of the ledger (the caller read or applied that row under the same lock) and a row strictly after them, nothing is read before the insert (the row cannot be in this position''s ledger; a key applied to another position is caught by the insert, after the step).';

-- pm.fold_ledger(position id) -> pm.pos_state
-- A position's whole ledger folded from scratch (ignores the stored state_after). Read only.
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
    FOR r IN SELECT * FROM pm.executions WHERE position_id = p_position_id ORDER BY exec_time, seq, arrival, exec_key LOOP
        st := pm.step(st, p_mode, r);
    END LOOP;
    RETURN st;
END
$$;
COMMENT ON FUNCTION pm.fold_ledger(uuid) IS
    'pm.fold_ledger(position id) -> the state that a fold of the whole ledger gives, from scratch (ignores stored state_after). Read only; NULL for an unknown position.';

-- pm.refold_ledger(locked position) -> pm.pos_state
-- The whole ledger folded from scratch, repairing every stored state_after that differs.
CREATE OR REPLACE FUNCTION pm.refold_ledger(p_pos public.positions) RETURNS pm.pos_state
LANGUAGE plpgsql AS $$
DECLARE
    st pm.pos_state := pm.zero_state(p_pos.mode);
    r pm.executions;
BEGIN
    FOR r IN SELECT * FROM pm.executions WHERE position_id = p_pos.id ORDER BY exec_time, seq, arrival, exec_key LOOP
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
