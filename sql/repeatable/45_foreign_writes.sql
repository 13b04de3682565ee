-- Foreign writers: public.positions is a shared table, and another service (a client with the
-- table's privileges, psql) can change a row behind this service's back. Every statement of ours
-- that writes positions is marked (pm.own_writes, around the statement); a trigger catches every
-- other change of a row, whatever the client, and makes it visible: counted (pm.counters foreign_writes),
-- recorded with the writer and the row before and after (pm.discrepancies, field foreign_write),
-- version bumped and a position_updated event in the outbox (caches and subscribers see it). The
-- ledger is not touched, so validation sees the difference and --fix restores the ledger's state.
-- Limits (docs/observability.md): the marker is a transaction-local setting holding the current
-- transaction id, set and cleared around each of our statements; a client that sets it the same way
-- on purpose, a session with session_replication_role = replica, ALTER TABLE ... DISABLE TRIGGER and
-- TRUNCATE are not caught.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.own_writes(on) -> text
-- Marks (true) or clears (false) this transaction's next statements as this service's own writes of positions.
CREATE OR REPLACE FUNCTION pm.own_writes(p_on boolean) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT set_config('pm.writer', CASE WHEN p_on THEN pg_current_xact_id()::text ELSE '' END, true)
$$;
COMMENT ON FUNCTION pm.own_writes(boolean) IS
    'pm.own_writes(on) -> the marker: with true, the transaction-local setting pm.writer is set to the current transaction id, so that the foreign-write trigger of public.positions lets the next statements pass as this service''s own; with false it is cleared. Every writer of positions in sql/ calls it around its statement (set, write, clear); an error rolls the setting back with the (sub)transaction. A value left from another transaction never matches.';

-- pm.record_foreign_write() -> trigger
-- AFTER a foreign INSERT/UPDATE/DELETE of a position: discrepancy, counter, opening of the ledger, outbox event.
CREATE OR REPLACE FUNCTION pm.record_foreign_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- (inside SECURITY DEFINER current_user is the owner: the writer is the SET ROLE role, else the login)
    v_role text := CASE WHEN current_setting('role') = 'none' THEN session_user::text ELSE current_setting('role') END;
    v_app text := nullif(current_setting('application_name'), '');
    v_before jsonb;
    v_after jsonb;
    v_changed jsonb;
    v_row public.positions;
    st pm.pos_state;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;   -- a statement that changed nothing
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- the version moves on, so that caches keyed on versions (the portfolio fingerprint, ETags,
        -- If-Match) see the change; done here, as our own write, rather than in a BEFORE trigger,
        -- which would cost every write of ours a lock of the row it updates
        PERFORM pm.own_writes(true);
        UPDATE public.positions p SET version = greatest(coalesce(NEW.version, 0), coalesce(OLD.version, 0) + 1)
         WHERE p.id = NEW.id
        RETURNING * INTO v_row;
        PERFORM pm.own_writes(false);
    ELSIF TG_OP = 'INSERT' THEN
        v_row := NEW;
    END IF;
    IF TG_OP <> 'INSERT' THEN v_before := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN v_after := to_jsonb(v_row); END IF;
    SELECT coalesce(jsonb_agg(coalesce(a.key, b.key) ORDER BY coalesce(a.key, b.key)), '[]'::jsonb) INTO v_changed
      FROM jsonb_each(coalesce(v_after, '{}'::jsonb)) a
      FULL JOIN jsonb_each(coalesce(v_before, '{}'::jsonb)) b ON b.key = a.key
     WHERE a.value IS DISTINCT FROM b.value;

    INSERT INTO pm.discrepancies (position_id, asset, mode, field, stored_value, expected_value, source, detected_by,
                                  fixed, writer_role, application_name, row_before, row_after)
    VALUES ((coalesce(v_after, v_before) ->> 'id')::uuid, coalesce(v_after, v_before) ->> 'asset',
            coalesce(v_after, v_before) ->> 'mode', 'foreign_write', pm.dec((v_after ->> 'size')::numeric),
            pm.dec((v_before ->> 'size')::numeric), 'foreign_write', 'trigger', false, v_role, v_app, v_before, v_after);
    PERFORM pm.bump('foreign_writes');
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;

    -- A position without a ledger would take its stored state as the opening balance at its first
    -- fill (pm.ledger_insert), adopting the foreign change. Its ledger opens here instead, with the
    -- state before the change (flat for a row the foreign writer inserted), so that validation sees
    -- the change as a difference to the ledger.
    IF NOT EXISTS (SELECT 1 FROM pm.executions x WHERE x.position_id = NEW.id) THEN
        st := CASE WHEN TG_OP = 'INSERT' THEN pm.zero_state(NEW.mode) ELSE pm.state_of(OLD) END;
        INSERT INTO pm.executions (position_id, exec_key, kind, source, exec_time, seq, target, state_after)
        VALUES (NEW.id, 'opening:' || NEW.id, 'opening', 'validation', '-infinity', -1, st, st)
        ON CONFLICT (exec_key) DO NOTHING;
    END IF;

    INSERT INTO pm.outbox (event_type, position_id, asset, mode, version, source, action, actor, detail, image)
    VALUES ('position_updated', v_row.id, v_row.asset, v_row.mode, v_row.version, 'foreign_write', lower(TG_OP), v_role,
            jsonb_build_object('application_name', v_app, 'changed', v_changed), pm.image_of(v_row));
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.record_foreign_write() IS
    'Trigger (AFTER INSERT/UPDATE/DELETE of public.positions, only when the statement is not marked by pm.own_writes): a change that did not come through this service''s functions. An update bumps the version to at least the old one + 1 (an UPDATE of its own, marked). Appends a pm.discrepancies row (field and source foreign_write, detected_by trigger, stored = size after, expected = size before, writer_role, application_name, row_before, row_after), counts foreign_writes; for an insert or update also opens the ledger of a position that has none (opening balance = the row before the change, flat for an insert) and appends a position_updated outbox row (source foreign_write, action insert|update, actor = the writing role, detail {application_name, changed: [columns]}). A delete is recorded (under the deleted row''s id) and counted only (no event). SECURITY DEFINER: a writer with privileges on public.positions alone is recorded too. A statement that changes nothing is ignored.';

-- The trigger. WHEN is evaluated before the function would be called, so our own (marked)
-- statements pay one comparison per row and call nothing. (One AFTER trigger only: a BEFORE UPDATE
-- row trigger, whatever its WHEN, makes every update lock the row it updates once more.)
DROP TRIGGER IF EXISTS positions_foreign_write ON public.positions;
CREATE TRIGGER positions_foreign_write AFTER INSERT OR UPDATE OR DELETE ON public.positions FOR EACH ROW
    WHEN (current_setting('pm.writer', true) IS DISTINCT FROM pg_current_xact_id()::text)
    EXECUTE FUNCTION pm.record_foreign_write();
