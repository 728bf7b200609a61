"""Convert the Keras FaceNet weights (`facenet_keras.h5`) into facenet-pytorch's
`InceptionResnetV1` with a 128-d bottleneck, using h5py only (no TensorFlow).

The conversion is strict, because a silently half-converted network still produces
unit vectors and would only show up as bad accuracy much later:

* the Keras graph stored in the file (`model_config`) is checked against the torch
  modules: filters, kernel size, stride, padding, bias, the order in which branches
  are concatenated, the residual scales, and the last block having no ReLU;
* every torch tensor (parameters and buffers) is assigned exactly once, every shape is
  checked, and every Keras weight is consumed;
* anything else raises `ModelCorruptError` naming the tensor.

Keras layout: conv kernels are HWIO (torch wants OIHW), the Dense kernel is (in, out)
(torch wants (out, in)), and every BatchNormalization has `scale=False`, so gamma is
the constant 1 rather than a stored tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from identity.errors import ModelCorruptError

# Bump when the conversion changes, so caches written by an older converter are redone.
CONVERTER_VERSION = 1
KERAS_BN_EPSILON = 0.001
BOTTLENECK_IN = 1792

Kind = Literal["basic", "conv_bias", "dense", "bn1d", "pool"]


@dataclass(frozen=True)
class LayerMapping:
    """One torch module and the Keras layer it takes its weights (or, for pools, its place) from."""

    torch_path: str  # dotted module path inside InceptionResnetV1
    keras_name: str
    kind: Kind


# --- the structural map ------------------------------------------------------------------

_STEM = [
    ("conv2d_1a", "Conv2d_1a_3x3"),
    ("conv2d_2a", "Conv2d_2a_3x3"),
    ("conv2d_2b", "Conv2d_2b_3x3"),
    ("conv2d_3b", "Conv2d_3b_1x1"),
    ("conv2d_4a", "Conv2d_4a_3x3"),
    ("conv2d_4b", "Conv2d_4b_3x3"),
]
# Branch sub-module -> Keras suffix, in facenet-pytorch's branch order; the last entry of
# each branch is what the block concatenates, so the order here is checked against the
# Keras Concatenate inputs.
_BLOCK35 = {
    "branch0": ["Branch_0_Conv2d_1x1"],
    "branch1": ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_3x3"],
    "branch2": ["Branch_2_Conv2d_0a_1x1", "Branch_2_Conv2d_0b_3x3", "Branch_2_Conv2d_0c_3x3"],
}
_BLOCK17 = {
    "branch0": ["Branch_0_Conv2d_1x1"],
    "branch1": ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_1x7", "Branch_1_Conv2d_0c_7x1"],
}
_BLOCK8 = {
    "branch0": ["Branch_0_Conv2d_1x1"],
    "branch1": ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_1x3", "Branch_1_Conv2d_0c_3x1"],
}
_MIXED_6A = {
    "branch0": ["Branch_0_Conv2d_1a_3x3"],
    "branch1": ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_3x3", "Branch_1_Conv2d_1a_3x3"],
    "branch2": ["Branch_2_MaxPool_1a_3x3"],
}
_MIXED_7A = {
    "branch0": ["Branch_0_Conv2d_0a_1x1", "Branch_0_Conv2d_1a_3x3"],
    "branch1": ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_1a_3x3"],
    "branch2": ["Branch_2_Conv2d_0a_1x1", "Branch_2_Conv2d_0b_3x3", "Branch_2_Conv2d_1a_3x3"],
    "branch3": ["Branch_3_MaxPool_1a_3x3"],
}


@dataclass(frozen=True)
class BlockMapping:
    """A multi-branch torch block and its Keras name prefix (for the concat/scale checks)."""

    torch_path: str
    keras_prefix: str  # "Block35_1", "Mixed_6a", …
    branches: dict[str, list[str]]
    residual: bool  # Block35/17/8 add a scaled up-projection to their input


def _branch_layers(block: BlockMapping) -> list[LayerMapping]:
    layers = []
    for branch, suffixes in block.branches.items():
        for position, suffix in enumerate(suffixes):
            # A one-module branch is the module itself; longer ones are nn.Sequential.
            path = f"{block.torch_path}.{branch}" + (f".{position}" if len(suffixes) > 1 else "")
            kind: Kind = "pool" if "MaxPool" in suffix else "basic"
            layers.append(LayerMapping(path, f"{block.keras_prefix}_{suffix}", kind))
    if block.residual:
        layers.append(
            LayerMapping(
                f"{block.torch_path}.conv2d", f"{block.keras_prefix}_Conv2d_1x1", "conv_bias"
            )
        )
    return layers


def blocks() -> list[BlockMapping]:
    """Every multi-branch block of InceptionResnetV1, in forward order."""
    out = [BlockMapping(f"repeat_1.{i}", f"Block35_{i + 1}", _BLOCK35, True) for i in range(5)]
    out.append(BlockMapping("mixed_6a", "Mixed_6a", _MIXED_6A, False))
    out += [BlockMapping(f"repeat_2.{i}", f"Block17_{i + 1}", _BLOCK17, True) for i in range(10)]
    out.append(BlockMapping("mixed_7a", "Mixed_7a", _MIXED_7A, False))
    out += [BlockMapping(f"repeat_3.{i}", f"Block8_{i + 1}", _BLOCK8, True) for i in range(5)]
    out.append(BlockMapping("block8", "Block8_6", _BLOCK8, True))
    return out


def layer_map() -> list[LayerMapping]:
    """Every torch module that holds weights (plus the pools), with its Keras layer."""
    layers = [LayerMapping(t, k, "basic") for t, k in _STEM]
    layers.append(LayerMapping("maxpool_3a", "MaxPool_3a_3x3", "pool"))
    for block in blocks():
        layers += _branch_layers(block)
    layers.append(LayerMapping("last_linear", "Bottleneck", "dense"))
    layers.append(LayerMapping("last_bn", "Bottleneck_BatchNorm", "bn1d"))
    return layers


# --- reading the file ----------------------------------------------------------------------


@dataclass
class KerasFile:
    """The weights and graph description of a Keras HDF5 model, read fully into memory."""

    weights: dict[str, np.ndarray]  # "<layer>/<param>" -> array, e.g. "Bottleneck/kernel"
    layers: dict[
        str, dict
    ]  # layer name -> its entry in model_config (class_name, config, inbound_nodes)
    output_layers: list[str]


def read_keras_h5(path: Path) -> KerasFile:
    try:
        with h5py.File(path, "r") as f:
            config = json.loads(_attr_str(f.attrs["model_config"]))
            group = f["model_weights"]
            weights: dict[str, np.ndarray] = {}
            for layer in (_attr_str(n) for n in group.attrs["layer_names"]):
                for name in (_attr_str(n) for n in group[layer].attrs["weight_names"]):
                    key = name.removesuffix(":0")
                    weights[key] = np.asarray(group[layer][name], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        # h5py reports truncation and garbage as OSError; a file without the Keras
        # structure as KeyError; json errors are ValueError.
        raise ModelCorruptError(f"not a readable Keras HDF5 model ({exc})", path=str(path)) from exc
    entries = config.get("config", {}).get("layers", [])
    outputs = [o[0] for o in config.get("config", {}).get("output_layers", [])]
    return KerasFile(weights, {e["name"]: e for e in entries}, outputs)


def _attr_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- architecture check ----------------------------------------------------------------------


def _corrupt(path: Path, message: str) -> ModelCorruptError:
    return ModelCorruptError(message, path=str(path))


def _layer(keras: KerasFile, name: str, class_name: str, path: Path) -> dict:
    entry = keras.layers.get(name)
    if entry is None or entry["class_name"] != class_name:
        found = "missing" if entry is None else entry["class_name"]
        raise _corrupt(path, f"Keras layer {name!r}: expected a {class_name}, found {found}")
    return entry["config"]


def _check_conv(conv: nn.Conv2d, cfg: dict, name: str, path: Path) -> None:
    kernel = tuple(cfg["kernel_size"])
    stride = tuple(cfg["strides"])
    if cfg["padding"] == "valid":
        padding = (0, 0)
    elif cfg["padding"] == "same" and stride == (1, 1) and all(k % 2 for k in kernel):
        padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    else:
        # TF's 'same' with stride 2 pads asymmetrically, which nn.Conv2d cannot express.
        raise _corrupt(
            path,
            f"Keras layer {name!r}: padding {cfg['padding']!r} with stride {stride} is not supported",
        )
    expected = (cfg["filters"], kernel, stride, padding, bool(cfg["use_bias"]))
    actual = (conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias is not None)
    if expected != actual:
        raise _corrupt(
            path,
            f"Keras layer {name!r} (filters, kernel, stride, padding, bias) = {expected} "
            f"does not match the torch layer {actual}",
        )


def _check_bn(cfg: dict, name: str, path: Path) -> None:
    if (
        cfg.get("scale", True)
        or not cfg.get("center", False)
        or cfg.get("epsilon") != KERAS_BN_EPSILON
    ):
        raise _corrupt(
            path,
            f"Keras layer {name!r}: expected BatchNormalization(center=True, scale=False, "
            f"epsilon={KERAS_BN_EPSILON}), found center={cfg.get('center')} scale={cfg.get('scale')} "
            f"epsilon={cfg.get('epsilon')}",
        )


def _check_pool(pool: nn.MaxPool2d, cfg: dict, name: str, path: Path) -> None:
    expected = (tuple(cfg["pool_size"]), tuple(cfg["strides"]), cfg["padding"])

    def pair(v: int | tuple) -> tuple:
        return tuple(v) if isinstance(v, tuple) else (v, v)

    actual = (pair(pool.kernel_size), pair(pool.stride), "valid" if pool.padding == 0 else "padded")
    if expected != actual:
        raise _corrupt(
            path,
            f"Keras layer {name!r} (pool, stride, padding) = {expected} does not match torch {actual}",
        )


def _inbound(keras: KerasFile, name: str) -> list[str]:
    nodes = keras.layers[name]["inbound_nodes"]
    return [n[0] for n in nodes[0]] if nodes else []


def _check_block(model: nn.Module, keras: KerasFile, block: BlockMapping, path: Path) -> None:
    concat = f"{block.keras_prefix}_Concatenate" if block.residual else block.keras_prefix
    _layer(keras, concat, "Concatenate", path)
    # The channel order of the concatenation must be facenet-pytorch's branch order, or the
    # up-projection's input channels would be permuted without any shape error.
    expected = []
    for suffixes in block.branches.values():
        last = f"{block.keras_prefix}_{suffixes[-1]}"
        expected.append(last if "MaxPool" in last else f"{last}_Activation")
    if _inbound(keras, concat) != expected:
        raise _corrupt(
            path, f"Keras {concat!r} concatenates {_inbound(keras, concat)}, expected {expected}"
        )
    if not block.residual:
        return
    module = model.get_submodule(block.torch_path)
    scale_cfg = _layer(keras, f"{block.keras_prefix}_ScaleSum", "Lambda", path)
    scale = scale_cfg.get("arguments", {}).get("scale")
    if scale is None or abs(scale - module.scale) > 1e-6:
        raise _corrupt(
            path,
            f"Keras {block.keras_prefix}_ScaleSum scale={scale}, torch {block.torch_path}.scale={module.scale}",
        )
    has_relu = f"{block.keras_prefix}_Activation" in keras.layers
    if has_relu == getattr(module, "noReLU", False):
        raise _corrupt(
            path,
            f"{block.keras_prefix}: ReLU after the residual sum is {has_relu} in Keras but not in torch",
        )


def check_architecture(model: nn.Module, keras: KerasFile, path: Path) -> None:
    """Compare the Keras graph stored in the file with the torch modules; raise on any difference."""
    for m in layer_map():
        module = model.get_submodule(m.torch_path)
        if m.kind == "basic":
            _check_conv(
                module.conv, _layer(keras, m.keras_name, "Conv2D", path), m.keras_name, path
            )
            _check_bn(
                _layer(keras, f"{m.keras_name}_BatchNorm", "BatchNormalization", path),
                m.keras_name,
                path,
            )
        elif m.kind == "conv_bias":
            _check_conv(module, _layer(keras, m.keras_name, "Conv2D", path), m.keras_name, path)
        elif m.kind == "pool":
            _check_pool(
                module, _layer(keras, m.keras_name, "MaxPooling2D", path), m.keras_name, path
            )
        elif m.kind == "dense":
            cfg = _layer(keras, m.keras_name, "Dense", path)
            if cfg["units"] != module.out_features or cfg["use_bias"]:
                raise _corrupt(
                    path,
                    f"Keras Dense {m.keras_name!r} units={cfg['units']} bias={cfg['use_bias']}, torch {module}",
                )
        elif m.kind == "bn1d":
            _check_bn(_layer(keras, m.keras_name, "BatchNormalization", path), m.keras_name, path)
    for block in blocks():
        _check_block(model, keras, block, path)
    if keras.output_layers != ["Bottleneck_BatchNorm"]:
        raise _corrupt(
            path, f"Keras model outputs {keras.output_layers}, expected ['Bottleneck_BatchNorm']"
        )


# --- weight transfer -------------------------------------------------------------------------


class _Transfer:
    """Collects torch tensors from Keras weights, remembering which Keras weights were used."""

    def __init__(self, keras: KerasFile, path: Path) -> None:
        self.keras = keras
        self.path = path
        self.state: dict[str, torch.Tensor] = {}
        self.consumed: set[str] = set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.keras.weights:
            raise _corrupt(self.path, f"Keras weight {key!r} is missing")
        if key in self.consumed:
            raise _corrupt(self.path, f"Keras weight {key!r} mapped twice")
        self.consumed.add(key)
        return self.keras.weights[key]

    def put(self, name: str, value: np.ndarray | torch.Tensor) -> None:
        if name in self.state:
            raise _corrupt(self.path, f"torch tensor {name!r} assigned twice")
        tensor = (
            value
            if isinstance(value, torch.Tensor)
            else torch.from_numpy(np.ascontiguousarray(value))
        )
        self.state[name] = tensor

    def batch_norm(self, prefix: str, layer: str, channels: int) -> None:
        # scale=False in Keras: gamma is fixed at 1, not stored. num_batches_tracked has no
        # Keras counterpart and is only read in training mode; 0 says "never trained here".
        self.put(f"{prefix}.weight", torch.ones(channels))
        self.put(f"{prefix}.bias", self.take(f"{layer}/beta"))
        self.put(f"{prefix}.running_mean", self.take(f"{layer}/moving_mean"))
        self.put(f"{prefix}.running_var", self.take(f"{layer}/moving_variance"))
        self.put(f"{prefix}.num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def conv(self, prefix: str, layer: str, bias: bool) -> np.ndarray:
        kernel = self.take(f"{layer}/kernel")
        if kernel.ndim != 4:
            raise _corrupt(
                self.path,
                f"Keras weight {layer}/kernel has shape {kernel.shape}, expected 4-D HWIO",
            )
        self.put(f"{prefix}.weight", kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        if bias:
            self.put(f"{prefix}.bias", self.take(f"{layer}/bias"))
        return kernel


def _transfer(keras: KerasFile, path: Path) -> _Transfer:
    t = _Transfer(keras, path)
    for m in layer_map():
        if m.kind == "basic":
            kernel = t.conv(f"{m.torch_path}.conv", m.keras_name, bias=False)
            t.batch_norm(f"{m.torch_path}.bn", f"{m.keras_name}_BatchNorm", kernel.shape[3])
        elif m.kind == "conv_bias":
            t.conv(m.torch_path, m.keras_name, bias=True)
        elif m.kind == "dense":
            t.put(
                f"{m.torch_path}.weight", t.take(f"{m.keras_name}/kernel").T
            )  # (in,out) -> (out,in)
        elif m.kind == "bn1d":
            t.batch_norm(m.torch_path, m.keras_name, keras.weights[f"{m.keras_name}/beta"].shape[0])
    return t


def _check_complete(model: nn.Module, t: _Transfer) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(t.state))
    unexpected = sorted(set(t.state) - set(expected))
    if missing or unexpected:
        raise _corrupt(
            t.path,
            f"conversion incomplete: torch tensors not mapped {missing[:5]}, unknown {unexpected[:5]}",
        )
    wrong = [
        f"{name}: Keras gives {tuple(t.state[name].shape)}, torch needs {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if t.state[name].shape != tensor.shape
    ]
    if wrong:
        raise _corrupt(t.path, f"{len(wrong)} shape mismatches, e.g. {wrong[:3]}")
    unused = sorted(set(t.keras.weights) - t.consumed)
    if unused:
        raise _corrupt(t.path, f"{len(unused)} Keras weights were not used, e.g. {unused[:5]}")


def build_network(dim: int) -> InceptionResnetV1:
    """facenet-pytorch's InceptionResnetV1 (classify=False) with a `dim`-wide bottleneck."""
    model = InceptionResnetV1(pretrained=None, classify=False)
    if dim != model.last_linear.out_features:
        model.last_linear = nn.Linear(BOTTLENECK_IN, dim, bias=False)
        model.last_bn = nn.BatchNorm1d(dim, eps=KERAS_BN_EPSILON, momentum=0.1, affine=True)
    return model


def convert(path: Path, dim: int = 128) -> dict[str, torch.Tensor]:
    """Read `facenet_keras.h5` and return a state dict for `build_network(dim)`."""
    return convert_keras(read_keras_h5(path), dim, path)


def convert_keras(keras: KerasFile, dim: int, path: Path) -> dict[str, torch.Tensor]:
    """The checked conversion of an already-read Keras file (`path` only names it in errors)."""
    with torch.device("meta"):  # only the structure and shapes are needed here
        model = build_network(dim)
    check_architecture(model, keras, path)
    t = _transfer(keras, path)
    _check_complete(model, t)
    return {name: t.state[name].to(tensor.dtype) for name, tensor in model.state_dict().items()}
