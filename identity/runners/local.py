"""Batch work in this process: the embedded default, no broker to run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from identity.enroll import EnrollItem, ItemOutcome
from identity.errors import JobEndedError
from identity.runners.base import OnDone

if TYPE_CHECKING:
    from identity.service import Service

log = logging.getLogger(__name__)


class LocalRunner:
    """Foreground work runs in the caller's thread; background jobs in daemon threads,
    which end with the process. A job left unfinished that way is owned by this process
    on its row, so the next API start finds the owner gone and resumes it
    (identity/jobs.py)."""

    kind = "local"
    remote = False

    def __init__(self, service: Service) -> None:
        self.service = service

    def enroll(self, batches: Iterable[list[EnrollItem]], *, largest_face: bool, on_done: OnDone,
               job_id: str | None = None) -> None:
        for outcomes in self.service.enroll_stream(batches, largest_face=largest_face):
            on_done(outcomes)

    def enroll_now(self, batch: list[EnrollItem], *, largest_face: bool, job_id: str | None = None,
                   wait: float | None = None) -> list[ItemOutcome] | None:
        if job_id is not None:
            return self.service.enroll_job_batch(job_id, 0, batch, largest_face=largest_face)
        with self.service.model_lock:
            return self.service.enroll_batch(batch, largest_face=largest_face)

    def submit_enroll_job(self, job_id: str, batches: Sequence[tuple[int, list[EnrollItem]]], *,
                          largest_face: bool) -> None:
        from identity.jobs import run_with_retries

        def work() -> None:
            for number, batch in batches:
                try:
                    # A database restarting under us is waited out, not the job's end.
                    run_with_retries(lambda number=number, batch=batch: self.service.enroll_job_batch(
                        job_id, number, batch, largest_face=largest_face))
                except JobEndedError:
                    return  # cancelled (or failed) meanwhile: nothing more to write
                except Exception as exc:
                    try:
                        self.service.fail_job(job_id, exc)
                    except Exception:  # the store is gone too: the next start resumes the job
                        log.exception("job %s: could not record the failure", job_id)
                    return

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
