"""The one interface both runners implement."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from identity.enroll import EnrollItem, ItemOutcome

OnDone = Callable[[list[ItemOutcome]], None]


class Runner(Protocol):
    """Runs the service's batch work. Every unit of work is a service method (enroll one
    batch, run one job batch, run one cluster job); a runner only decides where it runs
    and how the caller waits for it."""

    kind: str  # "local" or "celery", for status pages and logs
    # True when the work runs in other processes: a caller that stops waiting must then
    # end the job on record, since the work itself goes on without it (identity/jobs.py).
    remote: bool

    def enroll(self, batches: Iterable[list[EnrollItem]], *, largest_face: bool, on_done: OnDone,
               job_id: str | None = None) -> None:
        """Enroll batches, calling `on_done` with each batch's outcomes as it finishes;
        returns when all are done (what `identity enroll` waits on). With `job_id`, batch
        `i` is that job's batch `i` (remote runners only)."""

    def enroll_now(self, batch: list[EnrollItem], *, largest_face: bool, job_id: str | None = None,
                   wait: float | None = None) -> list[ItemOutcome] | None:
        """One batch, waited for (a synchronous upload). A remote runner gives up after
        `wait` seconds and returns None: the job's row will have the outcomes."""

    def submit_enroll_job(self, job_id: str, batches: Sequence[tuple[int, list[EnrollItem]]], *,
                          largest_face: bool) -> None:
        """Start a recorded job's numbered batches in the background (all of them, or
        those a resumed job still lacks); each batch records its outcomes on the job row."""

    def submit_cluster_job(self, job_id: str, spec: dict[str, Any]) -> None:
        """Start a recorded cluster job in the background."""

    def close(self) -> None: ...
