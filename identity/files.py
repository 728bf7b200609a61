"""Finding image files on disk."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import os

from identity.errors import InputError, PathNotAllowedError

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


def confine(path: str | os.PathLike, roots: list[Path]) -> Path:
    """`path` resolved (symlinks followed, `..` collapsed), if it lies inside one of
    `roots` (also resolved); PathNotAllowedError otherwise. Relative paths are taken
    relative to the first root, never to the server's working directory."""
    raw = str(path)
    if not roots:
        raise PathNotAllowedError("no server-side directories are allowed (set allowed_roots)", path=raw)
    if "\x00" in raw:
        raise PathNotAllowedError("invalid path", path=raw.replace("\x00", ""))
    resolved_roots = [Path(r).resolve() for r in roots]
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = resolved_roots[0] / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # name too long, symlink loop, …
        raise PathNotAllowedError(f"cannot resolve the path ({type(exc).__name__})", path=raw[:300]) from None
    for root in resolved_roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathNotAllowedError("outside the allowed server-side directories", path=raw[:300])
