"""bin/refresh-prices against a local server that answers like Bybit's /v5/market/tickers."""
from __future__ import annotations

from decimal import Decimal

import pytest

from app import settings as settings_mod
from bench.common import free_port
from jobs import refresh_prices
from jobs.bybit import BybitClient, PriceApiError
from tests.conftest import base_environ
from tests.ops.conftest import Reply, bybit_body, fill, set_price


def prices_of(db) -> dict[str, Decimal | None]:
    return dict(db.execute("SELECT asset, current_price FROM public.positions ORDER BY asset").fetchall())


def run_job(job_env, fake_bybit, sleeps: list, **env) -> int:
    environ = job_env(BYBIT_API_URL=fake_bybit.url, **env)
    return refresh_prices.main([], environ=environ, sleep=sleeps.append)


@pytest.fixture
def two_positions(db):
    fill(db, "BTCUSDT", "Buy", "0.5", "60000")
    fill(db, "ETHUSDT", "Sell", "2", "3000")


def test_success_sets_mark_prices_of_stale_positions_only(db, job_env, fake_bybit, capsys):
    fill(db, "BTCUSDT", "Buy", "0.5", "60000")
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    fill(db, "SOLUSDT", "Buy", "10", "150")
    set_price(db, "SOLUSDT", "151")  # fresh: must not be touched
    fake_bybit.replies = [Reply(200, bybit_body({"BTCUSDT": "61000.5", "ETHUSDT": "2950", "SOLUSDT": "999",
                                                 "XRPUSDT": "0.5"}))]
    sleeps: list = []
    assert run_job(job_env, fake_bybit, sleeps) == 0
    assert prices_of(db) == {"BTCUSDT": Decimal("61000.5"), "ETHUSDT": Decimal("2950"), "SOLUSDT": Decimal("151")}
    assert fake_bybit.requests == ["/v5/market/tickers?category=linear"]
    assert sleeps == []
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "2 stale symbol(s), 2 position(s) updated" in out[0]
    # unrealized PnL follows the new price: long 0.5 from 60000 at 61000.5
    assert db.execute("SELECT unrealized_pnl FROM public.positions WHERE asset='BTCUSDT'").fetchone()[0] == Decimal("500.25")


def test_nothing_stale_makes_no_request(db, job_env, fake_bybit, capsys):
    fill(db, "BTCUSDT", "Buy", "0.5", "60000")
    set_price(db, "BTCUSDT", "60000")
    assert run_job(job_env, fake_bybit, []) == 0
    assert fake_bybit.requests == []
    assert "nothing to do" in capsys.readouterr().out


def test_ret_code_error_keeps_last_price(db, two_positions, job_env, fake_bybit, capsys):
    set_price(db, "BTCUSDT", "59000", age_seconds=3600)
    fake_bybit.replies = [Reply(200, {"retCode": 10001, "retMsg": "params error: category", "result": {}})]
    sleeps: list = []
    assert run_job(job_env, fake_bybit, sleeps) == 1
    assert prices_of(db) == {"BTCUSDT": Decimal("59000"), "ETHUSDT": None}
    assert len(fake_bybit.requests) == 1 and sleeps == []  # a parameter error does not heal by retrying
    err = capsys.readouterr().err
    assert "retCode 10001" in err and "last known prices kept" in err


def test_http_5xx_then_success_retries_with_backoff(db, two_positions, job_env, fake_bybit):
    fake_bybit.replies = [Reply(502, "<html>bad gateway</html>"), Reply(503, ""),
                          Reply(200, bybit_body({"BTCUSDT": "60100", "ETHUSDT": "3010"}))]
    sleeps: list = []
    assert run_job(job_env, fake_bybit, sleeps) == 0
    assert sleeps == [1, 2]
    assert len(fake_bybit.requests) == 3
    assert prices_of(db) == {"BTCUSDT": Decimal("60100"), "ETHUSDT": Decimal("3010")}


def test_retries_exhausted_backoff_1_2_4(db, two_positions, job_env, fake_bybit, capsys):
    fake_bybit.replies = [Reply(500, "")]
    sleeps: list = []
    assert run_job(job_env, fake_bybit, sleeps, POSITION_MANAGER_PRICE_API_RETRIES="3") == 1
    assert sleeps == [1, 2, 4]
    assert len(fake_bybit.requests) == 4
    assert prices_of(db) == {"BTCUSDT": None, "ETHUSDT": None}
    assert "HTTP 500" in capsys.readouterr().err


def test_slow_answer_past_timeout_fails(db, two_positions, job_env, fake_bybit, capsys):
    fake_bybit.replies = [Reply(200, bybit_body({"BTCUSDT": "1", "ETHUSDT": "1"}), delay=1.5)]
    sleeps: list = []
    code = run_job(job_env, fake_bybit, sleeps, POSITION_MANAGER_PRICE_API_TIMEOUT="0.3",
                   POSITION_MANAGER_PRICE_API_RETRIES="1")
    assert code == 1
    assert sleeps == [1]
    assert prices_of(db) == {"BTCUSDT": None, "ETHUSDT": None}
    assert "timeout after 0.3 s" in capsys.readouterr().err


