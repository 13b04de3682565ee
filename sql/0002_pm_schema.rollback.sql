-- Rollback of 0002: drops this service's own tables and type in schema pm (the ledger, outbox,
-- audit, counters, ...). The schema itself stays: yoyo keeps its bookkeeping there.
DROP TRIGGER IF EXISTS outbox_notify ON pm.outbox;
DROP FUNCTION IF EXISTS pm.outbox_notify();
DROP TABLE IF EXISTS pm.dead_letters, pm.counters, pm.discrepancies, pm.portfolio_event_state, pm.outbox,
    pm.exchange_state, pm.order_progress, pm.executions CASCADE;
DROP TYPE IF EXISTS pm.exec_request CASCADE;
DROP TYPE IF EXISTS pm.position_image CASCADE;
DROP TYPE IF EXISTS pm.pos_state CASCADE;
