-- API access: admission of a request (key, scope, rate limit) in one call, the token-bucket rate
-- limit, the per-key cap of live streams, and the scoped API keys (bin/api-keys).
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.
--
-- Keys are stored as SHA-256 digests, never raw (hashed in Python before they reach the database).
-- Why SHA-256 and not bcrypt/scrypt: the keys are 32 random bytes made by bin/api-keys (256 bits of
-- entropy), not passwords chosen by people; nobody can guess one from its digest, so a slow hash
-- would add nothing but cost on every request, and an unsalted digest lets the lookup be one index
-- probe. Scopes are ordered: read < write < admin. Errors: 22023 bad input naming the field, 23505 a
-- live key of that name exists (-> 409), P0002 no live key of that name.

-- pm.bucket_tokens(tat, at, interval) -> integer
-- The tokens a GCRA bucket holds at time `at`: floor((60 - max(tat - at, 0)) / interval).
CREATE OR REPLACE FUNCTION pm.bucket_tokens(p_tat double precision, p_at double precision, p_interval double precision)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT floor((60.0 - greatest(p_tat - p_at, 0)) / p_interval + 1e-9)::integer $$;
COMMENT ON FUNCTION pm.bucket_tokens(double precision, double precision, double precision) IS
    'pm.bucket_tokens(tat, at, interval: 60/limit seconds) -> the tokens a GCRA bucket of one minute holds at time at (epoch seconds; 1e-9 absorbs the rounding of the intervals). Pure (inlined).';

-- pm.rate_limit_lease(key_hash, limit, tokens, at) -> (granted, remaining, retry_after, reset_after)
-- Takes up to `tokens` tokens of a key's bucket (GCRA) at once: as many as it holds, none when empty.
CREATE OR REPLACE FUNCTION pm.rate_limit_lease(p_key_hash text, p_limit integer, p_tokens integer DEFAULT 1,
                                               p_at double precision DEFAULT NULL,
                                               OUT granted integer, OUT remaining integer,
                                               OUT retry_after double precision, OUT reset_after double precision)
LANGUAGE plpgsql AS $$
DECLARE
    -- GCRA: a request is due every l_interval seconds; the theoretical arrival time (tat) of the
    -- next one may run at most one period (60 s) ahead of now, which is a bucket of `limit` tokens
    -- refilled one every l_interval. So over any span of w seconds at most limit + w / l_interval
    -- tokens are taken, wherever the span falls (no window boundary to burst across). The bucket
    -- holds pm.bucket_tokens of them; n of them move tat n intervals on.
    l_now double precision := coalesce(p_at, extract(epoch FROM clock_timestamp()));
    l_interval double precision;
    l_tat double precision;
BEGIN
    IF p_key_hash IS NULL OR p_key_hash = '' THEN
        PERFORM pm.bad_input('key_hash', 'required');
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 THEN
        PERFORM pm.bad_input('limit', format('must be > 0, got %s', coalesce(p_limit::text, 'nothing')));
    END IF;
    IF p_tokens IS NULL OR p_tokens <= 0 THEN
        PERFORM pm.bad_input('tokens', format('must be > 0, got %s', coalesce(p_tokens::text, 'nothing')));
    END IF;
    l_interval := 60.0 / p_limit;
    -- Concurrent requests of one key queue on the row lock (held to the caller's commit: call it in
    -- autocommit, last) and each decides on the state committed before it. An allowed take is one
    -- UPDATE (HOT: no indexed column changes) that also records how many tokens it took (taken:
    -- RETURNING sees only the new row); a refused one writes nothing (a flood of refused requests
    -- costs reads only); a key's first take inserts its row (race-safe: once more when another
    -- request inserted it meanwhile).
    FOR attempt IN 1 .. 2 LOOP
        UPDATE pm.api_rate_state s
           SET tat = greatest(s.tat, l_now) + l_interval * least(p_tokens, pm.bucket_tokens(s.tat, l_now, l_interval)),
               taken = least(p_tokens, pm.bucket_tokens(s.tat, l_now, l_interval))
         WHERE s.key_hash = p_key_hash AND greatest(s.tat, l_now) + l_interval - l_now <= 60.0
        RETURNING s.tat, s.taken INTO l_tat, granted;
        EXIT WHEN FOUND;
        SELECT s.tat INTO l_tat FROM pm.api_rate_state s WHERE s.key_hash = p_key_hash;
        EXIT WHEN FOUND;            -- refused
        INSERT INTO pm.api_rate_state AS s (key_hash, tat, taken)
        VALUES (p_key_hash, l_now + l_interval * least(p_tokens, p_limit), least(p_tokens, p_limit))
        ON CONFLICT (key_hash) DO NOTHING
        RETURNING s.tat, s.taken INTO l_tat, granted;
        EXIT WHEN FOUND;
    END LOOP;
    IF granted IS NOT NULL THEN
        remaining := pm.bucket_tokens(l_tat, l_now, l_interval);
        retry_after := 0;
    ELSE
        granted := 0;
        remaining := 0;
        retry_after := l_tat + l_interval - 60.0 - l_now;
    END IF;
    reset_after := greatest(l_tat - l_now, 0);
