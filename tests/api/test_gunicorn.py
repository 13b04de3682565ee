"""The API under a real gunicorn (bin/serve) over real HTTP: the shared rate limit across 4 workers,
per-key overrides, the quickstart's curl examples, configuration errors."""
from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.api import access
from tests.api.conftest import API_KEY, ROOT, server_environ
from tests.sql.calls import fill, set_prices


def burst(url: str, key: str, count: int, threads: int = 16) -> list[requests.Response]:
    def one(_):
        with requests.Session() as session:
            return session.get(url, headers={"X-API-Key": key}, timeout=30)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def refilled(limit: int, seconds: float) -> int:
    """Tokens a bucket of `limit` per minute gains in that many seconds (at most)."""
    return int(seconds * limit / 60) + 1


def test_rate_limit_is_exact_across_four_workers(start_server, settings, stored_key):
    limit = 30
    key_a, key_b = stored_key("service-a", "read"), stored_key("service-b", "read", rate_limit=500)
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="4", POSITION_MANAGER_API_THREADS="4",
                                         POSITION_MANAGER_RATE_LIMIT_DEFAULT=str(limit),
                                         POSITION_MANAGER_RATE_LIMIT_OVERRIDES=f"{key_a}:12,{key_b}:7"))
    deadline = time.monotonic() + 30
    while server.log().count("Booting worker") < 4:  # every worker is up before the burst
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)

    started = time.monotonic()
    responses = burst(server.url + "/api/v1/positions", API_KEY, 2 * limit)
    elapsed = time.monotonic() - started
    statuses = sorted(r.status_code for r in responses)
    # the bucket holds `limit`; during the burst it refills one token every 2 s
    assert limit <= statuses.count(200) <= limit + refilled(limit, elapsed), (statuses, elapsed)
    assert statuses.count(200) + statuses.count(429) == 2 * limit
    for response in responses:
        assert response.headers["X-RateLimit-Limit"] == str(limit)
        if response.status_code == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 2
            assert response.headers["X-RateLimit-Remaining"] == "0"
            body = response.json()
            assert body["error_code"] == "rate_limited" and body["trace_id"] == response.headers["X-Trace-Id"]

    # stored keys with their overrides (which beat a key's own limit), each its own bucket, concurrently
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda kv: burst(server.url + "/api/v1/portfolio", *kv), [(key_a, 20), (key_b, 20)])
    elapsed = time.monotonic() - started
    assert 12 <= [r.status_code for r in a].count(200) <= 12 + refilled(12, elapsed)
    assert 7 <= [r.status_code for r in b].count(200) <= 7 + refilled(7, elapsed)
    # /health is never limited
    assert all(requests.get(server.url + "/health", timeout=10).status_code == 200 for _ in range(5))


def test_leased_tokens_of_a_fast_key_hold_its_limit_across_four_workers(start_server, settings):
    """A key limited to LEASE_MIN_LIMIT per minute: each worker takes its tokens several at a time
    (app/api/access.py), yet a burst over four workers gets no more through than the one bucket
    holds plus its refill over the burst and one lease's lifetime, and no fewer than the bucket less
    what the other three workers may hold unspent when it runs out (lapsed leases go back)."""
    limit = access.LEASE_MIN_LIMIT
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="4", POSITION_MANAGER_API_THREADS="4",
                                         POSITION_MANAGER_RATE_LIMIT_DEFAULT=str(limit)))
    deadline = time.monotonic() + 30
    while server.log().count("Booting worker") < 4:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    # bursts until the bucket runs dry: it refills 100 tokens a second, so how many requests that
    # takes depends on how fast this machine serves them (it must serve more than 100 a second)
    started = time.monotonic()
    responses = []
    while len(responses) < 4 * limit and not any(r.status_code == 429 for r in responses):
        responses += burst(server.url + "/api/v1/portfolio", API_KEY, limit // 3)
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    admitted = statuses.count(200)
    assert admitted + statuses.count(429) == len(responses) and statuses.count(429) > 0, (len(responses), elapsed)
    assert limit - 3 * 32 <= admitted <= limit + refilled(limit, elapsed + access.LEASE_SECONDS), (admitted, elapsed)
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 429)


def curl(*args: str) -> tuple[int, str, dict]:
    """Run curl as a user would; return (status, body, lower-cased headers)."""
    out = subprocess.run(["curl", "-s", "-i", *args], capture_output=True, timeout=30, check=True).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), body, headers


