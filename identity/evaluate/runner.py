"""Evaluations run through the project's face pipeline: LFW pairs, identification, calibration.

Each image is embedded once, with facenet's LFW face choice (`select="central"`: the
largest face nearest the centre). For the pairs protocol every pair must be scored, so
an image in which no face is found gets a fallback embedding: the crop (same `crop`
alignment and margin as detected faces) of the *median detected face box* of the run,
in coordinates relative to the image size. LFW images are centred on their face by
construction, so this is facenet's centre-crop fallback with a box size learned from
the data rather than guessed. Such images are counted and listed in the report;
calibration and identification leave them out instead, since a guessed face must not
set a threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from identity.config import Settings
from identity.errors import InputError
from identity.evaluate.calibrate import (
    LEVELS,
    ClusteringFit,
    LevelThreshold,
    all_pair_scores,
    calibrate_clustering,
    calibrate_levels,
    write_calibration,
)
from identity.evaluate.identify import IdentificationMetrics, identification_metrics, split_gallery
from identity.evaluate.metrics import (
    RocCurve,
    VerificationMetrics,
    cosine_scores,
    verification_metrics,
)
from identity.evaluate.pairs import PairList, parse_pairs
from identity.evaluate.report import plot_roc, write_json
from identity.faces.align import crop
from identity.faces.embed import Embedder
from identity.faces.models import AlignMethod, ModelSpec
from identity.faces.types import ImageResult
from identity.files import is_image_path

FALLBACK_RULE = (
    "crop of the median detected face box (relative coordinates), as for a detected face"
)
# Used only when no image of the run has a face: the central 45% (an LFW face's share).
_DEFAULT_RELATIVE_BOX = (0.275, 0.275, 0.725, 0.725)

Progress = Callable[[int], None]  # called with the number of images just finished


class Pipeline(Protocol):
    """What evaluation needs of `identity.faces.pipeline.FacePipeline`."""

    spec: ModelSpec
    embedder: Embedder
    alignment: AlignMethod  # the model's, unless the settings override it
    margin: int

    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def dim(self) -> int: ...
    def process(self, refs, *, select=..., keep_crops=...): ...
    def decode(self, ref): ...


@dataclass
class EmbeddedImages:
    """One embedding per image (row i is paths[i]); `detected[i]` False means fallback."""

    paths: list[Path]
    embeddings: np.ndarray
    detected: np.ndarray
    boxes: np.ndarray  # n×4 in full-resolution pixels (the fallback box where not detected)
    probabilities: np.ndarray
    seconds: float

    @property
    def no_face(self) -> list[Path]:
        return [p for p, d in zip(self.paths, self.detected) if not d]

    def rows(self, paths: Sequence[Path]) -> np.ndarray:
        where = {p: i for i, p in enumerate(self.paths)}
        return np.array([where[p] for p in paths], dtype=np.int64)


def embed_images(
    pipeline: Pipeline, paths: Sequence[Path], *, progress: Progress | None = None
) -> EmbeddedImages:
    """Embed each image's central face; fallback crops for images without one.

    Raises InputError when an image cannot be read: evaluation data must be complete.
    """
    start = time.perf_counter()
    n, dim = len(paths), pipeline.dim
    emb = np.zeros((n, dim), np.float32)
    detected = np.zeros(n, bool)
    boxes = np.zeros((n, 4), np.float32)
    probs = np.zeros(n, np.float32)
    relative: list[np.ndarray] = []
    for i, result in enumerate(pipeline.process([str(p) for p in paths], select="central")):
        _check_readable(result)
        if result.faces:
            face = result.faces[0]
            emb[i], detected[i], probs[i] = face.embedding, True, face.probability
            boxes[i] = face.box
            relative.append(
                np.array(face.box) / [result.width, result.height, result.width, result.height]
            )
        if progress:
            progress(1)
    box = np.median(relative, axis=0) if relative else np.array(_DEFAULT_RELATIVE_BOX)
    for i in np.flatnonzero(~detected):
        emb[i], boxes[i] = _fallback_embedding(pipeline, paths[i], box)
    return EmbeddedImages(list(paths), emb, detected, boxes, probs, time.perf_counter() - start)


def _check_readable(result: ImageResult) -> None:
    if result.error is not None:
        raise InputError(f"evaluation image unreadable: {result.error}", path=result.source)


def _fallback_embedding(
    pipeline: Pipeline, path: Path, relative_box: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    image = pipeline.decode(str(path))
    h, w = image.pixels.shape[:2]
    box = tuple(float(v) for v in relative_box * [w, h, w, h])
    size = pipeline.embedder.input_size
    pixels = crop(image.pixels, box, image_size=size, margin=pipeline.margin)
    full_box = np.array(box) / image.scale
    return pipeline.embedder.embed(np.array(pixels[None]))[0], full_box


# --- LFW pairs ------------------------------------------------------------------------------


@dataclass
class LfwReport:
    model: str
    model_version: str
    alignment: str
    flip: bool
    pairs_file: str
    image_dir: str
    n_images: int
    n_no_face: int
    no_face: list[str]
    fallback: str
    metrics: VerificationMetrics
    embed_seconds: float
    total_seconds: float
    roc_png: str | None = None
    report_json: str | None = None
    roc: RocCurve | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("roc")
        return d


def score_pairs(pairs: PairList, embedded: EmbeddedImages) -> np.ndarray:
    a = embedded.embeddings[embedded.rows([p.path1 for p in pairs.pairs])]
    b = embedded.embeddings[embedded.rows([p.path2 for p in pairs.pairs])]
    return cosine_scores(a, b)


def load_pairs(image_dir: Path, pairs_file: Path, *, per_fold_half: int | None = None) -> PairList:
    pairs = parse_pairs(pairs_file, image_dir)
    if per_fold_half is not None:
        pairs = pairs.subset(per_fold_half)
    missing = pairs.missing_paths()
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise InputError(
            f"{len(missing)} images named by the pairs are missing, e.g. {shown}",
            path=str(pairs_file),
        )
    return pairs


def run_lfw(
    pipeline: Pipeline,
    image_dir: Path | str,
    pairs_file: Path | str,
    *,
    out_dir: Path | None = None,
    far_target: float = 1e-3,
    per_fold_half: int | None = None,
    progress: Progress | None = None,
    embedded: EmbeddedImages | None = None,
) -> LfwReport:
    """facenet's LFW protocol through our pipeline; with `out_dir`, writes
    `lfw_report.json` and `lfw_roc.png` there. `per_fold_half` limits each fold to that
    many same and different pairs (quick runs). `embedded` reuses earlier embeddings."""
    start = time.perf_counter()
    pairs = load_pairs(Path(image_dir), Path(pairs_file), per_fold_half=per_fold_half)
    if embedded is None:
        embedded = embed_images(pipeline, pairs.unique_paths(), progress=progress)
    metrics, curve = verification_metrics(
        score_pairs(pairs, embedded), pairs.labels, pairs.folds, far_target
    )
    report = LfwReport(
        model=pipeline.model_name,
        model_version=pipeline.model_version,
        alignment=(
            str(pipeline.alignment)
            if pipeline.alignment == AlignMethod.CROP
            else f"{pipeline.alignment}/{pipeline.spec.template}"
        ),
        flip=pipeline.embedder.flip,
        pairs_file=str(pairs_file),
        image_dir=str(image_dir),
        n_images=len(embedded.paths),
        n_no_face=len(embedded.no_face),
        no_face=[str(p) for p in embedded.no_face],
        fallback=FALLBACK_RULE,
        metrics=metrics,
        embed_seconds=embedded.seconds,
        total_seconds=time.perf_counter() - start,
        roc=curve,
    )
    if out_dir is not None:
        write_lfw_outputs(report, Path(out_dir))
    return report


def write_lfw_outputs(report: LfwReport, out_dir: Path) -> None:
    assert report.roc is not None
    m = report.metrics
    label = f"acc {m.accuracy_mean:.4f}, AUC {m.auc:.4f}"
    report.roc_png = str(
        plot_roc(report.roc, out_dir / "lfw_roc.png", title=f"LFW, {report.model}", label=label)
    )
    report.report_json = str(out_dir / "lfw_report.json")
    write_json(report.to_dict(), Path(report.report_json))


# --- identification -----------------------------------------------------------------------------


@dataclass
class IdentifyReport:
    model: str
    model_version: str
    image_dir: str
    n_images: int
    n_no_face: int
    no_face: list[str]
    metrics: IdentificationMetrics
    embed_seconds: float
    total_seconds: float
    report_json: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def labelled_images(image_dir: Path) -> tuple[list[Path], list[str]]:
    """Images one folder below `image_dir`; the folder name is the person."""
    paths = sorted(
        p for p in Path(image_dir).glob("*/*") if p.is_file() and is_image_path(p)
    )
    if not paths:
        raise InputError("no images found in <dir>/<person>/<image> layout", path=str(image_dir))
    return paths, [p.parent.name for p in paths]


def run_identify(
    pipeline: Pipeline,
    image_dir: Path | str,
    *,
    false_alarm_rates: Sequence[float] = (1e-2,),
    ranks: Sequence[int] = (1, 5),
    out_dir: Path | None = None,
    progress: Progress | None = None,
    embedded: EmbeddedImages | None = None,
) -> IdentifyReport:
    """Rank-k and open-set DIR on `<dir>/<person>/<image>`; images without a face are left
    out (and reported) so the gallery holds only real detections."""
    start = time.perf_counter()
    paths, labels = labelled_images(Path(image_dir))
    if embedded is None:
        embedded = embed_images(pipeline, paths, progress=progress)
    rows = embedded.rows(paths)
    keep = embedded.detected[rows]
    kept_paths = [p for p, k in zip(paths, keep) if k]
    kept_labels = [lab for lab, k in zip(labels, keep) if k]
    split = split_gallery(kept_labels, [str(p) for p in kept_paths])
    metrics = identification_metrics(
        embedded.embeddings[rows[keep]],
        kept_labels,
        split,
        ranks=ranks,
        false_alarm_rates=false_alarm_rates,
    )
    report = IdentifyReport(
        model=pipeline.model_name,
        model_version=pipeline.model_version,
        image_dir=str(image_dir),
        n_images=len(paths),
        n_no_face=int((~keep).sum()),
        no_face=[str(p) for p, k in zip(paths, keep) if not k],
        metrics=metrics,
        embed_seconds=embedded.seconds,
        total_seconds=time.perf_counter() - start,
    )
    if out_dir is not None:
        report.report_json = str(
            write_json(report.to_dict(), Path(out_dir) / "identify_report.json")
        )
    return report


# --- calibration ------------------------------------------------------------------------------------


@dataclass
class CalibrationReport:
    model: str
    model_version: str
    source: str
    n_images: int
    n_no_face: int
    levels: dict[str, LevelThreshold]
    pairs_file_far: dict[str, float]  # FAR of each threshold on the file's own different pairs
    clustering: ClusteringFit | None = None
    path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def run_calibration(
    pipeline: Pipeline,
    image_dir: Path | str,
    pairs_file: Path | str,
    *,
    settings: Settings,
    levels: dict[str, float] = LEVELS,
    clustering: bool = True,
    write: bool = True,
    progress: Progress | None = None,
    embedded: EmbeddedImages | None = None,
) -> CalibrationReport:
    """Thresholds for target FARs from every cross-identity pair of the images the pairs
    file names (detected faces only), and (with `clustering`) the clustering floor and
    merge that cluster those faces best by BCubed F1 against their folder names; stored
    under the model version when `write`. `settings` (the pipeline's) give the clustering
    parameters the fit starts from and where the calibration file is written."""
    from identity.cluster import ClusterParams

    pairs = load_pairs(Path(image_dir), Path(pairs_file))
    paths = pairs.unique_paths()
    if embedded is None:
        embedded = embed_images(pipeline, paths, progress=progress)
    rows = embedded.rows(paths)
    keep = rows[embedded.detected[rows]]
    names = [embedded.paths[i].parent.name for i in keep]
    impostor, genuine = all_pair_scores(embedded.embeddings[keep], names)
    thresholds = calibrate_levels(impostor, genuine, levels)
    source = (
        f"{Path(pairs_file).name} images in {image_dir}: {len(keep)} detected faces, "
        f"{impostor.size} cross-identity and {genuine.size} same-identity pairs"
    )
    fit = None
    if clustering:
        # Each image's one (central) face, clustered as if unlabelled, scored by folder name.
        params = ClusterParams.from_settings(settings)
        fit = calibrate_clustering(embedded.embeddings[keep], names, params)
        source += f"; clustering: {fit.n_faces} faces of {fit.n_identities} people ({fit.algorithm})"
    scores, labels = score_pairs(pairs, embedded), pairs.labels
    on_file = {
        name: float(np.mean(scores[~labels] >= lt.similarity)) for name, lt in thresholds.items()
    }
    report = CalibrationReport(
        model=pipeline.model_name,
        model_version=pipeline.model_version,
        source=source,
        n_images=len(paths),
        n_no_face=int(len(paths) - len(keep)),
        levels=thresholds,
        pairs_file_far=on_file,
        clustering=fit,
    )
    if write:
        report.path = str(
            write_calibration(
                thresholds, pipeline.spec, settings, source=source, clustering=fit
            )
        )
    return report
