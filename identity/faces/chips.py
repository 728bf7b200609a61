"""Face chips: a small square JPEG around each face, cut from the decoded photo.

The square is centred on the detector's box and `factor` (2) times its longer side, so
the chip shows the whole head with some context, and any alignment (similarity to a
template, or a margin crop) can be recomputed from it: its 5 landmarks are kept in chip
pixels. Where the square leaves the photo it is black, which JPEG stores almost for
free. Chips are cut at the pipeline's working resolution (`detect_max_side`), the
pixels detection and alignment see, so re-aligning from a chip frames the face the
way enrollment did.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from identity.faces.types import FaceChip

FACTOR = 2.0


def make_chip(
    pixels: np.ndarray,
    box: Sequence[float],
    landmarks: np.ndarray,
    *,
    scale: float = 1.0,
    size: int = 224,
    quality: int = 85,
    factor: float = FACTOR,
) -> FaceChip:
    """`box` (x1, y1, x2, y2) and `landmarks` (5×2) are in `pixels`' coordinates; `scale`
    is `pixels`' size over the full-resolution photo's (DecodedImage.scale), for the
    chip's region in photo pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(1, round(max(x2 - x1, y2 - y1, 1.0) * factor))
    left, top = round((x1 + x2 - side) / 2), round((y1 + y2 - side) / 2)
    # Pillow's crop fills what lies outside the image with black.
    square = Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).crop((left, top, left + side, top + side))
    chip = square.resize((size, size), Image.LANCZOS, reducing_gap=3.0) if side != size else square
    buffer = io.BytesIO()
    chip.save(buffer, "JPEG", quality=quality, optimize=True)
    points = (np.asarray(landmarks, np.float64).reshape(5, 2) - (left, top)) * (size / side)
    return FaceChip(
        jpeg=buffer.getvalue(),
        size=size,
        landmarks=points.astype(np.float32),
        region=(left / scale, top / scale, side / scale),
    )


def chip_from_photo(
    pixels: np.ndarray, scale: float, box: Sequence[float], landmarks: Sequence[float], *,
    size: int, quality: int,
) -> FaceChip:
    """A chip for a face stored in full-resolution photo pixels (box, 10 landmark values),
    cut from the photo decoded at working resolution (`scale`): the backfill's case."""
    return make_chip(pixels, [float(v) * scale for v in box],
                     np.asarray(landmarks, np.float64).reshape(5, 2) * scale,
                     scale=scale, size=size, quality=quality)
