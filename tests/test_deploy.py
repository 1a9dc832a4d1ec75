"""The deploy recipes, as far as this machine can check them (no Docker engine): env.example against the
real settings, the compose file's shape, the Dockerfile against the README, the unit with systemd-analyze."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from pydantic import AliasChoices

from bot.settings import Settings
from tests.fake_telegram import ROOT

DEPLOY = ROOT / "deploy"
# "NAME=value", commented out or not, with an optional comment after two spaces.
ASSIGNMENT = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*?)(?:\s{2,}#.*)?$")


def env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return alias or f"DIGITBOT_{name.upper()}"


def env_example() -> dict[str, tuple[bool, str]]:
    """NAME -> (commented out, value), for every assignment in deploy/env.example."""
    lines = (DEPLOY / "env.example").read_text().splitlines()
    return {m["name"]: (bool(m["commented"]), m["value"]) for m in map(ASSIGNMENT.match, lines) if m}


def test_env_example_lists_every_setting_and_its_commented_value_is_the_default(monkeypatch):
    listed = env_example()
    names = {name: env_name(name) for name in Settings.model_fields}
    assert set(names.values()) <= set(listed), set(names.values()) - set(listed)
    for name, env in names.items():
        commented, value = listed[env]
        default = Settings.model_fields[name].default
        if not commented or default is None:
            continue  # a value to set, or an example of one that is unset by default
        for other in names.values():
            monkeypatch.delenv(other, raising=False)
        monkeypatch.setenv(env, value)
        assert getattr(Settings(_env_file=None), name) == default, f"{env}={value} is not the default"


def test_no_comment_after_a_value_that_is_set():
    """systemd's EnvironmentFile keeps a trailing comment as part of the value."""
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "#" not in line, line


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_single_bot_keeps_its_data_in_a_volume():
    services = compose()["services"]
    single = [name for name, s in services.items() if "single" in s.get("profiles", [])]
    assert single == ["bot"]
    assert "data:/data" in services["bot"]["volumes"]
    assert services["bot"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "DIGITBOT_DATABASE_URL" not in services["bot"].get("environment", {})  # SQLite in the volume


def test_compose_replicas_share_postgresql_behind_caddy_with_one_webhook_secret():
    services = compose()["services"]
    replicas = {name for name, s in services.items() if "replicas" in s.get("profiles", [])}
    assert replicas == {"postgres", "replica-1", "replica-2", "caddy"}
    one, two = services["replica-1"], services["replica-2"]
    assert one["environment"] == two["environment"]
    assert set(one["volumes"]).isdisjoint(two["volumes"])  # the database keeps the model versions
    assert one["environment"]["DIGITBOT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres/" in one["environment"]["DIGITBOT_DATABASE_URL"]
    assert one["environment"]["DIGITBOT_WEBHOOK_SECRET"].startswith("${DIGITBOT_WEBHOOK_SECRET:?")
    assert one["environment"]["DIGITBOT_WEBHOOK_LISTEN"] == "0.0.0.0"
    assert one["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert one["build"]["dockerfile"] == "deploy/Dockerfile"
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    port = one["environment"]["DIGITBOT_WEBHOOK_PORT"]
    assert f"reverse_proxy replica-1:{port} replica-2:{port}" in caddyfile
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    metrics_port = re.search(r"DIGITBOT_METRICS_PORT=(\d+)", dockerfile)[1]
    assert f"health_port {metrics_port}" in caddyfile and "health_uri /healthz" in caddyfile
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in services["caddy"]["volumes"]


def test_dockerfile_installs_with_the_readmes_command_and_copies_what_exists():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python -m pip install -e ." in readme
    assert 'RUN python -m pip install -e ".${EXTRAS:+[$EXTRAS]}"' in dockerfile
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), source
    for source in re.findall(r"^COPY \S+ (\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), source


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_is_hardened_and_verifies(tmp_path):
    unit = (DEPLOY / "digitbot.service").read_text()
    for option in [
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "ReadWritePaths=/var/lib/digitbot",
        "ProtectHome=true",
        "CapabilityBoundingSet=\n",
    ]:
        assert option in unit
    # The venv is not installed here: verify the unit with an executable that exists.
    copy = tmp_path / "digitbot.service"
    copy.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", unit, flags=re.MULTILINE))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
