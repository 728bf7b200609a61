"""The Celery app that `celery -A workers.app worker` runs: identity's one definition
(`identity.runners.celery.make_celery`, where the delivery guarantees are explained),
configured from the settings, with the tasks of workers/tasks.py."""

from __future__ import annotations

from identity.config import get_settings
from identity.runners.celery import make_celery

_settings = get_settings()
app = make_celery(_settings.workers.broker_url or "redis://localhost:6379/0",
                  visibility_timeout=_settings.workers.task_visibility_timeout, include=["workers.tasks"])
# Retries are configuration, applied to every task here rather than read by the task module.
app.conf.task_annotations = {"*": {"max_retries": _settings.workers.task_max_retries}}

# Connect the process start/stop signals (models load once per worker process) as soon as
# the app is imported, before the worker sends them.
from workers import runtime as _runtime  # noqa: E402,F401
