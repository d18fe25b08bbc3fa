"""The gateway's own settings (Envoy's address, ports, threads) resolve as the server's do: defaults < `EMBED_*`
variables < flags, every flag with its variable, bad values refused with exit 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from gateway import cluster, run
from gateway.run import EnvoySettings, envoy_settings


def resolve(argv: list[str], environ: dict[str, str]) -> tuple[EnvoySettings, list[str]]:
    flags, rest = run.parse(argv)
    return envoy_settings(flags, "gateway", environ), rest


def test_defaults_then_environment_then_flags() -> None:
    assert resolve([], {})[0] == EnvoySettings()
    environ = {
        "EMBED_HTTP_HOST": "0.0.0.0",
        "EMBED_HTTP_PORT": "18080",
        "EMBED_ADMIN_PORT": "0",
        "EMBED_ENVOY_CONCURRENCY": "4",
        "EMBED_ENVOY_LOG_LEVEL": "error",
    }
    settings, _ = resolve([], environ)
    assert settings == EnvoySettings("0.0.0.0", 18080, 0, 4, "error")
    settings, rest = resolve(["--http-port", "9000", "--envoy-concurrency", "2", "--port", "6000"], environ)
    assert (settings.http_port, settings.envoy_concurrency, settings.http_host) == (9000, 2, "0.0.0.0")
    assert rest == ["--port", "6000"]  # the server's flags pass through


def test_every_flag_of_both_supervisors_names_its_variable() -> None:
    for module in (run, cluster):
        helped = subprocess.run([sys.executable, "-m", module.__name__, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0
        text = " ".join(helped.stdout.split())
        for f in fields(EnvoySettings):
            assert f"--{f.name.replace('_', '-')}" in text and f"EMBED_{f.name.upper()}" in text, (module, f.name)


@pytest.mark.parametrize("variable", ["EMBED_HTTP_PORT", "EMBED_ENVOY_CONCURRENCY"])
def test_a_bad_value_exits_2_naming_the_problem(variable: str) -> None:
    command = [sys.executable, "-m", "gateway.run"]
    done = subprocess.run(command, capture_output=True, text=True, env={variable: "many"}, timeout=60)
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "many" in done.stderr
