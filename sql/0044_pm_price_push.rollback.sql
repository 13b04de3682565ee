-- Rollback of 0044_pm_price_push: the function only.
DROP FUNCTION IF EXISTS pm.push_prices(jsonb, text, text);
