"""The one interface both runners implement."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from identity.enroll import EnrollItem, ItemOutcome

OnDone = Callable[[list[ItemOutcome]], None]


class Runner(Protocol):
    """Runs the service's batch work. Every unit of work is a service method (enroll one
    batch, run one job batch, run one cluster job); a runner only decides where it runs
    and how the caller waits for it."""

    kind: str  # "local" or "celery", for status pages and logs

    def enroll(self, batches: Iterable[list[EnrollItem]], *, largest_face: bool, on_done: OnDone) -> None:
        """Enroll batches, calling `on_done` with each batch's outcomes as it finishes;
        returns when all are done (what `identity enroll` waits on)."""

    def enroll_now(self, batch: list[EnrollItem], *, largest_face: bool) -> list[ItemOutcome]:
        """One batch, waited for (a synchronous upload)."""

    def submit_enroll_job(self, job_id: str, batches: list[list[EnrollItem]], *, largest_face: bool) -> None:
        """Start a recorded job's batches in the background; each batch records its
        outcomes on the job row itself."""

    def submit_cluster_job(self, job_id: str, spec: dict[str, Any]) -> None:
        """Start a recorded cluster job in the background."""

    def close(self) -> None: ...
