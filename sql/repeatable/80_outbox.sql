-- The transactional outbox: rendering an event's message body, the relay's claim and mark, the
-- coalesced portfolio_updated event, and the live stream's reads. Every position change appends its
-- position_updated row in the same transaction as the change (pm.write_state); the relay publishes
-- rows afterwards, so a crash can duplicate an event but never lose one.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.outbox_notify() -> trigger
-- NOTIFY pm_outbox once per transaction that inserts: the relay and the live stream wake on it instead of polling.
CREATE OR REPLACE FUNCTION pm.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    done text;
BEGIN
    -- (assignments, evaluated as simple expressions: PERFORM would start an executor per call)
    done := pg_notify('pm_outbox', '')::text;
    -- the trigger's WHEN skips the call for the transaction's later inserts (a subtransaction that
    -- rolls back takes this setting back with its notification)
    done := set_config('pm.outbox_notified', pg_current_xact_id()::text, true);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.outbox_notify() IS
    'Trigger (AFTER INSERT ON pm.outbox, per statement, WHEN the transaction has not notified yet): NOTIFY pm_outbox, delivered at commit, and marks the transaction as notified (the transaction-local setting pm.outbox_notified = its id), so that its later inserts skip the call. PostgreSQL delivers one notification per transaction anyway (same channel and payload); a subtransaction that rolls back takes back both.';

DROP TRIGGER IF EXISTS outbox_notify ON pm.outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON pm.outbox FOR EACH STATEMENT
    WHEN (current_setting('pm.outbox_notified', true) IS DISTINCT FROM pg_current_xact_id()::text)
    EXECUTE FUNCTION pm.outbox_notify();

-- pm.outbox_body(outbox row) -> jsonb
-- The message body of an event: the stored payload, or the Position rendered from the image as of the change.
CREATE OR REPLACE FUNCTION pm.outbox_body(o pm.outbox) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(o.payload,
                    pm.position_json(pm.image_position(o.image, o.created_at AT TIME ZONE 'UTC'), false)
                    || jsonb_build_object('event_type', o.event_type, 'update_source', o.source, 'trace_id', o.trace_id,
                                          'timestamp', pm.iso(o.created_at)))
           || jsonb_build_object('event_id', o.event_id)
$$;
COMMENT ON FUNCTION pm.outbox_body(pm.outbox) IS
    'pm.outbox_body(outbox row) -> the message body of the event (position_size_norm aside): the stored payload, or for a change stored as an image (pm.write_state) the Position as it was after the change (time_held_minutes and price_is_stale as of created_at, the time of the change) with event_type, update_source, trace_id and timestamp; event_id always from the row. Read only.';

-- pm.event_body(outbox row) -> jsonb
-- The message body subscribers get: pm.outbox_body, and for position_updated avg_price and the metadata as of now.
--
-- The image of a change keeps the accounting state, not the operator's metadata (stop_loss,
-- take_profit, strategy, notes): they are read from pm.position_meta when the event goes out, so
-- an event carries the metadata current at its publication (a metadata change emits its own
-- position_updated). avg_price repeats average_entry_price under the name model-service reads.
CREATE OR REPLACE FUNCTION pm.event_body(o pm.outbox) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    body jsonb := pm.outbox_body(o);
    m pm.position_meta;
BEGIN
    -- PL/pgSQL, not SQL: a SQL function with a FROM clause is not inlined and cost the relay 18x
    -- the rendering itself; this costs one index lookup more than pm.outbox_body
    IF o.event_type <> 'position_updated' THEN
        RETURN body;
    END IF;
    SELECT * INTO m FROM pm.position_meta p WHERE p.position_id = o.position_id;
    RETURN body || jsonb_build_object('avg_price', body -> 'average_entry_price',
                                      'stop_loss', pm.dec(m.stop_loss), 'take_profit', pm.dec(m.take_profit),
                                      'strategy', m.strategy, 'notes', m.notes);
END
$$;
COMMENT ON FUNCTION pm.event_body(pm.outbox) IS
    'pm.event_body(outbox row) -> the body published to subscribers (relay, live stream): pm.outbox_body, and for position_updated also avg_price (= average_entry_price, the name model-service reads) and the operator metadata stop_loss, take_profit, strategy, notes as they are at publication (from pm.position_meta; null when unset). The audit history (pm.position_history) keeps pm.outbox_body, the state as of the change. Read only.';

