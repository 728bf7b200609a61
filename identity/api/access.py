"""Who may make a request, decided from its headers before its body is read: the API key
(401 without one) and the key's rate limit (429 with Retry-After).

Why a middleware and not only the route's dependency: FastAPI resolves dependencies after
it has read and parsed the body, and the body limit (limits.py) buffers the body before
any route runs. So a client without a key could make the server take in a 19 MB upload,
per request, before it was told 401 (30 such requests held 1.4 GB). Here a request to a
path that needs a key (`PROTECTED`: everything under /v1, and /metrics) is authenticated
and counted against its key's limit from the headers alone, and only an admitted
request's body is ever read. The key is left in the request scope for the route's
dependency (`security.current_key`), which still checks the route's scope (403).
tests/test_api_limits.py checks that `PROTECTED` and the routes' own dependencies agree
(every operation in the OpenAPI schema needs a key exactly when its path is protected),
so a new unauthenticated route under /v1 cannot slip in unnoticed.

Rate limits are per key and set per scope (`rate_limit_read|enroll|admin`), counted
with `limits`' moving window in `rate_limit_storage` (this process's memory, or Redis to
share them between processes). A key with several scopes gets its broadest scope's limit.
"""

from __future__ import annotations

import math
import time

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from identity.api.security import MISSING, SCOPE_KEY, presented_key
from identity.config import Settings
from identity.errors import (
    AuthenticationError,
    ConfigError,
    IdentityError,
    RateLimitedError,
    ServiceUnavailableError,
)
from identity.store.keys import SCOPES, ApiKey

PROTECTED = ("/v1", "/metrics")  # these paths and everything below them


def protected(scope) -> bool:
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):  # behind a proxy's prefix, routes see the rest
        path = path[len(root):]
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


class RateLimits:
    """Each scope's limits (several may apply: '20/second;600/minute'), per key id."""

    def __init__(self, per_scope: dict[str, str], storage_url: str) -> None:
        from limits import parse_many, storage, strategies

        self.items = {}
        for scope, text in per_scope.items():
            try:
                self.items[scope] = parse_many(text) if text.strip() else []
            except ValueError:
                raise ConfigError(f"rate_limit_{scope} = {text!r} is not a rate limit (e.g. '600/minute', "
                                  "'20/second;600/minute', or empty for none)") from None
        try:
            self.limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_url))
        except Exception as exc:  # limits raises ConfigurationError and friends
            raise ConfigError(f"rate_limit_storage = {storage_url!r}: {exc}") from None
        # Counting in this process's memory is a few microseconds and no I/O.
        self.in_memory = storage_url.startswith("memory://")

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        return cls({"read": settings.api.rate_limit_read, "enroll": settings.api.rate_limit_enroll,
                    "admin": settings.api.rate_limit_admin}, settings.api.rate_limit_storage)

    def check(self, key: ApiKey) -> None:
        """Count one request of `key`, or raise RateLimitedError (nothing counted) when
        any of its scope's limits is used up."""
        scope = max(key.scopes, key=SCOPES.index, default="read")
        items = self.items.get(scope, [])
        try:
            full = [item for item in items if not self.limiter.test(item, "key", key.key_id)]
            if not full:
                for item in items:
                    self.limiter.hit(item, "key", key.key_id)
                return
            reset = self.limiter.get_window_stats(full[0], "key", key.key_id).reset_time
        except Exception as exc:  # a shared (Redis) counter store that does not answer
            raise ServiceUnavailableError(f"the rate-limit store did not answer ({type(exc).__name__})") from exc
        retry = max(1, math.ceil(reset - time.time()))
        raise RateLimitedError(f"rate limit of {full[0]} for {scope}-scope keys reached; retry in {retry} s",
                               retry_after=retry)


class AccessMiddleware:
    """`limits` is made by the app factory, so a malformed setting fails there, not on
    the first request (Starlette builds middleware lazily)."""

    def __init__(self, app, *, api, limits: RateLimits, max_bytes: int) -> None:
        self.app = app
        self.api = api  # the FastAPI app: its service authenticates
        self.limits = limits
        self.max_bytes = max_bytes

    def _admit(self, headers: Headers) -> ApiKey:
        presented = presented_key(headers.get("x-api-key"), headers.get("authorization"))
        if not presented:
            raise AuthenticationError(MISSING)
        key = self.api.state.service.authenticate(presented)
        self.limits.check(key)
        return key

    def _admit_from_memory(self, headers: Headers) -> ApiKey | None:
        """`_admit` when it needs no I/O (the key is cached and limits are counted in
        memory), run on the event loop; None when it would block."""
        if not self.limits.in_memory:
            return None
        presented = presented_key(headers.get("x-api-key"), headers.get("authorization"))
        if not presented:
            raise AuthenticationError(MISSING)
        key = self.api.state.service.cached_key(presented)
        if key is not None:
            self.limits.check(key)
        return key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not protected(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.app(scope, receive, send)  # the body limit refuses it, unread and for free
            return
        try:
            # Reading the key row (and a Redis-backed limit) is blocking I/O: in a thread,
            # unless the key is in memory (identity/store/readcache.py).
            key = self._admit_from_memory(headers)
            scope[SCOPE_KEY] = key if key is not None else await run_in_threadpool(self._admit, headers)
        except IdentityError as exc:
            # The body is never asked for. No `Connection: close`: closing a socket with
            # unread bytes makes the kernel reset it, which often destroys the answer before
            # the client reads it; kept open, uvicorn drops the rest of the body as it
            # arrives (no memory held) until its keep-alive timeout, and the client reads 401.
            await _refuse(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refuse(exc: IdentityError) -> JSONResponse:
    extra = {}
    if exc.http_status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimitedError):
        extra["Retry-After"] = str(exc.retry_after)
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=extra)
