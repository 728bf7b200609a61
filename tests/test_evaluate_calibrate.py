"""Calibration: thresholds whose false-accept rate on the impostor scores is within the target."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from identity.config import Settings
from identity.errors import InputError
from identity.evaluate.calibrate import (
    CLUSTER_FLOORS,
    CLUSTER_MERGES,
    all_pair_scores,
    calibrate_clustering,
    calibrate_levels,
    threshold_for_far,
    thresholds_by_level,
    write_calibration,
)
from identity.faces import models


@given(
    scores=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=400),
    far=st.sampled_from([1e-4, 1e-3, 1e-2, 0.05, 0.3]),
)
@hsettings(max_examples=200, deadline=None)
def test_empirical_far_never_exceeds_the_target(scores: list[float], far: float) -> None:
    x = np.array(scores)
    t, allowed = threshold_for_far(x, far)
    accepted = int(np.sum(x >= t))
    assert accepted <= allowed == int(np.floor(far * len(x) + 1e-9))
    assert accepted / len(x) <= far
    # and as accepting as that allows, to the stored 6-decimal resolution: one step
    # lower would let more than `allowed` through
    lower = round(t - 1e-6, 6)
    assert int(np.sum(x >= lower)) > allowed or lower < x.min()


def test_threshold_with_ties_stays_within_the_target() -> None:
    scores = np.r_[np.full(5, 0.5), np.linspace(0, 0.4, 95)]  # 5 % tied at the top
    t, allowed = threshold_for_far(scores, 0.03)
    assert allowed == 3 and t > 0.5  # the tie cannot be split, so all five are rejected
    assert np.sum(scores >= t) == 0


def test_far_below_resolution_puts_the_threshold_above_every_impostor() -> None:
    scores = np.linspace(-0.2, 0.35, 1100)  # View 1's 1,100 impostor pairs cannot resolve 1e-4
    levels = calibrate_levels(scores, np.array([0.3, 0.5, 0.9]))
    strict, loose = levels["strict"], levels["loose"]
    assert strict.allowed_false_accepts == 0 and not strict.resolved
    assert strict.similarity > 0.35 and strict.false_accepts == 0
    assert loose.resolved and loose.allowed_false_accepts == 11 and loose.false_accepts <= 11
    assert loose.similarity <= levels["normal"].similarity <= strict.similarity
    assert strict.genuine_accept_rate == pytest.approx(2 / 3)
    assert strict.distance == pytest.approx(2 - 2 * strict.similarity)


def test_threshold_rejects_bad_targets() -> None:
    with pytest.raises(InputError):
        threshold_for_far(np.array([0.1]), 0.0)
    with pytest.raises(InputError):
        threshold_for_far(np.array([]), 0.01)


def test_all_pair_scores_enumerates_each_unordered_pair_once() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 4)).astype(np.float32)
    labels = ["a", "b", "a", "c", "b", "a", "d"]
    impostor, genuine = all_pair_scores(emb, labels, chunk=3)  # chunks cross the block edges
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected_same = sorted(
        unit[i] @ unit[j] for i, j in combinations(range(7), 2) if labels[i] == labels[j]
    )
    expected_diff = sorted(
        unit[i] @ unit[j] for i, j in combinations(range(7), 2) if labels[i] != labels[j]
    )
    assert sorted(genuine) == pytest.approx(expected_same, abs=1e-6)
    assert sorted(impostor) == pytest.approx(expected_diff, abs=1e-6)
    assert len(genuine) + len(impostor) == 21


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    spec = models.get_model("facenet-keras-128")
    assert (
        thresholds_by_level(spec, settings) == spec.thresholds
    )  # shipped defaults until calibrated
    levels = calibrate_levels(np.linspace(-0.3, 0.4, 20_000))
    path = write_calibration(levels, spec, settings, source="test")

    assert path == tmp_path / "calibration" / f"facenet-keras-128@{spec.version}.json"
    doc = json.loads(path.read_text())
    assert (doc["model"], doc["version"], doc["source"]) == (
        "facenet-keras-128",
        spec.version,
        "test",
    )
    assert {k: v["far"] for k, v in doc["levels"].items()} == {
        "loose": 1e-2,
        "normal": 1e-3,
        "strict": 1e-4,
    }
    assert doc["levels"]["strict"]["n_impostor"] == 20_000
    assert "created_at" in doc
    assert thresholds_by_level(spec, settings) == {
        name: lt.similarity for name, lt in levels.items()
    }


def _people(n_people: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres: 1 to 4 photos per person, `spread` noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, 64))
    labels = np.repeat(np.arange(n_people), rng.integers(1, 5, n_people))
    x = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    x = x + spread * rng.normal(size=x.shape) / np.sqrt(64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_clustering_calibration_picks_the_best_floor_of_the_grid() -> None:
    from identity.cluster import ClusterParams

    x, labels = _people(300, spread=0.5)
    fit = calibrate_clustering(x, labels.astype(str), ClusterParams(), floors=(0.2, 0.5, 0.8, 0.95),
                               merges=(0.9, 1.01), min_precision=0.0)
    assert len(fit.grid) == 16 and fit.n_faces == len(x) and fit.n_identities == 300
    # every (floor, merge) without and with the hubness correction; ties go to none
    assert {row["hubness"] for row in fit.grid} == {False, True}
    best = max(fit.grid, key=lambda row: (row["bcubed_f1"], row["bcubed_precision"]))
    assert (fit.floor, fit.merge_similarity, fit.hubness, fit.bcubed_f1) == (
        best["floor"], best["merge_similarity"], best["hubness"], best["bcubed_f1"]
    )
    assert fit.bcubed_f1 > 0.95 and fit.precision_met
    # a floor far above the same-person similarities leaves everyone alone: worse F1
    assert min(r["bcubed_f1"] for r in fit.grid if r["floor"] == 0.95) < fit.bcubed_f1
    assert "grid" not in fit.entry() and fit.entry()["floor"] == fit.floor


def test_each_row_of_the_grid_is_what_clustering_with_those_settings_scores() -> None:
    """The grid corrects the graph once per floor and reuses it for every merge: each row
    must still be what `cluster_faces` with that floor, merge and correction scores."""
    from dataclasses import replace

    from identity.cluster import ClusterParams, FaceSet, cluster_faces, evaluate_clustering

    x, labels = _people(200, spread=0.7, seed=5)
    params = ClusterParams()
    fit = calibrate_clustering(x, labels, params, floors=(0.3, 0.5), merges=(0.7, 0.9, 1.01), min_precision=0.0)
    assert len(fit.grid) == 12
    for row in fit.grid:
        trial = replace(params, threshold=row["floor"], merge_similarity=row["merge_similarity"],
                        hubness=row["hubness"])
        m = evaluate_clustering(labels, cluster_faces(FaceSet.from_embeddings(x), trial).labels)
        assert (row["bcubed_f1"], row["bcubed_precision"]) == (m.bcubed_f1, m.bcubed_precision), row


def test_clustering_calibration_prefers_precise_settings() -> None:
    from identity.cluster import ClusterParams

    # Noisy people: the loosest floor has the best F1 but merges people; the precision
    # rule passes it over for the best F1 among the precise settings.
    x, labels = _people(300, spread=0.9, seed=3)
    floors = tuple(round(0.1 + 0.05 * i, 2) for i in range(15))
    free = calibrate_clustering(x, labels, ClusterParams(), floors=floors, merges=(1.01,),
                                min_precision=0.0)
    strict = calibrate_clustering(x, labels, ClusterParams(), floors=floors, merges=(1.01,),
                                  min_precision=0.999)
    assert free.bcubed_precision < 0.999  # the unconstrained best merges people
    assert strict.precision_met and strict.bcubed_precision >= 0.999
    assert strict.bcubed_f1 < free.bcubed_f1 and strict.floor > free.floor
    precise = [r for r in strict.grid if r["bcubed_precision"] >= 0.999]
    assert strict.bcubed_f1 == max(r["bcubed_f1"] for r in precise)
    impossible = calibrate_clustering(x, labels, ClusterParams(), floors=(0.1,), merges=(1.01,),
                                      min_precision=1.01)
    assert not impossible.precision_met and impossible.floor == 0.1


def test_the_default_grid_spans_both_embedding_spaces() -> None:
    # FaceNet's floor sits near 0.7, ArcFace's far lower; the merge can be switched off.
    assert min(CLUSTER_FLOORS) <= 0.2 and max(CLUSTER_FLOORS) >= 0.85
    assert max(CLUSTER_MERGES) > 1.0


def test_calibration_file_carries_the_clustering_fit(tmp_path: Path) -> None:
    from identity.cluster import ClusterParams

    settings = Settings(data_dir=tmp_path, model="w600k-mbf-512")
    spec = models.get_model("w600k-mbf-512")
    x, labels = _people(100, spread=0.4, seed=1)
    fit = calibrate_clustering(x, labels, ClusterParams(), floors=(0.3, 0.5), merges=(1.01,))
    levels = calibrate_levels(np.linspace(-0.3, 0.4, 20_000))
    path = write_calibration(levels, spec, settings, source="test", clustering=fit)
    doc = json.loads(path.read_text())
    assert doc["clustering"]["floor"] == fit.floor and "grid" not in doc["clustering"]
    assert doc["clustering"]["hubness"] == fit.hubness
    params = ClusterParams.from_settings(settings)
    assert (params.threshold, params.hubness) == (fit.floor, fit.hubness)
