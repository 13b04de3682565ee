-- Rollback of 0010: the API rate-limit state.
DROP FUNCTION IF EXISTS pm.rate_limit_hit(text, integer, integer);
DROP TABLE IF EXISTS pm.api_rate_limit;
