"""A model's calibration: verification thresholds (cosine similarity at named levels) and
clustering parameters. Shipped defaults come from the manifest; `identity calibrate` writes
`data_dir/calibration/<name>@<version>.json`, which overrides them. One writer and one
reader of that file: this module."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from identity.config import Settings
from identity.errors import ConfigError
from identity.faces.models.manifest import ClusteringDefaults, ModelSpec
from identity.faces.models.paths import calibration_path, write_atomic


def save_calibration(
    spec: ModelSpec,
    settings: Settings,
    levels: dict[str, dict],
    source: str,
    *,
    clustering: dict | None = None,
) -> Path:
    """Write measured thresholds (and clustering parameters) in the agreed format, e.g.
    levels = {"normal": {"similarity": 0.52, "far": 1e-3}, ...},
    clustering = {"floor": 0.7, "merge_similarity": 0.8, ...};
    source = what they were measured on. Extra keys explain the numbers and are kept."""
    for level, values in levels.items():
        if "similarity" not in values:
            raise ConfigError(f"calibration level {level!r} lacks 'similarity'")
    if clustering is not None and not {"floor", "merge_similarity"} <= set(clustering):
        raise ConfigError("calibrated clustering needs 'floor' and 'merge_similarity'")
    body = {
        "model": spec.name,
        "version": spec.version,
        "levels": levels,
        **({"clustering": clustering} if clustering is not None else {}),
        "source": source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = calibration_path(spec, settings)
    data = json.dumps(body, indent=2).encode()
    write_atomic(path, lambda f: f.write(data))
    return path


def _read(spec: ModelSpec, settings: Settings) -> dict | None:
    path = calibration_path(spec, settings)
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if (body["model"], body["version"]) != (spec.name, spec.version):
            raise ConfigError(
                f"calibration file is for {body['model']}@{body['version']}, not {spec.name}@{spec.version}",
                path=str(path),
            )
        return body
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable calibration file ({exc!r})", path=str(path)) from exc


def load_thresholds(spec: ModelSpec, settings: Settings) -> dict[str, float]:
    """Manifest defaults, overridden level by level by the calibration file when it exists."""
    thresholds = dict(spec.thresholds)
    body = _read(spec, settings)
    if body is None:
        return thresholds
    try:
        for level, values in body["levels"].items():
            thresholds[level] = float(values["similarity"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"unreadable calibration file ({exc!r})", path=str(calibration_path(spec, settings))
        ) from exc
    return thresholds


def load_clustering(spec: ModelSpec, settings: Settings) -> ClusteringDefaults:
    """The model's clustering parameters: the calibration file's when it has them, else the
    manifest's."""
    body = _read(spec, settings)
    if body is None or "clustering" not in body:
        return spec.clustering
    try:
        values = body["clustering"]
        return replace(
            spec.clustering,
            floor=float(values["floor"]),
            merge_similarity=float(values["merge_similarity"]),
            # Files written before the correction existed were fitted without it.
            hubness=bool(values.get("hubness", False)),
            calibrated=True,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"unreadable calibration file ({exc!r})", path=str(calibration_path(spec, settings))
        ) from exc