def test_malformed_json_fails_and_keeps_prices(db, two_positions, job_env, fake_bybit, capsys):
    set_price(db, "ETHUSDT", "2999", age_seconds=3600)
    fake_bybit.replies = [Reply(200, '{"retCode": 0, "result": {"list": [')]
    assert run_job(job_env, fake_bybit, [], POSITION_MANAGER_PRICE_API_RETRIES="0") == 1
    assert prices_of(db) == {"BTCUSDT": None, "ETHUSDT": Decimal("2999")}
    assert "not JSON" in capsys.readouterr().err


@pytest.mark.parametrize("body", [
    {"retCode": 0, "retMsg": "OK", "result": {"category": "linear"}},   # no list
    {"retCode": 0, "retMsg": "OK", "result": []},                      # result of the wrong type
    ["not", "an", "object"],
])
def test_body_of_the_wrong_shape_fails(db, two_positions, job_env, fake_bybit, body):
    fake_bybit.replies = [Reply(200, body)]
    assert run_job(job_env, fake_bybit, []) == 1
    assert prices_of(db) == {"BTCUSDT": None, "ETHUSDT": None}


def test_symbols_missing_from_the_list_are_reported_and_keep_their_price(db, two_positions, job_env, fake_bybit,
                                                                         capsys):
    set_price(db, "ETHUSDT", "2999", age_seconds=3600)
    # ETHUSDT is absent; a garbage markPrice for another symbol must not reject the whole update
    fake_bybit.replies = [Reply(200, {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [
        {"symbol": "BTCUSDT", "markPrice": "60500"}, {"symbol": "DOGEUSDT", "markPrice": "NaN"}, {"foo": 1}]}})]
    assert run_job(job_env, fake_bybit, []) == 3
    assert prices_of(db) == {"BTCUSDT": Decimal("60500"), "ETHUSDT": Decimal("2999")}
    captured = capsys.readouterr()
    assert "1 missing from Bybit (last price kept: ETHUSDT)" in captured.out
    assert '"symbol": "ETHUSDT"' in captured.err


def test_unusable_mark_price_of_a_stale_symbol_counts_as_missing(db, two_positions, job_env, fake_bybit):
    fake_bybit.replies = [Reply(200, bybit_body({"BTCUSDT": "0", "ETHUSDT": "3001"}))]
    assert run_job(job_env, fake_bybit, []) == 3
    assert prices_of(db) == {"BTCUSDT": None, "ETHUSDT": Decimal("3001")}


def test_client_does_not_retry_a_client_error(fake_bybit):
    fake_bybit.replies = [Reply(404, "not found")]
    sleeps: list = []
    client = BybitClient(fake_bybit.url, 1, 3, sleep=sleeps.append)
    with pytest.raises(PriceApiError, match="HTTP 404"):
        client.linear_tickers()
    assert client.attempts == 1 and sleeps == []


def test_client_retries_bybit_busy_ret_code(fake_bybit):
    fake_bybit.replies = [Reply(200, bybit_body({}, ret_code=10006, ret_msg="Too many visits")),
                          Reply(200, bybit_body({"BTCUSDT": "1.5"}))]
    sleeps: list = []
    tickers = BybitClient(fake_bybit.url, 1, 3, sleep=sleeps.append).linear_tickers()
    assert tickers.prices == {"BTCUSDT": "1.5"} and sleeps == [1]


def test_unreachable_api_fails(db, two_positions, job_env, capsys):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = refresh_prices.main([], environ=job_env(BYBIT_API_URL=f"http://127.0.0.1:{port}",
                                                   POSITION_MANAGER_PRICE_API_RETRIES="2"), sleep=lambda s: None)
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("environment, api_url, host", [
    ("testnet", None, "https://api-testnet.bybit.com"),
    ("mainnet", None, "https://api.bybit.com"),
    (None, None, "https://api.bybit.com"),
    ("testnet", "", "https://api-testnet.bybit.com"),
    ("testnet", "https://bybit.internal:8443/", "https://bybit.internal:8443"),
])
def test_the_bybit_host_follows_bybit_environment_unless_bybit_api_url_is_set(environment, api_url, host):
    env = base_environ()
    if environment is not None:
        env["BYBIT_ENVIRONMENT"] = environment
    if api_url is not None:
        env["BYBIT_API_URL"] = api_url
    assert settings_mod.load(env).bybit_api_url == host


def test_an_unknown_bybit_environment_is_a_configuration_error():
    with pytest.raises(settings_mod.ConfigError, match="BYBIT_ENVIRONMENT"):
        settings_mod.load(base_environ(BYBIT_ENVIRONMENT="staging"))


def test_testnet_positions_ask_the_testnet_host(db, two_positions, job_env, capsys, monkeypatch):
    """The job's request goes to Bybit's testnet host (seen through a proxy that answers nothing,
    so that no request leaves this machine)."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    code = refresh_prices.main([], environ=job_env(BYBIT_ENVIRONMENT="testnet", POSITION_MANAGER_PRICE_API_RETRIES="0"),
                               sleep=lambda s: None)
    assert code == 1
    assert "cannot reach https://api-testnet.bybit.com/v5/market/tickers" in capsys.readouterr().err
