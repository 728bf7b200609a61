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

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from celery import Celery

from identity.config import Settings
from identity.enroll import EnrollItem, ItemOutcome
from identity.errors import ServiceUnavailableError
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


class CeleryRunner:
    kind = "celery"

    def __init__(self, app: Celery, *, wait_timeout: float | None = None) -> None:
        self.app = app
        self.wait_timeout = wait_timeout  # how long a caller waits for one batch

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryRunner:
        app = make_celery(str(settings.broker_url), visibility_timeout=settings.task_visibility_timeout)
        return cls(app, wait_timeout=settings.task_visibility_timeout)

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

    def enroll(self, batches: Iterable[list[EnrollItem]], *, largest_face: bool, on_done: OnDone) -> None:
        """One task per batch, up to WINDOW in flight; outcomes reported in input order."""
        pending: deque = deque()
        for batch in batches:
            pending.append(self._send_batch(batch, largest_face))
            if len(pending) >= WINDOW:
                on_done(self._collect(pending.popleft(), None))
        while pending:
            on_done(self._collect(pending.popleft(), None))

    def enroll_now(self, batch: list[EnrollItem], *, largest_face: bool) -> list[ItemOutcome]:
        return self._collect(self._send_batch(batch, largest_face), self.wait_timeout)

    def submit_enroll_job(self, job_id: str, batches: list[list[EnrollItem]], *, largest_face: bool) -> None:
        for number, batch in enumerate(batches):
            self._send_batch(batch, largest_face, job_id, number)

    def submit_cluster_job(self, job_id: str, spec: dict[str, Any]) -> None:
        self._send(CLUSTER, [job_id, spec])

    def close(self) -> None:
        self.app.close()
