-- 0072 the read-only Grafana role can no longer log in with a known password. 0030 created
-- pm_grafana as a LOGIN role whose password defaulted to 'pm_grafana'; from now on it is NOLOGIN
-- without a password. Grafana reaches it in one of two ways, both set up by bin/migrate from its
-- environment (pm.grafana_access in sql/repeatable/95_grafana.sql): pm_grafana is granted to a login
-- role the operator names (POSITION_MANAGER_GRAFANA_LOGIN_ROLE, e.g. grafana_monitor), or it gets
-- the password POSITION_MANAGER_GRAFANA_PASSWORD and may log in again.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT. The role is cluster-wide: this applies to every
-- database of the cluster (bin/migrate of each database grants access again from its environment).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        ALTER ROLE pm_grafana NOLOGIN PASSWORD NULL;
    END IF;
END
$$;
