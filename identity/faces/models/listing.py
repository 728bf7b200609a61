"""What `identity models list` shows of a model: one plain, JSON-ready dict per model."""

from __future__ import annotations

from identity.config import Settings
from identity.faces.models.calibration import load_clustering, load_thresholds
from identity.faces.models.manifest import DetectorSpec, ModelSpec
from identity.faces.models.verify import ModelStatus, verify


def describe(spec: ModelSpec, settings: Settings) -> dict:
    """The model's facts, the state of its weights, its licence and its calibration in
    effect (the calibration file's, else the manifest's)."""
    status = verify(spec, settings)
    clustering = load_clustering(spec, settings)
    return {
        "name": spec.name,
        "version": spec.version,
        "dim": spec.dim,
        "input_size": spec.input_size,
        "normalization": spec.normalization.value,
        "alignment": f"{spec.alignment.value}/{spec.template.value}",
        "default": spec.name == settings.pipeline.model,
        **_weights_and_license(spec, status),
        "thresholds": load_thresholds(spec, settings),
        "clustering": {
            "floor": clustering.floor,
            "merge_similarity": clustering.merge_similarity,
            "hubness": clustering.hubness,
            "calibrated": clustering.calibrated,
        },
    }


def describe_detector(spec: DetectorSpec, settings: Settings) -> dict:
    """A detector's weights and their licence, and whether the settings use it."""
    status = verify(spec, settings)
    return {
        "name": spec.name,
        "version": spec.version,
        "in_use": spec.name == settings.pipeline.detector,
        **_weights_and_license(spec, status),
    }


def _weights_and_license(spec: ModelSpec | DetectorSpec, status: ModelStatus) -> dict:
    """What a model's and a detector's rows both show: their weights' state and licence."""
    return {
        "status": status.status.value,
        "detail": status.detail,
        "weights": str(status.path),
        "license": spec.license.summary,
        "commercial_use": spec.license.commercial_use,
        "license_url": spec.license.url,
    }
