"""How the store reaches its database: the connection pool, write transactions, and
opening and closing.

Every transaction that writes faces or persons first takes the change-log advisory
lock (`identity_lock_changes()`, see migrations/0001). Writers are therefore
serialised; a batch transaction lasts milliseconds, and in exchange change_log.seq is
in commit order and two writers can never deadlock on person rows and the lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from identity.config import Settings, get_settings
from identity.errors import ModelMismatchError, StoreError
from identity.store.embedded import embedded_url, init_lock, pgdata_dir, redact, server_for
from identity.store.migrate import ensure_schema

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

_OPEN_TIMEOUT_S = 15
_CONNECTION_TIMEOUT_S = 30


def database_url(settings: Settings) -> str:
    """The configured server's URL; with none configured, the embedded server's (started
    or attached to on the way)."""
    if settings.store.database_url is None:
        return embedded_url(settings)
    return str(settings.store.database_url)


def probe(url: str) -> None:
    """Connect once outside the pool: the pool would hide the reason behind a timeout."""
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot connect to PostgreSQL at {redact(url)}: {reason}") from exc


def _configure(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


class StoreCore:
    """A connection pool on one database. Constructing one touches nothing: `Store.open`
    (or `connect()`, for a database known to be reachable and current) opens it."""

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 8) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=pool_min,
            max_size=max(pool_max, pool_min),
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            name="identity-store",
        )

    @classmethod
    def open(cls, settings: Settings | None = None, *, migrate: bool | None = None) -> Self:
        """Reach the configured database, bring or check its schema, and open the pool.

        With `settings.store.database_url` unset, the embedded server is started (or attached
        to) and migrated. With a URL, the schema must be up to date (`identity db
        upgrade`) unless `migrate=True`: a server we own is ours to migrate, another is
        the operator's."""
        settings = settings or get_settings()
        if settings.store.database_url is None:
            # Start, create and migrate as one step per data dir: see embedded.init_lock.
            with init_lock(pgdata_dir(settings).parent):
                url = database_url(settings)
                probe(url)
                ensure_schema(url, migrate=True if migrate is None else migrate)
        else:
            url = database_url(settings)
            probe(url)
            ensure_schema(url, migrate=bool(migrate))
        store = cls(url, pool_min=settings.store.db_pool_min, pool_max=settings.store.db_pool_max)
        server = server_for(settings)
        if server is not None:
            # Connections to a postmaster that died are dead; replace them once it is back.
            server.on_restart(store._pool.check)
        return store.connect()

    def connect(self) -> Self:
        """Open the pool's connections (waits for the minimum); returns the store."""
        try:
            self._pool.open(wait=True, timeout=_OPEN_TIMEOUT_S)
        except PoolTimeout as exc:
            raise StoreError(f"cannot open connections to PostgreSQL at {redact(self.url)}") from exc
        return self

    def close(self) -> None:
        self._pool.close()

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def ping(self, timeout: float = 2.0) -> None:
        """One round trip, waiting at most about `timeout` for a connection: what
        readiness reports. Raises StoreError."""
        try:
            with self._pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1")
        except PoolClosed as exc:
            raise StoreError("the store is closed") from exc
        except PoolTimeout as exc:
            raise StoreError(f"no database connection within {timeout:g} s") from exc
        except psycopg.Error as exc:
            raise StoreError(f"database connection failed: {type(exc).__name__}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; unavailability becomes StoreError."""
        try:
            with self._pool.connection(timeout=_CONNECTION_TIMEOUT_S) as conn:
                yield conn
        except PoolClosed as exc:
            raise StoreError(f"the store on {redact(self.url)} is not open (Store.open, or connect())") from exc
        except PoolTimeout as exc:
            raise StoreError(f"no database connection available ({redact(self.url)})") from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"database connection failed ({redact(self.url)}): {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """A write transaction holding the change-log lock (see the module docstring)."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT identity_lock_changes()")
            try:
                yield conn
            except pg_errors.CheckViolation as exc:
                if "embedding dimension" in str(exc):
                    raise ModelMismatchError(str(exc).splitlines()[0]) from exc
                raise
