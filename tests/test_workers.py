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
    yield model_settings.model_copy(update={
        "database_url": url,
        "data_dir": tmp_path_factory.mktemp("workers-data"),  # shared by API and workers (uploads)
        "broker_url": redis_url,
        "allowed_roots": [LFW_DIR, tmp_path_factory.mktemp("views")],
        "job_batch_size": 2,
        "task_visibility_timeout": 8,  # a dead worker's task is handed on after 8 s
    })
    pg_server.drop_database(url)


def worker_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "IDENTITY_DATABASE_URL": settings.database_url,
        "IDENTITY_DATA_DIR": str(settings.data_dir),
        "IDENTITY_BROKER_URL": settings.broker_url,
        "IDENTITY_MODELS_DIR": str(settings.models_dir),
        "IDENTITY_CACHE_DIR": str(settings.cache_dir),
        "IDENTITY_DEVICE": "cpu",
        "IDENTITY_TASK_VISIBILITY_TIMEOUT": str(settings.task_visibility_timeout),
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


def wait_job(client, key, job_id, until=lambda job: job["status"] in ("succeeded", "failed"), timeout=300):
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
    view = settings.allowed_roots[1] / "two-people"
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
