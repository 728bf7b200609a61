"""Uploaded files: read into memory (the body limit already bounds them), named by the
client's file name (base name only), and spooled to disk when a worker must read them.

The spool is content-addressed (`data_dir/uploads/<sha256><suffix>`): the same photo
uploaded twice is one file, and a path handed to a worker names exactly those bytes.
Workers must see the same `data_dir` (a shared volume in docker-compose.yml).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastapi import UploadFile

from identity.errors import InputError, PayloadTooLargeError
from identity.faces.types import ImageRef
from identity.files import is_image_path


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes

    def ref(self) -> ImageRef:
        return ImageRef(source=self.name, data=self.data)


def _name(upload: UploadFile, i: int) -> str:
    raw = (upload.filename or "").replace("\\", "/")
    base = PurePosixPath(raw).name.strip() or f"upload-{i}"
    return "".join(c for c in base if c.isprintable())[:200] or f"upload-{i}"


def read_uploads(files: list[UploadFile], max_images: int) -> list[Upload]:
    if not files:
        raise InputError("no image was uploaded")
    if len(files) > max_images:
        raise PayloadTooLargeError(f"{len(files)} images in one request; the limit is {max_images}")
    return [Upload(_name(f, i), f.file.read()) for i, f in enumerate(files)]


def spool_dir(data_dir: Path) -> Path:
    directory = Path(data_dir) / "uploads"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def spool(data: bytes, data_dir: Path, suffix: str = "") -> Path:
    """Write bytes under their sha256 (atomically: a reader never sees half a file)."""
    digest = hashlib.sha256(data).hexdigest()
    suffix = suffix.lower() if suffix and len(suffix) <= 6 and suffix[1:].isalnum() else ""
    target = spool_dir(data_dir) / f"{digest}{suffix}"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    return target


def extract_archive(data: bytes, data_dir: Path, max_total: int, max_files: int = 1_000_000):
    """A zip of `<person>/<image>` entries → [(person, spooled path, name in archive)].

    Entries are never extracted by their own names (no `..` or absolute-path escape):
    each image is spooled by content hash. Sizes are checked from the archive's
    directory before anything is decompressed, and again while reading (zip bombs)."""
    import io

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InputError("not a zip archive", path="archive") from None
    entries = [i for i in archive.infolist() if not i.is_dir()]
    if len(entries) > max_files:
        raise PayloadTooLargeError(f"{len(entries)} files in the archive; the limit is {max_files}")
    if sum(i.file_size for i in entries) > max_total:
        raise PayloadTooLargeError(f"the archive expands to more than {max_total} bytes")
    items = []
    total = 0
    for info in sorted(entries, key=lambda i: i.filename):
        raw = PurePosixPath(info.filename.replace("\\", "/"))
        if raw.is_absolute() or ".." in raw.parts:
            continue  # a traversal attempt names no person; it is skipped, never followed
        parts = [p for p in raw.parts if p not in ("", ".")]
        if len(parts) < 2 or any(p.startswith((".", "_")) for p in parts) or not is_image_path(Path(parts[-1])):
            continue
        with archive.open(info) as handle:
            payload = handle.read(max_total - total + 1)
        total += len(payload)
        if total > max_total:
            raise PayloadTooLargeError(f"the archive expands to more than {max_total} bytes")
        items.append((parts[0], spool(payload, data_dir, Path(parts[-1]).suffix), "/".join(parts)))
    return items
