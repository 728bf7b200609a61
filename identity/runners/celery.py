"""Batch work on Celery workers (Redis broker): the client side, and the one definition
of the Celery app that `workers/` runs.

Delivery guarantees, and why:
* `task_acks_late` + `task_reject_on_worker_lost`: a task is acknowledged only after
  it finished, so a worker killed mid-batch leaves the message to be delivered again
  (immediately when a prefork child dies; after `task_visibility_timeout` when the whole
  worker dies, by Redis' unacked-message restore). Re-running a batch is safe because
  enrollment is idempotent on (image sha256, model, face index).
* `worker_prefetch_multiplier = 1`: a batch is seconds of GPU work; prefetching more
  would let one busy worker sit on messages an idle one could run.
* Results go to the same Redis: `enroll` collects per-batch outcomes from there; jobs
  also record outcomes in PostgreSQL, which is what `GET /v1/jobs/{id}` reads.

Tasks are sent by name, so this module never imports the worker code; `workers/tasks.py`
registers those names and calls the service.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from celery import Celery

from identity.config import Settings
from identity.enroll import EnrollItem, ItemOutcome
from identity.errors import JobEndedError, NoWorkerError, ServiceUnavailableError
from identity.runners.base import OnDone

QUEUE = "identity"
ENROLL_BATCH = "identity.enroll_batch"
CLUSTER = "identity.cluster"
PING = "identity.ping"
# Batches in flight at once: enough to keep several workers busy, bounded so a
# million-image job does not sit in Redis (and in this process) all at once.
WINDOW = 64


def make_celery(broker_url: str, *, visibility_timeout: int, include: Sequence[str] = ()) -> Celery:
    app = Celery("identity", broker=broker_url, backend=broker_url, include=list(include))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        result_expires=24 * 3600,
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            # kombu sweeps for abandoned messages every interval × throttle seconds (100 s
            # by default); one cheap ZRANGEBYSCORE per sweep, so sweep often enough that a
            # dead worker's batch waits about the visibility timeout, not minutes more.
            "unacked_restore_interval": max(1, min(10, visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
    )
    return app


def redact(url: str) -> str:
    """The broker URL without its password, for messages."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "the broker"
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


