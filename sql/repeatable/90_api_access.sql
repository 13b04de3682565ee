-- API access: the per-key rate limit and the scoped API keys (bin/api-keys).
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.
--
-- Keys are stored as SHA-256 digests, never raw (hashed in Python before they reach the database).
-- Why SHA-256 and not bcrypt/scrypt: the keys are 32 random bytes made by bin/api-keys (256 bits of
-- entropy), not passwords chosen by people; nobody can guess one from its digest, so a slow hash
-- would add nothing but cost on every request, and an unsalted digest lets the lookup be one index
-- probe. Scopes are ordered: read < write < admin. Errors: 22023 bad input naming the field, 23505 a
-- live key of that name exists (-> 409), P0002 no live key of that name.

-- pm.rate_limit_hit(key_hash, limit, window_seconds) -> (allowed, hits, reset_seconds)
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
