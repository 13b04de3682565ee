"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the YAML parses, the
services the service needs are there with healthchecks, every command names an entry point that exists,
every variable set for our image is one app.settings knows, and every path it mounts exists."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from app.settings import VARIABLE_NAMES, ConfigError, load, require_api_keys

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OUR_IMAGE = [name for name, svc in SERVICES.items() if "build" in svc]

# Variables that belong to the third-party containers themselves, not to our settings.
CONTAINER_OWN = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "grafana": {"GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD", "GF_USERS_ALLOW_SIGN_UP",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "PM_GRAFANA_DB_ADDRESS", "PM_GRAFANA_DB_NAME",
                "PM_GRAFANA_DB_USER", "PM_GRAFANA_DB_PASSWORD", "PM_GRAFANA_DB_SSLMODE"},
}
# Secrets: compose must refuse to start without them (`${NAME:?...}`), never fall back to a default.
SECRETS = {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "POSITION_MANAGER_API_KEY", "GRAFANA_ADMIN_PASSWORD",
           "PM_GRAFANA_DB_PASSWORD"}
# Variables interpolated by compose itself from the operator's shell or .env (not container settings).
COMPOSE_ONLY = {"GRAFANA_ADMIN_PASSWORD", "PM_GRAFANA_DB_PASSWORD"}


def test_services_of_spec_7():
    assert set(SERVICES) == {"postgres", "rabbitmq", "migrate", "api", "consumer", "scheduler", "grafana"}
    assert set(OUR_IMAGE) == {"migrate", "api", "consumer", "scheduler"}
    assert SERVICES["migrate"]["restart"] == "no"


@pytest.mark.parametrize("name", ["postgres", "rabbitmq", "api", "grafana"])
def test_healthchecks(name):
    assert SERVICES[name]["healthcheck"]["test"]


@pytest.mark.parametrize("name", OUR_IMAGE)
def test_commands_name_existing_entry_points(name):
    command = SERVICES[name]["command"]
    script = ROOT / command[0]
    assert command[0].startswith("bin/") and script.is_file() and os.access(script, os.X_OK), command


@pytest.mark.parametrize("name", OUR_IMAGE)
def test_our_services_set_only_known_settings(name):
    svc = SERVICES[name]
    assert (ROOT / svc["env_file"]).is_file()
    unknown = set(svc["environment"]) - set(VARIABLE_NAMES)
    assert unknown == set(), f"{name} sets variables app.settings does not know: {unknown}"


def test_env_example_lists_only_known_settings():
    keys = {line.split("=", 1)[0] for line in (ROOT / "env.example").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}
    assert keys - set(VARIABLE_NAMES) == set()


@pytest.mark.parametrize("name", sorted(CONTAINER_OWN))
def test_third_party_services_set_only_their_own_variables(name):
    assert set(SERVICES[name].get("environment", {})) <= CONTAINER_OWN[name]


def test_interpolated_variables_are_settings_or_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert names - set(VARIABLE_NAMES) - COMPOSE_ONLY == set()


def test_grafana_gets_every_variable_its_datasource_reads():
    datasource = (ROOT / "grafana/provisioning/datasources/position-manager.yaml").read_text()
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", datasource))
    assert needed and needed <= set(SERVICES["grafana"]["environment"])


def test_mounted_paths_and_dependencies_exist():
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in COMPOSE["volumes"], (name, source)
        for dependency in svc.get("depends_on", {}):
            assert dependency in SERVICES, (name, dependency)
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/position-manager/")
    assert (ROOT / "grafana/dashboards" / Path(home).name).is_file()


def test_dockerfile_copies_what_exists_and_runs_an_entry_point():
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    cmd = re.search(r'^CMD \["([^"]+)"\]', text, re.MULTILINE).group(1)
    assert (ROOT / cmd).is_file()


def test_the_trading_stack_variables_reach_the_processes_that_use_them():
    # the position consumer asks ws-gateway, and /health (the API) shows the outcome
    for name in ("api", "consumer"):
        env = SERVICES[name]["environment"]
        assert {"WS_GATEWAY_HOST", "WS_GATEWAY_PORT", "WS_GATEWAY_API_KEY"} <= set(env), name
        assert env["WS_GATEWAY_HOST"] == "${WS_GATEWAY_HOST:-}"     # off unless the stack sets it
    # the price job follows the account's environment unless a host is given
    scheduler = SERVICES["scheduler"]["environment"]
    assert scheduler["BYBIT_ENVIRONMENT"] == "${BYBIT_ENVIRONMENT:-mainnet}"
    assert scheduler["BYBIT_API_URL"] == "${BYBIT_API_URL:-}"


def test_no_secret_has_a_default():
    text = (ROOT / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{([A-Z_][A-Z0-9_]*)([^}]*)\}", text)
    for name, rest in uses:
        if name in SECRETS:
            assert rest.startswith(":?"), f"${{{name}{rest}}} must be required, not defaulted"
    assert SECRETS <= {name for name, _ in uses}
    for service in SERVICES.values():   # and no literal password either
        for variable, value in (service.get("environment") or {}).items():
            if "PASSWORD" in variable or variable.endswith(("_KEY", "_PASS", "_SECRET")):
                assert str(value).startswith("${"), (variable, value)


def test_env_example_holds_no_working_credential():
    """A new user's `cp env.example .env`: the API refuses to start, naming the key to set."""
    env = {}
    for line in (ROOT / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    assert env["POSITION_MANAGER_API_KEY"] == "" and env["POSITION_MANAGER_RATE_LIMIT_OVERRIDES"] == ""
    assert env["POSITION_MANAGER_JWT_SECRET"] == "" and env["POSITION_MANAGER_GRAFANA_PASSWORD"] == ""
    with pytest.raises(ConfigError, match="^POSITION_MANAGER_API_KEY is empty"):
        require_api_keys(load(env))
