"""Recorded background jobs (bulk enrollment, clustering): planning, starting, the work
of one job batch, and what happens to a job whose process is gone. The service exposes
each as a method; a runner decides where the work runs (`identity/runners/`), the job
store records it (`identity/store/jobs.py`).

Owners. A job driven by one process (the API's in-process runner; `identity enroll`
sending batches to workers) names that process as its owner and a heartbeat thread
refreshes `heartbeat_at`. A job the broker holds has no owner: Celery redelivers a
dead worker's batch by itself. The API looks for jobs whose owner is gone at start and
every `job_heartbeat_seconds`: an enrollment job is resumed from its recorded plan (the
batches without outcomes; batches are idempotent, so the one that was interrupted is
simply run again), a cluster job is run again; a job that has already been resumed
`job_max_resumes` times, or that kept no plan, is marked failed with the reason.

Every transition to an end state (succeeded, failed, cancelled) goes through
`on_job_end`, the one place that releases what a job held.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from identity import spool
from identity.enroll import EnrollItem, ItemOutcome, batched, items_from_directory
from identity.errors import (
    IdentityError,
    InputError,
    JobEndedError,
    PathNotAllowedError,
    ServiceUnavailableError,
    StoreError,
)
from identity.store import jobs as job_store

if TYPE_CHECKING:
    from identity.service import Service
    from identity.store import Store

log = logging.getLogger(__name__)


def failure_message(exc: BaseException) -> str:
    """What a job row says about a failure: our own errors verbatim, anything else without
    internals (the log has the traceback)."""
    return exc.message if isinstance(exc, IdentityError) else "internal error (see the server log)"


def on_job_end(service: Service, job_id: str, status: str) -> None:
    """Called once for every job that reaches an end state, by whoever moved it there.
    The place to release what a job held (its spooled uploads, when identity/spool.py
    keeps them per job)."""
    log.info("job %s %s", job_id, status)
    spool.release(service.settings.data_dir, job_id)


# --- owners ---------------------------------------------------------------------------------------

_identity_lock = threading.Lock()
_identity: tuple[int, str] | None = None  # (pid, owner string), made again after a fork


def _node() -> str:
    """This machine and pid namespace: pids are only comparable between processes that
    share both (containers on one host share a boot id but not a pid namespace)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot_id" in path else str(os.stat(path).st_ino))
        except OSError:
            parts.append("?")
    return uuid.uuid5(uuid.NAMESPACE_OID, "/".join(parts)).hex[:12]


def process_owner() -> str:
    """`host:pid:node:token`, the owner this process writes on the jobs it drives; the
    token tells this process from an earlier one that had the same pid."""
    global _identity
    with _identity_lock:
        if _identity is None or _identity[0] != os.getpid():
            host = socket.gethostname().replace(":", "-")[:64]
            _identity = (os.getpid(), f"{host}:{os.getpid()}:{_node()}:{uuid.uuid4().hex[:8]}")
        return _identity[1]


def describe_owner(owner: str) -> str:
    host, pid, *_ = (owner.split(":") + ["?", "?"])[:4]
    return f"process {pid} on {host}"


def owner_gone(owner: str, heartbeat_age_s: float | None, timeout_s: float) -> str | None:
    """Why `owner` is taken to be gone, or None while it may still be working. On its own
    machine a process is known dead at once; elsewhere only by its silence."""
    try:
        _, pid_text, node, token = owner.split(":")
        pid = int(pid_text)
    except ValueError:
        pid, node, token = -1, "", ""
    mine = process_owner().split(":")
    if node == mine[2]:
        if pid == os.getpid() and token != mine[3]:
            return "its process exited (this process has the same pid)"
        if pid != os.getpid() and not _pid_exists(pid):
            return "its process exited"
    if heartbeat_age_s is None or heartbeat_age_s > timeout_s:
        return "its process has not been heard from for " + (
            "ever" if heartbeat_age_s is None else f"{heartbeat_age_s:.0f} s")
    return None


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat(threading.Thread):
    """Marks every job this process drives as alive, every `interval` seconds, until the
    store is closed. One per store; an UPDATE through a partial index when idle."""

    def __init__(self, store: Store, interval: float) -> None:
        super().__init__(name="job-heartbeat", daemon=True)
        self.store = store
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                job_store.heartbeat(self.store, process_owner())
            except StoreError:
                if self.store.closed:
                    return
                log.warning("job heartbeat: the database did not answer; retrying")
            except Exception:
                log.exception("job heartbeat failed")


