"""Quality filter and the outputs a person looks at, on real LFW photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from identity.cluster import ClusterParams, ClusterResult, FaceSet, QualityThresholds, blur_score
from identity.cluster import cluster_faces, quality_reasons
from identity.cluster.output import report, write_cluster_folders, write_contact_sheets, write_json

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-dev"
PHOTOS = [LFW / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 2, 3)]
CENTRE_BOX = (75.0, 70.0, 175.0, 185.0)  # LFW photos are centred on their subject


def centre_crop(path: Path, blur_radius: float = 0) -> np.ndarray:
    image = Image.open(path).convert("RGB").crop((70, 60, 180, 190)).resize((160, 160))
    if blur_radius:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    return np.asarray(image)


def test_blur_score_falls_when_a_real_face_is_blurred():
    sharp = blur_score(centre_crop(PHOTOS[0]))
    blurred = blur_score(centre_crop(PHOTOS[0], 2))
    assert blurred < sharp / 3
    # The default threshold (10, from lfw-dev: its 1st percentile is ~19, a 2-px Gaussian
    # blur puts 95% of faces under 8.4) tells these apart.
    assert blurred < 10 < sharp


def test_quality_filter_gives_the_first_failed_reason_per_face():
    faces = FaceSet(
        embeddings=np.eye(4, 8, dtype=np.float32),
        image_index=np.arange(4),
        boxes=np.array([[0, 0, 100, 100], [0, 0, 15, 30], [0, 0, 100, 100], [0, 0, 100, 100]]),
        probabilities=np.array([0.99, 0.5, 0.8, 0.99]),
        blur=np.array([50.0, 50.0, 50.0, 3.0]),
    )
    reasons = quality_reasons(faces, QualityThresholds(min_face_size=20, min_probability=0.9, min_blur=10))
    assert reasons.tolist() == ["", "too_small", "low_probability", "blurred"]


def test_missing_measurements_pass_the_filter():
    faces = FaceSet.from_embeddings(np.eye(2, 4, dtype=np.float32))
    assert quality_reasons(faces, QualityThresholds(20, 0.9, 10)).tolist() == ["", ""]


def test_filtered_faces_stay_in_the_output_as_unclustered_with_their_reason():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    x = base + 0.05 * rng.standard_normal((3, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    faces = FaceSet(x, np.arange(3), probabilities=np.array([0.99, 0.99, 0.5]))
    params = ClusterParams("chinese_whispers", 0.5, quality=QualityThresholds(min_probability=0.9))
    result = cluster_faces(faces, params)
    assert result.labels.tolist() == [0, 0, -1]
    assert result.reasons.tolist() == ["", "", "low_probability"]


@pytest.fixture()
def two_clusters() -> tuple[ClusterResult, FaceSet]:
    sources = tuple(str(p) for p in PHOTOS)
    faces = FaceSet(
        embeddings=np.eye(4, 8, dtype=np.float32),
        image_index=np.array([0, 1, 2, 2]),
        sources=sources,
        boxes=np.array([CENTRE_BOX, CENTRE_BOX, CENTRE_BOX, (0, 0, 60, 60)]),
        probabilities=np.array([0.999, 0.998, 0.997, 0.91]),
    )
    result = ClusterResult(
        labels=np.array([0, 0, -1, -1]), algorithm="components", reasons=np.array(["", "", "", "too_small"])
    )
    return result, faces


def test_json_report_lists_clusters_with_image_path_and_box(two_clusters, tmp_path):
    result, faces = two_clusters
    path = write_json(result, faces, tmp_path / "clusters.json")
    body = json.loads(path.read_text())
    assert body["n_clusters"] == 1 and body["n_unclustered"] == 2
    first = body["clusters"][0]["faces"][0]
    assert first["image"] == str(PHOTOS[0]) and first["box"] == list(CENTRE_BOX)
    assert [u["reason"] for u in body["unclustered"]] == ["no_match", "too_small"]
    assert report(result, faces) == body


def test_cluster_folders_hold_face_crops_or_links_to_the_photos(two_clusters, tmp_path):
    result, faces = two_clusters
    (folder,) = write_cluster_folders(result, faces, tmp_path / "crops")
    crops = sorted(folder.glob("*.jpg"))
    assert len(crops) == 2 and Image.open(crops[0]).size == (160, 160)
    (linked,) = write_cluster_folders(result, faces, tmp_path / "links", mode="links")
    links = sorted(linked.iterdir())
    assert all(p.is_symlink() for p in links)
    assert {p.resolve() for p in links} == {PHOTOS[0].resolve(), PHOTOS[1].resolve()}


def test_contact_sheets_are_one_titled_png_per_cluster_and_one_of_the_unclustered(two_clusters, tmp_path):
    from identity.cluster.output import TITLE_PX

    result, faces = two_clusters
    sheet, unclustered = write_contact_sheets(result, faces, tmp_path, thumb=64, columns=10,
                                              titles={0: "aaron (Aaron Peirsol)"})
    assert (sheet.name, unclustered.name) == ("cluster_0000.png", "unclustered.png")
    band = TITLE_PX + 8
    for path in (sheet, unclustered):  # two tiles each: the cluster's two faces, the two left out
        image = Image.open(path)
        assert image.format == "PNG"
        assert image.size[0] >= 2 * (64 + 4) + 4 and image.size[1] == band + 64 + 8
        pixels = np.asarray(image.convert("L"))
        assert (pixels[:band] < 100).sum() > 50  # a title is written above the grid
    # The tiles are the photos' faces, not blank paper.
    assert np.asarray(Image.open(sheet))[band + 10: band + 60, 10:60].std() > 10


def test_an_earlier_result_is_found_and_cleared_without_touching_anything_else(two_clusters, tmp_path):
    from identity.cluster.output import clear_previous, previous_result

    result, faces = two_clusters
    assert previous_result(tmp_path / "nowhere") == []
    write_json(result, faces, tmp_path / "clusters.json")
    write_cluster_folders(result, faces, tmp_path, include_unclustered=True)
    write_contact_sheets(result, faces, tmp_path / "sheets")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "cluster_notes").mkdir()
    found = {p.name for p in previous_result(tmp_path)}
    assert found == {"clusters.json", "cluster_0000", "unclustered", "sheets"}
    assert {p.name for p in clear_previous(tmp_path)} == found
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster_notes", "notes.txt"]


def _face(embedding: np.ndarray, crop: np.ndarray | None = None):
    from identity.faces.types import Face

    return Face(box=CENTRE_BOX, landmarks=np.zeros((5, 2)), probability=0.99, embedding=embedding, crop=crop)


def test_pipeline_results_become_one_row_per_face_with_blur_measured_and_crops_dropped():
    from identity.errors import ImageDecodeError
    from identity.faces.types import ImageResult

    e = np.eye(3, 8, dtype=np.float32)
    results = [
        ImageResult("a.jpg", "00", 250, 250, (_face(e[0], centre_crop(PHOTOS[0])), _face(e[1], centre_crop(PHOTOS[0], 2)))),
        ImageResult("broken.jpg", error=ImageDecodeError("truncated", path="broken.jpg")),
        ImageResult("empty.jpg", "11", 100, 80, ()),
        ImageResult("b.jpg", "22", 300, 200, (_face(e[2]),)),
    ]
    faces = FaceSet.from_results(results)
    assert faces.sources == ("a.jpg", "b.jpg") and faces.image_index.tolist() == [0, 0, 1]
    assert faces.image_sizes.tolist() == [[250, 250], [300, 200]]
    assert faces.crops is None
    assert faces.blur[0] > 10 > faces.blur[1] and np.isnan(faces.blur[2])
    assert FaceSet.from_results(results, keep_crops=True).crops[0].shape == (160, 160, 3)


def test_faces_of_two_embedding_sizes_are_refused():
    from identity.errors import ModelMismatchError
    from identity.faces.types import ImageResult

    results = [ImageResult("a.jpg", "0", 1, 1, (_face(np.ones(4, np.float32)), _face(np.ones(8, np.float32))))]
    with pytest.raises(ModelMismatchError):
        FaceSet.from_results(results)


def test_folder_metrics_score_each_photo_subject_by_its_folder_name():
    from identity.cluster.metrics import folder_metrics

    paths = tuple(str(p) for p in PHOTOS) + (str(LFW / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"),)
    faces = FaceSet(
        np.eye(5, 8, dtype=np.float32),
        np.array([0, 1, 2, 2, 3]),
        sources=paths,
        boxes=np.array([CENTRE_BOX, CENTRE_BOX, CENTRE_BOX, (0, 0, 30, 30), CENTRE_BOX]),
        image_sizes=np.full((4, 2), 250),
    )
    # Photo 2's bystander (row 3) is wrongly in cluster 0, but bystanders are not scored.
    result = ClusterResult(labels=np.array([0, 0, 0, 0, -1]), algorithm="components")
    m = folder_metrics(faces, result)
    assert m.n_faces == 4 and m.bcubed_f1 == 1.0 and m.n_identities == 2
