-- Common helpers: settings, time, formatting, input errors, counters.
-- Repeatable (docs/migrations.md): bin/migrate re-applies this file whenever it changes. Plain SQL,
-- safe to run twice. Every function has a two-line header (signature, then what it does) and its
-- contract in COMMENT ON FUNCTION.

-- pm.setting(name, default) -> text
-- A threshold from the custom setting pm.<name> (set on each connection by the service), else the default.
CREATE OR REPLACE FUNCTION pm.setting(p_name text, p_default text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('pm.' || p_name, true), ''), p_default)
$$;
COMMENT ON FUNCTION pm.setting(text, text) IS
    'pm.setting(name, default) -> text: custom setting pm.<name> when set and non-empty, else default, so that a call from psql behaves like one from the service. Never raises.';

-- pm.now_utc() -> timestamp
-- The transaction time as naive UTC, the convention of the shared tables.
CREATE OR REPLACE FUNCTION pm.now_utc() RETURNS timestamp
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT (now() AT TIME ZONE 'UTC') $$;
COMMENT ON FUNCTION pm.now_utc() IS
    'pm.now_utc() -> timestamp: the transaction time as naive UTC, the convention of the shared tables.';

-- pm.dec(x) -> text
-- A decimal as the JSON string the service sends (no trailing zeros).
CREATE OR REPLACE FUNCTION pm.dec(p numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT trim_scale(p)::text $$;
COMMENT ON FUNCTION pm.dec(numeric) IS 'pm.dec(x) -> text: a decimal as a JSON string without trailing zeros; NULL stays NULL.';

-- pm.iso(ts) -> text
-- A timestamptz as ISO 8601 in UTC with Z.
CREATE OR REPLACE FUNCTION pm.iso(p timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(p AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
COMMENT ON FUNCTION pm.iso(timestamptz) IS 'pm.iso(ts) -> text: ISO 8601 in UTC with Z; NULL stays NULL.';

-- pm.iso_utc(ts) -> text
-- A naive UTC timestamp (the shared tables' columns) as ISO 8601 with Z; STABLE like to_char, so it inlines.
CREATE OR REPLACE FUNCTION pm.iso_utc(p timestamp) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT to_char(p, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;
COMMENT ON FUNCTION pm.iso_utc(timestamp) IS 'pm.iso_utc(naive UTC timestamp) -> text: ISO 8601 with Z; NULL stays NULL.';

-- pm.json_dec(x) -> text
-- A decimal as a JSON value: the string pm.dec gives, or null.
CREATE OR REPLACE FUNCTION pm.json_dec(p numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT coalesce('"' || pm.dec(p) || '"', 'null') $$;
COMMENT ON FUNCTION pm.json_dec(numeric) IS
    'pm.json_dec(x) -> text: the JSON value of a decimal as the service sends it, a string without trailing zeros ("1.5"), or null. Pure.';

-- pm.json_ts(ts) -> text
-- A naive UTC timestamp as a JSON value: the ISO 8601 string with Z that pm.iso_utc gives, or null.
CREATE OR REPLACE FUNCTION pm.json_ts(p timestamp) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT coalesce('"' || pm.iso_utc(p) || '"', 'null') $$;
COMMENT ON FUNCTION pm.json_ts(timestamp) IS
    'pm.json_ts(naive UTC timestamp) -> text: the JSON value of a timestamp as the service sends it ("2025-01-27T10:00:00.000000Z"), or null.';

-- pm.bad_input(field, problem)
-- Raises the service's invalid-input error: SQLSTATE 22023, a message and COLUMN naming the field.
CREATE OR REPLACE FUNCTION pm.bad_input(p_path text, p_problem text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'invalid field %: %', p_path, p_problem USING ERRCODE = '22023', COLUMN = p_path;
END
$$;
COMMENT ON FUNCTION pm.bad_input(text, text) IS 'pm.bad_input(field, problem): always raises 22023 "invalid field <field>: <problem>" with COLUMN = field.';

-- pm.bump(name, by)
-- Adds to a counter of pm.counters (shown by /health and Grafana).
CREATE OR REPLACE FUNCTION pm.bump(p_name text, p_by bigint DEFAULT 1) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pm.counters AS c (name, value) VALUES (p_name, p_by)
    ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value, updated_at = now()
$$;
COMMENT ON FUNCTION pm.bump(text, bigint) IS 'pm.bump(name, by): adds to counter pm.counters.name (created at 0). For rare events only: it is one hot row.';
