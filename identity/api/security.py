"""API-key authentication and scopes, as FastAPI dependencies.

`Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are read through the cache of
identity/store/readcache.py: a revoked key stops working as soon as its revocation's
announcement arrives (milliseconds), and at most `api.cache_seconds` later if it is lost.
For routes that need a key, `identity/api/access.py` has already authenticated it from
the headers (before the body was read) and left it in the request scope; the dependency
here then only reads it, and checks the route's scope.
"""

from __future__ import annotations

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from identity.errors import AuthenticationError, PermissionDeniedError
from identity.store.keys import ApiKey

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer idk_…`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: idk_…`")
# Where access.py leaves the key it authenticated (a private key of the ASGI scope).
SCOPE_KEY = "identity.api_key"
MISSING = "an API key is required (Authorization: Bearer <key> or X-API-Key)"


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request presents: X-API-Key, else the credentials of a Bearer header."""
    if x_api_key:
        return x_api_key
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


async def current_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header: str | None = Security(_header),
) -> ApiKey:
    # async, like the scope check: each plain def dependency would cost a trip through
    # the thread pool per request; only a key access.py did not see is read in a thread.
    key = request.scope.get(SCOPE_KEY)
    if key is None:
        presented = header or (bearer.credentials if bearer else None)
        if not presented:
            raise AuthenticationError(MISSING)
        key = await run_in_threadpool(request.app.state.service.authenticate, presented)
    request.state.key = key
    return key


def scope_check(scope: str, key_dependency, *, name: str, whose: str):
    """A dependency admitting the keys `key_dependency` yields whose scopes include `scope`
    (admin ⊇ enroll ⊇ read); the API and the console differ only in where the key comes from."""

    async def check(key: ApiKey = Depends(key_dependency)) -> ApiKey:
        if scope not in key.granted:
            raise PermissionDeniedError(f"{whose} API key lacks the '{scope}' scope")
        return key

    check.__name__ = name
    return check


def require(scope: str):
    """The API's scope check, on the key from the request's headers."""
    return scope_check(scope, current_key, name=f"require_{scope}", whose="this")
