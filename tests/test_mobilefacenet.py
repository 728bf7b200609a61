"""InsightFace's MobileFaceNet (w600k-mbf-512): the torch module, the strict ONNX -> torch
conversion, and the loader's cache.

Fast tier: a MobileFaceNet with random weights is written as an ONNX file in the layout of
the real export (opset 11, batch norms folded into conv biases, (C, 1, 1) PReLU slopes,
Gemm with transB), so conversion, caching and equality with onnxruntime are checked
without the real weights. Slow tier: the real `../shared/models/w600k_mbf.onnx`, against
onnxruntime on real aligned face crops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from identity.config import Settings
from identity.errors import ModelCorruptError
from identity.faces import models
from identity.faces.models import mobilefacenet
from identity.faces.models.mobilefacenet import OnnxFile, OnnxNode

from conftest import LFW_DIR, MISC_DIR, MODELS_DIR

REAL_ONNX = MODELS_DIR / "w600k_mbf.onnx"
MODEL = "w600k-mbf-512"


# --- a MobileFaceNet with random weights, exported the way the real file is ----------------


def _random_network(seed: int = 0) -> mobilefacenet.MobileFaceNet:
    torch.manual_seed(seed)
    net = mobilefacenet.build_network(512).eval()
    with torch.no_grad():  # non-trivial slopes and batch-norm statistics
        for module in net.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
        net.features.running_mean.normal_(0.0, 0.1)
        net.features.running_var.uniform_(0.5, 2.0)
        net.features.weight.uniform_(0.5, 1.5)
        net.features.bias.normal_(0.0, 0.1)
    return net


def _as_onnx_file(net: mobilefacenet.MobileFaceNet) -> OnnxFile:
    """The network as the exporter lays it out: tensors named by number, weights as
    initializers, in forward order."""
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    numbers = itertools.count(517)
    values = {"input": "input.1"}
    nodes, inits = [], {}

    def initializer(array: np.ndarray) -> str:
        name = str(next(numbers))
        inits[name] = np.ascontiguousarray(array, np.float32)
        return name

    for op in mobilefacenet.expected_graph(net):
        data = [values[v] for v in op.inputs]
        attrs: dict[str, object] = {}
        weights: list[str] = []
        if op.op_type == "Conv":
            conv = net.get_submodule(op.module)
            ph, pw = conv.padding
            attrs = {"dilations": [1, 1], "group": conv.groups, "kernel_shape": list(conv.kernel_size),
                     "pads": [ph, pw, ph, pw], "strides": list(conv.stride)}
            weights = [initializer(state[f"{op.module}.weight"]), initializer(state[f"{op.module}.bias"])]
        elif op.op_type == "PRelu":
            slope = state[f"{op.module}.weight"]
            weights = [initializer(slope.reshape(-1, 1, 1))]
        elif op.op_type == "Flatten":
            attrs = {"axis": 1}
        elif op.op_type == "Gemm":
            attrs = {"alpha": 1.0, "beta": 1.0, "transB": 1}
            weights = [initializer(state["fc.weight"]), initializer(state["fc.bias"])]
        elif op.op_type == "BatchNormalization":
            attrs = {"epsilon": float(np.float32(1e-5)), "momentum": float(np.float32(0.9))}
            weights = [initializer(state[f"features.{p}"])
                       for p in ("weight", "bias", "running_mean", "running_var")]
        out = str(next(numbers))
        nodes.append(OnnxNode(op.op_type, (*data, *weights), (out,), attrs))
        values[op.output] = out
    return OnnxFile(nodes, inits, {"input.1": ["None", 3, 112, 112]}, [nodes[-1].outputs[0]], 11)


def _write_onnx(onnx_file: OnnxFile, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node(n.op_type, list(n.inputs), list(n.outputs), **n.attributes)
             for n in onnx_file.nodes]
    graph = helper.make_graph(
        nodes,
        "mobilefacenet",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info(onnx_file.outputs[0], TensorProto.FLOAT, ["None", 512])],
        [numpy_helper.from_array(v, name=k) for k, v in onnx_file.initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the file declares batch 1 in places; that warning is noise
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input.1": x})[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[mobilefacenet.MobileFaceNet, OnnxFile, Path]:
    net = _random_network()
    onnx_file = _as_onnx_file(net)
    path = _write_onnx(onnx_file, tmp_path_factory.mktemp("onnx") / "w600k_mbf.onnx")
    return net, onnx_file, path


def _spec_for(path: Path) -> models.ModelSpec:
    """The manifest's w600k-mbf-512 entry, pinned to the file at `path`."""
    spec = models.get_model(MODEL)
    wf = dataclasses.replace(
        spec.weight_file,
        name=path.name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size=path.stat().st_size,
    )
    return dataclasses.replace(spec, files=(wf,))


