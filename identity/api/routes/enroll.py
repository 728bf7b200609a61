"""/persons/{person}/faces (synchronous enrollment) and /jobs (bulk, background), under /v1."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fastapi import File, Form, Query, Request, UploadFile, status

from identity.api.deps import AdminKey, EnrollKey, ReadKey, ServiceDep, count_faces
from identity.api.routes import versioned
from identity.api.schemas import (
    ClusterJobIn,
    DirectoryJobIn,
    EnrollOut,
    ItemOutcomeOut,
    JobCreated,
    JobOut,
)
from identity.api.uploads import extract_archive, read_uploads, spool
from identity.enroll import EnrollItem
from identity.errors import NotFoundError
from identity.service import Service
from identity.store import jobs as job_store

router = versioned(tags=["enrollment"])


def _external_id(service: Service, person: str) -> str:
    """An existing person's external id (ref by id, external id or alias); else `person`
    itself, created by the enrollment."""
    try:
        return service.person(person).external_id
    except NotFoundError:
        return person


@router.post("/persons/{person}/faces", response_model=EnrollOut)
def enroll_images(
    request: Request,
    person: str,
    service: ServiceDep,
    key: EnrollKey,
    images: list[UploadFile] = File(..., description="Photos of this person, one face each"),
    display_name: str | None = Form(None, max_length=256),
    largest_face: bool = Form(False, description="Enroll the largest face of a photo with several"),
) -> EnrollOut:
    """Enroll now and answer with one outcome per photo (created on demand: `person` is
    the external id of a new person unless it names an existing one)."""
    uploads = read_uploads(images, service.settings.max_images_per_request)
    external_id = _external_id(service, person)
    paths = [spool(u.data, service.settings.data_dir, Path(u.name).suffix) for u in uploads]
    items = [EnrollItem(str(p), external_id, display_name) for p in paths]
    outcomes = service.enroll_now(items, largest_face=largest_face)
    count_faces(request, sum(o.status == "enrolled" for o in outcomes))
    return EnrollOut(person=external_id, outcomes=[
        ItemOutcomeOut(**{**asdict(o), "source": u.name}) for o, u in zip(outcomes, uploads)
    ])


def _created(job: job_store.Job) -> JobCreated:
    return JobCreated(job_id=job.id, kind=job.kind, status=job.status, total_items=job.total_items)


@router.post("/jobs/enroll/directory", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def enroll_directory(body: DirectoryJobIn, service: ServiceDep, key: EnrollKey) -> JobCreated:
    """A server-side folder (one sub-folder per person) under one of the allowed roots."""
    return _created(service.start_directory_job(body.directory, largest_face=body.largest_face,
                                                key_id=key.key_id))


@router.post("/jobs/enroll/archive", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def enroll_archive(
    service: ServiceDep,
    key: EnrollKey,
    archive: UploadFile = File(..., description="A zip of <person>/<image> entries"),
    largest_face: bool = Form(False),
) -> JobCreated:
    entries = extract_archive(archive.file.read(), service.settings.data_dir, service.settings.max_archive_bytes)
    items = [EnrollItem(str(path), person) for person, path, _ in entries]
    job = service.start_enroll_job(items, largest_face=largest_face,
                                   params={"archive": archive.filename or "archive"}, key_id=key.key_id)
    return _created(job)


@router.post("/jobs/cluster", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def cluster_unassigned(body: ClusterJobIn, service: ServiceDep, key: AdminKey) -> JobCreated:
    """Cluster the stored faces that belong to no person; the result lists face ids."""
    job = service.start_cluster_job(body.model_dump(), key_id=key.key_id)
    return _created(job)


@router.post("/jobs/cluster/upload", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def cluster_upload(
    service: ServiceDep,
    key: ReadKey,
    images: list[UploadFile] = File(..., description="The collection to cluster"),
    threshold: float | None = Form(None, ge=-1.0, le=1.0),
) -> JobCreated:
    """Cluster an uploaded collection (nothing is stored but the job's result)."""
    uploads = read_uploads(images, service.settings.max_images_per_request)
    paths = [str(spool(u.data, service.settings.data_dir, Path(u.name).suffix)) for u in uploads]
    spec = {"paths": paths, "names": [u.name for u in uploads], "threshold": threshold}
    return _created(service.start_cluster_job(spec, key_id=key.key_id))


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(
    job_id: str,
    service: ServiceDep,
    _: ReadKey,
    outcomes_offset: int = Query(0, ge=0, le=10_000_000),
    outcomes_limit: int = Query(1000, ge=0, le=100_000, description="Per-file outcomes returned (counts cover all)"),
) -> JobOut:
    out = JobOut.of(service.job(job_id))
    out.outcomes = out.outcomes[outcomes_offset: outcomes_offset + outcomes_limit]
    return out
