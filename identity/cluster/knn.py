"""The k-nearest-neighbour graph every clustering method starts from.

Never an N×N matrix: FAISS answers k neighbours per face, in blocks of queries, so memory
is O(N·k). Exact (`IndexFlatIP`) up to `exact_max` faces; beyond that an inverted-file
index (`IndexIVFFlat`), whose cost grows ~N^1.5 instead of N² (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
from scipy import sparse

from identity.errors import InputError

# On a 2-core CPU exact search over 1e5 faces takes seconds, over 1e6 (1e12 dot products)
# most of an hour; IVF at nprobe 32 keeps >0.98 of the exact neighbours there.
DEFAULT_EXACT_MAX = 200_000
_QUERY_BLOCK = 32_768


@dataclass(frozen=True)
class KnnGraph:
    """Row i lists face i's k nearest other faces, most similar first. Missing neighbours
    (fewer than k other faces, or IVF found fewer) are index -1 with similarity -inf."""

    indices: np.ndarray  # (n, k) int64
    similarities: np.ndarray  # (n, k) float32, cosine

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def edges(self, min_similarity: float = -np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges (i < j) with similarity ≥ min_similarity, each once."""
        rows = np.repeat(np.arange(self.n, dtype=np.int64), self.k)
        cols = self.indices.ravel()
        sims = self.similarities.ravel()
        keep = (cols >= 0) & (sims >= min_similarity)
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
        lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
        # An edge found from both ends appears twice; keep one (the similarities agree).
        key = lo * self.n + hi
        _, first = np.unique(key, return_index=True)
        return lo[first], hi[first], sims[first]

    def adjacency(self, min_similarity: float = -np.inf) -> sparse.csr_matrix:
        """Symmetric sparse similarity matrix of the edges above min_similarity."""
        lo, hi, sims = self.edges(min_similarity)
        rows = np.concatenate([lo, hi])
        cols = np.concatenate([hi, lo])
        return sparse.csr_matrix((np.concatenate([sims, sims]), (rows, cols)), shape=(self.n, self.n))


def knn_graph(
    embeddings: np.ndarray,
    k: int,
    *,
    exact_max: int = DEFAULT_EXACT_MAX,
    nprobe: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> KnnGraph:
    """k nearest neighbours (by inner product = cosine on unit vectors) of every row,
    excluding the row itself."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"embeddings must be (n, dim), got shape {x.shape}")
    n = len(x)
    if k < 1:
        raise InputError("k must be at least 1")
    if n <= 1:  # nobody to be a neighbour of
        return KnnGraph(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32))
    index = _build_index(x, exact_max=exact_max, nprobe=nprobe)
    want = min(k + 1, n)
    indices = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), -np.inf, np.float32)
    for start in range(0, n, _QUERY_BLOCK):
        stop = min(start + _QUERY_BLOCK, n)
        d, i = index.search(x[start:stop], want)
        i_block, d_block = _drop_self(i, d, np.arange(start, stop), k)
        indices[start:stop, : i_block.shape[1]] = i_block
        sims[start:stop, : d_block.shape[1]] = d_block
        if progress is not None:
            progress(stop, n)
    sims[indices < 0] = -np.inf
    return KnnGraph(indices, sims)


def _build_index(x: np.ndarray, *, exact_max: int, nprobe: int | None) -> faiss.Index:
    n, dim = x.shape
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index
    # 4·sqrt(N) lists (FAISS's guideline), but never fewer than 39 training points per list.
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # 39 points per centroid is FAISS's own floor for a stable k-means; more buys little.
    sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = nprobe or 32
    return index


def _drop_self(
    i: np.ndarray, d: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row from its result. It is usually first, but an exact
    duplicate may tie with it, so look for it by index rather than by position."""
    is_self = i == rows[:, None]
    # Rows where self was not returned (IVF miss) drop their last, least similar, entry.
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    width = i.shape[1] - 1
    i_out = i[keep].reshape(-1, width)[:, :k]
    d_out = d[keep].reshape(-1, width)[:, :k]
    return i_out, d_out
