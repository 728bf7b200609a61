"""Moving a live store to another embedding model (`identity models migrate --to NAME`).

Every face of the served model gets a vector of the target model, computed from its
face chip (re-aligned with the target's own template from the chip's landmarks) or,
for a face without a chip, from its source photo when that is still readable and
unchanged (sha256 checked). The vectors go to `face_embeddings` beside the source's
(identity/store/moves.py), in one transaction per page of faces. Search keeps answering
with the source meanwhile: nothing reads the target's vectors but its own mirror.

When every face has one, the target's FAISS index is built (and snapshotted, so the
other processes load it instead of rebuilding) and the move is switched in one
transaction that holds the change-log lock: no face can be enrolled between the check
"every face has a target vector" and the switch. Each process notices the switch within
a second, opens the target's pipeline and index, and swaps both at once
(`Service.follow_moves`). `finalize` then drops the source vectors.

Resuming: the move's row is the state; the work list is a query ("faces of the source
without a target vector"), and each page's vectors are written in one transaction with
ON CONFLICT DO NOTHING. A run killed at any point (SIGKILL included) leaves whole pages
written and nothing else; the next run continues from what is missing, and faces
enrolled meanwhile are simply more missing faces.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from identity.config import Settings
from identity.errors import InputError, ModelMoveError
from identity.faces import models
from identity.faces.align import align
from identity.faces.decode import decode_image, read_bytes
from identity.faces.embed import Embedder, resolve_device
from identity.faces.models.manifest import ModelSpec
from identity.faces.types import DetectedFace
from identity.store import ModelInfo, Store
from identity.store.moves import FaceSource, ModelMove

log = logging.getLogger(__name__)

PAGE = 64  # faces per transaction: a kill loses at most one page of work
_PROBLEMS_KEPT = 100
_SWITCH_ATTEMPTS = 20


@dataclass
class MoveReport:
    move_id: int
    source: str
    target: str
    state: str
    resumed: bool
    faces: int = 0  # faces of the source
    done_before: int = 0  # faces that had a target vector when this run started
    embedded: int = 0  # target vectors written by this run
    from_chips: int = 0
    from_photos: int = 0
    failed: int = 0  # faces with neither a chip nor a readable, unchanged photo
    problems: list[dict] = field(default_factory=list)  # the first few: {face_id, reason}
    seconds: float = 0.0  # embedding (this run)
    index_seconds: float = 0.0  # building the target's index
    index_faces: int | None = None
    switched: bool = False

    @property
    def faces_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        from dataclasses import asdict

        out = asdict(self)
        out["faces_per_second"] = round(self.faces_per_second, 1)
        out["seconds"] = round(self.seconds, 2)
        out["index_seconds"] = round(self.index_seconds, 2)
        return out


def model_settings(settings: Settings, name: str) -> Settings:
    """The settings with `name` as the pipeline's model (what a process serving it uses)."""
    return settings.replace(pipeline={"model": name})


def model_info(name: str) -> ModelInfo:
    spec = models.get_model(name)
    return ModelInfo(spec.name, spec.version, spec.dim)


