-- Rollback of 0030: the Grafana views and this database's grants to pm_grafana. The role itself is
-- shared by every database of the cluster; it is dropped only when nothing else depends on it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA pm FROM pm_grafana;
        REVOKE ALL ON SCHEMA pm FROM pm_grafana;
    END IF;
END
$$;
DROP VIEW IF EXISTS pm.v_portfolio_history;
DROP VIEW IF EXISTS pm.v_snapshot_history;
DROP VIEW IF EXISTS pm.v_discrepancies;
DROP VIEW IF EXISTS pm.v_dead_letters;
DROP VIEW IF EXISTS pm.v_counters;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pm_grafana') THEN
        DROP ROLE pm_grafana;
    END IF;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'role pm_grafana kept: other databases of this cluster still grant it privileges';
END
$$;
