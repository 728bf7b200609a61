"""A model's weights as a torch network: verified, converted once (Keras, ONNX) and cached.

Which network a model is, and how its file is read, is the pair (format, architecture) of
its manifest entry; `NETWORKS` lists the pairs this code can load. Conversions are cached
as plain state dicts (`torch.load(weights_only=True)`), keyed by converter, converter
version, the source's sha256 and the dimension, so a later start reads the cache and never
imports h5py's or onnx's readers."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from identity.config import Settings
from identity.errors import ConfigError, ModelCorruptError
from identity.faces.models import keras_facenet, mobilefacenet
from identity.faces.models.kinds import Architecture, WeightFormat
from identity.faces.models.manifest import ModelSpec
from identity.faces.models.paths import converted_path, weight_path, write_atomic
from identity.faces.models.verify import Fingerprint, verified_source

log = logging.getLogger(__name__)

# facenet-pytorch's published state dicts carry the training classifier; we embed only.
_CLASSIFIER_KEYS = ("logits.weight", "logits.bias")


@dataclass(frozen=True)
class Network:
    """How to build a model's torch module, and (for a file that is not a torch state dict)
    the converter module: it has `CONVERTER_VERSION` and `convert(path, dim) -> state dict`."""

    build: Callable[[int], nn.Module]  # dim -> module (called on the meta device)
    converter: ModuleType | None = None


def _inception_resnet_v1(dim: int) -> nn.Module:
    return keras_facenet.build_network(dim)


NETWORKS: dict[tuple[WeightFormat, Architecture], Network] = {
    (WeightFormat.KERAS_H5, Architecture.INCEPTION_RESNET_V1): Network(
        _inception_resnet_v1, keras_facenet
    ),
    (WeightFormat.TORCH_STATE_DICT, Architecture.INCEPTION_RESNET_V1): Network(
        _inception_resnet_v1
    ),
    (WeightFormat.ONNX, Architecture.MOBILEFACENET): Network(
        mobilefacenet.build_network, mobilefacenet
    ),
}


def network_for(spec: ModelSpec) -> Network:
    try:
        return NETWORKS[(spec.format, spec.architecture)]
    except KeyError:
        supported = ", ".join(f"{f}/{a}" for f, a in NETWORKS)
        raise ConfigError(
            f"model {spec.name!r}: weights in format {spec.format} for architecture "
            f"{spec.architecture} cannot be loaded (supported: {supported})"
        ) from None


# --- converted-weights cache -------------------------------------------------------------------


def _cache_key(converter: ModuleType, fp: Fingerprint, spec: ModelSpec) -> dict:
    # The version is read at call time, so a bumped CONVERTER_VERSION invalidates old caches.
    return {
        "converter": converter.__name__.rsplit(".", 1)[-1],
        "converter_version": converter.CONVERTER_VERSION,
        "source_sha256": fp.sha256,
        "dim": spec.dim,
    }


def _load_cached_conversion(path: Path, key: dict) -> dict[str, torch.Tensor] | None:
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        # a damaged cache is just a cache miss
        log.warning("ignoring unreadable converted-weights cache %s (%s)", path, exc)
        return None
    if not isinstance(cached, dict) or any(cached.get(k) != v for k, v in key.items()):
        return None
    return cached.get("state_dict")


def _converted_state_dict(
    spec: ModelSpec, settings: Settings, converter: ModuleType, source: Path, fp: Fingerprint
) -> dict[str, torch.Tensor]:
    cache = converted_path(spec, settings)
    key = _cache_key(converter, fp, spec)
    state = _load_cached_conversion(cache, key)
    if state is not None:
        return state
    started = time.perf_counter()
    state = converter.convert(source, spec.dim)
    log.info("converted %s in %.1f s; caching at %s", source, time.perf_counter() - started, cache)
    payload = {**key, "state_dict": state}
    try:
        write_atomic(cache, lambda f: torch.save(payload, f))
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
            f"state dict does not fit {type(model).__name__}: " + "; ".join(problems),
            path=str(source),
        )


# --- public --------------------------------------------------------------------------------------


def load_state_dict(spec: ModelSpec, settings: Settings) -> dict[str, torch.Tensor]:
    """The verified (and for Keras and ONNX files, converted) weights as a state dict for
    `build_network(spec)`."""
    network = network_for(spec)
    source, fp = verified_source(spec, settings)
    if network.converter is not None:
        return _converted_state_dict(spec, settings, network.converter, source, fp)
    return _torch_state_dict(source)


def build_network(spec: ModelSpec) -> nn.Module:
    """The model's torch module, randomly initialised (on the current default device)."""
    return network_for(spec).build(spec.dim)


def load_network(
    spec: ModelSpec, settings: Settings, device: str | torch.device = "cpu"
) -> nn.Module:
    """The model's network with its weights, in eval mode."""
    state = load_state_dict(spec, settings)
    # Built on the meta device and given the loaded tensors themselves (assign=True): a
    # random initialisation and a 90 MB copy would only be thrown away, and on a busy
    # machine that copy dominated start-up (0.4-1.9 s against 0.02 s).
    with torch.device("meta"):
        model = build_network(spec)
    _check_state_dict(model, state, weight_path(spec, settings))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()

