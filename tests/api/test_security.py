"""Who gets in (app/api/access.py), in one process: bearer tokens (PyJWT, HS256 only, exp/sub/scope
required), stored keys and their scopes, the client address beside the actor in the audit trail,
API keys compared in constant time, the warnings about overrides that match no key."""
from __future__ import annotations

import json
import time

import jwt
import pytest
from falcon import testing

from app.api import access, keys
from app.api.keys import digest
from tests.api.conftest import API_KEY
from tests.sql.calls import fill

SECRET = "a-jwt-secret-for-the-tests-Hx4Lq9Vb2Zs7Nd5Wc3"


def token(claims: dict | None = None, *, secret: str = SECRET, algorithm: str = "HS256", drop: tuple = (),
          **changes) -> str:
    body = {"sub": "dashboard-ui", "scope": "read", "exp": int(time.time()) + 300, **(claims or {}), **changes}
    for name in drop:
        body.pop(name)
    return jwt.encode(body, secret, algorithm=algorithm)


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def jwt_client(make_app, api_settings, db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    app = make_app(api_settings.with_overrides(jwt_secret=SECRET))
    return testing.TestClient(app)   # no X-API-Key by default


def unsigned(claims: dict) -> str:
    """A token with alg "none" (no signature), as an attacker would send it."""
    import base64

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_a_valid_token_reads_with_its_scope_and_no_more(jwt_client):
    read = bearer(token())
    assert jwt_client.simulate_get("/api/v1/positions/BTCUSDT", headers=read).status_code == 200
    assert jwt_client.simulate_get("/api/v1/positions", headers=read).status_code == 200
    refused = jwt_client.simulate_post("/api/v1/prices", json={"BTCUSDT": "51000"}, headers=read)
    assert refused.status_code == 403 and "needs write" in refused.json["message"]


def test_a_write_token_changes_and_its_subject_is_the_actor(jwt_client):
    headers = bearer(token(scope="write", sub="risk-ui"))
    assert jwt_client.simulate_post("/api/v1/prices", json={"BTCUSDT": "51000"}, headers=headers).status_code == 200
    (newest,) = jwt_client.simulate_get("/api/v1/positions/BTCUSDT/history", params={"limit": "1"},
                                        headers=headers).json["history"]
    assert newest["action"] == "price" and newest["actor"] == "jwt:risk-ui"


@pytest.mark.parametrize("make, why", [
    (lambda: token(secret="another-secret-of-the-same-length-Zz9"), "Signature verification failed"),
    (lambda: token(algorithm="HS512"), "alg value is not allowed"),
    (lambda: unsigned({"sub": "x", "scope": "admin", "exp": int(time.time()) + 300}), "alg value is not allowed"),
    (lambda: token(exp=int(time.time()) - 5), "expired"),
    (lambda: token(drop=("exp",)), "exp"),
    (lambda: token(drop=("sub",)), "sub"),
    (lambda: token(drop=("scope",)), "scope"),
    (lambda: token(scope="superuser"), "scope must be one of"),
    (lambda: token(sub="two words"), "sub must be"),
    (lambda: "not.a.token", "invalid bearer token"),
    (lambda: token() + "x", "invalid bearer token"),
])
def test_a_bad_token_is_401(jwt_client, make, why):
    response = jwt_client.simulate_get("/api/v1/positions", headers=bearer(make()))
    assert response.status_code == 401 and response.json["error_code"] == "unauthorized"
    assert why in response.json["message"]


def test_tokens_are_refused_when_no_secret_is_set(client):
    response = testing.TestClient(client.app).simulate_get("/api/v1/positions", headers=bearer(token()))
    assert response.status_code == 401


def test_a_token_has_its_own_rate_limit_bucket(make_app, api_settings, db):
    app = make_app(api_settings.with_overrides(jwt_secret=SECRET, rate_limit_default=2))
    client = testing.TestClient(app)
    ui, other = bearer(token(sub="ui")), bearer(token(sub="other"))
    assert [client.simulate_get("/api/v1/positions", headers=ui).status_code for _ in range(3)] == [200, 200, 429]
    assert client.simulate_get("/api/v1/positions", headers=other).status_code == 200
    assert client.simulate_get("/api/v1/positions", headers={"X-API-Key": API_KEY}).status_code == 200


def test_stored_keys_have_their_scope(make_client, api_settings, stored_key, db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    reader = make_client(api_settings, stored_key("model-service", "read"))
    assert reader.simulate_get("/api/v1/positions/BTCUSDT").status_code == 200
    refused = reader.simulate_post("/api/v1/positions/BTCUSDT/snapshot")
    assert refused.status_code == 403 and "key model-service has scope read" in refused.json["message"]
    unknown = make_client(api_settings, "pmk_" + "x" * 43)
    for path in ("/api/v1/positions/BTCUSDT", "/api/v1/positions", "/api/v1/nothing-here"):
        assert unknown.simulate_get(path).status_code == 401, path


def test_an_unknown_key_is_401_before_anything_else_is_said(make_client, api_settings):
    """The single-position read admits in its own statement: a bad parameter must not answer an
    unknown key with 400 (nor tell it what was wrong)."""
    unknown = make_client(api_settings, "pmk_" + "y" * 43)
    for path, params in [("/api/v1/positions/BTC$USD", {}), ("/api/v1/positions/BTCUSDT", {"mode": "sideways"}),
                         ("/api/v1/positions/BTCUSDT", {"nope": "1"})]:
        response = unknown.simulate_get(path, params=params)
        assert response.status_code == 401, (path, params, response.text)


def test_the_audit_trail_records_the_client_address_beside_the_actor(make_app, api_settings, stored_key, db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    client = testing.TestClient(make_app(api_settings), headers={"X-API-Key": stored_key("desk", "write")})
    changed = client.simulate_post("/api/v1/prices", json={"BTCUSDT": "50500"}, remote_addr="203.0.113.7")
    assert changed.status_code == 200
    closed = client.simulate_post("/api/v1/positions/BTCUSDT/close", remote_addr="2001:db8::5")
    assert closed.status_code == 200, closed.text
    history = client.simulate_get("/api/v1/positions/BTCUSDT/history").json["history"]
    assert [(h["action"], h["actor"], h["client_addr"]) for h in history] == [
        ("close", "key:desk", "2001:db8::5"), ("price", "key:desk", "203.0.113.7"), ("trade", None, None)]
    # a change that did not come over the API has none, and the setting does not outlive its transaction
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    rows = db.execute("SELECT actor, host(client_addr) FROM pm.outbox WHERE event_type = 'position_updated' "
                      "ORDER BY id").fetchall()
    assert rows[-1] == (None, None)


def test_keys_are_compared_as_digests_in_constant_time(make_client, api_settings, monkeypatch):
    """Every presented key is reduced to its SHA-256 digest and compared with hmac.compare_digest:
    the compared values always have the same length, whatever was presented, and no early exit."""
    calls = []
    real = access.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    client = make_client(api_settings)
    presented = [API_KEY, API_KEY[:-1], API_KEY + "x", API_KEY[:1], "z" * 200, "pmk_" + "q" * 43]
    statuses = [client.simulate_get("/api/v1/positions", headers={"X-API-Key": key}).status_code for key in presented]
    assert statuses == [200, 401, 401, 401, 401, 401]
    assert calls == [(64, 64)] * len(presented)


def test_each_override_that_matches_no_key_is_warned_about_without_the_key(api_settings, stored_key, caplog):
    stored = stored_key("risk-manager", "read")
    settings = api_settings.with_overrides(rate_limit_overrides={"ui-key": 1000, stored: 200, API_KEY: 50,
                                                                 "model-service-key": 100})
    with caplog.at_level("WARNING", logger="position_manager.api.keys"):
        warnings = keys.warn_unmatched_overrides(settings)
    assert len(warnings) == 2
    assert "entry 1 (limit 1000/min, key digest " + digest("ui-key")[:8] in warnings[0]
    assert "entry 4 (limit 100/min" in warnings[1]
    logged = caplog.text
    assert logged.count("matches no accepted key") == 2
    for key in ("ui-key", "model-service-key", stored, API_KEY):
        assert key not in logged
