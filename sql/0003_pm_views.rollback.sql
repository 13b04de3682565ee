-- Rollback of 0003_pm_views: drops the views, functions and procedures it created (nothing else; no data).
DROP VIEW IF EXISTS pm.v_portfolio_by_asset CASCADE;
DROP VIEW IF EXISTS pm.v_portfolio CASCADE;
DROP VIEW IF EXISTS pm.v_positions CASCADE;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pm' AND p.prokind = 'f' AND p.proname = ANY (ARRAY['now_utc','portfolio_totals','setting','pos_is_open','pos_side','pos_exposure','pos_pnl_pct','pos_time_held','pos_price_stale','image_position'])
    LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f || ' CASCADE';
    END LOOP;
END
$$;
