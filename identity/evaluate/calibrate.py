"""Thresholds calibrated to target false-accept rates, stored per model version.

Rule everywhere: a comparison is accepted ("same person") when its cosine similarity is
≥ the threshold. A threshold for FAR f is chosen on n impostor (different-person)
scores so that at most k = floor(f·n) of them are accepted: it is the smallest multiple
of 1e-6 strictly above the (k+1)-th highest impostor score. The empirical FAR on the
calibration scores is therefore ≤ f by construction, and the threshold is as
accepting as that allows.

Resolution: with n impostor scores, FARs below 1/n cannot be measured, only bounded.
The 1,100 different-person pairs of `pairsDevTrain.txt` resolve 1e-2 (11 accepts
allowed) and barely 1e-3 (1), not 1e-4 at all. So calibration builds its impostor
set from *every* cross-identity pair of the embedded images (3,443 lfw-dev images give
≈5.9 million), and reports for each level how many impostor comparisons and how many
allowed false accepts its threshold rests on. Those comparisons share images, so they
are not independent; the count says what the threshold was fitted on, not a
confidence interval.

Clustering parameters (the similarity floor and HDBSCAN's sub-cluster merge) are cosine
similarities as well, so they are calibrated with the thresholds, per model: the same
labelled faces are clustered as if unlabelled over a grid of (floor, merge), with and without
the hubness correction, and the setting with the best BCubed F1 against the folder names
among those with BCubed precision ≥ 0.99 is kept (`calibrate_clustering`): a wrong merge
costs a user more than a split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from identity.config import Settings
from identity.errors import InputError
from identity.faces import models
from identity.faces.models import ModelSpec

if TYPE_CHECKING:
    from identity.cluster import ClusterParams

LEVELS: dict[str, float] = {"loose": 1e-2, "normal": 1e-3, "strict": 1e-4}
_GRID = 1e-6  # thresholds are stored with 6 decimals, rounded towards "stricter"


@dataclass(frozen=True)
class LevelThreshold:
    level: str
    far: float  # the target
    similarity: float  # accept when cosine similarity >= this
    distance: float  # the same threshold as squared euclidean distance (accept when <=)
    n_impostor: int  # impostor comparisons the threshold was fitted on
    allowed_false_accepts: int  # floor(far * n_impostor)
    false_accepts: int  # impostor scores >= similarity (≤ allowed, by construction)
    empirical_far: float
    genuine_accept_rate: float | None  # TAR at this threshold on the genuine scores, if any
    n_genuine: int
    resolved: bool  # False when far < 1/n_impostor: the threshold is only an upper bound


def threshold_for_far(impostor_scores: np.ndarray, far: float) -> tuple[float, int]:
    """(threshold, allowed false accepts): at most floor(far·n) scores are ≥ threshold."""
    scores = np.asarray(impostor_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise InputError("no impostor scores to calibrate on")
    if not 0.0 < far < 1.0:
        raise InputError(f"target false-accept rate must be in (0, 1), got {far}")
    allowed = math.floor(far * scores.size + 1e-9)
    # the (allowed+1)-th highest score must be rejected, and everything above it may pass
    kth = float(np.partition(scores, scores.size - allowed - 1)[scores.size - allowed - 1])
    threshold = round((math.floor(kth / _GRID) + 1) * _GRID, 6)
    while threshold <= kth:  # floating-point rounding can land on the score itself
        threshold = round(threshold + _GRID, 6)
    return threshold, allowed


def calibrate_levels(
    impostor_scores: np.ndarray,
    genuine_scores: np.ndarray | None = None,
    levels: dict[str, float] = LEVELS,
) -> dict[str, LevelThreshold]:
    impostor = np.asarray(impostor_scores, dtype=np.float64).ravel()
    genuine = (
        None if genuine_scores is None else np.asarray(genuine_scores, dtype=np.float64).ravel()
    )
    out: dict[str, LevelThreshold] = {}
    for level, far in levels.items():
        t, allowed = threshold_for_far(impostor, far)
        fa = int(np.count_nonzero(impostor >= t))
        out[level] = LevelThreshold(
            level=level,
            far=far,
            similarity=t,
            distance=2.0 - 2.0 * t,
            n_impostor=impostor.size,
            allowed_false_accepts=allowed,
            false_accepts=fa,
            empirical_far=fa / impostor.size,
            genuine_accept_rate=None
            if genuine is None or genuine.size == 0
            else float(np.mean(genuine >= t)),
            n_genuine=0 if genuine is None else genuine.size,
            resolved=far * impostor.size >= 1.0,
        )
    return out


def all_pair_scores(
    embeddings: np.ndarray, labels: list[str] | np.ndarray, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(impostor, genuine) cosine scores of every unordered pair of rows, by label.

    Memory is O(n²/2) floats: fine for LFW-sized sets (3,443 images → 5.9 M scores).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    n = len(x)
    impostor: list[np.ndarray] = []
    genuine: list[np.ndarray] = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = x[start:stop] @ x[start:].T
        i, j = np.triu_indices(stop - start, k=1, m=n - start)  # column > row: each pair once
        vals = sims[i, j]
        same = y[start + i] == y[start + j]
        genuine.append(vals[same])
        impostor.append(vals[~same])
    return np.concatenate(impostor), np.concatenate(genuine)


# --- clustering ------------------------------------------------------------------------------
# The clustering floor and the sub-cluster merge are cosine similarities too, so they belong to
# the embedding space: fitted per model, on labelled faces clustered as if unlabelled.

# Wide enough for both spaces measured: FaceNet's cut lies near 0.7, ArcFace's much lower.
CLUSTER_FLOORS: tuple[float, ...] = tuple(round(0.10 + 0.02 * i, 2) for i in range(41))  # .10-.90
CLUSTER_MERGES: tuple[float, ...] = (
    *(round(0.40 + 0.05 * i, 2) for i in range(12)),  # .40-.95
    1.01,  # no merge
)
# A wrong merge (two people in one cluster) costs a user more than a split, so the fit only
# considers settings at least this precise (BCubed), when any is.
CLUSTER_MIN_PRECISION = 0.99


@dataclass(frozen=True)
class ClusteringFit:
    """The floor, merge and hubness correction with the best BCubed F1 among the settings of
    the grid whose BCubed precision reaches `min_precision` (all settings when none does:
    `precision_met` False); ties go to the better precision, then to no correction."""

    algorithm: str
    floor: float
    merge_similarity: float
    hubness: bool
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    pairwise_f1: float
    n_faces: int
    n_identities: int
    min_precision: float = CLUSTER_MIN_PRECISION
    precision_met: bool = True
    grid: list[dict] = field(default_factory=list, repr=False)  # floor, merge, hubness, F1, P, R

    def entry(self) -> dict:
        """What the calibration file records (everything but the grid)."""
        body = asdict(self)
        body.pop("grid")
        return body


def calibrate_clustering(
    embeddings: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    params: ClusterParams,
    *,
    image_index: np.ndarray | None = None,
    floors: Sequence[float] = CLUSTER_FLOORS,
    merges: Sequence[float] = CLUSTER_MERGES,
    hubness: Sequence[bool] = (False, True),
    min_precision: float = CLUSTER_MIN_PRECISION,
) -> ClusteringFit:
    """Cluster the faces with every (floor, merge, hubness) of the grid and `params`
    otherwise, score each clustering against `labels` (BCubed), and keep the best F1 among
    the settings at least `min_precision` precise. One kNN graph serves the grid."""
    from identity.cluster import (
        FaceSet,
        centred_graph,
        cluster_faces,
        evaluate_clustering,
        knn_graph,
    )

    truth = np.asarray(labels)
    if len(truth) != len(embeddings) or len(truth) == 0:
        raise InputError(f"{len(embeddings)} faces but {len(truth)} labels to calibrate clustering on")
    faces = FaceSet.from_embeddings(np.asarray(embeddings, np.float32), image_index)
    graph = knn_graph(faces.embeddings, params.k, exact_max=params.exact_max)
    trials = []
    for corrected in hubness:
        for floor in floors:
            # The correction depends on the floor (its strict pass), not on the merge: it is
            # applied once per floor and the merges run on the corrected graph, which is
            # what cluster_faces with hubness=True would compute for each of them.
            floor_graph = centred_graph(graph, float(floor), params.seed) if corrected and graph.n else graph
            for merge in merges:
                trial = replace(params, threshold=float(floor), merge_similarity=float(merge), hubness=False)
                m = evaluate_clustering(truth, cluster_faces(faces, trial, graph=floor_graph).labels)
                trials.append((floor, merge, bool(corrected), m))
    if not trials:
        raise InputError("an empty grid of clustering parameters")
    precise = [t for t in trials if t[3].bcubed_precision >= min_precision]
    floor, merge, corrected, m = max(
        precise or trials,
        key=lambda t: (round(t[3].bcubed_f1, 6), round(t[3].bcubed_precision, 6), not t[2]),
    )
    grid = [
        {"floor": f, "merge_similarity": g, "hubness": h, "bcubed_f1": r.bcubed_f1,
         "bcubed_precision": r.bcubed_precision, "bcubed_recall": r.bcubed_recall}
        for f, g, h, r in trials
    ]
    return ClusteringFit(
        algorithm=str(params.algorithm),
        floor=float(floor),
        merge_similarity=float(merge),
        hubness=corrected,
        bcubed_precision=m.bcubed_precision,
        bcubed_recall=m.bcubed_recall,
        bcubed_f1=m.bcubed_f1,
        pairwise_f1=m.pairwise_f1,
        n_faces=len(truth),
        n_identities=len(np.unique(truth)),
        min_precision=min_precision,
        precision_met=bool(precise),
        grid=grid,
    )


# --- calibration file ------------------------------------------------------------------------
# One writer and one reader of the file: identity.faces.models.calibration. Calibration adds, next to the
# `similarity` and `far` it reads, the figures that explain each number.


def level_entries(levels: dict[str, LevelThreshold]) -> dict[str, dict]:
    return {
        name: {
            "similarity": lt.similarity,
            "far": lt.far,
            "distance": lt.distance,
            "n_impostor": lt.n_impostor,
            "allowed_false_accepts": lt.allowed_false_accepts,
            "false_accepts": lt.false_accepts,
            "empirical_far": lt.empirical_far,
            "genuine_accept_rate": lt.genuine_accept_rate,
            "n_genuine": lt.n_genuine,
            "resolved": lt.resolved,
        }
        for name, lt in levels.items()
    }


def write_calibration(
    levels: dict[str, LevelThreshold],
    spec: ModelSpec,
    settings: Settings,
    *,
    source: str,
    clustering: ClusteringFit | None = None,
) -> Path:
    """Store thresholds (and clustering parameters) with the model version
    (`data_dir/calibration/<name>@<version>.json`)."""
    return models.save_calibration(
        spec,
        settings,
        level_entries(levels),
        source,
        clustering=None if clustering is None else clustering.entry(),
    )


def thresholds_by_level(spec: ModelSpec, settings: Settings) -> dict[str, float]:
    """Thresholds (cosine similarity) by level name (`loose`, `normal`, `strict`): the
    calibration file's where one exists, else the manifest's shipped defaults."""
    return models.load_thresholds(spec, settings)
