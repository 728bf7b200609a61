"""`identity serve`: uvicorn, with one app in this process or `api.workers` worker processes.

Kept apart from app.py, which imports the whole service (torch among it, ~700 MB): with
several workers this process only supervises them, and must not hold a second copy of
what each worker loads (BENCHMARKS.md, "Serving path")."""

from __future__ import annotations

import signal
import sys
import threading

from identity.config import Settings, get_settings


def serve(settings: Settings | None = None) -> None:
    """`identity serve`: uvicorn on settings.api.host:api_port."""
    import uvicorn

    settings = settings or get_settings()
    _exit_on_sigterm()
    if settings.api.workers > 1:
        # Each worker process builds its own app (and index mirror) from the environment.
        uvicorn.run("identity.api.app:app_from_env", factory=True, host=settings.api.host,
                    port=settings.api.port, workers=settings.api.workers, proxy_headers=True,
                    access_log=settings.api.access_log)
    else:
        from identity.api.app import create_app

        uvicorn.run(create_app(settings), host=settings.api.host, port=settings.api.port, proxy_headers=True,
                    access_log=settings.api.access_log)


def _exit_on_sigterm() -> None:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the
    handler that was installed before it ran. Python's default one ends the process
    without running atexit, and atexit is what stops the embedded PostgreSQL (SIGINT's
    KeyboardInterrupt does run it): so SIGTERM left the server running. This handler
    makes that second SIGTERM a normal exit with status 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
