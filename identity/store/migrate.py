"""Schema migrations, applied by yoyo-migrations from `migrations/`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from identity.config import Settings
from identity.errors import StoreError
from identity.resources import migrations_dir
from identity.store.embedded import redact


def yoyo_url(url: str) -> str:
    """yoyo picks its driver from the scheme; `postgresql+psycopg` is psycopg 3."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise StoreError(f"database URL must start with postgresql:// (got {redact(url)!r})")
    return "postgresql+psycopg://" + rest


@contextmanager
def _backend(url: str) -> Iterator[object]:
    from yoyo import get_backend

    try:
        backend = get_backend(yoyo_url(url))
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
    try:
        yield backend
    except psycopg.OperationalError as exc:
        # The server died (or was restarted) between connecting and finishing: the same
        # clear StoreError as failing to connect, not psycopg's traceback.
        raise StoreError(f"lost the connection to PostgreSQL at {redact(url)} while reading or migrating "
                         f"its schema: {exc}") from exc
    finally:
        backend.connection.close()


def _migrations():
    from yoyo import read_migrations

    return read_migrations(str(migrations_dir()))


def upgrade_url(url: str) -> list[str]:
    """Apply pending migrations; returns the ids applied (empty when up to date).

    yoyo's lock makes concurrent upgrades from several processes safe.
    """
    migrations = _migrations()
    with _backend(url) as backend, backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def pending_url(url: str) -> list[str]:
    migrations = _migrations()
    with _backend(url) as backend:
        return [m.id for m in backend.to_apply(migrations)]


def ensure_schema(url: str, *, migrate: bool) -> None:
    """Apply pending migrations, or refuse a stale schema with the command that fixes it."""
    if migrate:
        upgrade_url(url)
        return
    pending = pending_url(url)
    if pending:
        raise StoreError(
            f"the database at {redact(url)} lacks migrations {', '.join(pending)}; "
            "run `identity db upgrade`"
        )


def upgrade(settings: Settings) -> list[str]:
    """`identity db upgrade`: bring the configured database (embedded or not) up to date."""
    from identity.store.embedded import embedded_url, init_lock

    if settings.store.database_url:
        return upgrade_url(settings.store.database_url)
    with init_lock(settings.data_dir):
        return upgrade_url(embedded_url(settings))
