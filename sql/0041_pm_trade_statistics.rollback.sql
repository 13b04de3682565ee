-- Rollback of 0041_pm_trade_statistics: views and function only (no data).
DROP FUNCTION IF EXISTS pm.trade_statistics_json();
DROP VIEW IF EXISTS pm.v_trade_statistics;
DROP VIEW IF EXISTS pm.v_holdings;
DROP VIEW IF EXISTS pm.v_holding_rows;
