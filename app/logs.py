"""JSON logs (python-json-logger): one line per record with service, level and trace_id."""
from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not getattr(record, "trace_id", None):
            record.trace_id = trace_id_var.get()
        return True


def setup(service: str, level: str = "INFO", stream=None) -> None:
    """Route the root logger to one JSON line per record on stderr (or `stream`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(trace_id)s",
        rename_fields={"levelname": "level", "asctime": "timestamp", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    ))
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(logging.WARNING)
