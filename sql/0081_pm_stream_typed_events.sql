-- 0081 the live stream's read takes an asset filter: pm.stream_fetch gains an argument, so its old
-- signature goes (sql/repeatable/80_outbox.sql defines the new one; a function cannot change its
-- arguments in place). Plain SQL, safe to run twice.
DROP FUNCTION IF EXISTS pm.stream_fetch(bigint, integer, jsonb, numeric);
