"""In-process caches of what every search request reads: the API key that presented
itself, and the names of the persons in its results. Without them each request made
two PostgreSQL round trips (BENCHMARKS.md, "Serving path"); with them the hot path
touches no database at all.

Invalidation, in two layers:

* **Notifications** (migrations/0006): a trigger announces every change of an API key
  (`identity_keys`, payload the key id) and every rename, change of external id or
  deletion of a person (`identity_persons`, payload the person id) when its transaction
  commits. `CacheListener`, one thread per process on its own LISTEN connection, drops
  the entry: a revoked key stops working, a renamed or merged-away person stops showing,
  within milliseconds of the commit, in every process and on every host.
* **Only while listening**: the caches answer from memory only while the listener's
  connection is up. Before it is (process start) and whenever it breaks, both are
  emptied and every request reads the database, as it did without a cache.
* **Time to live** (`api.cache_seconds`): an entry older than this is read again, so a
  notification lost on a live connection (or a row changed with the triggers disabled)
  is stale for at most that long.

A read that races a change cannot store a stale entry: every invalidation bumps a
generation, and an entry read from the database is stored only if the generation is
unchanged since before the read. (The notification is sent after the commit, so either
the read saw the new row, or the notification arrives after the read began and the
result is dropped.)

Merges and face moves need nothing here: which person a face belongs to is the search
index's business (it follows the change log); this cache only names persons. A person
merged away is deleted, which notifies.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from identity.errors import AuthenticationError
from identity.store import keys as key_store
from identity.store.keys import ApiKey

log = logging.getLogger(__name__)

KEYS_CHANNEL = "identity_keys"
PERSONS_CHANNEL = "identity_persons"


@dataclass(frozen=True)
class PersonName:
    """What a search result says about a person."""

    id: int
    external_id: str
    display_name: str | None


class _TtlCache:
    """A dict with a time to live per entry, a size cap, and a generation counter."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # Serve from memory only while invalidations can arrive (CacheListener sets it).
        self.active = True
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.generation = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any | None:
        entry = self._entries.get(key) if self.active else None
        if entry is None or time.monotonic() - entry[0] >= self.ttl:
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put_many(self, items: Iterable[tuple[Any, Any]], generation: int) -> None:
        """Store entries read while the generation was `generation`, unless something was
        invalidated since (they may be stale)."""
        now = time.monotonic()
        with self._lock:
            if generation != self.generation or not self.active:
                return
            for key, value in items:
                self._entries.pop(key, None)  # re-inserted at the end: insertion order is age order
                if len(self._entries) >= self.max_entries:
                    self._evict()
                self._entries[key] = (now, value)

    def _evict(self) -> None:
        # The oldest tenth (dicts keep insertion order, and put_many re-inserts).
        for key in list(self._entries)[: max(1, self.max_entries // 10)]:
            del self._entries[key]

    def invalidate(self, key: Any) -> None:
        with self._lock:
            self.generation += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class KeyCache:
    """`authenticate` as identity/store/keys.py does it, from memory while the entry is
    fresh. The secret is checked on every request (sha256, compared in constant time);
    only keys that authenticated are cached, so unknown key ids cannot fill it."""

    def __init__(self, store: Any, ttl: float, max_entries: int = 10_000) -> None:
        self.store = store
        self.cache = _TtlCache(ttl, max_entries)

    def cached(self, presented: str) -> ApiKey | None:
        """The key from memory, without I/O: None when it is not cached (then call
        `authenticate`); AuthenticationError when it is and the secret is wrong."""
        key_id, secret = key_store.parse(presented)
        entry = self.cache.get(key_id)
        if entry is None:
            return None
        key, secret_hash = entry
        if not hmac.compare_digest(secret_hash, key_store.secret_hash(secret)):
            raise AuthenticationError("invalid or revoked API key")
        return key

    def authenticate(self, presented: str) -> ApiKey:
        key_id, secret = key_store.parse(presented)
        entry = self.cache.get(key_id)
        if entry is None:
            generation = self.cache.generation
            entry = key_store.lookup(self.store, key_id)
            if entry is None:
                raise AuthenticationError("invalid or revoked API key")
            self.cache.put_many([(key_id, entry)], generation)
        key, secret_hash = entry
        if not hmac.compare_digest(secret_hash, key_store.secret_hash(secret)):
            raise AuthenticationError("invalid or revoked API key")
        return key


class NameCache:
    """Person id -> `PersonName`, read in one query for the ids not cached."""

    def __init__(self, store: Any, ttl: float, max_entries: int = 200_000) -> None:
        self.store = store
        self.cache = _TtlCache(ttl, max_entries)

    def names(self, ids: Sequence[int]) -> dict[int, PersonName]:
        found: dict[int, PersonName] = {}
        missing = []
        for person_id in ids:
            name = self.cache.get(person_id)
            if name is None:
                missing.append(person_id)
            else:
                found[person_id] = name
        if missing:
            generation = self.cache.generation
            read = person_names(self.store, missing)
            self.cache.put_many(read.items(), generation)
            found.update(read)
        return found


def person_names(store: Any, ids: Sequence[int]) -> dict[int, PersonName]:
    """The names of the persons among `ids` that exist (one indexed read)."""
    if not ids:
        return {}
    with store.connection() as conn:
        rows = conn.execute("SELECT id, external_id, display_name FROM persons WHERE id = ANY(%s)",
                            (list(ids),)).fetchall()
    return {row[0]: PersonName(row[0], row[1], row[2]) for row in rows}


class CacheListener:
    """The thread that applies the invalidation notifications to the caches of one process."""

    def __init__(self, store: Any, keys: KeyCache, names: NameCache, *, retry_seconds: float = 1.0) -> None:
        self.store = store
        self.keys = keys
        self.names = names
        self.retry_seconds = retry_seconds
        self.connected = threading.Event()  # LISTENing now (tests wait for it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._set_active(False)
        self._handlers: dict[str, Callable[[str], None]] = {
            KEYS_CHANNEL: keys.cache.invalidate,
            PERSONS_CHANNEL: lambda payload: names.cache.invalidate(int(payload)),
        }

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cache-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _clear(self) -> None:
        self.keys.cache.clear()
        self.names.cache.clear()

    def _set_active(self, active: bool) -> None:
        for cache in (self.keys.cache, self.names.cache):
            with cache._lock:
                cache.active = active
                cache.generation += 1
                cache._entries.clear()

    def _run(self) -> None:
        quiet = False  # one warning per outage, not one per retry
        while not self._stop.is_set():
            conn = None
            try:
                conn = self.store.listen(KEYS_CHANNEL)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(PERSONS_CHANNEL)))
                self._set_active(True)  # empty: what was announced before now is lost
                self.connected.set()
                quiet = False
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        self._dispatch(note.channel, note.payload)
            except Exception as exc:
                if self._stop.is_set():
                    break
                (log.debug if quiet else log.warning)(
                    "cache listener: no LISTEN connection (%s); keys and names are read from the "
                    "database until it is back", exc)
                quiet = True
            finally:
                self.connected.clear()
                self._set_active(False)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            self._stop.wait(self.retry_seconds)

    def _dispatch(self, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except ValueError:  # a payload we did not write: drop everything rather than guess
            self._clear()


class ServingCaches:
    """The keys and names caches of one process, and the listener that invalidates them."""

    def __init__(self, store: Any, ttl: float) -> None:
        self.keys = KeyCache(store, ttl)
        self.names = NameCache(store, ttl)
        self.listener = CacheListener(store, self.keys, self.names)

    def start(self) -> ServingCaches:
        self.listener.start()
        return self

    def stop(self) -> None:
        self.listener.stop()
