"""Identification on a toy gallery: closed-set rank-k and open-set DIR."""

from __future__ import annotations

import numpy as np
import pytest

from identity.errors import InputError
from identity.evaluate.identify import identification_metrics, split_gallery


def unit(*angles_deg: float) -> np.ndarray:
    a = np.deg2rad(np.array(angles_deg))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_gallery_is_the_first_image_of_each_repeated_person() -> None:
    labels = ["bob", "ann", "ann", "cid", "bob", "ann"]
    keys = ["bob_2", "ann_3", "ann_1", "cid_1", "bob_1", "ann_2"]
    split = split_gallery(labels, keys)
    assert sorted(keys[i] for i in split.gallery) == ["ann_1", "bob_1"]
    assert sorted(keys[i] for i in split.mated) == ["ann_2", "ann_3", "bob_2"]
    assert [keys[i] for i in split.impostor] == ["cid_1"]


def test_rank_and_open_set_rates_on_a_toy_gallery() -> None:
    # gallery at 0°, 90°, 180° (a, b, c); probes near their person or not
    labels = ["a", "b", "c", "a", "b", "c", "x", "y"]
    emb = unit(0, 90, 180, 10, 140, 200, 60, 120)
    keys = ["a1", "b1", "c1", "a2", "b2", "c2", "x1", "y1"]
    split = split_gallery(labels, keys)
    m = identification_metrics(emb, labels, split, ranks=(1, 2), false_alarm_rates=(0.5, 0.01))
    # a2 → a (10°) right; b2 at 140° is nearer c (40°) than b (50°): rank 2; c2 → c right
    assert m.rank_rates == {1: pytest.approx(2 / 3), 2: 1.0}
    assert (m.n_gallery, m.n_mated_probes, m.n_impostor_probes) == (3, 3, 2)
    # impostor top scores: x at 60° → cos 30° = .866, y at 120° → cos 30° = .866: with 50 %
    # allowed, one may pass but they tie, so both are rejected: threshold above .866
    half, strict = m.open_set
    assert half.threshold > np.cos(np.deg2rad(30)) and half.empirical_false_alarm_rate == 0.0
    # a2 (cos 10° = .985) and c2 (cos 20° = .940) are right and above it; b2 is wrong
    assert half.dir == pytest.approx(2 / 3)
    assert strict.dir == pytest.approx(2 / 3)


def test_identification_needs_a_repeated_person() -> None:
    with pytest.raises(InputError):
        identification_metrics(unit(0, 90), ["a", "b"], split_gallery(["a", "b"]))
