-- Rollback of 0006_pm_snapshots_validation_outbox: drops the views, functions and procedures it created (nothing else; no data).
DROP PROCEDURE IF EXISTS pm.validate_positions;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pm' AND p.prokind = 'f' AND p.proname = ANY (ARRAY['cleanup_snapshots','enqueue_portfolio_event','health','last_change_id','list_snapshots','outbox_body','outbox_claim','outbox_mark_published','portfolio_json','record_dead_letter','snapshot_all','snapshot_ids','snapshot_json','snapshot_position','validate_all','validate_position','validation_summary_add'])
    LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f || ' CASCADE';
    END LOOP;
END
$$;