_heartbeats: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_heartbeats_lock = threading.Lock()


def keep_alive(service: Service) -> None:
    """Make sure this process heartbeats the jobs it owns in `service.store`."""
    store = service.store
    with _heartbeats_lock:
        beat = _heartbeats.get(store)
        if beat is None or not beat.is_alive():
            beat = _Heartbeat(store, service.settings.workers.job_heartbeat_seconds)
            _heartbeats[store] = beat
            beat.start()


# --- enrollment jobs ----------------------------------------------------------------------------------


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
                     key_id: str | None = None, job_id: str | None = None) -> job_store.Job:
    """`job_id`: given when files were spooled for the job before it existed (identity/spool.py)."""
    if key_id is not None:  # persons the job creates are recorded as the key's doing
        items = [item if item.actor else replace(item, actor=f"key:{key_id}") for item in items]
    batches = list(batched(items, service.settings.workers.job_batch_size))
    runner = service.runner
    # In-process work dies with this process: own it, and keep the plan to resume it from.
    owner = None if runner.remote else process_owner()
    job_id = job_store.create_job(
        service.store, "enroll",
        params={**(params or {}), "largest_face": largest_face, "planned": [asdict(o) for o in planned]},
        total_items=len(items) + len(planned), total_batches=len(batches), key_id=key_id, owner=owner,
        plan=[[asdict(item) for item in batch] for batch in batches] if owner else None, job_id=job_id,
    )
    if not batches:
        if job_store.set_status(service.store, job_id, "succeeded"):
            on_job_end(service, job_id, "succeeded")
    else:
        if owner:
            keep_alive(service)
        try:
            runner.submit_enroll_job(job_id, list(enumerate(batches)), largest_face=largest_face)
        except IdentityError as exc:  # the broker went away: say so on the job, not only here
            if job_store.set_status(service.store, job_id, "failed", error=exc.message):
                on_job_end(service, job_id, "failed")
            raise
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def enroll_job_batch(service: Service, job_id: str, number: int, batch: list[EnrollItem], *,
                     largest_face: bool) -> list[ItemOutcome]:
    """Idempotent: a batch whose outcomes are on record returns them without running
    again. That is a redelivery (its worker died after the write, before Celery stored
    the result) or a second copy delivered while the first still ran, and either may come
    after the job ended: the outcomes still belong to whoever waits for them. Any other
    batch is refused (`JobEndedError`, nothing written) once the job is no longer queued
    or running: checked before the model runs, and again inside the write transaction."""
    from identity.enroll import enroll_batch

    def recorded() -> list[ItemOutcome] | None:
        outcomes = job_store.batch_outcomes(service.store, job_id, number)
        return None if outcomes is None else [ItemOutcome(**o) for o in outcomes]

    if (earlier := recorded()) is not None:
        return earlier
    status = job_store.status_of(service.store, job_id)
    if status not in job_store.ACTIVE:
        raise JobEndedError(f"job {job_id} is {status or 'gone'}; batch {number} not run")
    try:
        with service.model_lock:
            outcomes = enroll_batch(batch, pipeline=service.pipeline, store=service.store,
                                    max_bytes=service.settings.api.max_upload_bytes,
                                    largest_face=largest_face, job_id=job_id)
    except JobEndedError:
        # Another copy of this batch may have finished the job while this one ran.
        if (earlier := recorded()) is None:
            raise
        return earlier
    if job_store.record_batch(service.store, job_id, number, [asdict(o) for o in outcomes]):
        on_job_end(service, job_id, "succeeded")
    return outcomes


