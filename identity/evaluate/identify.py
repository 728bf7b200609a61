"""1:N identification: closed-set rank-k rates and open-set DIR at a false-alarm rate.

Protocol (LFW-style, on one labelled image set):
* gallery: the first image (in sorted order) of every person with ≥ 2 images;
* mated probes: that person's other images;
* non-mated probes (impostors): the images of people seen only once, who have no
  gallery entry.

Closed set: a mated probe is identified at rank k when its person is among the k
gallery entries most similar to it. Open set: a probe raises an alarm when its top
score is ≥ a threshold; the threshold is set so that the fraction of impostor probes
raising one is ≤ the false-alarm rate (same rule as calibration), and DIR is the
fraction of mated probes whose top match is the right person *and* scores ≥ it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from identity.errors import InputError
from identity.evaluate.calibrate import threshold_for_far


@dataclass(frozen=True)
class GallerySplit:
    """Row indices into the caller's arrays."""

    gallery: np.ndarray
    mated: np.ndarray
    impostor: np.ndarray


def split_gallery(labels: Sequence[str], keys: Sequence[str] | None = None) -> GallerySplit:
    """Split images by person; `keys` (e.g. paths) decide which image is "first"."""
    order_keys = list(keys) if keys is not None else list(range(len(labels)))
    if len(order_keys) != len(labels):
        raise InputError("labels and keys differ in length")
    by_person: dict[str, list[int]] = {}
    for i in sorted(range(len(labels)), key=lambda i: order_keys[i]):
        by_person.setdefault(labels[i], []).append(i)
    gallery, mated, impostor = [], [], []
    for rows in by_person.values():
        if len(rows) >= 2:
            gallery.append(rows[0])
            mated.extend(rows[1:])
        else:
            impostor.extend(rows)
    as_idx = lambda xs: np.array(sorted(xs), dtype=np.int64)
    return GallerySplit(as_idx(gallery), as_idx(mated), as_idx(impostor))


def search_gallery(
    gallery: np.ndarray, probes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (FAISS flat index): (scores, gallery row ids), each n×k."""
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    p = np.ascontiguousarray(probes, dtype=np.float32)
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    return index.search(p, min(k, len(g)))


@dataclass(frozen=True)
class OpenSetPoint:
    false_alarm_rate: float  # target
    threshold: float  # similarity
    empirical_false_alarm_rate: float
    dir: float  # detection-and-identification rate


@dataclass(frozen=True)
class IdentificationMetrics:
    n_gallery: int
    n_mated_probes: int
    n_impostor_probes: int
    rank_rates: dict[int, float]  # rank k -> closed-set identification rate
    open_set: list[OpenSetPoint]

    def to_dict(self) -> dict:
        return asdict(self)


def identification_metrics(
    embeddings: np.ndarray,
    labels: Sequence[str],
    split: GallerySplit,
    *,
    ranks: Sequence[int] = (1, 5),
    false_alarm_rates: Sequence[float] = (1e-2,),
) -> IdentificationMetrics:
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    names = np.asarray(labels)
    if len(split.gallery) == 0 or len(split.mated) == 0:
        raise InputError("identification needs at least one person with two or more images")
    k = max(ranks)
    scores, ids = search_gallery(x[split.gallery], x[split.mated], k)
    found = names[split.gallery][ids] == names[split.mated][:, None]
    rank_rates = {r: float(found[:, :r].any(axis=1).mean()) for r in ranks}
    open_set = []
    if len(split.impostor):
        impostor_top, _ = search_gallery(x[split.gallery], x[split.impostor], 1)
        for far in false_alarm_rates:
            t, _ = threshold_for_far(impostor_top[:, 0], far)
            dir_rate = float(np.mean(found[:, 0] & (scores[:, 0] >= t)))
            alarms = float(np.mean(impostor_top[:, 0] >= t))
            open_set.append(OpenSetPoint(far, t, alarms, dir_rate))
    return IdentificationMetrics(
        len(split.gallery), len(split.mated), len(split.impostor), rank_rates, open_set
    )
