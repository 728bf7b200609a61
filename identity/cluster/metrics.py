"""Clustering quality against ground truth, from the contingency table only.

Convention: an unclustered face (label -1) counts as a cluster of its own (a singleton).
That is what a person sees: a face left alone, neither merged wrongly (no precision
lost) nor grouped with its person (recall lost). Every count below is a sum over the
non-zero cells of the contingency table, so the cost is O(N), never O(N²) pairs.

Pairwise: precision = same-cluster pairs that are same-person / same-cluster pairs;
recall = same-person pairs that are same-cluster / same-person pairs. With no pair on one
side, the ratio is vacuous and defined as 1.0.
BCubed (Bagga & Baldwin 1998, Amigó et al. 2009): per face, precision = share of its
cluster that is its person, recall = share of its person that is in its cluster; averaged
over faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from identity.errors import InputError


@dataclass(frozen=True)
class ClusterMetrics:
    n_faces: int
    n_clusters: int  # predicted clusters of 2+ faces (unclustered singletons not counted)
    n_identities: int  # distinct true labels
    fraction_unclustered: float
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float

    def to_dict(self) -> dict:
        return asdict(self)


def contingency(true_labels: Sequence, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells of the (predicted × true) table: (cluster id, class id, count), with
    unclustered faces given clusters of their own."""
    predicted = np.asarray(predicted, np.int64)
    true_ids = np.unique(np.asarray(true_labels), return_inverse=True)[1].astype(np.int64)
    if true_ids.shape != predicted.shape:
        raise InputError(f"{len(true_ids)} true labels but {len(predicted)} predicted labels")
    clusters = _singletons_for_unclustered(predicted)
    cells, counts = np.unique(np.stack([clusters, true_ids], axis=1), axis=0, return_counts=True)
    return cells[:, 0], cells[:, 1], counts.astype(np.int64)


def evaluate_clustering(true_labels: Sequence, predicted: np.ndarray) -> ClusterMetrics:
    predicted = np.asarray(predicted, np.int64)
    n = len(predicted)
    if n == 0:
        raise InputError("cannot evaluate a clustering of zero faces")
    cluster, klass, count = contingency(true_labels, predicted)
    cluster_sizes = np.bincount(cluster, weights=count).astype(np.int64)
    class_sizes = np.bincount(klass, weights=count).astype(np.int64)
    cluster_size, class_size = cluster_sizes[cluster], class_sizes[klass]  # per cell
    tp = _pairs(count).sum()
    predicted_pairs = _pairs(cluster_sizes).sum()
    true_pairs = _pairs(class_sizes).sum()
    p_precision = tp / predicted_pairs if predicted_pairs else 1.0
    p_recall = tp / true_pairs if true_pairs else 1.0
    b_precision = float((count * count / cluster_size).sum() / n)
    b_recall = float((count * count / class_size).sum() / n)
    unclustered = int(np.count_nonzero(predicted < 0))
    return ClusterMetrics(
        n_faces=n,
        n_clusters=len(np.unique(predicted[predicted >= 0])),
        n_identities=int(klass.max()) + 1,
        fraction_unclustered=unclustered / n,
        pairwise_precision=float(p_precision),
        pairwise_recall=float(p_recall),
        pairwise_f1=_f1(float(p_precision), float(p_recall)),
        bcubed_precision=b_precision,
        bcubed_recall=b_recall,
        bcubed_f1=_f1(b_precision, b_recall),
    )


def _singletons_for_unclustered(predicted: np.ndarray) -> np.ndarray:
    out = predicted.copy()
    alone = out < 0
    out[alone] = (out.max(initial=-1) + 1) + np.arange(np.count_nonzero(alone))
    # Compact ids so bincount stays O(N) whatever the caller's numbering.
    return np.unique(out, return_inverse=True)[1].astype(np.int64)


def _pairs(sizes: np.ndarray) -> np.ndarray:
    sizes = sizes.astype(np.int64)
    return sizes * (sizes - 1) // 2


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def subject_faces(boxes: np.ndarray, image_index: np.ndarray, image_sizes: np.ndarray | None = None) -> np.ndarray:
    """Row of each photo's subject, the one face a folder name labels when a photo holds
    several (bystanders have no known name, so they are clustered but not scored).

    facenet's align_dataset_mtcnn rule: largest box area minus twice the squared offset of
    its centre from the image centre; without image sizes, the largest box."""
    boxes = np.asarray(boxes, np.float64)
    image_index = np.asarray(image_index, np.int64)
    score = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if image_sizes is not None:
        centre = np.asarray(image_sizes, np.float64)[image_index] / 2
        offset = (boxes[:, :2] + boxes[:, 2:]) / 2 - centre
        score = score - 2.0 * (offset**2).sum(axis=1)
    order = np.lexsort((-score, image_index))
    first = np.r_[True, image_index[order][1:] != image_index[order][:-1]]
    return order[first]


def folder_metrics(faces, result) -> ClusterMetrics:
    """`identity evaluate clusters DIR`: each photo's folder name is the true person of its
    subject face (`subject_faces`); bystanders are clustered but not scored."""
    from pathlib import Path

    if faces.boxes is None or not faces.sources:
        raise InputError("folder evaluation needs the faces' boxes and photo paths")
    subjects = subject_faces(faces.boxes, faces.image_index, faces.image_sizes)
    truth = [Path(faces.source_of(int(i))).parent.name for i in subjects]
    return evaluate_clustering(truth, result.labels[subjects])
