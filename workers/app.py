"""The Celery app, configured from `identity.config.Settings` (IDENTITY_BROKER_URL).

Delivery guarantees, and why:
* `task_acks_late` + `task_reject_on_worker_lost`: a task is acknowledged only after
  it finished, so a worker killed mid-batch leaves the message to be delivered again
  (immediately when a prefork child dies; after `task_visibility_timeout` when the whole
  worker dies, by Redis' unacked-message restore). Re-running a batch is safe because
  enrollment is idempotent on (image sha256, model, face index).
* `worker_prefetch_multiplier = 1`: a batch is seconds of GPU work; prefetching more
  would let one busy worker sit on messages an idle one could run.
* Results go to the same Redis: `dispatch_enrollment` collects per-batch outcomes from
  there; jobs created by the API also record outcomes in PostgreSQL, which is what
  `GET /v1/jobs/{id}` reads.
"""

from __future__ import annotations

from celery import Celery

from identity.config import Settings, get_settings

QUEUE = "identity"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker = settings.broker_url or "redis://localhost:6379/0"
    app = Celery("identity", broker=broker, backend=broker, include=["workers.tasks"])
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
            "visibility_timeout": settings.task_visibility_timeout,
            # kombu sweeps for abandoned messages every interval × throttle seconds (100 s
            # by default); one cheap ZRANGEBYSCORE per sweep, so sweep often enough that a
            # dead worker's batch waits about the visibility timeout, not minutes more.
            "unacked_restore_interval": max(1, min(10, settings.task_visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": settings.task_visibility_timeout},
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_app()

# Connect the process start/stop signals (models load once per worker process) as soon as
# the app is imported, before the worker sends them.
from workers import runtime as _runtime  # noqa: E402,F401
