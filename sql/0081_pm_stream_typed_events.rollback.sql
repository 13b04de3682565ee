-- Rollback of 0081_pm_stream_typed_events: nothing to restore here (the code layer, the new
-- pm.stream_fetch included, is dropped whole before the numbered rollbacks run; the older
-- migrations' definitions come back with a new bin/migrate of the older code).
SELECT 1;
