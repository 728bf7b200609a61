"""Background jobs (bulk enrollment, clustering): their state lives in PostgreSQL so
any API replica can answer `GET /v1/jobs/{id}` and any worker can report progress.

A job is split into numbered batches when it is created. A finished batch writes its
outcomes under (job_id, batch_no) with an upsert, so a redelivered or retried task
replaces its own row and never counts twice (and one that finds its row answers with
it: `batch_outcomes`); the job succeeds when every batch has a row. Items decided while planning (e.g. a malformed manifest line) are kept in the
job's `params["planned"]` and counted from the start.

A job driven by one process (the API's in-process runner, or `identity enroll` with a
broker) names that process as its `owner`, which refreshes `heartbeat_at`; its batches
are kept in `job_plan`, so whoever finds the owner gone can run the batches that have
no outcome row yet (identity/jobs.py decides). A job stops being written to the moment
it leaves 'queued'/'running': `lock_active` is taken inside every write transaction
made for a job, so a cancel (or a client giving up) and a worker's write are ordered by
the row lock and a write never lands after the job was reported ended.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from identity.errors import ConflictError, JobEndedError, NotFoundError

if TYPE_CHECKING:  # the store's mixins import this module (the write guard)
    import psycopg

    from identity.store.store import Store

JobKind = Literal["enroll", "cluster"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")


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
    owner: str | None = None
    heartbeat_at: datetime | None = None
    resumes: int = 0


@dataclass(frozen=True)
class ActiveJob:
    """A queued or running job someone else owns, as the recovery sweep sees it."""

    id: str
    kind: str
    owner: str
    heartbeat_age_s: float | None
    resumes: int
    params: dict[str, Any]


def create_job(
    store: Store, kind: JobKind, *, params: dict[str, Any], total_items: int, total_batches: int,
    key_id: str | None = None, owner: str | None = None,
    plan: Sequence[list[dict[str, Any]]] | None = None, job_id: str | None = None,
) -> str:
    """The job row and (when given) its plan, batch `i` being `plan[i]`, in one
    transaction: a job is never seen without the plan it would be resumed from. `job_id`
    (a UUID) is given when files were spooled for the job before it existed
    (identity/spool.py: the spool folder is named by it)."""
    job_id = str(uuid.UUID(job_id)) if job_id else str(uuid.uuid4())
    with store.connection() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO jobs (id, kind, params, total_items, total_batches, key_id, owner, heartbeat_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)",
            (job_id, kind, json.dumps(params), total_items, total_batches, key_id, owner, owner),
        )
        if plan:
            with conn.cursor().copy("COPY job_plan (job_id, batch_no, items) FROM STDIN") as copy:
                for number, items in enumerate(plan):
                    copy.write_row((job_id, number, json.dumps(items)))
    return job_id


def record_batch(store: Store, job_id: str, batch_no: int, outcomes: list[dict[str, Any]]) -> bool:
    """Store one batch's outcomes (replacing a previous attempt's) and finish the job
    when this was its last missing batch. One transaction, so two workers finishing
    the last two batches at once cannot both miss (or both make) the transition.
    Returns True when this batch finished the job. A batch written before the job was
    cancelled still records its outcomes (they happened); the status stays as it is."""
    with store.connection() as conn, conn.transaction():
        row = conn.execute("SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        conn.execute(
            "INSERT INTO job_batches (job_id, batch_no, outcomes) VALUES (%s, %s, %s) "
            "ON CONFLICT (job_id, batch_no) DO UPDATE SET outcomes = excluded.outcomes, "
            "attempts = job_batches.attempts + 1, finished_at = now()",
            (job_id, batch_no, json.dumps(outcomes)),
        )
        updated = conn.execute(
            "UPDATE jobs SET updated_at = now(), heartbeat_at = CASE WHEN owner IS NULL THEN heartbeat_at "
            "                                                   ELSE now() END, "
            "status = CASE WHEN (SELECT count(*) FROM job_batches b WHERE b.job_id = jobs.id) "
            "                   >= total_batches THEN 'succeeded' ELSE 'running' END, "
            "finished_at = CASE WHEN (SELECT count(*) FROM job_batches b WHERE b.job_id = jobs.id) "
            "                   >= total_batches THEN now() END "
            "WHERE id = %s AND status IN ('queued', 'running') RETURNING status",
            (job_id,),
        ).fetchone()
    return row[0] in ACTIVE and updated is not None and updated[0] == "succeeded"


def batch_outcomes(store: Store, job_id: str, batch_no: int) -> list[dict[str, Any]] | None:
    """The outcomes recorded for one batch of a job; None while it has none."""
    with store.connection() as conn:
        row = conn.execute(
            "SELECT outcomes FROM job_batches WHERE job_id = %s AND batch_no = %s", (job_id, batch_no)
        ).fetchone()
    return None if row is None else row[0]


def set_status(
    store: Store, job_id: str, status: JobStatus, *, error: str | None = None,
    result: dict[str, Any] | None = None, items_done: int | None = None,
) -> bool:
    """Move an active job to `status`; False (and nothing written) when the job had
    already ended: a cancelled job is not revived by a late 'running' or 'succeeded'."""
    finished = status in ENDED
    with store.connection() as conn:
        cursor = conn.execute(
            "UPDATE jobs SET status = %s, error = coalesce(%s, error), "
            "result = coalesce(%s::jsonb, result), items_done = coalesce(%s, items_done), "
            "updated_at = now(), finished_at = CASE WHEN %s THEN now() ELSE finished_at END "
            "WHERE id = %s AND status IN ('queued', 'running')",
            (status, error, json.dumps(result) if result is not None else None, items_done, finished, job_id),
        )
        return cursor.rowcount == 1


def set_progress(store: Store, job_id: str, *, items_done: int, total_items: int | None = None) -> None:
    """Progress of work without per-item outcome rows (clustering)."""
    with store.connection() as conn:
        conn.execute(
            "UPDATE jobs SET items_done = %s, total_items = coalesce(%s, total_items), updated_at = now() "
            "WHERE id = %s AND status IN ('queued', 'running')",
            (items_done, total_items, job_id),
        )


def lock_active(conn: psycopg.Connection, job_id: str) -> None:
    """Inside a write transaction: hold the job row (FOR SHARE, so writers of one job do
    not queue behind each other) and refuse to go on unless the job is still queued or
    running. A cancel's UPDATE waits for this transaction, or this one sees its result."""
    row = conn.execute("SELECT status FROM jobs WHERE id = %s FOR SHARE", (job_id,)).fetchone()
    if row is None:
        raise JobEndedError(f"job {job_id} no longer exists; nothing was written")
    if row[0] not in ACTIVE:
        raise JobEndedError(f"job {job_id} is {row[0]}; nothing was written")


