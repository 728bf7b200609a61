"""Tasks: thin wrappers over the service. Arguments and results are plain JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from identity.config import get_settings
from identity.enroll import EnrollItem
from identity.errors import ServiceUnavailableError
from workers import runtime
from workers.app import app

_settings = get_settings()
_RETRY = dict(
    autoretry_for=(ServiceUnavailableError, ConnectionError, TimeoutError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=_settings.task_max_retries,
)


@app.task(name="identity.enroll_batch", bind=True, **_RETRY)
def enroll_batch(
    self, items: list[dict[str, Any]], largest_face: bool = False,
    job_id: str | None = None, batch_no: int | None = None,
) -> list[dict[str, Any]]:
    """Enroll one batch in one transaction; with a job, record its outcomes there too.
    Idempotent: a redelivery finds the faces present and rewrites the same job row."""
    service = runtime.service()
    outcomes = service.enroll_batch([EnrollItem(**item) for item in items], largest_face=largest_face)
    result = [asdict(o) for o in outcomes]
    if job_id is not None and batch_no is not None:
        from identity.store.jobs import record_batch

        record_batch(service.store, job_id, batch_no, result)
    return result


@app.task(name="identity.cluster", bind=True, **_RETRY)
def cluster(self, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    from identity.api.jobs import run_cluster_job

    return run_cluster_job(runtime.service(), job_id, spec)


@app.task(name="identity.ping")
def ping() -> str:
    """Readiness probe: answered only by a worker that has loaded its models."""
    runtime.service()
    return "pong"
