"""The face pipeline: image references → decoded → detected → aligned → embedded.

Work flows in batches of `batch_size` images. Reading and decoding run ahead
in a small thread pool (Pillow and file reads release the GIL), detection runs one
detector call per size bucket, and every crop of the batch is embedded in one network
call. Worker threads (`detect_workers`) each take whole batches through detection and
embedding side by side, each torch op single-threaded on a 2-core CPU.
Results come out in input order, one `ImageResult` per reference; an unreadable image
becomes a result with `error` set and never interrupts the stream.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from identity.config import PipelineSettings, Settings, get_settings
from identity.errors import InputError
from identity.faces import models
from identity.faces.align import align
from identity.faces.chips import make_chip
from identity.faces.decode import DecodedImage, decode_image, read_bytes
from identity.faces.detect import DetectsFaces, Selection, make_detector, select_faces
from identity.faces.embed import Embedder, resolve_device
from identity.faces.models import AlignMethod, ModelSpec
from identity.faces.types import DetectedFace, Face, FaceChip, ImageRef, ImageResult
from identity.memory import keep_freed_memory

log = logging.getLogger(__name__)

# A face this many pixels tall (in the working image) or more gets full size credit.
_FULL_QUALITY_SIZE = 112.0


def as_ref(item: ImageRef | str | Path) -> ImageRef:
    return item if isinstance(item, ImageRef) else ImageRef(source=str(item))


@dataclass(frozen=True)
class DecodeLimits:
    """How large an image may be, and how large it is decoded and detected."""

    max_pixels: int = 64_000_000  # images declaring more are refused (decompression bombs)
    max_side: int = 1600  # decoded (JPEG draft mode) and detected at most this large

    @classmethod
    def from_settings(cls, pipeline: PipelineSettings) -> DecodeLimits:
        return cls(max_pixels=pipeline.max_image_pixels, max_side=pipeline.detect_max_side)


def load_image(ref: ImageRef | str | Path, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Read (unless the bytes are in the ref) and decode within `limits`."""
    ref = as_ref(ref)
    data = ref.data if ref.data is not None else read_bytes(ref.source)
    return decode_image(data, source=ref.source, max_pixels=limits.max_pixels, max_side=limits.max_side)


def decode_or_error(ref: ImageRef, limits: DecodeLimits = DecodeLimits()) -> DecodedImage | ImageResult:
    """`load_image`, with an unreadable image turned into a result carrying its error."""
    try:
        return load_image(ref, limits)
    except InputError as exc:
        return ImageResult(source=ref.source, error=exc)


def face_quality(face: DetectedFace) -> float:
    """0..1: detection confidence discounted for faces too small to embed reliably."""
    size = min(face.width, face.height)
    return float(face.probability * min(1.0, size / _FULL_QUALITY_SIZE))


