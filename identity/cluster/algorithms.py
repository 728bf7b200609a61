"""Clustering algorithms over the kNN graph. Each returns raw labels (n,) int64 with -1
for noise; `identity.cluster.api.cluster_faces` then applies the constraints (same photo,
minimum size) and numbers the clusters.

Similarity is cosine on L2-normalised embeddings; where an algorithm wants a distance it
gets the euclidean one, d = sqrt(2 − 2·cos), as facenet's contributed cluster.py uses.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from sklearn.cluster import DBSCAN, HDBSCAN

from identity.cluster.knn import KnnGraph

# Distance given to the artificial edges that tie the kNN graph's separate components
# together for HDBSCAN: larger than any real distance between unit vectors (≤ 2).
_DISCONNECTED = 4.0


def cosine_to_euclidean(similarity: float | np.ndarray) -> float | np.ndarray:
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(similarity, np.float64), 0.0))


def euclidean_to_cosine(distance: float) -> float:
    return 1.0 - distance * distance / 2.0


# --- connected components (with cannot-link) --------------------------------------------


def connected_components(
    graph: KnnGraph, threshold: float, image_index: np.ndarray | None = None
) -> np.ndarray:
    """Faces linked by a chain of kNN edges with similarity ≥ threshold share a label.

    With `image_index`, two faces of one photo never share a label: components that would
    join them are rebuilt by adding their edges strongest first and refusing any merge
    that would put one photo twice in a component (constrained single linkage). Only the
    few components with such a conflict pay for that Python loop.
    """
    lo, hi, sims = graph.edges(threshold)
    labels = _components(graph.n, lo, hi)
    if image_index is None:
        return labels
    conflicted = _conflicted_labels(labels, image_index)
    if conflicted.size == 0:
        return labels
    in_conflict = np.isin(labels, conflicted)
    edge_mask = in_conflict[lo]  # both ends share a component, so one end is enough
    nodes = np.flatnonzero(in_conflict)
    roots = _constrained_union(lo[edge_mask], hi[edge_mask], sims[edge_mask], image_index, nodes)
    out = labels.copy()
    out[nodes] = labels.max() + 1 + roots
    return out


def _components(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    adjacency = sparse.coo_matrix((np.ones(len(lo), np.int8), (lo, hi)), shape=(n, n)).tocsr()
    _, labels = csgraph.connected_components(adjacency, directed=False)
    return labels.astype(np.int64)


def _conflicted_labels(labels: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """Labels (≥ 0) holding two or more faces of one image."""
    clustered = labels >= 0
    pairs = np.stack([labels[clustered], image_index[clustered]], axis=1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    return np.unique(unique[counts > 1, 0])


def _constrained_union(
    lo: np.ndarray,
    hi: np.ndarray,
    sims: np.ndarray,
    image_index: np.ndarray,
    nodes: np.ndarray,
) -> np.ndarray:
    """Root of each of `nodes` after merging along edges strongest first, never letting a
    merged group hold two faces of one image."""
    parent = {int(v): int(v) for v in nodes}
    images: dict[int, set[int]] = {int(v): {int(image_index[v])} for v in nodes}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for e in np.argsort(-sims, kind="stable"):
        a, b = find(int(lo[e])), find(int(hi[e]))
        if a == b or not images[a].isdisjoint(images[b]):
            continue
        if len(images[a]) < len(images[b]):
            a, b = b, a
        parent[b] = a
        images[a] |= images.pop(b)
    return np.array([find(int(v)) for v in nodes], np.int64)


# --- Chinese whispers ---------------------------------------------------------------------


def chinese_whispers(
    graph: KnnGraph, threshold: float, *, iterations: int = 30, seed: int = 0, batches: int = 8
) -> np.ndarray:
    """Biemann's Chinese whispers on the kNN edges above threshold, weighted by similarity.

    Every face starts in its own class and repeatedly takes the class with the largest
    total edge weight among its neighbours. Updating one face at a time in Python would
    cost minutes at 1e6 faces; instead each pass updates random eighths of the faces at
    once (vectorised), which keeps the asynchronous flavour that stops two-node
    oscillation, at a few sorts of the edge list per pass.
    """
    n = graph.n
    lo, hi, sims = graph.edges(threshold)
    src = np.concatenate([lo, hi])
    dst = np.concatenate([hi, lo])
    weight = np.concatenate([sims, sims]).astype(np.float64)
    labels = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    batch_of = np.empty(n, np.int64)
    for _ in range(iterations):
        batch_of[rng.permutation(n)] = np.arange(n) % batches
        edge_batch = batch_of[src]
        changed = 0
        for b in range(batches):
            sel = edge_batch == b
            changed += _adopt_heaviest(labels, src[sel], dst[sel], weight[sel], n)
        if changed == 0:
            break
    return labels


def _adopt_heaviest(
    labels: np.ndarray, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n: int
) -> int:
    """Set labels[v] to the neighbour label of largest total weight, for every v in src."""
    if src.size == 0:
        return 0
    key = src * n + labels[dst]
    order = np.argsort(key, kind="stable")
    key, weight = key[order], weight[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    totals = np.add.reduceat(weight, starts)
    node, label = key[starts] // n, key[starts] % n
    # Per node, the heaviest label; ties go to the smaller label so runs are reproducible.
    best = np.lexsort((label, -totals, node))
    node, label = node[best], label[best]
    first = np.r_[True, node[1:] != node[:-1]]
    node, label = node[first], label[first]
    changed = int(np.count_nonzero(labels[node] != label))
    labels[node] = label
    return changed


# --- DBSCAN and HDBSCAN -------------------------------------------------------------------


def dbscan(graph: KnnGraph, eps: float, min_samples: int) -> np.ndarray:
    """sklearn's DBSCAN on euclidean distance, given the kNN edges within eps as a sparse
    precomputed radius graph. Exact as long as no face has more than k neighbours within
    eps (k ≥ min_samples keeps core-point decisions exact regardless)."""
    lo, hi, sims = graph.edges(euclidean_to_cosine(eps))
    distances = _symmetric(graph.n, lo, hi, cosine_to_euclidean(sims))
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    return model.fit_predict(distances).astype(np.int64)


def hdbscan(
    graph: KnnGraph,
    min_cluster_size: int,
    min_samples: int | None = None,
    cluster_selection_epsilon: float = 0.0,
) -> np.ndarray:
    """sklearn's HDBSCAN on the kNN graph's euclidean distances (sparse, precomputed).

    sklearn refuses a disconnected sparse graph, and a kNN graph of faces is disconnected
    (every lone person is an island), so the components are chained by artificial edges
    longer than any real distance: the hierarchy then splits them at its root, as the
    dense N×N computation would, without ever building N×N.
    """
    n = graph.n
    min_samples = min_samples or min_cluster_size
    if n <= max(min_samples, min_cluster_size) or graph.k < min_samples:
        return np.full(n, -1, np.int64)
    lo, hi, sims = graph.edges()
    dist = cosine_to_euclidean(sims)
    comp = _components(n, lo, hi)
    reps = np.unique(comp, return_index=True)[1]
    if len(reps) > 1:
        lo = np.concatenate([lo, reps[:-1]])
        hi = np.concatenate([hi, reps[1:]])
        dist = np.concatenate([dist, np.full(len(reps) - 1, _DISCONNECTED)])
    distances = _symmetric(n, lo, hi, dist)
    model = HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
        cluster_selection_epsilon=cluster_selection_epsilon,
        metric="precomputed",
        copy=False,
    )
    return model.fit_predict(distances).astype(np.int64)


def _symmetric(n: int, lo: np.ndarray, hi: np.ndarray, values: np.ndarray) -> sparse.csr_matrix:
    # Exact duplicates have distance 0, which sparse code may read as "no edge".
    values = np.maximum(np.asarray(values, np.float64), 1e-9)
    rows = np.concatenate([lo, hi])
    cols = np.concatenate([hi, lo])
    return sparse.csr_matrix((np.concatenate([values, values]), (rows, cols)), shape=(n, n))