def fail_job(service: Service, job_id: str, exc: BaseException) -> None:
    log.error("job %s failed", job_id, exc_info=exc)
    if job_store.set_status(service.store, job_id, "failed", error=failure_message(exc)):
        on_job_end(service, job_id, "failed")


def cancel_job(service: Service, job_id: str) -> job_store.Job:
    """Cancel a queued or running job: no batch writes anything after this returns (a
    batch being written now either committed before, or is refused). Cancelling a
    cancelled job again is a no-op; an ended one is a conflict."""
    if job_store.cancel(service.store, job_id, reason="cancelled by request"):
        on_job_end(service, job_id, "cancelled")
    else:
        job_store.cancel_or_conflict(service.store, job_id, reason="cancelled by request")
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def enroll_now(service: Service, items: list[EnrollItem], *, largest_face: bool = False,
               key_id: str | None = None, job_id: str | None = None) -> list[ItemOutcome] | job_store.Job:
    """A few photos enrolled while the caller waits. In-process: the outcomes. On
    workers: a one-batch job, waited for `enroll_wait_seconds`; the outcomes if a worker
    finished in time, else the job, which the caller follows (the batch is still applied,
    unless the job is cancelled first)."""
    runner = service.runner
    if not runner.remote:
        return runner.enroll_now(items, largest_face=largest_face)
    job_id = job_store.create_job(
        service.store, "enroll", params={"upload": True, "largest_face": largest_face, "planned": []},
        total_items=len(items), total_batches=1, key_id=key_id, job_id=job_id,
    )
    try:
        outcomes = runner.enroll_now(items, largest_face=largest_face, job_id=job_id,
                                     wait=service.settings.workers.enroll_wait_seconds)
    except Exception as exc:
        fail_job(service, job_id, exc)
        raise
    if outcomes is None:
        return job_store.get_job(service.store, job_id, with_outcomes=False)
    return outcomes


@contextmanager
def driven_job(service: Service, items: list) -> Iterator[str | None]:
    """A job for a foreground enrollment whose batches run on workers (`identity enroll`
    with a broker): owned and heartbeated by this process. If the caller gives up (no
    live worker, an interrupt, an error), the job is failed with the reason before the
    error reaches the user, so a batch still queued is never applied afterwards."""
    if not service.runner.remote:
        yield None
        return
    count = sum(isinstance(item, EnrollItem) for item in items)
    if count == 0:
        yield None
        return
    job_id = job_store.create_job(
        service.store, "enroll", params={"client": "identity enroll", "planned": []},
        total_items=count, total_batches=math.ceil(count / service.settings.pipeline.batch_size),
        owner=process_owner(),
    )
    keep_alive(service)
    try:
        yield job_id
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else failure_message(exc)
        try:
            if job_store.cancel(service.store, job_id, reason=f"the client gave up: {reason}", status="failed"):
                on_job_end(service, job_id, "failed")
        except IdentityError:
            log.exception("could not mark job %s failed", job_id)
        raise


def resume_enroll_job(service: Service, job_id: str, params: dict[str, Any]) -> bool:
    """Run the batches of the job's plan that have no outcomes yet; False without a plan."""
    remaining = job_store.remaining_plan(service.store, job_id)
    if remaining is None:
        return False
    if not remaining:  # every batch recorded: only the last transition was lost
        if job_store.set_status(service.store, job_id, "succeeded"):
            on_job_end(service, job_id, "succeeded")
        return True
    if not service.runner.remote:
        keep_alive(service)
    batches = [(number, [EnrollItem(**item) for item in items]) for number, items in remaining]
    service.runner.submit_enroll_job(job_id, batches, largest_face=bool(params.get("largest_face")))
    return True


