"""gunicorn configuration of the API (bin/serve). Values come from app.settings.

Threaded workers (gthread) keep HTTP connections alive between requests, which a trading client
polling /positions/{asset} before every order benefits from; each worker loads the app after the
fork (no preload), so every worker has its own connection pool. Command-line options given to
bin/serve (e.g. --bind 127.0.0.1:9000) override these values.
"""
import glob
import os
import shutil
import sys
import tempfile

from app import logs
from app.settings import ConfigError, config_error, load, require_api_keys

try:
    _settings = require_api_keys(load())
except ConfigError as exc:
    sys.exit(config_error("bin/serve", exc))

# The API's metrics count in prometheus_client's multiprocess mode (app/api/metrics.py): every
# worker writes its counters to files in this directory, and /metrics of any worker reads them all.
# Set before any worker imports prometheus_client. A directory of our own when none is given.
_METRICS_DIR_OWNED = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _METRICS_DIR_OWNED:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{_settings.service_name}-api-metrics-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server):
    """Once, in the master: counts of an earlier run of the API are not this run's (Prometheus sees
    a counter reset); a warning for each rate-limit override that matches no accepted key."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)
    from app.api.keys import warn_unmatched_overrides  # (imports no prometheus_client in the master)
    logs.setup(_settings.service_name, _settings.log_level)
    warn_unmatched_overrides(_settings)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _METRICS_DIR_OWNED:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


wsgi_app = "app.api:get_app()"
bind = [f"0.0.0.0:{_settings.port}"]
workers = _settings.api_workers
# gthread with a deadline for reading a request (slow clients cannot hold the threads)
worker_class = "app.api.gunicorn_worker.DeadlineThreadWorker"
threads = _settings.api_threads
keepalive = 30
timeout = 30
graceful_timeout = 10
# Access logs are JSON lines written by the app itself (app/api/middleware.py), with the trace id.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = f"{_settings.service_name}-api"
