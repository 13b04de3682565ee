-- Rollback of 0004_pm_accounting: drops the views, functions and procedures it created (nothing else; no data).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pm' AND p.prokind = 'f' AND p.proname = ANY (ARRAY['apply_execution','apply_order_event','combine_results','apply_order_progress_event','bad_input','bump','dec','fold_ledger','get_position','is_flat','iso','image_json','image_of','iso_utc','j_num','j_text','j_time','ledger_insert','lock_position','new_execution','norm_leg','norm_side','norm_symbol','parse_bybit_execution','parse_execution_event','parse_execution_event_checked','parse_order_event','position_json','position_ref','positive','recompute_position','record_change','refold_ledger','req','state_of','step','unrealized','with_state','write_state','zero_state'])
    LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f || ' CASCADE';
    END LOOP;
END
$$;