def test_quickstart_curl_examples(start_server, settings, db):
    """The quick-start curl calls (health, positions, one position, portfolio), host and key adapted."""
    fill(db, "BTCUSDT", "Buy", "1.5", "50000", fee="0.1")
    fill(db, "ETHUSDT", "Sell", "3", "3000")
    set_prices(db, {"BTCUSDT": "50100", "ETHUSDT": "2900"})
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="1",
                                         POSITION_MANAGER_RATE_LIMIT_DEFAULT="1000"))
    base = server.url
    key = f"X-API-Key: {API_KEY}"

    status, body, _ = curl(f"{base}/health")
    health = json.loads(body)
    assert status == 200
    assert {"status", "service", "database_connected", "queue_connected", "positions_count", "timestamp"} <= health.keys()
    assert health["status"] == "healthy" and health["positions_count"] == 2

    status, body, _ = curl("-H", key, f"{base}/api/v1/positions")
    assert status == 200 and json.loads(body)["count"] == 2

    status, body, headers = curl("-H", key, f"{base}/api/v1/positions/BTCUSDT?mode=one-way")
    assert status == 200 and json.loads(body)["asset"] == "BTCUSDT" and headers["etag"].startswith('W/"')

    status, body, _ = curl("-H", key, f"{base}/api/v1/portfolio")
    portfolio = json.loads(body)
    assert status == 200 and set(portfolio["by_asset"]) == {"BTCUSDT", "ETHUSDT"}

    status, body, _ = curl("-H", key, f"{base}/api/v1/portfolio/exposure")
    assert status == 200 and "total_exposure_usdt" in json.loads(body)

    status, body, _ = curl("-H", key, f"{base}/api/v1/portfolio/pnl")
    assert status == 200 and "total_pnl_usdt" in json.loads(body)

    status, body, _ = curl("-X", "POST", "-H", key, f"{base}/api/v1/positions/BTCUSDT/validate?fix_discrepancies=true")
    assert status == 200 and json.loads(body)["is_valid"] is True

    status, body, _ = curl("-X", "POST", "-H", key, f"{base}/api/v1/positions/BTCUSDT/snapshot")
    assert status == 201 and json.loads(body)["asset"] == "BTCUSDT"

    status, body, _ = curl("-H", key, f"{base}/api/v1/positions/BTCUSDT/snapshots?limit=10&offset=0")
    assert status == 200 and json.loads(body)["count"] == 1

    status, body, _ = curl("-H", key, f"{base}/api/v1/positions?asset=BTCUSDT")
    assert [p["asset"] for p in json.loads(body)["positions"]] == ["BTCUSDT"]

    status, body, _ = curl("-H", key, f"{base}/api/v1/positions?size_min=1.0")
    assert [p["asset"] for p in json.loads(body)["positions"]] == ["BTCUSDT", "ETHUSDT"]

    status, body, _ = curl("-H", key, f"{base}/api/v1/positions?size_max=5.0")
    assert [p["asset"] for p in json.loads(body)["positions"]] == ["BTCUSDT", "ETHUSDT"]

    status, body, _ = curl("-H", key, f"{base}/api/v1/portfolio?include_positions=true")
    assert status == 200 and len(json.loads(body)["positions"]) == 2

    # Troubleshooting section: 401 without a key
    status, body, _ = curl(f"{base}/api/v1/positions")
    assert status == 401 and json.loads(body)["error_code"] == "unauthorized"


@pytest.mark.parametrize("variable, value", [
    ("POSITION_MANAGER_PORT", "not-a-port"),
    ("POSITION_MANAGER_API_WORKERS", "0"),
    ("POSITION_MANAGER_API_KEY", ""),
    ("POSITION_MANAGER_API_KEY", "change-me"),
    ("POSITION_MANAGER_API_KEY", "CHANGE_ME-in-production-please-0123"),  # long, but a placeholder
    ("POSITION_MANAGER_API_KEY", "your-api-key-here"),
    ("POSITION_MANAGER_API_KEY", "Zq8vN3xR5tY1wP7k"),                    # random, 16 characters
    ("POSITION_MANAGER_API_KEY", "abababababababababababababab"),        # long, two characters
    ("POSITION_MANAGER_JWT_SECRET", "too-short-secret-Zq8vN3"),
])
def test_serve_refuses_bad_configuration_naming_the_variable(settings, variable, value):
    env = server_environ(settings, **{variable: value})
    result = subprocess.run([str(ROOT / "bin" / "serve"), "--bind", "127.0.0.1:1"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bin/serve: configuration error: " + variable), result.stderr
    if value and "KEY" in variable:
        assert value not in result.stderr  # a refused key is not echoed


def test_metrics_add_up_every_worker(start_server, settings, db, tmp_path):
    """prometheus_client's multiprocess mode under gunicorn: whichever of the 3 workers answers a
    scrape, it counts the requests and cache lookups of all of them; a directory given in
    PROMETHEUS_MULTIPROC_DIR is used (and emptied at start), none given: a private one."""
    from prometheus_client.parser import text_string_to_metric_families

    fill(db, "BTCUSDT", "Buy", "1", "50000")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left from an earlier run")
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="3", POSITION_MANAGER_API_THREADS="2",
                                         POSITION_MANAGER_RATE_LIMIT_DEFAULT="100000",
                                         PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)))
    deadline = time.monotonic() + 30
    while server.log().count("Booting worker") < 3:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    assert not (metrics_dir / "counter_999999.db").exists()
    responses = burst(server.url + "/api/v1/portfolio", API_KEY, 60, threads=6)
    assert all(r.status_code == 200 for r in responses)
    worker_files = {p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("*.db")}
    assert len(worker_files) >= 2, worker_files    # more than one worker counted

    for _ in range(6):   # each scrape may reach another worker: all give the same totals
        body = requests.get(server.url + "/metrics", timeout=10).json()
        cache = body["portfolio_cache"]
        assert cache["hits"] + cache["misses"] == 60 and cache["misses"] >= 1
        assert body["database_connected"] is True and body["api"]["requests"] >= 60
        text = requests.get(server.url + "/metrics", headers={"Accept": "text/plain"}, timeout=10).text
        counts = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "pm_api_request_duration_seconds_count" and s.labels["route"] == "/api/v1/portfolio"]
        assert counts == [60.0]
