"""The database unreachable: 503 with Retry-After and the error body (never a bare 500), /health
"unhealthy", and recovery without a restart when the database is back."""
from __future__ import annotations

import time

import requests

from tests.api.conftest import API_KEY, server_environ
from bench.common import free_port
from tests.sql.calls import fill


def assert_unavailable(response_status: int, headers, body: dict) -> None:
    assert response_status == 503, body
    assert int(headers["retry-after"]) >= 1
    assert body["error_code"] == "database_unavailable"
    assert body["trace_id"]


def test_closed_port_gives_503_and_unhealthy(make_client, api_settings):
    client = make_client(api_settings.with_overrides(postgres_port=free_port()))
    response = client.simulate_get("/api/v1/positions/BTCUSDT")
    assert_unavailable(response.status_code, response.headers, response.json)
    health = client.simulate_get("/health")
    assert health.status_code == 503
    assert health.json["status"] == "unhealthy" and health.json["database_connected"] is False
    assert int(health.headers["retry-after"]) >= 1


def test_rate_limit_off_and_database_down_is_still_503(make_client, api_settings):
    client = make_client(api_settings.with_overrides(postgres_port=free_port(), rate_limit_enabled=False))
    response = client.simulate_get("/api/v1/portfolio")
    assert_unavailable(response.status_code, response.headers, response.json)


def poll(url: str, expected: int, deadline_seconds: float = 40) -> requests.Response:
    deadline = time.monotonic() + deadline_seconds
    while True:
        response = requests.get(url, headers={"X-API-Key": API_KEY}, timeout=15)
        if response.status_code == expected:
            return response
        assert time.monotonic() < deadline, (response.status_code, response.text)
        time.sleep(0.2)


def test_database_goes_away_and_comes_back_under_gunicorn(start_server, settings, db, pg_proxy):
    """The workers reach PostgreSQL through a proxy that the test cuts and restores."""
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    server = start_server(server_environ(settings, POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(pg_proxy.port),
                                         POSITION_MANAGER_API_WORKERS="2",
                                         POSITION_MANAGER_RATE_LIMIT_DEFAULT="100000"))
    url = server.url + "/api/v1/positions/BTCUSDT"
    assert poll(url, 200).json()["asset"] == "BTCUSDT"

    pg_proxy.stop()
    down = requests.get(url, headers={"X-API-Key": API_KEY}, timeout=15)
    assert_unavailable(down.status_code, {k.lower(): v for k, v in down.headers.items()}, down.json())
    health = requests.get(server.url + "/health", timeout=15)
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    portfolio = requests.get(server.url + "/api/v1/portfolio", headers={"X-API-Key": API_KEY}, timeout=15)
    assert portfolio.status_code == 503

    pg_proxy.start()
    assert poll(url, 200).json()["asset"] == "BTCUSDT"
    assert poll(server.url + "/health", 200).json()["database_connected"] is True
    assert "Traceback" not in server.log()


def test_api_connections_carry_a_statement_timeout_mapped_to_503(api_settings, connect):
    from app.api import STATEMENT_TIMEOUT_MS, make_api_pool
    from app.api.errors import classify

    pool = make_api_pool(api_settings)
    try:
        with pool.connection() as conn:
            (value,) = conn.execute("SHOW statement_timeout").fetchone()
        assert value == f"{STATEMENT_TIMEOUT_MS // 1000}s"
    finally:
        pool.close()
    conn = connect(autocommit=True)
    conn.execute("SET statement_timeout = 10")
    try:
        conn.execute("SELECT pg_sleep(1)")
    except Exception as exc:  # psycopg.errors.QueryCanceled, SQLSTATE 57014
        error = classify(exc)
    assert error.status == 503 and error.error_code == "database_timeout"
    assert int(error.headers["Retry-After"]) >= 1