# --- the network ---------------------------------------------------------------------------


def test_the_forward_pass_is_the_98_node_graph_of_the_export() -> None:
    with torch.device("meta"):
        net = mobilefacenet.build_network(512)
    ops = mobilefacenet.expected_graph(net)
    assert len(ops) == 98
    assert Counter(op.op_type for op in ops) == {
        "Conv": 49, "PRelu": 34, "Add": 12, "Flatten": 1, "Gemm": 1, "BatchNormalization": 1
    }
    # every tensor of the module is fed by exactly one operator
    fed = {op.module for op in ops if op.module}
    assert {name.rsplit(".", 1)[0] for name in net.state_dict()} == fed


def test_conversion_of_an_export_reproduces_every_tensor(synthetic) -> None:
    net, onnx_file, path = synthetic
    state = mobilefacenet.convert_onnx(onnx_file, 512, path)
    expected = net.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(state[name], tensor), name


def test_torch_module_equals_onnxruntime_on_the_written_file(synthetic) -> None:
    _, _, path = synthetic
    converted = mobilefacenet.build_network(512)
    converted.load_state_dict(mobilefacenet.convert(path, 512))
    converted.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ours = converted(torch.from_numpy(x)).numpy()
        ours_cl = converted.to(memory_format=torch.channels_last)(
            torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        ).numpy()
    reference = _ort(path, x)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours_cl, reference, atol=1e-4, rtol=0)


# --- strictness: a changed graph is refused, naming the node -------------------------------------


def _with_node(onnx_file: OnnxFile, index: int, **changes: object) -> OnnxFile:
    nodes = list(onnx_file.nodes)
    nodes[index] = dataclasses.replace(nodes[index], **changes)
    return dataclasses.replace(onnx_file, nodes=nodes)


def _first(onnx_file: OnnxFile, op_type: str, after: int = 0) -> int:
    return next(i for i, n in enumerate(onnx_file.nodes) if n.op_type == op_type and i >= after)


def _refused(onnx_file: OnnxFile, match: str) -> None:
    with pytest.raises(ModelCorruptError, match=match):
        mobilefacenet.convert_onnx(onnx_file, 512, Path("w600k_mbf.onnx"))


def test_a_different_stride_is_refused(synthetic) -> None:
    _, onnx_file, _ = synthetic
    i = 6  # the first stage's stride-2 depthwise conv
    node = onnx_file.nodes[i]
    assert node.attributes["strides"] == [2, 2]
    _refused(_with_node(onnx_file, i, attributes={**node.attributes, "strides": [1, 1]}),
             r"node 6 \(Conv.*stages\.0\.0\.depthwise\.conv")


def test_a_different_group_count_is_refused(synthetic) -> None:
    _, onnx_file, _ = synthetic
    node = onnx_file.nodes[2]
    _refused(_with_node(onnx_file, 2, attributes={**node.attributes, "group": 128}), r"node 2 \(Conv")


def test_a_residual_sum_of_the_wrong_tensors_is_refused(synthetic) -> None:
    # Same shapes everywhere: only the wiring check can see that the shortcut skips a block.
    _, onnx_file, _ = synthetic
    first, second = _first(onnx_file, "Add"), _first(onnx_file, "Add", _first(onnx_file, "Add") + 1)
    wrong = (onnx_file.nodes[first].inputs[0], onnx_file.nodes[second].inputs[1])
    _refused(_with_node(onnx_file, second, inputs=wrong), rf"node {second} \(Add.* adds")


def test_a_node_reading_the_wrong_tensor_is_refused(synthetic) -> None:
    _, onnx_file, _ = synthetic
    node = onnx_file.nodes[4]
    skipped = (onnx_file.nodes[1].outputs[0], *node.inputs[1:])  # skips conv2
    _refused(_with_node(onnx_file, 4, inputs=skipped), r"node 4 \(Conv.* reads")


