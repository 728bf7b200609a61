"""The in-memory searchable index: FAISS vectors keyed by face id + the face→person map.

No database here: `mirror.py` feeds it from the store. Face ids are the FAISS ids.

Deletes. Flat and IVF indexes remove ids (`remove_ids`, O(N) per call, so the mirror
batches them). HNSW cannot remove, and a GPU clone does not support it either: there a
deleted face stays physically in the searched index as a *tombstone*. The face→person
map is the tombstone filter — a hit whose id is no longer in the map is dropped — and
searches over-fetch and retry with a doubled k until every query has k live hits (so
results stay exact for the index type). When tombstones exceed `TOMBSTONE_REBUILD`
of the index, `compact()` rebuilds it from its own stored vectors (HNSW keeps them
in full) or re-clones the GPU copy from the CPU one.

Person restriction. On the CPU, an `IDSelectorBatch` over the persons' face ids is
passed to FAISS, which then never scores other faces: exact for flat, and it cannot
starve (post-filtering would need k / (fraction of faces allowed) hits, i.e. the
whole index, when a watch-list of a few persons is searched in a million faces).
GPU indexes take no selectors, so there we post-filter with the same doubling loop.

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

import faiss
import numpy as np

from identity.errors import ModelMismatchError
from identity.index.device import Placement, place
from identity.index.exact import ExactScan
from identity.index.persons import ABSENT, PersonMap
from identity.index.results import live_top_k
from identity.index.spec import Choice, IndexSpec, create_index, search_params, train
from identity.search_results import QueryResult, aggregate

log = logging.getLogger(__name__)

TOMBSTONE_REBUILD = 0.10
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
                 persons: PersonMap | None = None, exact_scan_above: int = 8192, mapped: bool = False) -> None:
        self.spec = spec
        # `cpu_index` is mapped read-only from a snapshot file (snapshot.load_snapshot):
        # searched in place, copied into this process before the first physical change.
        self.mapped = mapped
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
        """Make a mapped index this process's own before FAISS writes into it (writing into a
        mapped index aborts the process). Costs one copy of the index, once; the mapped
        pages then leave this process."""
        if not self.mapped:
            return
        log.info("index: copying the mapped snapshot into this process before its first change")
        self.cpu_index = faiss.deserialize_index(faiss.serialize_index(self.cpu_index))
        self.mapped = False
        self._fast_key = None
        if self._placement is not None and not self._placement.on_gpu:  # a GPU clone is its own copy
            self._placement = place(self.cpu_index, self.spec, use_gpu=False)

    def _physical_add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
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
    def needs_compaction(self) -> bool:
        searched = self._searched().ntotal if self._placement else 0
        return searched > 0 and len(self._tombstones) > TOMBSTONE_REBUILD * searched

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
        if not isinstance(self.cpu_index, faiss.IndexIDMap2) or self.spec.kind not in ("flat", "hnsw"):
            return np.zeros(len(ids), bool)
        stored = np.stack([self.cpu_index.reconstruct(int(i)) for i in ids])
        return np.all(np.abs(stored - vectors) <= 1e-6, axis=1)

    def _replace(self, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> None:
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
            fresh = create_index(self.spec)
            fresh.add_with_ids(live_vectors, live_ids)
            self.cpu_index = fresh
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
        from identity.index.spec import sample_rows, training_sample_size

        ids, vectors = self.live_vectors()
        target = FaceIndex(spec, use_gpu=use_gpu)
        if spec.trained:
            rows = sample_rows(np.random.default_rng(seed), len(ids), training_sample_size(spec, len(ids)))
            target.train(vectors[rows])
        persons = self.persons.lookup(ids)
        for start in range(0, len(ids), chunk):
            stop = start + chunk
            target.add(ids[start:stop], persons[start:stop], vectors[start:stop])
        return target

    def compact(self) -> None:
        """Drop tombstones: rebuild the HNSW graph from its stored vectors, or re-clone
        the GPU copy from the CPU index."""
        with self._lock:
            if not self._tombstones:
                return
            if not self.spec.removable:
                ids, vectors = self.live_vectors()
                fresh = create_index(self.spec)
                fresh.add_with_ids(vectors, ids)
                self.cpu_index = fresh
            log.info("index: compacted %d tombstones (%s)", len(self._tombstones), self.spec.describe())
            self._tombstones.clear()
            self._placement = place(self.cpu_index, self.spec, use_gpu=self.use_gpu)

    # --- reading --------------------------------------------------------------------

    def physical_ids(self) -> np.ndarray:
        """Every id stored in the CPU index, live or tombstoned."""
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
        rows = np.flatnonzero(self.persons.lookup(ids) != ABSENT)
        inner = faiss.downcast_index(self.cpu_index.index)
        storage = faiss.downcast_index(inner.storage) if hasattr(inner, "storage") else inner
        vectors = storage.reconstruct_batch(rows.astype(np.int64)) if len(rows) else np.zeros((0, self.dim), np.float32)
        return ids[rows], vectors

    # --- search -----------------------------------------------------------------------

    def search_faces(
        self, queries: np.ndarray, k: int, *, persons: Iterable[int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per query, its top-k live faces: (similarities, face ids, person ids), best first.
        One FAISS call for the whole batch (plus a retry for rows short of k live hits)."""
        q = _as_queries(queries, self.dim)
        with self._lock:
            if self._placement is None or self._searched().ntotal == 0 or len(q) == 0:
                empty = (np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
                return [empty for _ in range(len(q))]
            if persons is None and len(q) == 1 and not self._tombstones and self._exact is None:
                return [self._search_one(q, k)]
            allowed = None if persons is None else np.unique(np.fromiter(persons, np.int64))
            selector = None
            if allowed is not None and not self._placement.on_gpu:
                selector = faiss.IDSelectorBatch(self.persons.faces_of(allowed))
            return self._search_rows(q, k, allowed if selector is None else None, selector)

    def _search_one(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query, no restriction, no tombstones: the approximate indexes' hot path.
        Every hit FAISS returns is live, so no retry loop; the inner index and the search
        parameters are cached, because at a fraction of a millisecond per HNSW query
        the Python around the FAISS call (parameter objects, SWIG downcasts, per-row
        loops) was a fifth of the time."""
        key = (self._placement, self.spec, k)
        if self._fast_key != key:
            index = self._searched()
            inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
            params = None if self._placement.on_gpu else search_params(self.spec, k)
            self._fast_key, self._fast = key, (index, inner, params)
        index, inner, params = self._fast
        fetch = min(index.ntotal, k)
        sims = np.empty((1, fetch), np.float32)
        pos = np.empty((1, fetch), np.int64)
        inner.search_c(1, faiss.swig_ptr(q), fetch, faiss.swig_ptr(sims), faiss.swig_ptr(pos), params)
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
            params = None if self._placement.on_gpu else search_params(self.spec, fetch, selector)
            if self._exact is not None and not self._placement.on_gpu:
                sims, ids = self._search_exact(q[pending], fetch, params)
            else:
                sims, ids = _search(index, q[pending], fetch, params)
            person_ids = self.persons.lookup(ids)
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

    def _search_exact(self, q: np.ndarray, k: int, params: faiss.SearchParameters | None):
        id_map = _id_map_view(self.cpu_index)
        selector = None
        if params is not None and params.sel is not None:
            selector = faiss.IDSelectorTranslated(self.cpu_index.id_map, params.sel)
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


def _search(index: faiss.Index, q: np.ndarray, k: int, params: faiss.SearchParameters | None):
    """`index.search`, except that an IndexIDMap's inner index is searched directly and
    positions are translated to ids here. IndexIDMap translates with an unconditional
    OpenMP loop, and on a busy CPU waking the second thread for a single query costs a
    scheduler time slice: measured 16-22 ms against a 0.04 ms search on the shared
    2-core benchmark machine (benchmarks/bench_search.py)."""
    if not isinstance(index, faiss.IndexIDMap):
        return index.search(q, k, params=params)
    if params is not None and params.sel is not None:
        # The selector speaks face ids; the inner index sees positions.
        translated = faiss.IDSelectorTranslated(index.id_map, params.sel)
        params.sel = translated
    inner = faiss.downcast_index(index.index)
    sims, pos = inner.search(q, k, params=params)
    id_map = _id_map_view(index)
    ids = np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
    return sims, ids


def _id_map_view(index: faiss.IndexIDMap) -> np.ndarray:
    """The position → id array of an IndexIDMap, as a view (no copy)."""
    if index.id_map.size() == 0:
        return np.zeros(0, np.int64)
    return faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())
