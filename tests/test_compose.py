"""docker-compose.yml and the Dockerfile, checked without Docker (it cannot run here):
the structure the deployment relies on, and that every command a service runs exists
in this package."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import tomllib
import yaml
from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if "build" in svc]


def test_the_deployment_has_its_services():
    assert {"postgres", "redis", "api", "worker", "cpu-worker", "migrate"} <= set(SERVICES)
    assert "pgvector" in SERVICES["postgres"]["image"]
    assert SERVICES["redis"]["image"].startswith("redis:")
    assert set(OURS) == {"migrate", "api", "worker", "cpu-worker"}
    assert (ROOT / SERVICES["api"]["build"] / "Dockerfile").is_file()


@pytest.mark.parametrize("name", ["postgres", "redis", "api", "worker", "cpu-worker"])
def test_long_running_services_have_healthchecks(name):
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) >= 2


def test_the_gpu_worker_reserves_a_gpu_and_runs_one_process_on_it():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    command = SERVICES["worker"]["command"]
    assert "--pool=solo" in command and "--concurrency=1" in command
    assert SERVICES["worker"]["environment"]["IDENTITY_DEVICE"] == "cuda"


def test_the_cpu_worker_is_a_prefork_worker_behind_the_cpu_profile():
    cpu = SERVICES["cpu-worker"]
    assert cpu["profiles"] == ["cpu"]
    assert "--pool=prefork" in cpu["command"] and cpu["environment"]["IDENTITY_DEVICE"] == "cpu"
    assert all("profiles" not in SERVICES[name] for name in ("postgres", "redis", "api", "worker"))


def test_data_lives_in_named_volumes():
    assert {"pgdata", "models", "data"} <= set(COMPOSE["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    for name in OURS:
        mounts = SERVICES[name]["volumes"]
        assert "models:/models" in mounts and "data:/data" in mounts  # uploads: API writes, workers read


def test_services_start_in_order_after_migrations():
    for name in ("api", "worker", "cpu-worker"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_environment_is_valid_settings():
    """The compose environment parses into Settings (e.g. the JSON list of allowed roots)."""
    env = {k: v for k, v in SERVICES["worker"]["environment"].items()}
    code = (
        "from identity.config import Settings; s = Settings(); "
        "assert s.workers.broker_url == 'redis://redis:6379/0', s.workers.broker_url; "
        "assert [str(p) for p in s.api.allowed_roots] == ['/import'], s.api.allowed_roots; "
        "assert s.pipeline.device == 'cuda' and str(s.pipeline.models_dir) == '/models'"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **env, "PYTHONPATH": str(ROOT)},
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _command(name: str) -> list[str]:
    command = SERVICES[name].get("command")
    if command is None:  # the image's CMD
        dockerfile = (ROOT / "Dockerfile").read_text()
        line = [ln for ln in dockerfile.splitlines() if ln.startswith("CMD ")][-1]
        command = yaml.safe_load(line[4:])
    return command


@pytest.mark.parametrize("name", OURS)
def test_every_service_command_exists_in_the_package(name):
    command = _command(name)
    program = command[0]
    if program == "identity":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        module, func = scripts["identity"].split(":")
        assert callable(getattr(importlib.import_module(module), func))
        result = subprocess.run([sys.executable, "-m", "identity.cli", *command[1:], "--help"],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    elif program == "celery":
        from celery import Celery

        module = command[command.index("-A") + 1]
        assert isinstance(importlib.import_module(module).app, Celery)
        assert command[command.index("-A") + 2] == "worker"
    elif program == "uvicorn":
        from fastapi import FastAPI

        target = next(arg for arg in command[1:] if ":" in arg)
        module, attr = target.split(":")
        factory = getattr(importlib.import_module(module), attr)
        assert "--factory" in command and callable(factory)
        import inspect

        assert inspect.signature(factory).return_annotation in (FastAPI, "FastAPI")
    else:
        pytest.fail(f"{name}: unknown program {program!r}")


def test_the_image_ships_what_the_services_need():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("identity", "workers", "migrations", "models"):
        assert f"COPY {path} ./{path}" in dockerfile
    assert 'pip install -r "requirements/${VARIANT}.txt"' in dockerfile  # the lock, then
    assert 'pip install --no-deps ".[api,workers' in dockerfile  # the code, resolving nothing
    assert "USER identity" in dockerfile
