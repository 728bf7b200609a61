"""What a person looks at after clustering: a JSON report, a folder per cluster (face
crops or links to the original photos), and a contact sheet per cluster (and one of the
unclustered faces), each titled with what it is.

One output folder holds one run: `previous_result` finds an earlier run's files and
`clear_previous` removes exactly those (never anything else in the folder), so the
results of two runs never mix."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from identity.cluster.types import UNCLUSTERED, ClusterResult, FaceSet
from identity.errors import ImageDecodeError, InputError

UNCLUSTERED_DIR = "unclustered"
REPORT = "clusters.json"
SHEETS_DIR = "sheets"
_CLUSTER_DIR = re.compile(r"^cluster_\d{4,}$")


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


def write_json(result: ClusterResult, faces: FaceSet, path: Path, *,
               annotations: Mapping[int, dict] | None = None) -> Path:
    """The report as JSON; `annotations[cluster]` adds fields to that cluster's entry (who
    it matched, what it was saved as)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = report(result, faces)
    for entry in data["clusters"]:
        entry.update((annotations or {}).get(entry["cluster"], {}))
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
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


def previous_result(out_dir: Path) -> list[Path]:
    """The files and folders an earlier run wrote into `out_dir` (empty when none)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir()
                  if p.name in (REPORT, REPORT + ".tmp", SHEETS_DIR, UNCLUSTERED_DIR) or _CLUSTER_DIR.match(p.name))


def clear_previous(out_dir: Path) -> list[Path]:
    """Remove what `previous_result` finds, and only that; returns what was removed."""
    found = previous_result(out_dir)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found


def write_contact_sheets(
    result: ClusterResult,
    faces: FaceSet,
    out_dir: Path,
    *,
    thumb: int = 96,
    columns: int = 10,
    max_faces: int = 100,
    titles: Mapping[int, str] | None = None,
    unclustered: bool = True,
) -> list[Path]:
    """One PNG per cluster, a grid of up to max_faces face thumbnails under a title
    (cluster number, size, and `titles[cluster]`: who it matched or was saved as), and
    `unclustered.png` for the faces left out, titled with their reasons."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    titles = titles or {}
    sheets = []
    for c, rows in enumerate(result.members()):
        thumbs = [face_crop(faces, int(i), thumb) for i in rows[:max_faces]]
        title = f"cluster {c} | {_faces(len(rows), len(thumbs))}" + (f" | {titles[c]}" if c in titles else "")
        sheets.append(_sheet(thumbs, thumb, columns, out_dir / f"cluster_{c:04d}.png", title))
    left_out = np.flatnonzero(result.labels == UNCLUSTERED)
    if unclustered and len(left_out):
        thumbs = [face_crop(faces, int(i), thumb) for i in left_out[:max_faces]]
        reasons = Counter(("" if result.reasons is None else str(result.reasons[i])) or "no_match" for i in left_out)
        why = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        sheets.append(_sheet(thumbs, thumb, columns, out_dir / f"{UNCLUSTERED_DIR}.png",
                             f"unclustered | {_faces(len(left_out), len(thumbs))} | {why}"))
    return sheets


def _faces(total: int, shown: int) -> str:
    return f"{total} face{'s' if total != 1 else ''}" + (f" (first {shown} shown)" if shown < total else "")


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


TITLE_PX = 14  # title text size; the band above the grid is TITLE_PX + 2 * pad


def _sheet(thumbs: list[Image.Image], thumb: int, columns: int, path: Path, title: str | None = None) -> Path:
    cols = max(1, min(columns, len(thumbs)))
    rows = max(1, math.ceil(len(thumbs) / cols))
    pad = 4
    band = TITLE_PX + 2 * pad if title else 0
    width = cols * (thumb + pad) + pad
    if title:
        font = ImageFont.load_default(size=TITLE_PX)
        # A sheet of two faces is narrower than its title: widen the paper, not shorten the title.
        width = max(width, math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 2 * pad)
    sheet = Image.new("RGB", (width, band + rows * (thumb + pad) + pad), (255, 255, 255))
    if title:
        ImageDraw.Draw(sheet).text((pad, pad), title, fill=(0, 0, 0), font=font)
    for n, image in enumerate(thumbs):
        r, c = divmod(n, cols)
        sheet.paste(image, (pad + c * (thumb + pad), band + pad + r * (thumb + pad)))
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
