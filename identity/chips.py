"""Chips for faces stored before chips existed (or with `IDENTITY_CHIPS=false`): each
face's photo is read again from its recorded source, checked against the stored sha256
(a changed or replaced file would put someone else's pixels under the face), decoded
the way enrollment decoded it, and the chip is cut from the stored box and landmarks.
No network runs. Photos that are gone or changed are counted and listed, not fatal;
running it again only visits faces still without a chip.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby

from identity.config import Settings
from identity.errors import InputError
from identity.faces.chips import chip_from_photo
from identity.faces.decode import decode_image, read_bytes
from identity.faces.types import FaceChip
from identity.store import Store

_IMAGES_PER_PAGE = 64
_PROBLEMS_KEPT = 100


@dataclass
class BackfillSummary:
    images: int = 0  # photos visited
    chips: int = 0  # chips written
    unreadable: int = 0  # faces whose photo is gone, unreadable or has no recorded source
    changed: int = 0  # faces whose photo's bytes differ from what was enrolled
    seconds: float = 0.0
    problems: list[dict] = field(default_factory=list)  # the first few, {source, faces, reason}

    def to_dict(self) -> dict:
        return {"images": self.images, "chips": self.chips, "unreadable": self.unreadable,
                "changed": self.changed, "seconds": round(self.seconds, 2), "problems": self.problems}


def _chips_for_image(rows: list[tuple], settings: Settings) -> tuple[list[tuple[int, FaceChip]], str | None, str]:
    """(chips, problem, kind) for one photo's faces; kind is 'unreadable' or 'changed'."""
    _, sha256, source = rows[0][:3]
    if not source:
        return [], "no source recorded", "unreadable"
    try:
        data = read_bytes(source)
        if hashlib.sha256(data).hexdigest() != sha256:
            return [], "the file changed since it was enrolled (sha256 differs)", "changed"
        image = decode_image(data, source=source, max_pixels=settings.pipeline.max_image_pixels,
                             max_side=settings.pipeline.detect_max_side)
    except InputError as exc:
        return [], exc.message, "unreadable"
    return [(face_id, chip_from_photo(image.pixels, image.scale, box, landmarks,
                                      size=settings.store.chip_size, quality=settings.store.chip_quality))
            for _, _, _, face_id, box, landmarks in rows], None, ""


def backfill(store: Store, settings: Settings, *,
             on_progress: Callable[[BackfillSummary], None] | None = None) -> BackfillSummary:
    summary = BackfillSummary()
    start = time.perf_counter()
    after = 0
    with ThreadPoolExecutor(max_workers=max(1, settings.pipeline.decode_workers)) as pool:
        while rows := store.faces_without_chips(after_image=after, images=_IMAGES_PER_PAGE):
            photos = [list(group) for _, group in groupby(rows, key=lambda r: r[0])]
            after = photos[-1][0][0]
            written: list[tuple[int, FaceChip]] = []
            for photo, (chips, problem, kind) in zip(
                    photos, pool.map(lambda p: _chips_for_image(p, settings), photos)):
                summary.images += 1
                if problem is None:
                    written += chips
                    continue
                setattr(summary, kind, getattr(summary, kind) + len(photo))
                if len(summary.problems) < _PROBLEMS_KEPT:
                    summary.problems.append({"source": photo[0][2], "faces": len(photo), "reason": problem})
            summary.chips += store.add_chips(written)
            if on_progress is not None:
                on_progress(summary)
    summary.seconds = time.perf_counter() - start
    return summary
