"""The in-memory searchable index: FAISS vectors keyed by face id + the face→person map.

No database here: `mirror.py` feeds it from the store. Face ids are the FAISS ids.

Deletes. Flat and IVF indexes remove ids (`remove_ids`, O(N) per call, so the mirror
batches them). HNSW (either kind) cannot remove, and a GPU clone does not support it either: there a
deleted face stays physically in the searched index as a *tombstone*. The face→person
map is the tombstone filter — a hit whose id is no longer in the map is dropped — and
searches over-fetch and retry with a doubled k until every query has k live hits (so
results stay exact for the index type). When tombstones exceed `TOMBSTONE_REBUILD`
of the index, `compact()` rebuilds it from its own stored vectors (both HNSW kinds keep
them in full) or re-clones the GPU copy from the CPU one.

Person restriction. On the CPU, an `IDSelectorBatch` over the persons' face ids is
passed to FAISS, which then never scores other faces: exact for flat, and it cannot
starve (post-filtering would need k / (fraction of faces allowed) hits, i.e. the
whole index, when a watch-list of a few persons is searched in a million faces).
GPU indexes take no selectors, so there we post-filter with the same doubling loop.

A mapped snapshot as a shared base. A snapshot mapped from its file (snapshot.py,
`mmap`) is shared, page by page, by every process that maps it; FAISS aborts on a write
into it. So such an index is a frozen *base* plus a small owned *tail* (tail.py): a face
added, or whose vector changed, goes into the tail; a deleted base face is a tombstone
(the person map drops it, as for HNSW); a changed base face is a tombstone that is still
live, its new vector in the tail (`_shadowed`: the base hit of that id is dropped, the
tail's kept); a moved face only changes the person map. A search asks both and merges by
similarity. The mirror writes a new snapshot when the tail grows past `needs_snapshot`,
and every process maps it and keeps only the changes above its watermark (mirror.py).
Indexes that are not mapped (IVF, `mmap_snapshot` off, a GPU clone) change in place.

Exact search on the CPU. A flat index keeps its float32 rows in FAISS (IndexFlatIP, the
authoritative copy that snapshots store) and, beside them, int8 codes of the same rows in
the same order (`exact.ExactScan`): a query scans the codes, then re-ranks exactly every row
whose quantisation bound does not rule it out. Same answer as a scan of the float32 rows
(see exact.py for the bound), a quarter of the bytes read. The codes are rebuilt from the
rows when a snapshot is loaded, never stored. A GPU clone searches the float32 rows.

Concurrency. One lock around searches and updates: FAISS is not safe for a search
concurrent with add/remove, and a CPU search already uses every core (OpenMP), so
concurrent searches would gain little.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from identity.errors import ModelMismatchError
from identity.index.device import Placement, place
from identity.index.exact import ExactScan
from identity.index.invlists import fit_inverted_lists
from identity.index.persons import ABSENT, PersonMap
from identity.index.results import live_top_k
from identity.index.rerank import RerankedIndex
from identity.index.spec import (
    Choice,
    IndexSpec,
    create_index,
    sample_rows,
    search_params,
    train,
    training_sample_size,
)
from identity.index.tail import Tail, merge_rows
from identity.search_results import QueryResult, aggregate

log = logging.getLogger(__name__)

TOMBSTONE_REBUILD = 0.10
# A tail beside a mapped base asks for a new snapshot past this share of the base's rows
# (tail rows + base tombstones), and never below TAIL_MIN rows: the tail is scanned in
# full by every query (tail.py), so its size bounds what it adds to every search.
TAIL_SHARE = 0.05
TAIL_MIN = 5_000
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # face ids, person ids (-1 none), vectors


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ModelMismatchError(f"query vectors of shape {q.shape} do not fit an index of dimension {dim}")
    return q


class FaceIndex:
    """`exact_scan_above`: a flat index with at least this many faces searches through
    int8 codes plus exact re-ranking (exact.py); below it, every row is scored exactly
    (the same answer; two stages only pay off on large stores)."""

    def __init__(self, spec: IndexSpec, *, use_gpu: bool = False, cpu_index: faiss.Index | None = None,
                 persons: PersonMap | None = None, exact_scan_above: int = 8192, mapped: bool = False,
                 source: Path | None = None) -> None:
        self.spec = spec
        # `cpu_index` is mapped read-only from the snapshot file `source`
        # (snapshot.load_snapshot): the frozen base beside a tail (see the module's doc).
        self.mapped = mapped
        self.source = source
        self.use_gpu = use_gpu
        self.cpu_index = cpu_index if cpu_index is not None else create_index(spec)
        self.persons = persons if persons is not None else PersonMap()
        self.exact_scan_above = exact_scan_above
        self._lock = threading.RLock()
        self._placement: Placement | None = None
        self._tombstones: set[int] = set()  # ids deleted but still inside the searched index
        self._exact: ExactScan | None = None
        self._fast_key: tuple | None = None  # cache of _search_one
        self._fast: tuple = ()
        self.choice: Choice | None = None  # why this index was built so (spec.choose), when known
        self._apply_physical_state()
        # A GPU clone is the process's own copy anyway: there the base is copied (`_own`).
        self._tail: Tail | None = None
        if mapped and self._placement is not None and not self._placement.on_gpu:
            self._tail = Tail(self.dim, exact=self._exact is not None)
        self._shadowed: set[int] = set()  # live base faces whose current vector is in the tail

    def _apply_physical_state(self) -> None:
        # Ids physically present in the searched index but absent from the person map
        # (e.g. an HNSW snapshot loaded with tombstones) are tombstones.
        if self.cpu_index.is_trained and self.cpu_index.ntotal:
            present = self.physical_ids()
            dead = present[self.persons.lookup(present) == ABSENT]
            self._tombstones = set(dead.tolist())
        if self.cpu_index.is_trained:
            self._placement = place(self.cpu_index, self.spec, use_gpu=self.use_gpu)
        self._exact = None
        if self._flat_storage() is not None:
            self._exact = ExactScan(self.dim, quantise_above=self.exact_scan_above)
            store = self._flat_storage()
            if len(store) >= self.exact_scan_above:
                self._exact.fit(store)

    def _flat_storage(self) -> np.ndarray | None:
        """The float32 rows of a CPU flat index as an (n×d) view (no copy), in FAISS
        position order; None for other index types."""
        index = self.cpu_index
        if not isinstance(index, faiss.IndexIDMap):
            return None
        inner = faiss.downcast_index(index.index)
        if type(inner) is not faiss.IndexFlatIP:
            return None
        n = inner.ntotal
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)

    def _own(self) -> None:
        """Make a mapped index this process's own: one private index holding the base
        with the tail folded in (writing into a mapped index aborts the process). Costs a
        copy of the index; the mapped pages then leave this process. Only a GPU clone's
        CPU copy, and `compact()`, need it: otherwise changes go to the tail."""
        if not self.mapped:
            return
        log.info("index: copying the mapped snapshot into this process")
        folding = self._tail is not None
        self.cpu_index = self.folded() if folding else self._private_copy()
        self.mapped, self._tail, self.source = False, None, None
        self._shadowed.clear()
        self._fast_key = None
        if folding:  # new rows: tombstones, placement and exact-scan codes from scratch
            self._apply_physical_state()
        elif self._placement is not None and not self._placement.on_gpu:  # a GPU clone is its own copy
            self._placement = place(self.cpu_index, self.spec, use_gpu=False)

    def _private_copy(self) -> faiss.Index:
        """A copy of the mapped base that this process owns. Read from its file when it
        is still there (snapshot files are never rewritten, only replaced and unlinked):
        `faiss.clone_index` keeps the mapped views, and serialising holds two copies."""
        if self.source is not None and self.source.exists():
            return faiss.read_index(str(self.source))
        return faiss.deserialize_index(faiss.serialize_index(self.cpu_index))

    def folded(self) -> faiss.Index:
        """One CPU index holding every live face, e.g. to write a snapshot: the index
        itself, or beside a tail a private copy of the base with the tail folded in.
        An HNSW graph cannot drop a row, and one id cannot be live in two rows, so a graph
        with changed base faces (or tombstones due for compaction) is rebuilt instead."""
        with self._lock:
            if self._tail is None:
                return self.cpu_index
            base_rows = self.cpu_index.ntotal
            if not self.spec.removable and (self._shadowed or len(self._tombstones) > TOMBSTONE_REBUILD * base_rows):
                return self._filled(*self.live_vectors())
            index = self._private_copy()
            if self.spec.removable and self._tombstones:
                index.remove_ids(faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64, len(self._tombstones))))
            ids, vectors = self._tail.rows()
            if len(ids):
                index.add_with_ids(vectors, ids)
            return index

    def _physical_add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if self._tail is not None:
            self._tail.put(ids, vectors)
            return
        self._own()
        self.cpu_index.add_with_ids(vectors, ids)
        if self._exact is not None:
            self._exact.append(vectors, self._flat_storage())

    def _physical_remove(self, ids: np.ndarray) -> None:
        self._own()
        if self._exact is not None:
            # Positions before FAISS compacts them; the codes are compacted the same way.
            gone = np.isin(_id_map_view(self.cpu_index), ids)
            self.cpu_index.remove_ids(faiss.IDSelectorBatch(ids))
            self._exact.remove(gone)
        else:
            self.cpu_index.remove_ids(faiss.IDSelectorBatch(ids))

    # --- properties -----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def count(self) -> int:
        """Live faces."""
        return len(self.persons)

    @property
    def device(self) -> str:
        return self._placement.device if self._placement else "cpu"

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def shared(self) -> bool:
        """Serving a mapped snapshot (shared with other processes) plus an owned tail."""
        return self._tail is not None

    @property
    def tail_rows(self) -> int:
        return len(self._tail) if self._tail is not None else 0

    @property
    def needs_compaction(self) -> bool:
        if self._tail is not None:  # a mapped base is never rewritten: see needs_snapshot
            return False
        searched = self._searched().ntotal if self._placement else 0
        return searched > 0 and len(self._tombstones) > TOMBSTONE_REBUILD * searched

    @property
    def needs_snapshot(self) -> bool:
        """The tail (rows, and base rows it made dead) has outgrown its bound beside the
        mapped base: time for a new snapshot, which every process then maps (mirror.py)."""
        if self._tail is None:
            return False
        grown = len(self._tail) + len(self._tombstones)
        return grown > max(TAIL_MIN, TAIL_SHARE * self.cpu_index.ntotal)

    def _searched(self) -> faiss.Index:
        if self._placement is None:
            raise RuntimeError("index is not trained yet")
        return self._placement.index

    # --- building -------------------------------------------------------------------

    def train(self, sample: np.ndarray) -> None:
        with self._lock:
            train(self.cpu_index, sample)
            self._apply_physical_state()

    def add(self, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> int:
        """Add faces; ids already present are skipped (replaying a change twice is harmless).
        Returns the number added."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return 0
        vectors = _as_queries(vectors, self.dim)
        with self._lock:
            new = self.persons.lookup(ids) == ABSENT
            new &= ~np.isin(ids, np.fromiter(self._tombstones, np.int64, len(self._tombstones)))
            if not new.all():
                ids, persons, vectors = ids[new], np.asarray(persons)[new], vectors[new]
            if len(ids) == 0:
                return 0
            self._physical_add(vectors, ids)
            if self._placement is not None and self._placement.on_gpu:
                self._placement.index.add_with_ids(vectors, ids)
            if len(ids) > 64:
                self.persons.extend(ids, persons)
            else:
                for face_id, person in zip(ids.tolist(), np.asarray(persons).tolist()):
                    self.persons.set(face_id, person)
            return len(ids)

    def add_batches(self, batches: Iterable[Batch]) -> int:
        return sum(self.add(*batch) for batch in batches)

    # --- changes ----------------------------------------------------------------------

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove faces (absent ids are ignored). Returns the number removed."""
        ids = np.asarray(ids, np.int64)
        with self._lock:
            present = ids[self.persons.lookup(ids) != ABSENT]
            if len(present) == 0:
                return 0
            for face_id in present.tolist():
                self.persons.remove(face_id)
            if self._tail is not None:
                # A tail row goes; a base row stays in the file, dead (a tombstone).
                in_tail = self._tail.contains(present)
                self._tail.drop(present[in_tail])
                self._tombstones.update(present[~in_tail].tolist())
                self._shadowed.difference_update(present.tolist())
                return len(present)
            if self.spec.removable:
                self._physical_remove(present)
            if self._placement is not None and (self._placement.on_gpu or not self.spec.removable):
                self._tombstones.update(present.tolist())
            return len(present)

    def reassign(self, face_id: int, person_id: int) -> bool:
        """Move a face to another person (or to none, -1). False when the face is absent."""
        with self._lock:
            if self.persons.get(face_id) == ABSENT:
                return False
            self.persons.set(face_id, person_id)
            return True

    def upsert(self, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> None:
        """Make these faces' current rows searchable: add the new ones, re-assign the
        moved ones, and replace those whose vector changed (re-embedding)."""
        ids = np.asarray(ids, np.int64)
        persons = np.asarray(persons, np.int64)
        vectors = _as_queries(vectors, self.dim) if len(ids) else np.zeros((0, self.dim), np.float32)
        with self._lock:
            present = self.persons.lookup(ids) != ABSENT
            self.add(ids[~present], persons[~present], vectors[~present])
            if not present.any():
                return
            ids, persons, vectors = ids[present], persons[present], vectors[present]
            changed = ~self._same_vectors(ids, vectors)
            for face_id, person in zip(ids[~changed].tolist(), persons[~changed].tolist()):
                self.persons.set(face_id, person)
            if changed.any():
                self._replace(ids[changed], persons[changed], vectors[changed])

    def _same_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        # Only IndexIDMap2 can look a vector up by id (IVF-PQ keeps codes, not vectors):
        # elsewhere every update is treated as a changed vector, which is merely slower.
        if not isinstance(self.cpu_index, faiss.IndexIDMap2) or self.spec.kind not in ("flat", "hnsw", "hnsw-sq8"):
            return np.zeros(len(ids), bool)
        if self._tail is not None and len(self._tail):
            in_tail = self._tail.contains(ids)
            stored = np.empty((len(ids), self.dim), np.float32)
            stored[in_tail] = self._tail.vectors(ids[in_tail])
            if (~in_tail).any():
                stored[~in_tail] = np.stack([self.cpu_index.reconstruct(int(i)) for i in ids[~in_tail]])
        else:
            stored = np.stack([self.cpu_index.reconstruct(int(i)) for i in ids])
        return np.all(np.abs(stored - vectors) <= 1e-6, axis=1)

    def _replace(self, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> None:
        if self._tail is not None:
            # The new vector goes to the tail; a base row becomes a live tombstone.
            from_base = ids[~self._tail.contains(ids)].tolist()
            self._tail.put(ids, vectors)
            self._tombstones.update(from_base)
            self._shadowed.update(from_base)
            for face_id, person in zip(ids.tolist(), persons.tolist()):
                self.persons.set(face_id, person)
            return
        if self.spec.removable:
            self._physical_remove(ids)
            self._physical_add(vectors, ids)
        else:
            # HNSW cannot drop the old vector, and one id cannot be both live and a
            # tombstone: rebuild the graph with the new vectors (rare: re-embedding only).
            live_ids, live_vectors = self.live_vectors()
            order = np.argsort(live_ids)
            live_ids, live_vectors = live_ids[order], live_vectors[order]
            pos = np.searchsorted(live_ids, ids)
            live_vectors[pos] = vectors
            self.cpu_index = self._filled(live_ids, live_vectors)
            self._tombstones.clear()
        for face_id, person in zip(ids.tolist(), persons.tolist()):
            self.persons.set(face_id, person)
        if self._placement is not None and (self._placement.on_gpu or not self.spec.removable):
            self._placement = place(self.cpu_index, self.spec, use_gpu=self.use_gpu)
            self._tombstones.clear()

    def rebuilt_as(
        self, spec: IndexSpec, *, use_gpu: bool = False, seed: int = 0, chunk: int = 262_144
    ) -> "FaceIndex":
        """A new index of another type holding this one's live faces (trained on a random
        sample of them). Used to stage a streamed build in a flat index, whose size is
        only known at the end, before choosing the final type."""
        ids, vectors = self.live_vectors()
        target = FaceIndex(spec, use_gpu=use_gpu)
        if spec.trained:
            rows = sample_rows(np.random.default_rng(seed), len(ids), training_sample_size(spec, len(ids)))
            target.train(vectors[rows])
        persons = self.persons.lookup(ids)
        for start in range(0, len(ids), chunk):
            stop = start + chunk
            target.add(ids[start:stop], persons[start:stop], vectors[start:stop])
        target.fit_lists()
        return target

    def fit_lists(self) -> int:
        """Once an IVF index is filled batch by batch: its inverted lists refitted to what
        they hold (identity/index/invlists.py); bytes of codes moved. A mapped base has
        exact sizes already."""
        with self._lock:
            if self._tail is not None:
                return 0
            self._fast_key = None
            return fit_inverted_lists(self.cpu_index)

    def compact(self) -> None:
        """Drop tombstones: rebuild the HNSW graph from its stored vectors, or re-clone
        the GPU copy from the CPU index. A mapped base is copied into the process first
        (the mirror writes a new snapshot instead, which every process can map)."""
        with self._lock:
            if not self._tombstones:
                return
            if self._tail is not None:
                self._own()
            if not self.spec.removable:
                self.cpu_index = self._filled(*self.live_vectors())
            log.info("index: compacted %d tombstones (%s)", len(self._tombstones), self.spec.describe())
            self._tombstones.clear()
            self._placement = place(self.cpu_index, self.spec, use_gpu=self.use_gpu)

    def _filled(self, ids: np.ndarray, vectors: np.ndarray, *, seed: int = 0) -> faiss.Index:
        """A new CPU index of this spec holding exactly these rows (trained on a sample of
        them when the kind needs training)."""
        fresh = create_index(self.spec)
        if self.spec.trained and len(ids):
            train(fresh, vectors[sample_rows(np.random.default_rng(seed), len(ids),
                                             training_sample_size(self.spec, len(ids)))])
        if len(ids):
            fresh.add_with_ids(vectors, ids)
        return fresh

    # --- reading --------------------------------------------------------------------

    def physical_ids(self) -> np.ndarray:
        """Every id stored in the CPU index (the base, beside a tail), live or tombstoned."""
        index = self.cpu_index
        if isinstance(index, faiss.IndexIDMap):
            return faiss.vector_to_array(index.id_map).astype(np.int64)
        invlists = faiss.extract_index_ivf(index).invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(invlists.nlist)
            if invlists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of live faces, read back from an index that stores vectors in
        full (flat, HNSW). IVF-PQ stores only codes, so it cannot give them back."""
        if not isinstance(self.cpu_index, faiss.IndexIDMap):
            raise NotImplementedError("only flat and HNSW indexes store full vectors")
        ids = self.physical_ids()
        rows = np.flatnonzero(self._hide_shadowed(ids, self.persons.lookup(ids)) != ABSENT)
        storage = _float_rows(faiss.downcast_index(self.cpu_index.index))
        vectors = storage.reconstruct_batch(rows.astype(np.int64)) if len(rows) else np.zeros((0, self.dim), np.float32)
        if self._tail is not None and len(self._tail):
            tail_ids, tail_vectors = self._tail.rows()
            return np.concatenate([ids[rows], tail_ids]), np.concatenate([vectors, tail_vectors])
        return ids[rows], vectors

    def _hide_shadowed(self, ids: np.ndarray, persons: np.ndarray) -> np.ndarray:
        """`persons` (looked up for base hits `ids`) with ABSENT where the hit is a base
        row whose face now lives in the tail with another vector."""
        if self._shadowed:
            persons = persons.copy()
            persons[np.isin(ids, np.fromiter(self._shadowed, np.int64, len(self._shadowed)))] = ABSENT
        return persons

    # --- search -----------------------------------------------------------------------

    def search_faces(
        self, queries: np.ndarray, k: int, *, persons: Iterable[int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per query, its top-k live faces: (similarities, face ids, person ids), best first.
        One FAISS call for the whole batch (plus a retry for rows short of k live hits)."""
        q = _as_queries(queries, self.dim)
        empty = (np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        with self._lock:
            if self._placement is None or self._searched().ntotal + self.tail_rows == 0 or len(q) == 0:
                return [empty for _ in range(len(q))]
            allowed = None if persons is None else np.unique(np.fromiter(persons, np.int64))
            selector = None  # over face ids
            if allowed is not None and not self._placement.on_gpu:
                selector = faiss.IDSelectorBatch(self.persons.faces_of(allowed))
            if self._searched().ntotal == 0:
                rows = [empty for _ in range(len(q))]
            elif persons is None and len(q) == 1 and not self._tombstones and self._exact is None:
                rows = [self._search_one(q, k)]
            else:
                rows = self._search_rows(q, k, allowed if selector is None else None, selector)
            if self.tail_rows:
                # Tail rows are all live (a deleted tail face is removed), so k of them suffice.
                sims, ids = self._tail.search(q, k, selector)
                rows = merge_rows(rows, live_top_k(sims, ids, self.persons.lookup(ids), k), k)
            return rows

    def _search_one(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query, no restriction, no tombstones: the approximate indexes' hot path.
        Every hit FAISS returns is live, so no retry loop; the inner index and the search
        parameters are cached, because at a fraction of a millisecond per HNSW query
        the Python around the FAISS call (parameter objects, SWIG downcasts, per-row
        loops) was a fifth of the time."""
        index = self._searched()
        # The row count is part of the key: an add may move hnsw-sq8's float32 rows, which
        # the cached re-ranker views.
        key = (self._placement, self.spec, k, index.ntotal)
        if self._fast_key != key:
            inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
            if isinstance(inner, faiss.IndexRefine):
                prepared: RerankedIndex | faiss.SearchParameters | None = _reranker(
                    inner, self.spec, min(index.ntotal, k), None)
            else:
                prepared = None if self._placement.on_gpu else search_params(self.spec, k)
            self._fast_key, self._fast = key, (index, inner, prepared)
        index, inner, prepared = self._fast
        fetch = min(index.ntotal, k)
        if isinstance(prepared, RerankedIndex):
            sims, pos = prepared.search_one(q, fetch)
        else:
            sims = np.empty((1, fetch), np.float32)
            pos = np.empty((1, fetch), np.int64)
            inner.search_c(1, faiss.swig_ptr(q), fetch, faiss.swig_ptr(sims), faiss.swig_ptr(pos), prepared)
        if inner is not index:
            id_map = _id_map_view(index)
            ids = np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)[0]
        else:
            ids = pos[0]
        live = ids >= 0
        sims, ids = sims[0][live], ids[live]
        return sims, ids, self.persons.lookup(ids)

    def _search_rows(self, q, k, post_filter, selector):
        index = self._searched()
        ntotal = index.ntotal
        fetch = min(ntotal, k + min(len(self._tombstones), k) if post_filter is None else 2 * k)
        out: list = [None] * len(q)
        pending = np.arange(len(q))
        while len(pending):
            if self._exact is not None and not self._placement.on_gpu:
                sims, ids = self._search_exact(q[pending], fetch, selector)
            elif self._placement.on_gpu:
                sims, ids = index.search(q[pending], fetch)
            else:
                sims, ids = _search(index, self.spec, q[pending], fetch, selector)
            person_ids = self._hide_shadowed(ids, self.persons.lookup(ids))
            keep = None if post_filter is None else np.isin(person_ids, post_filter)
            rows = live_top_k(sims, ids, person_ids, k, keep)
            short = []
            for row, result, got_all in zip(pending, rows, (ids >= 0).all(axis=1)):
                # Fewer than k live hits while FAISS returned a full list: the missing
                # ones may lie beyond `fetch`, so ask again for more.
                if len(result[0]) < k and got_all and fetch < ntotal:
                    short.append(row)
                else:
                    out[row] = result
            pending = np.asarray(short, np.int64)
            fetch = min(ntotal, fetch * 2)
        return out

    def _search_exact(self, q: np.ndarray, k: int, selector: faiss.IDSelector | None):
        id_map = _id_map_view(self.cpu_index)
        if selector is not None:
            selector = faiss.IDSelectorTranslated(self.cpu_index.id_map, selector)
        sims, pos = self._exact.search(self._flat_storage(), q, k, labels=id_map, selector=selector)
        return sims, np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        threshold: float,
        *,
        persons: Iterable[int] | None = None,
        include_unassigned: bool = False,
    ) -> list[QueryResult]:
        """Per query, persons among its top-k faces at or above `threshold` (else unknown)."""
        rows = self.search_faces(queries, k, persons=persons)
        return [aggregate(s, i, p, threshold, include_unassigned=include_unassigned) for s, i, p in rows]


