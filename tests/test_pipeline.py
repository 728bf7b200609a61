"""The face pipeline on real photos with the real FaceNet weights (those tests are marked
slow; the geometry and selection rules run in the fast tier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from identity.errors import ImageDecodeError
from identity.faces.align import crop, similarity_transform, warp
from identity.faces.detect import select_faces
from identity.faces.types import DetectedFace, ImageRef

from conftest import LFW_DIR, MISC_DIR

GROUP = MISC_DIR / "group"
LABELED = MISC_DIR / "small_labeled"


@pytest.fixture(scope="module")
def labeled(pipeline):
    """One embedding per small_labeled photo (its largest face), with the person's name."""
    paths = sorted(p for p in LABELED.glob("*/*") if p.parent.name != "_query")
    results = list(pipeline.process(paths, select="largest"))
    assert all(r.ok and len(r.faces) == 1 for r in results)
    names = [Path(r.source).parent.name for r in results]
    return names, np.stack([r.faces[0].embedding for r in results])


@pytest.mark.slow
def test_group_photos_give_the_expected_number_of_faces(pipeline):
    expected = {
        "facenet_pytorch_multiface.jpg": 6,
        "fr_kit_with_rose.jpg": 2,
        "fr_obama_and_biden.jpg": 3,  # two adults and a partly visible child
        "fr_two_people.jpg": 2,
    }
    results = {Path(r.source).name: r for r in pipeline.process(sorted(GROUP.iterdir()))}
    assert {name: len(r.faces) for name, r in results.items()} == expected


@pytest.mark.slow
def test_faces_come_left_to_right_in_full_resolution_coordinates(pipeline):
    # fr_obama_and_biden.jpg is 2000 px wide, detected at 1600: boxes must be rescaled.
    result = pipeline.embed_image(GROUP / "fr_obama_and_biden.jpg")
    assert (result.width, result.height) == (2000, 1428)
    centres = [(f.box[0] + f.box[2]) / 2 for f in result.faces]
    assert centres == sorted(centres)
    assert max(f.box[2] for f in result.faces) > 1600  # beyond the working width
    for face in result.faces:
        x1, y1, x2, y2 = face.box
        assert (face.landmarks[:, 0] > x1).all() and (face.landmarks[:, 0] < x2).all()
        assert (face.landmarks[:, 1] > y1).all() and (face.landmarks[:, 1] < y2).all()


@pytest.mark.slow
def test_images_without_a_person_give_no_face_and_no_error(pipeline):
    results = list(pipeline.process(sorted((MISC_DIR / "nonface").iterdir())))
    assert len(results) == 14
    assert [r.source for r in results if not r.ok] == []
    assert {Path(r.source).name: len(r.faces) for r in results if r.faces} == {}


@pytest.mark.slow
def test_embeddings_are_unit_vectors_of_the_model_dimension(pipeline):
    result = pipeline.embed_image(MISC_DIR / "single_face" / "skimage_astronaut.png")
    (face,) = result.faces
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    # Quality is the detection probability, discounted for faces under 112 px.
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    assert side < 112
    assert face.quality == pytest.approx(face.probability * side / 112, rel=1e-3)


@pytest.mark.slow
def test_a_small_greyscale_face_is_found(pipeline):
    result = pipeline.embed_image(MISC_DIR / "single_face" / "skimage_camera_gray.png")
    assert len(result.faces) == 1


@pytest.mark.slow
def test_same_person_is_more_similar_than_different_people(labeled):
    names, vectors = labeled
    sims = vectors @ vectors.T
    same = [sims[i, j] for i in range(len(names)) for j in range(i) if names[i] == names[j]]
    different = [sims[i, j] for i in range(len(names)) for j in range(i) if names[i] != names[j]]
    assert min(same) > 0.55
    assert np.mean(same) - np.mean(different) > 0.6
    # Everyone's nearest other photo is of themselves, when they have another photo.
    for i, name in enumerate(names):
        if names.count(name) > 1:
            order = [j for j in np.argsort(-sims[i]) if j != i]
            assert names[order[0]] == name, f"{name}: nearest is {names[order[0]]}"