class CeleryRunner:
    kind = "celery"
    remote = True

    def __init__(self, app: Celery, *, wait_timeout: float | None = None, worker_wait: float = 10.0,
                 visibility_timeout: float = 3600.0, broker: str = "") -> None:
        self.app = app
        self.wait_timeout = wait_timeout  # how long a synchronous caller waits for one batch
        self.worker_wait = worker_wait  # how long `enroll` waits without any sign of a worker
        self.visibility_timeout = visibility_timeout
        self.broker = broker

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryRunner:
        app = make_celery(str(settings.workers.broker_url), visibility_timeout=settings.workers.task_visibility_timeout)
        return cls(app, wait_timeout=settings.workers.enroll_wait_seconds, worker_wait=settings.workers.worker_wait_seconds,
                   visibility_timeout=settings.workers.task_visibility_timeout, broker=redact(str(settings.workers.broker_url)))

    def _send(self, name: str, args: list) -> Any:
        try:
            return self.app.send_task(name, args=args)
        except Exception as exc:  # kombu raises its own OperationalError family
            raise ServiceUnavailableError(f"cannot reach the broker: {exc}") from exc

    def _send_batch(self, batch: list[EnrollItem], largest_face: bool, job_id=None, batch_no=None):
        return self._send(ENROLL_BATCH, [[asdict(item) for item in batch], largest_face, job_id, batch_no])

    def _collect(self, result, timeout: float | None) -> list[ItemOutcome]:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            raw = result.get(timeout=timeout, propagate=True)
        except CeleryTimeout:
            raise ServiceUnavailableError(f"no worker finished the batch within {timeout} s") from None
        return [ItemOutcome(**o) for o in raw]

    def workers_alive(self) -> list[str]:
        """The workers answering Celery's ping now. A solo-pool worker busy with a batch
        answers only between tasks, so an empty answer alone does not mean none is alive."""
        try:
            replies = self.app.control.ping(timeout=1.0) or []
        except Exception as exc:
            raise ServiceUnavailableError(f"cannot reach the broker: {exc}") from exc
        return sorted(name for reply in replies for name in reply)

    def _wait_live(self, result, pending: Sequence) -> list[ItemOutcome]:
        """Wait for `result` as long as some worker shows signs of life: a ping answered,
        a batch started or finished. Silent for `worker_wait` seconds → NoWorkerError."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        quiet_since = time.monotonic()
        seen: set[tuple[str, str]] = set()
        started_at: dict[str, float] = {}
        while True:
            try:
                raw = result.get(timeout=min(1.0, self.worker_wait), propagate=True)
                return [ItemOutcome(**o) for o in raw]
            except CeleryTimeout:
                pass
            now = time.monotonic()
            if now - quiet_since < self.worker_wait:
                continue
            states = {(r.id, r.state) for r in [result, *pending]}
            moved = bool(states - seen)
            seen |= states
            for task_id, state in states:
                if state == "STARTED":
                    started_at.setdefault(task_id, now)
            # A started batch is a busy worker, until Redis would hand it to another one.
            busy = any(now - t < self.visibility_timeout for t in started_at.values())
            if moved or busy or self.workers_alive():
                quiet_since = now
                continue
            raise NoWorkerError(
                f"no Celery worker is alive (none answered a ping or took a batch for "
                f"{self.worker_wait:g} s on {self.broker or 'the broker'}); the batches not yet done "
                "will not be applied: start a worker (celery -A workers.app worker) and run the "
                "command again, it skips what is already enrolled")

    def enroll(self, batches: Iterable[list[EnrollItem]], *, largest_face: bool, on_done: OnDone,
               job_id: str | None = None) -> None:
        """One task per batch, up to WINDOW in flight; outcomes reported in input order."""
        pending: deque = deque()  # (result, items in the batch)

        def next_done() -> None:
            oldest, size = pending.popleft()
            outcomes = self._wait_live(oldest, [result for result, _ in pending])
            if len(outcomes) != size:
                # Only a batch the job refused comes back short: the job ended under us.
                raise JobEndedError(f"job {job_id} ended while its batches ran (cancelled, or failed "
                                    "by another process); run the command again, it skips what is "
                                    "already enrolled")
            on_done(outcomes)

        try:
            for number, batch in enumerate(batches):
                result = self._send_batch(batch, largest_face, job_id, number if job_id else None)
                pending.append((result, len(batch)))
                if len(pending) >= WINDOW:
                    next_done()
            while pending:
                next_done()
        except BaseException:
            # Workers alive now drop these at once; one started later finds the job ended
            # on record (the caller fails it) and writes nothing.
            self._revoke([result.id for result, _ in pending])
            raise

    def _revoke(self, task_ids: list[str]) -> None:
        if not task_ids:
            return
        try:
            self.app.control.revoke(task_ids)
        except Exception:
            pass

    def enroll_now(self, batch: list[EnrollItem], *, largest_face: bool, job_id: str | None = None,
                   wait: float | None = None) -> list[ItemOutcome] | None:
        from celery.exceptions import TimeoutError as CeleryTimeout

        result = self._send_batch(batch, largest_face, job_id, 0 if job_id else None)
        wait = self.wait_timeout if wait is None else wait
        if job_id is None:
            return self._collect(result, wait)
        try:
            raw = result.get(timeout=wait, propagate=True)
        except CeleryTimeout:
            # Nobody waits for this result any more: stop listening for it now, while the
            # backend is reachable (a forgotten subscription is undone at garbage collection).
            try:
                result.backend.remove_pending_result(result)
            except Exception:
                pass
            return None  # the job row will have the outcomes
        return [ItemOutcome(**o) for o in raw]

    def submit_enroll_job(self, job_id: str, batches: Sequence[tuple[int, list[EnrollItem]]], *,
                          largest_face: bool) -> None:
        for number, batch in batches:
            self._send_batch(batch, largest_face, job_id, number)

    def submit_cluster_job(self, job_id: str, spec: dict[str, Any]) -> None:
        self._send(CLUSTER, [job_id, spec])

    def close(self) -> None:
        self.app.close()