def _search(index: faiss.Index, spec: IndexSpec, q: np.ndarray, k: int, selector: faiss.IDSelector | None):
    """`index.search` with the spec's parameters and an optional selector over face ids,
    except that an IndexIDMap's inner index is searched directly and positions are
    translated to ids here. IndexIDMap translates with an unconditional
    OpenMP loop, and on a busy CPU waking the second thread for a single query costs a
    scheduler time slice: measured 16-22 ms against a 0.04 ms search on the shared
    2-core benchmark machine (benchmarks/bench_search.py)."""
    if not isinstance(index, faiss.IndexIDMap):
        return index.search(q, k, params=search_params(spec, k, selector))
    if selector is not None:
        # The selector speaks face ids; the inner index sees positions.
        selector = faiss.IDSelectorTranslated(index.id_map, selector)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        sims, pos = _refined(inner, spec, q, k, selector)
    else:
        sims, pos = inner.search(q, k, params=search_params(spec, k, selector))
    id_map = _id_map_view(index)
    ids = np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
    return sims, ids


def _id_map_view(index: faiss.IndexIDMap) -> np.ndarray:
    """The position → id array of an IndexIDMap, as a view (no copy)."""
    if index.id_map.size() == 0:
        return np.zeros(0, np.int64)
    return faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())


