"""What applies to a model under the user's settings: the model's own alignment and
clustering parameters, unless the user set the corresponding setting explicitly.

"Explicitly" means given as an argument, an `IDENTITY_*` variable, in `.env` or in the
config file (pydantic's `model_fields_set`); a setting left at its default, or set to None,
defers to the model."""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel

from identity.config import Settings
from identity.faces.models.calibration import load_clustering
from identity.faces.models.kinds import AlignMethod
from identity.faces.models.manifest import ClusteringDefaults, ModelSpec, load_manifest


def explicit(group: BaseModel, name: str) -> object | None:
    """The group's setting when the user set it, else None."""
    value = getattr(group, name, None)
    if value is None or name not in group.model_fields_set:
        return None
    return value


def adoptable_models(settings: Settings) -> frozenset[str]:
    """The models a store may serve in place of the configured one because its faces are of
    them (`identity.store.moves.serving`): the registry's when the configured model is only
    the default, none when the user named it."""
    if explicit(settings.pipeline, "model") is not None:
        return frozenset()
    return frozenset(load_manifest())


def alignment_method(spec: ModelSpec, settings: Settings) -> AlignMethod:
    """IDENTITY_ALIGNMENT when set, else the model's alignment."""
    chosen = explicit(settings.pipeline, "alignment")
    return spec.alignment if chosen is None else AlignMethod.parse(chosen, "alignment")


def clustering(spec: ModelSpec, settings: Settings) -> ClusteringDefaults:
    """The model's clustering parameters (calibration file, else manifest), with the floor
    and the hubness switch replaced by IDENTITY_CLUSTER_THRESHOLD and IDENTITY_CLUSTER_HUBNESS
    when set."""
    params = load_clustering(spec, settings)
    floor = explicit(settings.cluster, "threshold")
    if floor is not None:
        params = replace(params, floor=float(floor))
    corrected = explicit(settings.cluster, "hubness")
    return params if corrected is None else replace(params, hubness=bool(corrected))
