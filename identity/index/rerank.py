"""Approximate search over compressed codes, re-ranked with the full vectors kept on disk.

For stores whose float32 rows do not fit in memory beside everything else (10M × 512-d
is 20 GB): a compressed FAISS index (IVF-PQ, d/4 bytes a face) lives in RAM, the float32
rows live in a file that is memory-mapped, and each query's k' best approximate hits
are re-scored exactly (`exact.exact_scores`) from that file. Only k' rows per query are
touched on disk, so the page cache holds the hot ones and the process's resident memory
stays at the codes' size.

Re-ranking repairs the order of the candidates (PQ scores are coarse), so recall@k
becomes the share of true neighbours among the k' candidates; it cannot recover a
neighbour the coarse search never visited (nprobe sets that).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from identity.index.exact import exact_scores, top_k_order


def open_rows(path: Path, dim: int, *, writable: bool = False) -> np.ndarray:
    """The float32 row file as an (n×dim) memory map (a raw file: n·dim·4 bytes)."""
    size = Path(path).stat().st_size
    if size % (4 * dim):
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dim}-d float32 rows")
    return np.memmap(path, dtype=np.float32, mode="r+" if writable else "r", shape=(size // (4 * dim), dim))


class RerankedIndex:
    """`approx` (any FAISS index whose labels are row positions in `rows`) + exact re-ranking.

    Parameters:
      approx       a trained, filled FAISS index (IVF-PQ, HNSW over codes, ...).
      rows         (n×d) float32 rows in position order, usually `open_rows(...)`.
      rerank       candidates fetched per query: k' = max(rerank, k).
      params       FAISS search parameters for `approx` (nprobe, efSearch).
    """

    def __init__(self, approx: faiss.Index, rows: np.ndarray, *, rerank: int = 100,
                 params: faiss.SearchParameters | None = None) -> None:
        if approx.ntotal != len(rows):
            raise ValueError(f"index has {approx.ntotal} rows, the row file {len(rows)}")
        self.approx = approx
        self.rows = rows
        self.rerank = rerank
        self.params = params

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    def search_one(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for one contiguous float32 (1×d) query, without the per-call wrappers
        (SWIG's argument checks, a loop over one row): the serving hot path."""
        fetch = max(self.rerank, k)
        found = np.empty((1, fetch), np.int64)
        approximate = np.empty((1, fetch), np.float32)  # held here: swig_ptr keeps no reference
        self.approx.search_c(1, faiss.swig_ptr(query), fetch, faiss.swig_ptr(approximate), faiss.swig_ptr(found),
                             self.params)
        return self._rerank(query, found, k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 nq×k, positions int64 nq×k) by exact score of the candidates,
        ties by position; -1 / -inf where fewer than k candidates were found."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        _, found = self.approx.search(q, max(self.rerank, k), params=self.params)
        return self._rerank(q, found, k)

    def _rerank(self, q: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's candidate positions (-1: none) re-scored exactly, best k kept."""
        scores = np.full((len(q), k), -np.inf, np.float32)
        positions = np.full((len(q), k), -1, np.int64)
        for i, cand in enumerate(found):
            cand = np.sort(cand[cand >= 0])  # sorted: the memory map is read in file order
            if len(cand) == 0:
                continue
            exact = exact_scores(q[i:i + 1], self.rows[cand])[0]
            best = top_k_order(exact, cand, k)
            scores[i, :len(best)] = exact[best]
            positions[i, :len(best)] = cand[best]
        return scores, positions
