"""Verification metrics: facenet's cross-validated accuracy and VAL@FAR, exact AUC and EER."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import interpolate, optimize
from sklearn import metrics as skm

from identity.errors import InputError
from identity.evaluate.metrics import (
    auc,
    cosine_scores,
    cross_validated_accuracy,
    distance_to_similarity,
    equal_error_rate,
    interpolate_threshold_at_far,
    roc_curve,
    similarity_to_distance,
    validation_rate,
    verification_metrics,
)


def random_pairs(
    seed: int, n: int = 600, ties: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    scores = np.where(same, rng.normal(0.6, 0.15, n), rng.normal(0.1, 0.15, n)).clip(-1, 1)
    if ties:
        scores = np.round(scores, 1)
    folds = np.tile(np.repeat(np.arange(10), n // 20), 2)
    return scores, same, folds


def test_cosine_scores_normalise_and_match_distance() -> None:
    a = np.array([[3.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    s = cosine_scores(a, b)
    assert s == pytest.approx([0.0, 1.0])
    unit_a = a / np.linalg.norm(a, axis=1, keepdims=True)
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert similarity_to_distance(s) == pytest.approx(((unit_a - unit_b) ** 2).sum(axis=1))
    assert distance_to_similarity(similarity_to_distance(0.3)) == pytest.approx(0.3)


def test_cosine_scores_refuse_mismatched_shapes() -> None:
    with pytest.raises(InputError):
        cosine_scores(np.zeros((2, 3)), np.zeros((3, 3)))


def test_accuracy_threshold_comes_from_the_other_folds() -> None:
    # fold 0: same .913 .6, different .4 .7   fold 1: same .8 .663, different .3 .52
    scores = np.array([0.913, 0.6, 0.4, 0.7, 0.8, 0.663, 0.3, 0.52])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = cross_validated_accuracy(scores, same, folds)
    # Fold 1 separates perfectly once .663 is accepted (distance .674): the first grid
    # distance above it, 0.68 (cos > .66), on fold 0 accepts .913 and .7 → 2 of 4 right.
    # Fold 0's first best (3 of 4) accepts only .913 (distance .174): grid 0.18 (cos > .91),
    # which on fold 1 rejects everything → 2 of 4.
    assert result.fold_threshold_distance == pytest.approx([0.68, 0.18])
    assert result.fold_accuracy.tolist() == [0.5, 0.5]
    assert result.mean == 0.5 and result.std == 0.0


def test_separable_scores_are_perfect() -> None:
    scores = np.array([0.9, 0.8, 0.1, 0.2] * 5)
    same = np.array([True, True, False, False] * 5)
    folds = np.repeat(np.arange(5), 4)
    m, _ = verification_metrics(scores, same, folds)
    assert m.accuracy_mean == 1.0 and m.auc == 1.0 and m.eer == 0.0
    assert m.val_mean == 1.0
    assert 0.2 < m.threshold_similarity <= 0.8  # facenet keeps the first (strictest) best threshold


def facenet_calculate_roc_accuracy(scores, same, folds, thresholds):
    """Transcription of facenet's calculate_roc loop (distance = 2 - 2 cos) as the reference."""
    dist = 2 - 2 * scores
    acc = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        train_acc = [np.mean(np.less(dist[train], t) == same[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        acc.append(np.mean(np.less(dist[test], best) == same[test]))
    return np.array(acc)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_matches_the_facenet_loop(seed: int) -> None:
    scores, same, folds = random_pairs(seed)
    grid = np.arange(0, 4, 0.01)
    ours = cross_validated_accuracy(scores, same, folds, grid)
    assert ours.fold_accuracy == pytest.approx(
        facenet_calculate_roc_accuracy(scores, same, folds, grid)
    )


def test_threshold_interpolation_at_far() -> None:
    far = np.array([0.0, 0.0, 0.5, 1.0])
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    assert interpolate_threshold_at_far(far, grid, 0.25) == pytest.approx(1.5)
    assert interpolate_threshold_at_far(far, grid, 0.0) == 1.0  # upper end of the plateau
    assert interpolate_threshold_at_far(far, grid, 0.5) == 2.0
    assert interpolate_threshold_at_far(np.array([0.0, 0.1]), grid[:2], 0.5) == 0.0  # unreachable


def test_validation_rate_holds_the_far_on_held_out_folds() -> None:
    # two folds of 1000 evenly spread impostors each, genuine pairs far above them
    impostor = np.linspace(-0.5, 0.5, 1000)
    scores = np.r_[np.full(100, 0.9), impostor, np.full(100, 0.9), impostor + 0.0001]
    same = np.r_[np.ones(100, bool), np.zeros(1000, bool), np.ones(100, bool), np.zeros(1000, bool)]
    folds = np.repeat([0, 1], 1100)
    val = validation_rate(scores, same, folds, far_target=1e-2)
    assert val.fold_val.tolist() == [1.0, 1.0]
    assert val.fold_far == pytest.approx([0.01, 0.01], abs=0.002)
    # the interpolated distance threshold sits where 1% of the training impostors pass
    assert distance_to_similarity(val.fold_threshold_distance) == pytest.approx(
        [0.49, 0.49], abs=0.002
    )


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True), (2, False)])
def test_roc_and_auc_agree_with_sklearn(seed: int, ties: bool) -> None:
    scores, same, _ = random_pairs(seed, ties=ties)
    curve = roc_curve(scores, same)
    fpr, tpr, thr = skm.roc_curve(same, scores, drop_intermediate=False)
    assert curve.fpr == pytest.approx(fpr)
    assert curve.tpr == pytest.approx(tpr)
    assert curve.thresholds[1:] == pytest.approx(thr[1:])
    assert auc(curve) == pytest.approx(skm.roc_auc_score(same, scores), abs=1e-12)


def test_eer_toy_cases() -> None:
    # same .9 .8 .3, different .7 .2 .1: at cos ≥ .7, one impostor of 3 passes and one genuine of 3 fails
    eer, t = equal_error_rate(
        roc_curve(np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1]), np.array([1, 1, 1, 0, 0, 0], bool))
    )
    assert eer == pytest.approx(1 / 3) and t == pytest.approx(0.7)
    # ROC (0,0) → (0,.5) → (1,.5) → (1,1): the crossing with tpr = 1 - fpr is half-way along a segment
    eer, t = equal_error_rate(roc_curve(np.array([0.9, 0.1, 0.5]), np.array([1, 1, 0], bool)))
    assert eer == pytest.approx(0.5) and t == pytest.approx(0.7)


@pytest.mark.parametrize("seed", [3, 4])
def test_eer_matches_facenets_brentq(seed: int) -> None:
    scores, same, _ = random_pairs(seed)
    fpr, tpr, _ = skm.roc_curve(same, scores, drop_intermediate=False)
    expected = optimize.brentq(lambda x: 1.0 - x - interpolate.interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert equal_error_rate(roc_curve(scores, same))[0] == pytest.approx(expected, abs=1e-9)


def test_metrics_refuse_one_class_and_one_fold() -> None:
    with pytest.raises(InputError, match="both"):
        verification_metrics(np.array([0.1, 0.2]), np.array([True, True]), np.array([0, 1]))
    with pytest.raises(InputError, match="two folds"):
        verification_metrics(np.array([0.1, 0.2]), np.array([True, False]), np.array([0, 0]))
