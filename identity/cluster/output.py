"""What a person looks at after clustering: a JSON report, a folder per cluster (face
crops or links to the original photos) and a contact sheet per cluster."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from identity.cluster.types import UNCLUSTERED, ClusterResult, FaceSet
from identity.errors import ImageDecodeError, InputError

UNCLUSTERED_DIR = "unclustered"


def report(result: ClusterResult, faces: FaceSet) -> dict:
    """JSON-ready: clusters (largest first) → faces with image path, box and probability;
    then the unclustered faces, each with its reason when the quality filter left it out."""
    clusters = [
        {"cluster": c, "size": len(rows), "faces": [_face_entry(faces, int(i)) for i in rows]}
        for c, rows in enumerate(result.members())
    ]
    unclustered = []
    for i in np.flatnonzero(result.labels == UNCLUSTERED):
        entry = _face_entry(faces, int(i))
        reason = "" if result.reasons is None else str(result.reasons[i])
        entry["reason"] = reason or "no_match"
        unclustered.append(entry)
    return {
        "algorithm": result.algorithm,
        "params": _jsonable(result.params),
        "n_faces": len(faces),
        "n_images": len(faces.sources) if faces.sources else int(len(np.unique(faces.image_index))),
        "n_clusters": result.n_clusters,
        "n_unclustered": result.n_unclustered,
        "seconds": round(result.seconds, 3),
        "clusters": clusters,
        "unclustered": unclustered,
    }


def write_json(result: ClusterResult, faces: FaceSet, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report(result, faces), indent=2, ensure_ascii=False))
    os.replace(tmp, path)  # a reader never sees half a report
    return path


def write_cluster_folders(
    result: ClusterResult,
    faces: FaceSet,
    out_dir: Path,
    *,
    mode: Literal["crops", "links"] = "crops",
    crop_size: int = 160,
    include_unclustered: bool = False,
) -> list[Path]:
    """`out_dir/cluster_0000/…` per cluster. 'crops': a JPEG of each face (the aligned
    crop when the pipeline kept it, else cut from the photo by its box). 'links':
    symbolic links to the original photos (a photo with two clusters' faces is linked
    from both folders)."""
    if mode not in ("crops", "links"):
        raise InputError(f"unknown mode {mode!r}; choose 'crops' or 'links'")
    out_dir = Path(out_dir)
    groups = [(f"cluster_{c:04d}", rows) for c, rows in enumerate(result.members())]
    if include_unclustered:
        groups.append((UNCLUSTERED_DIR, np.flatnonzero(result.labels == UNCLUSTERED)))
    written: list[Path] = []
    for name, rows in groups:
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in rows:
            written.append(_write_member(faces, int(i), folder, mode, crop_size))
        written.append(folder)
    return [p for p in written if p.is_dir()]


def write_contact_sheets(
    result: ClusterResult,
    faces: FaceSet,
    out_dir: Path,
    *,
    thumb: int = 96,
    columns: int = 10,
    max_faces: int = 100,
) -> list[Path]:
    """One PNG per cluster: a grid of up to max_faces face thumbnails."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets = []
    for c, rows in enumerate(result.members()):
        thumbs = [face_crop(faces, int(i), thumb) for i in rows[:max_faces]]
        sheets.append(_sheet(thumbs, thumb, columns, out_dir / f"cluster_{c:04d}.png"))
    return sheets


def face_crop(faces: FaceSet, i: int, size: int = 160) -> Image.Image:
    """The face as a size×size RGB image: the pipeline's aligned crop when kept, else the
    box (squared, with a 20% margin, clipped) cut from the photo it came from."""
    if faces.crops is not None and faces.crops[i] is not None:
        return Image.fromarray(np.asarray(faces.crops[i], np.uint8)).resize((size, size))
    if faces.boxes is None or not faces.sources:
        raise InputError("faces have neither crops nor boxes with image paths to cut them from")
    source = faces.source_of(i)
    try:
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")  # boxes are in upright pixels
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot reopen the photo to cut a face crop: {exc}", path=source) from None
    return image.crop(_square_box(faces.boxes[i], image.size)).resize((size, size))


def _square_box(box: np.ndarray, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * 1.2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = image_size
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def _write_member(faces: FaceSet, i: int, folder: Path, mode: str, crop_size: int) -> Path:
    source = faces.source_of(i)
    stem = f"{i:07d}_{Path(source).stem}"
    if mode == "links":
        link = folder / f"{stem}{Path(source).suffix}"
        if not link.is_symlink():
            link.symlink_to(Path(source).resolve())
        return link
    path = folder / f"{stem}.jpg"
    face_crop(faces, i, crop_size).save(path, quality=92)
    return path


def _sheet(thumbs: list[Image.Image], thumb: int, columns: int, path: Path) -> Path:
    cols = max(1, min(columns, len(thumbs)))
    rows = max(1, math.ceil(len(thumbs) / cols))
    pad = 4
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, rows * (thumb + pad) + pad), (255, 255, 255))
    for n, image in enumerate(thumbs):
        r, c = divmod(n, cols)
        sheet.paste(image, (pad + c * (thumb + pad), pad + r * (thumb + pad)))
    sheet.save(path)
    return path


def _face_entry(faces: FaceSet, i: int) -> dict:
    entry: dict = {"face": i, "image": faces.source_of(i)}
    if faces.boxes is not None:
        entry["box"] = [round(float(v), 1) for v in faces.boxes[i]]
    if faces.probabilities is not None:
        entry["probability"] = round(float(faces.probabilities[i]), 4)
    return entry


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value