def status_of(store: Store, job_id: str) -> str | None:
    with store.connection() as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else row[0]


def cancel(store: Store, job_id: str, *, reason: str, status: JobStatus = "cancelled",
           owner: str | None = None) -> bool:
    """End an active job as `status` (cancelled, or failed when a client gave up for a
    reason of its own); with `owner`, only while that process still owns it. True when
    this call ended it; False when it had already ended (or changed hands)."""
    _check_id(job_id)
    with store.connection() as conn:
        row = conn.execute(
            "UPDATE jobs SET status = %s, error = coalesce(error, %s), updated_at = now(), finished_at = now() "
            "WHERE id = %s AND status IN ('queued', 'running') AND (%s::text IS NULL OR owner = %s) RETURNING id",
            (status, reason, job_id, owner, owner),
        ).fetchone()
        if row is not None:
            return True
        if conn.execute("SELECT 1 FROM jobs WHERE id = %s", (job_id,)).fetchone() is None:
            raise NotFoundError(f"no job {job_id!r}")
    return False


def cancel_or_conflict(store: Store, job_id: str, *, reason: str) -> None:
    """Cancel an active job; a cancelled one is left as it is (a repeated DELETE), any
    other ended job is a conflict."""
    if cancel(store, job_id, reason=reason):
        return
    current = status_of(store, job_id)
    if current != "cancelled":
        raise ConflictError(f"job {job_id} already {current}; only a queued or running job can be cancelled")


# --- owners ------------------------------------------------------------------------------------


def heartbeat(store: Store, owner: str) -> int:
    """Refresh every active job `owner` drives; returns how many there are."""
    with store.connection() as conn:
        return conn.execute(
            "UPDATE jobs SET heartbeat_at = now() WHERE owner = %s AND status IN ('queued', 'running')",
            (owner,),
        ).rowcount


