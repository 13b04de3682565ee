"""gunicorn configuration of the API (bin/serve). Values come from app.settings.

Threaded workers (gthread) keep HTTP connections alive between requests, which a trading client
polling /positions/{asset} before every order benefits from; each worker loads the app after the
fork (no preload), so every worker has its own connection pool. Command-line options given to
bin/serve (e.g. --bind 127.0.0.1:9000) override these values.
"""
import sys

from app.settings import ConfigError, config_error, load, require_api_keys

try:
    _settings = require_api_keys(load())
except ConfigError as exc:
    sys.exit(config_error("bin/serve", exc))

wsgi_app = "app.api:get_app()"
bind = [f"0.0.0.0:{_settings.port}"]
workers = _settings.api_workers
worker_class = "gthread"
threads = _settings.api_threads
keepalive = 30
timeout = 30
graceful_timeout = 10
# Access logs are JSON lines written by the app itself (app/api/middleware.py), with the trace id.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = f"{_settings.service_name}-api"
