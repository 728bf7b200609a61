"""Recorded background jobs (bulk enrollment, clustering): planning, starting, and the
work of one job batch. The service exposes each as a method; a runner decides where the
work runs (`identity/runners/`), the job store records it (`identity/store/jobs.py`)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from identity.enroll import EnrollItem, ItemOutcome, batched, items_from_directory
from identity.errors import IdentityError, InputError, PathNotAllowedError
from identity.store import jobs as job_store

if TYPE_CHECKING:
    from identity.service import Service

log = logging.getLogger(__name__)


def failure_message(exc: BaseException) -> str:
    """What a job row says about a failure: our own errors verbatim, anything else without
    internals (the log has the traceback)."""
    return exc.message if isinstance(exc, IdentityError) else "internal error (see the server log)"


def directory_items(directory: Path, roots: list[Path]) -> tuple[list[EnrollItem], list[ItemOutcome]]:
    """A server-side folder's items, and the outcomes decided while planning: files that
    are not images, and files whose real path leaves the allowed roots (a symlink inside an
    allowed folder pointing elsewhere)."""
    from identity.files import confine

    items, refused = [], []
    try:
        for item in items_from_directory(directory):
            if isinstance(item, ItemOutcome):
                refused.append(item)
                continue
            try:
                confine(item.source, roots)
                items.append(item)
            except PathNotAllowedError as exc:
                refused.append(ItemOutcome(item.source, item.person, "invalid", exc.message))
    except OSError as exc:  # a name too long, a folder we may not list, …
        raise InputError(f"cannot read the directory: {exc.strerror or type(exc).__name__}",
                         path=str(directory)[:300]) from None
    return items, refused


def start_enroll_job(service: Service, items: list[EnrollItem], *, planned: list[ItemOutcome] = (),
                     largest_face: bool = False, params: dict[str, Any] | None = None,
                     key_id: str | None = None) -> job_store.Job:
    batches = list(batched(items, service.settings.job_batch_size))
    job_id = job_store.create_job(
        service.store, "enroll",
        params={**(params or {}), "largest_face": largest_face, "planned": [asdict(o) for o in planned]},
        total_items=len(items) + len(planned), total_batches=len(batches), key_id=key_id,
    )
    if not batches:
        job_store.set_status(service.store, job_id, "succeeded")
    else:
        try:
            service.runner.submit_enroll_job(job_id, batches, largest_face=largest_face)
        except IdentityError as exc:  # the broker went away: say so on the job, not only here
            job_store.set_status(service.store, job_id, "failed", error=exc.message)
            raise
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def enroll_job_batch(service: Service, job_id: str, number: int, batch: list[EnrollItem], *,
                     largest_face: bool) -> list[ItemOutcome]:
    """Idempotent: a redelivered batch finds its faces present and rewrites the same row."""
    with service.model_lock:
        outcomes = service.enroll_batch(batch, largest_face=largest_face)
    job_store.record_batch(service.store, job_id, number, [asdict(o) for o in outcomes])
    return outcomes


def fail_job(service: Service, job_id: str, exc: BaseException) -> None:
    log.error("job %s failed", job_id, exc_info=exc)
    job_store.set_status(service.store, job_id, "failed", error=failure_message(exc))


def start_cluster_job(service: Service, spec: dict[str, Any], *, key_id: str | None = None) -> job_store.Job:
    job_id = job_store.create_job(service.store, "cluster", params=spec,
                                  total_items=len(spec.get("paths", [])), total_batches=1, key_id=key_id)
    service.runner.submit_cluster_job(job_id, spec)
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def cluster_job(service: Service, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Cluster the store's unassigned faces (spec has no "paths") or the uploaded photos.
    A failure is recorded on the job, then raised (a worker may retry)."""
    from identity.cluster.api import ClusterParams, cluster_faces
    from identity.cluster.types import FaceSet

    overrides = {k: spec[k] for k in ("algorithm", "threshold", "min_cluster_size") if spec.get(k) is not None}
    params = ClusterParams.from_settings(service.settings, **overrides)
    try:
        job_store.set_status(service.store, job_id, "running")
        if spec.get("paths"):
            with service.model_lock:
                results = list(service.pipeline.process(spec["paths"]))
            faces = FaceSet.from_results(results)
            names = dict(zip(spec["paths"], spec.get("names", spec["paths"])))
            refs = [{"source": names.get(faces.source_of(i), faces.source_of(i)),
                     "box": [round(float(v), 1) for v in faces.boxes[i]] if faces.boxes is not None else None}
                    for i in range(len(faces))]
        else:
            ids, vectors = unassigned_faces(service)
            faces = FaceSet.from_embeddings(vectors)
            params = ClusterParams.from_settings(service.settings, **overrides, quality=_no_quality())
            refs = [{"face_id": int(i)} for i in ids]
        if len(faces) == 0:
            result = {"clusters": [], "unclustered": [], "algorithm": params.algorithm}
        else:
            clustered = cluster_faces(faces, params)
            result = {
                "algorithm": clustered.algorithm,
                "clusters": [[refs[i] for i in rows] for rows in clustered.members()],
                "unclustered": [refs[i] for i in np.flatnonzero(clustered.labels < 0)],
            }
        # The result first: a reader who sees "succeeded" must find it there.
        job_store.set_status(service.store, job_id, "succeeded", result=result)
        job_store.record_batch(service.store, job_id, 0, [])
        return {"clusters": len(result["clusters"])}
    except Exception as exc:
        fail_job(service, job_id, exc)
        raise


def _no_quality():
    # Stored faces have no crops or boxes here: the quality filter cannot be applied.
    from identity.cluster.quality import QualityThresholds

    return QualityThresholds(min_face_size=0.0, min_probability=0.0, min_blur=0.0)


def unassigned_faces(service: Service) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = [], []
    for face_ids, persons, vecs in service.store.iter_embeddings(service.model_info.name):
        keep = persons < 0
        ids.append(face_ids[keep])
        vectors.append(vecs[keep])
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, service.model_info.dim), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)
