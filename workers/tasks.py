"""Tasks: each one dispatches to a service method. Arguments and results are plain JSON;
the names are the ones `identity.runners.celery` sends."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from identity.enroll import EnrollItem
from identity.errors import JobEndedError, ServiceUnavailableError
from identity.runners.celery import CLUSTER, ENROLL_BATCH, PING
from workers import runtime
from workers.app import app

log = logging.getLogger(__name__)

_RETRY = dict(
    autoretry_for=(ServiceUnavailableError, ConnectionError, TimeoutError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
)


@app.task(name=ENROLL_BATCH, bind=True, **_RETRY)
def enroll_batch(
    self, items: list[dict[str, Any]], largest_face: bool = False,
    job_id: str | None = None, batch_no: int | None = None,
) -> list[dict[str, Any]]:
    """One batch in one transaction; with a job, its outcomes recorded on the job too.
    Idempotent: a redelivery finds the faces present and rewrites the same job row. A
    batch of a job that ended meanwhile (cancelled, or its client gave up) writes nothing."""
    service = runtime.service()
    batch = [EnrollItem(**item) for item in items]
    if job_id is not None and batch_no is not None:
        try:
            outcomes = service.enroll_job_batch(job_id, batch_no, batch, largest_face=largest_face)
        except JobEndedError as exc:
            log.info("batch %s skipped: %s", batch_no, exc)
            return []
    else:
        outcomes = service.enroll_batch(batch, largest_face=largest_face)
    return [asdict(o) for o in outcomes]


@app.task(name=CLUSTER, bind=True, **_RETRY)
def cluster(self, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return runtime.service().cluster_job(job_id, spec)
    except JobEndedError as exc:
        log.info("cluster job skipped: %s", exc)
        return {"clusters": 0, "skipped": True}


@app.task(name=PING)
def ping() -> str:
    """Readiness probe: answered only by a worker that has loaded its models."""
    runtime.service()
    return "pong"