class Reembedder:
    """The target model's embedder and alignment, exactly as `FacePipeline.from_settings`
    builds them for that model, so a moved face's vector equals what the target's
    pipeline computes from the same aligned crop."""

    def __init__(self, spec: ModelSpec, settings: Settings, *, embedder: Embedder | None = None) -> None:
        self.spec = spec
        self.settings = settings
        group = settings.pipeline
        self.alignment = models.alignment_method(spec, settings)
        self.margin = group.margin
        if embedder is None:
            device = resolve_device(group.device)
            embedder = Embedder.for_model(models.load_network(spec, settings, device=device), spec, group, device)
        self.embedder = embedder

    def _align(self, pixels: np.ndarray, face: DetectedFace) -> np.ndarray:
        return align(pixels, face, method=self.alignment, image_size=self.spec.input_size,
                     margin=self.margin, template=self.spec.template)

    def crop(self, row: FaceSource) -> tuple[np.ndarray | None, str]:
        """(aligned crop, 'chip' | 'photo') or (None, why not)."""
        if row.chip_jpeg is not None:
            pixels = np.asarray(Image.open(io.BytesIO(row.chip_jpeg)).convert("RGB"))
            rx, ry, side = row.chip_region
            k = row.chip_size / side
            box = tuple(float(v) for v in ((row.box[0] - rx) * k, (row.box[1] - ry) * k,
                                           (row.box[2] - rx) * k, (row.box[3] - ry) * k))
            landmarks = np.asarray(row.chip_landmarks, np.float64).reshape(5, 2)
            return self._align(pixels, DetectedFace(box, landmarks.astype(np.float32), 1.0)), "chip"
        if not row.image_source:
            return None, "no chip, and no source recorded for its photo"
        try:
            data = read_bytes(row.image_source)
            if hashlib.sha256(data).hexdigest() != row.image_sha256:
                return None, "no chip, and its photo changed since it was enrolled (sha256 differs)"
            image = decode_image(data, source=row.image_source, max_pixels=self.settings.pipeline.max_image_pixels,
                                 max_side=self.settings.pipeline.detect_max_side)
        except InputError as exc:
            return None, f"no chip, and its photo is unreadable: {exc.message}"
        s = image.scale
        box = tuple(float(v) * s for v in row.box)
        landmarks = (np.asarray(row.landmarks, np.float64).reshape(5, 2) * s).astype(np.float32)
        return self._align(image.pixels, DetectedFace(box, landmarks, 1.0)), "photo"


def _pages(store: Store, move: ModelMove, skip: set[int], page: int):
    """Pages of faces still missing a target vector, in id order, one pass."""
    after = 0
    while rows := store.faces_to_move(move, after=after, limit=page, skip=sorted(skip)):
        after = rows[-1].face_id
        yield rows


def _embed_missing(store: Store, move: ModelMove, reembedder: Reembedder, report: MoveReport,
                   skip: set[int], on_progress: Callable[[int, int], None] | None, workers: int,
                   page: int = PAGE) -> None:
    """One pass over the faces missing a target vector. Crops of the next page are cut
    (JPEG decode and warp release the GIL) while this page is embedded."""
    started = time.perf_counter()
    progress = store.move_progress(move)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="move-crop") as crops, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="move-page") as pool:
        def prepare(rows: list[FaceSource]):
            return rows, list(crops.map(reembedder.crop, rows))

        pending = None
        for rows in _pages(store, move, skip, page):
            current, pending = pending, pool.submit(prepare, rows)
            if current is not None:
                _write_page(store, move, reembedder, report, skip, *current.result())
                if on_progress is not None:
                    on_progress(progress["done"] + report.embedded, progress["faces"])
        if pending is not None:
            _write_page(store, move, reembedder, report, skip, *pending.result())
            if on_progress is not None:
                on_progress(progress["done"] + report.embedded, progress["faces"])
    report.seconds += time.perf_counter() - started


def _write_page(store: Store, move: ModelMove, reembedder: Reembedder, report: MoveReport, skip: set[int],
                rows: list[FaceSource], crops: list[tuple[np.ndarray | None, str]]) -> None:
    ok = [(row.face_id, crop, kind) for row, (crop, kind) in zip(rows, crops) if crop is not None]
    for row, (crop, reason) in zip(rows, crops):
        if crop is None:
            skip.add(row.face_id)
            report.failed += 1
            if len(report.problems) < _PROBLEMS_KEPT:
                report.problems.append({"face_id": row.face_id, "reason": reason})
    if not ok:
        return
    vectors = reembedder.embedder.embed(np.stack([c for _, c, _ in ok]))
    chips = sum(1 for *_, kind in ok if kind == "chip")
    written = store.add_move_embeddings(move, [i for i, _, _ in ok], vectors,
                                        from_chips=chips, from_photos=len(ok) - chips)
    report.embedded += written
    report.from_chips += chips
    report.from_photos += len(ok) - chips


