"""Disposable databases for tests: one embedded server, one migrated template, and a
fresh database per test created from it (CREATE DATABASE ... TEMPLATE copies files,
so it is much faster than running the migrations again)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from identity.store.embedded import ensure_database, start_server, stop_server
from identity.store.migrate import upgrade_url

TEMPLATE = "identity_template"


@contextmanager
def server_directory() -> Iterator[Path]:
    """A scratch directory the server's system user can reach. Not under pytest's
    basetemp: pytest resets /tmp/pytest-of-<user> to mode 0700 at every session start
    (including other sessions running at the same time), which would lock the
    `pgserver` system user (used when running as root) out of its data directory."""
    directory = Path(tempfile.mkdtemp(prefix="identity-pg-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class PgTestServer:
    pgdata: Path
    server: object
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def start(cls, directory: Path) -> PgTestServer:
        pgdata = Path(directory).resolve() / "pgdata"
        server = start_server(pgdata, cleanup_mode="delete")
        # A throwaway server: durability only costs time (every CREATE DATABASE is
        # WAL-logged, and the shutdown checkpoint would fsync all of it).
        with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:  # type: ignore[attr-defined]
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")
        upgrade_url(ensure_database(server, TEMPLATE))
        return cls(pgdata, server)

    def url(self, database: str) -> str:
        return self.server.get_uri(database)  # type: ignore[attr-defined]

    def new_database(self, prefix: str = "test", *, migrated: bool = True) -> str:
        """A new empty database, migrated unless asked otherwise; returns its URL."""
        name = f"{prefix}_{next(self._counter)}"
        template = TEMPLATE if migrated else "template0"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(
                # FILE_COPY: copy the template's files instead of WAL-logging every page
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return self.url(name)

    def drop_database(self, url: str) -> None:
        # Not the URL's last path segment: pgserver's URLs end in `?host=/…/pgdata`.
        name = conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        stop_server(self.pgdata)
