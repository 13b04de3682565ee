-- 0070 the API rate limit becomes a token bucket (GCRA): one row per key holding its theoretical
-- arrival time, instead of a counter per fixed 60-second window (which let up to twice the limit
-- through across a window boundary). The functions are in sql/repeatable/90_api_access.sql.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT.
--
-- UNLOGGED on purpose, as the table it replaces: it is written on every API request, and a
-- transaction that only writes unlogged tables commits without waiting for a WAL flush. A crash of
-- PostgreSQL (never a clean restart) empties it, which gives every key a full bucket once.
-- fillfactor 10: a key's row is updated on every request, each update leaves a dead version behind
-- on the page, and PostgreSQL prunes a page only when its free space falls below the fillfactor's
-- reserve; at 10 it prunes after a few versions instead of walking a chain of ~100 on every update.

CREATE UNLOGGED TABLE IF NOT EXISTS pm.api_rate_state (
    key_hash text COLLATE "C" PRIMARY KEY,  -- SHA-256 hex of the key (of "jwt:<subject>" for a bearer token)
    tat double precision NOT NULL           -- theoretical arrival time, epoch seconds
) WITH (fillfactor = 10);
COMMENT ON TABLE pm.api_rate_state IS
    'API rate limit per key (SHA-256 hex): GCRA theoretical arrival time (epoch seconds); written by pm.rate_limit_take()';

-- The fixed-window counters; pm.rate_limit_hit() keeps its signature and now takes from the bucket.
DROP TABLE IF EXISTS pm.api_rate_limit;
