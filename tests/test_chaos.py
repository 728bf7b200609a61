"""Chaos: SIGKILL at seeded random points of real enrollments, then the invariants.

Kill points (seeded, so a failure replays; 20 in all): the `identity enroll` process, the
embedded PostgreSQL server under it, a Celery worker in the middle of its batches, and
`identity serve` during a directory job. After each
scenario the same enrollment runs to the end, and then:
- every photo with one face is enrolled exactly once (no photo lost, none twice);
- no image row is duplicated or left without its face;
- the search index equals the database.
Each scenario appends its kill points to CHAOS_LOG so the run's figures can be recorded.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis
from conftest import LFW_DIR, MODELS_DIR, ROOT
from test_workers import Worker

SEED = int(os.environ.get("IDENTITY_CHAOS_SEED", "20261130"))
PHOTOS = 32


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """32 lfw-dev photos, one per line, each of its folder's person."""
    people = sorted(p for p in LFW_DIR.iterdir() if p.is_dir())
    photos = [img for person in people[40:400] for img in sorted(person.glob("*.jpg"))][:PHOTOS]
    path = tmp_path_factory.mktemp("chaos") / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "person"])
        writer.writerows([str(p), p.parent.name] for p in photos)
    return path


def base_env(model_settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    env.update({"IDENTITY_MODELS_DIR": str(MODELS_DIR), "IDENTITY_CACHE_DIR": str(model_settings.pipeline.cache_dir),
                "IDENTITY_DEVICE": "cpu", "IDENTITY_BATCH_SIZE": "4", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT), **extra})
    return env


