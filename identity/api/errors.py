"""One JSON error shape for every failure: `{"error": {"code", "message", "path"?}}`.

`IdentityError`s carry their own code and HTTP status (identity/errors.py). Request
validation, unknown routes and unexpected exceptions are mapped here; an unexpected
exception is logged with its traceback and answered with a bare 500, so no stack
trace, SQL or file path of the server ever reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from identity.errors import IdentityError

log = logging.getLogger("identity.api")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_input",
}


def error_response(status: int, code: str, message: str, path: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if path is not None:
        body["path"] = path
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _identity_error(request: Request, exc: IdentityError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    if getattr(exc, "retry_after", None) is not None:  # RateLimitedError
        headers = {"Retry-After": str(exc.retry_after)}
    if exc.http_status >= 500:
        log.warning("%s %s: %s (%s)", request.method, request.url.path, exc.code, exc)
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(IdentityError, _identity_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
