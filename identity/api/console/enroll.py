"""Enrollment: photos for one person (answered at once), an archive or a server-side
directory (a job), and a job's page with live progress and per-file outcomes.

Each form calls the very function behind the matching /v1 route, so the console
enrolls exactly as the API does (limits, spooling, runners, audit actor)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from identity.api.console.core import (
    Console,
    ConsoleRoute,
    Enroller,
    Reader,
    redirect,
    render,
    same_origin,
)
from identity.api.routes import enroll as api
from identity.api.schemas import DirectoryJobIn
from identity.errors import InputError

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False, dependencies=[Depends(same_origin)])

OUTCOMES_SHOWN = 500  # per page of a job's outcomes; counts always cover every file


@router.get("/enroll")
def enroll_page(request: Request, service: Console, _: Enroller) -> Response:
    return render(request, "enroll.html", nav="enroll", roots=[str(r) for r in service.settings.api.allowed_roots])


@router.post("/enroll/photos")
def enroll_photos(request: Request, service: Console, key: Enroller,
                  person: str = Form("", max_length=256), display_name: str = Form("", max_length=256),
                  images: list[UploadFile] = File([]), largest_face: bool = Form(False)) -> Response:
    if not person.strip():
        raise InputError("name the person these photos show (an external id, new or existing)")
    if not images:
        raise InputError("choose or drop at least one photo")
    out = api.enroll_images(request, person.strip(), service, key, images,
                            display_name=display_name.strip() or None, largest_face=largest_face)
    if isinstance(out, Response):  # 202: on workers, a job no worker has finished yet
        return redirect(request, f"/jobs/{json.loads(out.body)['job_id']}")
    return render(request, "_enroll_outcomes.html", result=out)


@router.post("/enroll/archive")
def enroll_archive(request: Request, service: Console, key: Enroller,
                   archive: UploadFile | None = File(None), largest_face: bool = Form(False)) -> Response:
    if archive is None or not archive.filename:
        raise InputError("choose or drop a zip archive of <person>/<photo> entries")
    job = api.enroll_archive(service, key, archive, largest_face=largest_face)
    return redirect(request, f"/jobs/{job.job_id}")


@router.post("/enroll/directory")
def enroll_directory(request: Request, service: Console, key: Enroller,
                     directory: str = Form("", max_length=4096), largest_face: bool = Form(False)) -> Response:
    if not directory.strip():
        raise InputError("name a directory on the server")
    job = api.enroll_directory(DirectoryJobIn(directory=directory.strip(), largest_face=largest_face),
                               service, key)
    return redirect(request, f"/jobs/{job.job_id}")


def _job_view(service, job_id: str, offset: int) -> dict:
    """While a job runs only its counters are read (a big job's outcomes are many rows);
    its outcomes once it has ended, problems first."""
    job = service.job(job_id, with_outcomes=False)
    active = job.status in ("queued", "running")
    outcomes, total = [], 0
    if not active:
        everything = service.job(job_id).outcomes
        ranked = sorted(everything, key=lambda o: (o.get("status") == "enrolled", o.get("source", "")))
        total = len(ranked)
        outcomes = ranked[offset: offset + OUTCOMES_SHOWN]
    progress = job.items_done / job.total_items if job.total_items else (0.0 if active else 1.0)
    return {"job": job, "active": active, "outcomes": outcomes, "offset": offset, "total": total,
            "shown": OUTCOMES_SHOWN, "percent": round(100 * min(progress, 1.0))}


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, service: Console, _: Reader,
             offset: int = Query(0, ge=0, le=10_000_000)) -> Response:
    view = _job_view(service, job_id, offset)
    if view["job"].kind == "cluster":
        return redirect(request, f"/clusters/{job_id}")
    return render(request, "job.html", nav="enroll", **view)


@router.get("/jobs/{job_id}/progress")
def job_progress(request: Request, job_id: str, service: Console, _: Reader,
                 offset: int = Query(0, ge=0, le=10_000_000)) -> Response:
    return render(request, "_job.html", **_job_view(service, job_id, offset))