def test_an_unused_initializer_is_refused(synthetic) -> None:
    _, onnx_file, _ = synthetic
    extra = dataclasses.replace(
        onnx_file, initializers={**onnx_file.initializers, "fc.extra": np.zeros(3, np.float32)}
    )
    _refused(extra, r"1 ONNX initializers were not used.*fc\.extra")


def test_a_shared_initializer_is_refused(synthetic) -> None:
    _, onnx_file, _ = synthetic
    slope = onnx_file.nodes[1].inputs[1]
    _refused(_with_node(onnx_file, 3, inputs=(onnx_file.nodes[3].inputs[0], slope)), "used twice")


@pytest.mark.parametrize(
    ("op_type", "attributes", "match"),
    [
        ("Conv", {"auto_pad": "SAME_UPPER"}, "does not match"),
        ("Conv", {"foo": 1}, r"attributes \['foo'\] are not supported"),
        ("Gemm", {"transB": 0}, "not a linear layer"),
        ("BatchNormalization", {"epsilon": 1e-3}, "epsilon"),
        ("Flatten", {"axis": 2}, "Flatten axis"),
    ],
)
def test_an_attribute_the_module_does_not_have_is_refused(synthetic, op_type, attributes, match):
    _, onnx_file, _ = synthetic
    i = _first(onnx_file, op_type)
    node = onnx_file.nodes[i]
    _refused(_with_node(onnx_file, i, attributes={**node.attributes, **attributes}), match)


def test_a_truncated_or_mistyped_graph_is_refused(synthetic) -> None:
    _, onnx_file, _ = synthetic
    short = dataclasses.replace(onnx_file, nodes=onnx_file.nodes[:-1])
    _refused(short, "97 nodes, MobileFaceNet has 98")
    _refused(_with_node(onnx_file, 1, op_type="Relu"), r"node 1 \(Relu.*expected PRelu")
    wide = dataclasses.replace(onnx_file, inputs={"input.1": ["None", 3, 128, 128]})
    _refused(wide, "112 x 112")
    half = dict(onnx_file.initializers)
    name = onnx_file.nodes[0].inputs[1]
    half[name] = half[name].astype(np.float16)
    _refused(dataclasses.replace(onnx_file, initializers=half), "float16, not float32")


def test_a_file_that_is_not_onnx_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "w600k_mbf.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelCorruptError, match="not a readable ONNX model"):
        mobilefacenet.convert(path)


# --- loading through the model package: cache and convert once ------------------------------------


