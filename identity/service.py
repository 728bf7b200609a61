"""The operations the CLI and the API share.

`Service` owns the long-lived, expensive things (the face pipeline, the database pool,
the search index) and creates each one the first time an operation needs it, so
`identity detect` never starts a database and `identity persons list` never loads a
network. Routers and commands stay thin: parse, call one method here, format.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from identity.config import Settings, get_settings
from identity.errors import InputError, MultipleFacesError, NoFaceError
from identity.faces import registry
from identity.faces.detect import Detector, Selection
from identity.faces.embed import resolve_device
from identity.faces.pipeline import FacePipeline, as_ref, load_image
from identity.faces.types import DetectedFace, Face, ImageRef, ImageResult


@dataclass(frozen=True)
class Detection:
    source: str
    width: int
    height: int
    faces: tuple[DetectedFace, ...]  # in full-resolution pixels


@dataclass(frozen=True)
class Verification:
    model: str
    similarity: float  # cosine similarity of the two embeddings
    distance: float  # euclidean distance of the unit vectors (sqrt(2 - 2·similarity))
    threshold: float  # similarity threshold of `level`
    level: str
    same: bool
    face_a: Face
    face_b: Face
    faces_in_a: int
    faces_in_b: int


class Service:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    # --- lazily created resources ---------------------------------------------------

    @cached_property
    def pipeline(self) -> FacePipeline:
        return FacePipeline(self.settings)

    @cached_property
    def detector(self) -> Detector:
        if "pipeline" in self.__dict__:
            return self.pipeline.detector
        return Detector(self.settings, resolve_device(self.settings.device))

    def thresholds(self) -> dict[str, float]:
        spec = registry.get_model(self.settings.model)
        return registry.load_thresholds(spec, self.settings)

    # --- vision ---------------------------------------------------------------------------

    def detect(self, refs: Iterable[ImageRef | str | Path]) -> Iterator[Detection | ImageResult]:
        """Boxes, landmarks and probabilities without loading the embedding network.
        Unreadable images come back as an `ImageResult` carrying the error."""
        for ref in map(as_ref, refs):
            try:
                image = load_image(ref, self.settings)
            except InputError as exc:
                yield ImageResult(source=ref.source, error=exc)
                continue
            inverse = 1.0 / image.scale
            yield Detection(
                source=ref.source,
                width=image.width,
                height=image.height,
                faces=tuple(
                    DetectedFace(
                        box=tuple(v * inverse for v in face.box),  # type: ignore[arg-type]
                        landmarks=face.landmarks * inverse,
                        probability=face.probability,
                    )
                    for face in self.detector.detect([image.pixels])[0]
                ),
            )

    def embed(
        self, refs: Iterable[ImageRef | str | Path], *, select: Selection = "all"
    ) -> Iterator[ImageResult]:
        return self.pipeline.process(refs, select=select)

    def one_face(self, ref: ImageRef | str | Path, *, largest: bool = True) -> tuple[Face, int]:
        """The face to compare in a verification photo: its only face, or (with `largest`)
        the largest of several. Returns the face and how many faces the photo had."""
        result = self.pipeline.embed_image(ref)
        if result.error is not None:
            raise result.error
        if not result.faces:
            raise NoFaceError("no face found", path=result.source)
        if len(result.faces) > 1 and not largest:
            raise MultipleFacesError(
                f"{len(result.faces)} faces found; pass --largest-face to use the largest",
                path=result.source,
            )
        return max(result.faces, key=lambda f: f.area), len(result.faces)

    def verify(
        self,
        a: ImageRef | str | Path,
        b: ImageRef | str | Path,
        *,
        level: str | None = None,
        largest: bool = True,
    ) -> Verification:
        level = level or self.settings.threshold_level
        thresholds = self.thresholds()
        face_a, count_a = self.one_face(a, largest=largest)
        face_b, count_b = self.one_face(b, largest=largest)
        similarity = float(np.dot(face_a.embedding, face_b.embedding))
        threshold = thresholds[level]
        return Verification(
            model=self.pipeline.model_name,
            similarity=similarity,
            distance=float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity))),
            threshold=threshold,
            level=level,
            same=similarity >= threshold,
            face_a=face_a,
            face_b=face_b,
            faces_in_a=count_a,
            faces_in_b=count_b,
        )

