DROP FUNCTION IF EXISTS pm.apply_batch(text, jsonb, boolean);
