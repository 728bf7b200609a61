"""Verification metrics with facenet's `validate_on_lfw` semantics, on cosine similarity.

Scores are cosine similarities of L2-normalised embeddings. facenet works in squared
euclidean distance, which for unit vectors is `d = 2 - 2·cos`; its rule "same when
d < threshold" is "same when cos > 1 - threshold/2". The cross-validated parts
(accuracy, VAL@FAR) search facenet's own distance grids, so numbers are comparable
with published facenet figures; every threshold is reported in both units.

* accuracy: per fold, the distance threshold maximising accuracy on the other folds
  (grid `arange(0, 4, 0.01)`, first maximum wins) is applied to the fold; mean ± std
  (population std, as facenet) over folds.
* VAL@FAR: per fold, the threshold at which the training folds' FAR equals the target
  is interpolated on the grid `arange(0, 4, 0.001)` (0 when the target is never
  reached, as facenet); VAL and FAR are then measured on the test fold.
* AUC and EER: from the exact ROC over all pairs (every distinct score a threshold),
  EER where the linearly interpolated ROC crosses `tpr = 1 - fpr` (facenet's brentq on
  `interp1d(fpr, tpr)`). The exact ROC makes AUC identical to sklearn's
  `roc_auc_score` rather than a grid approximation of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from identity.errors import InputError

ACCURACY_GRID = np.arange(0, 4, 0.01)
VAL_GRID = np.arange(0, 4, 0.001)


def cosine_scores(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (rows are normalised here, so raw vectors are fine)."""
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"embedding arrays must both be n×dim, got {a.shape} and {b.shape}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", a, b)


def similarity_to_distance(similarity: float | np.ndarray) -> float | np.ndarray:
    """Squared euclidean distance between unit vectors with this cosine similarity."""
    return 2.0 - 2.0 * similarity


def distance_to_similarity(distance: float | np.ndarray) -> float | np.ndarray:
    return 1.0 - distance / 2.0


# --- confusion counts over a grid, vectorised ------------------------------------------


