"""/healthz (liveness: the process answers), /readyz (can serve), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from identity.api.schemas import ReadyOut
from identity.api.security import require

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers with every migration applied, the model is loaded
    and the search index is built and following the change log."""
    checks = readiness(request.app)
    ready = all(c.get("ok") for c in checks.values())
    return JSONResponse(ReadyOut(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)


def readiness(app) -> dict[str, dict]:
    from identity.store.migrate import pending_url

    service = app.state.service
    checks: dict[str, dict] = {}
    try:
        store = service.store
        with store.connection() as conn:
            conn.execute("SELECT 1")
        checks["database"] = {"ok": True}
        pending = pending_url(store.url)
        checks["migrations"] = {"ok": not pending, "pending": pending}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": getattr(exc, "message", type(exc).__name__)}
        checks["migrations"] = {"ok": False}
    opened = service.opened()
    checks["model"] = {"ok": opened["pipeline"], "name": service.settings.model}
    if opened["index"]:
        status = service.index.status()
        checks["index"] = {"ok": status.ready and status.lag is not None, "faces": status.count,
                           "watermark": status.watermark, "lag": status.lag}
    else:
        checks["index"] = {"ok": False, "faces": 0}
    if service.settings.broker_url:
        # Jobs and broker-mode enrollment need it; search does not, but a deployment
        # with a broker configured and unreachable is not one to send traffic to.
        from identity.api.metrics import queue_depth

        depth = queue_depth(service.settings)
        checks["broker"] = {"ok": depth is not None, "queue_depth": depth}
    if app.state.warm_error:
        checks["startup"] = {"ok": False, "error": app.state.warm_error}
    return checks


@router.get("/metrics", dependencies=[Depends(require("read"))],
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
