"""/jobs: list and cancel recorded jobs, under /v1 (starting them and reading one job:
routes/enroll.py)."""

from __future__ import annotations

from fastapi import Query

from identity.api.deps import EnrollKey, ReadKey, ServiceDep
from identity.api.routes import versioned
from identity.api.schemas import JobList, JobOut, JobSummary
from identity.vocabulary import JobKind, JobStatus

router = versioned(tags=["jobs"])


@router.get("/jobs", response_model=JobList)
def list_jobs(
    service: ServiceDep,
    _: ReadKey,
    status: JobStatus | None = Query(None, description="Only jobs in this state"),
    kind: JobKind | None = Query(None, description="Only jobs of this kind"),
    limit: int = Query(50, ge=1, le=1000),
    after: str | None = Query(None, max_length=64, description="The `next` of the previous page"),
) -> JobList:
    """Jobs, newest first, with their progress (outcomes: GET /v1/jobs/{job_id})."""
    jobs, cursor = service.jobs(status=status.value if status else None, kind=kind.value if kind else None,
                                limit=limit, after=after)
    return JobList(jobs=[JobSummary.model_validate(job) for job in jobs], next=cursor)


@router.delete("/jobs/{job_id}", response_model=JobOut)
def cancel_job(job_id: str, service: ServiceDep, _: EnrollKey) -> JobOut:
    """Cancel a queued or running job. Batches already written stay; no batch writes
    anything once this has answered. Repeating it is harmless; a job that already
    succeeded or failed is a 409."""
    return JobOut.model_validate(service.cancel_job(job_id))
