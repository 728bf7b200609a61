"""A process's own faces above a mapped snapshot: the *tail* beside the shared *base*.

Several API workers map the same snapshot file (snapshot.py, `mmap`), so its pages sit
once in the page cache. FAISS aborts on any write into a mapped index, and copying the
index before the first change would give every worker its own copy again under a steady
stream of enrollments. So a `FaceIndex` over a mapped snapshot never writes into it:
the faces added, or whose vector changed, after the snapshot's watermark go into this
tail, a small exact index (`IndexIDMap2(IndexFlatIP)`) that the process owns; search
asks the base and the tail and merges (face_index.py). The tail stays small because the
mirror writes a new snapshot when it grows past a bound (mirror.py), and every process
then maps the new file and keeps only the changes above its watermark.

Exact rather than a graph: a tail of a few thousand rows is scanned in well under a
millisecond, it can remove ids (a graph cannot), and it needs no training. Beside a flat
base the tail scores as the base does (`exact.ExactScan`: float64 sums rounded once,
ties by face id), so base + tail answer bit for bit like one private flat index; beside
a graph it is FAISS's float32 scan, the distance the graph itself computes.
"""

from __future__ import annotations

import faiss
import numpy as np

from identity.index.exact import ExactScan

# Beside a flat base, the tail keeps int8 codes (ExactScan) from this many rows: scoring
# every row of a few thousand in float64 costs a query tens of times what the codes plus
# the exact re-ranking of a few rows cost.
EXACT_QUANTISE_ABOVE = 512


class Tail:
    """`exact`: score as exact.py does (beside a flat base), else FAISS's float32 scan."""

    def __init__(self, dim: int, *, exact: bool = False) -> None:
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._exact = ExactScan(dim, quantise_above=EXACT_QUANTISE_ABOVE) if exact else None

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def nbytes(self) -> int:
        return self.index.ntotal * (4 * self.dim + 8)

    def ids(self) -> np.ndarray:
        """Face ids in row order (a view, valid until the next change)."""
        if self.index.ntotal == 0:
            return np.zeros(0, np.int64)
        return faiss.rev_swig_ptr(self.index.id_map.data(), self.index.ntotal)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(np.asarray(ids, np.int64), self.ids())

    def put(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add these faces, replacing the vectors of those already here."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        self.drop(ids[self.contains(ids)])
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.index.add_with_ids(vectors, ids)
        if self._exact is not None:
            self._exact.append(vectors, self._rows())

    def drop(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        gone = np.isin(self.ids(), ids)  # positions before FAISS compacts them; the codes follow
        self.index.remove_ids(faiss.IDSelectorBatch(ids))
        if self._exact is not None:
            self._exact.remove(gone)

    def _rows(self) -> np.ndarray:
        """The float32 rows, (n×d), a view."""
        inner = faiss.downcast_index(self.index.index)
        if inner.ntotal == 0:
            return np.zeros((0, self.dim), np.float32)
        return faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * self.dim).reshape(inner.ntotal, self.dim)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these faces (each must be here)."""
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.index.reconstruct(int(i)) for i in ids])

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every face here, copies."""
        return self.ids().copy(), self._rows().copy()

    def search(self, q: np.ndarray, k: int, selector: faiss.IDSelector | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, face ids), k columns, -1 ids past the end. `selector` speaks
        face ids. The inner flat index is searched directly, as face_index._search does
        for the base (IndexIDMap's id translation wakes an OpenMP thread per call)."""
        k = max(1, min(k, self.index.ntotal))
        if self.index.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if selector is not None:  # the selector speaks face ids, the scans see positions
            selector = faiss.IDSelectorTranslated(self.index.id_map, selector)
        ids = self.ids()
        if self._exact is not None:
            sims, pos = self._exact.search(self._rows(), q, k, labels=ids, selector=selector)
        else:
            params = None if selector is None else faiss.SearchParameters(sel=selector)
            sims, pos = faiss.downcast_index(self.index.index).search(q, k, params=params)
        return sims, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)


def merge_rows(
    first: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    second: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    k: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per query, the k most similar of two lists of live hits (similarities, face ids,
    person ids), best first, ties by face id (exact.py's order). No face is in both (a
    face lives in the base or the tail)."""
    out = []
    for (s1, i1, p1), (s2, i2, p2) in zip(first, second):
        if len(s2) == 0:
            out.append((s1, i1, p1))
            continue
        sims, ids = np.concatenate([s1, s2]), np.concatenate([i1, i2])
        order = np.lexsort((ids, -sims.astype(np.float64)))[:k]
        out.append((sims[order], ids[order], np.concatenate([p1, p2])[order]))
    return out
