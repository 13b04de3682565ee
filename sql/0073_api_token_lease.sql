-- 0073 the rate limit can hand out several tokens of a key's bucket at once (a lease, kept by one API
-- process for its next requests of that key: app/api/access.py). pm.api_rate_state.taken records how
-- many tokens the last take of a key's bucket took, so that one UPDATE both takes them and tells how
-- many (RETURNING sees only the new row). Admission's functions now take a number of tokens instead
-- of a yes/no: their old signatures are dropped here and the repeatable file
-- sql/repeatable/90_api_access.sql defines the new ones (pm.api_take_token, pm.api_admit,
-- pm.api_read_position, pm.api_list_positions); an API process of the previous release calling the
-- old ones gets 42883 until it restarts (deploy: migrate, then restart the API).
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction).
ALTER TABLE pm.api_rate_state ADD COLUMN IF NOT EXISTS taken integer NOT NULL DEFAULT 1;
COMMENT ON COLUMN pm.api_rate_state.taken IS
    'tokens the last allowed take of this bucket took (1, or more for a lease): written by pm.rate_limit_lease()';
DROP FUNCTION IF EXISTS pm.api_take_token(text, text, integer, boolean);
DROP FUNCTION IF EXISTS pm.api_admit(text, text, integer, integer, text, boolean);
DROP FUNCTION IF EXISTS pm.api_read_position(text, text, integer, integer, text, boolean, text, text, integer);
DROP FUNCTION IF EXISTS pm.api_list_positions(text, text, integer, integer, text, boolean, text, text, numeric,
                                              numeric, text, integer, integer, text);