def owned_by_others(store: Store, owner: str) -> list[ActiveJob]:
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT id::text, kind, owner, extract(epoch FROM now() - heartbeat_at)::float8, resumes, params "
            "FROM jobs WHERE status IN ('queued', 'running') AND owner IS NOT NULL AND owner <> %s "
            "ORDER BY created_at",
            (owner,),
        ).fetchall()
    return [ActiveJob(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


def claim(store: Store, job_id: str, *, previous: str, owner: str | None) -> bool:
    """Take over a job from an owner found gone. Atomic on the previous owner: of two
    processes finding the same dead owner, one wins and the other sees False."""
    with store.connection() as conn:
        return conn.execute(
            "UPDATE jobs SET owner = %s, heartbeat_at = now(), resumes = resumes + 1, updated_at = now() "
            "WHERE id = %s AND owner = %s AND status IN ('queued', 'running')",
            (owner, job_id, previous),
        ).rowcount == 1


def remaining_plan(store: Store, job_id: str) -> list[tuple[int, list[dict[str, Any]]]] | None:
    """The plan's batches without an outcome row, in order; None when no plan was kept."""
    with store.connection() as conn:
        planned = conn.execute("SELECT count(*) FROM job_plan WHERE job_id = %s", (job_id,)).fetchone()[0]
        if planned == 0:
            return None
        rows = conn.execute(
            "SELECT p.batch_no, p.items FROM job_plan p WHERE p.job_id = %s AND NOT EXISTS "
            "(SELECT 1 FROM job_batches b WHERE b.job_id = p.job_id AND b.batch_no = p.batch_no) "
            "ORDER BY p.batch_no",
            (job_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


# --- reading -----------------------------------------------------------------------------------


def _check_id(job_id: str) -> None:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise NotFoundError(f"no job {job_id!r}") from None


def get_job(store: Store, job_id: str, *, with_outcomes: bool = True) -> Job:
    _check_id(job_id)
    with store.connection() as conn:
        row = conn.execute(
            "SELECT id::text, kind, status, params, total_items, total_batches, result, error, "
            "created_at, updated_at, finished_at, owner, heartbeat_at, resumes, items_done "
            "FROM jobs WHERE id = %s",
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
        total_batches=row[5], batches_done=len(batches),
        items_done=row[14] if row[14] is not None else len(outcomes), counts=counts,
        outcomes=outcomes if with_outcomes else [], result=row[6], error=row[7],
        created_at=row[8], updated_at=row[9], finished_at=row[10], owner=row[11],
        heartbeat_at=row[12], resumes=row[13],
    )


def list_jobs(
    store: Store, *, status: str | None = None, kind: str | None = None, limit: int = 50,
    after: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first, one keyset page: `after` is the last job id of the previous page.
    Progress is summed in SQL (outcomes are not read); returns (jobs, next cursor)."""
    where, args = ["true"], []
    if status is not None:
        where.append("j.status = %s")
        args.append(status)
    if kind is not None:
        where.append("j.kind = %s")
        args.append(kind)
    if after is not None:
        _check_id(after)
        where.append("(j.created_at, j.id) < (SELECT created_at, id FROM jobs WHERE id = %s)")
        args.append(after)
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT j.id::text, j.kind, j.status, j.params - 'planned', j.total_items, j.total_batches, "
            "j.error, j.created_at, j.updated_at, j.finished_at, j.owner, j.heartbeat_at, j.resumes, "
            "coalesce(b.n, 0), coalesce(j.items_done, "
            "  coalesce(jsonb_array_length(j.params -> 'planned'), 0) + coalesce(b.items, 0)::int) "
            "FROM jobs j LEFT JOIN LATERAL (SELECT count(*) AS n, sum(jsonb_array_length(outcomes)) AS items "
            "                               FROM job_batches WHERE job_id = j.id) b ON true "
            f"WHERE {' AND '.join(where)} ORDER BY j.created_at DESC, j.id DESC LIMIT %s",
            (*args, limit + 1),
        ).fetchall()
    jobs = [
        Job(id=r[0], kind=r[1], status=r[2], params=r[3], total_items=r[4], total_batches=r[5],
            batches_done=r[13], items_done=r[14], counts={}, error=r[6], created_at=r[7],
            updated_at=r[8], finished_at=r[9], owner=r[10], heartbeat_at=r[11], resumes=r[12])
        for r in rows[:limit]
    ]
    return jobs, (jobs[-1].id if len(rows) > limit else None)
