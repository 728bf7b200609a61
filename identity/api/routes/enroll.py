"""/persons/{person}/faces (synchronous enrollment) and /jobs (bulk, background), under /v1."""

from __future__ import annotations

import io

from fastapi import File, Form, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse

from identity import archives, names, spool
from identity.api.deps import (
    AdminKey,
    EnrollKey,
    PersonRef,
    ReadKey,
    ServiceDep,
    actor,
    count_faces,
)
from identity.api.routes import versioned
from identity.api.schemas import (
    ClusterJobIn,
    DirectoryJobIn,
    EnrollOut,
    ItemOutcomeOut,
    JobCreated,
    JobOut,
    ModelMoveJobIn,
)
from identity.api.uploads import Upload, file_name, read_uploads, spool_uploads
from identity.enroll import EnrollItem
from identity.errors import NotFoundError
from identity.service import Service
from identity.store import jobs as job_store

router = versioned(tags=["enrollment"])


def _target(service: Service, person: str) -> tuple[int | None, str]:
    """(id, external id) of the person an upload enrolls to, by the reference rule of
    identity/names.py: digits name an existing person by id (404 if there is none, never a
    new person called "2"); anything else an existing external id or alias, or else the
    external id of a new person the enrollment creates."""
    try:
        found = service.person(person)
        return found.id, found.external_id
    except NotFoundError:
        if isinstance(names.person_ref(person), int):
            raise
        return None, names.external_id(person)


@router.post("/persons/{person}/faces", response_model=EnrollOut, responses={
    202: {"model": JobCreated, "description": "With Celery workers: none finished within "
          "`enroll_wait_seconds`; the photos are enrolled by the job named here (follow it at "
          "/v1/jobs/{job_id}, or cancel it)."}})
def enroll_images(
    request: Request,
    person: PersonRef,
    service: ServiceDep,
    key: EnrollKey,
    images: list[UploadFile] = File(..., description="Photos of this person, one face each"),
    display_name: str | None = Form(None, max_length=256),
    largest_face: bool = Form(False, description="Enroll the largest face of a photo with several"),
) -> EnrollOut:
    """Enroll now and answer with one outcome per photo (created on demand: `person` is
    the external id of a new person unless it names an existing one)."""
    uploads = read_uploads(images, service.settings.api.max_images_per_request)
    person_id, external_id = _target(service, person)
    display_name = names.display_name(display_name)
    # Spooled (a worker may be the one to read them) for this request only.
    owner = spool.new_owner()
    paths = spool_uploads(service.settings, owner, uploads)
    try:
        items = [EnrollItem(u.name, external_id, display_name, actor=actor(key), path=str(p))
                 for u, p in zip(uploads, paths)]
        outcomes = service.enroll_now(items, largest_face=largest_face, key_id=key.key_id, job_id=owner)
    finally:
        service.release_spool(owner)
    if isinstance(outcomes, job_store.Job):  # not done in time: the job (which holds the spool) goes on
        return JSONResponse(_created(outcomes).model_dump(), status_code=status.HTTP_202_ACCEPTED)
    count_faces(request, sum(o.status == "enrolled" for o in outcomes))
    if person_id is None and any(o.status in ("enrolled", "already_present") for o in outcomes):
        person_id = service.person(external_id).id  # created by this enrollment
    return EnrollOut(person=external_id, person_id=person_id,
                     outcomes=[ItemOutcomeOut.model_validate(o) for o in outcomes])


def _created(job: job_store.Job) -> JobCreated:
    return JobCreated.model_validate(job)


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
    """Entries are checked while the request is answered (a malformed archive is a 422
    naming its entry) and read again, one by one, when their batch runs: the archive is
    spooled whole for the job, never expanded to disk."""
    settings = service.settings
    data = archive.file.read()
    entries = archives.scan(io.BytesIO(data), max_entries=settings.api.max_archive_entries,
                            max_total=settings.api.max_archive_bytes, max_entry=settings.api.max_upload_bytes)
    job_id = spool.new_owner()
    path = spool_uploads(settings, job_id, [Upload("archive.zip", data)])[0] if entries else None
    items = [EnrollItem(e.name, e.person, actor=actor(key), path=str(path), member=e.member) for e in entries]
    try:
        job = service.start_enroll_job(items, largest_face=largest_face,
                                       params={"archive": file_name(archive, "archive")},
                                       key_id=key.key_id, job_id=job_id)
    except BaseException:
        service.release_spool(job_id)
        raise
    return _created(job)


@router.post("/jobs/cluster", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def cluster_unassigned(body: ClusterJobIn, service: ServiceDep, key: AdminKey) -> JobCreated:
    """Cluster the stored faces that belong to no person; the result lists face ids."""
    job = service.start_cluster_job(body.model_dump(), key_id=key.key_id)
    return _created(job)


@router.post("/jobs/model-move", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def model_move(body: ModelMoveJobIn, service: ServiceDep, key: AdminKey) -> JobCreated:
    """Move the store to another embedding model while search keeps answering with the
    current one (`identity models migrate`): every face is re-embedded from its chip (or
    photo), the new model's index is built, and search switches in every process. Resumed
    if the API restarts meanwhile. With `finalize`, the old model's vectors are dropped."""
    return _created(service.start_model_move_job(body.model_dump(), key_id=key.key_id))


@router.post("/jobs/cluster/upload", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def cluster_upload(
    service: ServiceDep,
    key: ReadKey,
    images: list[UploadFile] = File(..., description="The collection to cluster"),
    threshold: float | None = Form(None, ge=-1.0, le=1.0),
    hubness: bool | None = Form(None, description="Hubness-correct the kNN graph first; unset: the model's calibration."),
) -> JobCreated:
    """Cluster an uploaded collection (nothing is stored but the job's result)."""
    uploads = read_uploads(images, service.settings.api.max_images_per_request)
    job_id = spool.new_owner()  # the job's spool folder, released when the job ends
    paths = [str(p) for p in spool_uploads(service.settings, job_id, uploads)]
    spec = {"paths": paths, "names": [u.name for u in uploads], "threshold": threshold, "hubness": hubness}
    try:
        return _created(service.start_cluster_job(spec, key_id=key.key_id, job_id=job_id))
    except BaseException:
        service.release_spool(job_id)
        raise


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(
    job_id: str,
    service: ServiceDep,
    _: ReadKey,
    outcomes_offset: int = Query(0, ge=0, le=10_000_000),
    outcomes_limit: int = Query(1000, ge=0, le=100_000, description="Per-file outcomes returned (counts cover all)"),
) -> JobOut:
    out = JobOut.model_validate(service.job(job_id))
    out.outcomes = out.outcomes[outcomes_offset: outcomes_offset + outcomes_limit]
    return out
