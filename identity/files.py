"""Finding image files on disk."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from identity.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def expand_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their extension: the decoder judges them), and every image
    file under each directory, recursively, in sorted order so runs are reproducible.

    A path that does not exist, or a folder without a single image file, is bad input
    (`InputError` naming it) before any work starts: a typo must not look like an empty
    result."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p))
            if not images:
                raise InputError(
                    f"no image files in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})",
                    path=str(path))
            found += images
        elif path.exists():
            found.append(path)
        else:
            raise InputError("no such file or directory", path=str(path))
    return found
