-- 0091 the ledger's row rules in one CHECK that calls a function (pm.ledger_row_valid, defined with
-- the ledger in sql/repeatable/30_ledger.sql, which also adds the constraint executions_row_check).
-- PostgreSQL reads a table's CHECK expressions from their stored text at the start of every
-- statement that writes the table: the five constraints below took about 20 us of each insert into
-- the ledger (one per applied execution), the one call about 8 us. The rules are the same.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction, the repeatable files after the numbered migrations).
ALTER TABLE pm.executions
    DROP CONSTRAINT IF EXISTS executions_kind_check,
    DROP CONSTRAINT IF EXISTS executions_source_check,
    DROP CONSTRAINT IF EXISTS executions_leg_check,
    DROP CONSTRAINT IF EXISTS executions_side_check,
    DROP CONSTRAINT IF EXISTS executions_trade_check;
