"""Values that cross the boundary of the vision pipeline. No database, no index here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    """One face found by the detector, in the coordinates of the decoded (upright) image."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right
    probability: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class FaceChip:
    """A small square JPEG around a face (identity/faces/chips.py): enough to show the face
    and to re-align it for another model without the original photo."""

    jpeg: bytes
    size: int  # side in pixels
    landmarks: np.ndarray  # (5, 2) float32, in chip pixels
    region: tuple[float, float, float]  # x, y, side of the chip's square in the photo's full-resolution pixels


@dataclass(frozen=True)
class Face(DetectedFace):
    """A detected face with its L2-normalised embedding."""

    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (dim,) float32
    quality: float = 0.0  # 0..1, from detection probability and face size; higher is better
    crop: np.ndarray | None = None  # aligned crop, uint8 HxWx3, kept only when asked for
    chip: FaceChip | None = None  # kept only when asked for (enrollment, with settings.store.chips)


@dataclass(frozen=True)
class ImageRef:
    """A reference to an image to process: a path, or in-memory bytes with a name."""

    source: str  # path or URI, used in reports and stored with the image
    data: bytes | None = None  # when given, `source` is only a label


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one image: its faces, or the reason it could not be read."""

    source: str
    sha256: str | None = None  # hex digest of the file's bytes; None when unreadable
    width: int = 0  # of the decoded, upright image at full resolution
    height: int = 0
    faces: tuple[Face, ...] = ()
    error: Exception | None = None  # an identity.errors.InputError when unreadable

    @property
    def ok(self) -> bool:
        return self.error is None
