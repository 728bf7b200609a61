"""Finding image files on disk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def expand_images(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given (whatever their extension: the decoder judges them), and every image
    file under each directory, recursively, in sorted order so runs are reproducible."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p))
        else:
            yield path
