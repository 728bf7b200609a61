"""Sending enrollment batches to the workers and collecting their outcomes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import lru_cache

from identity.config import Settings
from identity.enroll import EnrollItem, ItemOutcome
from identity.errors import ServiceUnavailableError

# Batches in flight at once: enough to keep several workers busy, bounded so a
# million-image job does not sit in Redis (and in this process) all at once.
WINDOW = 64


@lru_cache(maxsize=8)
def _app_for(broker_url: str, visibility_timeout: int):
    from workers.app import make_app

    return make_app(Settings(broker_url=broker_url, task_visibility_timeout=visibility_timeout))


def _app(settings: Settings):
    """A Celery client app for these settings (cached: building one costs milliseconds
    and opens connections)."""
    return _app_for(str(settings.broker_url), settings.task_visibility_timeout)


def _send(app, batch: list[EnrollItem], largest_face: bool, job_id=None, batch_no=None):
    try:
        return app.send_task(
            "identity.enroll_batch",
            args=[[asdict(item) for item in batch], largest_face, job_id, batch_no],
        )
    except Exception as exc:  # kombu raises its own OperationalError family
        raise ServiceUnavailableError(f"cannot reach the broker: {exc}") from exc


def _outcomes(raw: list[dict]) -> list[ItemOutcome]:
    return [ItemOutcome(**o) for o in raw]


def dispatch_enrollment(
    settings: Settings,
    batches: Iterable[list[EnrollItem]],
    largest_face: bool = False,
    on_progress: Callable[[list[ItemOutcome]], None] | None = None,
    *,
    timeout: float | None = None,
) -> list[ItemOutcome]:
    """One task per batch, up to WINDOW in flight; outcomes in input order."""
    app = _app(settings)
    pending: deque = deque()
    outcomes: list[ItemOutcome] = []

    def collect() -> None:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            raw = pending.popleft().get(timeout=timeout, propagate=True)
        except CeleryTimeout:
            raise ServiceUnavailableError(f"no worker finished the batch within {timeout} s") from None
        done = _outcomes(raw)
        outcomes.extend(done)
        if on_progress is not None:
            on_progress(done)

    for batch in batches:
        pending.append(_send(app, batch, largest_face))
        if len(pending) >= WINDOW:
            collect()
    while pending:
        collect()
    return outcomes


def dispatch_batch(settings: Settings, batch: list[EnrollItem], *, largest_face: bool = False,
                   timeout: float | None = None) -> list[ItemOutcome]:
    """One batch through a worker, waiting for it (what `Service.enroll` calls per batch)."""
    return dispatch_enrollment(settings, [batch], largest_face, timeout=timeout)


def send_job_batch(settings: Settings, job_id: str, batch_no: int, batch: list[EnrollItem],
                   largest_face: bool) -> str:
    """Fire and forget: the worker records the outcomes in the job's row."""
    return _send(_app(settings), batch, largest_face, job_id, batch_no).id