@pytest.mark.slow
def test_each_query_photo_is_closest_to_its_own_person(pipeline, labeled):
    names, vectors = labeled
    truth = {"johnsnow_test1.jpg": "kit_harington", "obama1.jpg": "obama",
             "alex_lacamoire1.jpg": "alex_lacamoire"}
    for result in pipeline.process(sorted((LABELED / "_query").iterdir())):
        (face,) = result.faces
        nearest = names[int(np.argmax(vectors @ face.embedding))]
        assert nearest == truth[Path(result.source).name]


@pytest.mark.slow
def test_a_corrupt_image_skips_only_that_image(pipeline, tmp_path):
    good = LFW_DIR / "Fidel_Castro" / "Fidel_Castro_0004.jpg"
    refs = [
        ImageRef(str(good)),
        ImageRef("truncated.jpg", data=good.read_bytes()[:3000]),
        ImageRef("empty.jpg", data=b""),
        ImageRef(str(tmp_path / "missing.jpg")),
        ImageRef(str(MISC_DIR / "single_face" / "skimage_astronaut.png")),
    ]
    results = list(pipeline.process(refs))
    assert [r.source for r in results] == [r.source for r in refs]  # input order kept
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert all(isinstance(r.error, ImageDecodeError) for r in results if not r.ok)
    assert len(results[0].faces) == 1 and len(results[4].faces) == 1


@pytest.mark.slow
def test_mixed_sizes_batch_together_and_match_one_at_a_time(pipeline):
    paths = [GROUP / "fr_two_people.jpg", LFW_DIR / "Fidel_Castro" / "Fidel_Castro_0004.jpg",
             LABELED / "biden" / "biden.jpg", MISC_DIR / "single_face" / "skimage_astronaut.png"]
    together = list(pipeline.process(paths))
    alone = [pipeline.embed_image(p) for p in paths]
    for a, b in zip(together, alone):
        assert len(a.faces) == len(b.faces)
        for fa, fb in zip(a.faces, b.faces):
            assert float(fa.embedding @ fb.embedding) > 0.999
            assert np.allclose(fa.box, fb.box, atol=1.0)


def test_selection_rules():
    def face(x1, y1, x2, y2):
        return DetectedFace((x1, y1, x2, y2), np.zeros((5, 2), np.float32), 0.99)

    big_corner, small_centre = face(0, 0, 60, 60), face(45, 45, 85, 85)
    faces = [big_corner, small_centre]
    assert select_faces(faces, (130, 130, 3), "all") == faces
    assert select_faces(faces, (130, 130, 3), "largest") == [big_corner]
    assert select_faces(faces, (130, 130, 3), "central") == [small_centre]


def test_crop_margin_scales_with_the_face():
    pixels = np.zeros((1000, 1000, 3), np.uint8)
    pixels[400:600, 400:600] = 255  # a 200-px "face"
    out = crop(pixels, (400, 400, 600, 600), image_size=160, margin=32)
    # margin 32 of 160 output pixels: the face fills 128 px, 16 px border each side.
    assert out.shape == (160, 160, 3)
    assert out[80, 10].max() == 0 and out[80, 20].min() == 255


def test_similarity_transform_recovers_a_known_rotation():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    assert np.allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)


@pytest.mark.slow
def test_similarity_alignment_puts_the_eyes_on_the_template(pipeline):
    from identity.faces.align import TEMPLATE_UNIT

    image = pipeline.decode(LFW_DIR / "Fidel_Castro" / "Fidel_Castro_0004.jpg")
    (face,) = pipeline.detector.detect([image.pixels])[0]
    aligned = warp(image.pixels, face.landmarks, image_size=160)
    assert aligned.shape == (160, 160, 3)
    (again,) = pipeline.detector.detect([np.ascontiguousarray(aligned)])[0] or [None]
    if again is not None:  # re-detected landmarks land near the template
        assert np.abs(again.landmarks - TEMPLATE_UNIT * 160).mean() < 6


