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
    all_pair_scores,
    calibrate_levels,
    threshold_for_far,
    thresholds_by_level,
    write_calibration,
)
from identity.faces import registry


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
    spec = registry.get_model("facenet-keras-128")
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
