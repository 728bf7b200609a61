"""Index snapshots on disk: written atomically, validated before use.

Layout under `<data_dir>/index/<model>/`:

    faces-<watermark>-<token>.faiss   the CPU index (faiss.write_index)
    faces-<watermark>-<token>.npz     face ids + person ids (the PersonMap)
    CURRENT.json                      metadata naming the two files above

Atomicity: the two data files get fresh names, are fsynced, and only then is
CURRENT.json replaced (write to a temp file, fsync, rename, fsync the directory).
The rename is the commit point: a crash at any moment leaves either the old snapshot
or the new one, never a mix; unreferenced files are removed afterwards. Writing
straight to files (rather than serialising to one in-memory blob) avoids a second
copy of a multi-GB index in RAM.

Several processes (the API's workers) share the directory: one writes at a time, the
holder of an advisory lock on `snapshot.lock` (`writer_lock`), and the others see
`CURRENT.json` change (`current_key`) and map the new file (mirror.py). A process that
still maps a replaced file keeps reading it: an unlinked file lives while it is mapped.

A snapshot is refused — and the caller rebuilds, logging why — when its model, model
version or dimension differs from the live model's, when its watermark is ahead of
the database's (the database was reset or restored from an older backup, so the
snapshot describes rows that may not exist), or when its files are missing/corrupt.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from identity.index.face_index import FaceIndex
from identity.index.persons import PersonMap
from identity.index.spec import Choice, IndexSpec

log = logging.getLogger(__name__)

FORMAT = 1
CURRENT = "CURRENT.json"
LOCK = "snapshot.lock"
# Index kinds whose storage FAISS can map from the file (IndexFlatCodes, HNSW, and the
# refine wrapper's rows and codes); IVF lists are always read into memory.
MAPPABLE = ("flat", "hnsw", "hnsw-sq8")


@dataclass(frozen=True)
class SnapshotMeta:
    format: int
    model: str
    model_version: str
    dim: int
    watermark: int
    spec: dict
    count: int
    tombstones: int
    faiss_file: str
    map_file: str
    created_at: float
    # Why the index was chosen so (spec.Choice), so that a loaded snapshot can say it too.
    choice: dict | None = None

    @property
    def index_spec(self) -> IndexSpec:
        return IndexSpec(**self.spec)


def snapshot_dir(data_dir: Path, model: str) -> Path:
    return Path(data_dir) / "index" / re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still happened
        pass


def write_snapshot(
    directory: Path, index: FaceIndex, *, model: str, model_version: str, watermark: int
) -> SnapshotMeta:
    """Write `index` (at `watermark`) as the current snapshot; returns its metadata.
    The caller holds the index still (no updates) while this runs, and, where several
    processes share `directory`, holds `writer_lock`. A mapped base with a tail is
    written as one index (`FaceIndex.folded`: a transient private copy in this process)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"faces-{watermark}-{secrets.token_hex(4)}"
    faiss_path, map_path = directory / f"{stem}.faiss", directory / f"{stem}.npz"
    written = index.folded()
    faiss.write_index(written, str(faiss_path))
    ids, persons = index.persons.arrays()
    with open(map_path, "wb") as fh:
        np.savez(fh, ids=ids, persons=persons)
    for path in (faiss_path, map_path):
        _fsync_file(path)
    meta = SnapshotMeta(
        format=FORMAT,
        model=model,
        model_version=model_version,
        dim=index.dim,
        watermark=watermark,
        spec=asdict(index.spec),
        count=index.count,
        tombstones=max(0, written.ntotal - index.count),
        faiss_file=faiss_path.name,
        map_file=map_path.name,
        created_at=time.time(),
        choice=None if index.choice is None else {
            "reason": index.choice.reason, "memory_bytes": index.choice.memory_bytes,
            "budget_bytes": index.choice.budget_bytes},
    )
    tmp = directory / f".{CURRENT}.{secrets.token_hex(4)}"
    with open(tmp, "w") as fh:
        json.dump(asdict(meta), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / CURRENT)
    _fsync_dir(directory)
    _remove_unreferenced(directory, keep={meta.faiss_file, meta.map_file, CURRENT})
    return meta


