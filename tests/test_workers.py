"""Celery workers end to end: a real Redis (redis-server), a real PostgreSQL, real worker
processes (`celery -A workers.app worker`) loading the real model, and the API sending
them the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from conftest import LFW_DIR, ROOT, ready_api_client

from identity.enroll import EnrollItem
from identity.service import Service
from identity.store.keys import create_key

PEOPLE = ["Andy_Roddick", "Amelia_Vega", "Ana_Guevara", "Alec_Baldwin"]


def photos(name: str) -> list[Path]:
    return sorted((LFW_DIR / name).glob("*.jpg"))


@pytest.fixture(scope="module")
def settings(pg_server, model_settings, redis_url, tmp_path_factory):
    url = pg_server.new_database("workers")
    redis.Redis.from_url(redis_url).flushdb()
    yield model_settings.replace(**{
        "database_url": url,
        "data_dir": tmp_path_factory.mktemp("workers-data"),  # shared by API and workers (uploads)
        "broker_url": redis_url,
        "allowed_roots": [LFW_DIR, tmp_path_factory.mktemp("views")],
        "job_batch_size": 2,
        "task_visibility_timeout": 8,  # a dead worker's task is handed on after 8 s
        "enroll_wait_seconds": 2,  # a synchronous upload answers 202 after 2 s without a worker
        "worker_wait_seconds": 120,  # a worker started by a test may take a while on a busy machine
    })
    pg_server.drop_database(url)


def worker_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "IDENTITY_DATABASE_URL": settings.store.database_url,
        "IDENTITY_DATA_DIR": str(settings.data_dir),
        "IDENTITY_BROKER_URL": settings.workers.broker_url,
        "IDENTITY_MODELS_DIR": str(settings.pipeline.models_dir),
        "IDENTITY_CACHE_DIR": str(settings.pipeline.cache_dir),
        "IDENTITY_DEVICE": "cpu",
        "IDENTITY_TASK_VISIBILITY_TIMEOUT": str(settings.workers.task_visibility_timeout),
        "OMP_NUM_THREADS": "1",  # a shared 2-core machine
        "PYTHONPATH": str(ROOT),
    })
    return env


class Worker:
    """`celery -A workers.app worker` as the GPU worker runs it (solo pool, concurrency 1)."""

    count = 0

    def __init__(self, settings, log_dir: Path) -> None:
        Worker.count += 1
        self.log = log_dir / f"worker-{Worker.count}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool=solo",
             "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
             "-n", f"test{Worker.count}@%h"],
            cwd=ROOT, env=worker_env(settings), stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def busy(self) -> int:
        """Tasks received but not yet finished, from the worker's log."""
        text = self.text()
        return text.count("] received") - text.count("] succeeded")

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def client(settings):
    with ready_api_client(settings) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def key(client) -> str:
    return create_key(client.app.state.service.store, "workers-test", ["enroll"])[1]


@pytest.fixture
def workers(settings, tmp_path):
    started: list[Worker] = []

    def start() -> Worker:
        worker = Worker(settings, tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_job(client, key, job_id, until=lambda job: job["status"] in ("succeeded", "failed", "cancelled"),
             timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key}).json()
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.25)


def face_rows(service: Service) -> list[tuple]:
    with service.store.connection() as conn:
        return conn.execute(
            "SELECT encode(i.sha256, 'hex'), f.face_index, p.external_id FROM faces f "
            "JOIN images i ON i.id = f.image_id JOIN persons p ON p.id = f.person_id"
        ).fetchall()


def test_enroll_through_the_api_on_a_worker_then_search_finds_the_person(client, key, workers):
    worker = workers()
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for p in photos("Andy_Roddick")[:3]:
            archive.write(p, f"roddick/{p.name}")
    created = client.post("/v1/jobs/enroll/archive", headers={"X-API-Key": key},
                          files=[("archive", ("r.zip", buffer.getvalue(), "application/zip"))])
    assert created.status_code == 202, created.text
    job = wait_job(client, key, created.json()["job_id"])
    assert job["status"] == "succeeded" and job["counts"] == {"enrolled": 3}, job

    service = client.app.state.service
    assert service.index.wait_for(service.store.watermark(), timeout=10)  # via the change log
    probe = photos("Andy_Roddick")[3]
    found = client.post("/v1/search", headers={"X-API-Key": key},
                        files=[("image", (probe.name, probe.read_bytes(), "image/jpeg"))]).json()
    assert found["faces"][0]["matches"][0]["external_id"] == "roddick"
    assert worker.text().count("worker: models loaded") == 1  # once per process, not per task
    ready = client.get("/readyz").json()["checks"]
    assert ready["broker"] == {"ok": True, "queue_depth": 0}


