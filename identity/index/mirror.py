"""The FAISS mirror of one model's faces in PostgreSQL.

PostgreSQL is the source of truth; this index follows it:

* **Build**: `store.embedding_count(model)` chooses the index; `store.snapshot_embeddings
  (model)` gives a watermark and a streaming iterator from one consistent snapshot, and
  the batches go straight into the chosen index (`build_index`).
* **Sync**: `store.changes_since(watermark)` in seq order. The change log's seq is
  allocated in commit order (see ARCHITECTURE.md), so "applied everything up to seq"
  is a sound watermark. For each batch of changes we re-read the *current* rows of
  the touched faces (`store.fetch_embeddings`): present → upsert, absent → remove.
  Applying current state instead of each historical step is idempotent and converges
  (a face inserted then deleted is never added), and a row is only ever visible once
  committed, so a face is never searchable before its transaction commits.
* **Follower**: a thread woken by LISTEN/NOTIFY (`store.listen()`), polling every
  `index_poll_seconds` as the safety net; a commit is searchable within milliseconds
  of the notification, and within one poll interval if the notification is lost.
* **Snapshot**: on stop and every `index_snapshot_changes` applied changes; a restart
  loads it and replays only the tail. A crash between a commit and the index update
  loses nothing: the change stays in the log above the snapshot's watermark.
* **Several processes, one snapshot** (`index_mmap_snapshot`): each API worker maps the
  snapshot file and keeps its own changes in a small tail (face_index.py). When a
  snapshot is due (the change count above, or the tail past `FaceIndex.needs_snapshot`)
  the process holding `snapshot.writer_lock` writes it and maps it; the others, seeing
  `CURRENT.json` change at their next sync, map the new file and replay the change log
  from its watermark: their tail then holds only the changes above it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from identity.config import IndexSettings, Settings
from identity.errors import IndexUnavailableError, ModelMismatchError
from identity.index.face_index import FaceIndex
from identity.index.snapshot import (
    MAPPABLE,
    SnapshotMeta,
    current_key,
    load_snapshot,
    read_meta,
    snapshot_dir,
    write_snapshot,
    writer_lock,
)
from identity.index.spec import Choice, IndexSpec, choose, training_sample_size
from identity.memory import release_free_memory
from identity.search_results import QueryResult
from identity.store.types import Change, ModelInfo

log = logging.getLogger(__name__)

CHANGE_BATCH = 10_000
EmbeddingBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids, person ids (-1 none), vectors


class ChangeSource(Protocol):
    """The store functions the mirror uses (docs/ARCHITECTURE.md, "Store functions the index uses")."""

    def snapshot_embeddings(self, model: str) -> tuple[int, Iterator[EmbeddingBatch]]: ...
    def embedding_count(self, model: str) -> int: ...
    def changes_since(self, seq: int, model: str, limit: int = ...) -> list[Change]: ...
    def fetch_embeddings(self, face_ids: Iterable[int], model: str) -> EmbeddingBatch: ...
    def watermark(self, model: str | None = None) -> int: ...
    def listen(self, channel: str = ...) -> Any: ...


@dataclass(frozen=True)
class IndexStatus:
    model: str
    model_version: str
    ready: bool
    count: int  # live faces in the index
    watermark: int  # last change-log seq applied
    db_watermark: int | None  # last committed seq in the database (None: unreachable)
    lag: int | None  # changes committed but not yet applied (seq difference)
    index_type: str
    device: str
    tombstones: int
    # Serving a snapshot mapped from its file (shared with the other processes that map
    # it) plus this process's own tail of faces changed since: how many faces the tail holds.
    shared_snapshot: bool
    tail_faces: int
    snapshot_watermark: int | None
    snapshot_age_s: float | None
    last_sync_at: float | None  # time.time() of the last successful sync
    chosen_because: str | None = None  # why this index type and parameters (spec.choose)
    memory_estimate_mb: float | None = None  # of the index at its size when chosen
    memory_budget_mb: float | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def build_index(
    batches: Iterable[EmbeddingBatch], index_settings: IndexSettings, dim: int, *, kind: str | None = None,
    expected: int | None = None,
) -> FaceIndex:
    """Stream batches into the index their number calls for.

    With `expected` (the store's count when the build starts) the index is chosen up front
    and the batches go straight into it: a compressed index for 10M × 512-d faces never
    holds their 20 GB of float32 rows. A kind that needs training trains on the first
    rows (in face-id order, so the oldest faces; FAISS only needs them to span the space)
    and then receives them. An exact index, or no `expected`, is staged in a flat index
    and converted once the final size is known (size-dependent parameters then fit)."""
    if expected is not None:
        choice = choose(index_settings, expected, dim, kind=kind)  # type: ignore[arg-type]
        if choice.spec.kind != "flat":
            return _stream_into(choice, batches, expected, use_gpu=index_settings.use_gpu)
    staging = FaceIndex(IndexSpec("flat", dim), use_gpu=False)
    for ids, persons, vectors in batches:
        if len(ids):
            staging.add(ids, persons, vectors)
    choice = choose(index_settings, staging.count, dim, kind=kind)  # type: ignore[arg-type]
    spec = choice.spec
    log.info("index: %s", choice.reason)
    if spec.kind == "flat":
        index = FaceIndex(spec, use_gpu=index_settings.use_gpu, cpu_index=staging.cpu_index, persons=staging.persons)
    else:
        log.info("index: converting %d staged faces to %s", staging.count, spec.describe())
        index = staging.rebuilt_as(spec, use_gpu=index_settings.use_gpu)
    index.choice = choice
    return index


def _stream_into(choice: Choice, batches: Iterable[EmbeddingBatch], expected: int, *, use_gpu: bool) -> FaceIndex:
    spec = choice.spec
    log.info("index: %s; streaming into %s", choice.reason, spec.describe())
    index = FaceIndex(spec, use_gpu=use_gpu)
    batches = iter(batches)
    if spec.trained:
        wanted = training_sample_size(spec, max(expected, 1))
        held: list[EmbeddingBatch] = []
        rows = 0
        for batch in batches:
            held.append(batch)
            rows += len(batch[0])
            if rows >= wanted:
                break
        if not rows:  # the faces counted were deleted meanwhile: nothing to train on, so
            return FaceIndex(IndexSpec("flat", spec.dim), use_gpu=use_gpu)  # exact until a rebuild
        index.train(np.concatenate([b[2] for b in held])[:wanted])
        batches = itertools.chain(held, batches)
    for ids, persons, vectors in batches:
        if len(ids):
            index.add(ids, persons, vectors)
    index.fit_lists()  # each list grew batch by batch, to up to twice its rows
    index.choice = choice
    return index


class IndexMirror:
    """Keeps a `FaceIndex` equal to the store's faces of one model, and searches it."""

    def __init__(self, store: ChangeSource, settings: IndexSettings, model: ModelInfo, *, data_dir: Path) -> None:
        self.store = store
        self.settings = settings
        self.model = model
        self.directory: Path = snapshot_dir(data_dir, model.name)
        self._index: FaceIndex | None = None
        self._watermark = 0
        self._apply_lock = threading.Lock()  # one writer: sync, rebuild and snapshot
        self._advanced = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since_snapshot = 0
        self._last_sync_at: float | None = None
        # The snapshot the index was loaded from or last written (file, watermark), and
        # CURRENT.json's stat key when it was read: another process's new snapshot shows
        # as a new key.
        self._snapshot: tuple[str, int] | None = None
        self._current_key: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, store: ChangeSource, settings: Settings, model: ModelInfo) -> IndexMirror:
        return cls(store, settings.index, model, data_dir=settings.data_dir)

    # --- lifecycle --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._index is not None

    @property
    def watermark(self) -> int:
        return self._watermark

    @property
    def index(self) -> FaceIndex:
        if self._index is None:
            raise IndexUnavailableError(f"the search index for {self.model.name} is not loaded yet")
        return self._index

    def open(self) -> None:
        """Load the snapshot (or build from the database), then replay the change-log tail."""
        with self._apply_lock:
            loaded = self._load_snapshot()
            if loaded is not None:
                index, meta = loaded
                watermark = meta.watermark
            else:
                index, watermark = self._build()
            watermark = self._catch_up(index, watermark)
            self._publish(index, watermark)
            built = loaded is None
            del index, loaded  # served from self._index; a snapshot may replace it with its mapped copy
            if built:
                self._snapshot_locked(force=True)
                # What the build freed (lists grown batch by batch, or the private copy the
                # mapped snapshot replaced) goes back to the kernel instead of staying in the heap.
                release_free_memory()

    def _load_snapshot(self) -> tuple[FaceIndex, SnapshotMeta] | None:
        key = current_key(self.directory)  # before reading: a later change is seen next time
        loaded = load_snapshot(
            self.directory,
            model=self.model.name,
            model_version=self.model.version,
            dim=self.model.dim,
            db_watermark=self.store.watermark(self.model.name),
            use_gpu=self.settings.use_gpu,
            mmap=self.settings.mmap_snapshot,
        )
        if loaded is not None:
            self._snapshot, self._current_key = (loaded[1].faiss_file, loaded[1].watermark), key
        return loaded

    def start(self) -> None:
        """`open()` if needed, then follow the change log in a background thread."""
        if self._index is None:
            self.open()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name=f"index-follower-{self.model.name}", daemon=True)
            self._thread.start()

    def stop(self, *, snapshot: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if snapshot and self._index is not None and self._since_snapshot:
            self.snapshot(remap=False)

    def __enter__(self) -> "IndexMirror":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- building and syncing ------------------------------------------------------

    def _build(self) -> tuple[FaceIndex, int]:
        started = time.perf_counter()
        expected = self.store.embedding_count(self.model.name)  # chooses the index before the rows arrive
        watermark, batches = self.store.snapshot_embeddings(self.model.name)
        index = build_index(batches, self.settings, self.model.dim, expected=expected)
        log.info(
            "index: built %s with %d faces of %s at watermark %d in %.1fs",
            index.spec.describe(), index.count, self.model.name, watermark, time.perf_counter() - started,
        )
        return index, watermark

    def _apply(self, index: FaceIndex, changes: list[Change]) -> None:
        touched = np.unique(np.fromiter((c.face_id for c in changes), np.int64, len(changes)))
        ids, persons, vectors = self.store.fetch_embeddings(touched.tolist(), self.model.name)
        ids = np.asarray(ids, np.int64)
        if len(ids) and np.shape(vectors)[1] != self.model.dim:
            raise ModelMismatchError(
                f"{self.model.name} rows have dimension {np.shape(vectors)[1]}, the index has {self.model.dim}"
            )
        index.remove(touched[~np.isin(touched, ids)])
        index.upsert(ids, persons, vectors)

    def _catch_up(self, index: FaceIndex, watermark: int) -> int:
        """Apply every committed change above `watermark` to `index`; returns the new watermark."""
        while True:
            changes = self.store.changes_since(watermark, self.model.name, limit=CHANGE_BATCH)
            if not changes:
                return watermark
            self._apply(index, changes)
            watermark = changes[-1].seq
            self._since_snapshot += len(changes)
            if len(changes) < CHANGE_BATCH:
                return watermark

    def _publish(self, index: FaceIndex, watermark: int) -> None:
        with self._advanced:
            self._index = index
            self._watermark = watermark
            self._last_sync_at = time.time()
            self._advanced.notify_all()

    def sync(self) -> int:
        """Apply the committed changes not yet in the index; returns the new watermark."""
        with self._apply_lock:
            self._follow_snapshot_locked()
            index = self.index
            watermark = self._catch_up(index, self._watermark)
            if index.needs_compaction:
                index.compact()
            self._publish(index, watermark)
        if self._since_snapshot >= self.settings.snapshot_changes or index.needs_snapshot:
            self.snapshot()
        return self._watermark

    def rebuild(self) -> IndexStatus:
        """Build a fresh index from the database while the current one keeps serving,
        then swap it in (`identity index rebuild`)."""
        index, watermark = self._build()
        with self._apply_lock:
            watermark = self._catch_up(index, watermark)
            self._publish(index, watermark)
            del index
            self._snapshot_locked(force=True)
        release_free_memory()  # the index it replaced, and the build's freed buffers
        return self.status()

    def wait_for(self, seq: int, timeout: float = 5.0) -> bool:
        """Block until changes up to `seq` are searchable (read-your-writes after an
        enrollment); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._advanced:
            while self._watermark < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._advanced.wait(left)
        return True

    # --- follower -----------------------------------------------------------------

    def _follow(self) -> None:
        listener = None
        poll = self.settings.poll_seconds
        while not self._stop.is_set():
            if listener is None:
                listener = self._listen()
            try:
                if listener is not None:
                    # Wakes on the first notification or after `poll` seconds, whichever first.
                    for _ in listener.notifies(timeout=poll, stop_after=1):
                        pass
                else:
                    self._stop.wait(poll)
            except Exception as exc:  # the LISTEN connection broke: poll until it is back
                log.warning("index follower: lost LISTEN connection (%s); polling", exc)
                _close(listener)
                listener = None
                continue
            if self._stop.is_set():
                break
            try:
                self.sync()
            except Exception:  # keep serving the last good index; status shows the lag
                log.exception("index follower: sync failed; retrying in %.1fs", poll)
                self._stop.wait(poll)
        _close(listener)

    def _listen(self) -> Any:
        try:
            return self.store.listen()
        except Exception as exc:
            log.warning("index follower: cannot LISTEN (%s); polling every %.1fs", exc, self.settings.poll_seconds)
            return None

    # --- snapshots ------------------------------------------------------------------

    def snapshot(self, *, remap: bool = True) -> None:
        """Write a snapshot of the index at its watermark, unless another process is
        writing one or already wrote one as recent (this process then maps that one at
        its next sync). `remap`: then serve from the written file, mapped (index.mmap_snapshot)."""
        with self._apply_lock:
            self._snapshot_locked(remap=remap)

    def _snapshot_locked(self, *, force: bool = False, remap: bool = True) -> None:
        """`force` (a fresh build): wait for the lock and write whatever is there."""
        index = self.index
        with writer_lock(self.directory, wait=force) as held:
            if not held:
                return
            meta = read_meta(self.directory)
            if not force and meta is not None and meta.watermark >= self._watermark and (
                    self._snapshot is None or meta.faiss_file != self._snapshot[0]):
                self._since_snapshot = 0  # another process's snapshot holds all we have
                return
            with index._lock:  # no search-side mutation either while FAISS writes the file
                meta = write_snapshot(
                    self.directory, index, model=self.model.name, model_version=self.model.version,
                    watermark=self._watermark,
                )
            self._since_snapshot = 0
            self._snapshot, self._current_key = (meta.faiss_file, meta.watermark), current_key(self.directory)
            if remap and self.settings.mmap_snapshot and meta.index_spec.kind in MAPPABLE and index.device == "cpu":
                # Serve from the file just written, as the other processes will: its pages
                # are shared, and the private copy the write folded the tail into is freed.
                self._switch_locked("wrote")

    def _follow_snapshot_locked(self) -> None:
        """Another process wrote a newer snapshot: map it and replay the change log from
        its watermark, so that this process's tail holds only the changes above it.
        Only a process serving from a mapped snapshot follows (the others gain nothing)."""
        key = current_key(self.directory)
        if key == self._current_key:
            return
        meta = read_meta(self.directory)
        if meta is None or (self._snapshot is not None and meta.watermark <= self._snapshot[1]):
            self._current_key = key  # ours, or older than ours
            return
        if not self.index.mapped:
            self._current_key, self._since_snapshot = key, 0
            return
        self._switch_locked("follows")

    def _switch_locked(self, why: str) -> None:
        loaded = self._load_snapshot()
        if loaded is None:  # e.g. replaced again and unlinked meanwhile: keep serving, retry next sync
            return
        index, meta = loaded
        tail_before = self.index.tail_rows
        self._since_snapshot = 0
        watermark = self._catch_up(index, meta.watermark)
        self._publish(index, watermark)
        log.info("index: %s snapshot %s at watermark %d; tail %d -> %d faces", why, meta.faiss_file, meta.watermark,
                 tail_before, index.tail_rows)
        del index
        release_free_memory()  # the index it replaced (a private copy, or an older mapped base's tail)

    # --- search and status ---------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        threshold: float,
        *,
        persons: Iterable[int] | None = None,
        include_unassigned: bool = False,
    ) -> list[QueryResult]:
        return self.index.search(queries, k, threshold, persons=persons, include_unassigned=include_unassigned)

    def status(self) -> IndexStatus:
        try:
            db_watermark: int | None = self.store.watermark(self.model.name)
        except Exception as exc:
            log.warning("index status: database unreachable (%s)", exc)
            db_watermark = None
        meta = read_meta(self.directory)
        index = self._index
        return IndexStatus(
            model=self.model.name,
            model_version=self.model.version,
            ready=index is not None,
            count=index.count if index else 0,
            watermark=self._watermark,
            db_watermark=db_watermark,
            lag=None if db_watermark is None else max(0, db_watermark - self._watermark),
            index_type=index.spec.describe() if index else "none",
            device=index.device if index else "none",
            tombstones=index.tombstones if index else 0,
            shared_snapshot=bool(index and index.shared),
            tail_faces=index.tail_rows if index else 0,
            snapshot_watermark=meta.watermark if meta else None,
            snapshot_age_s=(time.time() - meta.created_at) if meta else None,
            last_sync_at=self._last_sync_at,
            chosen_because=index.choice.reason if index and index.choice else None,
            memory_estimate_mb=round(index.choice.memory_bytes / 2**20, 1) if index and index.choice else None,
            memory_budget_mb=round(index.choice.budget_bytes / 2**20, 1) if index and index.choice else None,
        )


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def search_any(
    mirror: IndexMirror | None,
    store: Any,
    model: ModelInfo,
    queries: np.ndarray,
    k: int,
    threshold: float,
    *,
    persons: Iterable[int] | None = None,
    ef_search: int | None = None,
) -> tuple[list[QueryResult], str]:
    """Search through the FAISS mirror when it is ready, else through pgvector's HNSW
    index in SQL (process start, first build). Returns (results, "faiss" | "pgvector")."""
    if mirror is not None and mirror.ready:
        return mirror.search(queries, k, threshold, persons=persons), "faiss"
    from identity.store.vector_search import search_sql

    return search_sql(store, model.name, model.dim, queries, k, threshold, ef_search=ef_search, persons=persons), "pgvector"
