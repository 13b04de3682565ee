-- 0043 scoped API keys (issue 7): keys stored as SHA-256 digests with a scope and their own
-- rate limit, managed by bin/api-keys and checked by the API on every request.
-- Plain SQL, safe to run twice (IF NOT EXISTS, CREATE OR REPLACE); no BEGIN/COMMIT.
--
-- Why SHA-256 and not bcrypt/scrypt: the keys are 32 random bytes made by bin/api-keys (256 bits
-- of entropy), not passwords chosen by people. Nobody can guess or brute-force such a key from its
-- digest, so a slow hash would add nothing but cost on every request; an unsalted digest also
-- lets the lookup be one index probe. The raw key never reaches the database (hashed in Python).
--
-- Scopes are ordered: read < write < admin; a key may do everything its scope and the lower
-- ones allow. Errors: 22023 bad input naming the field, 23505 a live key of that name exists
-- (-> 409), P0002 no live key of that name.

CREATE TABLE IF NOT EXISTS pm.api_keys (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    key_hash text COLLATE "C" NOT NULL,
    scope text NOT NULL,
    rate_limit integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_keys_scope_check CHECK (scope IN ('read', 'write', 'admin')),
    CONSTRAINT api_keys_rate_limit_check CHECK (rate_limit IS NULL OR rate_limit > 0),
    CONSTRAINT api_keys_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT api_keys_hash_check CHECK (key_hash ~ '^[0-9a-f]{64}$')
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_hash_key ON pm.api_keys (key_hash);
-- one live key per name; revoked ones stay as the record of who could do what, when
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON pm.api_keys (name) WHERE revoked_at IS NULL;
COMMENT ON TABLE pm.api_keys IS
    'API keys of the REST API (bin/api-keys): name, SHA-256 hex of the key (never the key), scope read|write|admin, own rate limit per minute (NULL = the default), created_at, revoked_at';

-- pm.api_key_json(row)
CREATE OR REPLACE FUNCTION pm.api_key_json(k pm.api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('name', k.name, 'scope', k.scope, 'rate_limit', k.rate_limit,
                              'created_at', pm.iso(k.created_at), 'revoked_at', pm.iso(k.revoked_at),
                              'key_prefix', left(k.key_hash, 8))
$$;
COMMENT ON FUNCTION pm.api_key_json(pm.api_keys) IS
    'pm.api_key_json(row) -> {name, scope, rate_limit, created_at, revoked_at, key_prefix (first 8 hex digits of the digest, to tell keys apart)}. Never the digest itself.';

-- pm.api_key_create(name, key hash, scope, rate limit)
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

-- pm.api_key_revoke(name)
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

-- pm.api_key_list(include revoked)
CREATE OR REPLACE FUNCTION pm.api_key_list(p_include_revoked boolean DEFAULT false) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('keys', coalesce(jsonb_agg(pm.api_key_json(k) ORDER BY k.name, k.id), '[]'::jsonb))
      FROM pm.api_keys k
     WHERE p_include_revoked OR k.revoked_at IS NULL
$$;
COMMENT ON FUNCTION pm.api_key_list(boolean) IS
    'pm.api_key_list(include revoked) -> {"keys": [pm.api_key_json ordered by name]}. Read only.';

-- pm.api_key_lookup(key hash)
CREATE OR REPLACE FUNCTION pm.api_key_lookup(p_key_hash text, OUT name text, OUT scope text, OUT rate_limit integer)
LANGUAGE sql STABLE AS $$
    SELECT k.name, k.scope, k.rate_limit FROM pm.api_keys k WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
$$;
COMMENT ON FUNCTION pm.api_key_lookup(text) IS
    'pm.api_key_lookup(SHA-256 hex of a presented key) -> (name, scope, rate_limit) of the live key, all NULL when unknown or revoked. One index probe; read only.';
