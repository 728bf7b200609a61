"""Hubness correction of the kNN graph's similarities (local centering).

In an embedding space some faces are close to many people (hubs: frontal, average-looking,
low-resolution) and some to nobody (profile, unusual lighting). One absolute floor then
lets a hub join a stranger and leaves an unusual face alone beside its own second photo.
Local centering (Hara et al., "Localized centering", AAAI 2015) measures each face's
typical similarity to other people, μ, and takes it out of every edge:

    s'(a, b) = s(a, b) − ½(μa − m) − ½(μb − m)

with m the median μ of the collection, so s' stays on the cosine scale of `s` and a floor
keeps its meaning (it is recalibrated with the correction on: `identity calibrate`).

μa is the mean similarity of a to its neighbours at ranks [r0, r1) among those that a
first, strict pass at the floor put in another cluster. Without that exclusion, a person
with more than r0 photos would be measured against themselves: μ would be their own high
similarity, and the correction would cut every edge between their photos. A face with no
such neighbour among its k keeps its similarities (μ = m).
"""

from __future__ import annotations

import numpy as np

from identity.cluster.knn import KnnGraph

# Ranks of the other people's faces μ averages: past the first few (which may be a
# look-alike or a photo the strict pass missed), within the default k of 20.
RANKS = (5, 20)


def typical_similarity(graph: KnnGraph, strict_labels: np.ndarray, ranks: tuple[int, int] = RANKS) -> np.ndarray:
    """μ of every face: the mean similarity to its neighbours at `ranks` among those not in
    its own strict cluster (label −1 is nobody's mate). NaN where it has none there."""
    r0, r1 = ranks
    idx = graph.indices
    valid = idx >= 0
    own = strict_labels[:, None]
    mate = valid & (own >= 0) & (strict_labels[np.maximum(idx, 0)] == own)
    other = valid & ~mate
    position = np.cumsum(other, axis=1) - 1
    counted = other & (position >= r0) & (position < r1)
    n = counted.sum(axis=1)
    total = np.where(counted, graph.similarities, 0.0).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


def centre(graph: KnnGraph, strict_labels: np.ndarray, ranks: tuple[int, int] = RANKS) -> KnnGraph:
    """The graph with hubness-corrected similarities, each row re-sorted (most similar first)."""
    mu = typical_similarity(graph, strict_labels, ranks)
    measured = ~np.isnan(mu)
    if not measured.any():
        return graph
    shift = np.where(measured, mu - np.median(mu[measured]), 0.0)
    idx = graph.indices
    sims = graph.similarities - 0.5 * (shift[:, None] + shift[np.maximum(idx, 0)])
    sims = np.where(idx >= 0, sims, -np.inf).astype(np.float32)
    order = np.argsort(-sims, axis=1, kind="stable")
    return KnnGraph(np.take_along_axis(idx, order, axis=1), np.take_along_axis(sims, order, axis=1))
