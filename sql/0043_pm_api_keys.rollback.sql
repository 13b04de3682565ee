-- Rollback of 0043_pm_api_keys: the stored API keys and their functions (the keys stop working;
-- the environment keys are unaffected).
DROP FUNCTION IF EXISTS pm.api_key_lookup(text);
DROP FUNCTION IF EXISTS pm.api_key_list(boolean);
DROP FUNCTION IF EXISTS pm.api_key_revoke(text);
DROP FUNCTION IF EXISTS pm.api_key_create(text, text, text, integer);
DROP FUNCTION IF EXISTS pm.api_key_json(pm.api_keys);
DROP TABLE IF EXISTS pm.api_keys;