def test_an_onnx_model_loads_converted_once_then_from_the_cache(
    synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, path = synthetic
    spec = _spec_for(path)
    settings = Settings(models_dir=path.parent, cache_dir=tmp_path / "cache", data_dir=tmp_path)
    network = models.load_network(spec, settings)
    assert isinstance(network, mobilefacenet.MobileFaceNet) and not network.training
    cache = models.converted_path(spec, settings)
    written = cache.stat().st_mtime_ns
    assert torch.load(cache, weights_only=True)["converter"] == "mobilefacenet"

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache is current")

    with monkeypatch.context() as m:
        m.setattr(mobilefacenet, "convert", no_conversion)
        again = models.load_network(spec, settings)
    assert cache.stat().st_mtime_ns == written
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(network(x), again(x))
    np.testing.assert_allclose(again(x).detach().numpy(), _ort(path, x.numpy()), atol=1e-4, rtol=0)

    monkeypatch.setattr(mobilefacenet, "CONVERTER_VERSION", mobilefacenet.CONVERTER_VERSION + 1)
    models.load_network(spec, settings)
    assert torch.load(cache, weights_only=True)["converter_version"] == mobilefacenet.CONVERTER_VERSION


def test_the_embedder_scales_pixels_to_minus_one_one(synthetic) -> None:
    from identity.faces.embed import Embedder

    net, _, path = synthetic
    crops = np.random.default_rng(2).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    embedder = Embedder(net, dim=512, input_size=112, normalization="symmetric", flip=False)
    x = ((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()
    reference = _ort(path, x)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(crops), reference, atol=1e-4, rtol=0)


# --- the real weights ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w600k_settings(weights_cache: Path, tmp_path_factory) -> Settings:
    # fp32 (also the default): this module holds the conversion to onnxruntime's outputs
    # within 1e-4; what bf16 changes is tests/test_precision.py's.
    return Settings(
        model=MODEL,
        models_dir=MODELS_DIR,
        cache_dir=weights_cache,
        data_dir=tmp_path_factory.mktemp("w600k-data"),
        device="cpu",
        precision="fp32",
    )


@pytest.fixture(scope="module")
def w600k_pipeline(w600k_settings: Settings):
    from identity.faces.pipeline import FacePipeline

    return FacePipeline.from_settings(w600k_settings)


@pytest.mark.slow
def test_the_real_file_is_the_98_node_mobilefacenet_and_converts_completely() -> None:
    onnx_file = mobilefacenet.read_onnx(REAL_ONNX)
    assert len(onnx_file.nodes) == 98 and len(onnx_file.initializers) == 138
    assert onnx_file.opset == 11 and list(onnx_file.inputs) == ["input.1"]
    state = mobilefacenet.convert_onnx(onnx_file, 512, REAL_ONNX)
    assert len(state) == 139  # 138 initializers + the batch norm's num_batches_tracked
    node = onnx_file.nodes[35]  # the second stage's stride-2 depthwise conv
    tampered = dataclasses.replace(
        onnx_file,
        nodes=[*onnx_file.nodes[:35], dataclasses.replace(node, attributes={**node.attributes, "strides": [1, 1]}),
               *onnx_file.nodes[36:]],
    )
    with pytest.raises(ModelCorruptError, match=r"node 35 \(Conv.*stages\.1\.0\.depthwise"):
        mobilefacenet.convert_onnx(tampered, 512, REAL_ONNX)


@pytest.mark.slow
def test_torch_equals_onnxruntime_on_real_aligned_crops(w600k_pipeline) -> None:
    """The converted network's raw 512-d outputs agree with onnxruntime's within 1e-4 on
    aligned crops of real faces (the pipeline's own crops: MTCNN, ArcFace template)."""
    from identity.faces.embed import standardize

    photos = sorted(LFW_DIR.glob("A*/*.jpg"))[:12] + sorted((MISC_DIR / "group").iterdir())
    results = list(w600k_pipeline.process(photos, keep_crops=True))
    crops = np.stack([f.crop for r in results for f in r.faces])
    assert crops.shape[1:] == (112, 112, 3) and len(crops) >= 20
    x = standardize(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), "symmetric")
    network = w600k_pipeline.embedder.network  # channels-last, as the pipeline runs it
    with torch.no_grad():
        ours = network(x.contiguous(memory_format=torch.channels_last)).numpy()
        ours_flipped = network(x.flip(3).contiguous(memory_format=torch.channels_last)).numpy()
    reference = _ort(REAL_ONNX, x.numpy())
    reference_flipped = _ort(REAL_ONNX, x.flip(3).contiguous().numpy())
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours_flipped, reference_flipped, atol=1e-4, rtol=0)
    # and the pipeline's unit vectors are onnxruntime's flip-summed outputs, normalised
    summed = reference + reference_flipped
    expected = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    embedded = np.stack([f.embedding for r in results for f in r.faces])
    np.testing.assert_allclose(embedded, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_w600k_separates_same_and_different_people_on_lfw(w600k_pipeline) -> None:
    lines = (LFW_DIR / "pairsDevTrain.txt").read_text().splitlines()[1:]
    same = [line.split("\t") for line in lines[:1100:110]]
    diff = [line.split("\t") for line in lines[1100::110]]

    def path(name: str, number: str) -> Path:
        return LFW_DIR / name / f"{name}_{int(number):04d}.jpg"

    def embedding(p: Path) -> np.ndarray:
        return w600k_pipeline.embed_image(p, select="central").faces[0].embedding

    same_scores = [float(embedding(path(n, i)) @ embedding(path(n, j))) for n, i, j in same]
    diff_scores = [float(embedding(path(a, i)) @ embedding(path(b, j))) for a, i, b, j in diff]
    assert min(same_scores) > max(diff_scores), (same_scores, diff_scores)
    assert w600k_pipeline.dim == 512 and w600k_pipeline.alignment == "similarity"