def _accepts_below(distances: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many distances are strictly below it (facenet's `np.less`)."""
    return np.searchsorted(np.sort(distances), thresholds, side="left")


@dataclass(frozen=True)
class _Counts:
    tp: np.ndarray
    fp: np.ndarray
    n_same: int
    n_diff: int

    @property
    def accuracy(self) -> np.ndarray:
        return (self.tp + (self.n_diff - self.fp)) / (self.n_same + self.n_diff)

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.n_same if self.n_same else np.zeros_like(self.tp, dtype=float)

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.n_diff if self.n_diff else np.zeros_like(self.fp, dtype=float)


def _counts(distances: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> _Counts:
    return _Counts(
        tp=_accepts_below(distances[same], thresholds),
        fp=_accepts_below(distances[~same], thresholds),
        n_same=int(same.sum()),
        n_diff=int((~same).sum()),
    )


def _check(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    f = np.asarray(folds, dtype=np.int64)
    if not (s.shape == y.shape == f.shape) or s.ndim != 1:
        raise InputError(
            f"scores, labels and folds must be 1-d of one length: {s.shape}, {y.shape}, {f.shape}"
        )
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinity")
    if y.all() or not y.any():
        raise InputError("need both same-person and different-person pairs")
    if len(np.unique(f)) < 2:
        raise InputError("cross-validation needs at least two folds")
    return s, y, f


# --- cross-validated accuracy (facenet calculate_roc) ---------------------------------


@dataclass(frozen=True)
class AccuracyResult:
    fold_accuracy: np.ndarray
    fold_threshold_distance: np.ndarray  # chosen on the training folds
    tpr: np.ndarray  # test-fold TPR averaged over folds, per grid threshold
    fpr: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_accuracy))


def cross_validated_accuracy(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray, thresholds: np.ndarray = ACCURACY_GRID
) -> AccuracyResult:
    s, y, f = _check(scores, same, folds)
    d = similarity_to_distance(s)
    fold_ids = np.unique(f)
    acc, chosen = np.zeros(len(fold_ids)), np.zeros(len(fold_ids))
    tprs, fprs = (
        np.zeros((len(fold_ids), len(thresholds))),
        np.zeros((len(fold_ids), len(thresholds))),
    )
    for k, fold in enumerate(fold_ids):
        train, test = f != fold, f == fold
        best = int(np.argmax(_counts(d[train], y[train], thresholds).accuracy))
        test_counts = _counts(d[test], y[test], thresholds)
        tprs[k], fprs[k] = test_counts.tpr, test_counts.fpr
        chosen[k] = thresholds[best]
        acc[k] = test_counts.accuracy[best]
    return AccuracyResult(acc, chosen, tprs.mean(axis=0), fprs.mean(axis=0))


# --- validation rate at a target FAR (facenet calculate_val) --------------------------


@dataclass(frozen=True)
class ValResult:
    far_target: float
    fold_val: np.ndarray
    fold_far: np.ndarray
    fold_threshold_distance: np.ndarray

    @property
    def val_mean(self) -> float:
        return float(np.mean(self.fold_val))

    @property
    def val_std(self) -> float:
        return float(np.std(self.fold_val))

    @property
    def far_mean(self) -> float:
        return float(np.mean(self.fold_far))


def interpolate_threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """The threshold where the (non-decreasing) FAR-vs-threshold curve reaches `target`.

    Linear between the last grid point with FAR ≤ target and the next one, so plateaus
    resolve to their upper end (the most accepting threshold still at the target).
    0 when the target is never reached, as facenet (accept nothing).
    """
    if far.max() < target:
        return 0.0
    i = int(np.searchsorted(far, target, side="right")) - 1
    if i < 0:
        return float(thresholds[0])
    if i + 1 >= len(far) or far[i] == target:
        return float(thresholds[i])
    step = (target - far[i]) / (far[i + 1] - far[i])
    return float(thresholds[i] + step * (thresholds[i + 1] - thresholds[i]))


def validation_rate(
    scores: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    far_target: float = 1e-3,
    thresholds: np.ndarray = VAL_GRID,
) -> ValResult:
    s, y, f = _check(scores, same, folds)
    d = similarity_to_distance(s)
    fold_ids = np.unique(f)
    val, far, chosen = np.zeros(len(fold_ids)), np.zeros(len(fold_ids)), np.zeros(len(fold_ids))
    for k, fold in enumerate(fold_ids):
        train, test = f != fold, f == fold
        t = interpolate_threshold_at_far(
            _counts(d[train], y[train], thresholds).fpr, thresholds, far_target
        )
        c = _counts(d[test], y[test], np.array([t]))
        chosen[k], val[k], far[k] = t, c.tpr[0], c.fpr[0]
    return ValResult(far_target, val, far, chosen)


# --- exact ROC, AUC, EER ---------------------------------------------------------------


@dataclass(frozen=True)
class RocCurve:
    """ROC over all pairs; point i accepts pairs with similarity ≥ thresholds[i]."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # similarity; thresholds[0] = +inf (accept nothing)


def roc_curve(scores: np.ndarray, same: np.ndarray) -> RocCurve:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # one ROC point per distinct score: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    n_same, n_diff = int(y.sum()), int((~y).sum())
    return RocCurve(
        fpr=np.r_[0.0, fp / n_diff],
        tpr=np.r_[0.0, tp / n_same],
        thresholds=np.r_[np.inf, s[last]],
    )


def auc(curve: RocCurve) -> float:
    return float(np.trapezoid(curve.tpr, curve.fpr))


def equal_error_rate(curve: RocCurve) -> tuple[float, float]:
    """(EER, similarity threshold) where the linearly interpolated ROC meets tpr = 1 - fpr."""
    gap = 1.0 - curve.fpr - curve.tpr  # decreasing from 1 to -1 along the curve
    i = int(np.argmax(gap <= 0))  # first point at or past the crossing
    if i == 0:
        return 0.0, float(curve.thresholds[1])
    g0, g1 = gap[i - 1], gap[i]
    w = g0 / (g0 - g1) if g0 != g1 else 0.0
    eer = curve.fpr[i - 1] + w * (curve.fpr[i] - curve.fpr[i - 1])
    t0 = curve.thresholds[i - 1] if np.isfinite(curve.thresholds[i - 1]) else curve.thresholds[i]
    return float(eer), float(t0 + w * (curve.thresholds[i] - t0))


# --- everything, for a report --------------------------------------------------------------


@dataclass(frozen=True)
class VerificationMetrics:
    n_pairs: int
    n_same: int
    n_different: int
    n_folds: int
    accuracy_mean: float
    accuracy_std: float
    fold_accuracy: list[float]
    threshold_distance: float  # mean of the per-fold thresholds chosen for accuracy
    threshold_similarity: float
    far_target: float
    val_mean: float
    val_std: float
    far_mean: float
    val_threshold_distance: float
    val_threshold_similarity: float
    auc: float
    eer: float
    eer_threshold_similarity: float
    same_similarity: dict[str, float] = field(default_factory=dict)  # mean, std
    different_similarity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}


def verification_metrics(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray, far_target: float = 1e-3
) -> tuple[VerificationMetrics, RocCurve]:
    s, y, f = _check(scores, same, folds)
    acc = cross_validated_accuracy(s, y, f)
    val = validation_rate(s, y, f, far_target)
    curve = roc_curve(s, y)
    eer, eer_t = equal_error_rate(curve)
    t_acc = float(np.mean(acc.fold_threshold_distance))
    t_val = float(np.mean(val.fold_threshold_distance))
    metrics = VerificationMetrics(
        n_pairs=len(s),
        n_same=int(y.sum()),
        n_different=int((~y).sum()),
        n_folds=len(np.unique(f)),
        accuracy_mean=acc.mean,
        accuracy_std=acc.std,
        fold_accuracy=[float(a) for a in acc.fold_accuracy],
        threshold_distance=t_acc,
        threshold_similarity=float(distance_to_similarity(t_acc)),
        far_target=far_target,
        val_mean=val.val_mean,
        val_std=val.val_std,
        far_mean=val.far_mean,
        val_threshold_distance=t_val,
        val_threshold_similarity=float(distance_to_similarity(t_val)),
        auc=auc(curve),
        eer=eer,
        eer_threshold_similarity=eer_t,
        same_similarity=_stats(s[y]),
        different_similarity=_stats(s[~y]),
    )
    return metrics, curve
