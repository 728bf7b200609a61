"""Batch work in this process: the embedded default, no broker to run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from identity.enroll import EnrollItem, ItemOutcome
from identity.runners.base import OnDone

if TYPE_CHECKING:
    from identity.service import Service

log = logging.getLogger(__name__)


class LocalRunner:
    """Foreground work runs in the caller's thread; background jobs in daemon threads,
    which end with the process (a job left unfinished that way is the job store's to
    report, not this runner's)."""

    kind = "local"

    def __init__(self, service: Service) -> None:
        self.service = service

    def enroll(self, batches: Iterable[list[EnrollItem]], *, largest_face: bool, on_done: OnDone) -> None:
        for outcomes in self.service.enroll_stream(batches, largest_face=largest_face):
            on_done(outcomes)

    def enroll_now(self, batch: list[EnrollItem], *, largest_face: bool) -> list[ItemOutcome]:
        with self.service.model_lock:
            return self.service.enroll_batch(batch, largest_face=largest_face)

    def submit_enroll_job(self, job_id: str, batches: list[list[EnrollItem]], *, largest_face: bool) -> None:
        def work() -> None:
            for number, batch in enumerate(batches):
                if not self.service.enroll_job_batch(job_id, number, batch, largest_face=largest_face):
                    return  # the job failed; its row says why

        threading.Thread(target=work, name=f"job-{job_id[:8]}", daemon=True).start()

    def submit_cluster_job(self, job_id: str, spec: dict[str, Any]) -> None:
        def work() -> None:
            try:
                self.service.cluster_job(job_id, spec)
            except Exception:  # recorded on the job and logged by cluster_job
                pass

        threading.Thread(target=work, name=f"job-{job_id[:8]}", daemon=True).start()

    def close(self) -> None:
        pass
