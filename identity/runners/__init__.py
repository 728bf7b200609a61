"""How batch work runs: in this process, or on Celery workers. Chosen once, when the
service is built (`runner_from_settings`); nothing else asks "is there a broker?"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from identity.runners.base import Runner
from identity.runners.local import LocalRunner

if TYPE_CHECKING:
    from identity.config import Settings
    from identity.service import Service

__all__ = ["LocalRunner", "Runner", "runner_from_settings"]


def runner_from_settings(settings: Settings, service: Service) -> Runner:
    if settings.workers.broker_url:
        from identity.runners.celery import CeleryRunner

        return CeleryRunner.from_settings(settings)
    return LocalRunner(service)
