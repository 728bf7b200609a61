"""Which faces are worth clustering. A face left out is not lost: it stays in the output
as unclustered, with the reason it was left out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from identity.cluster.types import FaceSet

TOO_SMALL = "too_small"
LOW_PROBABILITY = "low_probability"
BLURRED = "blurred"


@dataclass(frozen=True)
class QualityThresholds:
    """A threshold of 0 disables its test. Face size is the shorter side of the box in the
    image's pixels; blur is the variance of the Laplacian of the aligned crop."""

    min_face_size: float = 0.0
    min_probability: float = 0.0
    min_blur: float = 0.0


def quality_reasons(faces: FaceSet, thresholds: QualityThresholds) -> np.ndarray:
    """Per face, '' when it passes, else the first failed test's name. A test whose input
    the FaceSet lacks (no boxes, no probabilities, no crops) passes everyone."""
    reasons = np.full(len(faces), "", dtype=object)
    tests: list[tuple[str, np.ndarray | None, float]] = [
        (TOO_SMALL, _short_side(faces.boxes), thresholds.min_face_size),
        (LOW_PROBABILITY, faces.probabilities, thresholds.min_probability),
        (BLURRED, faces.blur, thresholds.min_blur),
    ]
    for reason, values, minimum in tests:
        if values is None or minimum <= 0:
            continue
        # NaN (e.g. no crop for this face) compares False, so it is not blamed.
        failed = (values < minimum) & (reasons == "")
        reasons[failed] = reason
    return reasons.astype(str) if len(reasons) else np.zeros(0, dtype="<U1")


def _short_side(boxes: np.ndarray | None) -> np.ndarray | None:
    if boxes is None:
        return None
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
