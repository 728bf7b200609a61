"""Uploaded files: read into memory (the body limit already bounds them) and named by the
client's file name (base name only, printable characters).

What a worker or a background job must read is spooled per request or per job
(`identity/spool.py`) and released when that request or job ends; archives are kept
whole and read entry by entry (`identity/archives.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastapi import UploadFile

from identity import spool
from identity.config import Settings
from identity.errors import InputError, PayloadTooLargeError
from identity.faces.types import ImageRef


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes

    def ref(self) -> ImageRef:
        return ImageRef(source=self.name, data=self.data)


def file_name(upload: UploadFile, fallback: str) -> str:
    """The client's name for a file, safe to report and to store: its base name, printable
    characters only (no NUL, no control characters), at most 200 of them."""
    raw = (upload.filename or "").replace("\\", "/")
    base = PurePosixPath(raw).name.strip()
    return "".join(c for c in base if c.isprintable())[:200] or fallback


def read_uploads(files: list[UploadFile], max_images: int) -> list[Upload]:
    if not files:
        raise InputError("no image was uploaded")
    if len(files) > max_images:
        raise PayloadTooLargeError(f"{len(files)} images in one request; the limit is {max_images}")
    return [Upload(file_name(f, f"upload-{i}"), f.file.read()) for i, f in enumerate(files)]


def spool_uploads(settings: Settings, owner: str, uploads: list[Upload]) -> list[Path]:
    """Write the uploads into `owner`'s spool folder (507 past the spool quota)."""
    return spool.write(settings.data_dir, owner, [(u.data, Path(u.name).suffix) for u in uploads],
                       quota=settings.api.spool_quota_bytes)