def recover_jobs(service: Service) -> list[tuple[str, str]]:
    """Take over the active jobs whose owner is gone: resume them, or fail them with the
    reason. Returns (job id, "resumed" | "failed") for each job taken over."""
    settings = service.settings
    me = process_owner()
    new_owner = None if service.runner.remote else me
    taken: list[tuple[str, str]] = []
    for job in job_store.owned_by_others(service.store, me):
        why = owner_gone(job.owner, job.heartbeat_age_s, settings.workers.job_owner_timeout_seconds)
        if why is None:
            continue
        who = describe_owner(job.owner)
        resumable = job.kind in ("cluster", "model_move") or job.params.get("client") is None
        if job.resumes >= settings.workers.job_max_resumes or not resumable:
            reason = (f"{who} driving this job is gone ({why}) and it cannot be resumed from here"
                      if not resumable else
                      f"{who} driving this job is gone ({why}); it was resumed {job.resumes} time(s) "
                      f"already (job_max_resumes = {settings.workers.job_max_resumes}), so not again")
            if job_store.cancel(service.store, job.id, reason=reason, status="failed", owner=job.owner):
                log.warning("job %s failed: %s", job.id, reason)
                on_job_end(service, job.id, "failed")
                taken.append((job.id, "failed"))
            continue
        # A model move always runs in the process that claims it (start_model_move_job).
        owner = me if job.kind == "model_move" else new_owner
        if not job_store.claim(service.store, job.id, previous=job.owner, owner=owner):
            continue  # another process took it first
        log.warning("job %s: %s driving it is gone (%s); resuming", job.id, who, why)
        try:
            if job.kind == "cluster":
                service.runner.submit_cluster_job(job.id, job.params)
                resumed = True
            elif job.kind == "model_move":
                submit_model_move_job(service, job.id, job.params)
                resumed = True
            else:
                resumed = resume_enroll_job(service, job.id, job.params)
        except Exception as exc:
            fail_job(service, job.id, exc)
            taken.append((job.id, "failed"))
            continue
        if not resumed:
            reason = f"{who} driving this job is gone ({why}) and it kept no plan to resume from"
            if job_store.cancel(service.store, job.id, reason=reason, status="failed"):
                on_job_end(service, job.id, "failed")
            taken.append((job.id, "failed"))
        else:
            taken.append((job.id, "resumed"))
    return taken


class JobSupervisor(threading.Thread):
    """The API's sweep for jobs whose owner is gone: once at start, then every
    `job_heartbeat_seconds` (another replica's jobs are found by their silence)."""

    def __init__(self, service: Service) -> None:
        super().__init__(name="job-supervisor", daemon=True)
        self.service = service
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = self.service.settings.workers.job_heartbeat_seconds
        while not self.stopped.wait(interval):
            try:
                recover_jobs(self.service)
            except StoreError:
                if self.service.store.closed:
                    return
            except Exception:
                log.exception("job supervisor: sweep failed")

    def stop(self) -> None:
        self.stopped.set()


# --- model moves (identity/moves.py) ---------------------------------------------------------------


def start_model_move_job(service: Service, spec: dict[str, Any], *, key_id: str | None = None) -> job_store.Job:
    """`identity models migrate` as a job: spec {"target": NAME} re-embeds and switches,
    {"finalize": true} drops the old vectors. It runs in this process (a move loads the
    target's weights once and walks the whole store: one long task, not batches for
    workers), owned and heart-beaten like a local job, so if this process dies the next
    API start resumes it; the move itself resumes from what is missing."""
    from identity.errors import InputError

    if bool(spec.get("target")) == bool(spec.get("finalize")):
        raise InputError("give either a target model or finalize")
    if spec.get("target"):
        service.target_model(spec["target"])  # an unknown name fails here, not in the job
    owner = process_owner()
    progress = service.store.move_progress(move) if (move := service.store.open_move()) else None
    job_id = job_store.create_job(service.store, "model_move", params=spec,
                                  total_items=progress["faces"] if progress else 0, total_batches=1,
                                  key_id=key_id, owner=owner)
    keep_alive(service)
    submit_model_move_job(service, job_id, spec)
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def submit_model_move_job(service: Service, job_id: str, spec: dict[str, Any]) -> None:
    def work() -> None:
        try:
            model_move_job(service, job_id, spec)
        except Exception:  # noqa: BLE001 - recorded on the job by model_move_job
            log.debug("model-move job %s ended with an error (recorded on the job)", job_id)

    threading.Thread(target=work, name=f"job-{job_id[:8]}", daemon=True).start()


