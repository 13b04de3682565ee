"""Configuration from the environment.

Every variable is read once, at process start. A missing or malformed value raises
`ConfigError` whose message names the variable; every entry point reports it the same way
(`entry_point`, `config_error`: `<prog>: configuration error: <message>`, exit code 2).
Thresholds that the SQL functions need are also handed to PostgreSQL as custom settings
(`pm.*`) on every pooled connection, see `Settings.sql_options`.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping


# The exit code of every entry point (bin/) when its configuration or usage is wrong.
EXIT_CONFIG = 2


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _int(raw: str) -> int:
    return int(raw.strip())


def _pos_int(raw: str) -> int:
    value = int(raw.strip())
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _nonneg_int(raw: str) -> int:
    value = int(raw.strip())
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _nonneg_decimal(raw: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ValueError("expected a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ValueError("must be a finite number >= 0")
    return value


def _pos_decimal(raw: str) -> Decimal:
    value = _nonneg_decimal(raw)
    if value == 0:
        raise ValueError("must be > 0")
    return value


# The long-running roles that write heartbeats (bin/consume): the two queue consumers and the relay.
ROLES = ("order", "position", "relay")


def _roles(raw: str) -> tuple[str, ...]:
    """`order,position,relay` -> those roles, in that order; empty: none."""
    roles = tuple(dict.fromkeys(r.strip() for r in raw.split(",") if r.strip()))
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r}; expected some of {', '.join(ROLES)}")
    return roles


def _port(raw: str) -> int:
    value = int(raw.strip())
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port (1..65535)")
    return value


def _str(raw: str) -> str:
    return raw


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _optional_url(raw: str) -> str:
    return _url(raw) if raw.strip() else ""


# Bybit's REST hosts by ytrader's BYBIT_ENVIRONMENT (what BYBIT_API_URL defaults to).
BYBIT_HOSTS = {"mainnet": "https://api.bybit.com", "testnet": "https://api-testnet.bybit.com"}


def _bybit_environment(raw: str) -> str:
    value = raw.strip().lower()
    if value not in BYBIT_HOSTS:
        raise ValueError(f"expected one of {', '.join(BYBIT_HOSTS)}")
    return value


def _host(raw: str) -> str:
    value = raw.strip()
    if value and not all(c.isalnum() or c in ".-_:[]" for c in value):
        raise ValueError("expected a host name or address")
    return value


def parse_overrides(raw: str) -> dict[str, int]:
    """`key:limit,key:limit` -> {key: limit}: limits of keys that are accepted by other means
    (POSITION_MANAGER_API_KEY or a key of bin/api-keys); an override alone accepts nothing."""
    result: dict[str, int] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, limit = item.rpartition(":")
        if not sep or not key.strip():
            raise ValueError(f"expected key:limit, got {item!r}")
        result[key.strip()] = _pos_int(limit)
    return result


# (attribute, variable, default, parser). A default of None means: required.
_VARIABLES: list[tuple[str, str, str | None, Callable[[str], Any]]] = [
    ("service_name", "POSITION_MANAGER_SERVICE_NAME", "position-manager", _nonempty),
    ("port", "POSITION_MANAGER_PORT", "4800", _port),
    ("api_key", "POSITION_MANAGER_API_KEY", "", _str),
    ("log_level", "POSITION_MANAGER_LOG_LEVEL", "INFO", _log_level),
    ("postgres_host", "POSTGRES_HOST", "127.0.0.1", _nonempty),
    ("postgres_port", "POSTGRES_PORT", "5432", _port),
    ("postgres_db", "POSTGRES_DB", "ytrader", _nonempty),
    ("postgres_user", "POSTGRES_USER", "postgres", _nonempty),
    ("postgres_password", "POSTGRES_PASSWORD", "", _str),
    ("db_pool_size", "POSITION_MANAGER_DB_POOL_SIZE", "4", _pos_int),
    ("rabbitmq_host", "RABBITMQ_HOST", "127.0.0.1", _nonempty),
    ("rabbitmq_port", "RABBITMQ_PORT", "5672", _port),
    ("rabbitmq_user", "RABBITMQ_USER", "guest", _nonempty),
    ("rabbitmq_password", "RABBITMQ_PASSWORD", "guest", _str),
    ("rabbitmq_vhost", "RABBITMQ_VHOST", "/", _nonempty),
    ("order_queue", "POSITION_MANAGER_ORDER_QUEUE", "order-manager.order_executed", _nonempty),
    ("position_queue", "POSITION_MANAGER_POSITION_QUEUE", "ws-gateway.position", _nonempty),
    ("dead_letter_queue", "POSITION_MANAGER_DEAD_LETTER_QUEUE", "position-manager.dead_letter", _nonempty),
    ("position_updated_queue", "POSITION_MANAGER_POSITION_UPDATED_QUEUE",
     "position-manager.position_updated", _nonempty),
    ("portfolio_updated_queue", "POSITION_MANAGER_PORTFOLIO_UPDATED_QUEUE",
     "position-manager.portfolio_updated", _nonempty),
    ("snapshot_created_queue", "POSITION_MANAGER_SNAPSHOT_CREATED_QUEUE",
     "position-manager.position_snapshot_created", _nonempty),
    # The relay publishes every event to this durable topic exchange, routing key = event type.
    ("events_exchange", "POSITION_MANAGER_EVENTS_EXCHANGE", "position-manager.events", _nonempty),
    # The bound of the event queues nobody in the trading stack reads (portfolio_updated,
    # position_snapshot_created): messages, seconds; 0 = no such bound.
    ("event_queue_max_length", "POSITION_MANAGER_EVENT_QUEUE_MAX_LENGTH", "10000", _nonneg_int),
    ("event_queue_ttl", "POSITION_MANAGER_EVENT_QUEUE_TTL", "86400", _nonneg_int),
    ("consumer_prefetch", "POSITION_MANAGER_CONSUMER_PREFETCH", "4000", _pos_int),
    ("consumer_batch_size", "POSITION_MANAGER_CONSUMER_BATCH_SIZE", "2000", _pos_int),
    ("max_delivery_attempts", "POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS", "5", _pos_int),
    ("portfolio_event_interval", "POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL", "5", _nonneg_decimal),
    ("snapshot_interval", "POSITION_MANAGER_SNAPSHOT_INTERVAL", "3600", _pos_int),
    ("snapshot_retention_days", "POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS", "365", _pos_int),
    ("validation_interval", "POSITION_MANAGER_VALIDATION_INTERVAL", "1800", _pos_int),
    ("metrics_cache_ttl", "POSITION_MANAGER_METRICS_CACHE_TTL", "10", _nonneg_decimal),
    ("use_ws_avg_price", "POSITION_MANAGER_USE_WS_AVG_PRICE", "true", _bool),
    ("avg_price_diff_threshold", "POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD", "0.001", _nonneg_decimal),
    ("size_validation_threshold", "POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD", "0.0001", _nonneg_decimal),
    ("price_staleness_threshold", "POSITION_MANAGER_PRICE_STALENESS_THRESHOLD", "300", _nonneg_int),
    ("price_api_timeout", "POSITION_MANAGER_PRICE_API_TIMEOUT", "5", _nonneg_decimal),
    ("price_api_retries", "POSITION_MANAGER_PRICE_API_RETRIES", "3", _nonneg_int),
    ("rate_limit_enabled", "POSITION_MANAGER_RATE_LIMIT_ENABLED", "true", _bool),
    ("rate_limit_default", "POSITION_MANAGER_RATE_LIMIT_DEFAULT", "100", _pos_int),
    ("rate_limit_overrides", "POSITION_MANAGER_RATE_LIMIT_OVERRIDES", "", parse_overrides),
    # The most tokens an API process takes at once from the bucket of a key limited to at least
    # 6,000 requests per minute (a lease: app/api/access.py); 1 = every request takes its own.
    ("rate_limit_lease", "POSITION_MANAGER_RATE_LIMIT_LEASE", "32", _pos_int),
    # The price job's Bybit host: BYBIT_API_URL when set, else the host of BYBIT_ENVIRONMENT
    # (testnet or mainnet, as in the trading stack's own configuration).
    ("bybit_environment", "BYBIT_ENVIRONMENT", "mainnet", _bybit_environment),
    ("bybit_api_url", "BYBIT_API_URL", "", _optional_url),
    # ws-gateway: when WS_GATEWAY_HOST is set, the position consumer asks it (POST
    # /api/v1/subscriptions, X-API-Key) to forward Bybit's position topic, at start and then every
    # POSITION_MANAGER_WS_SUBSCRIPTION_INTERVAL seconds.
    ("ws_gateway_host", "WS_GATEWAY_HOST", "", _host),
    ("ws_gateway_port", "WS_GATEWAY_PORT", "4400", _port),
    ("ws_gateway_api_key", "WS_GATEWAY_API_KEY", "", _str),
    ("ws_subscription_interval", "POSITION_MANAGER_WS_SUBSCRIPTION_INTERVAL", "300", _pos_int),
    # The API under gunicorn (bin/serve): worker processes, threads per worker.
    ("api_workers", "POSITION_MANAGER_API_WORKERS", "4", _pos_int),
    ("api_threads", "POSITION_MANAGER_API_THREADS", "4", _pos_int),
    # Adds GET /bench/select1 (SELECT 1 through the same middleware and pool) for bench/http_bench.py.
    ("bench_reference", "POSITION_MANAGER_BENCH_REFERENCE", "false", _bool),
    # GET /api/v1/stream (app/api/extras/stream.py): seconds between heartbeat comments, and the
    # longest a stream stays open before the client reconnects with Last-Event-ID.
    ("stream_heartbeat", "POSITION_MANAGER_STREAM_HEARTBEAT", "15", _pos_int),
    ("stream_max_seconds", "POSITION_MANAGER_STREAM_MAX_SECONDS", "300", _pos_int),
    # Liveness (docs/observability.md): each consumer role and the relay write a heartbeat with
    # their figures every INTERVAL seconds; a role silent for longer than TIMEOUT is not alive, and
    # /health is degraded while one of HEALTH_ROLES is not (empty: the API alone, no role expected).
    ("heartbeat_interval", "POSITION_MANAGER_HEARTBEAT_INTERVAL", "5", _pos_decimal),
    ("heartbeat_timeout", "POSITION_MANAGER_HEARTBEAT_TIMEOUT", "30", _pos_decimal),
    ("health_roles", "POSITION_MANAGER_HEALTH_ROLES", ",".join(ROLES), _roles),
    # Live streams one key (or token subject) may hold open at once, over every worker and instance.
    ("stream_max_per_key", "POSITION_MANAGER_STREAM_MAX_PER_KEY", "4", _pos_int),
    # Optional bearer tokens (HS256) beside X-API-Key; empty = off (app/api/auth.py).
    ("jwt_secret", "POSITION_MANAGER_JWT_SECRET", "", _str),
    # Largest request body the API reads (bytes); a longer one is answered 413 unread.
    ("max_body_bytes", "POSITION_MANAGER_MAX_BODY_BYTES", "262144", _pos_int),
    # bin/migrate only: how Grafana reaches the read-only role pm_grafana (NOLOGIN by default):
    # a login role of the operator's that is granted pm_grafana, and/or a password that lets
    # pm_grafana itself log in (docs/security.md).
    ("grafana_login_role", "POSITION_MANAGER_GRAFANA_LOGIN_ROLE", "", _str),
    ("grafana_password", "POSITION_MANAGER_GRAFANA_PASSWORD", "", _str),
]

VARIABLE_NAMES = [name for _, name, _, _ in _VARIABLES]


@dataclass(frozen=True)
class Settings:
    service_name: str
    port: int
    api_key: str
    log_level: str
    postgres_host: str
    postgres_port: int
    postgres_db: str
    postgres_user: str
    postgres_password: str
    db_pool_size: int
    rabbitmq_host: str
    rabbitmq_port: int
    rabbitmq_user: str
    rabbitmq_password: str
    rabbitmq_vhost: str
    order_queue: str
    position_queue: str
    dead_letter_queue: str
    position_updated_queue: str
    portfolio_updated_queue: str
    snapshot_created_queue: str
    events_exchange: str
    event_queue_max_length: int
    event_queue_ttl: int
    consumer_prefetch: int
    consumer_batch_size: int
    max_delivery_attempts: int
    portfolio_event_interval: Decimal
    snapshot_interval: int
    snapshot_retention_days: int
    validation_interval: int
    metrics_cache_ttl: Decimal
    use_ws_avg_price: bool
    avg_price_diff_threshold: Decimal
    size_validation_threshold: Decimal
    price_staleness_threshold: int
    price_api_timeout: Decimal
    price_api_retries: int
    rate_limit_enabled: bool
    rate_limit_default: int
    rate_limit_overrides: dict[str, int]
    rate_limit_lease: int
    bybit_environment: str
    bybit_api_url: str
    ws_gateway_host: str
    ws_gateway_port: int
    ws_gateway_api_key: str
    ws_subscription_interval: int
    api_workers: int
    api_threads: int
    bench_reference: bool
    stream_heartbeat: int
    stream_max_seconds: int
    heartbeat_interval: Decimal
    heartbeat_timeout: Decimal
    health_roles: tuple[str, ...]
    stream_max_per_key: int
    jwt_secret: str
    max_body_bytes: int
    grafana_login_role: str
    grafana_password: str

    def sql_options(self) -> str:
        """libpq `options`: the custom settings the SQL functions read (see sql/ pm.setting())."""
        pairs = {
            "TimeZone": "UTC",
            "pm.use_ws_avg_price": "true" if self.use_ws_avg_price else "false",
            "pm.avg_price_diff_threshold": str(self.avg_price_diff_threshold),
            "pm.size_validation_threshold": str(self.size_validation_threshold),
            "pm.price_staleness_threshold": str(self.price_staleness_threshold),
            "pm.heartbeat_timeout": str(self.heartbeat_timeout),
        }
        return " ".join(f"-c {k}={v}" for k, v in pairs.items())

    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect / ConnectionPool(kwargs=...)."""
        info: dict[str, Any] = {
            "host": self.postgres_host,
            "port": self.postgres_port,
            "dbname": dbname or self.postgres_db,
            "user": self.postgres_user,
            "options": self.sql_options(),
            "application_name": self.service_name,
            "connect_timeout": 5,
        }
        if self.postgres_password:
            info["password"] = self.postgres_password
        return info

    @property
    def ws_gateway_url(self) -> str | None:
        """ws-gateway's subscription endpoint, or None when WS_GATEWAY_HOST is not set."""
        if not self.ws_gateway_host:
            return None
        return f"http://{self.ws_gateway_host}:{self.ws_gateway_port}/api/v1/subscriptions"

    def api_key_limit(self) -> int:
        """Requests/minute of POSITION_MANAGER_API_KEY: its override, else the default."""
        return self.rate_limit_overrides.get(self.api_key, self.rate_limit_default)

    def with_overrides(self, **changes: Any) -> "Settings":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every variable of _VARIABLES; raise ConfigError naming the first bad one."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for attr, name, default, parse in _VARIABLES:
        raw = env.get(name)
        if raw is None:
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            raw = default
        try:
            values[attr] = parse(raw)
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(f"{name}={raw!r} is malformed: {exc}") from None
    if not values["bybit_api_url"]:
        values["bybit_api_url"] = BYBIT_HOSTS[values["bybit_environment"]]
    if values["ws_gateway_host"] and not values["ws_gateway_api_key"]:
        raise ConfigError("WS_GATEWAY_API_KEY is required when WS_GATEWAY_HOST is set")
    return Settings(**values)


