-- Rollback of 0040_pm_manual_control: its functions and the operator metadata table (metadata is
-- lost; the manual executions it wrote stay in the ledger, where they are ordinary trades).
DROP FUNCTION IF EXISTS pm.close_position(text, text, numeric, integer, text, text);
DROP FUNCTION IF EXISTS pm.update_position_meta(text, text, jsonb, integer, text, text);
DROP FUNCTION IF EXISTS pm.lock_existing_position(text, text, integer);
DROP FUNCTION IF EXISTS pm.get_position_ext(text, text);
DROP FUNCTION IF EXISTS pm.position_meta_json(uuid);
DROP TABLE IF EXISTS pm.position_meta;