-- pm.with_size_norm(body, total exposure) -> jsonb
-- A position_updated body with position_size_norm against the portfolio's total exposure (at publication).
CREATE OR REPLACE FUNCTION pm.with_size_norm(p_body jsonb, p_total_exposure numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_body || jsonb_build_object('position_size_norm',
                                        pm.dec(round((p_body ->> 'exposure_usdt')::numeric / nullif(p_total_exposure, 0), 8)))
$$;
COMMENT ON FUNCTION pm.with_size_norm(jsonb, numeric) IS
    'pm.with_size_norm(position_updated body, total exposure of the portfolio) -> the body with position_size_norm = exposure_usdt / total exposure, rounded to 8 decimals (null when either is unknown or zero). The relay and the live stream fill it in when they send an event, against the total of that moment. Pure.';

-- pm.outbox_claim(limit) -> rows
-- The oldest unpublished events, locked SKIP LOCKED, with their bodies (position_size_norm at publish time).
CREATE OR REPLACE FUNCTION pm.outbox_claim(p_limit integer)
RETURNS TABLE (id bigint, event_id uuid, event_type text, trace_id text, payload jsonb)
LANGUAGE sql AS $$
    WITH claimed AS (
        SELECT o.id, o.event_id, o.event_type, o.trace_id, pm.event_body(o) AS body
          FROM pm.outbox o
         WHERE o.published_at IS NULL
         ORDER BY o.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), total AS (
        SELECT nullif(sum(v.exposure_usdt), 0) AS exposure FROM pm.v_positions v WHERE v.exposure_usdt IS NOT NULL
    )
    SELECT c.id, c.event_id, c.event_type, c.trace_id,
           CASE WHEN c.event_type = 'position_updated' THEN pm.with_size_norm(c.body, t.exposure) ELSE c.body END
      FROM claimed c CROSS JOIN total t
     ORDER BY c.id
$$;
COMMENT ON FUNCTION pm.outbox_claim(integer) IS
    'pm.outbox_claim(limit) -> the oldest unpublished outbox rows with the message body to publish (pm.event_body; for position_updated plus position_size_norm against the portfolio total at publish time), locked FOR UPDATE SKIP LOCKED (two relays never take the same row). Publish them, call pm.outbox_mark_published in the same transaction, commit: a crash before the commit publishes them again (duplicate), never loses one.';

-- pm.outbox_mark_published(ids) -> integer
-- After the broker confirmed them; marks the portfolio dirty when positions changed.
CREATE OR REPLACE FUNCTION pm.outbox_mark_published(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    changes integer;
BEGIN
    WITH u AS (UPDATE pm.outbox SET published_at = now() WHERE id = ANY (p_ids) AND published_at IS NULL
               RETURNING event_type)
    SELECT count(*), count(*) FILTER (WHERE event_type = 'position_updated') INTO n, changes FROM u;
    IF changes > 0 THEN
        UPDATE pm.portfolio_event_state SET dirty = true WHERE id = 1 AND NOT dirty;
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION pm.outbox_mark_published(bigint[]) IS
    'pm.outbox_mark_published(ids) -> rows marked: sets published_at on those not yet published; when position changes were among them, marks the portfolio dirty for pm.enqueue_portfolio_event.';

-- pm.enqueue_portfolio_event(min interval seconds, trace) -> boolean
-- One coalesced portfolio_updated event, when positions changed and the interval elapsed.
CREATE OR REPLACE FUNCTION pm.enqueue_portfolio_event(p_min_interval_seconds numeric, p_trace text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s pm.portfolio_event_state;
BEGIN
    SELECT * INTO s FROM pm.portfolio_event_state WHERE id = 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR NOT s.dirty
       OR (s.last_emitted_at IS NOT NULL AND now() - s.last_emitted_at < make_interval(secs => p_min_interval_seconds::double precision)) THEN
        RETURN false;
    END IF;
    INSERT INTO pm.outbox (event_type, action, trace_id, payload)
    VALUES ('portfolio_updated', 'portfolio', p_trace,
            pm.portfolio_json(NULL) || jsonb_build_object('event_type', 'portfolio_updated', 'trace_id', p_trace,
                                                          'timestamp', pm.iso(now())));
    UPDATE pm.portfolio_event_state
       SET last_emitted_at = now(), dirty = false,
           last_change_id = coalesce((SELECT o.id FROM pm.outbox o WHERE o.event_type = 'position_updated'
                                       ORDER BY o.id DESC LIMIT 1), 0)
     WHERE id = 1;
    RETURN true;
END
$$;
COMMENT ON FUNCTION pm.enqueue_portfolio_event(numeric, text) IS
    'pm.enqueue_portfolio_event(min interval seconds, trace) -> true when it enqueued one portfolio_updated event: only if position changes were published since the last one (pm.outbox_mark_published marks them) and the interval has elapsed (coalescing, the contract). Called by the relay after publishing, never on a read.';

-- pm.stream_head() -> bigint
-- Where a new live stream starts: the newest outbox id.
CREATE OR REPLACE FUNCTION pm.stream_head() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT o.id FROM pm.outbox o ORDER BY o.id DESC LIMIT 1), 0)
$$;
COMMENT ON FUNCTION pm.stream_head() IS
    'pm.stream_head() -> the newest outbox id (0 when empty): a live stream without Last-Event-ID starts after it. Read only, cheap (primary key backwards).';

-- pm.stream_kind(outbox row) -> text
-- The live stream's type of a position change: position_created, position_closed or position_updated.
CREATE OR REPLACE FUNCTION pm.stream_kind(o pm.outbox) RETURNS text
LANGUAGE sql STABLE AS $$
    -- open before and after, from the change before it (rows of old releases keep a payload, not an image)
    SELECT CASE WHEN NOT coalesce(b.was_open, false) AND a.now_open THEN 'position_created'
                WHEN b.was_open AND NOT a.now_open THEN 'position_closed'
                ELSE 'position_updated' END
      FROM (SELECT coalesce(pm.pos_is_open((o.image).size, (o.image).long_size, (o.image).short_size),
                            (o.payload ->> 'is_open')::boolean) AS now_open) a
      LEFT JOIN LATERAL (
          SELECT coalesce(pm.pos_is_open((p.image).size, (p.image).long_size, (p.image).short_size),
                          (p.payload ->> 'is_open')::boolean) AS was_open
            FROM pm.outbox p
           WHERE p.position_id = o.position_id AND p.id < o.id AND p.event_type = 'position_updated'
           ORDER BY p.id DESC LIMIT 1) b ON true
$$;
COMMENT ON FUNCTION pm.stream_kind(pm.outbox) IS
    'pm.stream_kind(position_updated outbox row) -> position_created (open after this change, flat or unknown before: the position''s previous change in the outbox, along its (position_id, id) index), position_closed (open before, flat after) or position_updated. A one-way flip is an update. Read only.';

-- pm.stream_price_fields(body) -> jsonb
-- What a price_update event says of one position: its price and the figures that move with it.
CREATE OR REPLACE FUNCTION pm.stream_price_fields(p_body jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('id', p_body -> 'id', 'asset', p_body -> 'asset', 'mode', p_body -> 'mode',
                              'version', p_body -> 'version', 'current_price', p_body -> 'current_price',
                              'price_updated_at', p_body -> 'price_updated_at', 'price_is_stale', p_body -> 'price_is_stale',
                              'unrealized_pnl', p_body -> 'unrealized_pnl', 'unrealized_pnl_pct', p_body -> 'unrealized_pnl_pct',
                              'exposure_usdt', p_body -> 'exposure_usdt', 'position_size_norm', p_body -> 'position_size_norm')
$$;
COMMENT ON FUNCTION pm.stream_price_fields(jsonb) IS
    'pm.stream_price_fields(position_updated body) -> {id, asset, mode, version, current_price, price_updated_at, price_is_stale, unrealized_pnl, unrealized_pnl_pct, exposure_usdt, position_size_norm}: one position in a price_update event. Pure.';

-- pm.stream_price_event(id, prices, positions, timestamp) -> jsonb
-- One price_update event of the live stream: a run of consecutive price changes, coalesced.
CREATE OR REPLACE FUNCTION pm.stream_price_event(p_id bigint, p_prices jsonb, p_positions jsonb, p_timestamp jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('id', p_id, 'event', 'price_update', 'data', jsonb_build_object(
               'event_type', 'price_update', 'prices', p_prices,
               'positions', (SELECT coalesce(jsonb_agg(x.value ORDER BY x.value ->> 'asset', x.value ->> 'mode'), '[]'::jsonb)
                               FROM jsonb_each(p_positions) x),
               'timestamp', p_timestamp))
$$;
COMMENT ON FUNCTION pm.stream_price_event(bigint, jsonb, jsonb, jsonb) IS
    'pm.stream_price_event(id of the newest change in it, {symbol: price}, {position id: pm.stream_price_fields}, timestamp of the newest change) -> {"id", "event": "price_update", "data": {"event_type", "prices", "positions" (by asset, mode), "timestamp"}}. Pure.';

-- pm.stream_fetch(after, limit, hold, grace, assets) -> jsonb
-- The next live-stream events after an outbox id, typed and filtered, never skipping one a transaction in flight will commit.
--
-- Outbox ids come from a sequence, so they are taken in one order and committed in another: id 11
-- can be visible while id 10 is still being written. A reader that moved past 11 would never see
-- 10. So a gap stops the read, and the caller gets a "hold": the newest visible id h and the xmax
-- of a snapshot taken after reading it. Every missing id below h was taken before that snapshot,
-- by a transaction that had finished then or was in progress (its xid below xmax). Once the
-- oldest running transaction is at or above xmax, those gaps are final (committed rows are now
-- visible, the rest were rolled back) and reading continues past them. A hold older than
-- p_grace_seconds is given up (a session idle in a transaction must not stall every stream).
-- Non-position outbox rows, and rows of other assets, move the cursor but are not returned. Price
-- changes (action price) that follow each other, other rows aside, become one price_update event
-- with the id of the newest.
CREATE OR REPLACE FUNCTION pm.stream_fetch(p_after bigint, p_limit integer DEFAULT 500, p_hold jsonb DEFAULT NULL,
                                           p_grace_seconds numeric DEFAULT 10, p_assets text[] DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_cursor bigint := p_after;
    v_hold_id bigint := (p_hold ->> 'id')::bigint;
    v_hold_xmax xid8 := (p_hold ->> 'xmax')::xid8;
    v_hold_since timestamptz := (p_hold ->> 'since')::timestamptz;
    -- decided BEFORE the rows are read: a transaction that finished before this point is
    -- visible to the read below
    v_resolved boolean := v_hold_id IS NOT NULL
        AND (pg_snapshot_xmin(pg_current_snapshot()) >= v_hold_xmax
             OR clock_timestamp() - v_hold_since > make_interval(secs => p_grace_seconds::double precision));
    v_events jsonb := '[]'::jsonb;
    v_newest bigint;
    v_total numeric;
    v_total_known boolean := false;
    v_body jsonb;
    v_kind text;
    -- the price run being coalesced
    v_run_id bigint;
    v_run_prices jsonb := '{}'::jsonb;
    v_run_positions jsonb := '{}'::jsonb;
    v_run_time jsonb;
    o pm.outbox;
BEGIN
    IF p_after IS NULL OR p_after < 0 THEN
        PERFORM pm.bad_input('last_event_id', format('must be an outbox id >= 0, got %s', coalesce(p_after::text, 'nothing')));
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        PERFORM pm.bad_input('limit', format('must be between 1 and 10000, got %s', coalesce(p_limit::text, 'nothing')));
    END IF;
    FOR o IN SELECT * FROM pm.outbox x WHERE x.id > p_after ORDER BY x.id LIMIT p_limit LOOP
        IF o.id > v_cursor + 1 AND NOT (v_resolved AND o.id <= v_hold_id) THEN
            IF v_hold_id IS NULL OR v_resolved THEN
                -- a new gap: hold at the newest visible id, then take the snapshot
                SELECT max(x.id) INTO v_newest FROM pm.outbox x;
                v_hold_id := v_newest;
                v_hold_xmax := pg_snapshot_xmax(pg_current_snapshot());
                v_hold_since := clock_timestamp();
            END IF;
            IF v_run_id IS NOT NULL THEN
                v_events := v_events || pm.stream_price_event(v_run_id, v_run_prices, v_run_positions, v_run_time);
            END IF;
            RETURN jsonb_build_object('events', v_events, 'cursor', v_cursor,
                'hold', jsonb_build_object('id', v_hold_id, 'xmax', v_hold_xmax::text, 'since', v_hold_since));
        END IF;
        v_cursor := o.id;
        CONTINUE WHEN o.event_type <> 'position_updated' OR NOT (p_assets IS NULL OR o.asset = ANY (p_assets));
        IF NOT v_total_known THEN   -- once per call, and only when there is an event to send
            SELECT nullif(sum(v.exposure_usdt), 0) INTO v_total FROM pm.v_positions v WHERE v.exposure_usdt IS NOT NULL;
            v_total_known := true;
        END IF;
        v_body := pm.with_size_norm(pm.event_body(o), v_total);
        IF o.action = 'price' THEN
            v_run_id := o.id;
            v_run_prices := v_run_prices || jsonb_build_object(o.asset, v_body -> 'current_price');
            v_run_positions := v_run_positions || jsonb_build_object(o.position_id::text, pm.stream_price_fields(v_body));
            v_run_time := v_body -> 'timestamp';
            CONTINUE;
        END IF;
        IF v_run_id IS NOT NULL THEN
            v_events := v_events || pm.stream_price_event(v_run_id, v_run_prices, v_run_positions, v_run_time);
            v_run_id := NULL; v_run_prices := '{}'::jsonb; v_run_positions := '{}'::jsonb;
        END IF;
        v_kind := pm.stream_kind(o);
        v_events := v_events || jsonb_build_object('id', o.id, 'event', v_kind,
                                                   'data', v_body || jsonb_build_object('event_type', v_kind));
    END LOOP;
    IF v_run_id IS NOT NULL THEN
        v_events := v_events || pm.stream_price_event(v_run_id, v_run_prices, v_run_positions, v_run_time);
    END IF;
    RETURN jsonb_build_object('events', v_events, 'cursor', v_cursor,
        'hold', CASE WHEN v_hold_id IS NOT NULL AND NOT v_resolved AND v_cursor < v_hold_id
                     THEN jsonb_build_object('id', v_hold_id, 'xmax', v_hold_xmax::text, 'since', v_hold_since) END);
END
$$;
COMMENT ON FUNCTION pm.stream_fetch(bigint, integer, jsonb, numeric, text[]) IS
    'pm.stream_fetch(after outbox id, limit 1..10000, hold or NULL, grace seconds, assets or NULL) -> {"events": [{"id", "event", "data"}], "cursor", "hold"}: the position changes with id > after in id order, of the given symbols (NULL: all), stopping at a gap that a transaction in flight may still fill; pass cursor and hold back on the next call (poll soon while hold is not null). A gap is final once every transaction running when it was seen has ended, or after grace seconds. event: position_created, position_updated or position_closed (pm.stream_kind), data the published body (pm.event_body, position_size_norm against the total exposure of this call) with that event_type; consecutive price changes (action price) as one price_update (pm.stream_price_event: the newest price per symbol and figures per position, the id of the newest change). Read only, no locks. Errors: 22023 for a negative after or a bad limit.';

-- pm.stream_start(assets, grace) -> jsonb
-- Where a live stream without Last-Event-ID starts, and the open positions as of then (its initial_data).
CREATE OR REPLACE FUNCTION pm.stream_start(p_assets text[] DEFAULT NULL, p_grace_seconds numeric DEFAULT 2)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_head bigint := pm.stream_head();
    -- a transaction that holds an outbox id up to the head and has not ended inserted into
    -- pm.outbox, so it holds ROW EXCLUSIVE on it (taken before the id): these writers, read after
    -- the head, are all such transactions that can still commit
    v_writers text[] := ARRAY(SELECT DISTINCT l.virtualtransaction FROM pg_locks l
                               WHERE l.locktype = 'relation' AND l.relation = 'pm.outbox'::regclass
                                 AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                                 AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid());
    v_deadline timestamptz := clock_timestamp() + make_interval(secs => p_grace_seconds::double precision);
    v_positions jsonb;
BEGIN
    -- wait until they have ended, so that the positions read below include every change up to the
    -- head; the stream goes on after the head (a change may then come twice: compare versions)
    WHILE cardinality(v_writers) > 0 AND clock_timestamp() < v_deadline
          AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.virtualtransaction = ANY (v_writers)
                                                 AND l.locktype = 'relation' AND l.relation = 'pm.outbox'::regclass) LOOP
        PERFORM pg_sleep(0.005);
    END LOOP;
    SELECT coalesce(jsonb_agg(pm.position_json(v) ORDER BY v.asset, v.mode), '[]'::jsonb) INTO v_positions
      FROM pm.v_positions v
     WHERE v.is_open AND (p_assets IS NULL OR v.asset = ANY (p_assets));
    RETURN jsonb_build_object('cursor', v_head, 'positions', v_positions);
END
$$;
COMMENT ON FUNCTION pm.stream_start(text[], numeric) IS
    'pm.stream_start(assets or NULL, grace seconds) -> {"cursor": the newest outbox id, "positions": [open Positions of those symbols, by asset and mode, position_size_norm filled]}. Waits (at most grace seconds) until the transactions that were writing pm.outbox when the cursor was read (ROW EXCLUSIVE on it, pg_locks) have ended, then reads the positions: they hold every change up to the cursor, and the stream continues after it (a change after the cursor may already show in them). Waits for nothing else (not for other tables'' or databases'' transactions). Read only.';