"""InsightFace's MobileFaceNet (`w600k_mbf.onnx`, the recognition network of the buffalo_s
pack, trained on WebFace600K with an ArcFace loss) as a readable torch module, and the
strict conversion of its ONNX graph into it, using the `onnx` package only to read the file.

The network, as exported (batch norms folded into the convolutions' biases):

    conv1      3x3 stride 2, 3 -> 128, PReLU                                  112 -> 56 px
    conv2      3x3 grouped (64 groups of 2 channels), 128 -> 128, PReLU
    stages     three times: a stride-2 depthwise block, then residual ones    56 -> 28 -> 14 -> 7
               (1x1 expand + PReLU, 3x3 depthwise + PReLU, 1x1 linear projection [+ input])
    conv_sep   1x1, 256 -> 512, PReLU
    head       1x1, 512 -> 64, PReLU; flattened to 64 x 7 x 7 = 3,136 features
    fc         3,136 -> 512 (with bias); features: BatchNorm1d(512, eps 1e-5)

The conversion is strict, as for the Keras FaceNet (`keras_facenet.py`): a silently
mis-converted network still yields unit vectors and would only show up as poor accuracy.

* The graph is walked node by node against the torch module's own description of its
  forward pass (`expected_graph`): the operator, the tensor each node reads (so the wiring
  and every residual connection are checked, not only shapes), and every attribute
  (kernel, stride, padding, dilation, groups, Gemm transposition, batch-norm epsilon).
  An attribute the converter does not know is refused rather than ignored.
* Every torch tensor is assigned exactly once with its shape checked, and every ONNX
  initializer is used exactly once; anything else raises `ModelCorruptError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from identity.errors import ModelCorruptError

# Bump when the conversion changes, so caches written by an older converter are redone.
CONVERTER_VERSION = 1
INPUT_SIZE = 112
BN_EPSILON = 1e-5
MIN_OPSET = 9  # BatchNormalization lost its `spatial` attribute and Flatten gained `axis` here


# --- the network ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """A stride-2 depthwise block (in_channels -> hidden -> out_channels), then `blocks`
    residual depthwise blocks of out_channels."""

    in_channels: int
    hidden: int
    out_channels: int
    blocks: int


STEM = 128
STAGES = (Stage(128, 128, 128, 4), Stage(128, 256, 256, 6), Stage(256, 512, 256, 2))
SEPARABLE = 512  # conv_sep's width
HEAD = 64  # channels before flattening
FEATURE_SIDE = INPUT_SIZE // 16  # four stride-2 steps: 112 -> 7


class ConvUnit(nn.Module):
    """A convolution with bias (the exporter folded each batch norm into it), then PReLU
    unless `linear`. `padding` keeps the size: kernel // 2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups
        )
        self.act: nn.Module = nn.Identity() if linear else nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DepthWise(nn.Module):
    """1x1 expansion + PReLU, 3x3 depthwise (stride 1 or 2) + PReLU, 1x1 linear projection;
    a `residual` block adds its input to the projection."""

    def __init__(
        self, in_channels: int, hidden: int, out_channels: int, stride: int, residual: bool
    ) -> None:
        super().__init__()
        self.expand = ConvUnit(in_channels, hidden)
        self.depthwise = ConvUnit(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvUnit(hidden, out_channels, linear=True)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """N x 3 x 112 x 112 (pixels scaled to -1..1) -> N x dim, not normalised."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.conv1 = ConvUnit(3, STEM, 3, stride=2)
        self.conv2 = ConvUnit(STEM, STEM, 3, groups=STEM // 2)
        self.stages = nn.ModuleList(
            nn.Sequential(
                DepthWise(s.in_channels, s.hidden, s.out_channels, stride=2, residual=False),
                *(
                    DepthWise(s.out_channels, s.out_channels, s.out_channels, 1, residual=True)
                    for _ in range(s.blocks)
                ),
            )
            for s in STAGES
        )
        self.conv_sep = ConvUnit(STAGES[-1].out_channels, SEPARABLE)
        self.head = ConvUnit(SEPARABLE, HEAD)
        self.fc = nn.Linear(HEAD * FEATURE_SIDE * FEATURE_SIDE, dim)
        self.features = nn.BatchNorm1d(dim, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        for stage in self.stages:
            x = stage(x)
        x = self.head(self.conv_sep(x))
        return self.features(self.fc(x.flatten(1)))  # flatten is in C, H, W order, as ONNX's


def build_network(dim: int = 512) -> MobileFaceNet:
    return MobileFaceNet(dim)


# --- the forward pass as ONNX operators -----------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One ONNX node the network's forward pass consists of."""

    op_type: str
    module: str  # dotted path of the torch module holding its weights; "" for Add and Flatten
    inputs: tuple[str, ...]  # the values it reads: "input" or an earlier Op's output
    output: str


def expected_graph(model: MobileFaceNet) -> list[Op]:
    """The nodes an export of `model` consists of, in forward order."""
    ops: list[Op] = []

    def unit(path: str, module: ConvUnit, x: str) -> str:
        ops.append(Op("Conv", f"{path}.conv", (x,), f"{path}.conv"))
        if isinstance(module.act, nn.Identity):
            return f"{path}.conv"
        ops.append(Op("PRelu", f"{path}.act", (f"{path}.conv",), f"{path}.act"))
        return f"{path}.act"

    def block(path: str, module: DepthWise, x: str) -> str:
        y = unit(f"{path}.expand", module.expand, x)
        y = unit(f"{path}.depthwise", module.depthwise, y)
        y = unit(f"{path}.project", module.project, y)
        if not module.residual:
            return y
        ops.append(Op("Add", "", (x, y), f"{path} (sum)"))
        return f"{path} (sum)"

    x = unit("conv1", model.conv1, "input")
    x = unit("conv2", model.conv2, x)
    for i, stage in enumerate(model.stages):
        for j, module in enumerate(stage):
            x = block(f"stages.{i}.{j}", module, x)
    x = unit("conv_sep", model.conv_sep, x)
    x = unit("head", model.head, x)
    ops.append(Op("Flatten", "", (x,), "flatten"))
    ops.append(Op("Gemm", "fc", ("flatten",), "fc"))
    ops.append(Op("BatchNormalization", "features", ("fc",), "features"))
    return ops


# --- reading the file ------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxNode:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, object]


@dataclass
class OnnxFile:
    """An ONNX model read into plain Python: nodes in file order and initializers by name."""

    nodes: list[OnnxNode]
    initializers: dict[str, np.ndarray]
    inputs: dict[str, list[int | str]]  # data inputs (not initializers): name -> shape
    outputs: list[str]
    opset: int  # of the default (ai.onnx) domain


def _attribute(attr) -> object:
    from onnx import helper

    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def read_onnx(path: Path) -> OnnxFile:
    import onnx  # only the first load of a model converts; cached starts never import it
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
        graph = model.graph
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        nodes = [
            OnnxNode(
                n.op_type,
                tuple(n.input),
                tuple(n.output),
                {a.name: _attribute(a) for a in n.attribute},
            )
            for n in graph.node
        ]
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own ValueErrors
        raise ModelCorruptError(f"not a readable ONNX model ({exc})", path=str(path)) from exc
    inputs = {
        i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
        for i in graph.input
        if i.name not in initializers  # older exporters list the initializers as inputs too
    }
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxFile(nodes, initializers, inputs, [o.name for o in graph.output], opset)


# --- conversion --------------------------------------------------------------------------------

# Attributes each operator may carry, with the value it takes when absent.
_DEFAULTS: dict[str, dict[str, object]] = {
    "Conv": {"auto_pad": "NOTSET", "dilations": [1, 1], "group": 1, "pads": [0, 0, 0, 0],
             "strides": [1, 1], "kernel_shape": None},
    "PRelu": {},
    "Add": {},
    "Flatten": {"axis": 1},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    "BatchNormalization": {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "spatial": 1},
}


def _corrupt(path: Path, message: str) -> ModelCorruptError:
    return ModelCorruptError(message, path=str(path))


class _Transfer:
    """Collects torch tensors from ONNX initializers, remembering which were used."""

    def __init__(self, onnx_file: OnnxFile, path: Path) -> None:
        self.onnx = onnx_file
        self.path = path
        self.state: dict[str, torch.Tensor] = {}
        self.consumed: set[str] = set()

    def take(self, name: str, where: str) -> np.ndarray:
        if name not in self.onnx.initializers:
            raise _corrupt(self.path, f"{where}: input {name!r} is not an initializer (a weight)")
        if name in self.consumed:
            raise _corrupt(self.path, f"{where}: initializer {name!r} used twice")
        value = self.onnx.initializers[name]
        if value.dtype != np.float32:
            raise _corrupt(self.path, f"{where}: initializer {name!r} is {value.dtype}, not float32")
        self.consumed.add(name)
        return value

    def put(self, name: str, value: np.ndarray | torch.Tensor, shape: torch.Size, where: str) -> None:
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        if tuple(tensor.shape) != tuple(shape):
            raise _corrupt(
                self.path,
                f"{where}: gives {tuple(tensor.shape)} for {name}, the torch module needs {tuple(shape)}",
            )
        if name in self.state:
            raise _corrupt(self.path, f"{where}: torch tensor {name!r} assigned twice")
        self.state[name] = tensor


def _attributes(node: OnnxNode, where: str, path: Path) -> dict[str, object]:
    defaults = _DEFAULTS[node.op_type]
    unknown = sorted(set(node.attributes) - set(defaults))
    if unknown:
        raise _corrupt(path, f"{where}: attributes {unknown} are not supported")
    return {**defaults, **node.attributes}


def _weights(node: OnnxNode, count: int, where: str, path: Path) -> tuple[str, ...]:
    if len(node.inputs) != 1 + count or len(node.outputs) != 1:
        raise _corrupt(
            path,
            f"{where}: {len(node.inputs)} inputs and {len(node.outputs)} outputs, expected "
            f"{1 + count} and 1",
        )
    return node.inputs[1:]


def _conv(t: _Transfer, node: OnnxNode, op: Op, model: nn.Module, where: str) -> None:
    conv = model.get_submodule(op.module)
    a = _attributes(node, where, t.path)
    ph, pw = conv.padding
    expected = {
        "kernel_shape": list(conv.kernel_size),
        "strides": list(conv.stride),
        "pads": [ph, pw, ph, pw],
        "dilations": list(conv.dilation),
        "group": conv.groups,
        "auto_pad": "NOTSET",
    }
    found = {k: list(a[k]) if isinstance(a[k], (list, tuple)) else a[k] for k in expected}
    if found != expected:
        raise _corrupt(t.path, f"{where}: {found} does not match torch {op.module} {expected}")
    weight, bias = _weights(node, 2, where, t.path)
    t.put(f"{op.module}.weight", t.take(weight, where), conv.weight.shape, where)
    t.put(f"{op.module}.bias", t.take(bias, where), conv.bias.shape, where)


def _prelu(t: _Transfer, node: OnnxNode, op: Op, model: nn.Module, where: str) -> None:
    prelu = model.get_submodule(op.module)
    _attributes(node, where, t.path)
    (slope_name,) = _weights(node, 1, where, t.path)
    slope = t.take(slope_name, where)
    # One slope per channel, broadcast over H and W: (C, 1, 1) in the file, (C,) in torch.
    if slope.shape not in ((prelu.num_parameters,), (prelu.num_parameters, 1, 1)):
        raise _corrupt(t.path, f"{where}: PRelu slope of shape {slope.shape} is not per channel")
    t.put(f"{op.module}.weight", slope.reshape(-1), prelu.weight.shape, where)


def _flatten(t: _Transfer, node: OnnxNode, op: Op, model: nn.Module, where: str) -> None:
    _weights(node, 0, where, t.path)
    if _attributes(node, where, t.path)["axis"] != 1:
        raise _corrupt(t.path, f"{where}: Flatten axis {node.attributes.get('axis')}, expected 1")


def _gemm(t: _Transfer, node: OnnxNode, op: Op, model: nn.Module, where: str) -> None:
    fc = model.get_submodule(op.module)
    a = _attributes(node, where, t.path)
    # y = x W^T + b is Gemm(alpha=1, beta=1, transA=0, transB=1) with W in torch's layout.
    if (a["alpha"], a["beta"], a["transA"], a["transB"]) != (1.0, 1.0, 0, 1):
        raise _corrupt(t.path, f"{where}: Gemm {a} is not a linear layer x W^T + b")
    weight, bias = _weights(node, 2, where, t.path)
    t.put(f"{op.module}.weight", t.take(weight, where), fc.weight.shape, where)
    t.put(f"{op.module}.bias", t.take(bias, where), fc.bias.shape, where)


def _batch_norm(t: _Transfer, node: OnnxNode, op: Op, model: nn.Module, where: str) -> None:
    bn = model.get_submodule(op.module)
    a = _attributes(node, where, t.path)
    # The file stores epsilon as float32 (1e-5 reads back as 9.99999975e-06).
    if abs(float(a["epsilon"]) - bn.eps) > 1e-9 or a["training_mode"] != 0 or a["spatial"] != 1:
        raise _corrupt(
            t.path,
            f"{where}: BatchNormalization epsilon={a['epsilon']} training_mode={a['training_mode']} "
            f"spatial={a['spatial']}, expected an inference batch norm with epsilon {bn.eps}",
        )
    names = _weights(node, 4, where, t.path)
    for name, param in zip(names, ("weight", "bias", "running_mean", "running_var")):
        t.put(f"{op.module}.{param}", t.take(name, where), getattr(bn, param).shape, where)
    # Read only in training mode; 0 says "never trained here".
    t.put(f"{op.module}.num_batches_tracked", torch.tensor(0), torch.Size([]), where)


_HANDLERS = {
    "Conv": _conv,
    "PRelu": _prelu,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "BatchNormalization": _batch_norm,
}


def _check_input(onnx_file: OnnxFile, path: Path) -> str:
    if len(onnx_file.inputs) != 1:
        raise _corrupt(path, f"the graph has data inputs {list(onnx_file.inputs)}, expected one")
    ((name, shape),) = onnx_file.inputs.items()
    if list(shape[1:]) != [3, INPUT_SIZE, INPUT_SIZE]:
        raise _corrupt(path, f"input {name!r} has shape {shape}, expected N x 3 x 112 x 112")
    if onnx_file.opset < MIN_OPSET:
        raise _corrupt(path, f"opset {onnx_file.opset} is older than {MIN_OPSET}")
    return name


def _walk(onnx_file: OnnxFile, model: MobileFaceNet, path: Path) -> _Transfer:
    t = _Transfer(onnx_file, path)
    ops = expected_graph(model)
    values = {"input": _check_input(onnx_file, path)}  # our value name -> the file's tensor name
    for index, (node, op) in enumerate(zip(onnx_file.nodes, ops)):
        where = f"node {index} ({node.op_type} -> {','.join(node.outputs)})"
        if node.op_type != op.op_type:
            raise _corrupt(path, f"{where}: expected {op.op_type} ({op.module or op.output})")
        reads = [values[v] for v in op.inputs]
        if op.op_type == "Add":
            # Commutative: the residual sum may list its operands in either order.
            if sorted(node.inputs) != sorted(reads) or len(node.outputs) != 1:
                raise _corrupt(path, f"{where} adds {list(node.inputs)}, expected {reads} ({op.output})")
            _attributes(node, where, path)
        else:
            if not node.inputs or node.inputs[0] != reads[0]:
                raise _corrupt(
                    path,
                    f"{where} reads {node.inputs[:1]}, expected {reads[0]!r} (the output of "
                    f"{op.inputs[0]}) for {op.module or op.output}",
                )
            _HANDLERS[op.op_type](t, node, op, model, where)
        values[op.output] = node.outputs[0]
    if len(onnx_file.nodes) != len(ops):
        raise _corrupt(
            path, f"the graph has {len(onnx_file.nodes)} nodes, MobileFaceNet has {len(ops)}"
        )
    if onnx_file.outputs != [values[ops[-1].output]]:
        raise _corrupt(
            path, f"graph outputs {onnx_file.outputs}, expected [{values[ops[-1].output]!r}]"
        )
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
    unused = sorted(set(t.onnx.initializers) - t.consumed)
    if unused:
        raise _corrupt(t.path, f"{len(unused)} ONNX initializers were not used, e.g. {unused[:5]}")


def convert_onnx(onnx_file: OnnxFile, dim: int, path: Path) -> dict[str, torch.Tensor]:
    """The checked conversion of an already-read ONNX file (`path` only names it in errors)."""
    with torch.device("meta"):  # only the structure and shapes are needed here
        model = build_network(dim)
    t = _walk(onnx_file, model, path)
    _check_complete(model, t)
    return {name: t.state[name].to(tensor.dtype) for name, tensor in model.state_dict().items()}


def convert(path: Path, dim: int = 512) -> dict[str, torch.Tensor]:
    """Read `w600k_mbf.onnx` and return a state dict for `build_network(dim)`."""
    return convert_onnx(read_onnx(path), dim, path)