def test_service_enroll_sends_batches_to_the_workers(settings, client, workers):
    workers()
    items = [EnrollItem(str(p), "vega") for p in photos("Amelia_Vega")[:3]]
    with Service(settings) as service:
        summary = service.enroll(items)
    assert summary.counts == {"enrolled": 3}
    assert sum(1 for row in face_rows(client.app.state.service) if row[2] == "vega") == 3


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_without_duplicates(
    client, key, workers, settings
):
    names = ["Ana_Guevara", "Alec_Baldwin"]
    # A small folder-per-person view of lfw-dev (links into it: they stay in the allowed roots).
    view = settings.api.allowed_roots[1] / "two-people"
    for name in names:
        (view / name).mkdir(parents=True)
        for p in photos(name)[:4]:
            (view / name / p.name).symlink_to(p)
    created = client.post("/v1/jobs/enroll/directory", headers={"X-API-Key": key},
                          json={"directory": str(view), "largest_face": True})
    assert created.status_code == 202 and created.json()["total_items"] == 8  # 4 batches of 2
    job_id = created.json()["job_id"]
    first = workers()
    wait_job(client, key, job_id, until=lambda j: j["batches_done"] >= 1)
    deadline = time.monotonic() + 60
    while first.busy() == 0:  # kill it inside a task, not between two
        assert time.monotonic() < deadline, first.text()
        time.sleep(0.02)
    first.kill()  # SIGKILL: no chance to ack, requeue or clean up
    running = wait_job(client, key, job_id, until=lambda j: True)
    assert running["status"] == "running" and running["batches_done"] < running["total_batches"]

    workers()  # the replacement
    done = wait_job(client, key, job_id)
    assert done["status"] == "succeeded", done
    assert done["items_done"] == 8
    assert {o["status"] for o in done["outcomes"]} <= {"enrolled", "already_present"}

    rows = [r for r in face_rows(client.app.state.service) if r[2] in names]
    assert len(rows) == 8  # one face per photo: the redelivered batch added nothing
    assert len({(sha, index) for sha, index, _ in rows}) == 8


# --- no worker: the client is told, and what it was told holds ------------------------------------------


def wait_worker_idle(worker: Worker, tasks: int, timeout: float = 300) -> None:
    """Until `worker` has taken `tasks` tasks and finished them all."""
    deadline = time.monotonic() + timeout
    while worker.text().count("] received") < tasks or worker.busy() > 0:
        assert time.monotonic() < deadline, worker.text()[-3000:]
        time.sleep(0.2)


def test_an_upload_no_worker_takes_is_a_job_to_follow_and_a_cancelled_one_is_never_applied(
    client, key, workers, settings
):
    """Seen: with no worker, an upload waited 30 s, answered 503, and was applied when a
    worker started later."""
    headers = {"X-API-Key": key}

    def upload(person: str, photo: Path):
        started = time.monotonic()
        response = client.post(f"/v1/persons/{person}/faces", headers=headers,
                               files=[("images", (photo.name, photo.read_bytes(), "image/jpeg"))])
        return response, time.monotonic() - started

    kept, waited = upload("law", photos("Bernard_Law")[0])
    assert kept.status_code == 202 and waited < 10, kept.text  # enroll_wait_seconds, not an hour
    assert kept.json()["status"] == "queued"
    dropped, _ = upload("graham", photos("Bill_Graham")[0])
    assert dropped.status_code == 202
    cancelled = client.delete(f"/v1/jobs/{dropped.json()['job_id']}", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    worker = workers()
    done = wait_job(client, key, kept.json()["job_id"])
    assert done["status"] == "succeeded" and done["counts"] == {"enrolled": 1}, done  # told 202: applied
    wait_worker_idle(worker, 2)  # it has taken the cancelled job's batch too
    assert not [row for row in face_rows(client.app.state.service) if row[2] == "graham"]
    assert wait_job(client, key, dropped.json()["job_id"])["status"] == "cancelled"
    assert client.delete(f"/v1/jobs/{kept.json()['job_id']}", headers=headers).status_code == 409


def test_identity_enroll_without_a_live_worker_exits_4_in_seconds_and_nothing_is_applied_later(
    client, workers, settings, tmp_path
):
    """Seen: `identity enroll` in broker mode waited forever."""
    folder = tmp_path / "people" / "walters"
    folder.mkdir(parents=True)
    for photo in photos("Barbara_Walters")[:4]:
        (folder / photo.name).symlink_to(photo)
    env = {**worker_env(settings), "IDENTITY_WORKER_WAIT_SECONDS": "3", "IDENTITY_BATCH_SIZE": "2"}
    command = [sys.executable, "-m", "identity.cli", "enroll", "--largest-face", str(folder.parent)]

    started = time.monotonic()
    gave_up = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert gave_up.returncode == 4, gave_up.stderr
    assert "no Celery worker is alive" in gave_up.stderr and "Traceback" not in gave_up.stderr
    assert time.monotonic() - started < 60  # start-up, two sends, 3 s of silence
    service = client.app.state.service
    job = service.jobs(kind="enroll", status="failed")[0][0]
    assert job.error.startswith("the client gave up: no Celery worker is alive"), job

    # A run whose job is cancelled (from the console, say) before a worker takes its
    # batches stops with the reason: not a success that counts only some of its photos.
    waiting = subprocess.Popen(command, env={**env, "IDENTITY_WORKER_WAIT_SECONDS": "120"}, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (active := service.jobs(kind="enroll", status="queued")[0]):
        assert waiting.poll() is None and time.monotonic() < deadline, waiting.communicate()
        time.sleep(0.2)
    service.cancel_job(active[0].id)

    worker = workers()  # takes the two batches the client gave up on, and the cancelled job's two
    _, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 5, stderr
    assert "ended while its batches ran" in stderr and "Traceback" not in stderr
    wait_worker_idle(worker, 4)
    assert not [row for row in face_rows(service) if row[2] == "walters"]
    assert service.job(job.id).status == "failed"
    assert service.job(active[0].id).status == "cancelled"

    # With a worker alive the same command finishes, saying how far it got as it goes.
    finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "enroll: 4/4 files" in finished.stderr
    assert len([row for row in face_rows(service) if row[2] == "walters"]) == 4
