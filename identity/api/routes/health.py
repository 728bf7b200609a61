"""/healthz (liveness: restart the process if it fails), /readyz (readiness: send it traffic
only while it passes), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from identity.api.schemas import ReadyOut
from identity.api.security import require

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict:
    """Liveness: the process is up and answers HTTP. It checks nothing behind it on
    purpose: restarting the process would not bring back an external database, and an
    embedded one is restarted by this process itself (identity/store/embedded.py). A
    failing /healthz means: restart this process. Whether to send it traffic: /readyz."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def readyz(request: Request) -> JSONResponse:
    """Readiness: whether to send this process traffic. 200 when the database answers
    (within 2 s, now, not as last seen) with every migration applied, the model is loaded,
    the search index is built and following the change log, and the broker answers when
    one is configured; else 503 with the checks that fail. A dead database shows here
    (an embedded one also with its restarts) and the answer turns 200 again by itself
    when it is back. Error messages (which may name files) only with a valid API key."""
    checks = readiness(request.app)
    ready = all(c.get("ok") for c in checks.values())
    if not _has_key(request):
        checks = {name: {k: v for k, v in check.items() if k in _PUBLIC} for name, check in checks.items()}
    return JSONResponse(ReadyOut(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)


# What /readyz shows without a key: states and counts, never messages (they may name paths).
_PUBLIC = frozenset({"ok", "code", "pending", "name", "faces", "watermark", "lag", "queue_depth",
                     "running", "restarts"})


def _has_key(request: Request) -> bool:
    presented = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not presented and auth.lower().startswith("bearer "):
        presented = auth[7:].strip()
    service = request.app.state.service
    if not presented or not service.opened()["store"]:  # never wait here for the store to open
        return False
    try:
        service.authenticate(presented)
    except Exception:  # a wrong key, or no database to check it against
        return False
    return True


def _failure(exc: Exception) -> dict:
    return {"ok": False, "code": getattr(exc, "code", "error"), "error": getattr(exc, "message", type(exc).__name__)}


def readiness(app) -> dict[str, dict]:
    from identity.store.embedded import server_for
    from identity.store.migrate import pending_url

    service = app.state.service
    checks: dict[str, dict] = {}
    if not service.opened()["store"] and getattr(app.state, "warming", False):
        checks["database"] = {"ok": False, "code": "starting", "error": "the store is being opened"}
        checks["migrations"] = {"ok": False}
    else:
        try:
            store = service.store
            store.ping(timeout=2.0)
            checks["database"] = {"ok": True}
            pending = pending_url(store.url)
            checks["migrations"] = {"ok": not pending, "pending": pending}
        except Exception as exc:
            checks["database"] = _failure(exc)
            checks["migrations"] = {"ok": False}
    embedded = server_for(service.settings)
    if embedded is not None:
        status = embedded.status()
        checks["database"].update(running=status["running"], restarts=status["restarts"],
                                  last_restart=status["last_restart"])
        if status["last_error"]:
            checks["database"]["restart_error"] = status["last_error"]
    opened = service.opened()
    checks["model"] = {"ok": opened["pipeline"], "name": service.settings.pipeline.model}
    if opened["index"]:
        status = service.index.status()
        checks["index"] = {"ok": status.ready and status.lag is not None, "faces": status.count,
                           "watermark": status.watermark, "lag": status.lag}
    else:
        checks["index"] = {"ok": False, "faces": 0}
    if service.settings.workers.broker_url:
        # Jobs and broker-mode enrollment need it; search does not, but a deployment
        # with a broker configured and unreachable is not one to send traffic to.
        from identity.api.metrics import queue_depth

        depth = queue_depth(service.settings)
        checks["broker"] = {"ok": depth is not None, "queue_depth": depth}
    if app.state.warm_error:
        checks["startup"] = {"ok": False, "code": "startup_failed", "error": app.state.warm_error}
    return checks


@router.get("/metrics", dependencies=[Depends(require("read"))],
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
