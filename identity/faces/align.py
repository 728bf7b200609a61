"""Detected face → fixed-size aligned crop, the embedding network's input.

Two methods:

* ``crop``: facenet's box crop with a margin, resized to the network's input size. The
  margin is expressed in output pixels (as facenet-pytorch's ``extract_face``), so a face
  is framed the same way whether it is 100 px or 1000 px wide in the photo.
* ``similarity``: a 4-degree-of-freedom similarity transform (rotation, uniform scale,
  translation) that maps the 5 detected landmarks onto a template, which removes head roll.

The landmark template is a property of the model (`template` in its manifest entry):

* ``facenet``: the mean landmark position of ``crop``-aligned faces of LFW (margin 32,
  160 px), so both methods frame faces the way the FaceNet weights were trained on: only
  the in-plane rotation and jitter differ. `benchmarks/bench_lfw.py` measures both.
* ``facenet-tight``: the ``facenet`` template scaled by 1.1 about the crop's centre, so the
  face fills more of the crop. FaceNet was trained on tighter crops than the margin-32 crop
  it is evaluated on (margin 44 around the box at 182 px, centre-cropped to 160), and on
  lfw-dev its embeddings separate people better framed so: scales 1.08 to 1.15 all gain,
  1.1 is the middle (BENCHMARKS.md, "A tighter template for FaceNet").
* ``arcface``: InsightFace's template for 112×112 crops, on which its ArcFace models
  (`w600k_mbf`) were trained.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from identity.faces.models.kinds import AlignMethod, Template
from identity.faces.types import DetectedFace

# Mean (x, y) of the five MTCNN landmarks in 160×160 margin-32 crops of 800 lfw-dev faces
# (benchmarks/derive_template.py), made mirror-symmetric, in a unit square: left eye,
# right eye, nose, left and right mouth corners.
TEMPLATE_UNIT = np.array(
    [
        [0.3214, 0.4085],
        [0.6786, 0.4085],
        [0.5000, 0.5666],
        [0.3411, 0.7027],
        [0.6589, 0.7027],
    ],
    dtype=np.float64,
)
# InsightFace's ArcFace template (arcface_torch, `utils/face_align.py`) in a 112×112 crop:
# left eye, right eye, nose, left and right mouth corners.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
TIGHT_SCALE = 1.10
TEMPLATES: dict[Template, np.ndarray] = {
    Template.FACENET: TEMPLATE_UNIT,
    Template.FACENET_TIGHT: 0.5 + TIGHT_SCALE * (TEMPLATE_UNIT - 0.5),
    Template.ARCFACE: ARCFACE_112 / 112.0,
}


def align(
    pixels: np.ndarray,
    face: DetectedFace,
    *,
    method: AlignMethod | str = AlignMethod.CROP,
    image_size: int = 160,
    margin: int = 32,
    template: Template | str = Template.FACENET,
) -> np.ndarray:
    method = AlignMethod.parse(method, "alignment method")
    if method == AlignMethod.CROP:
        return crop(pixels, face.box, image_size=image_size, margin=margin)
    return warp(pixels, face.landmarks, image_size=image_size, template=template)


def crop(
    pixels: np.ndarray,
    box: tuple[float, float, float, float],
    *,
    image_size: int = 160,
    margin: int = 32,
) -> np.ndarray:
    h, w = pixels.shape[:2]
    x1, y1, x2, y2 = box
    pad_x = margin * (x2 - x1) / max(image_size - margin, 1) / 2
    pad_y = margin * (y2 - y1) / max(image_size - margin, 1) / 2
    left, top = int(max(x1 - pad_x, 0)), int(max(y1 - pad_y, 0))
    right, bottom = int(min(x2 + pad_x, w)), int(min(y2 + pad_y, h))
    region = Image.fromarray(pixels[top:bottom, left:right])
    return np.asarray(region.resize((image_size, image_size), Image.BILINEAR))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama, 1991) mapping src points onto dst.
    Returns the 2×3 matrix [sR | t]."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a similarity
        d[1, 1] = -1
    rotation = u @ d @ vt
    variance = (src_c**2).sum() / len(src)
    scale = (singular * np.diag(d)).sum() / variance if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def warp(
    pixels: np.ndarray,
    landmarks: np.ndarray,
    *,
    image_size: int = 160,
    template: Template | str = Template.FACENET,
) -> np.ndarray:
    points = TEMPLATES[Template.parse(template, "landmark template")] * image_size
    return warp_onto(pixels, landmarks, points, image_size=image_size)


def warp_onto(pixels: np.ndarray, landmarks: np.ndarray, points: np.ndarray, *, image_size: int) -> np.ndarray:
    """The image_size² crop whose similarity transform puts `landmarks` on `points` (5×2,
    crop pixels): `warp` with any template, such as the scaled ones a benchmark scans."""
    forward = similarity_transform(np.asarray(landmarks).reshape(5, 2), points)
    # Pillow's AFFINE wants the output→input mapping.
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
    image = Image.fromarray(pixels).transform(
        (image_size, image_size), Image.AFFINE, data=tuple(inverse.ravel()), resample=Image.BILINEAR
    )
    return np.asarray(image)