def test_work_runs_ahead_in_order_and_stops_with_its_consumer():
    import threading
    import time

    from identity.faces.pipeline import map_ahead

    def slow_square(x: int) -> int:
        time.sleep(0.01 * (x % 3))  # finish out of order
        return x * x

    assert list(map_ahead(slow_square, range(20), workers=3, lookahead=4)) == [x * x for x in range(20)]
    assert list(map_ahead(slow_square, range(5), workers=0, lookahead=0)) == [0, 1, 4, 9, 16]

    def failing(x: int) -> int:
        if x == 2:
            raise ValueError("broken batch")
        return x

    stream = map_ahead(failing, range(5), workers=2, lookahead=2)
    assert next(stream) == 0
    with pytest.raises(ValueError, match="broken batch"):
        list(stream)

    started = []
    before = threading.active_count()
    endless = map_ahead(started.append, iter(range(10**9)), workers=2, lookahead=3)
    next(endless)
    endless.close()  # a consumer that stops early (embed_image takes one result)
    assert len(started) <= 4 and threading.active_count() == before


def test_arcface_template_places_the_landmarks_where_insightface_expects_them():
    from identity.faces.align import ARCFACE_112, TEMPLATES
    from identity.faces.models import Template

    # Five bright dots at "landmarks" of a tilted, scaled face in a 400×300 photo.
    angle, scale, shift = 0.25, 2.3, np.array([90.0, 40.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = scale * ARCFACE_112 @ rotation.T + shift
    pixels = np.zeros((300, 400, 3), np.uint8)
    for x, y in landmarks:
        pixels[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    aligned = warp(pixels, landmarks, image_size=112, template=Template.ARCFACE)
    assert aligned.shape == (112, 112, 3)
    weight = aligned[..., 0].astype(np.float64)
    for tx, ty in ARCFACE_112:  # each dot's centre of mass lands on its template point
        x0, y0 = int(tx) - 4, int(ty) - 4
        patch = weight[y0 : y0 + 9, x0 : x0 + 9]
        ys, xs = np.mgrid[y0 : y0 + 9, x0 : x0 + 9]
        centre = np.array([(xs * patch).sum(), (ys * patch).sum()]) / patch.sum()
        assert np.abs(centre - [tx, ty]).max() < 1.0
    assert np.allclose(TEMPLATES[Template.ARCFACE] * 112, ARCFACE_112)


def test_the_tight_facenet_template_frames_the_same_face_larger_about_the_crop_centre():
    from identity.faces.align import TEMPLATE_UNIT, TEMPLATES, TIGHT_SCALE
    from identity.faces.models import Template

    tight, plain = TEMPLATES[Template.FACENET_TIGHT], TEMPLATES[Template.FACENET]
    assert np.allclose(tight - 0.5, TIGHT_SCALE * (plain - 0.5)) and TIGHT_SCALE > 1
    eyes = np.linalg.norm(tight[1] - tight[0])
    assert eyes == pytest.approx(TIGHT_SCALE * np.linalg.norm(TEMPLATE_UNIT[1] - TEMPLATE_UNIT[0]))
    # still mirror-symmetric: eyes and mouth corners pair up about x = 0.5, the nose on it
    assert np.allclose(tight[[0, 3, 2], 0] + tight[[1, 4, 2], 0], 1.0)
    # a face aligned onto it shows the central part of the same face aligned onto the plain one
    landmarks = TEMPLATE_UNIT * 160 + [30.0, 20.0]
    yy, xx = np.mgrid[0:240, 0:240]
    pixels = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)
    wide = warp(pixels, landmarks, image_size=160, template=Template.FACENET).astype(float)
    close = warp(pixels, landmarks, image_size=160, template=Template.FACENET_TIGHT).astype(float)
    assert np.ptp(close[80, 10:150, 0]) < np.ptp(wide[80, 10:150, 0]) / TIGHT_SCALE + 2


def test_an_unknown_alignment_word_is_refused():
    face = DetectedFace((0, 0, 10, 10), np.zeros((5, 2), np.float32), 0.99)
    with pytest.raises(ValueError, match="alignment method 'affine' is not one of"):
        from identity.faces.align import align

        align(np.zeros((20, 20, 3), np.uint8), face, method="affine")
