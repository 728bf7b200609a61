"""Zip archives of `<person>/<image>` entries, read entry by entry and never expanded to disk.

An uploaded archive is kept whole (one file, at most the upload limit) and its entries are
read from it when their batch runs, so a few hundred kilobytes of zip can no longer turn
into hundreds of megabytes, or tens of thousands of files, on the server's disk.

Nothing is taken from the archive's own size headers: `scan` decompresses every entry
once, counting the bytes it really gets against the limits, and checks each entry's
CRC and size as it goes, so a malformed archive (bad CRC, corrupt deflate stream,
encrypted entries, unsupported compression, lying size headers) is refused at upload
with a 422 naming the entry instead of failing later inside a job. Entry names are never
used as paths (no `..` or absolute-path escape): they only name the person and the photo.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from identity.errors import ImageDecodeError, InputError, PayloadTooLargeError
from identity.files import is_image_path

_CHUNK = 1 << 20
_SUPPORTED = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# Everything zipfile and zlib raise on a damaged archive: bad CRC and bad headers
# (BadZipFile), a corrupt deflate stream (zlib.error), a truncated one (EOFError), short
# structures (struct.error), and the odd ValueError/OSError from a lying offset.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, struct.error, ValueError, OSError,
            NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class Entry:
    member: str  # the entry's name as stored, the key to read it by
    name: str  # `person/.../photo.jpg`: what reports call the photo
    person: str  # the first folder: the person's external id
    size: int  # bytes it really decompressed to


def _open(source: str | Path | IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except _DAMAGED as exc:
        raise InputError(f"not a readable zip archive ({_why(exc)})", path="archive") from None


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def photo_name(member: str) -> tuple[str, str] | None:
    """(person, name) for an entry that is a photo in a person's folder; None for anything
    else: folders, top-level files, hidden or `_` entries, paths escaping the archive."""
    raw = PurePosixPath(member.replace("\\", "/"))
    if raw.is_absolute() or ".." in raw.parts:
        return None  # a traversal attempt names no person; it is skipped, never followed
    parts = [p for p in raw.parts if p not in ("", ".")]
    if len(parts) < 2 or any(p.startswith((".", "_")) for p in parts) or not is_image_path(Path(parts[-1])):
        return None
    return parts[0], "/".join(parts)


def _chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limit: int,
            too_large: str) -> Iterator[bytes]:
    """The entry's bytes, checked: refused if encrypted or compressed by an unsupported
    method, cut off with PayloadTooLargeError past `limit` bytes really read, and a
    damaged stream or a size header that lies is an InputError naming the entry."""
    if info.flag_bits & 0x1:
        raise InputError("encrypted entries are not supported", path=name)
    if info.compress_type not in _SUPPORTED:
        raise InputError(f"unsupported compression method {info.compress_type} "
                         f"(supported: {', '.join(_SUPPORTED.values())})", path=name)
    size = 0
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(min(_CHUNK, limit - size + 1)):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(too_large, path=name)
                yield chunk
    except _DAMAGED as exc:
        raise InputError(f"corrupt entry ({_why(exc)})", path=name) from None
    if size != info.file_size:
        raise InputError(f"the entry's size header says {info.file_size} bytes but it holds {size}",
                         path=name)


def scan(source: str | Path | IO[bytes], *, max_entries: int, max_total: int,
         max_entry: int) -> list[Entry]:
    """Every photo entry of the archive, after reading each one through once (no bytes
    kept). Limits: `max_entries` entries of any kind, `max_total` bytes decompressed over
    the whole archive, `max_entry` bytes for one photo; all counted while reading."""
    with _open(source) as archive:
        infos = archive.infolist()
        if len(infos) > max_entries:
            raise PayloadTooLargeError(f"the archive has {len(infos)} entries; the limit is {max_entries}",
                                       path="archive")
        entries: list[Entry] = []
        seen: set[str] = set()
        total = 0
        for info in infos:
            if info.filename in seen:
                raise InputError("the archive holds two entries of this name", path=info.filename)
            seen.add(info.filename)
            if info.is_dir():
                continue
            named = photo_name(info.filename)
            if named is None:
                continue
            person, name = named
            room = max_total - total
            if max_entry <= room:
                limit, message = max_entry, f"the entry is larger than {max_entry} bytes"
            else:
                limit, message = room, f"the archive expands to more than {max_total} bytes"
            size = sum(len(chunk) for chunk in _chunks(archive, info, name, limit, message))
            total += size
            entries.append(Entry(info.filename, name, person, size))
    return sorted(entries, key=lambda e: e.name)


class ArchiveReader:
    """One archive opened for a batch of its entries (opening parses the whole central
    directory, so a batch opens it once, not once per photo)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._archive = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ImageDecodeError("the uploaded archive is gone (its job ended)") from None
        except _DAMAGED as exc:
            raise ImageDecodeError(f"not a readable zip archive ({_why(exc)})") from None

    def read(self, member: str, *, name: str, max_bytes: int) -> bytes:
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise ImageDecodeError("no such entry in the archive", path=name) from None
        try:
            return b"".join(_chunks(self._archive, info, name, max_bytes,
                                    f"the entry is larger than {max_bytes} bytes"))
        except InputError as exc:  # unreadable for enrollment, whatever the reason
            raise ImageDecodeError(exc.message, path=name) from None

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