@contextmanager
def writer_lock(directory: Path, *, wait: bool = False) -> Iterator[bool]:
    """Yields whether this process holds the right to write the next snapshot: an
    advisory lock (flock) on `snapshot.lock`, released on exit or when the process dies.
    Without `wait`, a lock held elsewhere yields False at once: that process is writing
    a snapshot, and this one will map it instead of writing its own."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def current_key(directory: Path) -> tuple[int, int] | None:
    """Changes whenever CURRENT.json is replaced (a new inode each time): a stat, cheap
    enough for every sync, before reading the file."""
    try:
        st = os.stat(directory / CURRENT)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _remove_unreferenced(directory: Path, keep: set[str]) -> None:
    for path in directory.iterdir():
        if path.name not in keep and (path.name.startswith("faces-") or path.name.startswith(f".{CURRENT}")):
            path.unlink(missing_ok=True)


def read_meta(directory: Path) -> SnapshotMeta | None:
    path = directory / CURRENT
    if not path.is_file():
        return None
    try:
        return SnapshotMeta(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        log.warning("index snapshot %s: unreadable metadata (%s); discarding", path, exc)
        return None


def refusal(meta: SnapshotMeta, *, model: str, model_version: str, dim: int, db_watermark: int) -> str | None:
    """Why this snapshot cannot serve the live database, or None when it can."""
    if meta.format != FORMAT:
        return f"format {meta.format} is not {FORMAT}"
    if meta.model != model:
        return f"it is for model {meta.model!r}, the live model is {model!r}"
    if meta.model_version != model_version:
        return f"it is for {model} version {meta.model_version!r}, the live version is {model_version!r}"
    if meta.dim != dim:
        return f"its dimension is {meta.dim}, the model's is {dim}"
    if meta.watermark > db_watermark:
        return (
            f"its watermark {meta.watermark} is ahead of the database's {db_watermark} "
            "(database reset or restored from an older backup)"
        )
    return None


def load_snapshot(
    directory: Path,
    *,
    model: str,
    model_version: str,
    dim: int,
    db_watermark: int,
    use_gpu: bool = False,
    mmap: bool = False,
) -> tuple[FaceIndex, SnapshotMeta] | None:
    """The snapshot's index and metadata if it fits the live model and database; else
    None, with a log line saying why it was discarded.

    `mmap`: a flat or HNSW index is mapped from the file read-only (FAISS's
    IO_FLAG_MMAP_IFC) instead of copied into this process: its pages live in the page
    cache, shared by every process that maps the same snapshot (the API's worker
    processes), and loading takes a fraction of a second. FAISS must never write into a
    mapped index (it aborts the process), so `FaceIndex` keeps it as a frozen base and
    puts this process's changes in a tail beside it (face_index.py, tail.py)."""
    meta = read_meta(directory)
    if meta is None:
        log.info("index snapshot: none under %s; building from the database", directory)
        return None
    why = refusal(meta, model=model, model_version=model_version, dim=dim, db_watermark=db_watermark)
    if why is None:
        try:
            mapped = mmap and meta.index_spec.kind in MAPPABLE
            flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mapped else 0
            cpu_index = faiss.read_index(str(directory / meta.faiss_file), flags)
            with np.load(directory / meta.map_file) as arrays:
                persons = PersonMap(arrays["ids"], arrays["persons"])
            if cpu_index.d != dim:
                why = f"its faiss index has dimension {cpu_index.d}, the model's is {dim}"
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            why = f"its files cannot be read ({exc})"
    if why is not None:
        log.warning("index snapshot %s discarded: %s; rebuilding from the database", directory, why)
        return None
    index = FaceIndex(meta.index_spec, use_gpu=use_gpu, cpu_index=cpu_index, persons=persons, mapped=mapped,
                      source=directory / meta.faiss_file if mapped else None)
    if meta.choice:
        index.choice = Choice(meta.index_spec, meta.choice["reason"],
                              int(meta.choice["memory_bytes"]), int(meta.choice["budget_bytes"]))
    log.info("index snapshot loaded: %d faces at watermark %d (%s)", index.count, meta.watermark, index.spec.describe())
    return index, meta
