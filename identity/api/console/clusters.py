"""Clusters: start a clustering job (the unassigned faces, or an uploaded collection),
then review its clusters as chip grids, largest first: name a cluster (a new person, or
an existing one it joins), drop the faces that do not belong first, see the faces left
unclustered."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from identity import spool
from identity.api.console.core import (
    Admin,
    Console,
    ConsoleRoute,
    Enroller,
    Reader,
    actor,
    redirect,
    render,
    same_origin,
)
from identity.api.uploads import read_uploads, spool_uploads
from identity.errors import ConflictError, InputError, NotFoundError
from identity.store import jobs as job_store

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False, dependencies=[Depends(same_origin)])

CLUSTERS_PAGE = 20  # clusters per page of a review
CHIPS_SHOWN = 60  # chips shown per cluster (naming takes every face of the cluster)
UNCLUSTERED_SHOWN = 120
ALGORITHMS = ("hdbscan", "components", "chinese_whispers", "dbscan")


@router.get("/clusters")
def clusters_page(request: Request, service: Console, _: Reader) -> Response:
    recent, _next = job_store.list_jobs(service.store, kind="cluster", limit=10)
    return render(request, "clusters.html", nav="clusters", recent=recent, algorithms=ALGORITHMS)


@router.post("/clusters/unassigned")
def cluster_unassigned(request: Request, service: Console, key: Admin,
                       algorithm: str = Form(""), threshold: str = Form("")) -> Response:
    spec: dict = {"algorithm": None, "threshold": None, "min_cluster_size": None}
    if algorithm:
        if algorithm not in ALGORITHMS:
            raise InputError(f"unknown algorithm {algorithm!r}")
        spec["algorithm"] = algorithm
    spec["threshold"] = _threshold(threshold)
    job = service.start_cluster_job(spec, key_id=key.key_id)
    return redirect(request, f"/clusters/{job.id}")


@router.post("/clusters/upload")
def cluster_upload(request: Request, service: Console, key: Enroller,
                   images: list[UploadFile] = File([]), threshold: str = Form("")) -> Response:
    """A collection of photos, clustered: their faces are kept, unassigned (with chips), so
    its clusters are reviewed and named like the unassigned faces'."""
    if not images:
        raise InputError("choose or drop the photos to cluster")
    uploads = read_uploads(images, service.settings.api.max_images_per_request)
    spec = {"paths": [], "names": [u.name for u in uploads], "threshold": _threshold(threshold), "keep": True}
    job_id = spool.new_owner()  # the job's spool folder, released when the job ends
    try:
        spec["paths"] = [str(p) for p in spool_uploads(service.settings, job_id, uploads)]
        job = service.start_cluster_job(spec, key_id=key.key_id, job_id=job_id)
    except BaseException:
        service.release_spool(job_id)
        raise
    return redirect(request, f"/clusters/{job.id}")


def _threshold(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError("the threshold is a cosine similarity, e.g. 0.7") from None
    if not -1.0 <= value <= 1.0:
        raise InputError("the threshold is a cosine similarity between -1 and 1")
    return value


def _review(service, job_id: str, page: int) -> dict:
    job = service.job(job_id, with_outcomes=False)
    if job.kind != "cluster":
        raise NotFoundError(f"job {job_id} is not a clustering job")
    active = job.status in ("queued", "running")
    result = job.result or {}
    clusters = sorted(enumerate(result.get("clusters", [])), key=lambda c: (-len(c[1]), c[0]))
    start = page * CLUSTERS_PAGE
    return {
        "job": job, "active": active, "page": page, "clusters": clusters[start:start + CLUSTERS_PAGE],
        "more": start + CLUSTERS_PAGE < len(clusters), "cluster_count": len(clusters),
        "faces_clustered": sum(len(c) for _, c in clusters),
        "unclustered": result.get("unclustered", []), "chips_shown": CHIPS_SHOWN,
        "unclustered_shown": UNCLUSTERED_SHOWN,
    }


@router.get("/clusters/{job_id}")
def review_page(request: Request, job_id: str, service: Console, _: Reader) -> Response:
    return render(request, "cluster_review.html", nav="clusters", **_review(service, job_id, 0))


@router.get("/clusters/{job_id}/progress")
def review_progress(request: Request, job_id: str, service: Console, _: Reader) -> Response:
    view = _review(service, job_id, 0)
    if not view["active"]:  # done: the whole review, not just the status line
        return redirect(request, f"/clusters/{job_id}")
    return render(request, "_cluster_progress.html", **view)


@router.get("/clusters/{job_id}/page")
def review_more(request: Request, job_id: str, service: Console, _: Reader,
                page: int = Query(1, ge=1, le=1_000_000)) -> Response:
    return render(request, "_cluster_page.html", **_review(service, job_id, page))


def _face_ids(job, number: int, dropped: list[int]) -> list[int]:
    clusters = (job.result or {}).get("clusters", [])
    if not 0 <= number < len(clusters):
        raise NotFoundError(f"job {job.id} has no cluster {number}")
    ids = [ref["face_id"] for ref in clusters[number] if "face_id" in ref]
    if not ids:
        raise InputError("this cluster's faces are not stored: nothing to name")
    gone = set(dropped)
    kept = [i for i in ids if i not in gone]
    if not kept:
        raise InputError("every face of this cluster was dropped: nothing to name")
    return kept


@router.post("/clusters/{job_id}/{number}/name")
def name_cluster(request: Request, job_id: str, number: int, service: Console, key: Enroller,
                 name: str = Form("", max_length=256), dropped: list[int] = Form([])) -> Response:
    """The cluster's faces (less the dropped ones) go to the person `name` names: an
    existing person (id, external id or alias) they join, else a new person of that
    external id."""
    name = name.strip()
    if not name:
        raise InputError("type a name for this cluster: a new external id, or an existing person")
    faces = _face_ids(service.job(job_id, with_outcomes=False), number, dropped)
    who = actor(key)
    try:
        person, created = service.person(name), False
    except NotFoundError:
        person, created = service.create_person(name, actor=who), True
    try:
        result = service.assign_faces(faces, person.id, actor=who)
    except ConflictError:
        if created:  # the person was made for these faces only
            service.delete_person(person.id, actor=who)
        raise
    return render(request, "_cluster_named.html", number=number, person=result.person, created=created,
                  faces=len(faces), dropped=len(dropped))
