"""Fixtures of the compatibility tests: the whole service as the trading stack runs it (the order
and position consumers and the relay on RabbitMQ, the API under a real gunicorn, one PostgreSQL
database), with ws-gateway's subscription API played by a local fake."""
from __future__ import annotations

from tests.api.conftest import start_server  # noqa: F401 (a fixture used here)
from tests.pipeline.conftest import mq_vhost, pipe  # noqa: F401 (fixtures used here)
