-- Rollback of 0042_pm_history_stream: functions only (no data).
DROP FUNCTION IF EXISTS pm.stream_fetch(bigint, integer, jsonb, numeric);
DROP FUNCTION IF EXISTS pm.stream_head();
DROP FUNCTION IF EXISTS pm.position_as_of(text, text, timestamptz);
DROP FUNCTION IF EXISTS pm.state_json(pm.pos_state, text);
DROP FUNCTION IF EXISTS pm.position_history(text, text, integer, integer);
