"""Background jobs (bulk enrollment, clustering): their state lives in PostgreSQL so
any API replica can answer `GET /v1/jobs/{id}` and any worker can report progress.

A job is split into numbered batches when it is created. A finished batch writes its
outcomes under (job_id, batch_no) with an upsert, so a redelivered or retried task
replaces its own row and never counts twice; the job succeeds when every batch has a
row. Items decided while planning (e.g. a malformed manifest line) are kept in the
job's `params["planned"]` and counted from the start.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from identity.errors import NotFoundError
from identity.store.store import Store

JobKind = Literal["enroll", "cluster"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    params: dict[str, Any]
    total_items: int
    total_batches: int
    batches_done: int
    items_done: int
    counts: dict[str, int]
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


def create_job(
    store: Store, kind: JobKind, *, params: dict[str, Any], total_items: int, total_batches: int,
    key_id: str | None = None,
) -> str:
    job_id = str(uuid.uuid4())
    with store.connection() as conn:
        conn.execute(
            "INSERT INTO jobs (id, kind, params, total_items, total_batches, key_id) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (job_id, kind, json.dumps(params), total_items, total_batches, key_id),
        )
    return job_id


def record_batch(store: Store, job_id: str, batch_no: int, outcomes: list[dict[str, Any]]) -> None:
    """Store one batch's outcomes (replacing a previous attempt's) and finish the job
    when this was its last missing batch. One transaction, so two workers finishing
    the last two batches at once cannot both miss (or both make) the transition."""
    with store.connection() as conn, conn.transaction():
        conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        conn.execute(
            "INSERT INTO job_batches (job_id, batch_no, outcomes) VALUES (%s, %s, %s) "
            "ON CONFLICT (job_id, batch_no) DO UPDATE SET outcomes = excluded.outcomes, "
            "attempts = job_batches.attempts + 1, finished_at = now()",
            (job_id, batch_no, json.dumps(outcomes)),
        )
        conn.execute(
            "UPDATE jobs SET updated_at = now(), "
            "status = CASE WHEN (SELECT count(*) FROM job_batches b WHERE b.job_id = jobs.id) "
            "                   >= total_batches THEN 'succeeded' ELSE 'running' END, "
            "finished_at = CASE WHEN (SELECT count(*) FROM job_batches b WHERE b.job_id = jobs.id) "
            "                   >= total_batches THEN now() END "
            "WHERE id = %s AND status IN ('queued', 'running')",
            (job_id,),
        )


def set_status(
    store: Store, job_id: str, status: JobStatus, *, error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    finished = status in ("succeeded", "failed")
    with store.connection() as conn:
        conn.execute(
            "UPDATE jobs SET status = %s, error = coalesce(%s, error), "
            "result = coalesce(%s::jsonb, result), updated_at = now(), "
            "finished_at = CASE WHEN %s THEN now() ELSE finished_at END WHERE id = %s",
            (status, error, json.dumps(result) if result is not None else None, finished, job_id),
        )


def get_job(store: Store, job_id: str, *, with_outcomes: bool = True) -> Job:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise NotFoundError(f"no job {job_id!r}") from None
    with store.connection() as conn:
        row = conn.execute(
            "SELECT id::text, kind, status, params, total_items, total_batches, result, error, "
            "created_at, updated_at, finished_at FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        batches = conn.execute(
            "SELECT outcomes FROM job_batches WHERE job_id = %s ORDER BY batch_no", (job_id,)
        ).fetchall()
    outcomes = list(row[3].get("planned", []))
    for (batch,) in batches:
        outcomes.extend(batch)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    params = {k: v for k, v in row[3].items() if k != "planned"}
    return Job(
        id=row[0], kind=row[1], status=row[2], params=params, total_items=row[4],
        total_batches=row[5], batches_done=len(batches), items_done=len(outcomes), counts=counts,
        outcomes=outcomes if with_outcomes else [], result=row[6], error=row[7],
        created_at=row[8], updated_at=row[9], finished_at=row[10],
    )
