"""Face detection with facenet-pytorch's MTCNN (its networks and weights, which ship inside
the wheel), run by `identity.faces.mtcnn.BatchedMTCNN`: every stage batched, the second
and third stages' candidate boxes resampled in one gather each instead of one resize per box.

MTCNN batches only equal-sized images. A directory of phone photos comes in many sizes,
so images are zero-padded on the right and bottom up to a size bucket (multiples of
`BUCKET` pixels) and every bucket is detected as one batch (split so that one call holds
at most `MAX_BATCH_PIXELS`: memory stays bounded, and results do not depend on how images
are grouped). Padding adds no faces and leaves coordinates of the real pixels unchanged;
boxes are clipped back to the image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from identity.config import PipelineSettings
from identity.faces.mtcnn import BatchedMTCNN
from identity.faces.types import DetectedFace
from identity.vocabulary import FaceDetector

BUCKET = 64
# Pixels (padded) per detector call: a whole batch of LFW-sized images, or 6 photos of
# 1600 x 1200. Larger calls gain nothing (their ops are large already) and the working copies (float pixels,
# summed-area table, P-Net's first feature maps) grow with them.
MAX_BATCH_PIXELS = 12_000_000
Selection = Literal["all", "largest", "central"]


class DetectsFaces(Protocol):
    """What the pipeline needs of a detector (`Detector`, `ScrfdDetector`)."""

    device: torch.device

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]: ...


class Detector:
    """facenet-pytorch's MTCNN networks, every stage batched (`BatchedMTCNN`). The
    parameters are MTCNN's own; `from_settings` reads them from the pipeline settings."""

    def __init__(
        self,
        *,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        min_probability: float = 0.95,
        device: torch.device | str = "cpu",
    ) -> None:
        self.min_probability = min_probability
        self.mtcnn = MTCNN(
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            factor=factor,
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
        self.device = torch.device(device)
        self.stages = BatchedMTCNN(
            self.mtcnn.pnet,
            self.mtcnn.rnet,
            self.mtcnn.onet,
            min_face_size=min_face_size,
            thresholds=tuple(thresholds),
            factor=factor,
        )

    @classmethod
    def from_settings(cls, pipeline: PipelineSettings, device: torch.device | str = "cpu") -> Detector:
        return cls(
            min_face_size=pipeline.min_face_size,
            thresholds=pipeline.detection_thresholds,
            factor=pipeline.scale_factor,
            min_probability=pipeline.min_detection_probability,
            device=device,
        )

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of each uint8 H×W×3 image, ordered left to right (a stable order across
        runs and devices, unlike detection probability, so a face's index can key it)."""
        results: list[list[DetectedFace]] = [[] for _ in images]
        for (bucket_h, bucket_w), members in _buckets(images).items():
            per_call = max(1, MAX_BATCH_PIXELS // (bucket_h * bucket_w))
            for first in range(0, len(members), per_call):
                group = members[first : first + per_call]
                batch = np.zeros((len(group), bucket_h, bucket_w, 3), dtype=np.uint8)
                for slot, i in enumerate(group):
                    h, w = images[i].shape[:2]
                    batch[slot, :h, :w] = images[i]
                boxes, points = self.stages.detect(torch.from_numpy(batch).to(self.device))
                for slot, i in enumerate(group):
                    results[i] = _faces(boxes[slot], points[slot], images[i].shape, self.min_probability)
        return results


class ScrfdDetector:
    """InsightFace's SCRFD-500M (`identity.faces.scrfd`), batched like MTCNN: each image
    downscaled to at most `scrfd_max_side` (never upscaled: LFW-sized photos are detected
    as they are, 250 px instead of InsightFace's 640), zero-padded to a bucket of
    `scrfd.ALIGN` pixels, each bucket one batch. Boxes and landmarks are reported in the
    working image's pixels, ordered left to right like MTCNN's."""

    def __init__(
        self,
        weights: Path,
        *,
        max_side: int = 640,
        min_probability: float = 0.5,
        device: torch.device | str = "cpu",
    ) -> None:
        from identity.faces import scrfd

        self.device = torch.device(device)
        self.min_probability = min_probability
        self.max_side = max_side
        network = scrfd.load_network(weights, self.device)
        self.scrfd = scrfd.Scrfd(network, threshold=self.min_probability)
        self.align = scrfd.ALIGN

    @classmethod
    def from_settings(cls, pipeline: PipelineSettings, device: torch.device | str = "cpu") -> ScrfdDetector:
        """The weights found in `models_dir` (or `cache_dir`), verified by the model registry;
        a ModelNotFoundError naming `identity models fetch --detector scrfd --accept-license`
        when they are in neither."""
        from identity.faces import scrfd

        return cls(
            scrfd.find_weights(pipeline),
            max_side=pipeline.scrfd_max_side,
            min_probability=pipeline.scrfd_min_probability,
            device=device,
        )

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        scaled, scales = [], []
        for image in images:
            h, w = image.shape[:2]
            scale = min(1.0, self.max_side / max(h, w))
            if scale < 1.0:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            scaled.append(image)
            scales.append(scale)
        results: list[list[DetectedFace]] = [[] for _ in images]
        for (bucket_h, bucket_w), members in _buckets(scaled, self.align).items():
            per_call = max(1, MAX_BATCH_PIXELS // (bucket_h * bucket_w))
            for first in range(0, len(members), per_call):
                group = members[first : first + per_call]
                batch = np.zeros((len(group), bucket_h, bucket_w, 3), dtype=np.uint8)
                for slot, i in enumerate(group):
                    h, w = scaled[i].shape[:2]
                    batch[slot, :h, :w] = scaled[i]
                boxes, points = self.scrfd.detect(torch.from_numpy(batch).to(self.device))
                for slot, i in enumerate(group):
                    s = scales[i]
                    box = boxes[slot].copy()
                    box[:, :4] /= s
                    results[i] = _faces(box, points[slot] / s, images[i].shape, self.min_probability)
        return results


def make_detector(pipeline: PipelineSettings, device: torch.device | str = "cpu") -> Detector | ScrfdDetector:
    """The detector the pipeline settings name (`detector`: MTCNN unless told otherwise)."""
    if FaceDetector(pipeline.detector) == FaceDetector.scrfd:
        return ScrfdDetector.from_settings(pipeline, device)
    return Detector.from_settings(pipeline, device)


def _faces(
    boxes: np.ndarray, points: np.ndarray, shape: tuple[int, ...], min_probability: float
) -> list[DetectedFace]:
    """boxes: k × 5 (x1, y1, x2, y2, probability); points: k × 5 × 2. Those at least
    `min_probability`, clipped to the image, left to right."""
    h, w = shape[:2]
    faces = []
    for box, landmarks in zip(boxes, points):
        prob = float(box[4])
        if prob < min_probability:
            continue
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        faces.append(
            DetectedFace(
                box=(x1, y1, x2, y2),
                landmarks=np.asarray(landmarks, dtype=np.float32).reshape(5, 2),
                probability=prob,
            )
        )
    faces.sort(key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))
    return faces


def _buckets(images: list[np.ndarray], bucket: int = BUCKET) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        groups[(math.ceil(h / bucket) * bucket, math.ceil(w / bucket) * bucket)].append(i)
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
