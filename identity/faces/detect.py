"""Face detection with facenet-pytorch's MTCNN (its weights ship inside the wheel).

MTCNN batches only equal-sized images. A directory of phone photos comes in many sizes,
so images are zero-padded on the right and bottom up to a size bucket (multiples of
`BUCKET` pixels) and every bucket is detected as one batch. Padding adds no faces and
leaves coordinates of the real pixels unchanged; boxes are clipped back to the image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from facenet_pytorch import MTCNN

from identity.config import Settings
from identity.faces.types import DetectedFace

BUCKET = 64
Selection = Literal["all", "largest", "central"]


class Detector:
    def __init__(self, settings: Settings, device: torch.device | str = "cpu") -> None:
        self.min_probability = settings.min_detection_probability
        self.mtcnn = MTCNN(
            min_face_size=settings.min_face_size,
            thresholds=list(settings.detection_thresholds),
            factor=settings.scale_factor,
            keep_all=True,
            select_largest=False,
            post_process=False,
            device=torch.device(device),
        )
        self.mtcnn.eval()
        # Channels-last weights take oneDNN's fast kernels for the conv + max-pool stacks
        # (O-Net and R-Net run 2x faster on CPU); results agree to float rounding.
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of each uint8 H×W×3 image, ordered left to right (a stable order across
        runs and devices, unlike detection probability, so a face's index can key it)."""
        results: list[list[DetectedFace]] = [[] for _ in images]
        for (bucket_h, bucket_w), members in _buckets(images).items():
            batch = np.zeros((len(members), bucket_h, bucket_w, 3), dtype=np.uint8)
            for slot, i in enumerate(members):
                h, w = images[i].shape[:2]
                batch[slot, :h, :w] = images[i]
            with torch.inference_mode():
                boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
            for slot, i in enumerate(members):
                results[i] = self._faces(boxes[slot], probs[slot], points[slot], images[i].shape)
        return results

    def _faces(self, boxes, probs, points, shape: tuple[int, ...]) -> list[DetectedFace]:
        if boxes is None:
            return []
        h, w = shape[:2]
        faces = []
        for box, prob, landmarks in zip(boxes, probs, points):
            if prob is None or prob < self.min_probability:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            faces.append(
                DetectedFace(
                    box=(x1, y1, x2, y2),
                    landmarks=np.asarray(landmarks, dtype=np.float32).reshape(5, 2),
                    probability=float(prob),
                )
            )
        faces.sort(key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))
        return faces


def _buckets(images: list[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        groups[(math.ceil(h / BUCKET) * BUCKET, math.ceil(w / BUCKET) * BUCKET)].append(i)
    return groups


def select_faces(
    faces: list[DetectedFace], image_shape: tuple[int, ...], how: Selection
) -> list[DetectedFace]:
    """'all', or the one face facenet's `align_dataset_mtcnn` would keep: 'largest' by box
    area, or 'central': largest area minus twice the squared offset from the image centre."""
    if how == "all" or len(faces) <= 1:
        return list(faces)
    if how == "largest":
        return [max(faces, key=lambda f: f.area)]
    h, w = image_shape[:2]

    def centrality(face: DetectedFace) -> float:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        return face.area - 2.0 * ((cx - w / 2) ** 2 + (cy - h / 2) ** 2)

    return [max(faces, key=centrality)]
