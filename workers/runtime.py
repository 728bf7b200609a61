"""The per-process resources of a worker: one `Service` (models, database pool),
created when the worker process starts, never per task.

Prefork: each child builds its own after the fork (`worker_process_init`), because a
psycopg pool (and CUDA) must not cross a fork. Solo/threads pools (GPU workers, run
with concurrency 1) have no children, so the main process builds it at `worker_init`.
"""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from identity.config import get_settings
from identity.service import Service

log = logging.getLogger(__name__)
_lock = threading.Lock()
_service: Service | None = None
_loaded: list[float] = []  # seconds each load took (one entry per process, or it is a bug)
_announced: list[bool] = []


def service() -> Service:
    """This process's Service with its models loaded (built on first call if the start
    signal did not run, e.g. a task executed eagerly in a test)."""
    global _service
    with _lock:
        if _service is None:
            start = time.perf_counter()
            created = Service(get_settings())
            created.pipeline  # noqa: B018 - load the networks now, not inside the first task
            created.store  # noqa: B018 - and open the pool
            _service = created
            _loaded.append(time.perf_counter() - start)
        return _service


def _announce() -> None:
    if _service is not None and _loaded and not _announced:
        _announced.append(True)
        log.info("worker: models loaded (%s on %s) in %.1f s", _service.pipeline.model_name,
                 _service.pipeline.device, _loaded[-1])


def close() -> None:
    global _service
    with _lock:
        if _service is not None:
            _service.close()
            _service = None


def _pool_forks(sender: object) -> bool:
    pool = getattr(sender, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "") + getattr(pool, "__name__", "")
    return not any(word in str(name).lower() for word in ("solo", "thread", "gevent", "eventlet"))


@worker_process_init.connect
def _load_in_child(**_: object) -> None:
    service()
    _announce()


@worker_init.connect
def _load_in_main(sender: object = None, **_: object) -> None:
    if not _pool_forks(sender):
        service()


@worker_ready.connect
def _ready(**_: object) -> None:
    # worker_init runs before Celery sets up logging: say it once the log works.
    _announce()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close(**_: object) -> None:
    close()
