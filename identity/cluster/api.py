"""Clustering a set of faces into people: quality filter → kNN graph → algorithm →
same-photo constraint → minimum size → clusters numbered by size. Also incremental
clustering, where new faces join an existing clustering."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import faiss
import numpy as np

from identity.cluster import algorithms, hubness
from identity.cluster.knn import DEFAULT_EXACT_MAX, KnnGraph, knn_graph
from identity.cluster.quality import QualityThresholds, quality_reasons
from identity.cluster.types import UNCLUSTERED, ClusterResult, FaceSet
from identity.config import Settings
from identity.errors import InputError, ModelMismatchError
from identity.vocabulary import ClusterAlgorithm

Algorithm = Literal["components", "chinese_whispers", "dbscan", "hdbscan"]
ALGORITHMS: tuple[str, ...] = ClusterAlgorithm.values()


@dataclass(frozen=True)
class ClusterParams:
    """`threshold` is a cosine similarity: the graph methods keep edges at or above it,
    DBSCAN uses eps = sqrt(2 − 2·threshold) on euclidean distance (the same cut), and
    incremental assignment requires it. HDBSCAN finds its own (relative) density cut and
    uses the threshold only as an outlier floor (`detach_outliers`).

    The floor and the merge depend on the embedding space: `from_settings` takes them from
    the configured model's calibration. The defaults here are on FaceNet's cosine scale,
    for callers that build parameters without settings (tests, benchmarks)."""

    algorithm: Algorithm = "hdbscan"
    threshold: float = 0.70
    k: int = 20
    min_cluster_size: int = 2
    min_samples: int = 1  # DBSCAN / HDBSCAN density parameter (counts the face itself)
    quality: QualityThresholds = QualityThresholds()
    same_photo_constraint: bool = True
    # HDBSCAN sub-clusters with centroids this alike are one person (measured on lfw-dev:
    # BENCHMARKS.md); above 1 disables the merge.
    merge_similarity: float = 0.8
    # Take each face's typical similarity to other people out of its edges before the
    # algorithm runs (`identity.cluster.hubness`); the floor is then on that scale.
    hubness: bool = False
    exact_max: int = DEFAULT_EXACT_MAX
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> ClusterParams:
        """The configured parameters. The floor (`threshold`) and `merge_similarity` are the
        model's (its calibration file, else its manifest entry), unless
        IDENTITY_CLUSTER_THRESHOLD is set or `overrides` name them."""
        from identity.faces import models  # torch and the networks: only when asked

        model = models.clustering(models.get_model(settings.pipeline.model), settings)
        params = cls(
            algorithm=settings.cluster.algorithm,
            threshold=model.floor,
            merge_similarity=model.merge_similarity,
            hubness=model.hubness,
            k=settings.cluster.k,
            min_cluster_size=settings.cluster.min_size,
            min_samples=settings.cluster.min_samples,
            quality=QualityThresholds(
                min_face_size=settings.cluster.min_face_size,
                min_probability=settings.cluster.min_probability,
                min_blur=settings.cluster.min_blur,
            ),
            exact_max=settings.index.exact_max if settings.index.type == "auto" else DEFAULT_EXACT_MAX,
        )
        return replace(params, **overrides)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_faces(
    faces: FaceSet,
    params: ClusterParams = ClusterParams(),
    *,
    graph: KnnGraph | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClusterResult:
    """Cluster every face of `faces`. Faces failing the quality filter are unclustered with
    a reason. Pass `graph` (built over exactly the faces that pass the filter) to reuse
    one kNN graph across several algorithms."""
    if params.algorithm not in ALGORITHMS:
        raise InputError(f"unknown clustering algorithm {params.algorithm!r}; choose one of {ALGORITHMS}")
    start = time.perf_counter()
    reasons = quality_reasons(faces, params.quality)
    kept = np.flatnonzero(reasons == "")
    sub = faces.subset(kept)
    if graph is None:
        graph = knn_graph(sub.embeddings, params.k, exact_max=params.exact_max, progress=progress)
    elif graph.n != len(sub):
        raise InputError(f"the kNN graph has {graph.n} faces but {len(sub)} passed the filter")
    raw = _run(params, graph, sub)
    labels = np.full(len(faces), UNCLUSTERED, np.int64)
    labels[kept] = finalise(raw, sub, params)
    return ClusterResult(
        labels=labels,
        algorithm=params.algorithm,
        params=params.to_dict(),
        reasons=reasons,
        seconds=time.perf_counter() - start,
    )


def centred_graph(graph: KnnGraph, threshold: float, seed: int = 0) -> KnnGraph:
    """The graph with the hubness correction applied at floor `threshold` (what
    `hubness=True` runs before the algorithm). The strict pass only decides whose faces
    count as "other people" for μ. Chinese whispers: linear in the edges, and it does not
    chain strangers the way connected components do in a large collection."""
    return hubness.centre(graph, algorithms.chinese_whispers(graph, threshold, seed=seed))


def _run(params: ClusterParams, graph: KnnGraph, faces: FaceSet) -> np.ndarray:
    if graph.n == 0:
        return np.zeros(0, np.int64)
    if params.hubness:
        graph = centred_graph(graph, params.threshold, params.seed)
    if params.algorithm == "components":
        image_index = faces.image_index if params.same_photo_constraint else None
        return algorithms.connected_components(graph, params.threshold, image_index)
    if params.algorithm == "chinese_whispers":
        return algorithms.chinese_whispers(graph, params.threshold, seed=params.seed)
    if params.algorithm == "dbscan":
        eps = float(algorithms.cosine_to_euclidean(params.threshold))
        return algorithms.dbscan(graph, eps, params.min_samples)
    labels = algorithms.hdbscan(graph, max(params.min_cluster_size, 2), params.min_samples)
    if (labels < 0).all():
        # HDBSCAN never selects the root of its hierarchy, so a collection that is one
        # person (or one person and a few strangers) can come back as all noise. With no
        # density structure to go on, the absolute floor decides.
        image_index = faces.image_index if params.same_photo_constraint else None
        return algorithms.connected_components(graph, params.threshold, image_index)
    labels = detach_outliers(labels, graph, params.threshold)
    return merge_close_clusters(labels, graph, faces.embeddings, params.merge_similarity)


def merge_close_clusters(
    labels: np.ndarray, graph: KnnGraph, embeddings: np.ndarray, similarity: float
) -> np.ndarray:
    """Merge clusters whose centroids are at least `similarity` alike. HDBSCAN's hierarchy
    must split its root, so it cuts one person's photos into sub-clusters when a collection
    holds few people; averaging cancels per-photo noise, so centroids of one person's
    sub-clusters are far more alike than those of two people. Only cluster pairs joined by
    a kNN edge are compared (linear in the graph, never clusters × clusters)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    clustered = labels >= 0
    if similarity > 1.0 or clustered.sum() == 0:
        return labels
    n_clusters = int(labels.max()) + 1
    centroids = np.zeros((n_clusters, embeddings.shape[1]), np.float64)
    np.add.at(centroids, labels[clustered], embeddings[clustered])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    lo, hi, _ = graph.edges()
    a, b = labels[lo], labels[hi]
    across = (a >= 0) & (b >= 0) & (a != b)
    pairs = np.unique(np.sort(np.stack([a[across], b[across]], axis=1), axis=1), axis=0)
    if len(pairs) == 0:
        return labels
    close = pairs[np.einsum("ij,ij->i", centroids[pairs[:, 0]], centroids[pairs[:, 1]]) >= similarity]
    if len(close) == 0:
        return labels
    links = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(n_clusters, n_clusters))
    _, merged = connected_components(links, directed=False)
    out = labels.copy()
    out[clustered] = merged[labels[clustered]]
    return out


