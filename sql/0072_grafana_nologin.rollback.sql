-- Rollback of 0072_grafana_nologin: nothing is undone on purpose. Giving pm_grafana back a login
-- with a known password would reopen the door this migration closed; bin/migrate with
-- POSITION_MANAGER_GRAFANA_PASSWORD lets it log in with a password of the operator's.
SELECT 1;