def model_move_job(service: Service, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run a model-move job; its result is the move's report (or the finalized move)."""
    try:
        if not job_store.set_status(service.store, job_id, "running"):
            raise JobEndedError(f"job {job_id} is {job_store.status_of(service.store, job_id)}; not run")
        if spec.get("finalize"):
            result = service.finalize_model_move().to_dict()
            done = 0
        else:
            def progress(done: int, total: int) -> None:
                job_store.set_progress(service.store, job_id, items_done=done, total_items=total)

            report = service.migrate_model(spec["target"], on_progress=progress)
            result, done = report.to_dict(), report.faces
        if job_store.set_status(service.store, job_id, "succeeded", result=result, items_done=done):
            on_job_end(service, job_id, "succeeded")
        job_store.record_batch(service.store, job_id, 0, [])
        return result
    except JobEndedError:
        raise
    except Exception as exc:
        fail_job(service, job_id, exc)
        raise


# --- clustering jobs ---------------------------------------------------------------------------------


def start_cluster_job(service: Service, spec: dict[str, Any], *, key_id: str | None = None,
                      job_id: str | None = None) -> job_store.Job:
    """`job_id`: given when the photos were spooled for the job before it existed (identity/spool.py)."""
    owner = None if service.runner.remote else process_owner()
    job_id = job_store.create_job(service.store, "cluster", params=spec,
                                  total_items=len(spec.get("paths", [])), total_batches=1, key_id=key_id,
                                  owner=owner, job_id=job_id)
    if owner:
        keep_alive(service)
    service.runner.submit_cluster_job(job_id, spec)
    return job_store.get_job(service.store, job_id, with_outcomes=False)


def cluster_job(service: Service, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Cluster the store's unassigned faces (spec has no "paths") or the uploaded photos.
    A failure is recorded on the job, then raised (a worker may retry). `items_done`
    counts the photos (or stored faces) clustered."""
    from identity.cluster.api import ClusterParams, cluster_faces
    from identity.cluster.types import FaceSet

    overrides = {k: spec[k] for k in ("algorithm", "threshold", "min_cluster_size", "hubness") if spec.get(k) is not None}
    params = ClusterParams.from_settings(service.settings, **overrides)
    try:
        if not job_store.set_status(service.store, job_id, "running"):
            raise JobEndedError(f"job {job_id} is {job_store.status_of(service.store, job_id)}; not run")
        if spec.get("paths"):
            with service.model_lock:
                results = list(service.pipeline.process(spec["paths"], keep_chips=bool(spec.get("keep"))))
            names = dict(zip(spec["paths"], spec.get("names", spec["paths"])))
            done = len(results)
            if spec.get("keep"):
                results, ids = keep_unassigned(service, results, names)
            faces = FaceSet.from_results(results)
            refs = [{"source": names.get(faces.source_of(i), faces.source_of(i)),
                     "box": [round(float(v), 1) for v in faces.boxes[i]] if faces.boxes is not None else None}
                    for i in range(len(faces))]
            if spec.get("keep"):
                refs = [{**ref, "face_id": face_id} for ref, face_id in zip(refs, ids)]
        else:
            ids, vectors = unassigned_faces(service)
            faces = FaceSet.from_embeddings(vectors)
            params = ClusterParams.from_settings(service.settings, **overrides, quality=_no_quality())
            refs = [{"face_id": int(i)} for i in ids]
            done = len(ids)
            job_store.set_progress(service.store, job_id, items_done=0, total_items=done)
        if len(faces) == 0:
            result = {"clusters": [], "unclustered": [], "algorithm": params.algorithm, "hubness": params.hubness}
        else:
            clustered = cluster_faces(faces, params)
            result = {
                "algorithm": clustered.algorithm,
                "hubness": params.hubness,
                "clusters": [[refs[i] for i in rows] for rows in clustered.members()],
                "unclustered": [refs[i] for i in np.flatnonzero(clustered.labels < 0)],
            }
        # The result first: a reader who sees "succeeded" must find it there.
        if job_store.set_status(service.store, job_id, "succeeded", result=result, items_done=done):
            on_job_end(service, job_id, "succeeded")
        job_store.record_batch(service.store, job_id, 0, [])
        return {"clusters": len(result["clusters"])}
    except JobEndedError:
        raise
    except Exception as exc:
        fail_job(service, job_id, exc)
        raise


def keep_unassigned(service: Service, results: list, names: dict[str, str]) -> tuple[list, list[int]]:
    """Store the photos' faces (with their chips) as nobody's, under the names they were
    uploaded with: `keep` in a clustering spec, so the clusters can be reviewed as chips
    and named like any unassigned faces (the web console does). Returns the results whose
    faces are stored, and those faces' ids in the order `FaceSet.from_results` reads them.
    A photo whose faces are enrolled to someone already is left out (a conflict)."""
    from identity.store.types import FacesToAdd

    items = [FacesToAdd(replace(r, source=names.get(r.source, r.source))) for r in results if r.ok and r.faces]
    kept, ids = [], []
    for start in range(0, len(items), 256):
        batch = items[start:start + 256]
        for item, outcome in zip(batch, service.store.add_faces(batch, model=service.model_info)):
            if outcome.status in ("added", "already_present"):
                kept.append(item.image)
                ids.extend(outcome.face_ids)
    return kept, ids


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


def run_with_retries(work, *, attempts: int = 5, first_delay: float = 1.0) -> None:
    """Run `work()`, retrying while a backing service is unavailable (the embedded
    database restarting, a pool reconnecting) with exponential backoff."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return work()
        except ServiceUnavailableError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


# --- the upload spool (identity/spool.py) ---------------------------------------------------------


def orphan_age_s(service: Service) -> float:
    """How old a spool folder without a job row must be before it counts as orphaned: it
    may belong to a request still being served (a synchronous upload waits for a worker
    up to the visibility timeout)."""
    return max(3600.0, 1.5 * service.settings.workers.task_visibility_timeout)


def release_unless_active(service: Service, owner: str) -> None:
    """Release a request's spool folder unless a queued or running job adopted it (that
    job releases it when it ends)."""
    try:
        status = job_store.status_of(service.store, owner)
    except IdentityError:
        status = None  # no database: no job can have been started from this request
    if status not in job_store.ACTIVE:
        spool.release(service.settings.data_dir, owner)


def sweep_spool(service: Service) -> list[str]:
    """At start: remove the spool folders of ended jobs, and folders and loose files that
    no job owns and that are older than `orphan_age_s` (a request or a process that died
    before its job existed, or files of a version that spooled by content hash). Folders
    of queued or running jobs stay: such a job may still be resumed. Returns the names."""
    removed = []
    for name, age in spool.leftovers(service.settings.data_dir):
        try:
            status = job_store.status_of(service.store, str(uuid.UUID(name)))
        except ValueError:  # not a job id
            status = None
        if status in job_store.ENDED or (status is None and age > orphan_age_s(service)):
            spool.remove(service.settings.data_dir, name)
            removed.append(name)
    if removed:
        log.info("spool: removed %d leftover upload(s) of ended or orphaned jobs", len(removed))
    return removed