def _build_index(store: Store, settings: Settings, info: ModelInfo, report: MoveReport) -> None:
    """The target's FAISS index, built from its vectors and snapshotted in the data
    directory, where every process's mirror of the target loads it."""
    from identity.index import IndexMirror

    started = time.perf_counter()
    mirror = IndexMirror.from_settings(store, model_settings(settings, info.name), info)
    mirror.open()
    try:
        report.index_faces = mirror.index.count
        mirror.snapshot()
    finally:
        mirror.stop(snapshot=False)
    report.index_seconds = time.perf_counter() - started


def migrate(store: Store, settings: Settings, target: str, *, source: str | None = None, switch: bool = True,
            reembedder: Reembedder | None = None, page: int = PAGE,
            on_progress: Callable[[int, int], None] | None = None) -> MoveReport:
    """Re-embed every face of `source` (default: the model the store serves in place of
    the configured one) with `target`, build the target's index and, with `switch`,
    make it the served model. Resumes an open move of the same pair."""
    if source is None:
        open_move = store.open_move()
        if open_move is not None and open_move.target == target:
            source = open_move.source  # resuming (or re-running a switched move to pick up stragglers)
        else:
            source = store.serving_model(settings.pipeline.model, adoptable=models.adoptable_models(settings))[0]
    spec = reembedder.spec if reembedder is not None else models.get_model(target)
    info = ModelInfo(spec.name, spec.version, spec.dim)
    move, resumed = store.begin_move(source, info)
    report = MoveReport(move.id, move.source, move.target, move.state, resumed)
    progress = store.move_progress(move)
    report.faces, report.done_before = progress["faces"], progress["done"]
    reembedder = reembedder or Reembedder(spec, model_settings(settings, target))
    workers = max(1, settings.pipeline.decode_workers)
    skip: set[int] = set()
    _embed_missing(store, move, reembedder, report, skip, on_progress, workers, page)
    move = store.record_move_run(move, failed=report.failed)
    if not switch or move.state == "switched":
        report.state = move.state
        report.switched = move.state == "switched"
        return report
    if report.failed:
        report.state = move.state
        raise ModelMoveError(
            f"{report.failed} face(s) have neither a chip nor a readable, unchanged photo (first: "
            f"{', '.join(str(p['face_id']) for p in report.problems[:10])}); restore their photos, or remove "
            "them (`identity faces remove`), then run `identity models migrate` again to switch")
    _build_index(store, settings, info, report)
    for _ in range(_SWITCH_ATTEMPTS):
        result = store.switch_move(move)
        if isinstance(result, ModelMove):
            report.state, report.switched = result.state, True
            return report
        # Faces enrolled with the source since the pass: embed them, and try again.
        _embed_missing(store, move, reembedder, report, skip, on_progress, workers, page)
        if report.failed:
            raise ModelMoveError(f"{report.failed} face(s) enrolled during the move cannot be re-embedded")
    raise ModelMoveError("faces keep arriving faster than the move embeds them; run it again when enrollment is calmer")


def finalize(store: Store, settings: Settings, *, reembedder: Reembedder | None = None) -> ModelMove:
    """Drop the source vectors of the switched move: faces written with the source after
    the switch (by a process that had not switched yet) are re-embedded first."""
    move = store.open_move()
    if move is None:
        raise ModelMoveError("no model move is open (`identity models migrate --to NAME` starts one)")
    if move.state != "switched":
        raise ModelMoveError(f"model move {move.id} to {move.target!r} is still running: let "
                             "`identity models migrate` finish (it switches), then finalize")
    for _ in range(_SWITCH_ATTEMPTS):
        result = store.finalize_move(move)
        if isinstance(result, ModelMove):
            return result
        spec = models.get_model(move.target)
        reembedder = reembedder or Reembedder(spec, model_settings(settings, move.target))
        report = MoveReport(move.id, move.source, move.target, move.state, True)
        _embed_missing(store, move, reembedder, report, set(), None, 1)
        if report.failed:
            raise ModelMoveError(f"{report.failed} face(s) written with {move.source} after the switch cannot "
                                 "be re-embedded; remove them and finalize again")
    raise ModelMoveError("faces of the old model keep arriving: is a process still running with it?")