def enroll(manifest: Path, env: dict[str, str], report: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "identity.cli", "enroll", str(manifest), "--json",
                             "--report", str(report)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def faces_in(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM faces").fetchone()[0]
    except psycopg.Error:
        return -1


def wait_until(predicate, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def finish(manifest: Path, env: dict[str, str], report: Path) -> dict:
    final = enroll(manifest, env, report)
    stdout, stderr = final.communicate(timeout=900)
    assert final.returncode == 0, stderr[-2000:]
    return json.loads(stdout)


def assert_invariants(url: str, summary: dict, env: dict[str, str], in_process) -> None:
    single = summary["enrolled"] + summary["already_present"]
    assert summary["total"] == PHOTOS and summary["unreadable"] == summary["conflict"] == 0
    assert single + summary["no_face"] + summary["multiple_faces"] == PHOTOS
    with psycopg.connect(url) as conn:
        faces, images, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT image_id), (SELECT count(DISTINCT sha256) FROM images) FROM faces"
        ).fetchone()
        image_rows = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    assert faces == images == image_rows == distinct == single  # each photo once, nothing orphaned
    status = in_process("index", "status", "--json", env=env)  # as a fresh process would find it
    assert status.returncode == 0, status.stderr[-2000:]
    index = json.loads(status.stdout)
    assert index["count"] == faces and index["lag"] == 0


def kill_points(rng: random.Random, n: int, low: int, high: int) -> list[int]:
    """n face counts in [low, high) at which to kill, ascending."""
    return sorted(rng.sample(range(low, high), n))


def test_killing_the_cli_at_random_points_loses_and_duplicates_nothing(manifest, pg_server, model_settings,
                                                                       in_process, tmp_path):
    url = pg_server.new_database("chaos_cli")
    env = base_env(model_settings, IDENTITY_DATABASE_URL=url, IDENTITY_DATA_DIR=str(tmp_path / "data"))
    rng = random.Random(SEED)
    points = kill_points(rng, 8, 1, 24)
    for n, point in enumerate(points):
        run = enroll(manifest, env, tmp_path / f"run{n}.csv")
        reached = wait_until(lambda: faces_in(url) >= point, 300, run)
        if run.poll() is None:
            time.sleep(rng.uniform(0.0, 0.5))  # not always right after a commit
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
        assert reached or run.returncode == 0, run.stderr.read()[-2000:]
    assert_invariants(url, finish(manifest, env, tmp_path / "final.csv"), env, in_process)
    pg_server.drop_database(url)


def test_killing_the_embedded_postgresql_under_the_cli_loses_and_duplicates_nothing(manifest, model_settings,
                                                                                    in_process, tmp_path):
    data = tmp_path / "embedded"
    env = base_env(model_settings, IDENTITY_DATA_DIR=str(data))
    rng = random.Random(SEED + 1)
    pidfile = data / "pgdata" / "postmaster.pid"
    killed = 0
    for n, point in enumerate(kill_points(rng, 4, 1, 24)):
        run = enroll(manifest, env, tmp_path / f"run{n}.csv")

        def enough() -> bool:
            return pidfile.exists() and faces_in(socket_url(data)) >= point

        if wait_until(enough, 300, run) and run.poll() is None:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
            killed += 1
        try:  # the CLI fails (its database died), or restarts it and finishes
            _, stderr = run.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            _, stderr = run.communicate()
        # One clear error at most: no traceback, not even from an exit handler.
        assert "Traceback" not in stderr and "ERROR pgserver" not in stderr, stderr[-3000:]
    assert killed >= 3
    summary = finish(manifest, env, tmp_path / "final.csv")
    try:
        assert_invariants(attach_embedded(data), summary, env, in_process)
    finally:
        stop_embedded(data)


def test_killing_celery_workers_mid_batch_loses_and_duplicates_nothing(manifest, pg_server, model_settings,
                                                                       redis_url, in_process, tmp_path):
    url = pg_server.new_database("chaos_workers")
    redis.Redis.from_url(redis_url).flushdb()
    settings = model_settings.replace(**{
        "database_url": url, "data_dir": tmp_path / "data", "broker_url": redis_url,
        "task_visibility_timeout": 6,
    })
    env = base_env(model_settings, IDENTITY_DATABASE_URL=url, IDENTITY_DATA_DIR=str(tmp_path / "data"),
                   IDENTITY_BROKER_URL=redis_url, IDENTITY_TASK_VISIBILITY_TIMEOUT="6",
                   # Workers are killed on purpose here and the next one takes seconds to start:
                   # the CLI must wait for it rather than give up on a lack of live workers.
                   IDENTITY_WORKER_WAIT_SECONDS="300")
    rng = random.Random(SEED + 2)
    run = enroll(manifest, env, tmp_path / "run.csv")
    killed = 0
    for point in kill_points(rng, 4, 1, 24):
        worker = Worker(settings, tmp_path)
        # Killed mid-batch: once the point is reached, as soon as this worker holds a task
        # it has not finished (between two tasks a kill would test nothing).
        if (wait_until(lambda: faces_in(url) >= point, 300, run)
                and wait_until(lambda: worker.busy() > 0, 120, run)):
            worker.kill()
            killed += 1
        else:
            worker.stop()
    last = Worker(settings, tmp_path)  # the survivor finishes what the dead left unacknowledged
    stdout, stderr = run.communicate(timeout=900)
    last.stop()
    assert run.returncode == 0, stderr[-2000:]
    assert killed >= 3
    assert_invariants(url, json.loads(stdout), {k: v for k, v in env.items() if k != "IDENTITY_BROKER_URL"},
                      in_process)
    pg_server.drop_database(url)


# --- the embedded server ------------------------------------------------------------------


def socket_url(data: Path) -> str:
    """The embedded `identity` database over its unix socket, without attaching to (or
    starting) the server: a probe must not revive the server the test just killed."""
    return f"postgresql://postgres:@/identity?host={data / 'pgdata'}"


def attach_embedded(data: Path) -> str:
    """Start (or attach to) the server as the CLI does; its URL."""
    from identity.config import Settings
    from identity.store.embedded import embedded_url

    return embedded_url(Settings(data_dir=data))


def stop_embedded(data: Path) -> None:
    from identity.store.embedded import stop_server

    stop_server(data / "pgdata")


def test_killing_the_api_during_a_directory_job_resumes_it_and_loses_nothing(
        manifest, store, store_settings, model_settings, in_process, tmp_path):
    from test_serve import Serve, serve_env

    view = tmp_path / "allowed" / "people"
    with manifest.open() as handle:
        for row in csv.DictReader(handle):
            folder = view / row["person"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Path(row["path"]).name).symlink_to(row["path"])
    env = serve_env(store_settings.data_dir, database_url=store_settings.store.database_url,
                    models_dir=str(model_settings.pipeline.models_dir), cache_dir=str(model_settings.pipeline.cache_dir),
                    device="cpu", allowed_roots=[str(tmp_path / "allowed"), str(LFW_DIR)], job_batch_size=4,
                    job_max_resumes=10)  # the default (3) rightly gives up on a job killed this often
    _, secret = store_key(store)
    headers = {"X-API-Key": secret}
    url = str(store_settings.store.database_url)
    rng = random.Random(SEED + 3)
    job_id, killed = None, 0
    for n, point in enumerate(kill_points(rng, 4, 1, 24)):
        serve = Serve(env, tmp_path / f"serve-{n}.log")
        try:
            serve.wait(lambda: serve.get("/readyz").status_code == 200, timeout=600, what="readiness")
            if job_id is None:
                created = serve.http.post("/v1/jobs/enroll/directory", headers=headers,
                                          json={"directory": str(view)})
                assert created.status_code == 202, created.text
                job_id = created.json()["job_id"]
            if wait_until(lambda: faces_in(url) >= point, 300, serve.proc):
                time.sleep(rng.uniform(0.0, 0.5))
                killed += 1
        finally:
            serve.kill()  # SIGKILL of the whole process group, mid-job or not
    last = Serve(env, tmp_path / "serve-last.log")
    try:
        job = last.finished_job(job_id, headers, timeout=900)
    finally:
        last.kill()
    assert killed >= 3
    assert job["status"] == "succeeded", job
    with psycopg.connect(url) as conn:
        running = conn.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        faces, images, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT image_id), (SELECT count(DISTINCT sha256) FROM images) FROM faces"
        ).fetchone()
    assert running == 0
    assert faces == images == distinct == job["counts"].get("enrolled", 0) + job["counts"].get("already_present", 0)
    cli_env = base_env(model_settings, IDENTITY_DATABASE_URL=url, IDENTITY_DATA_DIR=str(tmp_path / "cli"))
    status = in_process("index", "status", "--json", env=cli_env)
    assert json.loads(status.stdout)["count"] == faces


def store_key(store) -> tuple[str, str]:
    from identity.store.keys import create_key

    return create_key(store, "chaos", ["enroll"])