END
$$;
COMMENT ON FUNCTION pm.rate_limit_lease(text, integer, integer, double precision) IS
    'pm.rate_limit_lease(key_hash, limit per minute > 0, tokens > 0 default 1, at epoch seconds default the clock) -> (granted: tokens taken, min(tokens, tokens in the bucket), 0 when it is empty; remaining tokens after them; retry_after seconds until the next token (0 when granted); reset_after seconds until the bucket is full): token bucket / GCRA with a capacity of limit and one token every 60/limit s, in PostgreSQL (exact across workers and hosts). Over any span of w seconds at most limit + w*limit/60 tokens are taken; a refused take takes nothing and writes nothing. Locks the key''s row to the caller''s commit. Errors: 22023 naming key_hash, limit or tokens. Not idempotent.';

-- pm.rate_limit_return(key_hash, limit, tokens)
-- Gives tokens that were taken but never spent (a lease that lapsed) back to a key's bucket.
CREATE OR REPLACE FUNCTION pm.rate_limit_return(p_key_hash text, p_limit integer, p_tokens integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    l_now double precision := extract(epoch FROM clock_timestamp());
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 THEN
        PERFORM pm.bad_input('limit', format('must be > 0, got %s', coalesce(p_limit::text, 'nothing')));
    END IF;
    IF p_tokens IS NULL OR p_tokens < 0 THEN
        PERFORM pm.bad_input('tokens', format('must be >= 0, got %s', coalesce(p_tokens::text, 'nothing')));
    END IF;
    -- tat moves back by their intervals, never before now (a bucket holds at most `limit`); a full
    -- bucket is not written
    UPDATE pm.api_rate_state s SET tat = greatest(s.tat - p_tokens * 60.0 / p_limit, l_now)
     WHERE s.key_hash = p_key_hash AND s.tat > l_now AND p_tokens > 0;
END
$$;
COMMENT ON FUNCTION pm.rate_limit_return(text, integer, integer) IS
    'pm.rate_limit_return(key_hash, limit per minute > 0, tokens >= 0): gives back tokens of pm.rate_limit_lease that were never spent (an API process''s lease that lapsed), as if they had not been taken; the bucket never holds more than limit. Writes nothing when the bucket is full or the key has none. Locks the key''s row to the caller''s commit. Errors: 22023 naming limit or tokens.';

-- pm.rate_limit_take(key_hash, limit, at) -> (allowed, remaining, retry_after, reset_after)
-- One token of a key's bucket (pm.rate_limit_lease of one token), as a yes or no.
CREATE OR REPLACE FUNCTION pm.rate_limit_take(p_key_hash text, p_limit integer, p_at double precision DEFAULT NULL,
                                              OUT allowed boolean, OUT remaining integer,
                                              OUT retry_after double precision, OUT reset_after double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t record := pm.rate_limit_lease(p_key_hash, p_limit, 1, p_at);
BEGIN
    allowed := t.granted > 0;
    remaining := t.remaining;
    retry_after := t.retry_after;
    reset_after := t.reset_after;
END
$$;
COMMENT ON FUNCTION pm.rate_limit_take(text, integer, double precision) IS
    'pm.rate_limit_take(key_hash, limit per minute > 0, at epoch seconds default the clock) -> (allowed, remaining tokens, retry_after seconds until the next token (0 when allowed), reset_after seconds until the bucket is full): one token of pm.rate_limit_lease (token bucket / GCRA with a capacity of limit and one token every 60/limit s, in PostgreSQL, exact across workers and hosts). Over any span of w seconds at most limit + w*limit/60 requests are allowed; a rejected request takes nothing and writes nothing. Locks the key''s row to the caller''s commit. Errors: 22023 naming key_hash or limit. Not idempotent: every allowed call takes a token.';

-- pm.rate_limit_hit(key_hash, limit, window_seconds) -> (allowed, hits, reset_seconds)
-- The earlier fixed-window signature, kept for processes of the previous release: takes from the bucket.
CREATE OR REPLACE FUNCTION pm.rate_limit_hit(p_key_hash text, p_limit integer, p_window_seconds integer DEFAULT 60,
                                             OUT allowed boolean, OUT hits integer, OUT reset_seconds integer)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    t := pm.rate_limit_take(p_key_hash, p_limit);
    allowed := t.allowed;
    hits := p_limit - t.remaining;
    reset_seconds := greatest(1, ceil(CASE WHEN t.allowed THEN t.reset_after ELSE t.retry_after END))::integer;
END
$$;
COMMENT ON FUNCTION pm.rate_limit_hit(text, integer, integer) IS
    'pm.rate_limit_hit(key_hash, limit per minute, window_seconds ignored) -> (allowed, hits = limit - remaining tokens, reset_seconds >= 1): the signature of the fixed-window limiter of the previous release, for its processes until they restart; takes one token of pm.rate_limit_take. Errors: 22023 for an empty key or a limit <= 0.';

-- pm.api_key_check(key_hash, scope, limit, default limit, needed scope) -> (outcome, key_name, scope, rate_limit)
-- Who the key is and whether its scope suffices: a stored key is looked up, a key the caller vouches for is not.
CREATE OR REPLACE FUNCTION pm.api_key_check(p_key_hash text, p_scope text, p_limit integer, p_default_limit integer,
                                            p_needed text, OUT outcome text, OUT key_name text, OUT scope text,
                                            OUT rate_limit integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    l_order CONSTANT text[] := ARRAY['read', 'write', 'admin'];
BEGIN
    scope := p_scope;
    rate_limit := coalesce(p_limit, p_default_limit);
    IF p_scope IS NULL THEN
        SELECT k.name, k.scope, coalesce(p_limit, k.rate_limit, p_default_limit)
          INTO key_name, scope, rate_limit
          FROM pm.api_keys k WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
        IF NOT FOUND THEN
            outcome := 'unknown_key';
            RETURN;
        END IF;
    END IF;
    IF coalesce(array_position(l_order, scope), 0) < coalesce(array_position(l_order, p_needed), 4) THEN
        outcome := 'forbidden';
        RETURN;
    END IF;
    outcome := 'ok';
END
$$;
COMMENT ON FUNCTION pm.api_key_check(text, text, integer, integer, text) IS
    'pm.api_key_check(key hash, scope or NULL, limit or NULL, default limit, needed scope read|write|admin) -> (outcome ok|unknown_key|forbidden, key_name, scope, rate_limit). With scope NULL the key is looked up among the live keys of pm.api_keys (its own limit unless limit is given, else the default); with a scope the caller has authenticated the key itself. Scopes are ordered read < write < admin. Read only.';

-- pm.api_take_token(outcome, key_hash, rate_limit, tokens) -> (outcome, remaining, retry_after, granted)
-- The last step of admitting a request: up to `tokens` tokens of the key's bucket when the request is ok and limited.
CREATE OR REPLACE FUNCTION pm.api_take_token(p_outcome text, p_key_hash text, p_rate_limit integer, p_tokens integer,
                                             OUT outcome text, OUT remaining integer, OUT retry_after double precision,
                                             OUT granted integer)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    outcome := p_outcome;
    IF p_outcome = 'ok' AND p_tokens > 0 THEN
        t := pm.rate_limit_lease(p_key_hash, p_rate_limit, p_tokens);
        remaining := t.remaining;
        retry_after := t.retry_after;
        granted := t.granted;
        IF t.granted = 0 THEN
            outcome := 'rate_limited';
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION pm.api_take_token(text, text, integer, integer) IS
    'pm.api_take_token(outcome so far, key hash, rate limit, tokens: 0 = not limited, else the most to take) -> (outcome: rate_limited when the bucket is empty, else unchanged; remaining tokens, retry_after seconds and granted tokens (pm.rate_limit_lease), NULL when none were asked for): takes tokens only for an ok request that asks for them (the API asks for more than one to keep the rest for its next requests of the key: a lease). The last step of pm.api_admit and of the statements that fold admission into their read; call it last and in autocommit (the bucket row is locked to the commit).';

-- pm.api_admit(key_hash, scope, limit, default limit, needed scope, tokens) -> (outcome, key_name, scope, rate_limit, remaining, retry_after, granted)
-- The database part of admitting an API request in one call: the key, its scope, then a token.
CREATE OR REPLACE FUNCTION pm.api_admit(p_key_hash text, p_scope text, p_limit integer, p_default_limit integer,
                                        p_needed text, p_tokens integer,
                                        OUT outcome text, OUT key_name text, OUT scope text, OUT rate_limit integer,
                                        OUT remaining integer, OUT retry_after double precision, OUT granted integer)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    SELECT c.outcome, c.key_name, c.scope, c.rate_limit INTO outcome, key_name, scope, rate_limit
      FROM pm.api_key_check(p_key_hash, p_scope, p_limit, p_default_limit, p_needed) c;
    t := pm.api_take_token(outcome, p_key_hash, rate_limit, p_tokens);   -- (an assignment: no query)
    outcome := t.outcome; remaining := t.remaining; retry_after := t.retry_after; granted := t.granted;
END
$$;
COMMENT ON FUNCTION pm.api_admit(text, text, integer, integer, text, integer) IS
    'pm.api_admit(key hash, scope or NULL, limit or NULL, default limit, needed scope, tokens: 0 = not limited, else the most to take) -> (outcome ok|unknown_key|forbidden|rate_limited, key_name, scope, rate_limit, remaining, retry_after seconds, granted tokens): pm.api_key_check, then (when tokens > 0 and the key may) up to that many tokens of pm.rate_limit_lease. An unknown or forbidden key takes no token. Call it in autocommit (the token''s row lock is held to the commit).';

-- pm.api_read_position(key_hash, scope, limit, default limit, needed scope, tokens, asset, mode, known version) -> (outcome, ..., granted, body, version)
-- GET /api/v1/positions/{asset} admitted and read in one round trip: key and scope, the read, then the token.
CREATE OR REPLACE FUNCTION pm.api_read_position(p_key_hash text, p_scope text, p_limit integer, p_default_limit integer,
                                                p_needed text, p_tokens integer, p_asset text, p_mode text,
                                                p_known_version integer,
                                                OUT outcome text, OUT key_name text, OUT scope text,
                                                OUT rate_limit integer, OUT remaining integer,
                                                OUT retry_after double precision, OUT granted integer,
                                                OUT body text, OUT version integer)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    IF p_scope IS NULL THEN     -- a stored key: who is it, may it read?
        SELECT c.outcome, c.key_name, c.scope, c.rate_limit INTO outcome, key_name, scope, rate_limit
          FROM pm.api_key_check(p_key_hash, NULL, p_limit, p_default_limit, p_needed) c;
        IF outcome <> 'ok' THEN
            RETURN;
        END IF;
    ELSE                        -- a key the API authenticated (and checked the scope of) itself
        outcome := 'ok';
        scope := p_scope;
        rate_limit := coalesce(p_limit, p_default_limit);
    END IF;
    -- the read before the token, so that the key's bucket row is locked only from the token to the
    -- commit; the Position is rendered only when the caller does not hold this version already
    SELECT r.version, r.body INTO version, body FROM pm.position_if_changed(p_asset, p_mode, p_known_version) r;
    t := pm.api_take_token(outcome, p_key_hash, rate_limit, p_tokens);   -- (an assignment: no query)
    outcome := t.outcome; remaining := t.remaining; retry_after := t.retry_after; granted := t.granted;
    IF outcome = 'rate_limited' THEN
        body := NULL;
        version := NULL;
    END IF;
END
$$;
COMMENT ON FUNCTION pm.api_read_position(text, text, integer, integer, text, integer, text, text, integer) IS
    'pm.api_read_position(key hash, scope or NULL, limit or NULL, default limit, needed scope, tokens, asset, mode, known version or NULL) -> (outcome, key_name, scope, rate_limit, remaining, retry_after, granted as pm.api_admit; version of the position (NULL when there is none or the request is not admitted) and body = its Position JSON text (pm.get_position), NULL as well when it is the known version, which the caller then holds already). One round trip for the API''s most frequent read: a stored key is looked up (scope NULL), a key with a scope is one the caller authenticated; the position is read only for a key that may read it, before the token is taken (the bucket row is locked only briefly). Call it in autocommit.';

-- pm.api_list_positions(key_hash, scope, limit, default limit, needed scope, tokens, filters..., known fingerprint) -> (outcome, ..., granted, fingerprint, body)
-- GET /api/v1/positions admitted and read in one round trip: key and scope, the list, then the token.
CREATE OR REPLACE FUNCTION pm.api_list_positions(p_key_hash text, p_scope text, p_limit integer, p_default_limit integer,
                                                 p_needed text, p_tokens integer, p_asset text, p_mode text,
                                                 p_size_min numeric, p_size_max numeric, p_status text,
                                                 p_page_limit integer, p_offset integer, p_known_fingerprint text,
                                                 OUT outcome text, OUT key_name text, OUT scope text,
                                                 OUT rate_limit integer, OUT remaining integer,
                                                 OUT retry_after double precision, OUT granted integer,
                                                 OUT fingerprint text, OUT body text)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    SELECT c.outcome, c.key_name, c.scope, c.rate_limit INTO outcome, key_name, scope, rate_limit
      FROM pm.api_key_check(p_key_hash, p_scope, p_limit, p_default_limit, p_needed) c;
    IF outcome <> 'ok' THEN
        RETURN;
    END IF;
    -- the fingerprint before the list: a change committed in between is in the body but not in the
    -- fingerprint, so the caller's next request renders again (never the other way round)
    fingerprint := pm.positions_fingerprint();
    IF fingerprint IS DISTINCT FROM p_known_fingerprint THEN
        body := pm.list_positions_text(p_asset, p_mode, p_size_min, p_size_max, p_status, p_page_limit, p_offset);
    END IF;
    t := pm.api_take_token(outcome, p_key_hash, rate_limit, p_tokens);   -- (an assignment: no query)
    outcome := t.outcome; remaining := t.remaining; retry_after := t.retry_after; granted := t.granted;
    IF outcome = 'rate_limited' THEN
        fingerprint := NULL;
        body := NULL;
    END IF;
END
$$;
COMMENT ON FUNCTION pm.api_list_positions(text, text, integer, integer, text, integer, text, text, numeric, numeric, text, integer, integer, text) IS
    'pm.api_list_positions(key hash, scope or NULL, limit or NULL, default limit, needed scope, tokens, asset, mode, size_min, size_max, status, page limit, offset, known fingerprint or NULL) -> (outcome, key_name, scope, rate_limit, remaining, retry_after, granted as pm.api_admit; fingerprint = pm.positions_fingerprint() and body = pm.list_positions_text(...) of an admitted request, body NULL when the fingerprint is the known one, which the caller then holds the body of already). One round trip for GET /api/v1/positions; the list is read before the token is taken (the bucket row is locked only briefly). Errors of the filters as pm.list_positions_text (22023). Call it in autocommit.';

-- pm.stream_take_slot(key_hash, cap) -> integer
-- One of a key's `cap` live-stream slots for this session (session advisory lock); NULL when all are taken.
CREATE OR REPLACE FUNCTION pm.stream_take_slot(p_key_hash text, p_cap integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    l_key integer := hashtext('pm.stream:' || p_key_hash);
BEGIN
    IF p_cap IS NULL OR p_cap <= 0 THEN
        PERFORM pm.bad_input('cap', format('must be > 0, got %s', coalesce(p_cap::text, 'nothing')));
    END IF;
    FOR slot IN 0 .. p_cap - 1 LOOP
        IF pg_try_advisory_lock(l_key, slot) THEN
            RETURN slot;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION pm.stream_take_slot(text, integer) IS
    'pm.stream_take_slot(key hash, cap > 0) -> the slot number (0..cap-1) now held by this session, or NULL when every slot of the key is held by other sessions: the per-key cap of live streams over every worker and instance. A slot is a session-level advisory lock (two-int form, key hashtext(''pm.stream:'' || key hash)); it is released when the stream''s connection closes, so a vanished process never leaks one. Errors: 22023 naming cap.';

-- pm.api_key_json(row) -> jsonb
-- A key as bin/api-keys shows it: never the digest itself.
CREATE OR REPLACE FUNCTION pm.api_key_json(k pm.api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('name', k.name, 'scope', k.scope, 'rate_limit', k.rate_limit,
                              'created_at', pm.iso(k.created_at), 'revoked_at', pm.iso(k.revoked_at),
                              'key_prefix', left(k.key_hash, 8))
$$;
COMMENT ON FUNCTION pm.api_key_json(pm.api_keys) IS
    'pm.api_key_json(row) -> {name, scope, rate_limit, created_at, revoked_at, key_prefix (first 8 hex digits of the digest, to tell keys apart)}. Never the digest itself.';

-- pm.api_key_create(name, key hash, scope, rate limit) -> jsonb
-- Stores a new key's digest with its scope and own rate limit.
CREATE OR REPLACE FUNCTION pm.api_key_create(p_name text, p_key_hash text, p_scope text, p_rate_limit integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k pm.api_keys;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' THEN
        PERFORM pm.bad_input('name', format('expected 1-64 letters, digits, ".", "_" or "-", got %s', coalesce(left(p_name, 80), 'nothing')));
    END IF;
    IF p_scope IS NULL OR p_scope NOT IN ('read', 'write', 'admin') THEN
        PERFORM pm.bad_input('scope', format('expected read, write or admin, got %s', coalesce(left(p_scope, 20), 'nothing')));
    END IF;
    IF p_rate_limit IS NOT NULL AND p_rate_limit <= 0 THEN
        PERFORM pm.bad_input('rate_limit', format('must be > 0, got %s', p_rate_limit));
    END IF;
    IF p_key_hash IS NULL OR p_key_hash !~ '^[0-9a-f]{64}$' THEN
        PERFORM pm.bad_input('key_hash', 'expected the SHA-256 hex digest of the key');
    END IF;
    INSERT INTO pm.api_keys (name, key_hash, scope, rate_limit)
    VALUES (p_name, p_key_hash, p_scope, p_rate_limit)
    RETURNING * INTO k;
    RETURN pm.api_key_json(k);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'an API key named % exists already (revoke it first)', p_name USING ERRCODE = '23505';
END
$$;
COMMENT ON FUNCTION pm.api_key_create(text, text, text, integer) IS
    'pm.api_key_create(name, SHA-256 hex of the key, scope read|write|admin, rate limit per minute or NULL = default) -> the key as pm.api_key_json. Errors: 22023 naming name/scope/rate_limit/key_hash; 23505 when a live key has that name (or the digest exists).';

-- pm.api_key_revoke(name) -> jsonb
-- Revokes the live key of that name (effective for the next request of every API process).
CREATE OR REPLACE FUNCTION pm.api_key_revoke(p_name text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k pm.api_keys;
BEGIN
    UPDATE pm.api_keys SET revoked_at = now() WHERE name = p_name AND revoked_at IS NULL RETURNING * INTO k;
    IF k.id IS NULL THEN
        RAISE EXCEPTION 'no live API key named %', p_name USING ERRCODE = 'P0002';
    END IF;
    RETURN pm.api_key_json(k);
END
$$;
COMMENT ON FUNCTION pm.api_key_revoke(text) IS
    'pm.api_key_revoke(name) -> the revoked key as pm.api_key_json; effective for the next request of every API process (keys are looked up per request). Errors: P0002 when no live key has that name. Not idempotent: a second call raises P0002.';

-- pm.api_key_list(include revoked) -> jsonb
-- The keys, by name.
CREATE OR REPLACE FUNCTION pm.api_key_list(p_include_revoked boolean DEFAULT false) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('keys', coalesce(jsonb_agg(pm.api_key_json(k) ORDER BY k.name, k.id), '[]'::jsonb))
      FROM pm.api_keys k
     WHERE p_include_revoked OR k.revoked_at IS NULL
$$;
COMMENT ON FUNCTION pm.api_key_list(boolean) IS
    'pm.api_key_list(include revoked) -> {"keys": [pm.api_key_json ordered by name]}. Read only.';

-- pm.api_key_lookup(key hash) -> (name, scope, rate_limit)
-- The live key behind a presented key's digest; NULLs when unknown or revoked.
CREATE OR REPLACE FUNCTION pm.api_key_lookup(p_key_hash text, OUT name text, OUT scope text, OUT rate_limit integer)
LANGUAGE sql STABLE AS $$
    SELECT k.name, k.scope, k.rate_limit FROM pm.api_keys k WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
$$;
COMMENT ON FUNCTION pm.api_key_lookup(text) IS
    'pm.api_key_lookup(SHA-256 hex of a presented key) -> (name, scope, rate_limit) of the live key, all NULL when unknown or revoked. One index probe; read only.';