class FacePipeline:
    """A detector and an embedder, composed: decode → detect → select → align → embed.

    `spec` is the embedding model's manifest entry (input size, landmark template, name,
    version); `alignment` defaults to the model's own. `from_settings` loads the parts
    the settings name; tests and library users may hand in parts of their own.
    `keep_chips` says whether enrollment keeps a chip of every face (`settings.store.chips`);
    `process(keep_chips=True)` cuts them at `chip_size` and `chip_quality`."""

    def __init__(
        self,
        detector: DetectsFaces,
        embedder: Embedder,
        spec: ModelSpec,
        *,
        alignment: AlignMethod | None = None,
        margin: int = 32,
        batch_size: int = 32,
        decode_workers: int = 2,
        detect_workers: int = 2,
        limits: DecodeLimits = DecodeLimits(),
        keep_chips: bool = True,
        chip_size: int = 224,
        chip_quality: int = 85,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.spec = spec
        self.device = embedder.device
        self.alignment = spec.alignment if alignment is None else alignment
        self.margin = margin
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.detect_workers = detect_workers
        self.limits = limits
        self.keep_chips = keep_chips
        self.chip_size = chip_size
        self.chip_quality = chip_quality

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> FacePipeline:
        """The model, detector and parameters the settings name (loads the weights)."""
        settings = settings or get_settings()
        group = settings.pipeline
        device = resolve_device(group.device)
        configure_threads(group.torch_threads, device)
        keep_freed_memory(group.keep_freed_mb << 20)
        spec = models.get_model(group.model)
        network = models.load_network(spec, settings, device=device)
        return cls(
            make_detector(group, device),
            Embedder.for_model(network, spec, group, device),
            spec,
            # The model's alignment and landmark template, unless IDENTITY_ALIGNMENT is set.
            alignment=models.alignment_method(spec, settings),
            margin=group.margin,
            batch_size=group.batch_size,
            decode_workers=group.decode_workers,
            detect_workers=group.detect_workers,
            limits=DecodeLimits.from_settings(group),
            keep_chips=settings.store.chips,
            chip_size=settings.store.chip_size,
            chip_quality=settings.store.chip_quality,
        )

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def model_version(self) -> str:
        return self.spec.version

    @property
    def dim(self) -> int:
        return self.spec.dim

    # --- public -------------------------------------------------------------------

    def process(
        self,
        refs: Iterable[ImageRef | str | Path],
        *,
        select: Selection = "all",
        keep_crops: bool = False,
        keep_chips: bool = False,
    ) -> Iterator[ImageResult]:
        decoded = map_ahead(
            lambda ref: decode_or_error(ref, self.limits), (as_ref(r) for r in refs),
            workers=self.decode_workers, lookahead=2 * self.batch_size,
        )
        batches = iter(lambda: list(islice(decoded, self.batch_size)), [])
        # Each worker takes a whole batch through both stages, so the cores stay busy
        # whichever stage is the longer (embedding with FaceNet, detection with a light
        # network): with detection ahead in the workers and embedding in this thread, the
        # embedding thread alone set the pace (FaceNet: 18 -> 28 images/s on 2 cores).
        embedded = map_ahead(
            lambda batch: self._embed_batch(
                self._detect_batch(batch, select, keep_chips), keep_crops=keep_crops
            ),
            batches,
            workers=self.detect_workers, lookahead=self.detect_workers + 1,
        )
        for results in embedded:
            yield from results

    def embed_image(self, ref: ImageRef | str | Path, *, select: Selection = "all") -> ImageResult:
        return next(iter(self.process([ref], select=select)))

    def decode(self, ref: ImageRef | str | Path) -> DecodedImage:
        return load_image(ref, self.limits)

    # --- internals ------------------------------------------------------------------

    def _detect_batch(self, batch: list[DecodedImage | ImageResult], select: Selection,
                      keep_chips: bool = False) -> _Detected:
        """Stage one: detect, select and align every face of a batch (and cut its chips,
        here where the working-resolution pixels still are)."""
        images = [item for item in batch if isinstance(item, DecodedImage)]
        detections = self.detector.detect([image.pixels for image in images])
        chosen = [
            select_faces(faces, image.pixels.shape, select)
            for image, faces in zip(images, detections)
        ]
        crops = [
            align(
                image.pixels,
                face,
                method=self.alignment,
                image_size=self.spec.input_size,
                margin=self.margin,
                template=self.spec.template,
            )
            for image, faces in zip(images, chosen)
            for face in faces
        ]
        chips = [
            make_chip(image.pixels, face.box, face.landmarks, scale=image.scale,
                      size=self.chip_size, quality=self.chip_quality)
            if keep_chips else None
            for image, faces in zip(images, chosen)
            for face in faces
        ]
        size = self.spec.input_size
        stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        return _Detected(batch, images, chosen, stacked, chips)

    def _embed_batch(self, detected: _Detected, *, keep_crops: bool) -> list[ImageResult]:
        """Stage two: embed every crop of the batch in one network call."""
        embeddings = self.embedder.embed(detected.crops)
        results: dict[int, ImageResult] = {}
        cursor = 0
        for image, faces in zip(detected.images, detected.chosen):
            built = []
            for face in faces:
                built.append(
                    _embedded_face(
                        face,
                        image.scale,
                        embedding=embeddings[cursor],
                        crop=detected.crops[cursor] if keep_crops else None,
                        chip=detected.chips[cursor],
                    )
                )
                cursor += 1
            results[id(image)] = ImageResult(
                source=image.source,
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                faces=tuple(built),
            )
        return [results[id(item)] if isinstance(item, DecodedImage) else item for item in detected.batch]


@dataclass(frozen=True)
class _Detected:
    batch: list  # DecodedImage | ImageResult (unreadable), in input order
    images: list  # the decoded ones
    chosen: list  # per decoded image, its selected faces
    crops: np.ndarray  # every chosen face's aligned crop, in order
    chips: list  # every chosen face's FaceChip (None unless asked for), in order


def map_ahead(fn: Callable, items: Iterable, *, workers: int, lookahead: int) -> Iterator:
    """`map(fn, items)` computed by `workers` threads at most `lookahead` items ahead of
    the consumer, in input order. Bounded, so a million-file directory is never read at
    once; a consumer that stops early cancels what has not started. With no workers, a
    plain lazy map.

    Decoding (Pillow releases the GIL) and the batches (torch releases it) both run this
    way: batches go through detection and embedding side by side, each on a share of the
    cores (see `configure_threads`). On CPU that beats giving every core to each op in
    turn: small ops gain little from a thread pool and pay its wake-ups and barriers."""
    if workers == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipeline") as pool:
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= max(lookahead, 1):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def configure_threads(torch_threads: int | None, device) -> None:
    """Torch threads per op: on CPU the batches run concurrently in `detect_workers` threads,
    so each gets half the cores (`torch_threads`, IDENTITY_TORCH_THREADS, overrides)."""
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    elif getattr(device, "type", str(device)) == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def to_full_resolution(face: DetectedFace, scale: float) -> DetectedFace:
    """The face in the original photo's (upright) pixels, whatever resolution detection
    ran at."""
    inverse = 1.0 / scale
    return DetectedFace(
        box=tuple(float(v) * inverse for v in face.box),  # type: ignore[arg-type]
        landmarks=(face.landmarks * inverse).astype(np.float32),
        probability=face.probability,
    )


def _embedded_face(
    face: DetectedFace, scale: float, *, embedding: np.ndarray, crop: np.ndarray | None,
    chip: FaceChip | None = None,
) -> Face:
    """Reported in full-resolution pixels; quality is judged at the working resolution,
    where the network saw the face."""
    full = to_full_resolution(face, scale)
    return Face(
        box=full.box,
        landmarks=full.landmarks,
        probability=face.probability,
        embedding=embedding,
        quality=face_quality(face),
        crop=crop,
        chip=chip,
    )
