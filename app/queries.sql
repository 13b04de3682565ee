-- Every statement the Python processes send to PostgreSQL, by name (see app/db.py).
-- Almost all of them call one function or read one view of schema pm (sql/).

-- name: apply_order_event
-- One message body of the order queue (SPEC §2.3), applied in the caller's transaction.
SELECT pm.apply_order_event(%(event)s::jsonb)

-- name: apply_position_event
-- One message body of the position queue (SPEC §2.4), applied in the caller's transaction.
SELECT pm.apply_position_event(%(event)s::jsonb)
