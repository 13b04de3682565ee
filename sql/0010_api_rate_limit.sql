-- 0010 API rate limit (SPEC §3): per API key, fixed 60-second windows, exact across every gunicorn
-- worker and host because the counter lives here and is bumped by one atomic upsert per request.
-- Plain SQL, safe to run twice.
--
-- The table is UNLOGGED on purpose: it is bumped on every API request, and a transaction that only
-- touches unlogged tables commits without waiting for a WAL flush. The price is that the counters
-- of the current minute are emptied by a crash of PostgreSQL (never by a clean restart), which
-- merely lets clients start that minute afresh. Keys are stored as SHA-256 hex digests, never raw.

CREATE UNLOGGED TABLE IF NOT EXISTS pm.api_rate_limit (
    key_hash text COLLATE "C" NOT NULL,
    window_start bigint NOT NULL,          -- epoch seconds of the window's first second
    hits integer NOT NULL,
    PRIMARY KEY (key_hash, window_start)
);
COMMENT ON TABLE pm.api_rate_limit IS
    'API requests per key (SHA-256 hex) and fixed window (epoch seconds); bumped by pm.rate_limit_hit(); expired rows are removed by the first hit of the next window';

-- pm.rate_limit_hit(key_hash, limit, window_seconds)
-- Counts one request of a key in the current fixed window and says whether it is within the limit.
CREATE OR REPLACE FUNCTION pm.rate_limit_hit(p_key_hash text, p_limit integer, p_window_seconds integer DEFAULT 60,
                                             OUT allowed boolean, OUT hits integer, OUT reset_seconds integer)
LANGUAGE plpgsql AS $$
DECLARE
    l_now numeric := extract(epoch FROM now());
    l_window bigint;
    l_created boolean;
BEGIN
    IF p_key_hash IS NULL OR p_key_hash = '' THEN
        RAISE EXCEPTION 'invalid parameter key_hash: required' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit < 0 THEN
        RAISE EXCEPTION 'invalid parameter limit: must be >= 0, got %', p_limit USING ERRCODE = '22023';
    END IF;
    IF p_window_seconds IS NULL OR p_window_seconds <= 0 THEN
        RAISE EXCEPTION 'invalid parameter window_seconds: must be > 0, got %', p_window_seconds USING ERRCODE = '22023';
    END IF;
    l_window := floor(l_now / p_window_seconds)::bigint * p_window_seconds;

    -- Concurrent hits of one key queue on the row lock; each sees the count committed before it.
    INSERT INTO pm.api_rate_limit AS r (key_hash, window_start, hits)
    VALUES (p_key_hash, l_window, 1)
    ON CONFLICT (key_hash, window_start) DO UPDATE SET hits = r.hits + 1
    RETURNING r.hits, (r.xmax = 0) INTO hits, l_created;

    -- Only the first hit of a window (once per key and minute) clears that key's older windows:
    -- the table stays at about one row per active key without a cleanup job.
    IF l_created THEN
        DELETE FROM pm.api_rate_limit WHERE key_hash = p_key_hash AND window_start < l_window;
    END IF;

    allowed := hits <= p_limit;
    reset_seconds := greatest(1, ceil(l_window + p_window_seconds - l_now))::integer;
END
$$;
COMMENT ON FUNCTION pm.rate_limit_hit(text, integer, integer) IS
    'pm.rate_limit_hit(key_hash, limit, window_seconds default 60) -> (allowed, hits, reset_seconds): counts one request of the key in the current fixed window (PostgreSQL clock, so exact across workers and hosts); allowed = hits <= limit (rejected requests count too); reset_seconds = whole seconds until the window ends (>= 1). Locks: the (key, window) row for the rest of the caller''s transaction, so call it in autocommit. Errors: 22023 for an empty key, a negative limit or a non-positive window. Not idempotent: every call is one hit.';
