"""Shared fixtures. Real weights from ../shared/models, real images from ../shared/data;
nothing from there is copied into the repository."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from identity.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS_DIR = SHARED / "models"
DATA_DIR = SHARED / "data"
LFW_DIR = DATA_DIR / "lfw-dev"
MISC_DIR = DATA_DIR / "misc"

# Fixtures that put the real weights behind a test. A test using one is `slow`: the fast
# tier (`pytest -m "not slow"`) loads no model. Without them a test's Settings point at
# the repository's own models/ folder, which holds no weights, so a fast test that tried to
# load a network would fail with "weights not found" rather than quietly get slower.
WEIGHT_FIXTURES = frozenset({"model_settings", "pipeline", "service"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if WEIGHT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fresh_settings():
    """`get_settings()` is cached per process; a test that sets IDENTITY_* variables (and
    runs the CLI in-process) must not see another test's settings, nor leave its own."""
    from identity.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# A developer's own IDENTITY_* settings must not leak into the suite.
for _name in [n for n in os.environ if n.startswith("IDENTITY_")]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def weights_cache(pytestconfig) -> Path:
    """Converted weights are cached across test runs (in .pytest_cache), never in ../shared."""
    return Path(pytestconfig.cache.mkdir("identity-weights"))


@pytest.fixture(scope="session")
def model_settings(weights_cache, tmp_path_factory) -> Settings:
    """Settings for the real default model, with a throwaway data directory."""
    return Settings(
        models_dir=MODELS_DIR,
        cache_dir=weights_cache,
        data_dir=tmp_path_factory.mktemp("identity-data"),
        device="cpu",
    )


@pytest.fixture(scope="session")
def pipeline(model_settings):
    """One loaded face pipeline for the whole session (the network loads once)."""
    from identity.faces.pipeline import FacePipeline

    return FacePipeline.from_settings(model_settings)


# --- store: one real PostgreSQL + pgvector (pgserver) per test session ----------------


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL, started through the product's embedded-server code,
    with a template database migrated by yoyo. Deleted at the end of the session."""
    from identity.store.testing import PgTestServer, server_directory

    with server_directory() as directory:
        server = PgTestServer.start(directory)
        yield server
        server.stop()


@pytest.fixture
def store_settings(pg_server, tmp_path) -> Settings:
    """Settings naming a fresh, migrated, empty database of its own (tests are isolated).
    A subprocess (e.g. `identity enroll` killed mid-run) reaches the same database with
    the environment from `store_env`."""
    url = pg_server.new_database()
    yield Settings(database_url=url, data_dir=tmp_path / "data")
    pg_server.drop_database(url)


@pytest.fixture
def store_env(store_settings) -> dict[str, str]:
    """os.environ plus IDENTITY_DATABASE_URL / IDENTITY_DATA_DIR of `store_settings`."""
    env = dict(os.environ)
    env["IDENTITY_DATABASE_URL"] = str(store_settings.store.database_url)
    env["IDENTITY_DATA_DIR"] = str(store_settings.data_dir)
    return env


@pytest.fixture
def store(store_settings):
    """An open `identity.store.Store` on the test's own database."""
    from identity.store import Store

    with Store.open(store_settings) as opened:
        yield opened


# --- broker: one real Redis (Debian's redis-server binary) per test session -------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A throwaway redis-server on a free port (no persistence); its URL."""
    import shutil
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def service(store_settings, model_settings, pipeline):
    """A `Service` on the test's own database, sharing the session's loaded pipeline."""
    from identity.service import Service

    settings = store_settings.replace(**{"models_dir": model_settings.pipeline.models_dir, "cache_dir": model_settings.pipeline.cache_dir,
                "device": "cpu"}
    )
    svc = Service(settings, pipeline=pipeline)  # the session's network, loaded once
    yield svc
    svc.close()


@pytest.fixture
def in_process(monkeypatch, capsys):
    """`identity ARGS` run in this process through `identity.cli.main`, the function the
    executable runs (the same exit codes and output), for a test about the commands rather
    than the process: no Python start, no torch import per command. Called as
    `in_process(*args, env=env)`: the IDENTITY_* variables of `env` are the command's
    settings (and only they); stdin is empty, so a prompt gets no answer (no). Returns a
    CompletedProcess (returncode, stdout, stderr) like `subprocess.run`."""
    import io
    import subprocess

    from identity.cli import main
    from identity.config import get_settings

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        for name in [n for n in os.environ if n.startswith("IDENTITY_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("IDENTITY_"):
                monkeypatch.setenv(name, value)
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        get_settings.cache_clear()
        with pytest.raises(SystemExit) as exited:
            main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["identity", *args], exited.value.code, captured.out, captured.err)

    return run


@contextlib.contextmanager
def ready_api_client(settings, timeout: float = 180.0):
    """A TestClient on `create_app(settings)`, returned once /readyz says the model is
    loaded and the index is in sync."""
    import time

    from fastapi.testclient import TestClient

    from identity.api import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + timeout
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.2)
        yield client
