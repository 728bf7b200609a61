"""API-key authentication and scopes, as FastAPI dependencies.

`Authorization: Bearer <key>` or `X-API-Key: <key>`. The key row is read on every
request (identity/store/keys.py explains why that is cheap), so revocation is immediate.
"""

from __future__ import annotations

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from identity.errors import AuthenticationError, PermissionDeniedError
from identity.store.keys import ApiKey

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer idk_…`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: idk_…`")


def current_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header: str | None = Security(_header),
) -> ApiKey:
    presented = header or (bearer.credentials if bearer else None)
    if not presented:
        raise AuthenticationError("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    key = request.app.state.service.authenticate(presented)
    request.state.key = key
    return key


def require(scope: str):
    """A dependency admitting keys whose scopes include `scope` (admin ⊇ enroll ⊇ read)."""

    def check(key: ApiKey = Depends(current_key)) -> ApiKey:
        if scope not in key.granted:
            raise PermissionDeniedError(f"this API key lacks the '{scope}' scope")
        return key

    check.__name__ = f"require_{scope}"
    return check
