"""Where a model's files live: its weights, the record of their verification, the cached
conversion, and its calibration; and the one way files are written (atomically).

The weight functions take the whole `Settings` or only its `pipeline` group (all they read),
so a component holding its group (the detector) asks the same questions."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import platformdirs

from identity.config import PipelineSettings, Settings
from identity.faces.models.license import fetch_command
from identity.faces.models.manifest import DetectorSpec, ModelSpec, Weighted

AnySettings = Settings | PipelineSettings


def pipeline_group(settings: AnySettings) -> PipelineSettings:
    return settings.pipeline if isinstance(settings, Settings) else settings


def weight_path(spec: Weighted, settings: AnySettings) -> Path:
    """models_dir/<file>. A detector's file is also looked for in cache_dir (where the
    companions of a read-only models_dir go) when models_dir lacks it."""
    group = pipeline_group(settings)
    path = Path(group.models_dir) / spec.weight_file.name
    if isinstance(spec, DetectorSpec) and group.cache_dir is not None and not path.exists():
        cached = Path(group.cache_dir) / spec.weight_file.name
        if cached.is_file():
            return cached
    return path


def _dir_writable(directory: Path) -> bool:
    # root passes os.access on any directory; a directory whose mode grants write to
    # nobody is meant to be read-only (a shared model store), so respect the bits too.
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    return os.access(directory, os.W_OK) and bool(
        mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    )


def cache_dir(spec: Weighted, settings: AnySettings) -> Path:
    """settings.pipeline.cache_dir if set; else next to the weight file if writable; else the user cache."""
    if pipeline_group(settings).cache_dir is not None:
        return Path(pipeline_group(settings).cache_dir)
    source_dir = weight_path(spec, settings).parent
    if _dir_writable(source_dir):
        return source_dir
    return Path(platformdirs.user_cache_dir("identity"))


def converted_path(spec: ModelSpec, settings: Settings) -> Path:
    """The cached torch state dict converted from a Keras or ONNX weight file."""
    return cache_dir(spec, settings) / f"{spec.weight_file.name}.converted.pt"


def record_path(spec: Weighted, settings: AnySettings) -> Path:
    """The record (size, mtime, sha256) that spares re-hashing the weights at every start."""
    return cache_dir(spec, settings) / f"{spec.weight_file.name}.verified.json"


def calibration_path(spec: ModelSpec, settings: Settings) -> Path:
    return Path(settings.data_dir) / "calibration" / f"{spec.name}@{spec.version}.json"


def how_to_obtain(spec: Weighted, settings: AnySettings) -> str:
    configured = f" (IDENTITY_DETECTOR={spec.name})" if isinstance(spec, DetectorSpec) else ""
    return (
        f"weights of {spec.label}{configured} not found at {weight_path(spec, settings)}. "
        f"Run `{fetch_command(spec)}` to download them "
        f"({spec.weight_file.source}), or set IDENTITY_MODELS_DIR to the directory that holds "
        f"{spec.weight_file.name}."
    )


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same directory, then rename: readers see the
    old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
