-- Rollback of 0005_pm_exchange: drops the views, functions and procedures it created (nothing else; no data).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pm' AND p.prokind = 'f' AND p.proname = ANY (ARRAY['apply_exchange_report','apply_position_event','apply_position_record','record_discrepancy','set_prices','stale_price_assets'])
    LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f || ' CASCADE';
    END LOOP;
END
$$;