# A secret shorter than this is refused: a generated key (bin/api-keys, bin/dev) is far longer.
SECRET_MIN_LENGTH = 24
# Words of sample values: a secret containing one (after dropping case and punctuation) is one a
# reader copied from an example, not one made for this deployment.
_PLACEHOLDER_WORDS = ("changeme", "yourapikey", "yourkey", "yoursecret", "apikeyhere", "secrethere",
                      "placeholder", "replaceme", "example", "insertkey", "xxxxxx", "123456", "password")


def secret_problem(value: str, min_length: int = SECRET_MIN_LENGTH) -> str | None:
    """Why a configured secret cannot be used (None when it can): empty, a known placeholder
    ("change-me" and the like), shorter than min_length, or too few different characters. The
    reason never repeats the value."""
    if not value.strip():
        return "is empty"
    folded = "".join(ch for ch in value.lower() if ch.isalnum())
    if any(word in folded for word in _PLACEHOLDER_WORDS):
        return "is a placeholder from an example, not a secret"
    if len(value) < min_length:
        return f"is shorter than {min_length} characters"
    if len(set(value)) < 8:
        return "has fewer than 8 different characters"
    return None


def require_api_keys(settings: Settings) -> Settings:
    """The API refuses to start without a usable POSITION_MANAGER_API_KEY (and, when set, a usable
    POSITION_MANAGER_JWT_SECRET); the other processes need neither."""
    problem = secret_problem(settings.api_key)
    if problem:
        raise ConfigError(f"POSITION_MANAGER_API_KEY {problem}; set a random key of at least "
                          f"{SECRET_MIN_LENGTH} characters (e.g. python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'); bin/dev makes one for development")
    if settings.jwt_secret:
        problem = secret_problem(settings.jwt_secret, 32)
        if problem:
            raise ConfigError(f"POSITION_MANAGER_JWT_SECRET {problem}; an HS256 secret needs at least 32 random "
                              "characters (or leave it empty: no bearer tokens)")
    return settings


def config_error(prog: str, exc: ConfigError) -> int:
    """Say `<prog>: configuration error: <message>` on stderr; the exit code of a configuration error."""
    print(f"{prog}: configuration error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def entry_point(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator of a main() that returns an exit code: a ConfigError raised in it (by load() or
    require_api_keys()) ends it with config_error(prog, ...), exit code 2, and no traceback."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except ConfigError as exc:
                return config_error(prog, exc)

        return run

    return decorate
