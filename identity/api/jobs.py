"""Bulk jobs: planned in the API process, run on the workers (broker configured) or in
a background thread of the API process (embedded default), tracked in PostgreSQL."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from identity.enroll import EnrollItem, ItemOutcome, batched, items_from_directory
from identity.errors import IdentityError
from identity.service import Service
from identity.store import jobs as job_store

log = logging.getLogger(__name__)


def start_enroll_job(
    service: Service, items: list[EnrollItem], *, planned: list[ItemOutcome] = (),
    largest_face: bool = False, params: dict[str, Any] | None = None, key_id: str | None = None,
) -> job_store.Job:
    settings = service.settings
    batches = list(batched(items, settings.job_batch_size))
    job_id = job_store.create_job(
        service.store, "enroll",
        params={**(params or {}), "largest_face": largest_face, "planned": [asdict(o) for o in planned]},
        total_items=len(items) + len(planned), total_batches=len(batches), key_id=key_id,
    )
    if not batches:
        job_store.set_status(service.store, job_id, "succeeded")
    elif settings.broker_url:
        from workers.dispatch import send_job_batch

        try:
            for n, batch in enumerate(batches):
                send_job_batch(settings, job_id, n, batch, largest_face)
        except IdentityError as exc:  # the broker went away: say so on the job, not only here
            job_store.set_status(service.store, job_id, "failed", error=exc.message)
            raise
    else:
        threading.Thread(target=_run_in_process, args=(service, job_id, batches, largest_face),
                         name=f"job-{job_id[:8]}", daemon=True).start()
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def _run_in_process(service: Service, job_id: str, batches: list[list[EnrollItem]], largest_face: bool) -> None:
    try:
        for n, batch in enumerate(batches):
            with service_lock(service):
                outcomes = service.enroll_batch(batch, largest_face=largest_face)
            job_store.record_batch(service.store, job_id, n, [asdict(o) for o in outcomes])
    except Exception as exc:
        log.exception("job %s failed", job_id)
        message = exc.message if isinstance(exc, IdentityError) else "internal error (see the server log)"
        job_store.set_status(service.store, job_id, "failed", error=message)


def confined_directory_items(directory: Path, roots: list[Path]) -> tuple[list[EnrollItem], list[ItemOutcome]]:
    """The directory's items, minus files whose real path leaves the allowed roots (a
    symlink inside an allowed folder pointing elsewhere)."""
    from identity.api.limits import confine
    from identity.errors import InputError, PathNotAllowedError

    items, refused = [], []
    try:
        for item in items_from_directory(directory):
            if isinstance(item, ItemOutcome):  # a file that is not an image: reported
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


# --- clustering -----------------------------------------------------------------------------


def start_cluster_job(service: Service, spec: dict[str, Any], *, key_id: str | None = None) -> job_store.Job:
    job_id = job_store.create_job(service.store, "cluster", params=spec,
                                  total_items=len(spec.get("paths", [])), total_batches=1, key_id=key_id)
    if service.settings.broker_url:
        from workers.dispatch import _app

        _app(service.settings).send_task("identity.cluster", args=[job_id, spec])
    else:
        threading.Thread(target=run_cluster_job, args=(service, job_id, spec), daemon=True).start()
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def run_cluster_job(service: Service, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Cluster the store's unassigned faces (spec has no "paths") or the uploaded photos."""
    from identity.cluster.api import ClusterParams, cluster_faces
    from identity.cluster.types import FaceSet

    overrides = {k: spec[k] for k in ("algorithm", "threshold", "min_cluster_size") if spec.get(k) is not None}
    params = ClusterParams.from_settings(service.settings, **overrides)
    try:
        job_store.set_status(service.store, job_id, "running")
        if spec.get("paths"):
            with service_lock(service):
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
        log.exception("cluster job %s failed", job_id)
        message = exc.message if isinstance(exc, IdentityError) else "internal error (see the server log)"
        job_store.set_status(service.store, job_id, "failed", error=message)
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


_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def service_lock(service: Service) -> threading.Lock:
    """One model call at a time per Service: the networks are not documented as
    thread-safe, and on a GPU (or 2 CPU cores) concurrent calls only contend."""
    with _locks_guard:
        return _locks.setdefault(id(service), threading.Lock())
