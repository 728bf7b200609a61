"""Clustering metrics: exact on labelings small enough to count by hand, and equal to
brute-force pair counting on random ones."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.cluster.metrics import evaluate_clustering
from identity.errors import InputError

# true: a a a b b c ; predicted: {a a} {a b b} and c unclustered.
TRUE = ["a", "a", "a", "b", "b", "c"]
PRED = np.array([0, 0, 1, 1, 1, -1])


def test_pairwise_counts_on_a_hand_computed_example():
    m = evaluate_clustering(TRUE, PRED)
    # Same-cluster pairs: 1 in {a a} + 3 in {a b b} = 4, of which (a,a) and (b,b) are right.
    # Same-person pairs: 3 among the a's + 1 among the b's = 4, of which 2 are together.
    assert m.pairwise_precision == pytest.approx(2 / 4)
    assert m.pairwise_recall == pytest.approx(2 / 4)
    assert m.pairwise_f1 == pytest.approx(0.5)


def test_bcubed_on_a_hand_computed_example():
    m = evaluate_clustering(TRUE, PRED)
    # Precision per face: a,a → 1, 1; a,b,b → 1/3, 2/3, 2/3; c alone → 1.
    assert m.bcubed_precision == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3 + 1) / 6)
    # Recall per face: a,a → 2/3 each; a → 1/3; b,b → 1 each; c → 1.
    assert m.bcubed_recall == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1 + 1) / 6)
    assert m.bcubed_f1 == pytest.approx(7 / 9)


def test_counts_clusters_identities_and_unclustered():
    m = evaluate_clustering(TRUE, PRED)
    assert (m.n_faces, m.n_clusters, m.n_identities) == (6, 2, 3)
    assert m.fraction_unclustered == pytest.approx(1 / 6)


def test_unclustered_faces_count_as_singletons_not_as_one_cluster():
    m = evaluate_clustering(["a", "b", "c"], np.array([-1, -1, -1]))
    assert m.bcubed_precision == 1.0 and m.bcubed_recall == 1.0
    assert m.pairwise_precision == 1.0 and m.pairwise_recall == 1.0  # no pairs either side
    assert m.n_clusters == 0 and m.fraction_unclustered == 1.0


def test_leaving_everyone_alone_loses_recall_only():
    m = evaluate_clustering(["a", "a", "b", "b"], np.array([-1, -1, -1, -1]))
    assert m.pairwise_precision == 1.0 and m.pairwise_recall == 0.0 and m.pairwise_f1 == 0.0
    assert m.bcubed_precision == 1.0 and m.bcubed_recall == pytest.approx(0.5)


def test_one_big_cluster_loses_precision_only():
    m = evaluate_clustering(["a", "a", "b", "b"], np.zeros(4, int))
    assert m.pairwise_recall == 1.0 and m.pairwise_precision == pytest.approx(2 / 6)
    assert m.bcubed_recall == 1.0 and m.bcubed_precision == pytest.approx(0.5)


def test_mismatched_lengths_are_refused():
    with pytest.raises(InputError):
        evaluate_clustering(["a", "b"], np.array([0, 0, 0]))


def _brute_force(true: list[int], pred: list[int]) -> tuple[float, float, float, float]:
    """O(N²) definitions, for comparison; unclustered faces are singletons."""
    pred = [p if p >= 0 else -(i + 1) for i, p in enumerate(pred)]
    pairs = list(combinations(range(len(true)), 2))
    same_c = [(i, j) for i, j in pairs if pred[i] == pred[j]]
    same_t = [(i, j) for i, j in pairs if true[i] == true[j]]
    both = [p for p in same_c if true[p[0]] == true[p[1]]]
    pp = len(both) / len(same_c) if same_c else 1.0
    pr = len(both) / len(same_t) if same_t else 1.0
    n = len(true)
    bp = sum(
        sum(1 for j in range(n) if pred[j] == pred[i] and true[j] == true[i])
        / sum(1 for j in range(n) if pred[j] == pred[i])
        for i in range(n)
    ) / n
    br = sum(
        sum(1 for j in range(n) if pred[j] == pred[i] and true[j] == true[i])
        / sum(1 for j in range(n) if true[j] == true[i])
        for i in range(n)
    ) / n
    return pp, pr, bp, br


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-1, 4)), min_size=1, max_size=25))
def test_contingency_formulas_equal_brute_force_pair_counting(rows):
    true = [t for t, _ in rows]
    pred = [p for _, p in rows]
    m = evaluate_clustering(true, np.array(pred))
    pp, pr, bp, br = _brute_force(true, pred)
    assert m.pairwise_precision == pytest.approx(pp)
    assert m.pairwise_recall == pytest.approx(pr)
    assert m.bcubed_precision == pytest.approx(bp)
    assert m.bcubed_recall == pytest.approx(br)


def test_the_subject_of_a_photo_is_its_large_central_face():
    from identity.cluster.metrics import subject_faces

    boxes = np.array(
        [
            [0, 0, 120, 120],  # photo 0: large but in the corner
            [100, 100, 150, 150],  # photo 0: smaller, dead centre → subject
            [10, 10, 20, 20],  # photo 1: tiny
            [30, 30, 90, 90],  # photo 1: larger → subject
        ]
    )
    image_index = np.array([0, 0, 1, 1])
    sizes = np.array([[250, 250], [250, 250]])
    assert subject_faces(boxes, image_index, sizes).tolist() == [1, 3]
    assert subject_faces(boxes, image_index).tolist() == [0, 3]  # no sizes: the largest
