def test_worked_example_one(db):
    for key, side, q, p, f, t in [("x1", "Buy", "10", "100", "0.1", "00:00"), ("x2", "Buy", "10", "110", "0.11", "00:01"),
                                  ("x3", "Sell", "5", "120", "0.06", "00:02")]:
        db.execute("SELECT pm.apply_order_event(%s::jsonb)", (
            f'{{"event_type":"order_executed","execution_id":"{key}","order_id":"o1","asset":"BTCUSDT","side":"{side}",'
            f'"execution_quantity":"{q}","execution_price":"{p}","execution_fees":"{f}","executed_at":"2026-01-01T{t}:00Z"}}',))
    size, avg, realized = db.execute("SELECT size, average_entry_price, realized_pnl FROM positions").fetchone()
    assert (size, avg, realized) == (15, 105, __import__("decimal").Decimal("74.73"))
