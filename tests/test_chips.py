"""Face chips: cut right (landmarks land where the chip says), stored with their face and
gone with it, backfilled from readable photos, enough to re-align a face for a network,
and served by the API. The store and backfill tests run without a model."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from conftest import LFW_DIR
from PIL import Image
from test_store import MODEL, image

from identity.errors import NotFoundError
from identity.faces.chips import chip_from_photo, make_chip
from identity.faces.types import Face, ImageResult
from identity.store import FacesToAdd

PHOTO = LFW_DIR / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
# MTCNN's face on that photo, near enough (LFW centres its subject).
BOX = (86.0, 70.0, 163.0, 170.0)
POINTS = np.array([[107, 111], [143, 110], [126, 131], [110, 150], [141, 149]], np.float32)


def decode(jpeg: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def test_a_chip_is_a_square_jpeg_twice_the_box_with_the_landmarks_where_it_says():
    pixels = np.full((300, 400, 3), 40, np.uint8)
    points = np.array([[150, 120], [190, 118], [170, 140], [155, 165], [185, 166]], np.float32)
    for x, y in points.astype(int):
        pixels[y - 2:y + 3, x - 2:x + 3] = 255
    chip = make_chip(pixels, (140, 100, 200, 180), points, scale=0.5, size=224, quality=90)
    chip_pixels = decode(chip.jpeg)
    assert chip_pixels.shape == (224, 224, 3) and chip.size == 224
    for (x, y) in chip.landmarks:  # each landmark's bright square is at the chip's landmark
        assert chip_pixels[round(y), round(x)].mean() > 180
    # The square: centred on the box, 2 × its longer side (80 px), in full-resolution pixels
    # (the working image was half the photo's size).
    assert chip.region == pytest.approx((2 * 90, 2 * 60, 2 * 160))


def test_a_face_near_the_border_gets_black_outside_the_photo():
    pixels = np.full((100, 100, 3), 200, np.uint8)
    chip = make_chip(pixels, (0, 0, 40, 40), np.full((5, 2), 20, np.float32), size=160)
    corner = decode(chip.jpeg)[:30, :30]
    assert corner.mean() < 20 and chip.region == pytest.approx((-20, -20, 80))


def test_a_backfilled_chip_matches_the_one_cut_at_enrollment():
    from identity.faces.decode import decode_image

    photo = decode_image(PHOTO.read_bytes(), source=str(PHOTO), max_pixels=10**8, max_side=100)
    working = make_chip(photo.pixels, [v * photo.scale for v in BOX], POINTS * photo.scale, scale=photo.scale)
    backfilled = chip_from_photo(photo.pixels, photo.scale, BOX, POINTS.reshape(10), size=224, quality=85)
    assert backfilled.jpeg == working.jpeg and backfilled.region == pytest.approx(working.region)


# --- the store ---------------------------------------------------------------------------------


def chipped(name: str) -> ImageResult:
    plain = image(name)
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"))
    faces = tuple(Face(box=f.box, landmarks=f.landmarks, probability=f.probability, embedding=f.embedding,
                       quality=f.quality, chip=make_chip(pixels, f.box, f.landmarks)) for f in plain.faces)
    return ImageResult(plain.source, plain.sha256, plain.width, plain.height, faces)


def test_chips_are_stored_with_their_faces_and_deleted_with_them(store):
    with_chip, without = chipped("k1"), image("k2")
    outcomes = store.add_faces([FacesToAdd(with_chip, external_id="kay"), FacesToAdd(without, external_id="kay")],
                               model=MODEL)
    (face_id,), (bare,) = outcomes[0].face_ids, outcomes[1].face_ids
    chip = store.chip(face_id)
    assert chip.jpeg == with_chip.faces[0].chip.jpeg and chip.info.size == 224
    assert np.allclose(chip.info.landmarks, with_chip.faces[0].chip.landmarks, atol=1e-3)
    info = store.face(face_id).chip
    assert info.size == 224 and info.bytes == len(chip.jpeg) and store.face(bare).chip is None
    with pytest.raises(NotFoundError, match="no chip"):
        store.chip(bare)
    assert store.chip_stats() == {"faces": 2, "chips": 1, "chip_bytes": len(chip.jpeg)}
    store.remove_faces([face_id])
    with pytest.raises(NotFoundError, match=f"no face {face_id}"):
        store.chip(face_id)
    assert store.chip_stats()["chips"] == 0


def test_add_chips_passes_over_faces_with_a_chip_or_gone(store):
    outcomes = store.add_faces([FacesToAdd(chipped("l1"), external_id="lou"),
                                FacesToAdd(image("l2"), external_id="lou"),
                                FacesToAdd(image("l3"), external_id="lou")], model=MODEL)
    has, wants, gone = (o.face_ids[0] for o in outcomes)
    store.remove_faces([gone])
    missing = store.faces_without_chips()
    assert [row[3] for row in missing] == [wants]
    chip = make_chip(np.zeros((50, 50, 3), np.uint8), (10, 10, 40, 40), np.full((5, 2), 25.0))
    assert store.add_chips([(has, chip), (wants, chip), (gone, chip)]) == 1
    assert store.chip(wants).jpeg == chip.jpeg and store.chip(has).jpeg != chip.jpeg
    assert store.faces_without_chips() == []


def test_backfill_cuts_chips_from_readable_unchanged_photos_and_reports_the_rest(store_settings, tmp_path):
    from identity.service import Service

    readable, changed, gone = (tmp_path / f"{n}.jpg" for n in ("readable", "changed", "gone"))
    for path in (readable, changed, gone):  # three files, three digests
        path.write_bytes(PHOTO.read_bytes() + path.stem.encode())
    results = [ImageResult(str(path), hashlib.sha256(path.read_bytes()).hexdigest(), 250, 250,
                           (Face(box=BOX, landmarks=POINTS, probability=0.99, embedding=image("x").faces[0].embedding),))
               for path in (readable, changed, gone)]
    changed.write_bytes(changed.read_bytes() + b"\0")
    gone.unlink()
    with Service(store_settings) as service:  # no model: the backfill runs none
        service.store.add_faces([FacesToAdd(r) for r in results], model=MODEL)
        summary = service.backfill_chips()
        assert (summary.chips, summary.changed, summary.unreadable, summary.images) == (1, 1, 1, 3)
        assert {p["reason"] for p in summary.problems} == {
            "the file changed since it was enrolled (sha256 differs)", "file not found"}
        (face,) = [f for f in service.faces().items if f.chip is not None]
        assert face.source == str(readable) and face.chip.region == pytest.approx((24, 20, 200))
        assert service.backfill_chips().chips == 0  # nothing left it could do
        assert service.opened()["pipeline"] is False


# --- with the model -------------------------------------------------------------------------------


def test_enrollment_keeps_a_chip_from_which_the_face_re_aligns_to_the_same_embedding(service):
    from identity.enroll import EnrollItem
    from identity.faces.align import align
    from identity.faces.types import DetectedFace

    (outcome,) = service.enroll_batch([EnrollItem(str(PHOTO), "aaron")])
    assert outcome.status == "enrolled"
    chip = service.chip(outcome.face_id)
    stored = service.face(outcome.face_id)
    assert chip.info.size == service.settings.store.chip_size == 224
    # Re-align from the chip alone, as another model's pipeline would, and embed.
    x, y, side = chip.info.region
    k = chip.info.size / side
    box = tuple((v - o) * k for v, o in zip(stored.box, (x, y, x, y)))
    face = DetectedFace(box=box, landmarks=np.asarray(chip.info.landmarks, np.float32), probability=1.0)
    pipeline = service.pipeline
    crop = align(decode(chip.jpeg), face, method=pipeline.alignment, image_size=pipeline.spec.input_size,
                 margin=service.settings.pipeline.margin, template=pipeline.spec.template)
    again = pipeline.embedder.embed(crop[None])[0]
    _, _, (original,) = service.store.fetch_embeddings([outcome.face_id], service.model_info.name)
    assert float(np.dot(again, original)) > 0.95


def test_with_chips_off_enrollment_keeps_none(service):
    from identity.enroll import EnrollItem

    service.pipeline.keep_chips = False  # settings.store.chips, as the pipeline was built with
    try:
        (outcome,) = service.enroll_batch([EnrollItem(str(PHOTO), "aaron")])
    finally:
        service.pipeline.keep_chips = True
    assert outcome.status == "enrolled" and service.face(outcome.face_id).chip is None
