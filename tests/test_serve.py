"""`identity serve` as its operators run it: a process that gets killed, signalled, and
has its embedded database killed under it. Each test starts real `identity serve`
processes; only the first loads the model (the others have none, which leaves them
unready but serving: the database is what they test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import LFW_DIR, ROOT, _free_port

from identity.store import jobs as job_store
from identity.store.keys import create_key
from identity.store.testing import server_directory

# Each test starts whole `identity serve` processes: the full suite, not the fast tier.
pytestmark = pytest.mark.slow


class Serve:
    """One `identity serve` process in its own session (so it can be killed whole)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "identity.cli", "serve", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def wait(self, check, timeout: float = 120, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"identity serve exited ({self.proc.returncode}): {self.text()[-3000:]}"
            try:
                value = check()
                if value:
                    return value
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.text()[-3000:]}"
            time.sleep(0.05)

    def finished_job(self, job_id: str, headers: dict, timeout: float) -> dict:
        """The job's record once it has succeeded or failed."""
        def ended():
            job = self.get(f"/v1/jobs/{job_id}", headers=headers).json()
            return job if job["status"] in ("succeeded", "failed") else None

        return self.wait(ended, timeout=timeout, what="the resumed job")

    def database_ok(self) -> bool:
        return self.get("/readyz").json()["checks"]["database"]["ok"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.http.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def serve_env(data_dir: Path, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    env.update({"IDENTITY_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    env.update({f"IDENTITY_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()})
    return env


# --- 3: a job of a killed process is resumed ------------------------------------------------------


def test_a_directory_job_of_a_killed_serve_is_resumed_where_it_stopped_by_the_next_start(
    store_settings, store, model_settings, tmp_path
):
    people = ["Aaron_Peirsol", "Adam_Sandler", "Bill_Gates"]
    view = tmp_path / "allowed" / "people"
    for name in people:
        (view / name).mkdir(parents=True)
        for photo in sorted((LFW_DIR / name).glob("*.jpg"))[:4]:
            (view / name / photo.name).symlink_to(photo)
    env = serve_env(store_settings.data_dir, database_url=store_settings.store.database_url,
                    models_dir=str(model_settings.pipeline.models_dir), cache_dir=str(model_settings.pipeline.cache_dir),
                    device="cpu", allowed_roots=[str(tmp_path / "allowed"), str(LFW_DIR)], job_batch_size=2)
    headers = {"X-API-Key": create_key(store, "operator", ["enroll"])[1]}

    first = Serve(env, tmp_path / "serve-1.log")
    try:
        first.wait(lambda: first.get("/readyz").status_code == 200, timeout=300, what="readiness")
        created = first.http.post("/v1/jobs/enroll/directory", headers=headers,
                                  json={"directory": str(view), "largest_face": True})
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        first.wait(lambda: first.get(f"/v1/jobs/{job_id}", headers=headers).json()["batches_done"] >= 1,
                   timeout=300, what="a first batch")
    finally:
        first.kill()  # SIGKILL mid-job: no shutdown code runs
    left = job_store.get_job(store, job_id)
    assert left.status == "running" and 1 <= left.batches_done < left.total_batches == 6, left
    assert left.owner.split(":")[1] == str(first.proc.pid)

    second = Serve(env, tmp_path / "serve-2.log")
    try:
        done = second.finished_job(job_id, headers, timeout=300)
    finally:
        second.kill()
    assert done["status"] == "succeeded" and done["resumes"] == 1, done
    assert done["items_done"] == 12 and set(done["counts"]) <= {"enrolled", "already_present"}, done
    with store.connection() as conn:
        # Resumed where it stopped: no batch recorded before the kill was run again.
        attempts = conn.execute("SELECT max(attempts) FROM job_batches WHERE job_id = %s", (job_id,)).fetchone()[0]
        faces = conn.execute("SELECT count(*), count(DISTINCT (image_id, face_index)) FROM faces").fetchone()
    assert attempts == 1
    assert faces == (12, 12)  # the interrupted batch, run again, added nothing twice
    assert "resuming" in second.text()


# --- 5: the embedded PostgreSQL heals itself --------------------------------------------------------


@pytest.fixture
def embedded_dir():
    with server_directory() as directory:
        yield directory
        # Whatever a failed test left running: never a postmaster on a deleted directory.
        pid = postmaster_pid(directory / "data")
        if pid and psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def postmaster_pid(data_dir: Path) -> int | None:
    pidfile = data_dir / "pgdata" / "postmaster.pid"
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def make_key(data_dir: Path, scope: str = "read") -> str:
    """A key made by another process attached to the same embedded server."""
    code = ("from identity.store import Store; from identity.store.keys import create_key; "
            f"s = Store.open(); print(create_key(s, 'test', [{scope!r}])[1]); s.close()")
    return subprocess.run([sys.executable, "-c", code], env=serve_env(data_dir), cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=120).stdout.strip()


def test_a_killed_embedded_database_is_restarted_and_the_api_recovers_by_itself(embedded_dir, tmp_path):
    data = embedded_dir / "data"
    # The watchdog looks every 8 s: the test sees the server dead before it is restarted
    # unless its first answer comes later than the next look (CI, on a loaded machine, once
    # missed a 3 s interval).
    api = Serve(serve_env(data, models_dir=str(tmp_path), embedded_watch_seconds=8), tmp_path / "serve.log")
    try:
        api.wait(api.database_ok, what="the database")
        headers = {"X-API-Key": make_key(data)}
        assert api.get("/v1/persons", headers=headers).status_code == 200
        first = postmaster_pid(data)

        os.kill(first, signal.SIGKILL)
        # The truth, not the last good answer (within the moment a killed process takes to go).
        api.wait(lambda: (r := api.get("/readyz")).status_code == 503
                 and r.json()["checks"]["database"] == {"ok": False, "code": "store_error", "running": False,
                                                        "restarts": 0},
                 timeout=7, what="a dead database")
        assert api.get("/healthz").status_code == 200  # alive: this process is the one to fix it

        api.wait(lambda: api.get("/v1/persons", headers=headers).status_code == 200, timeout=60,
                 what="the API to answer again")
        detailed = api.get("/readyz", headers=headers).json()["checks"]["database"]
        assert detailed["ok"] and detailed["running"] and detailed["restarts"] == 1, detailed
        assert postmaster_pid(data) != first
        public = api.get("/readyz")
        assert str(embedded_dir) not in public.text and "/" not in json.dumps(public.json()["checks"])
        assert "error" in api.get("/readyz", headers=headers).json()["checks"]["startup"]  # details with a key
    finally:
        api.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_serve_and_the_embedded_server_it_started(embedded_dir, tmp_path, signum):
    data = embedded_dir / "data"
    api = Serve(serve_env(data, models_dir=str(tmp_path)), tmp_path / "serve.log")
    try:
        api.wait(api.database_ok, what="the database")
        postmaster = postmaster_pid(data)
        api.proc.send_signal(signum)  # the main pid only, as a service manager does
        api.proc.wait(timeout=60)
    finally:
        api.kill()
    deadline = time.monotonic() + 30
    while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(postmaster), api.text()[-2000:]
    assert not (data / "pgdata" / "postmaster.pid").exists()  # a clean stop removes it
    assert json.loads((data / "pgdata" / ".handle_pids.json").read_text()) == []
    assert "Traceback" not in api.text()
