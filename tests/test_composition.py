"""Components built from their parts: a `FacePipeline` from a detector and an embedder of
the caller's own (no weights), and the API's response bodies read from the domain's
objects with `model_validate`."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import torch

from identity.faces import models
from identity.faces.embed import Embedder
from identity.faces.pipeline import DecodeLimits, FacePipeline
from identity.faces.types import DetectedFace, Face

from conftest import LFW_DIR

PHOTO = LFW_DIR / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"  # 250 x 250
LANDMARKS = np.array([[105, 115], [145, 115], [125, 135], [108, 160], [142, 160]], np.float32)


class OneFace:
    """A detector that finds the same face in every image, and counts its calls."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        return [[DetectedFace(box=(80.0, 80.0, 170.0, 190.0), landmarks=LANDMARKS, probability=0.99)]
                for _ in images]


def tiny_embedder(spec, dim: int = 8) -> Embedder:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, dim))
    return Embedder(network, dim=dim, input_size=spec.input_size, normalization=spec.normalization,
                    flip=False, batch_size=4)


def test_a_pipeline_is_composed_from_a_detector_and_an_embedder():
    spec = models.get_model("facenet-keras-128")
    detector = OneFace()
    pipeline = FacePipeline(detector, tiny_embedder(spec), spec, batch_size=2, decode_workers=0,
                            detect_workers=0, chip_size=160, chip_quality=60)
    assert pipeline.alignment == spec.alignment and pipeline.keep_chips
    results = list(pipeline.process([PHOTO] * 3 + [PHOTO.parent / "missing.jpg"], keep_chips=True))
    assert [r.ok for r in results] == [True, True, True, False]
    assert detector.calls == 2  # batches of two images
    face = results[0].faces[0]
    assert face.embedding.shape == (8,) and abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5
    assert face.box == (80.0, 80.0, 170.0, 190.0)  # a 250-px photo is detected at full size
    assert face.chip is not None and face.chip.size == 160


def test_decode_limits_are_the_pipelines_own():
    spec = models.get_model("facenet-keras-128")
    pipeline = FacePipeline(OneFace(), tiny_embedder(spec), spec, decode_workers=0, detect_workers=0,
                            limits=DecodeLimits(max_pixels=1000, max_side=1600))
    (result,) = pipeline.process([PHOTO])
    assert not result.ok and result.error.code == "image_too_large"
    small = FacePipeline(OneFace(), tiny_embedder(spec), spec, limits=DecodeLimits(max_side=125))
    assert small.decode(PHOTO).pixels.shape[:2] == (125, 125)


def test_response_bodies_are_read_from_domain_objects():
    from identity.api.schemas import FaceOut, JobCreated, JobOut, JobSummary, VerifyOut
    from identity.service import Verification
    from identity.store.jobs import Job
    from identity.store.types import MoveResult
    from identity.views import MoveOut

    face = Face(box=(np.float32(1.5), 2.0, 3.0, 4.0), landmarks=LANDMARKS, probability=np.float32(0.5))
    out = FaceOut.model_validate(face).model_dump()
    assert out == {"box": [1.5, 2.0, 3.0, 4.0], "landmarks": LANDMARKS.astype(float).tolist(), "probability": 0.5}

    verification = Verification(model="m", similarity=0.7, distance=0.77, threshold=0.5, level="normal",
                                same=True, face_a=face, face_b=None, faces_in_a=1, faces_in_b=3,
                                person_id=7, person_external_id="ann")
    body = VerifyOut.model_validate(verification).model_dump()
    assert body["person"] == {"id": 7, "external_id": "ann"} and body["face_b"] is None
    assert body["face_a"] == out
    anonymous = Verification(**{**verification.__dict__, "person_id": None, "person_external_id": None})
    assert VerifyOut.model_validate(anonymous).person is None

    now = datetime.now(timezone.utc)
    job = Job(id="j1", kind="enroll", status="running", params={}, total_items=4, total_batches=1,
              batches_done=0, items_done=1, counts={"enrolled": 1}, created_at=now)
    body = JobOut.model_validate(job).model_dump(mode="json")
    assert body["progress"] == 0.25 and body["counts"] == {"enrolled": 1} and body["id"] == "j1"
    assert set(body) - {"progress", "counts", "outcomes", "result"} == set(JobSummary.model_fields)
    cluster = Job(**{**job.__dict__, "kind": "cluster", "status": "succeeded"})
    assert JobOut.model_validate(cluster).progress == 1.0
    assert JobCreated.model_validate(job).model_dump(mode="json") == {
        "job_id": "j1", "kind": "enroll", "status": "running", "total_items": 4}

    moved = MoveOut.model_validate(MoveResult(person=None, moved=(3,), previous={3: 1, 4: None}, audit_id=9))
    assert moved.model_dump() == {"person": None, "moved": [3], "previous": {"3": 1, "4": None}, "audit_id": 9}
