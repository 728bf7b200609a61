"""The FastAPI application factory (`identity serve` is api/server.py)."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI

from identity.api import console, errors
from identity.api.access import AccessMiddleware, RateLimits
from identity.api.limits import BodyLimitMiddleware
from identity.api.metrics import Metrics, MetricsMiddleware
from identity.api.routes import enroll, faces, health, jobs, persons, vision
from identity.api.schemas import ErrorResponse
from identity.config import Settings, get_settings
from identity.errors import IdentityError
from identity.service import Service

log = logging.getLogger("identity.api")

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 422, 429, 500, 503, 507)}


def _warm(app: FastAPI) -> None:
    """Load the model, open the store and build the index in the background: /healthz
    answers at once, /readyz says when the rest is done."""
    service: Service = app.state.service
    try:
        service.store  # noqa: B018 - each property opens its resource
        _supervise_jobs(app)
        _sweep_spool(service)
        service.pipeline  # noqa: B018
        service.index  # noqa: B018
        log.info("api: ready (%s)", service.settings.pipeline.model)
    except IdentityError as exc:
        app.state.warm_error = exc.message
        log.error("api: startup failed: %s", exc)
    except Exception:
        app.state.warm_error = "startup failed (see the server log)"
        log.exception("api: startup failed")
    finally:
        app.state.warming = False


def _sweep_spool(service: Service) -> None:
    """Uploads left by jobs that ended while no process was there to release them, and by
    requests that died (identity/spool.py)."""
    try:
        service.sweep_spool()
    except (IdentityError, OSError) as exc:
        log.error("api: could not sweep the upload spool: %s", exc)


def _supervise_jobs(app: FastAPI) -> None:
    """Take over the jobs of processes that died (a killed `identity serve`), now and
    every `job_heartbeat_seconds` after (identity/jobs.py)."""
    from identity.jobs import JobSupervisor

    service: Service = app.state.service
    try:
        for job_id, outcome in service.recover_jobs():
            log.warning("api: job %s of a process that is gone: %s", job_id, outcome)
    except IdentityError as exc:
        log.error("api: could not look for abandoned jobs: %s", exc)
    except Exception:  # serving must not depend on it; the sweep tries again
        log.exception("api: could not look for abandoned jobs")
    if getattr(app.state, "job_supervisor", None) is None:
        app.state.job_supervisor = JobSupervisor(service)
        app.state.job_supervisor.start()


def create_app(settings: Settings | None = None, *, service: Service | None = None, warm: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm:
            threading.Thread(target=_warm, args=(app,), name="api-warm", daemon=True).start()
        yield
        if getattr(app.state, "job_supervisor", None) is not None:
            app.state.job_supervisor.stop()
        if service is None:  # ours to close; a Service passed in belongs to the caller
            app.state.service.close()

    app = FastAPI(
        title="identity",
        version="0.1.0",
        description="Face enrollment, 1:N search, 1:1 verification, detection and clustering.",
        lifespan=lifespan,
        responses=_ERRORS,
        # Served by the console from vendored files instead: FastAPI's pages load theirs from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service or Service(settings)
    app.state.warm_error = None
    app.state.warming = warm
    app.state.job_supervisor = None
    app.state.metrics = Metrics(app)
    errors.install(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_upload_bytes)
    # Added last, so it runs first: key and rate limit are decided before the body limit reads a byte.
    app.add_middleware(AccessMiddleware, api=app, limits=RateLimits.from_settings(settings),
                       max_bytes=settings.api.max_upload_bytes)
    for router in (health.router, persons.router, enroll.router, jobs.router, vision.router, *faces.routers):
        app.include_router(router)
    console.install(app)  # the web console at / and the offline /docs
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory identity.api.app:app_from_env` (the docker image's command)."""
    return create_app(get_settings())
