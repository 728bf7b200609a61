"""API keys: created by `identity keys create`, checked on every API request.

A key is `idk_<key_id>_<secret>`: `key_id` (16 hex digits) finds the row, `secret`
(32 random bytes, URL-safe base64) proves possession. Only sha256(secret) is stored.
A slow password hash (bcrypt, argon2) exists to make guessing *low-entropy* secrets
expensive; a 256-bit random secret cannot be guessed at any speed, so sha256 gives the
same protection for a stolen table and costs microseconds instead of ~100 ms on every
request. Lookups are by primary key and the hash is compared in constant time.

`authenticate` reads the row every time. The API authenticates through the cache of
identity/store/readcache.py instead: a revocation (or any change of a key) is announced
by a trigger on commit (migrations/0006) and drops the cached key in every API process
within milliseconds; `api.cache_seconds` bounds it when a notification is lost.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from identity.errors import AuthenticationError, InputError, NotFoundError
from identity.store.store import Store

Scope = Literal["read", "enroll", "admin"]
SCOPES: tuple[str, ...] = ("read", "enroll", "admin")
# A broader scope includes the narrower ones: an enroll key can also search.
IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "enroll": frozenset({"read", "enroll"}),
    "admin": frozenset({"read", "enroll", "admin"}),
}
PREFIX = "idk_"
_KEY = re.compile(r"^idk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def granted(self) -> frozenset[str]:
        return frozenset().union(*(IMPLIED[s] for s in self.scopes))

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _row(row) -> ApiKey:
    return ApiKey(row[0], row[1], tuple(row[2]), row[3], row[4], row[5])


_SELECT = "SELECT key_id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys"


def create_key(store: Store, name: str, scopes: list[str] | tuple[str, ...]) -> tuple[str, str]:
    """A new key; returns (key_id, full key). The full key is shown once and never stored."""
    if not name.strip():
        raise InputError("an API key needs a name")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InputError(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    with store.connection() as conn:
        conn.execute(
            "INSERT INTO api_keys (key_id, name, secret_hash, scopes) VALUES (%s, %s, %s, %s)",
            (key_id, name.strip(), _hash(secret), sorted(set(scopes))),
        )
    return key_id, f"{PREFIX}{key_id}_{secret}"


def list_keys(store: Store, *, include_revoked: bool = True) -> list[ApiKey]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with store.connection() as conn:
        return [_row(r) for r in conn.execute(_SELECT + where + " ORDER BY created_at, key_id").fetchall()]


def revoke_key(store: Store, key_id: str) -> ApiKey:
    """Revoke now (idempotent: revoking a revoked key keeps its first revocation time)."""
    with store.connection() as conn:
        row = conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s "
            "RETURNING key_id, name, scopes, created_at, last_used_at, revoked_at",
            (key_id,),
        ).fetchone()
    if row is None:
        raise NotFoundError(f"no API key {key_id!r}")
    return _row(row)


def parse(presented: str) -> tuple[str, str]:
    """(key id, secret) of a presented key, else AuthenticationError."""
    match = _KEY.match(presented.strip())
    if match is None:
        raise AuthenticationError("invalid API key")
    key_id, secret = match.groups()
    return key_id, secret


def secret_hash(secret: str) -> bytes:
    return _hash(secret)


def lookup(store: Store, key_id: str) -> tuple[ApiKey, bytes] | None:
    """The active key `key_id` and its secret's hash (None when unknown or revoked),
    noting its use."""
    with store.connection() as conn:
        row = conn.execute(
            _SELECT.replace(" FROM", ", secret_hash FROM") + " WHERE key_id = %s AND revoked_at IS NULL",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        # At most one write a minute per key: a write on every search would cost a WAL
        # flush per request for a value only an operator reading `keys list` looks at.
        conn.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE key_id = %s "
            "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            (key_id,),
        )
    return _row(row), bytes(row[6])


def authenticate(store: Store, presented: str) -> ApiKey:
    """The active key matching `presented`, else AuthenticationError (one message for
    every failure, so a caller cannot tell an unknown id from a wrong secret). Read from
    the database every time; the API reads through identity/store/readcache.py."""
    key_id, secret = parse(presented)
    found = lookup(store, key_id)
    if found is None or not hmac.compare_digest(found[1], _hash(secret)):
        raise AuthenticationError("invalid or revoked API key")
    return found[0]
