"""Console requests that change something are admitted from their cookie before their
body is read, as /v1 requests are from their header (identity/api/access.py says why:
the body limit buffers a body before any route runs, so a visitor without a key could
otherwise make the server take in an upload per request). They count against the key's
rate limit too; the console's page views and chip images do not (a person's page asks
for a hundred chips at once)."""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response

from identity.api.access import RateLimits, protected
from identity.api.console.core import ADMITTED, COOKIE
from identity.errors import AuthenticationError, IdentityError

OPEN = ("/sign-in", "/sign-out")  # state changes that need no key


class ConsoleGate:
    def __init__(self, app, *, api, limits: RateLimits) -> None:
        self.app = app
        self.api = api
        self.limits = limits

    def _admit(self, headers: Headers):
        try:
            secret = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        except CookieError:
            secret = None
        if secret is None or not secret.value:
            raise AuthenticationError("sign in first")
        key = self.api.state.service.authenticate(secret.value)
        self.limits.check(key)
        return key

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or protected(scope)
                or scope["path"].removeprefix(scope.get("root_path", "")) in OPEN):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            scope[ADMITTED] = await run_in_threadpool(self._admit, headers)
        except AuthenticationError:
            root = scope.get("root_path", "").rstrip("/")
            await Response(status_code=204, headers={"HX-Redirect": f"{root}/sign-in"})(scope, receive, send)
            return
        except IdentityError as exc:  # a rate limit, or the store gone
            extra = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else {}
            await PlainTextResponse(exc.message, status_code=exc.http_status, headers=extra)(scope, receive, send)
            return
        await self.app(scope, receive, send)
