"""app.logs.info_rows writes the lines logging would write, record by record."""
from __future__ import annotations

import io
import json
import logging
import re

from app import logs


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_info_rows_are_the_lines_of_logging():
    records = [{"queue": "q", "event_id": "e1", "trace_id": "t1", "status": "applied", "reason": None,
                "asset": "BTCUSDT", "position_version": 3, "delivery_tag": 1, "redelivered": False},
               {"queue": "q", "event_id": "e2", "trace_id": None, "status": "duplicate", "reason": 'seen "\u00e9"\\\n',
                "asset": None, "position_version": None, "delivery_tag": 2, "redelivered": True}]
    logger = logging.getLogger("position_manager.test_logs")
    by_logging, by_info_lines = io.StringIO(), io.StringIO()
    try:
        logs.setup("svc", stream=by_logging)
        token = logs.trace_id_var.set("from-context")
        for record in records:
            logger.info("message processed", extra=record)
        logs.setup("svc", stream=by_info_lines)
        logs.info_rows(logger, "message processed", tuple(records[0]), [tuple(r.values()) for r in records])
        logs.trace_id_var.reset(token)
        stamp = re.compile(r'"timestamp": "[^"]*"')
        assert stamp.sub("", by_info_lines.getvalue()) == stamp.sub("", by_logging.getvalue())   # byte for byte
        assert lines(by_info_lines)[1]["trace_id"] == "from-context"

        # below INFO nothing; with another handler as well, through logging
        logging.getLogger().setLevel(logging.WARNING)
        logs.info_rows(logger, "message processed", tuple(records[0]), [tuple(r.values()) for r in records])
        assert len(lines(by_info_lines)) == 2
        logging.getLogger().setLevel(logging.INFO)
        other = io.StringIO()
        logging.getLogger().addHandler(logging.StreamHandler(other))
        logs.info_rows(logger, "message processed", tuple(records[0]), [tuple(r.values()) for r in records])
        assert len(lines(by_info_lines)) == 4 and other.getvalue().count("message processed") == 2
    finally:
        logging.getLogger().handlers[:] = []