def detach_outliers(labels: np.ndarray, graph: KnnGraph, threshold: float) -> np.ndarray:
    """Unclustered: faces with no cluster-mate among their k neighbours at similarity ≥
    threshold. HDBSCAN's density cut is relative, so it will attach a lone face to the
    nearest dense group however far it is; this restores the absolute floor."""
    labels = labels.copy()
    mate = (labels[np.maximum(graph.indices, 0)] == labels[:, None]) & (graph.indices >= 0)
    close = mate & (graph.similarities >= threshold)
    labels[(labels >= 0) & ~close.any(axis=1)] = UNCLUSTERED
    return labels


def finalise(raw: np.ndarray, faces: FaceSet, params: ClusterParams) -> np.ndarray:
    """Constraints every algorithm's output must meet, then labels 0.. by decreasing size."""
    labels = np.asarray(raw, np.int64).copy()
    if params.same_photo_constraint:
        labels = split_same_photo(labels, faces.embeddings, faces.image_index)
    return relabel_by_size(labels, params.min_cluster_size)


def relabel_by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Clusters smaller than min_size become unclustered; the rest are numbered 0.. from
    the largest (ties: by smallest member row, so numbering is reproducible)."""
    out = np.full(len(labels), UNCLUSTERED, np.int64)
    clustered = np.flatnonzero(labels >= 0)
    if clustered.size == 0:
        return out
    ids, first, inverse, sizes = np.unique(
        labels[clustered], return_index=True, return_inverse=True, return_counts=True
    )
    big = sizes >= max(min_size, 1)
    order = np.lexsort((clustered[first], -sizes))
    order = order[big[order]]
    new_id = np.full(len(ids), UNCLUSTERED, np.int64)
    new_id[order] = np.arange(len(order))
    out[clustered] = new_id[inverse]
    return out


def split_same_photo(labels: np.ndarray, embeddings: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """Split every cluster that holds two faces of one photo, until none does.

    The faces of the photo with most faces in the cluster seed one part each (they are,
    by the constraint, different people); every other member joins the part whose
    centroid it is closest to, refined for a few rounds (k-means with the seeds pinned).
    Parts still in conflict are split again in the next round; each split makes parts
    strictly smaller, so this ends.
    """
    labels = labels.copy()
    while True:
        conflicted = algorithms._conflicted_labels(labels, image_index)
        if conflicted.size == 0:
            return labels
        next_label = labels.max() + 1
        for c in conflicted:
            members = np.flatnonzero(labels == c)
            parts = _split(embeddings[members], image_index[members])
            for p in range(1, parts.max() + 1):
                labels[members[parts == p]] = next_label
                next_label += 1


def _split(x: np.ndarray, images: np.ndarray, rounds: int = 5) -> np.ndarray:
    values, counts = np.unique(images, return_counts=True)
    seeds = np.flatnonzero(images == values[np.argmax(counts)])
    centroids = x[seeds]
    for _ in range(rounds):
        parts = np.argmax(x @ centroids.T, axis=1)
        parts[seeds] = np.arange(len(seeds))
        centroids = _normalised_means(x, parts, len(seeds))
    return parts


def _normalised_means(x: np.ndarray, parts: np.ndarray, m: int) -> np.ndarray:
    sums = np.zeros((m, x.shape[1]), np.float64)
    np.add.at(sums, parts, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


# --- incremental ------------------------------------------------------------------------


def cluster_incremental(
    existing: FaceSet,
    previous: ClusterResult,
    new: FaceSet,
    params: ClusterParams = ClusterParams(),
) -> ClusterResult:
    """New faces join an existing clustering without re-clustering it.

    Rows of the result: the existing faces, then the new ones (`new` numbers its own
    photos from 0 into its own `sources`; they are taken to be photos not seen before).
    Faces the previous run filtered out keep their reason and stay unclustered. Existing
    clusters keep their members and numbers. A new face joins the existing cluster with
    the largest total similarity among its k nearest clustered faces that reach the
    threshold (the same edge rule the graph method uses), unless a face of its own photo
    is already there. The new faces left over and the previously unclustered faces are
    then clustered among themselves into new clusters numbered after the existing ones.
    Existing clusters are never merged or split here: a full re-run does that.
    """
    if existing.dim != new.dim and len(existing) and len(new):
        raise ModelMismatchError(f"existing faces are {existing.dim}-d but new faces are {new.dim}-d")
    start = time.perf_counter()
    old_labels = np.asarray(previous.labels, np.int64)
    if len(old_labels) != len(existing):
        raise InputError(f"the previous clustering has {len(old_labels)} faces, the existing set {len(existing)}")
    old_reasons = previous.reasons if previous.reasons is not None else np.full(len(existing), "")
    reasons = np.concatenate([old_reasons.astype(str), quality_reasons(new, params.quality)]).astype(object)
    reasons = reasons.astype(str)
    n_old = len(existing)
    labels = np.concatenate([old_labels, np.full(len(new), UNCLUSTERED, np.int64)])
    candidates = n_old + np.flatnonzero(reasons[n_old:] == "")
    joined = _join_existing(existing, old_labels, new, candidates - n_old, params)
    labels[candidates] = joined
    # Everyone still unclustered and not filtered out is clustered afresh, among themselves.
    rest = np.flatnonzero((labels == UNCLUSTERED) & (reasons == ""))
    if rest.size:
        combined = _concat(existing, new)
        sub = combined.subset(rest)
        graph = knn_graph(sub.embeddings, params.k, exact_max=params.exact_max)
        fresh = finalise(_run(params, graph, sub), sub, params)
        offset = old_labels.max(initial=-1) + 1
        labels[rest] = np.where(fresh >= 0, fresh + offset, UNCLUSTERED)
    return ClusterResult(
        labels=labels,
        algorithm=f"incremental+{params.algorithm}",
        params=params.to_dict(),
        reasons=reasons,
        seconds=time.perf_counter() - start,
    )


def _join_existing(
    existing: FaceSet, old_labels: np.ndarray, new: FaceSet, rows: np.ndarray, params: ClusterParams
) -> np.ndarray:
    out = np.full(len(rows), UNCLUSTERED, np.int64)
    clustered = np.flatnonzero(old_labels >= 0)
    if rows.size == 0 or clustered.size == 0:
        return out
    index = faiss.IndexFlatIP(existing.dim)
    index.add(existing.embeddings[clustered])
    k = min(params.k, clustered.size)
    sims, idx = index.search(np.ascontiguousarray(new.embeddings[rows]), k)
    neighbour_label = old_labels[clustered[np.maximum(idx, 0)]]
    votes = np.where((idx >= 0) & (sims >= params.threshold), sims, 0.0)
    # Per new face: the cluster with the largest summed similarity among qualifying neighbours.
    best_label = np.full(len(rows), UNCLUSTERED, np.int64)
    best_score = np.zeros(len(rows))
    for j in range(k):
        cand = neighbour_label[:, j]
        score = (votes * (neighbour_label == cand[:, None])).sum(axis=1)
        better = (votes[:, j] > 0) & (score > best_score)
        best_label[better], best_score[better] = cand[better], score[better]
    # Same-photo constraint: among new faces of one photo bound for one cluster, the
    # strongest wins; the others stay for the fresh clustering.
    order = np.argsort(-best_score, kind="stable")
    taken: set[tuple[int, int]] = set()
    for i in order:
        if best_label[i] < 0:
            continue
        key = (int(new.image_index[rows[i]]), int(best_label[i]))
        if key not in taken:
            taken.add(key)
            out[i] = best_label[i]
    return out


def _concat(a: FaceSet, b: FaceSet) -> FaceSet:
    offset = len(a.sources) if a.sources else (int(a.image_index.max(initial=-1)) + 1)
    both = lambda x, y: None if x is None or y is None else np.concatenate([x, y])  # noqa: E731
    return FaceSet(
        embeddings=np.concatenate([a.embeddings, b.embeddings]).reshape(-1, max(a.dim, b.dim)),
        image_index=np.concatenate([a.image_index, b.image_index + offset]),
        sources=tuple(a.sources) + tuple(b.sources),
        boxes=both(a.boxes, b.boxes),
        probabilities=both(a.probabilities, b.probabilities),
        blur=both(a.blur, b.blur),
    )