def _float_rows(inner: faiss.Index) -> faiss.Index:
    """The part of an IndexIDMap's inner index that holds the float32 rows: HNSW's
    storage, the refine wrapper's exact copy, or the flat index itself."""
    if isinstance(inner, faiss.IndexRefine):
        return faiss.downcast_index(inner.refine_index)
    if hasattr(inner, "storage"):
        return faiss.downcast_index(inner.storage)
    return inner


def _refined(inner: faiss.IndexRefine, spec: IndexSpec, q: np.ndarray, k: int, selector: faiss.IDSelector | None):
    """hnsw-sq8's search, (scores, positions): the graph over 8-bit codes proposes
    rerank_factor·k candidates and `RerankedIndex` re-scores them exactly from the float32
    rows the refine wrapper keeps. Not `IndexRefine.search`: it opens an OpenMP region
    even for one query, and a single query then waits for the second thread whenever the
    other core is busy (BENCHMARKS.md, "Approximate search": milliseconds instead of a
    fraction of one)."""
    return _reranker(inner, spec, k, selector).search(q, k)


def _reranker(inner: faiss.IndexRefine, spec: IndexSpec, k: int, selector: faiss.IDSelector | None) -> RerankedIndex:
    """hnsw-sq8's graph and float32 rows (a view: valid until the index changes) as a
    `RerankedIndex` for a top-k."""
    graph = faiss.downcast_index(inner.base_index)
    rows = faiss.downcast_index(inner.refine_index)
    view = faiss.rev_swig_ptr(rows.get_xb(), rows.ntotal * rows.d).reshape(rows.ntotal, rows.d)
    return RerankedIndex(graph, view, rerank=spec.rerank_factor * k, params=search_params(spec, k, selector))
