"""Is a weight file the one the manifest pins? Size at every start; sha256 only when the
file's size/mtime are not yet on record (hashing 92 MB at every start would dominate it)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from identity.errors import ModelCorruptError, ModelNotFoundError
from identity.faces.models.kinds import WeightStatus
from identity.faces.models.license import fetch_command
from identity.faces.models.manifest import Weighted
from identity.faces.models.paths import (
    AnySettings,
    how_to_obtain,
    record_path,
    weight_path,
    write_atomic,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a weight file cheaply (size, mtime) and what it really is (sha256)."""

    size: int
    mtime_ns: int
    sha256: str


def _read_record(path: Path) -> Fingerprint | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Fingerprint(int(raw["size"]), int(raw["mtime_ns"]), str(raw["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_record(path: Path, fp: Fingerprint) -> None:
    body = json.dumps({"size": fp.size, "mtime_ns": fp.mtime_ns, "sha256": fp.sha256}).encode()
    try:
        write_atomic(path, lambda f: f.write(body))
    except OSError as exc:  # a read-only cache only costs a re-hash next start
        log.warning("cannot write %s (%s); the weights will be hashed again next start", path, exc)


def _refetch(spec: Weighted) -> str:
    return f"delete it and run `{fetch_command(spec)}`"


def check_size(spec: Weighted, source: Path, size: int) -> None:
    expected = spec.weight_file.size
    if expected is not None and size != expected:
        raise ModelCorruptError(
            f"weight file is {size:,} bytes, the manifest expects {expected:,} (truncated or wrong "
            f"file); {_refetch(spec)}",
            path=str(source),
        )


def check_digest(spec: Weighted, source: Path, digest: str) -> None:
    expected = spec.weight_file.sha256
    if expected and digest != expected:
        raise ModelCorruptError(
            f"weight file has sha256 {digest}, the manifest pins {expected}; {_refetch(spec)}",
            path=str(source),
        )


def verified_source(spec: Weighted, settings: AnySettings) -> tuple[Path, Fingerprint]:
    """The weight file, checked: size every time, sha256 when its size/mtime are not on record."""
    source = weight_path(spec, settings)
    try:
        st = source.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(how_to_obtain(spec, settings), path=str(source)) from None
    check_size(spec, source, st.st_size)
    record_file = record_path(spec, settings)
    record = _read_record(record_file)
    if record and (record.size, record.mtime_ns) == (st.st_size, st.st_mtime_ns):
        check_digest(spec, source, record.sha256)  # the manifest may have changed since
        return source, record
    fp = Fingerprint(st.st_size, st.st_mtime_ns, sha256_file(source))
    check_digest(spec, source, fp.sha256)
    if not spec.weight_file.pinned:
        log.warning(
            "%s is not pinned in the manifest; its weights have sha256 %s",
            spec.label,
            fp.sha256,
        )
    _save_record(record_file, fp)
    return source, fp


@dataclass(frozen=True)
class ModelStatus:
    name: str
    status: WeightStatus
    path: Path
    detail: str = ""


def verify(spec: Weighted, settings: AnySettings) -> ModelStatus:
    """For `identity models list`: present (size and sha256 match), missing, or corrupt."""
    path = weight_path(spec, settings)
    try:
        _, fp = verified_source(spec, settings)
    except ModelNotFoundError:
        return ModelStatus(spec.name, WeightStatus.MISSING, path, f"run `{fetch_command(spec)}`")
    except ModelCorruptError as exc:
        return ModelStatus(spec.name, WeightStatus.CORRUPT, path, exc.message)
    pin = "" if spec.weight_file.pinned else " (not pinned)"
    return ModelStatus(spec.name, WeightStatus.PRESENT, path, f"sha256 {fp.sha256}{pin}")
